//! FHIR JSON helpers: a bounded, borrowing JSON tree with strict accessors, and a small
//! writer.
//!
//! serde_json does the tokenising; the tree keeps every object member in document order
//! (duplicates included, so that a repeated property is detected rather than silently
//! overwritten) and borrows strings from the body where it can. Errors name element paths,
//! never values.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::FhirError;
use super::common::{ElementExt, Path, ResourceWriter, echo_name, is_xml_text, strip_bom};

/// The deepest array/object nesting the reader accepts (the resource object is level 1).
pub(crate) const MAX_DEPTH: usize = 64;

/// The most values (of any kind) a document may hold, which bounds the tree's memory; a
/// Subscription has a few dozen.
pub(crate) const MAX_VALUES: usize = 20_000;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number (its value is not needed by any reader).
    Number,
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Value<'a>>),
    /// An object, members in document order.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// Parses `body` as one JSON value, rejecting trailing content and deep nesting.
pub(crate) fn parse(body: &[u8]) -> Result<Value<'_>, FhirError> {
    let mut de = serde_json::Deserializer::from_slice(strip_bom(body));
    let budget = Cell::new(MAX_VALUES);
    let value = ValueSeed {
        depth: 0,
        budget: &budget,
    }
    .deserialize(&mut de)
    .map_err(syntax)?;
    de.end().map_err(syntax)?;
    Ok(value)
}

fn syntax(e: serde_json::Error) -> FhirError {
    if e.classify() == serde_json::error::Category::Data {
        // Only the limits below raise data errors; their text holds no value.
        return FhirError::NotWellFormed(e.to_string());
    }
    FhirError::NotWellFormed(format!(
        "malformed json at line {} column {}",
        e.line(),
        e.column()
    ))
}

// === Accessors ===

fn kind(value: &Value<'_>) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: Path<'_>, want: &str, got: &Value<'_>) -> FhirError {
    FhirError::Invalid(format!("{path} must be {want}, not {}", kind(got)))
}

/// Returns the string at `path`; FHIR strings are never empty and carry only characters XML
/// can carry too.
pub(crate) fn string(value: &Value<'_>, path: Path<'_>) -> Result<String, FhirError> {
    let Value::String(s) = value else {
        return Err(wrong_type(path, "a string", value));
    };
    if s.is_empty() {
        return Err(FhirError::Invalid(format!("{path} must not be empty")));
    }
    if !is_xml_text(s) {
        return Err(FhirError::Invalid(format!(
            "{path} contains a control character"
        )));
    }
    Ok(s.to_string())
}

/// Returns the boolean at `path`.
pub(crate) fn boolean(value: &Value<'_>, path: Path<'_>) -> Result<bool, FhirError> {
    match value {
        Value::Bool(b) => Ok(*b),
        _ => Err(wrong_type(path, "a boolean", value)),
    }
}

/// Returns the items of the (non-empty) array at `path`.
pub(crate) fn array<'v, 'a>(
    value: &'v Value<'a>,
    path: Path<'_>,
) -> Result<&'v [Value<'a>], FhirError> {
    match value {
        Value::Array(items) if items.is_empty() => Err(FhirError::Invalid(format!(
            "{path} must not be an empty array"
        ))),
        Value::Array(items) => Ok(items),
        _ => Err(wrong_type(path, "an array", value)),
    }
}

/// Iterates the members of the (non-empty) object at `path`, each as one of `known`; an
/// unknown or repeated member is an error, and so is a `_x` member without its `x`.
pub(crate) fn fields<'v, 'a>(
    value: &'v Value<'a>,
    known: &'static [&'static str],
    path: &'static str,
) -> Result<Fields<'v, 'a>, FhirError> {
    debug_assert!(known.len() <= 64, "seen is a u64 bit set");
    match value {
        Value::Object(members) if members.is_empty() => Err(FhirError::Invalid(format!(
            "{path} must not be an empty object"
        ))),
        Value::Object(members) => Ok(Fields {
            members: members.iter(),
            known,
            seen: 0,
            path,
        }),
        _ => Err(wrong_type(Path(path, ""), "an object", value)),
    }
}

/// Checks that the value at `path` is a non-empty object (an element NEMS does not read).
pub(crate) fn object(value: &Value<'_>, path: Path<'_>) -> Result<(), FhirError> {
    match value {
        Value::Object(members) if members.is_empty() => Err(FhirError::Invalid(format!(
            "{path} must not be an empty object"
        ))),
        Value::Object(_) => Ok(()),
        _ => Err(wrong_type(path, "an object", value)),
    }
}

/// See [`fields`].
#[derive(Debug)]
pub(crate) struct Fields<'v, 'a> {
    members: std::slice::Iter<'v, (Cow<'a, str>, Value<'a>)>,
    known: &'static [&'static str],
    seen: u64,
    path: &'static str,
}

impl Fields<'_, '_> {
    /// Checks, once every member is read, that every `_x` member seen has its `x` member too,
    /// and that the object holds more than an `id` (FHIR `ele-1`).
    fn check_pairs(&self) -> Result<(), FhirError> {
        let id_only = self
            .known
            .iter()
            .position(|k| *k == "id")
            .map(|i| 1u64 << i);
        if id_only == Some(self.seen) {
            return Err(FhirError::Invalid(format!("{} has no content", self.path)));
        }
        for (i, name) in self.known.iter().enumerate() {
            let Some(base) = name.strip_prefix('_') else {
                continue;
            };
            if self.seen & (1 << i) == 0 {
                continue;
            }
            let has_base = self
                .known
                .iter()
                .position(|k| *k == base)
                .is_some_and(|j| self.seen & (1 << j) != 0);
            if !has_base {
                return Err(FhirError::Invalid(format!(
                    "{}.{base} has no value",
                    self.path
                )));
            }
        }
        Ok(())
    }
}

impl<'v, 'a> Iterator for Fields<'v, 'a> {
    type Item = Result<(&'static str, &'v Value<'a>), FhirError>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some((name, value)) = self.members.next() else {
            return match self.check_pairs() {
                Ok(()) => None,
                Err(e) => {
                    // Report once, then stop.
                    self.seen = 0;
                    Some(Err(e))
                }
            };
        };
        let Some(i) = self.known.iter().position(|k| *k == name.as_ref()) else {
            return Some(Err(FhirError::Invalid(format!(
                "unknown element {} in {}",
                echo_name(name),
                self.path
            ))));
        };
        if self.seen & (1 << i) != 0 {
            return Some(Err(FhirError::Invalid(format!(
                "{}.{} is repeated",
                self.path, self.known[i]
            ))));
        }
        self.seen |= 1 << i;
        Some(Ok((self.known[i], value)))
    }
}

/// Reads a `_x` companion of a single primitive: an object with `id` and/or `extension`.
pub(crate) fn element_ext(value: &Value<'_>, path: Path<'_>) -> Result<ElementExt, FhirError> {
    let Value::Object(members) = value else {
        return Err(wrong_type(path, "an object", value));
    };
    if members.is_empty() {
        return Err(FhirError::Invalid(format!(
            "{path} must not be an empty object"
        )));
    }
    let mut ext = ElementExt::default();
    for (key, v) in members {
        match (key.as_ref(), v) {
            ("id", Value::String(s)) if !ext.id && !s.is_empty() => ext.id = true,
            ("extension", Value::Array(items)) if !ext.extension && !items.is_empty() => {
                ext.extension = true;
            }
            ("id" | "extension", _) => {
                return Err(FhirError::Invalid(format!(
                    "{path}.{key} is repeated, empty or of the wrong type"
                )));
            }
            _ => {
                return Err(FhirError::Invalid(format!(
                    "unknown element {} in {path}",
                    echo_name(key)
                )));
            }
        }
    }
    Ok(ext)
}

/// Reads a `_x` companion of a repeated primitive (an array of `null` or objects) and returns
/// its length with what its items carry.
pub(crate) fn element_ext_list(
    value: &Value<'_>,
    path: Path<'_>,
) -> Result<(usize, ElementExt), FhirError> {
    let items = array(value, path)?;
    let mut all = ElementExt::default();
    for item in items {
        if *item != Value::Null {
            all = all.merge(element_ext(item, path)?);
        }
    }
    Ok((items.len(), all))
}

// === Tree building ===

/// Builds one value, counting it against the document's budget.
#[derive(Clone, Copy)]
struct ValueSeed<'b> {
    depth: usize,
    budget: &'b Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let Some(left) = self.budget.get().checked_sub(1) else {
            return Err(de::Error::custom(format!(
                "json document exceeds {MAX_VALUES} values"
            )));
        };
        self.budget.set(left);
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "json nesting exceeds {MAX_DEPTH} levels"
            )));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Value::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Value::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Value::Number)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Value::String(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Value::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Value::String(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.nested()?)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let seed = self.nested()?;
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            members.push((key, map.next_value_seed(seed)?));
        }
        Ok(Value::Object(members))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

// === JsonWriter ===

/// Writes a compact FHIR JSON resource (see [`ResourceWriter`]).
#[derive(Debug)]
pub(crate) struct JsonWriter {
    buf: Vec<u8>,
    /// Open containers: the member name (`None` inside an array) and whether it is an array.
    stack: Vec<(Option<&'static str>, bool)>,
    /// Containers from this index on have not been written yet.
    flushed: usize,
    /// Whether the next item in the innermost written container needs a comma.
    comma: bool,
}

impl JsonWriter {
    fn flush(&mut self) {
        for i in self.flushed..self.stack.len() {
            let (key, is_array) = self.stack[i];
            self.begin_item(key);
            self.buf.push(if is_array { b'[' } else { b'{' });
            self.comma = false;
        }
        self.flushed = self.stack.len();
    }

    fn begin_item(&mut self, key: Option<&str>) {
        if self.comma {
            self.buf.push(b',');
        }
        if let Some(key) = key {
            escape_str(&mut self.buf, key);
            self.buf.push(b':');
        }
    }

    /// Returns `key` for a member of an object, `None` for an item of an array.
    fn member(&self, key: &'static str) -> Option<&'static str> {
        match self.stack.last() {
            Some((_, true)) => None,
            _ => Some(key),
        }
    }

    fn push(&mut self, key: &'static str, is_array: bool) {
        let key = self.member(key);
        self.stack.push((key, is_array));
    }

    fn string(&mut self, key: &'static str, value: &str) {
        if value.is_empty() {
            return;
        }
        self.flush();
        let key = self.member(key);
        self.begin_item(key);
        escape_str(&mut self.buf, value);
        self.comma = true;
    }
}

impl ResourceWriter for JsonWriter {
    fn start(resource_type: &'static str) -> Self {
        let mut w = JsonWriter {
            buf: Vec::with_capacity(1024),
            stack: vec![(None, false)],
            flushed: 1,
            comma: false,
        };
        w.buf.push(b'{');
        w.string("resourceType", resource_type);
        w
    }

    fn value(&mut self, name: &'static str, value: &str) {
        self.string(name, value);
    }

    fn values(&mut self, name: &'static str, values: &[String]) {
        self.push(name, true);
        for value in values {
            self.string(name, value);
        }
        self.close();
    }

    fn open(&mut self, name: &'static str) {
        self.push(name, false);
    }

    fn open_list(&mut self, name: &'static str) {
        self.push(name, true);
    }

    fn item(&mut self, name: &'static str) {
        self.push(name, false);
    }

    fn close(&mut self) {
        debug_assert!(self.stack.len() > 1, "close without open");
        if self.stack.len() <= 1 {
            return; // never close the resource object here
        }
        let Some((_, is_array)) = self.stack.pop() else {
            return;
        };
        if self.flushed > self.stack.len() {
            self.flushed = self.stack.len();
            self.buf.push(if is_array { b']' } else { b'}' });
            self.comma = true;
        }
    }

    fn close_list(&mut self) {
        self.close();
    }

    fn finish(mut self) -> Vec<u8> {
        while self.stack.len() > 1 {
            self.close();
        }
        self.buf.push(b'}');
        self.buf
    }
}

/// Appends `value` as a JSON string literal.
fn escape_str(buf: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(escape);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds_nesting() {
        let v = parse(br#"{"a":[1,true,null,"x\n"],"a":{}}"#).unwrap();
        let Value::Object(members) = v else {
            panic!("object")
        };
        assert_eq!(members.len(), 2, "duplicates are kept");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(FhirError::NotWellFormed(_))
        ));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let many = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
        assert!(parse(many.as_bytes()).is_ok());
        let too_many = format!("[{}0]", "0,".repeat(MAX_VALUES - 1));
        let Err(FhirError::NotWellFormed(text)) = parse(too_many.as_bytes()) else {
            panic!("too many values accepted");
        };
        assert!(
            text.starts_with("json document exceeds 20000 values"),
            "{text}"
        );
    }

    #[test]
    fn rejects_malformed_json() {
        for body in [
            &b""[..],
            b"{",
            b"{} x",
            b"{\"a\":1,}",
            b"{\"a\":\"\xff\"}",
            b"{'a':1}",
            b"{\"a\":\"\\ud800\"}",
        ] {
            assert!(
                matches!(parse(body), Err(FhirError::NotWellFormed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn escapes_strings() {
        let cases = [
            ("a", r#""a""#),
            ("q\"b\\", r#""q\"b\\""#),
            ("l\n\t\r\u{1}\u{1f}", r#""l\n\t\r\u0001\u001f""#),
            ("é€", "\"é€\""),
        ];
        for (input, want) in cases {
            let mut buf = Vec::new();
            escape_str(&mut buf, input);
            assert_eq!(String::from_utf8(buf).unwrap(), want);
            let back: String = serde_json::from_str(want).unwrap();
            assert_eq!(back, input);
        }
    }

    #[test]
    fn writer_omits_empty_containers() {
        let mut w = JsonWriter::start("Basic");
        w.open("a");
        w.values("b", &[String::new()]);
        w.close();
        w.open_list("c");
        w.item("c");
        w.value("d", "1");
        w.close();
        w.item("c");
        w.close();
        w.item("c");
        w.value("e", "2");
        w.close();
        w.close_list();
        w.values("f", &["x".into(), String::new(), "y".into()]);
        let doc = String::from_utf8(w.finish()).unwrap();
        assert_eq!(
            doc,
            r#"{"resourceType":"Basic","c":[{"d":"1"},{"e":"2"}],"f":["x","y"]}"#
        );
    }

    #[test]
    fn fields_reject_unknown_repeated_and_unpaired() {
        const KNOWN: &[&str] = &["a", "_a", "b"];
        let run = |body: &str| -> Result<Vec<&'static str>, FhirError> {
            let v = parse(body.as_bytes()).unwrap();
            fields(&v, KNOWN, "X")?.map(|f| f.map(|(k, _)| k)).collect()
        };
        assert_eq!(run(r#"{"b":1,"a":2,"_a":{}}"#).unwrap(), ["b", "a", "_a"]);
        assert_eq!(
            run(r#"{"c":1}"#),
            Err(FhirError::Invalid("unknown element c in X".into()))
        );
        assert_eq!(
            run(r#"{"a":1,"a":2}"#),
            Err(FhirError::Invalid("X.a is repeated".into()))
        );
        assert_eq!(
            run(r#"{"_a":{}}"#),
            Err(FhirError::Invalid("X.a has no value".into()))
        );
        const WITH_ID: &[&str] = &["id", "a"];
        let v = parse(br#"{"id":"x"}"#).unwrap();
        let got: Result<Vec<_>, _> = fields(&v, WITH_ID, "X").unwrap().collect();
        assert_eq!(got, Err(FhirError::Invalid("X has no content".into())));
        assert_eq!(
            run("{}"),
            Err(FhirError::Invalid("X must not be an empty object".into()))
        );
        assert_eq!(
            run("[]"),
            Err(FhirError::Invalid(
                "X must be an object, not an array".into()
            ))
        );
    }
}
