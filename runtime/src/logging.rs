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
    // A macro, not a value: each subscriber stack gives the layer its own type.
    macro_rules! fmt {
        () => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(terminal)
        };
    }
    let _ = match tracing {
        // RUST_LOG filters everything: one global filter, the cheapest.
        None => {
            let registry = tracing_subscriber::registry().with(filter);
            if json {
                registry.with(fmt!().json().flatten_event(true)).try_init()
            } else {
                registry.with(fmt!()).try_init()
            }
        }
        // RUST_LOG filters the log only; traces get nimify's and user code's spans whatever it
        // says, and never the HTTP, gRPC and exporter libraries' own (which would trace the
        // exporter exporting).
        Some(t) => {
            use tracing_subscriber::Layer as _;
            let registry = tracing_subscriber::registry().with(t.layer().with_filter(traced()));
            if json {
                registry.with(fmt!().json().flatten_event(true).with_filter(filter)).try_init()
            } else {
                registry.with(fmt!().with_filter(filter)).try_init()
            }
        }
    };
}

/// What becomes an OpenTelemetry span: info level and above, but not from the libraries under
/// the server and the exporter.
fn traced() -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "tower_http",
        "axum",
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
        "opentelemetry_http",
        "ort",
    ]
    .into_iter()
    .fold(tracing_subscriber::filter::Targets::new().with_default(LevelFilter::INFO), |t, target| {
        t.with_target(target, LevelFilter::OFF)
    })
}
