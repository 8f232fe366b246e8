//! FHIR XML helpers: a strict pull reader over quick-xml and a small writer.
//!
//! The reader accepts only what a FHIR XML resource may contain: UTF-8, no DOCTYPE (so no
//! entity declarations, which keeps entity-expansion and external-entity attacks out), only
//! the predefined entities and character references, elements in the FHIR namespace with
//! values in `value` attributes, and nesting bounded by [`MAX_DEPTH`]. Errors name element
//! paths, never values.
//!
//! The writer emits compact XML and omits an element whose content turns out to be empty, so
//! callers can open elements freely and write only the values they have. It implements
//! [`ResourceWriter`], which the JSON writer implements too, so that each resource has one
//! writing function for both formats. [`Path`] and the name and character checks here are
//! shared with the JSON reader.

use quick_xml::XmlVersion;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use super::FhirError;
use super::common::{
    ElementExt, MAX_ATTRIBUTES, MAX_NAMESPACES_IN_SCOPE, MAX_NAMESPACES_PER_ELEMENT, MAX_XML_DEPTH,
    Path, ResourceWriter, XSI_NS, echo_name, is_utf8_encoding, is_xml_char, is_xml_text, strip_bom,
};

/// The FHIR XML namespace.
pub(crate) const FHIR_NS: &str = "http://hl7.org/fhir";

/// The deepest element nesting the reader accepts (the root element is level 1).
pub(crate) const MAX_DEPTH: usize = MAX_XML_DEPTH;

/// Returns `NotWellFormed` with `text`.
fn malformed(text: impl Into<String>) -> FhirError {
    FhirError::NotWellFormed(text.into())
}

// === XmlReader ===

/// A strict pull reader over one FHIR XML document.
pub(crate) struct XmlReader<'a> {
    inner: NsReader<&'a [u8]>,
    /// Open elements (started and not yet ended).
    depth: usize,
    /// Namespace declarations made by each open element, innermost last, and their sum.
    declared: Vec<usize>,
    in_scope: usize,
}

impl std::fmt::Debug for XmlReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmlReader")
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

/// An element start tag read from the document.
#[derive(Debug)]
pub(crate) struct Element<'a> {
    start: BytesStart<'a>,
    /// `<x/>`: no content and no end tag follow.
    empty: bool,
    /// Whether the element is in the FHIR namespace.
    fhir: bool,
}

impl Element<'_> {
    /// Returns the element's local name.
    pub(crate) fn name(&self) -> &str {
        self.start.local_name().into_inner()
    }
}

/// The attributes a FHIR element may carry.
#[derive(Debug, Default)]
pub(crate) struct Attrs {
    /// The decoded `value` attribute.
    pub(crate) value: Option<String>,
    /// Whether an `id` attribute (`Element.id`) is present.
    pub(crate) id: bool,
}

impl<'a> XmlReader<'a> {
    /// Starts reading `body`, which must be UTF-8.
    pub(crate) fn new(body: &'a [u8]) -> Result<Self, FhirError> {
        let text = std::str::from_utf8(strip_bom(body))
            .map_err(|e| malformed(format!("body is not utf-8 (byte {})", e.valid_up_to())))?;
        let mut inner = NsReader::from_str(text);
        let config = inner.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        Ok(XmlReader {
            inner,
            depth: 0,
            declared: Vec::new(),
            in_scope: 0,
        })
    }

    fn read(&mut self) -> Result<Event<'a>, FhirError> {
        let event = self.inner.read_event().map_err(|_| {
            malformed(format!(
                "malformed xml near byte {}",
                self.inner.error_position()
            ))
        })?;
        match &event {
            Event::Start(start) | Event::Empty(start) => {
                let declared = limit_attributes(start)?;
                if self.in_scope + declared > MAX_NAMESPACES_IN_SCOPE {
                    return Err(malformed(format!(
                        "more than {MAX_NAMESPACES_IN_SCOPE} namespace declarations in scope"
                    )));
                }
                if matches!(event, Event::Start(_)) {
                    self.declared.push(declared);
                    self.in_scope += declared;
                }
            }
            Event::End(_) => {
                self.in_scope -= self.declared.pop().unwrap_or(0);
            }
            Event::Text(text) if !is_xml_text(text) => {
                return Err(malformed("text holds a character not allowed in xml"));
            }
            _ => {}
        }
        Ok(event)
    }

    fn element(&self, start: BytesStart<'a>, empty: bool) -> Element<'a> {
        let (ns, _) = self.inner.resolver().resolve_element(start.name());
        let fhir = matches!(ns, ResolveResult::Bound(Namespace(uri)) if uri == FHIR_NS);
        Element { start, empty, fhir }
    }

    fn open(&mut self) -> Result<(), FhirError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(malformed(format!("xml nesting exceeds {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// Reads the prolog and returns the root element; the caller checks its name with
    /// [`Self::root_named`].
    fn root(&mut self) -> Result<Element<'a>, FhirError> {
        let mut first = true;
        loop {
            match self.read()? {
                Event::Decl(decl) if first => check_decl(&decl)?,
                Event::Comment(_) | Event::PI(_) => {}
                Event::Text(t) if is_blank(&t) => {}
                Event::Start(start) => {
                    self.open()?;
                    return Ok(self.element(start, false));
                }
                Event::Empty(start) => return Ok(self.element(start, true)),
                Event::DocType(_) => return Err(malformed("doctype declarations are not allowed")),
                Event::Eof => return Err(malformed("no root element")),
                _ => return Err(malformed("unexpected content before the root element")),
            }
            first = false;
        }
    }

    /// Reads the root element and checks that it is `name` in the FHIR namespace with no
    /// attributes other than namespace declarations.
    pub(crate) fn root_named(&mut self, name: &str) -> Result<Element<'a>, FhirError> {
        let root = self.root()?;
        if !root.fhir || root.name() != name {
            return Err(FhirError::Invalid(format!(
                "root element must be {name} in the fhir namespace"
            )));
        }
        let attrs = self.attrs(&root, Path(name, ""))?;
        if attrs.id || attrs.value.is_some() {
            return Err(FhirError::Invalid(format!(
                "unexpected attribute on {name}"
            )));
        }
        Ok(root)
    }

    /// Returns the next child element of `parent` (FHIR namespace only), or `None` at the
    /// parent's end tag. `path` names the parent in errors.
    pub(crate) fn next_child(
        &mut self,
        parent: &Element<'a>,
        path: Path<'_>,
    ) -> Result<Option<Element<'a>>, FhirError> {
        if parent.empty {
            return Ok(None);
        }
        loop {
            match self.read()? {
                Event::Start(start) => {
                    self.open()?;
                    return self.fhir_child(start, false, path).map(Some);
                }
                Event::Empty(start) => return self.fhir_child(start, true, path).map(Some),
                Event::End(_) => {
                    self.depth -= 1;
                    return Ok(None);
                }
                Event::Text(t) if is_blank(&t) => {}
                Event::Comment(_) | Event::PI(_) => {}
                Event::GeneralRef(r) => {
                    check_ref(&r)?;
                    return Err(unexpected_text(path));
                }
                Event::Text(_) | Event::CData(_) => return Err(unexpected_text(path)),
                Event::DocType(_) => return Err(malformed("doctype declarations are not allowed")),
                Event::Decl(_) => return Err(malformed("misplaced xml declaration")),
                Event::Eof => return Err(malformed("unexpected end of document")),
            }
        }
    }

    fn fhir_child(
        &self,
        start: BytesStart<'a>,
        empty: bool,
        path: Path<'_>,
    ) -> Result<Element<'a>, FhirError> {
        let element = self.element(start, empty);
        if !element.fhir {
            return Err(FhirError::Invalid(format!(
                "element {} in {path} is not in the fhir namespace",
                echo_name(element.name())
            )));
        }
        Ok(element)
    }

    /// Reads the `value` and `id` attributes of `element`, rejecting any other attribute
    /// except namespace declarations and `xsi:*`. Call before reading further events.
    pub(crate) fn attrs(&self, element: &Element<'a>, path: Path<'_>) -> Result<Attrs, FhirError> {
        let mut attrs = Attrs::default();
        for attr in element.start.attributes() {
            let attr = attr.map_err(|_| malformed(format!("malformed attribute on {path}")))?;
            if attr.key.as_namespace_binding().is_some() {
                continue;
            }
            // Unprefixed attributes are in no namespace; only prefixed ones need resolving.
            let (ns, local) = match attr.key.prefix() {
                None => (ResolveResult::Unbound, attr.key.as_ref()),
                Some(_) => {
                    let (ns, local) = self.inner.resolver().resolve_attribute(attr.key);
                    (ns, local.into_inner())
                }
            };
            match (ns, local) {
                (ResolveResult::Unbound, "value") => attrs.value = Some(attr_value(&attr, path)?),
                (ResolveResult::Unbound, "id") => {
                    attr_value(&attr, path)?;
                    attrs.id = true;
                }
                (ResolveResult::Bound(Namespace(uri)), _) if uri == XSI_NS => {}
                (_, local) => {
                    return Err(FhirError::Invalid(format!(
                        "unknown attribute {} on {path}",
                        echo_name(local)
                    )));
                }
            }
        }
        Ok(attrs)
    }

    /// Reads a primitive element (`value` plus optional `id` and `extension`s) and returns its
    /// value, which must be present and non-empty.
    pub(crate) fn primitive(
        &mut self,
        element: &Element<'a>,
        path: Path<'_>,
    ) -> Result<(String, ElementExt), FhirError> {
        let attrs = self.attrs(element, path)?;
        let mut ext = ElementExt {
            id: attrs.id,
            extension: false,
        };
        while let Some(child) = self.next_child(element, path)? {
            if child.name() != "extension" {
                return Err(unknown_element(path, child.name()));
            }
            self.skip(&child)?;
            ext.extension = true;
        }
        match attrs.value {
            None => Err(FhirError::Invalid(format!("{path} has no value"))),
            Some(v) if v.is_empty() => Err(FhirError::Invalid(format!("{path} must not be empty"))),
            Some(v) => Ok((v, ext)),
        }
    }

    /// Reads the attributes of a complex element: only `id` is allowed; returns whether it is
    /// present.
    pub(crate) fn complex_id(
        &self,
        element: &Element<'a>,
        path: Path<'_>,
    ) -> Result<bool, FhirError> {
        let attrs = self.attrs(element, path)?;
        if attrs.value.is_some() {
            return Err(FhirError::Invalid(format!(
                "unexpected value attribute on {path}"
            )));
        }
        Ok(attrs.id)
    }

    /// Skips the content of `element` (checking only well-formedness and depth).
    pub(crate) fn skip(&mut self, element: &Element<'a>) -> Result<(), FhirError> {
        check_attrs_well_formed(&element.start)?;
        if element.empty {
            return Ok(());
        }
        let mut level = 1usize;
        loop {
            match self.read()? {
                Event::Start(start) => {
                    self.open()?;
                    level += 1;
                    check_attrs_well_formed(&start)?;
                }
                Event::Empty(start) => check_attrs_well_formed(&start)?,
                Event::End(_) => {
                    self.depth -= 1;
                    level -= 1;
                    if level == 0 {
                        return Ok(());
                    }
                }
                Event::GeneralRef(r) => check_ref(&r)?,
                Event::Text(_) | Event::CData(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::DocType(_) => return Err(malformed("doctype declarations are not allowed")),
                Event::Decl(_) => return Err(malformed("misplaced xml declaration")),
                Event::Eof => return Err(malformed("unexpected end of document")),
            }
        }
    }

    /// Checks that nothing but comments, processing instructions and white space follows the
    /// root element.
    pub(crate) fn finish(mut self) -> Result<(), FhirError> {
        loop {
            match self.read()? {
                Event::Eof => return Ok(()),
                Event::Comment(_) | Event::PI(_) => {}
                Event::Text(t) if is_blank(&t) => {}
                _ => return Err(malformed("unexpected content after the root element")),
            }
        }
    }
}

/// Returns the error for an element `name` not allowed in `path`.
pub(crate) fn unknown_element(path: Path<'_>, name: &str) -> FhirError {
    FhirError::Invalid(format!("unknown element {} in {path}", echo_name(name)))
}

fn unexpected_text(path: Path<'_>) -> FhirError {
    FhirError::Invalid(format!("unexpected text content in {path}"))
}

fn is_blank(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn check_decl(decl: &quick_xml::events::BytesDecl<'_>) -> Result<(), FhirError> {
    match decl.encoding() {
        None => Ok(()),
        Some(Ok(enc)) if is_utf8_encoding(&enc) => Ok(()),
        Some(_) => Err(malformed("only utf-8 encoded xml is accepted")),
    }
}

/// Bounds a start tag's attributes (before anything iterates them with duplicate checks,
/// which is quadratic): at most [`MAX_ATTRIBUTES`], of which at most
/// [`MAX_NAMESPACES_PER_ELEMENT`] namespace declarations; returns the declarations.
fn limit_attributes(start: &BytesStart<'_>) -> Result<usize, FhirError> {
    let mut count = 0;
    let mut declared = 0;
    for attr in start.attributes().with_checks(false) {
        let Ok(attr) = attr else {
            // Reported as malformed where the attributes are read.
            break;
        };
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err(malformed(format!(
                "an element carries more than {MAX_ATTRIBUTES} attributes"
            )));
        }
        if attr.key.as_namespace_binding().is_some() {
            declared += 1;
            if declared > MAX_NAMESPACES_PER_ELEMENT {
                return Err(malformed(format!(
                    "an element makes more than {MAX_NAMESPACES_PER_ELEMENT} namespace declarations"
                )));
            }
        }
    }
    Ok(declared)
}

/// Checks that a reference in text content is a predefined entity or a legal character.
fn check_ref(r: &BytesRef<'_>) -> Result<(), FhirError> {
    match r.resolve_char_ref() {
        Ok(Some(c)) if is_xml_char(c) => Ok(()),
        Ok(None) if quick_xml::escape::resolve_xml_entity(r).is_some() => Ok(()),
        _ => Err(malformed(
            "undeclared entity or illegal character reference",
        )),
    }
}

fn check_attrs_well_formed(start: &BytesStart<'_>) -> Result<(), FhirError> {
    for attr in start.attributes() {
        let attr = attr.map_err(|_| malformed("malformed attribute"))?;
        attr_value(&attr, Path("an element", ""))?;
    }
    Ok(())
}

/// Decodes an attribute value (entities, character references, white-space normalisation)
/// and checks it contains only legal XML characters.
fn attr_value(attr: &Attribute<'_>, path: Path<'_>) -> Result<String, FhirError> {
    let bad = || malformed(format!("malformed attribute value on {path}"));
    if attr.value.contains('<') {
        return Err(bad());
    }
    let value = attr
        .normalized_value(XmlVersion::Implicit1_0)
        .map_err(|_| bad())?;
    if !is_xml_text(&value) {
        return Err(bad());
    }
    Ok(value.into_owned())
}

// === XmlWriter ===

/// Writes a compact FHIR XML document (see [`ResourceWriter`]).
#[derive(Debug)]
pub(crate) struct XmlWriter {
    buf: Vec<u8>,
    /// Open elements; those from `flushed` on have not been written yet.
    stack: Vec<&'static str>,
    flushed: usize,
}

impl XmlWriter {
    fn flush(&mut self) {
        for name in &self.stack[self.flushed..] {
            self.buf.push(b'<');
            self.buf.extend_from_slice(name.as_bytes());
            self.buf.push(b'>');
        }
        self.flushed = self.stack.len();
    }

    fn end_tag(&mut self, name: &str) {
        self.buf.extend_from_slice(b"</");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'>');
    }
}

impl ResourceWriter for XmlWriter {
    fn start(resource_type: &'static str) -> Self {
        let mut buf = Vec::with_capacity(1024);
        buf.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><");
        buf.extend_from_slice(resource_type.as_bytes());
        buf.extend_from_slice(b" xmlns=\"");
        buf.extend_from_slice(FHIR_NS.as_bytes());
        buf.extend_from_slice(b"\">");
        XmlWriter {
            buf,
            stack: vec![resource_type],
            flushed: 1,
        }
    }

    fn value(&mut self, name: &'static str, value: &str) {
        if value.is_empty() {
            return;
        }
        self.flush();
        self.buf.push(b'<');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b" value=\"");
        escape_attr(&mut self.buf, value);
        self.buf.extend_from_slice(b"\"/>");
    }

    fn values(&mut self, name: &'static str, values: &[String]) {
        for value in values {
            self.value(name, value);
        }
    }

    fn open(&mut self, name: &'static str) {
        self.stack.push(name);
    }

    fn open_list(&mut self, _name: &'static str) {}

    fn item(&mut self, name: &'static str) {
        self.stack.push(name);
    }

    fn close(&mut self) {
        debug_assert!(self.stack.len() > 1, "close without open");
        if self.stack.len() <= 1 {
            return; // never close the root here
        }
        let Some(name) = self.stack.pop() else { return };
        if self.flushed > self.stack.len() {
            self.flushed = self.stack.len();
            self.end_tag(name);
        }
    }

    fn close_list(&mut self) {}

    fn finish(mut self) -> Vec<u8> {
        while self.stack.len() > 1 {
            self.close();
        }
        if let Some(root) = self.stack.pop() {
            self.end_tag(root);
        }
        self.buf
    }
}

/// Appends `value` escaped for a double-quoted attribute. White space other than the space is
/// written as a character reference so that it survives attribute-value normalisation;
/// characters XML cannot carry become U+FFFD.
fn escape_attr(buf: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            b'\r' => b"&#13;",
            0x00..=0x1f => "\u{FFFD}".as_bytes(),
            // U+FFFE and U+FFFF (EF BF BE, EF BF BF) cannot appear in XML either.
            0xef if matches!(bytes.get(i + 1..i + 3), Some([0xbf, 0xbe | 0xbf])) => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice("\u{FFFD}".as_bytes());
                start = i + 3;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(replacement);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut buf = Vec::new();
        escape_attr(&mut buf, value);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn escapes_attribute_values() {
        let cases = [
            ("plain", "plain"),
            ("a&b", "a&amp;b"),
            ("<x>", "&lt;x&gt;"),
            ("say \"hi\"", "say &quot;hi&quot;"),
            ("it's", "it's"),
            ("l1\nl2\tx\r", "l1&#10;l2&#9;x&#13;"),
            ("bell\u{7}", "bell\u{FFFD}"),
            ("é€😀", "é€😀"),
            ("x\u{FFFE}y\u{FFFF}", "x\u{FFFD}y\u{FFFD}"),
            ("\u{FFFD}\u{EFFF}", "\u{FFFD}\u{EFFF}"),
        ];
        for (input, want) in cases {
            assert_eq!(escaped(input), want, "{input:?}");
        }
    }

    #[test]
    fn escaped_values_read_back_unchanged() {
        for value in ["a&b<c>\"d'", "l1\nl2\tx\r y", "  spaced  ", "é€😀"] {
            let mut w = XmlWriter::start("Basic");
            w.value("x", value);
            let doc = w.finish();
            let mut r = XmlReader::new(&doc).unwrap();
            let root = r.root_named("Basic").unwrap();
            let child = r.next_child(&root, Path("Basic", "")).unwrap().unwrap();
            let (got, _) = r.primitive(&child, Path("Basic", "x")).unwrap();
            assert_eq!(got, value);
        }
    }

    #[test]
    fn writer_omits_empty_elements() {
        let mut w = XmlWriter::start("Basic");
        w.open("a");
        w.open("b");
        w.value("c", "");
        w.close();
        w.close();
        w.open("d");
        w.value("e", "1");
        w.close();
        let doc = String::from_utf8(w.finish()).unwrap();
        assert!(
            doc.ends_with(r#"<Basic xmlns="http://hl7.org/fhir"><d><e value="1"/></d></Basic>"#)
        );
    }

    #[test]
    fn xml_text_matches_the_char_production() {
        let samples = [
            "plain",
            "tab\tlf\ncr\r",
            "é€😀\u{D7FF}\u{E000}\u{FFFD}\u{10000}",
            "\u{0}",
            "\u{1f}",
            "a\u{FFFE}",
            "\u{FFFF}b",
            "\u{7f}\u{85}",
        ];
        for s in samples {
            assert_eq!(is_xml_text(s), s.chars().all(is_xml_char), "{s:?}");
        }
    }

    #[test]
    fn echo_name_hides_odd_names() {
        assert_eq!(echo_name("modifierExtension"), "modifierExtension");
        assert_eq!(echo_name("_status"), "_status");
        assert_eq!(echo_name("9434765919"), "?");
        assert_eq!(echo_name("a b"), "?");
        assert_eq!(echo_name(""), "?");
        assert_eq!(echo_name(&"a".repeat(65)), "?");
    }
}
