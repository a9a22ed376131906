//! `cargo xtask test`: the whole test suite (filled in below).
use anyhow::Result;
pub fn run(_rest: &[&str]) -> Result<()> { Ok(()) }
pub fn models() -> Result<()> { Ok(()) }
