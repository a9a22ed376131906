//! One module per subcommand.

pub mod inspect;
pub mod new;
pub mod ort;
pub mod serve;
