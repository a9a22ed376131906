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

/// A span's fields as the JSON object the JSON event format prints with each event in it, as
/// `tracing-subscriber`'s own `JsonFields` writes it (members by name, `log.` and `r#` as it
/// treats them). That one gathers the fields in a map of boxed values first, and every request
/// opens a span: it was most of a span's cost. Fields already in name order (a request span's
/// one) are written straight; others, and fields recorded later, are parsed, sorted, rewritten.
struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        let mut names = JsonObject::<String>::new(None);
        fields.record(&mut names);
        if names.sorted {
            return write_object(&mut writer, &fields);
        }
        let mut text = String::new();
        write_object(&mut text, &fields)?;
        write_sorted(&mut writer, parse_object(&text)?)
    }

    /// Fields recorded later: merged into the object (a field recorded again takes the new
    /// value).
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> std::fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        let mut added = String::new();
        write_object(&mut added, fields)?;
        let mut all = parse_object(&current.fields)?;
        all.extend(parse_object(&added)?);
        let mut text = String::new();
        write_sorted(&mut text, all)?;
        current.fields = text;
        Ok(())
    }
}

/// Fields as a JSON object, in the order they come.
fn write_object(out: &mut impl Write, fields: &impl RecordFields) -> std::fmt::Result {
    out.write_char('{')?;
    let mut object = JsonObject::new(Some(&mut *out));
    fields.record(&mut object);
    object.result?;
    out.write_char('}')
}

fn parse_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, std::fmt::Error> {
    serde_json::from_str(text).map_err(|_| std::fmt::Error)
}

/// An object with its members by name.
fn write_sorted(out: &mut impl Write, mut object: serde_json::Map<String, serde_json::Value>) -> std::fmt::Result {
    object.sort_keys();
    write!(out, "{}", serde_json::Value::Object(object))
}

/// The name a field is printed under, as `JsonFields` prints it; `None` when it is left out.
/// Both rules hold for `Debug` values only: a raw identifier's `r#` is dropped, and a `log`
/// record's metadata (`log.` names) is left out.
fn key(field: &Field, debug: bool) -> Option<&'static str> {
    let name = field.name();
    match debug {
        false => Some(name),
        true if name.starts_with("log.") => None,
        true => Some(name.strip_prefix("r#").unwrap_or(name)),
    }
}

/// Writes visited fields as `"name":value` members of a JSON object, and sees whether their
/// names come in strictly rising order (none twice).
struct JsonObject<'a, W: Write> {
    /// Where the members go; `None` to see the names' order alone.
    out: Option<&'a mut W>,
    first: bool,
    result: std::fmt::Result,
    last: Option<&'static str>,
    sorted: bool,
}

impl<'a, W: Write> JsonObject<'a, W> {
    fn new(out: Option<&'a mut W>) -> Self {
        Self { out, first: true, result: Ok(()), last: None, sorted: true }
    }

    /// A member: its separator, its name (when the JSON format prints the field, see [`key`])
    /// and its value, which `value` writes.
    fn member(&mut self, field: &Field, debug: bool, value: impl FnOnce(&mut W) -> std::fmt::Result) {
        let Some(name) = key(field, debug) else { return };
        self.sorted &= self.last.is_none_or(|last| last < name);
        self.last = Some(name);
        let Some(out) = self.out.as_deref_mut().filter(|_| self.result.is_ok()) else { return };
        let separator = if std::mem::take(&mut self.first) { "" } else { "," };
        self.result = out
            .write_str(separator)
            .and_then(|()| write_json_string(out, name))
            .and_then(|()| out.write_char(':'))
            .and_then(|()| value(out));
    }
}

/// The kinds `JsonFields` takes apart; the rest arrive as `Debug`, as there.
impl<W: Write> Visit for JsonObject<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: null, as serde_json writes them.
        self.member(field, false, |out| write!(out, "{}", serde_json::Value::from(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, false, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, false, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, false, |out| write!(out, "{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, false, |out| write_json_string(out, value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.member(field, false, |out| write!(out, "{}", serde_json::Value::from(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.member(field, true, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
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
    /// formatted by `fields` (no timestamps).
    fn json_lines<N>(fields: N, log: impl FnOnce()) -> Vec<String>
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .without_time()
            .fmt_fields(fields)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.lock().expect("lock").clone()).expect("UTF-8");
        text.lines().map(str::to_string).collect()
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
        let sorted = tracing::error_span!("sorted", a = 1, b = "two", c = ?3);
        let _sorted = sorted.enter();
        tracing::error!("in a span whose fields come by name");
        let log = tracing::error_span!("log", log.target = "kept", log.file = ?"dropped", z = 1);
        let _log = log.enter();
        tracing::error!("in a span with log fields");
        let twice = tracing::error_span!("twice", b = 1, a = 2, b = 3);
        let _twice = twice.enter();
        tracing::error!("in a span with a name twice");
    }

    #[test]
    fn span_fields_print_as_the_json_format_prints_them() {
        let ours = json_lines(SpanFields, spans);
        let theirs = json_lines(tracing_subscriber::fmt::format::JsonFields::new(), spans);
        assert_eq!(ours.len(), 7, "{ours:#?}");
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours, theirs);
        }
        let parsed: Vec<serde_json::Value> =
            ours.iter().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        let text = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é 😀 \u{2028}";
        assert_eq!(parsed[0]["span"]["path"], text);
        assert_eq!(parsed[0]["span"]["type"], "plain");
        assert_eq!(parsed[0]["span"]["nan"], serde_json::Value::Null);
        assert_eq!(parsed[1]["spans"][0]["later"], "recorded after");
        assert_eq!(parsed[1]["spans"][0]["again"], 2);
        assert_eq!(parsed[2]["span"]["nested"], 5);
        assert_eq!(parsed[5]["span"]["log.target"], "kept");
        assert!(parsed[5]["span"].get("log.file").is_none(), "{}", ours[5]);
    }
}
