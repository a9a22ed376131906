//! Log setup: `--log-format`, else JSON lines when stderr is not a terminal (containers, CI) and
//! readable text when it is. The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

/// Installs the global subscriber once; later calls do nothing.
pub fn init(format: Option<crate::cli::LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal);
    let json = format.map_or(!terminal, |f| f == crate::cli::LogFormat::Json);
    let _ = if !json { builder.try_init() } else { builder.json().flatten_event(true).try_init() };
}
