//! One module per subcommand.

pub mod build;
pub mod canary;
pub mod chart;
pub mod completions;
pub mod deploy;
pub mod image;
pub mod inspect;
pub mod inspect_repository;
pub mod new;
pub mod ort;
pub mod profile;
pub mod serve;
