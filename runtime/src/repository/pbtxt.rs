//! Triton's `config.pbtxt` (protobuf text format), read for the subset nimify serves the same
//! way: `name`, `platform`/`backend`, `max_batch_size`, `dynamic_batching`, `instance_group`,
//! `version_policy`, `default_model_filename`, and `input`/`output` (checked against the model).
//! Every other field is refused by name: a setting nimify would not honour is never ignored.

use super::layout::{DeclaredTensor, ModelSettings, VersionPolicy, check_filename};
use crate::config::Config;

/// A parsed value: a scalar token (number, enum, bool), a string, or a message.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Scalar(String),
    Str(String),
    Message(Vec<(String, Value)>),
}

/// Reads `text` into the settings of the model in directory `dir_name`, over `server`'s.
pub(crate) fn settings(text: &str, dir_name: &str, server: &Config) -> Result<ModelSettings, String> {
    let fields = Parser { text: text.as_bytes(), at: 0, depth: 0 }.message(None)?;
    let top = Fields::new(&fields, "", TOP)?;
    if let Some(name) = top.string("name")?
        && name != dir_name
    {
        return Err(format!(
            "name {name:?} differs from the directory's name {dir_name:?}; Triton and nimify serve a model under its directory's name"
        ));
    }
    if let Some(p) = top.string("platform")?
        && p != "onnxruntime_onnx"
    {
        return Err(format!(
            "platform {p:?} is not served by nimify; it serves ONNX models (platform \"onnxruntime_onnx\")"
        ));
    }
    if let Some(b) = top.string("backend")?
        && b != "onnxruntime"
    {
        return Err(format!("backend {b:?} is not served by nimify; it serves ONNX models (backend \"onnxruntime\")"));
    }
    let max_batch_size = top.uint("max_batch_size")?.unwrap_or(0);
    let mut batching = server.batching.clone();
    match (max_batch_size, top.messages("dynamic_batching")?.first()) {
        (0, Some(_)) => return Err("dynamic_batching needs max_batch_size above 0".into()),
        (0, None) => batching.enabled = false,
        (n, dynamic) => {
            batching.max_batch_size = usize::try_from(n).map_err(|_| format!("max_batch_size {n} is too large"))?;
            // The server's preferred sizes apply to this model as far as its own bound allows.
            let max = batching.max_batch_size;
            batching.preferred_batch_size.retain(|&size| size <= max);
            batching.enabled = dynamic.is_some();
            if let Some(d) = dynamic {
                let d = Fields::new(d, "dynamic_batching.", DYNAMIC)?;
                if let Some(us) = d.uint("max_queue_delay_microseconds")? {
                    batching.max_queue_delay_us = us;
                }
                let preferred = d.uints("preferred_batch_size")?;
                if !preferred.is_empty() {
                    batching.preferred_batch_size = preferred
                        .into_iter()
                        .map(|n| usize::try_from(n).map_err(|_| format!("preferred_batch_size {n} is too large")))
                        .collect::<Result<_, _>>()?;
                }
            }
        }
    }
    let mut session = None;
    let groups = top.messages("instance_group")?;
    if !groups.is_empty() {
        let mut instances = 0usize;
        for g in groups {
            let g = Fields::new(g, "instance_group.", GROUP)?;
            if let Some(kind) = g.scalar("kind")?
                && !matches!(kind.as_str(), "KIND_CPU" | "KIND_AUTO")
            {
                return Err(format!(
                    "instance_group kind {kind} is not served by nimify; it runs instances on the CPU (KIND_CPU)"
                ));
            }
            let count = g.uint("count")?.unwrap_or(1);
            instances = instances.saturating_add(usize::try_from(count).unwrap_or(usize::MAX));
        }
        if instances == 0 {
            return Err("instance_group counts add up to 0; a model needs at least one instance".into());
        }
        session = Some(crate::config::SessionConfig { instances, ..server.session.clone() });
    }
    let policy = match top.messages("version_policy")?.as_slice() {
        [] => VersionPolicy::default(),
        [p] => policy(p)?,
        _ => return Err("version_policy is given twice".into()),
    };
    let filename =
        top.string("default_model_filename")?.unwrap_or_else(|| super::layout::DEFAULT_MODEL_FILENAME.into());
    check_filename(&filename)?;
    let mut declared = Vec::new();
    for kind in ["input", "output"] {
        for t in top.messages(kind)? {
            declared.push(tensor(kind, t)?);
        }
    }
    super::layout::check_sections(session.as_ref(), Some(&batching))?;
    Ok(ModelSettings {
        policy,
        session,
        batching: Some(batching),
        warmup: None,
        reference: None,
        filename,
        declared,
        batched: max_batch_size > 0,
    })
}

const TOP: &[&str] = &[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "dynamic_batching",
    "instance_group",
    "version_policy",
    "default_model_filename",
    "input",
    "output",
];
const DYNAMIC: &[&str] = &["max_queue_delay_microseconds", "preferred_batch_size"];
const GROUP: &[&str] = &["name", "count", "kind"];
const TENSOR: &[&str] = &["name", "data_type", "dims", "format"];

fn policy(fields: &[(String, Value)]) -> Result<VersionPolicy, String> {
    Fields::new(fields, "version_policy.", &["latest", "all", "specific"])?;
    match fields {
        [(k, Value::Message(inner))] if k == "latest" => {
            let n = Fields::new(inner, "version_policy.latest.", &["num_versions"])?.uint("num_versions")?.unwrap_or(0);
            match u32::try_from(n) {
                Ok(n) if n > 0 => Ok(VersionPolicy::Latest(n)),
                _ => Err(format!("version_policy latest num_versions {n}: it must be at least 1")),
            }
        }
        [(k, Value::Message(inner))] if k == "all" => {
            Fields::new(inner, "version_policy.all.", &[])?;
            Ok(VersionPolicy::All)
        }
        [(k, Value::Message(inner))] if k == "specific" => {
            let s = Fields::new(inner, "version_policy.specific.", &["versions"])?;
            let versions = s.uints("versions")?;
            if versions.is_empty() || versions.contains(&0) {
                return Err("version_policy specific needs positive versions: specific { versions: [1, 2] }".into());
            }
            Ok(VersionPolicy::Specific(versions))
        }
        _ => Err("version_policy is one of latest { num_versions: N }, all { } or specific { versions: [..] }".into()),
    }
}

fn tensor(kind: &'static str, fields: &[(String, Value)]) -> Result<DeclaredTensor, String> {
    let t = Fields::new(fields, &format!("{kind}."), TENSOR)?;
    let name = t.string("name")?.ok_or_else(|| format!("an {kind} has no name"))?;
    let data_type = t.scalar("data_type")?.ok_or_else(|| format!("{kind} {name:?} has no data_type"))?;
    let datatype = data_type
        .strip_prefix("TYPE_")
        .map(|d| if d == "STRING" { "BYTES" } else { d })
        .filter(|d| {
            matches!(
                *d,
                "BOOL"
                    | "UINT8"
                    | "UINT16"
                    | "UINT32"
                    | "UINT64"
                    | "INT8"
                    | "INT16"
                    | "INT32"
                    | "INT64"
                    | "FP16"
                    | "FP32"
                    | "FP64"
                    | "BYTES"
                    | "BF16"
            )
        })
        .ok_or_else(|| format!("{kind} {name:?}: data_type {data_type} is not a tensor type nimify serves"))?;
    if let Some(format) = t.scalar("format")?
        && format != "FORMAT_NONE"
    {
        return Err(format!("{kind} {name:?}: format {format} is not supported (only FORMAT_NONE)"));
    }
    let dims = t.ints("dims")?;
    Ok(DeclaredTensor { kind, name, datatype: datatype.to_string(), dims })
}

/// Checks the tensors a `config.pbtxt` declares against a loaded model's signature.
pub(crate) fn check_declared(settings: &ModelSettings, model: &crate::model::Model) -> Result<(), String> {
    let mut problems = Vec::new();
    if settings.batched {
        let fixed0 = model.inputs().iter().chain(model.outputs()).find(|s| !s.dynamic_dim0());
        if let Some(spec) = fixed0 {
            problems.push(format!(
                "max_batch_size > 0 needs every input and output to have a dynamic dim 0, and {:?} has shape {:?}; set max_batch_size: 0",
                spec.name,
                spec.metadata_shape()
            ));
        }
    }
    for d in &settings.declared {
        let specs = if d.kind == "input" { model.inputs() } else { model.outputs() };
        let Some(spec) = specs.iter().find(|s| s.name == d.name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            problems.push(format!("{} {:?} is not in the model (its {}s: {names:?})", d.kind, d.name, d.kind));
            continue;
        };
        if spec.datatype() != d.datatype {
            problems.push(format!("{} {:?} is {} in the model, not {}", d.kind, d.name, spec.datatype(), d.datatype));
        }
        let mut shape = spec.metadata_shape();
        if settings.batched && !shape.is_empty() {
            shape.remove(0);
        }
        let fits =
            shape.len() == d.dims.len() && shape.iter().zip(&d.dims).all(|(m, c)| *m == -1 || *c == -1 || m == c);
        if spec.shape.is_some() && !fits {
            problems.push(format!(
                "{} {:?} has dims {shape:?} in the model{}, not {:?}",
                d.kind,
                d.name,
                if settings.batched { " (less the batch dim)" } else { "" },
                d.dims
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("config.pbtxt does not match the model: {}", problems.join("; ")))
    }
}

/// A message's fields, with every name checked against what nimify supports.
struct Fields<'a> {
    fields: &'a [(String, Value)],
    path: String,
}

impl<'a> Fields<'a> {
    fn new(fields: &'a [(String, Value)], path: &str, supported: &[&str]) -> Result<Self, String> {
        for (name, _) in fields {
            if !supported.contains(&name.as_str()) {
                return Err(format!(
                    "field {path}{name} is not supported by nimify{}; remove it, or serve the model with a config.toml",
                    if supported.is_empty() {
                        String::new()
                    } else {
                        format!(" (supported here: {})", supported.join(", "))
                    }
                ));
            }
        }
        Ok(Self { fields, path: path.to_string() })
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &'a Value> {
        self.fields.iter().filter(move |(n, _)| n == name).map(|(_, v)| v)
    }

    fn one(&self, name: &str) -> Result<Option<&'a Value>, String> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(format!("field {}{name} is given twice", self.path));
        }
        Ok(first)
    }

    fn string(&self, name: &str) -> Result<Option<String>, String> {
        match self.one(name)? {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field {}{name} must be a quoted string", self.path)),
        }
    }

    fn scalar(&self, name: &str) -> Result<Option<String>, String> {
        match self.one(name)? {
            None => Ok(None),
            Some(Value::Scalar(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field {}{name} must be a plain value", self.path)),
        }
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, String> {
        self.scalar(name)?
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| format!("field {}{name} must be a whole number at least 0, not {s}", self.path))
            })
            .transpose()
    }

    fn ints(&self, name: &str) -> Result<Vec<i64>, String> {
        self.all(name)
            .map(|v| match v {
                Value::Scalar(s) => {
                    s.parse::<i64>().map_err(|_| format!("field {}{name} must hold whole numbers, not {s}", self.path))
                }
                _ => Err(format!("field {}{name} must hold whole numbers", self.path)),
            })
            .collect()
    }

    fn uints(&self, name: &str) -> Result<Vec<u64>, String> {
        self.ints(name)?
            .into_iter()
            .map(|n| u64::try_from(n).map_err(|_| format!("field {}{name}: {n} is below 0", self.path)))
            .collect()
    }

    fn messages(&self, name: &str) -> Result<Vec<&'a [(String, Value)]>, String> {
        self.all(name)
            .map(|v| match v {
                Value::Message(m) => Ok(m.as_slice()),
                _ => Err(format!("field {}{name} must be a message: {name} {{ ... }}", self.path)),
            })
            .collect()
    }
}

/// A protobuf text-format parser: fields `name: value`, `name { ... }` (or `< ... >`), lists
/// `name: [a, b]` (kept as repeated fields), strings in either quote with C escapes, `#`
/// comments, optional `,`/`;` separators.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    /// Messages open around the current field.
    depth: usize,
}

/// Deepest nesting of messages accepted: Triton's configurations nest four levels at most, and
/// a parser without a bound would let a file overflow the stack.
const MAX_DEPTH: usize = 32;

impl Parser<'_> {
    fn message(&mut self, close: Option<u8>) -> Result<Vec<(String, Value)>, String> {
        let mut fields = Vec::new();
        loop {
            self.skip();
            match (self.peek(), close) {
                (None, None) => return Ok(fields),
                (None, Some(c)) => return Err(self.error(&format!("the file ends before the closing {:?}", c as char))),
                (Some(c), Some(want)) if c == want => {
                    self.at += 1;
                    return Ok(fields);
                }
                _ => {}
            }
            let name = self.ident().ok_or_else(|| self.error("expected a field name"))?;
            self.skip();
            let colon = self.peek() == Some(b':');
            if colon {
                self.at += 1;
                self.skip();
            }
            match self.peek() {
                Some(b'[') => {
                    self.at += 1;
                    loop {
                        self.skip();
                        if self.peek() == Some(b']') {
                            self.at += 1;
                            break;
                        }
                        fields.push((name.clone(), self.value()?));
                        self.skip();
                        match self.peek() {
                            Some(b',') => self.at += 1,
                            Some(b']') => {}
                            _ => return Err(self.error(&format!("expected , or ] in the list of {name}"))),
                        }
                    }
                }
                Some(b'{' | b'<') => fields.push((name, self.value()?)),
                _ if colon => fields.push((name, self.value()?)),
                _ => return Err(self.error(&format!("expected : or {{ after {name}"))),
            }
            self.skip();
            if matches!(self.peek(), Some(b',' | b';')) {
                self.at += 1;
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(open @ (b'{' | b'<')) => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error(&format!("messages nest deeper than {MAX_DEPTH} levels")));
                }
                let message = self.message(Some(if open == b'{' { b'}' } else { b'>' }))?;
                self.depth -= 1;
                Ok(Value::Message(message))
            }
            Some(b'"' | b'\'') => {
                let mut s = self.string()?;
                // Adjacent strings are one string.
                loop {
                    self.skip();
                    if !matches!(self.peek(), Some(b'"' | b'\'')) {
                        break;
                    }
                    s.push_str(&self.string()?);
                }
                Ok(Value::Str(s))
            }
            _ => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.')) {
                    self.at += 1;
                }
                if start == self.at {
                    return Err(self.error("expected a value"));
                }
                Ok(Value::Scalar(String::from_utf8_lossy(&self.text[start..self.at]).into_owned()))
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.text[self.at];
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else { return Err(self.error("a string is not closed")) };
            self.at += 1;
            match c {
                b'\n' => return Err(self.error("a string is not closed on its line")),
                c if c == quote => break,
                b'\\' => {
                    let Some(e) = self.peek() else { return Err(self.error("a string is not closed")) };
                    self.at += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'0' => 0,
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("a string is not UTF-8"))
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
            self.at += 1;
        }
        let ident = &self.text[start..self.at];
        (!ident.is_empty() && !ident[0].is_ascii_digit()).then(|| String::from_utf8_lossy(ident).into_owned())
    }

    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn error(&self, what: &str) -> String {
        let line = self.text[..self.at.min(self.text.len())].iter().filter(|&&c| c == b'\n').count() + 1;
        format!("line {line}: {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRITON: &str = r#"
        # A config as Triton's docs write them.
        name: "mlp"
        platform: "onnxruntime_onnx"
        max_batch_size: 16
        dynamic_batching { max_queue_delay_microseconds: 200 preferred_batch_size: [ 4, 8 ] }
        instance_group [ { count: 2, kind: KIND_CPU } ]
        version_policy: { specific: { versions: [1, 3] } }
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 64 ] } ]
        output { name: 'y', data_type: TYPE_FP32, dims: [10] }
    "#;

    #[test]
    fn the_common_subset_is_read() {
        let s = settings(TRITON, "mlp", &Config::default()).expect("parse");
        let b = s.batching.expect("batching");
        assert!(b.enabled);
        assert_eq!((b.max_batch_size, b.max_queue_delay_us), (16, 200));
        assert_eq!(b.preferred_batch_size, [4, 8]);
        assert_eq!(s.session.expect("session").instances, 2);
        assert_eq!(s.policy, VersionPolicy::Specific(vec![1, 3]));
        assert!(s.batched);
        assert_eq!(s.declared.len(), 2);
        assert_eq!(
            s.declared[0],
            DeclaredTensor { kind: "input", name: "x".into(), datatype: "FP32".into(), dims: vec![64] }
        );
        assert_eq!(s.declared[1].name, "y");
        let latest =
            settings("version_policy { latest { num_versions: 2 } }", "m", &Config::default()).expect("latest");
        assert_eq!(latest.policy, VersionPolicy::Latest(2));
        assert!(!latest.batching.expect("batching").enabled, "max_batch_size 0: no batching");
        let all = settings("max_batch_size: 8\nversion_policy: { all { } }", "m", &Config::default()).expect("all");
        assert_eq!(all.policy, VersionPolicy::All);
        assert!(!all.batching.expect("batching").enabled, "no dynamic_batching block: no merging");
        let mut server = Config::default();
        server.batching.preferred_batch_size = vec![2, 16];
        let small = settings("max_batch_size: 4\ndynamic_batching { }", "m", &server).expect("inherited sizes");
        assert_eq!(small.batching.expect("batching").preferred_batch_size, [2], "16 is above this model's bound");
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let deep = format!("input {}", "{ a ".repeat(10_000));
        for (text, needle) in [
            ("optimization { }", "field optimization is not supported"),
            ("max_batch_size: 4 dynamic_batching { preserve_ordering: true }", "dynamic_batching.preserve_ordering"),
            ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [2, 8] }", "preferred_batch_size 8"),
            ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [0] }", "preferred_batch_size 0"),
            ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [-1] }", "below 0"),
            ("instance_group { kind: KIND_GPU }", "KIND_GPU"),
            ("instance_group { count: 1 gpus: [0] }", "instance_group.gpus"),
            ("platform: \"tensorrt_plan\"", "tensorrt_plan"),
            ("backend: \"python\"", "python"),
            ("name: \"other\"", "differs from the directory"),
            ("dynamic_batching { }", "max_batch_size above 0"),
            ("input { name: \"x\" data_type: TYPE_FP32 dims: [1] reshape { shape: [1] } }", "input.reshape"),
            ("input { name: \"x\" data_type: TYPE_COMPLEX dims: [1] }", "TYPE_COMPLEX"),
            ("version_policy { latest { num_versions: 0 } }", "at least 1"),
            ("max_batch_size: -1", "whole number"),
            ("max_batch_size: 1 max_batch_size: 2", "twice"),
            ("name: \"m", "not closed"),
            ("input { name: \"x\"", "ends before"),
            ("model_warmup [ { name: \"w\" } ]", "model_warmup"),
            ("sequence_batching { }", "sequence_batching"),
            ("instance_group [ { count: 0 } ]", "add up to 0"),
            (deep.as_str(), "deeper than 32"),
        ] {
            let e = settings(text, "m", &Config::default()).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
