//! `cargo xtask bench [signature]`: the criterion benchmarks. `signature` reads the signature of
//! a generated 1 GiB model (written once into `target/bench-models/`, never committed).

use anyhow::{Result, bail};
use xshell::{Shell, cmd};

pub fn run(rest: &[&str]) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    match rest {
        [] | ["signature"] => cmd!(sh, "{cargo} bench -p nimify-model --bench signature").run()?,
        other => bail!("unknown benchmark {other:?}; available: signature"),
    }
    Ok(())
}
