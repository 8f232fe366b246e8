//! What the FHIR readers and writers of both formats share: element paths and safe names
//! for error texts, the XML character rules, the limits of the XML readers, and the
//! [`ResourceWriter`] interface. The publish extractor (`translate/bundle.rs`) and the
//! resource reader (`fhir/xml.rs`) take their XML rules from here, so they accept the same
//! documents.

/// The deepest XML element nesting either XML reader accepts (the root element is level 1).
pub(crate) const MAX_XML_DEPTH: usize = 64;

/// The most attributes one XML start tag may carry (namespace declarations included). A FHIR
/// element carries one or two (`value`, `id`, `url`); narrative XHTML a few more.
pub(crate) const MAX_ATTRIBUTES: usize = 32;

/// The most namespace declarations one start tag may make, and the most in scope at once.
pub(crate) const MAX_NAMESPACES_PER_ELEMENT: usize = 8;
/// See [`MAX_NAMESPACES_PER_ELEMENT`].
pub(crate) const MAX_NAMESPACES_IN_SCOPE: usize = 32;

/// The XML Schema instance namespace: its attributes (`xsi:schemaLocation`, ...) may stand on
/// any element of a schema-valid document, and are ignored.
pub(crate) const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Whether an XML declaration's `encoding` is acceptable: UTF-8 only, by its registered name
/// in any case (not aliases such as `utf8`).
pub(crate) fn is_utf8_encoding(name: &str) -> bool {
    name.eq_ignore_ascii_case("utf-8")
}

/// An element path in error texts: `parent.name`, or `parent` alone when `name` is empty.
/// Shared by both formats; formatting happens only when an error is reported.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path<'p>(pub(crate) &'p str, pub(crate) &'p str);

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1.is_empty() {
            f.write_str(self.0)
        } else {
            write!(f, "{}.{}", self.0, self.1)
        }
    }
}

/// Returns `name` if it is safe to echo in an error (a short XML or JSON name), else `?`.
pub(crate) fn echo_name(name: &str) -> &str {
    let safe = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if safe { name } else { "?" }
}

/// Removes a leading UTF-8 byte order mark.
pub(crate) fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// Whether `c` is allowed in an XML 1.0 document (`Char` production).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Whether every character of `s` is allowed in an XML 1.0 document; a byte scan, since
/// only C0 controls and U+FFFE/U+FFFF (UTF-8 `EF BF BE`/`EF BF BF`) can break the rule in a
/// Rust string.
pub(crate) fn is_xml_text(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\t' | b'\n' | b'\r' => true,
        0x00..=0x1f => false,
        0xef => !matches!(bytes.get(i + 1..i + 3), Some([0xbf, 0xbe | 0xbf])),
        _ => true,
    })
}

// === ResourceWriter ===

/// Writes a resource in one format. Both writers omit empty values, and a complex element
/// (or list) opened here is only written once something is written inside it, so callers
/// open elements freely and write whatever values they have, in schema order.
pub(crate) trait ResourceWriter: Sized {
    /// Starts a resource of type `resource_type`.
    fn start(resource_type: &'static str) -> Self;
    /// Writes primitive `name` unless `value` is empty.
    fn value(&mut self, name: &'static str, value: &str);
    /// Writes repeated primitive `name` with the non-empty `values`.
    fn values(&mut self, name: &'static str, values: &[String]);
    /// Opens single complex element `name`.
    fn open(&mut self, name: &'static str);
    /// Opens repeated complex element `name`; follow with [`Self::item`]s and
    /// [`Self::close_list`].
    fn open_list(&mut self, name: &'static str);
    /// Opens one item of the list opened last.
    fn item(&mut self, name: &'static str);
    /// Closes the element opened last by [`Self::open`] or [`Self::item`].
    fn close(&mut self);
    /// Closes the list opened last.
    fn close_list(&mut self);
    /// Closes the resource and returns the document.
    fn finish(self) -> Vec<u8>;
}

/// What a primitive's `_x` companion carries (`Element.id`, `Element.extension`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ElementExt {
    /// `id` present.
    pub(crate) id: bool,
    /// `extension` present.
    pub(crate) extension: bool,
}

impl ElementExt {
    pub(crate) fn merge(self, other: ElementExt) -> ElementExt {
        ElementExt {
            id: self.id || other.id,
            extension: self.extension || other.extension,
        }
    }
}
