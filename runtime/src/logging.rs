//! Log setup: `--log-format`, else JSON lines when stderr is not a terminal (containers, CI) and
//! readable text when it is. The level comes from `RUST_LOG` (default `info`).

use std::fmt::Write;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

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
                registry.with(fmt!().json().flatten_event(true).fmt_fields(SpanFields)).try_init()
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
                registry.with(fmt!().json().flatten_event(true).fmt_fields(SpanFields).with_filter(filter)).try_init()
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

/// A span's fields as the JSON object the JSON event format prints with each event in it,
/// written straight as they are recorded. `tracing-subscriber`'s own gathers them in a map of
/// boxed values first, and every request opens a span: that was most of a span's cost.
struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        let mut object = JsonObject { out: &mut writer, first: true, result: Ok(()) };
        object.result = object.out.write_char('{');
        fields.record(&mut object);
        object.result?;
        writer.write_char('}')
    }

    /// Fields recorded later: merged into the object (a field recorded again takes the new
    /// value), as the JSON format's own does.
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> std::fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        let parse = |text: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text);
        let (mut all, added) =
            (parse(&current.fields).map_err(|_| std::fmt::Error)?, parse(&added).map_err(|_| std::fmt::Error)?);
        all.extend(added);
        current.fields = serde_json::Value::Object(all).to_string();
        Ok(())
    }
}

/// Writes visited fields as `"name":value` members of a JSON object.
struct JsonObject<'a, W: Write> {
    out: &'a mut W,
    first: bool,
    result: std::fmt::Result,
}

impl<W: Write> JsonObject<'_, W> {
    /// Opens a member: its separator and name; false for a field the JSON format leaves out.
    fn member(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let separator = if std::mem::take(&mut self.first) { "" } else { "," };
        self.result = self
            .out
            .write_str(separator)
            .and_then(|()| write_json_string(self.out, name))
            .and_then(|()| self.out.write_char(':'));
        self.result.is_ok()
    }

    fn plain(&mut self, field: &Field, value: impl std::fmt::Display) {
        if self.member(field) {
            self.result = write!(self.out, "{value}");
        }
    }
}

impl<W: Write> Visit for JsonObject<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: null, as serde_json writes them.
        self.plain(field, serde_json::Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.plain(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.plain(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.plain(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.member(field) {
            self.result = write_json_string(self.out, value);
        }
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.plain(field, serde_json::Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.member(field) {
            self.result = self
                .out
                .write_char('"')
                .and_then(|()| write!(Escaped(self.out), "{value:?}"))
                .and_then(|()| self.out.write_char('"'));
        }
    }
}

/// `text` as a JSON string.
fn write_json_string(out: &mut impl Write, text: &str) -> std::fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

/// Writes text escaped for the inside of a JSON string.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut plain = 0;
        for (i, c) in text.char_indices() {
            let escape = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if c < ' ' => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", u32::from(c))?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The log lines written while `log` runs under a JSON subscriber whose span fields are
    /// formatted by `fields`, each parsed, without its timestamp.
    fn json_lines<N>(fields: N, log: impl FnOnce()) -> Vec<serde_json::Value>
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .fmt_fields(fields)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.lock().expect("lock").clone()).expect("UTF-8");
        text.lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
                value.as_object_mut().expect("an object").remove("timestamp");
                value
            })
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Spans with every kind of field, some recorded later, one event in each.
    fn spans() {
        let text = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é 😀 \u{2028}";
        let debugged = vec![text.to_string(), "x".into()];
        let outer = tracing::error_span!(
            "request",
            request_id = %text,
            path = text,
            r#type = "plain",
            count = 7_u64,
            delta = -3_i64,
            ratio = 0.5_f64,
            nan = f64::NAN,
            infinite = f64::INFINITY,
            yes = true,
            list = ?debugged,
            later = tracing::field::Empty,
            again = 1_i64,
        );
        let _outer = outer.enter();
        tracing::error!(event_field = 1, "in the outer span");
        outer.record("later", "recorded after");
        outer.record("again", 2_i64);
        let inner = tracing::error_span!("inner", nested = %"{\"json\": [1]}");
        let _inner = inner.enter();
        tracing::error!("in both");
        inner.record("nested", 5_u64);
        tracing::error!("after a record");
        let empty = tracing::error_span!("empty");
        let _empty = empty.enter();
        tracing::error!("in a span without fields");
    }

    #[test]
    fn span_fields_print_as_the_json_format_prints_them() {
        let ours = json_lines(SpanFields, spans);
        let theirs = json_lines(tracing_subscriber::fmt::format::JsonFields::new(), spans);
        assert_eq!(ours.len(), 4, "{ours:#?}");
        assert_eq!(ours, theirs);
        assert_eq!(
            ours[0]["span"]["path"],
            "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é 😀 \u{2028}"
        );
        assert_eq!(ours[0]["span"]["type"], "plain");
        assert_eq!(ours[0]["span"]["nan"], serde_json::Value::Null);
        assert_eq!(ours[1]["spans"][0]["later"], "recorded after");
        assert_eq!(ours[1]["spans"][0]["again"], 2);
        assert_eq!(ours[2]["span"]["nested"], 5);
    }
}
