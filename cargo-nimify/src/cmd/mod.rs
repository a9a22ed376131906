//! One module per subcommand.

pub mod inspect;
pub mod ort;
pub mod serve;
