//! Log setup: `--log-format`, else JSON lines when stderr is not a terminal (containers, CI) and
//! readable text when it is. The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

/// Installs the global subscriber once; later calls do nothing. With `tracing`, spans are also
/// OpenTelemetry spans (see [`crate::telemetry`]).
pub fn init(format: Option<crate::cli::LogFormat>, tracing: Option<&crate::telemetry::Tracing>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let terminal = std::io::stderr().is_terminal();
    let json = format.map_or(!terminal, |f| f == crate::cli::LogFormat::Json);
    let registry = tracing_subscriber::registry().with(filter).with(tracing.map(|t| t.layer()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(terminal);
    let _ = if json { registry.with(fmt.json().flatten_event(true)).try_init() } else { registry.with(fmt).try_init() };
}
