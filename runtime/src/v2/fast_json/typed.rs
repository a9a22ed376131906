//! The fast reader as a serde `Deserializer`, for the typed routes' request types: arrays,
//! objects and numbers are read here (floats by the same byte loop as V2 `data`), every other
//! value by serde_json from its own span. It visits exactly what serde_json's deserializer
//! visits (integers as `u64` / `i64`, `-0` and every other number as the correctly rounded
//! `f64`, strings borrowed), so a type reads the same value either way. Anything it does not
//! take (an escaped key, deep nesting, a value its type refuses) is [`Declined`] and read again
//! by serde_json, which gives the answer or the error.

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

use super::{Number, POW10, POW10_F32, Reader, f32_of};

/// Deepest nesting read here (serde_json's own limit is 128).
const MAX_DEPTH: usize = 100;

/// A typed route's JSON read into `T` by the fast reader, or `None` for serde_json to read.
pub(crate) fn read<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
    DECLINED.set(false);
    let mut r = Reader { b: json, i: 0 };
    let value = T::deserialize(Fast { r: &mut r, depth: 0 });
    r.ws();
    // A decline the type caught and went on from still stands: this reader may have moved
    // where serde_json's would not.
    (!DECLINED.get() && r.i == json.len()).then_some(value.ok()?)
}

thread_local! {
    /// Whether anything was declined (or refused by the type) during this thread's read.
    static DECLINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Not read here: serde_json reads the body again. Made by [`declined`] only, which records it
/// for [`read`] even when the type's `Deserialize` catches it.
#[derive(Debug)]
pub(crate) struct Declined(());

fn declined() -> Declined {
    DECLINED.set(true);
    Declined(())
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("declined by the fast reader")
    }
}

impl std::error::Error for Declined {}

impl de::Error for Declined {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        declined()
    }
}

struct Fast<'a, 'r> {
    r: &'r mut Reader<'a>,
    depth: usize,
}

impl<'a> Fast<'a, '_> {
    /// The next value read by serde_json as the visitor asks, from its span.
    fn delegate<V>(
        self,
        read: impl FnOnce(&mut serde_json::Deserializer<serde_json::de::SliceRead<'a>>) -> Result<V, serde_json::Error>,
    ) -> Result<V, Declined> {
        let span = self.r.span().ok_or_else(declined)?;
        // serde_json's depth limit counts the containers around the value too.
        if self.depth + nesting(span) > MAX_DEPTH {
            return Err(declined());
        }
        let mut de = serde_json::Deserializer::from_slice(span);
        let value = read(&mut de).map_err(|_| declined())?;
        de.end().map_err(|_| declined())?;
        Ok(value)
    }

    /// A number, visited as serde_json visits it: non-negative integers as `u64`, negative ones
    /// as `i64`, `-0`, fractions, exponents and integers beyond 64 bits as the correctly rounded
    /// `f64`, or (`single`, for an `f32`) the correctly rounded `f32` widened, refused beyond
    /// its range.
    fn number<V: Visitor<'a>>(self, visitor: V, single: bool) -> Result<V::Value, Declined> {
        let start = self.r.i;
        if let Some((negative, m, fraction)) = self.r.plain(true) {
            let x = match single {
                // Both exact in an f32, so one rounding.
                true if m < 1 << 24 && fraction <= 10 => f64::from(m as f32 / POW10_F32[fraction]),
                // The text has its sign already.
                true => return visitor.visit_f64(f32_of(&self.r.b[start..self.r.i]).ok_or_else(declined)?),
                false => m as f64 / POW10[fraction],
            };
            return visitor.visit_f64(if negative { -x } else { x });
        }
        let n = self.r.number().ok_or_else(declined)?;
        let float = |n: &Number<'_>| if single { n.f32() } else { n.f64() };
        match n.mantissa.filter(|_| n.integer) {
            Some(m) if !n.negative => visitor.visit_u64(m),
            Some(m) if m > 0 => match 0i64.checked_sub_unsigned(m) {
                Some(v) => visitor.visit_i64(v),
                // Below i64::MIN serde_json visits the double, for an f32 too.
                None => visitor.visit_f64(-(m as f64)),
            },
            _ => visitor.visit_f64(float(&n).ok_or_else(declined)?),
        }
    }

    fn nested(&mut self) -> Result<Fast<'a, '_>, Declined> {
        if self.depth >= MAX_DEPTH {
            return Err(declined());
        }
        Ok(Fast { r: &mut *self.r, depth: self.depth + 1 })
    }

    fn seq<V: Visitor<'a>>(mut self, visitor: V) -> Result<V::Value, Declined> {
        self.r.eat(b'[').ok_or_else(declined)?;
        let value = visitor.visit_seq(Items { fast: self.nested()?, first: true })?;
        // Every item taken: serde_json refuses items the type leaves.
        self.r.eat(b']').ok_or_else(declined)?;
        Ok(value)
    }

    fn map<V: Visitor<'a>>(mut self, visitor: V) -> Result<V::Value, Declined> {
        self.r.eat(b'{').ok_or_else(declined)?;
        let value = visitor.visit_map(Members { fast: self.nested()?, first: true })?;
        self.r.eat(b'}').ok_or_else(declined)?;
        Ok(value)
    }
}

/// How deep arrays and objects nest in `span` (brackets in strings aside).
fn nesting(span: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &c in span {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Numbers here (`f32`s at single precision), anything else from serde_json.
macro_rules! numbers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
            match self.r.peek() {
                Some(b'-' | b'0'..=b'9') => self.number(visitor, stringify!($method) == "deserialize_f32"),
                _ => self.delegate(|de| de::Deserializer::$method(de, visitor)),
            }
        }
    )*};
}

macro_rules! delegated {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
            self.delegate(|de| de::Deserializer::$method(de, visitor))
        }
    )*};
}

impl<'a> de::Deserializer<'a> for Fast<'a, '_> {
    type Error = Declined;

    numbers!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_u8 deserialize_u16
        deserialize_u32 deserialize_u64 deserialize_f32 deserialize_f64);

    delegated!(deserialize_i128 deserialize_u128 deserialize_bool deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_identifier
        deserialize_ignored_any);

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.r.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(visitor, false),
            Some(b'[') => self.seq(visitor),
            Some(b'{') => self.map(visitor),
            _ => self.delegate(|de| de::Deserializer::deserialize_any(de, visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        if self.r.peek() == Some(b'n') {
            self.delegate(|de| de::Deserializer::deserialize_option(de, visitor))
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(self, name: &'static str, visitor: V) -> Result<V::Value, Declined> {
        self.delegate(|de| de::Deserializer::deserialize_unit_struct(de, name, visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(self, name: &'static str, visitor: V) -> Result<V::Value, Declined> {
        // serde_json's raw values are its own business.
        if name.starts_with("$serde_json") {
            return Err(declined());
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.r.peek() {
            Some(b'[') => self.seq(visitor),
            _ => Err(declined()),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.r.peek() {
            Some(b'{') => self.map(visitor),
            _ => Err(declined()),
        }
    }

    /// An object, or an array of the fields in order, as serde_json takes structs.
    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Declined> {
        match self.r.peek() {
            Some(b'{') => self.map(visitor),
            Some(b'[') => self.seq(visitor),
            _ => Err(declined()),
        }
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Declined> {
        self.delegate(|de| de::Deserializer::deserialize_enum(de, name, variants, visitor))
    }
}

/// An array's items.
struct Items<'a, 'r> {
    fast: Fast<'a, 'r>,
    first: bool,
}

impl<'a> de::SeqAccess<'a> for Items<'a, '_> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<Option<T::Value>, Declined> {
        let r = &mut *self.fast.r;
        match r.peek().ok_or_else(declined)? {
            b']' => return Ok(None),
            b',' if !self.first => {
                r.i += 1;
                // `[1,]`: refused whatever the item's type would make of nothing.
                if r.peek() == Some(b']') {
                    return Err(declined());
                }
            }
            _ if self.first => {}
            _ => return Err(declined()),
        }
        self.first = false;
        seed.deserialize(Fast { r: &mut *self.fast.r, depth: self.fast.depth }).map(Some)
    }
}

/// An object's members; keys with escapes are declined.
struct Members<'a, 'r> {
    fast: Fast<'a, 'r>,
    first: bool,
}

impl<'a> de::MapAccess<'a> for Members<'a, '_> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'a>>(&mut self, seed: K) -> Result<Option<K::Value>, Declined> {
        let r = &mut *self.fast.r;
        match r.peek().ok_or_else(declined)? {
            b'}' => return Ok(None),
            b',' if !self.first => r.i += 1,
            _ if self.first => {}
            _ => return Err(declined()),
        }
        self.first = false;
        r.eat(b'"').ok_or_else(declined)?;
        let start = r.i;
        r.string_end().ok_or_else(declined)?;
        let b: &'a [u8] = r.b;
        let key = &b[start..r.i - 1];
        if key.contains(&b'\\') {
            return Err(declined());
        }
        let key = std::str::from_utf8(key).map_err(|_| declined())?;
        r.eat(b':').ok_or_else(declined)?;
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        seed.deserialize(Fast { r: &mut *self.fast.r, depth: self.fast.depth })
    }
}

/// An unescaped key: a borrowed string to whoever asks for a string or identifier, as
/// serde_json gives it; keys read as other types are declined.
struct Key<'a>(&'a str);

impl<'a> de::Deserializer<'a> for Key<'a> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Declined> {
        visitor.visit_borrowed_str(self.0)
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'a>>
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map struct enum ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;

    use serde::Deserialize;
    use serde::de::DeserializeOwned;

    /// Whether the fast reader took `json` as `T`; whatever it reads, serde_json reads the same
    /// (compared as `Debug` text, so `-0.0` and `0.0` differ).
    fn same<T: DeserializeOwned + Debug>(json: &str) -> bool {
        let reference = serde_json::from_slice::<T>(json.as_bytes()).map(|v| format!("{v:?}"));
        match super::read::<T>(json.as_bytes()) {
            Some(v) => {
                assert_eq!(Ok(format!("{v:?}")), reference.map_err(|e| e.to_string()), "{json}");
                true
            }
            None => false,
        }
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Image {
        image: Vec<Vec<f32>>,
        scale: Option<f64>,
        #[serde(default)]
        label: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        a: u8,
        b: i16,
        c: (f32, i64),
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        Plain,
        Scaled(f32),
        Box { x: u32, y: u32 },
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Either {
        Numbers(Vec<f64>),
        Text(String),
        Pair { left: i64, right: u64 },
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Flat {
        id: u32,
        #[serde(flatten)]
        rest: BTreeMap<String, serde_json::Value>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Everything {
        i8: i8,
        u64: u64,
        i128: i128,
        f32: f32,
        boolean: bool,
        letter: char,
        name: String,
        kind: Kind,
        either: Either,
        map: HashMap<String, i32>,
        value: serde_json::Value,
        bytes: Option<Vec<u8>>,
    }

    #[test]
    fn takes_what_typed_clients_send_and_reads_it_as_serde_json_does() {
        let taken = [
            r#"{"image": [[0.5, -1.25, 3.0], [1e2, -0.0, 7]], "scale": 0.001, "label": "cat"}"#,
            r#"{"image": [], "scale": null}"#,
            r#" {"image":[[1,2,3]],"extra":{"deep":[1,{"x":null}]}} "#,
            r#"{"image": [[-0, 0, 18446744073709551615, -9223372036854775808, 3.4028235e38, 1e-46]]}"#,
            r#"[[[0.1, 0.2]], 2.5, "dog"]"#,
        ];
        for json in taken {
            assert!(same::<Image>(json), "the fast reader should take {json}");
        }
        assert!(same::<Strict>(r#"{"a": 255, "b": -32768, "c": [1.5, -7]}"#));
        assert!(same::<Vec<f32>>("[16777217, 3.4028235e38, 1e-46, 0.30000000000000004, -1.5]"));
        assert!(same::<Vec<f64>>("[9007199254740993, 2.2250738585072011e-308, 5e-324, -0.0]"));
        // Beyond an f32's range: serde_json refuses it for an f32, so it is declined.
        assert!(!same::<Vec<f32>>("[1.5, 3.4028236e38]") && !same::<Vec<f32>>("[1e39]"));
        let everything = r#"{"i8": -128, "u64": 18446744073709551615, "i128": -170141183460469231731687303715884105728,
            "f32": 0.1, "boolean": true, "letter": "é", "name": "a \"quoted\" \u00e9",
            "kind": {"Box": {"x": 1, "y": 2}},
            "either": [0.5], "map": {"k": 1, "k": 2}, "value": {"z": [1, -1, 1.5, "s", null, true]},
            "bytes": [0, 255]}"#;
        assert!(same::<Everything>(everything));
        // Keys read as numbers are serde_json's.
        assert!(!same::<BTreeMap<u32, f32>>(r#"{"7": 0.5}"#));
        assert!(same::<Flat>(r#"{"id": 3, "b": [1.5, {"c": -2}], "a": "x"}"#));
        assert!(same::<Kind>(r#""Plain""#) && same::<Kind>(r#"{"Scaled": 2.5}"#));
        // An untagged enum whose first variant fails is serde_json's (the failure is a decline).
        assert!(same::<Either>("[1, 2.5, -3]") && !same::<Either>(r#""text""#));
        // f32s as serde_json reads them with float_roundtrip: rounded once, to f32.
        assert!(same::<Vec<f32>>("[0.87654321, 0.00000012345, 1.5, -2.25, 16777217, 0.1e1]"));
        assert!(same::<f32>("-9223372586610589697") && same::<f32>("18446744073709551617"));
    }

    #[test]
    fn what_serde_json_refuses_is_declined() {
        let bodies = [
            "",
            "[",
            "[1,]",
            "[1 2]",
            "[1]]",
            "[1] x",
            "[01]",
            "[1.]",
            "[.5]",
            "[-]",
            "[1e400]",
            "[NaN]",
            r#"["1"]"#,
            "[true]",
            "[null]",
            r#"{"image": [[1]], "image": [[2]]}"#,
            r#"{"image": [[1]],}"#,
            r#"{"image" [[1]]}"#,
            r#"{"im\u0061ge": [[1]]}"#,
            r#"{"image": [[1]], "scale": nul}"#,
            r#"{"image": [[1]], "extra": [1,]}"#,
            r#"{"a": 256, "b": 0, "c": [1, 2]}"#,
            r#"{"a": 1, "b": 0, "c": [1, 2, 3]}"#,
            r#"{"a": 1, "b": 0, "c": [1]}"#,
            r#"{"a": 1, "b": 0, "c": [1, 2], "d": 0}"#,
            r#"{"a": -1, "b": 0, "c": [1, 2]}"#,
            r#"{"a": 1.0, "b": 0, "c": [1, 2]}"#,
        ];
        for json in bodies {
            assert!(!same::<Image>(json) || serde_json::from_str::<Image>(json).is_ok(), "{json}");
            assert!(!same::<Strict>(json) || serde_json::from_str::<Strict>(json).is_ok(), "{json}");
            assert!(!same::<Vec<f32>>(json) || serde_json::from_str::<Vec<f32>>(json).is_ok(), "{json}");
        }
        // Nesting past the reader's depth is left to serde_json, whose own limit refuses it.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(!same::<serde_json::Value>(&deep));
        let shallow = format!("{}1{}", "[".repeat(50), "]".repeat(50));
        assert!(same::<serde_json::Value>(&shallow));
    }

    /// A field that turns any failure into `None`.
    fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        Ok(u8::deserialize(d).ok())
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Lenient {
        #[serde(deserialize_with = "lenient")]
        x: Option<u8>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(u8),
        Node(Vec<Tree>),
    }

    #[test]
    fn a_decline_the_type_catches_still_stands_and_depth_counts_across_delegated_values() {
        // serde_json stops at the object a u8 cannot be; this reader skipped it.
        assert!(!same::<Lenient>(r#"{"x": {"a": 1}}"#));
        assert!(same::<Lenient>(r#"{"x": 7}"#));
        // Enums are serde_json's, inside containers this reader counted: 128 levels in all is
        // past serde_json's limit.
        for levels in [10, 63, 64] {
            let tree = format!("[{}{{\"Leaf\":0}}{}]", "{\"Node\":[".repeat(levels), "]}".repeat(levels));
            same::<Vec<Tree>>(&tree);
        }
        assert!(same::<Vec<Tree>>(r#"[{"Node": [{"Leaf": 1}]}]"#));
        // A trailing comma is refused before any item is asked for.
        assert!(!same::<Vec<serde::de::IgnoredAny>>("[1,]"));
    }

    #[test]
    fn random_numbers_in_every_spelling_read_exactly() {
        for texts in crate::v2::fast_json::tests::spelled_numbers() {
            let json = format!("[{}]", texts.join(", "));
            assert!(same::<Vec<f64>>(&json), "{json}");
            same::<Vec<f32>>(&json);
            same::<Vec<i64>>(&json);
            same::<Vec<serde_json::Value>>(&json);
        }
    }
}
