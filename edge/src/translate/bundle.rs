//! Reads the routing structure of a published event message Bundle (FHIR XML).
//!
//! [`extract`] makes one pass over the body with quick-xml's streaming reader and builds no
//! tree. A stack of small `Ctx` frames says where the reader is; an element's `value` or `url`
//! attribute is copied out only when its frame is one NEMS reads, so a bundle costs one
//! allocation per kept value and nothing per skipped element. Attributes and namespaces are
//! handled here in one pass per start tag (quick-xml's attribute iterator and `NsReader` took
//! more time than the rest of the extraction together).
//!
//! The edge judges only what it needs to read the message at all: well-formed UTF-8 XML
//! without a DTD, a FHIR `Bundle` root, and a resource inside every `entry.resource`. Every
//! NEMS rule (bundle type, header cardinalities, codes, dates, focus resolution) is core's:
//! the extraction reports what is there, including repeated or empty elements.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use nems_proto::v1 as pb;
use quick_xml::XmlVersion;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesDecl, BytesRef, BytesStart, Event};
use quick_xml::name::QName;
use quick_xml::reader::Reader;

use crate::fhir::FhirError;
use crate::fhir::common::{
    MAX_ATTRIBUTES, MAX_NAMESPACES_IN_SCOPE, MAX_NAMESPACES_PER_ELEMENT, MAX_XML_DEPTH, XSI_NS,
    is_utf8_encoding, is_xml_char, is_xml_text,
};

/// The FHIR XML namespace; elements in any other namespace (XHTML narrative, foreign
/// extensions) are skipped with their whole subtree.
const FHIR_NS: &str = "http://hl7.org/fhir";

/// Deepest element nesting accepted. Real event messages nest about 12 levels (XHTML
/// narrative a few more); the bound keeps hostile input from growing the frame stack.
const MAX_DEPTH: usize = MAX_XML_DEPTH;

const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS_ORGANIZATION_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// Absolute reference to an organisation in the Spine directory; the last segment is its ODS code.
const ODS_ORGANIZATION_URL: &str = "https://directory.spineservices.nhs.uk/STU3/Organization/";
const EXT_MESSAGE_EVENT_TYPE: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1";
const EXT_ROUTING_DEMOGRAPHICS: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1";
const EXT_DEATH_NOTIFICATION_STATUS: &str = "https://fhir.hl7.org.uk/STU3/StructureDefinition/Extension-CareConnect-DeathNotificationStatus-1";

/// Extracts what NEMS needs from a published event message Bundle.
///
/// Returns [`FhirError::NotWellFormed`] when the body is not UTF-8, not well-formed XML,
/// carries a DOCTYPE (so no entity can be declared or expanded), has content after the root
/// element, or nests deeper than 128 elements; [`FhirError::Invalid`] when the root is not a
/// FHIR `Bundle` or an `entry.resource` holds no resource. Well-formedness is judged over the
/// whole body first, so a malformed body is always reported as such.
pub fn extract(body: &[u8]) -> Result<pb::EventMessage, FhirError> {
    let text = decode(body)?;
    // The plain reader, not `NsReader`: namespaces are resolved in `Extractor::start`, in the
    // one pass over the attributes that also finds `value` and `url`.
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_comments = true;
    // Whitespace between elements then makes no event at all (about 8% faster).
    reader.config_mut().trim_text_start = true;
    let mut extractor = Extractor::default();
    // Leading whitespace makes no event either, so "first event" alone cannot tell.
    let mut declaration_allowed = text.starts_with("<?xml");
    loop {
        let event = reader.read_event().map_err(|err| {
            extractor.not_well_formed(describe(&err), Some(reader.error_position()))
        })?;
        if matches!(event, Event::Eof) {
            break;
        }
        extractor.event(event, reader.buffer_position(), declaration_allowed)?;
        declaration_allowed = false;
    }
    extractor.finish()
}

/// Returns the body as text: UTF-8, no control character XML forbids, no byte-order mark.
fn decode(body: &[u8]) -> Result<&str, FhirError> {
    let text = std::str::from_utf8(body).map_err(|err| {
        FhirError::NotWellFormed(format!(
            "body is not UTF-8 (invalid byte at offset {})",
            err.valid_up_to()
        ))
    })?;
    if let Some(offset) = control_character(body) {
        return Err(FhirError::NotWellFormed(format!(
            "body contains a control character not allowed in XML at offset {offset}"
        )));
    }
    // U+FFFE and U+FFFF (`EF BF BE`, `EF BF BF`) are not XML characters either; UTF-8 has no
    // other way to spell them, so this finds every one.
    if !is_xml_text(text) {
        return Err(FhirError::NotWellFormed(
            "body contains U+FFFE or U+FFFF, which XML does not allow".to_owned(),
        ));
    }
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Accepts an XML declaration only as the first thing in the body and only for UTF-8.
fn check_declaration(decl: &BytesDecl<'_>, at_start: bool) -> Result<(), &'static str> {
    if !at_start {
        return Err("xml declaration is not at the start of the body");
    }
    match decl.encoding() {
        None => Ok(()),
        Some(Ok(encoding)) if is_utf8_encoding(&encoding) => Ok(()),
        Some(_) => Err("xml declaration names an encoding other than UTF-8"),
    }
}

/// Returns the offset of the first control character XML does not allow (all but tab, LF, CR).
fn control_character(body: &[u8]) -> Option<usize> {
    // Branch-free per chunk so that the common (clean) case vectorises.
    const CHUNK: usize = 64;
    let is_control = |b: u8| (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r');
    for (index, chunk) in body.chunks(CHUNK).enumerate() {
        if chunk.iter().fold(false, |found, &b| found | is_control(b)) {
            let within = chunk.iter().position(|&b| is_control(b))?;
            return Some(index * CHUNK + within);
        }
    }
    None
}

/// Names a reader error by kind only: quick-xml's own texts can quote names and values.
fn describe(err: &quick_xml::Error) -> &'static str {
    use quick_xml::errors::{Error, IllFormedError, SyntaxError};
    match err {
        Error::Syntax(SyntaxError::UnclosedTag) => "unclosed tag",
        Error::Syntax(SyntaxError::UnclosedComment) => "unclosed comment",
        Error::Syntax(SyntaxError::UnclosedCData) => "unclosed CDATA section",
        Error::Syntax(SyntaxError::UnclosedDoctype) => "unclosed DOCTYPE",
        Error::Syntax(_) => "malformed markup",
        Error::IllFormed(IllFormedError::MismatchedEndTag { .. }) => "mismatched end tag",
        Error::IllFormed(IllFormedError::UnmatchedEndTag(_)) => "end tag without start tag",
        Error::IllFormed(IllFormedError::DoubleHyphenInComment) => "'--' inside a comment",
        Error::IllFormed(_) => "ill-formed markup",
        Error::InvalidAttr(_) => "malformed or duplicated attribute",
        Error::Escape(_) => "invalid character or entity reference",
        Error::Namespace(_) => "invalid namespace declaration",
        Error::Encoding(_) | Error::Io(_) => "unreadable body",
    }
}

/// Accepts the five predefined entities and valid character references (no DTD can define more).
fn check_reference(reference: &BytesRef<'_>) -> Result<(), &'static str> {
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(()),
            _ => Err("invalid character reference"),
        };
    }
    match &**reference {
        "lt" | "gt" | "amp" | "apos" | "quot" => Ok(()),
        _ => Err("undefined entity reference"),
    }
}

// === Ctx ===

/// Where the reader is: one frame per open element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// An element whose subtree NEMS does not read (still checked for well-formedness).
    Skip,
    Bundle,
    Entry,
    /// `entry.resource`: its first FHIR child is the resource.
    EntryResource,
    Resource(Kind),
    /// A resource's direct `subject` or `patient` reference.
    SubjectRef,
    HeaderMeta,
    HeaderEventType,
    HeaderEventTypeConcept,
    Coding(CodingTarget),
    Routing,
    /// A routing `nhsNumber` sub-extension; `true` for the first one, whose values are kept.
    RoutingNhsNumber(bool),
    RoutingNhsIdentifier(bool),
    RoutingBirth,
    HeaderRef(RefTarget),
    HeaderSource,
    PatientMeta,
    PatientSecurity,
    DeathExtension,
    DeathStatus,
    DeathStatusConcept,
    DeathStatusCoding,
    PatientIdentifier,
    Address,
    AddressPeriod,
    GeneralPractitioner,
    OrganizationIdentifier,
}

/// What kind of resource an entry holds, as far as NEMS reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The MessageHeader of the first entry.
    Header,
    Patient,
    Organization,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodingTarget {
    Event,
    MessageEventType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefTarget {
    Focus,
    Responsible,
}

// === Attrs ===

/// The two attributes NEMS reads, entity-decoded; other attributes are only checked.
#[derive(Debug)]
struct Attrs<'x> {
    value: Option<Cow<'x, str>>,
    url: Option<Cow<'x, str>>,
    /// An unprefixed attribute FHIR XML does not have (anything but `value`, `id`, `url`).
    unknown: bool,
    /// Prefixes of prefixed attributes other than `xmlns:` (allowed only for `xsi`).
    prefixes: [&'x str; MAX_ATTRIBUTES],
    prefixed: usize,
}

impl Default for Attrs<'_> {
    fn default() -> Self {
        Self {
            value: None,
            url: None,
            unknown: false,
            prefixes: [""; MAX_ATTRIBUTES],
            prefixed: 0,
        }
    }
}

impl Attrs<'_> {
    /// Returns the `value` attribute as an owned string, empty when absent.
    fn value(&self) -> String {
        self.value.as_deref().unwrap_or_default().to_owned()
    }

    fn url_is(&self, url: &str) -> bool {
        self.url.as_deref() == Some(url)
    }
}

// === RawAttr ===

const MALFORMED_ATTRIBUTE: &str = "malformed or duplicated attribute";
const TOO_MANY_ATTRIBUTES: &str = "an element carries more than 32 attributes";
const TOO_MANY_DECLARATIONS: &str = "an element makes more than 8 namespace declarations";
const TOO_MANY_IN_SCOPE: &str = "more than 32 namespace declarations in scope";

/// One attribute of a start tag as written.
#[derive(Debug)]
struct RawAttr<'x> {
    name: &'x str,
    /// The value between the quotes, undecoded.
    value: &'x str,
    /// The value holds no entity reference and no tab or line break, so it reads as written.
    plain: bool,
}

impl<'x> RawAttr<'x> {
    /// Returns the value with references replaced and whitespace normalised (XML 1.0 §3.3.3);
    /// borrowed unless that changed it.
    fn decoded(&self) -> Result<Cow<'x, str>, &'static str> {
        if self.plain {
            return Ok(Cow::Borrowed(self.value));
        }
        let attr = Attribute {
            key: QName(self.name),
            value: Cow::Borrowed(self.value),
        };
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|_| "invalid character or entity reference")?;
        if is_xml_text(&value) {
            Ok(value)
        } else {
            Err("a character reference to a character XML does not allow")
        }
    }
}

/// Reads the attribute at `pos` of a start tag's attribute text and moves `pos` past it.
///
/// This replaces quick-xml's attribute iterator, whose duplicate check allocates per element
/// and which takes a second and third pass over each value to find `<` and `&`.
fn next_attribute<'x>(raw: &'x str, pos: &mut usize) -> Result<Option<RawAttr<'x>>, &'static str> {
    let bytes = raw.as_bytes();
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let skip_spaces = |mut i: usize| {
        while bytes.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        i
    };
    let mut i = skip_spaces(*pos);
    if i == bytes.len() {
        return Ok(None);
    }
    // Whitespace separates the name from the first attribute and each attribute from the next.
    if i == *pos {
        return Err(MALFORMED_ATTRIBUTE);
    }
    let name_start = i;
    while let Some(&b) = bytes.get(i) {
        if is_space(b) || b == b'=' {
            break;
        }
        if matches!(b, b'"' | b'\'' | b'<' | b'>' | b'&' | b'/') {
            return Err(MALFORMED_ATTRIBUTE);
        }
        i += 1;
    }
    // Every index used to slice sits on an ASCII byte, so on a char boundary.
    let name = raw.get(name_start..i).unwrap_or_default();
    i = skip_spaces(i);
    if name.is_empty() || bytes.get(i) != Some(&b'=') {
        return Err(MALFORMED_ATTRIBUTE);
    }
    i = skip_spaces(i + 1);
    let quote = match bytes.get(i) {
        Some(&quote @ (b'"' | b'\'')) => quote,
        _ => return Err(MALFORMED_ATTRIBUTE),
    };
    let value_start = i + 1;
    let rest = bytes.get(value_start..).unwrap_or_default();
    let Some(len) = rest.iter().position(|&b| b == quote) else {
        return Err(MALFORMED_ATTRIBUTE);
    };
    // One branch-free pass (it vectorises): bit 1 for `<`, bit 0 for what needs decoding.
    let value_bytes = rest.get(..len).unwrap_or_default();
    let found = value_bytes.iter().fold(0u8, |found, &b| {
        found
            | (u8::from(b == b'<') << 1)
            | u8::from((b == b'&') | (b == b'\t') | (b == b'\n') | (b == b'\r'))
    });
    if found & 2 != 0 {
        return Err("'<' inside an attribute value");
    }
    let value = raw.get(value_start..value_start + len).unwrap_or_default();
    let plain = found == 0;
    *pos = value_start + len + 1;
    Ok(Some(RawAttr { name, value, plain }))
}

// === Extractor ===

/// The state of one extraction. Objects being read are built in their own fields and moved
/// into `msg` when their element closes, so no lookup of "the current one" can fail.
#[derive(Debug, Default)]
struct Extractor {
    msg: pb::EventMessage,
    stack: Vec<Ctx>,
    /// Namespace declarations in scope, innermost last.
    namespaces: Vec<Namespace>,
    /// The root element has been closed; anything but comments and whitespace is trailing.
    root_closed: bool,
    /// First structural fault found; reported once the whole body proved well-formed.
    invalid: Option<String>,
    entry: pb::BundleEntry,
    /// The current `entry.resource` held a FHIR element.
    resource_seen: bool,
    header: Option<pb::MessageHeaderSummary>,
    coding: pb::Coding,
    routing: pb::RoutingDemographics,
    patient: pb::PatientSummary,
    /// Entry index of each patient in `msg.patients`, for its `fullUrl`.
    patient_entries: Vec<usize>,
    /// `(patient index, generalPractitioner.reference)`, resolved once every entry is read.
    gp_refs: Vec<(usize, String)>,
    organizations: Vec<Organization>,
    organization_code: Option<String>,
    identifier: Identifier,
    address: Option<pb::PatientAddress>,
    address_has_postcode: bool,
    /// Single-valued children already seen in the Coding or Identifier being read (one bit
    /// each); a repeat is refused, since recipients read the first.
    single_seen: u8,
}

/// A namespace declaration (`xmlns` or `xmlns:prefix`) in scope from `depth` down.
#[derive(Debug)]
struct Namespace {
    /// Empty for the default namespace.
    prefix: String,
    /// The declared namespace is FHIR's.
    fhir: bool,
    /// The declared namespace is XML Schema instance's.
    xsi: bool,
    depth: usize,
}

impl Namespace {
    fn is_for(&self, prefix: &str) -> bool {
        // Not `==` alone: comparing the empty default prefix calls `memcmp` with the dangling
        // pointer of an empty `String`, and on this AVX-512 machine that costs a microcode
        // assist (measured at over 100 ns) per element.
        self.prefix.len() == prefix.len() && (prefix.is_empty() || self.prefix == prefix)
    }
}

/// An in-bundle Organization: its entry and ODS code, if it has one.
#[derive(Debug)]
struct Organization {
    entry: usize,
    ods_code: Option<String>,
}

/// The `identifier` being read: whether its system is the one wanted, and its value.
#[derive(Debug, Default)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
}

impl Extractor {
    /// Handles one reader event other than `Eof`.
    /// `at_start` says the event begins the body (where an XML declaration may stand).
    fn event(&mut self, event: Event<'_>, position: u64, at_start: bool) -> Result<(), FhirError> {
        let outside_root = self.stack.is_empty();
        match event {
            Event::Start(start) => self.start(&start, position)?,
            Event::Empty(start) => {
                self.start(&start, position)?;
                self.end();
            }
            Event::End(_) => self.end(),
            // Character data inside the root is not read: FHIR keeps values in attributes.
            Event::Text(chars) => {
                let blank = || {
                    chars
                        .bytes()
                        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                };
                if outside_root && !blank() {
                    return Err(self.outside_root(position));
                }
            }
            Event::CData(_) => {
                if outside_root {
                    return Err(self.outside_root(position));
                }
            }
            Event::GeneralRef(reference) => {
                check_reference(&reference)
                    .map_err(|what| self.not_well_formed(what, Some(position)))?;
                if outside_root {
                    return Err(self.outside_root(position));
                }
            }
            Event::Decl(decl) => check_declaration(&decl, at_start)
                .map_err(|what| self.not_well_formed(what, Some(position)))?,
            Event::DocType(_) => {
                return Err(self.not_well_formed(
                    "DOCTYPE and entity declarations are not accepted",
                    Some(position),
                ));
            }
            Event::Comment(_) | Event::PI(_) | Event::Eof => {}
        }
        Ok(())
    }

    fn start(&mut self, start: &BytesStart<'_>, position: u64) -> Result<(), FhirError> {
        if self.root_closed {
            return Err(self.not_well_formed("content after the root element", Some(position)));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.not_well_formed(
                format_args!("elements nested deeper than {MAX_DEPTH} levels"),
                Some(position),
            ));
        }
        let attrs = self
            .read_attrs(start)
            .map_err(|what| self.not_well_formed(what, Some(position)))?;
        let name = start.name().0;
        // A byte loop: names are short, and `split_once` sets up a memchr search per element.
        let (prefix, local_name) = match name.bytes().position(|b| b == b':') {
            Some(colon) => (
                name.get(..colon).unwrap_or_default(),
                name.get(colon + 1..).unwrap_or_default(),
            ),
            None => ("", name),
        };
        let in_fhir_ns = match self.namespaces.iter().rev().find(|ns| ns.is_for(prefix)) {
            Some(binding) => binding.fhir,
            None if prefix.is_empty() || prefix == "xml" => false,
            None => {
                return Err(self.not_well_formed("undeclared namespace prefix", Some(position)));
            }
        };
        if in_fhir_ns && self.invalid.is_none() && !self.fhir_attributes(&attrs) {
            self.invalid = Some(format!(
                "{}: an element carries an attribute FHIR XML does not allow (only value, id, \
                 url, namespace declarations and xsi attributes)",
                self.path().unwrap_or_else(|| "Bundle".to_owned())
            ));
        }
        let ctx = match self.stack.last() {
            None if in_fhir_ns && local_name == "Bundle" => Ctx::Bundle,
            None => {
                self.invalid = Some("the root element is not a FHIR Bundle".to_owned());
                Ctx::Skip
            }
            Some(Ctx::Skip) => Ctx::Skip,
            Some(_) if !in_fhir_ns => Ctx::Skip,
            Some(&parent) => self.child(parent, local_name, &attrs),
        };
        self.stack.push(ctx);
        Ok(())
    }

    /// Reads an element's attributes in one pass: checks each (syntax, duplicates, `<`,
    /// entities), opens its namespace declarations, and returns `value` and `url` decoded.
    /// At most [`MAX_ATTRIBUTES`] attributes and [`MAX_NAMESPACES_PER_ELEMENT`] declarations
    /// (at most [`MAX_NAMESPACES_IN_SCOPE`] in scope), so that a start tag costs a bounded
    /// amount of work however long it is.
    fn read_attrs<'x>(&mut self, start: &'x BytesStart<'_>) -> Result<Attrs<'x>, &'static str> {
        let mut seen = [""; MAX_ATTRIBUTES];
        let mut attrs = Attrs::default();
        let depth = self.stack.len();
        let raw = start.attributes_raw();
        let mut pos = 0;
        let mut index = 0;
        let mut declared = 0;
        while let Some(attr) = next_attribute(raw, &mut pos)? {
            if seen.iter().take(index).any(|name| *name == attr.name) {
                return Err(MALFORMED_ATTRIBUTE);
            }
            let Some(slot) = seen.get_mut(index) else {
                return Err(TOO_MANY_ATTRIBUTES);
            };
            *slot = attr.name;
            index += 1;
            let prefix = match attr.name {
                "value" => {
                    attrs.value = Some(attr.decoded()?);
                    continue;
                }
                "url" => {
                    attrs.url = Some(attr.decoded()?);
                    continue;
                }
                "xmlns" => Some(""),
                name => name.strip_prefix("xmlns:"),
            };
            if let Some(prefix) = prefix {
                declared += 1;
                if declared > MAX_NAMESPACES_PER_ELEMENT {
                    return Err(TOO_MANY_DECLARATIONS);
                }
                if self.namespaces.len() >= MAX_NAMESPACES_IN_SCOPE {
                    return Err(TOO_MANY_IN_SCOPE);
                }
                self.namespaces.push(Namespace {
                    prefix: prefix.to_owned(),
                    fhir: attr.decoded()? == FHIR_NS,
                    xsi: attr.decoded()? == XSI_NS,
                    depth,
                });
                continue;
            }
            // Decoded only to prove its entity references well-formed.
            attr.decoded()?;
            match attr.name.split_once(':') {
                Some((prefix, _)) => {
                    if let Some(slot) = attrs.prefixes.get_mut(attrs.prefixed) {
                        *slot = prefix;
                        attrs.prefixed += 1;
                    }
                }
                None if attr.name == "id" => {}
                None => attrs.unknown = true,
            }
        }
        Ok(attrs)
    }

    /// Whether a FHIR element's attributes are all ones FHIR XML allows: `value`, `id`, `url`,
    /// namespace declarations and XML Schema instance (`xsi`) attributes.
    fn fhir_attributes(&self, attrs: &Attrs<'_>) -> bool {
        !attrs.unknown
            && attrs.prefixes.iter().take(attrs.prefixed).all(|prefix| {
                self.namespaces
                    .iter()
                    .rev()
                    .find(|ns| ns.is_for(prefix))
                    .is_some_and(|ns| ns.xsi)
            })
    }

    /// Returns the frame of a FHIR element and records what NEMS reads from it.
    fn child(&mut self, parent: Ctx, name: &str, attrs: &Attrs<'_>) -> Ctx {
        match parent {
            Ctx::Skip => Ctx::Skip,
            Ctx::Bundle => match name {
                "id" => {
                    self.msg.bundle_id = attrs.value();
                    Ctx::Skip
                }
                "type" => {
                    self.msg.bundle_type = attrs.value();
                    Ctx::Skip
                }
                "entry" => {
                    self.entry = pb::BundleEntry::default();
                    self.resource_seen = false;
                    Ctx::Entry
                }
                _ => Ctx::Skip,
            },
            Ctx::Entry => match name {
                "fullUrl" => {
                    self.entry.full_url = attrs.value();
                    Ctx::Skip
                }
                "resource" => Ctx::EntryResource,
                _ => Ctx::Skip,
            },
            Ctx::EntryResource => self.resource(name),
            Ctx::Resource(kind) => self.resource_child(kind, name, attrs),
            Ctx::SubjectRef => {
                if name == "reference" {
                    self.entry.subject_references.push(attrs.value());
                }
                Ctx::Skip
            }
            Ctx::HeaderMeta
            | Ctx::HeaderEventType
            | Ctx::HeaderEventTypeConcept
            | Ctx::Coding(_)
            | Ctx::Routing
            | Ctx::RoutingNhsNumber(_)
            | Ctx::RoutingNhsIdentifier(_)
            | Ctx::RoutingBirth
            | Ctx::HeaderRef(_)
            | Ctx::HeaderSource => self.header_descendant(parent, name, attrs),
            Ctx::PatientMeta
            | Ctx::PatientSecurity
            | Ctx::DeathExtension
            | Ctx::DeathStatus
            | Ctx::DeathStatusConcept
            | Ctx::DeathStatusCoding
            | Ctx::PatientIdentifier
            | Ctx::Address
            | Ctx::AddressPeriod
            | Ctx::GeneralPractitioner
            | Ctx::OrganizationIdentifier => self.patient_descendant(parent, name, attrs),
        }
    }

    /// Opens the resource element of `entry.resource`; a second one is not a resource.
    fn resource(&mut self, name: &str) -> Ctx {
        if self.resource_seen {
            return Ctx::Skip;
        }
        self.resource_seen = true;
        name.clone_into(&mut self.entry.resource_type);
        let kind = match name {
            "MessageHeader" if self.msg.entries.is_empty() => {
                self.header = Some(pb::MessageHeaderSummary::default());
                Kind::Header
            }
            "Patient" => {
                self.patient = pb::PatientSummary::default();
                Kind::Patient
            }
            "Organization" => {
                self.organization_code = None;
                Kind::Organization
            }
            _ => Kind::Other,
        };
        Ctx::Resource(kind)
    }

    /// Reads a direct child of a resource. Children not named here, `contained` among them,
    /// are skipped whole: resources nested in them are never entries or Patients.
    fn resource_child(&mut self, kind: Kind, name: &str, attrs: &Attrs<'_>) -> Ctx {
        if let (Kind::Header, Some(header)) = (kind, &mut self.header) {
            count(&mut header.element_counts, name);
        }
        match name {
            "id" => {
                self.entry.resource_id = attrs.value();
                match kind {
                    Kind::Header => {
                        if let Some(header) = &mut self.header {
                            header.id = attrs.value();
                        }
                    }
                    Kind::Patient => self.patient.resource_id = attrs.value(),
                    Kind::Organization | Kind::Other => {}
                }
                return Ctx::Skip;
            }
            "subject" | "patient" => return Ctx::SubjectRef,
            _ => {}
        }
        match kind {
            Kind::Header => self.header_descendant(Ctx::Resource(kind), name, attrs),
            Kind::Patient => self.patient_descendant(Ctx::Resource(kind), name, attrs),
            Kind::Organization if name == "identifier" => {
                self.identifier = Identifier::default();
                self.single_seen = 0;
                Ctx::OrganizationIdentifier
            }
            Kind::Organization | Kind::Other => Ctx::Skip,
        }
    }

    /// Reads below the first entry's MessageHeader.
    fn header_descendant(&mut self, parent: Ctx, name: &str, attrs: &Attrs<'_>) -> Ctx {
        let Some(header) = &mut self.header else {
            return Ctx::Skip;
        };
        match (parent, name) {
            (Ctx::Resource(_), "meta") => Ctx::HeaderMeta,
            (Ctx::Resource(_), "extension") if attrs.url_is(EXT_MESSAGE_EVENT_TYPE) => {
                header.message_event_type_extensions += 1;
                Ctx::HeaderEventType
            }
            (Ctx::Resource(_), "extension") if attrs.url_is(EXT_ROUTING_DEMOGRAPHICS) => {
                self.routing = pb::RoutingDemographics::default();
                Ctx::Routing
            }
            (Ctx::Resource(_), "event") => {
                self.coding = pb::Coding::default();
                self.single_seen = 0;
                Ctx::Coding(CodingTarget::Event)
            }
            (Ctx::Resource(_), "timestamp") => {
                header.timestamp = attrs.value();
                Ctx::Skip
            }
            (Ctx::Resource(_), "focus") => Ctx::HeaderRef(RefTarget::Focus),
            (Ctx::Resource(_), "responsible") => Ctx::HeaderRef(RefTarget::Responsible),
            (Ctx::Resource(_), "source") => Ctx::HeaderSource,
            (Ctx::HeaderMeta, "lastUpdated") => {
                header.last_updated = attrs.value();
                Ctx::Skip
            }
            (Ctx::HeaderMeta, "profile") => {
                header.profile.push(attrs.value());
                Ctx::Skip
            }
            (Ctx::HeaderEventType, "valueCodeableConcept") => Ctx::HeaderEventTypeConcept,
            (Ctx::HeaderEventTypeConcept, "coding") => {
                self.coding = pb::Coding::default();
                self.single_seen = 0;
                Ctx::Coding(CodingTarget::MessageEventType)
            }
            (Ctx::Coding(_), _) => {
                let bit = match name {
                    "system" => 1,
                    "version" => 2,
                    "code" => 4,
                    "display" => 8,
                    "userSelected" => 16,
                    _ => 0,
                };
                if bit != 0 {
                    note_single(
                        &mut self.single_seen,
                        &mut self.invalid,
                        bit,
                        "MessageHeader: a Coding's system, version, code, display or userSelected",
                    );
                }
                match name {
                    "system" => self.coding.system = attrs.value(),
                    "code" => self.coding.code = attrs.value(),
                    "display" => self.coding.display = attrs.value(),
                    "version" => self.coding.version = attrs.value(),
                    "userSelected" => self.coding.user_selected_present = true,
                    _ => {}
                }
                Ctx::Skip
            }
            (Ctx::Routing, "extension") => match attrs.url.as_deref() {
                Some("nhsNumber") => {
                    self.routing.nhs_number_count += 1;
                    Ctx::RoutingNhsNumber(self.routing.nhs_number_count == 1)
                }
                Some("birthDateTime") => Ctx::RoutingBirth,
                Some("name") => {
                    self.routing.name_present = true;
                    Ctx::Skip
                }
                _ => Ctx::Skip,
            },
            (Ctx::RoutingNhsNumber(first), "valueIdentifier") => {
                self.single_seen = 0;
                Ctx::RoutingNhsIdentifier(first)
            }
            (Ctx::RoutingNhsIdentifier(first), "system" | "value") => {
                let bit = if name == "system" { 1 } else { 2 };
                note_single(
                    &mut self.single_seen,
                    &mut self.invalid,
                    bit,
                    "MessageHeader: the routing NHS number's system or value",
                );
                if first {
                    if bit == 1 {
                        self.routing.nhs_number_system = attrs.value();
                    } else {
                        self.routing.nhs_number = attrs.value();
                    }
                }
                Ctx::Skip
            }
            (Ctx::RoutingBirth, "valueDateTime" | "valueDate") => {
                self.routing.birth_date_time = attrs.value();
                Ctx::Skip
            }
            (Ctx::HeaderRef(target), "reference") => {
                let list = match target {
                    RefTarget::Focus => &mut header.focus,
                    RefTarget::Responsible => &mut header.responsible,
                };
                list.push(attrs.value());
                Ctx::Skip
            }
            (Ctx::HeaderSource, "endpoint") => {
                header.source_endpoint = attrs.value();
                Ctx::Skip
            }
            _ => Ctx::Skip,
        }
    }

    /// Reads below a Patient, and the identifiers of an Organization.
    fn patient_descendant(&mut self, parent: Ctx, name: &str, attrs: &Attrs<'_>) -> Ctx {
        let patient = &mut self.patient;
        match (parent, name) {
            (Ctx::Resource(_), "meta") => Ctx::PatientMeta,
            (Ctx::Resource(_), "extension") if attrs.url_is(EXT_DEATH_NOTIFICATION_STATUS) => {
                Ctx::DeathExtension
            }
            (Ctx::Resource(_), "identifier") => {
                self.identifier = Identifier::default();
                self.single_seen = 0;
                Ctx::PatientIdentifier
            }
            (Ctx::Resource(_), "birthDate") => {
                patient.birth_date = attrs.value();
                Ctx::Skip
            }
            (Ctx::Resource(_), "deceasedDateTime") => {
                patient.deceased_date_time = attrs.value();
                Ctx::Skip
            }
            (Ctx::Resource(_), "address") => {
                self.address = Some(pb::PatientAddress::default());
                self.address_has_postcode = false;
                Ctx::Address
            }
            (Ctx::Resource(_), "generalPractitioner") => {
                patient.gp_present = true;
                Ctx::GeneralPractitioner
            }
            (Ctx::PatientMeta, "lastUpdated") => {
                patient.last_updated = attrs.value();
                Ctx::Skip
            }
            (Ctx::PatientMeta, "versionId") => {
                patient.version_id = attrs.value();
                Ctx::Skip
            }
            (Ctx::PatientMeta, "security") => Ctx::PatientSecurity,
            (Ctx::PatientSecurity, "code") => {
                patient.security_codes.push(attrs.value());
                Ctx::Skip
            }
            (Ctx::DeathExtension, "extension") if attrs.url_is("deathNotificationStatus") => {
                Ctx::DeathStatus
            }
            (Ctx::DeathStatus, "valueCodeableConcept") => Ctx::DeathStatusConcept,
            (Ctx::DeathStatusConcept, "coding") => {
                self.single_seen = 0;
                Ctx::DeathStatusCoding
            }
            (Ctx::DeathStatusCoding, "code") => {
                note_single(
                    &mut self.single_seen,
                    &mut self.invalid,
                    4,
                    "Patient: the death notification status code",
                );
                patient.death_notification_status = attrs.value();
                Ctx::Skip
            }
            (Ctx::PatientIdentifier | Ctx::OrganizationIdentifier, "system") => {
                note_single(
                    &mut self.single_seen,
                    &mut self.invalid,
                    1,
                    "an identifier's system",
                );
                self.identifier.system = Some(attrs.value());
                Ctx::Skip
            }
            (Ctx::PatientIdentifier | Ctx::OrganizationIdentifier, "value") => {
                note_single(
                    &mut self.single_seen,
                    &mut self.invalid,
                    2,
                    "an identifier's value",
                );
                self.identifier.value = Some(attrs.value());
                Ctx::Skip
            }
            (Ctx::Address, _) => {
                if let Some(address) = &mut self.address {
                    match name {
                        "use" => address.r#use = attrs.value(),
                        "postalCode" => {
                            address.postal_code = attrs.value();
                            self.address_has_postcode = true;
                        }
                        "period" => return Ctx::AddressPeriod,
                        _ => {}
                    }
                }
                Ctx::Skip
            }
            (Ctx::AddressPeriod, "start" | "end") => {
                if let Some(address) = &mut self.address {
                    if name == "start" {
                        address.period_start = attrs.value();
                    } else {
                        address.period_end = attrs.value();
                    }
                }
                Ctx::Skip
            }
            (Ctx::GeneralPractitioner, "reference") => {
                self.gp_refs.push((self.msg.patients.len(), attrs.value()));
                Ctx::Skip
            }
            _ => Ctx::Skip,
        }
    }

    /// Closes the innermost element and moves what it built to its parent.
    fn end(&mut self) {
        // The reader checks that end tags match start tags, so the stack is never empty here.
        let Some(ctx) = self.stack.pop() else {
            return;
        };
        let depth = self.stack.len();
        while self.namespaces.last().is_some_and(|ns| ns.depth >= depth) {
            self.namespaces.pop();
        }
        if self.stack.is_empty() {
            self.root_closed = true;
        }
        let entry_index = self.msg.entries.len();
        match ctx {
            Ctx::Entry => {
                let entry = std::mem::take(&mut self.entry);
                self.msg.entries.push(entry);
            }
            Ctx::EntryResource if !self.resource_seen => {
                self.invalid.get_or_insert_with(|| {
                    format!("Bundle.entry[{entry_index}].resource: no resource element")
                });
            }
            Ctx::Resource(Kind::Patient) => {
                self.msg.patients.push(std::mem::take(&mut self.patient));
                self.patient_entries.push(entry_index);
            }
            Ctx::Resource(Kind::Organization) => self.organizations.push(Organization {
                entry: entry_index,
                ods_code: self.organization_code.take(),
            }),
            Ctx::Coding(target) => {
                let coding = std::mem::take(&mut self.coding);
                if let Some(header) = &mut self.header {
                    match target {
                        CodingTarget::Event => header.event.push(coding),
                        CodingTarget::MessageEventType => header.message_event_type.push(coding),
                    }
                }
            }
            Ctx::Routing => {
                let routing = std::mem::take(&mut self.routing);
                if let Some(header) = &mut self.header {
                    header.routing.push(routing);
                }
            }
            Ctx::PatientIdentifier => {
                let identifier = std::mem::take(&mut self.identifier);
                if let (Some(NHS_NUMBER_SYSTEM), Some(value)) =
                    (identifier.system.as_deref(), identifier.value)
                {
                    self.patient.nhs_numbers.push(value);
                }
            }
            Ctx::OrganizationIdentifier => {
                let identifier = std::mem::take(&mut self.identifier);
                if self.organization_code.is_none()
                    && identifier.system.as_deref() == Some(ODS_ORGANIZATION_SYSTEM)
                {
                    self.organization_code = identifier.value;
                }
            }
            Ctx::Address => {
                let address = self.address.take();
                if let Some(address) = address.filter(|_| self.address_has_postcode) {
                    self.patient.addresses.push(address);
                }
            }
            _ => {}
        }
    }

    /// Returns the error for character data or markup outside the root element.
    fn outside_root(&self, position: u64) -> FhirError {
        let what = if self.root_closed {
            "content after the root element"
        } else {
            "content before the root element"
        };
        self.not_well_formed(what, Some(position))
    }

    fn finish(mut self) -> Result<pb::EventMessage, FhirError> {
        if !self.root_closed {
            let what = if self.stack.is_empty() {
                "no root element"
            } else {
                "unexpected end of body (unclosed element)"
            };
            return Err(self.not_well_formed(what, None));
        }
        if let Some(invalid) = self.invalid {
            return Err(FhirError::Invalid(invalid));
        }
        for (patient, &entry) in self.msg.patients.iter_mut().zip(&self.patient_entries) {
            if let Some(entry) = self.msg.entries.get(entry) {
                patient.full_url.clone_from(&entry.full_url);
            }
        }
        let practices = Practices::new(&self.organizations, &self.msg.entries);
        for (index, reference) in &self.gp_refs {
            let Some(patient) = self.msg.patients.get_mut(*index) else {
                continue;
            };
            if !patient.gp_practice_code.is_empty() {
                continue;
            }
            if let Some(code) = practices.code(reference) {
                code.clone_into(&mut patient.gp_practice_code);
            }
        }
        self.msg.header = self.header;
        Ok(self.msg)
    }

    /// Builds a well-formedness error naming where the reader was (element path, offset).
    fn not_well_formed(&self, what: impl fmt::Display, position: Option<u64>) -> FhirError {
        let mut text = format!("body is not well-formed XML: {what}");
        if let Some(path) = self.path() {
            text.push_str(&format!(" in {path}"));
        }
        if let Some(position) = position {
            text.push_str(&format!(" (near byte {position})"));
        }
        FhirError::NotWellFormed(text)
    }

    /// Returns the element path of the innermost frame NEMS reads, for error texts.
    fn path(&self) -> Option<String> {
        let entry = self.msg.entries.len();
        let deepest = self.stack.iter().rev().find(|ctx| **ctx != Ctx::Skip)?;
        Some(match deepest {
            Ctx::Bundle => "Bundle".to_owned(),
            Ctx::Entry => format!("Bundle.entry[{entry}]"),
            Ctx::EntryResource => format!("Bundle.entry[{entry}].resource"),
            _ if self.entry.resource_type.is_empty() => format!("Bundle.entry[{entry}].resource"),
            _ => format!(
                "Bundle.entry[{entry}].resource.{}",
                self.entry.resource_type
            ),
        })
    }
}

/// Notes a single-valued child (`bit`) of the Coding or Identifier being read; the second
/// occurrence makes the bundle invalid.
fn note_single(seen: &mut u8, invalid: &mut Option<String>, bit: u8, what: &str) {
    if *seen & bit != 0 {
        invalid.get_or_insert_with(|| format!("{what} is repeated; it may occur once"));
    }
    *seen |= bit;
}

/// Counts one occurrence of `name`, allocating only the first time a name is seen.
fn count(counts: &mut HashMap<String, u32>, name: &str) {
    if let Some(n) = counts.get_mut(name) {
        *n += 1;
    } else {
        counts.insert(name.to_owned(), 1);
    }
}

/// The in-bundle Organizations by `fullUrl`, to resolve `generalPractitioner` references in
/// one lookup each (not a scan of every Organization per reference).
struct Practices<'a> {
    /// `fullUrl` → ODS code of the first Organization with it.
    exact: HashMap<&'a str, Option<&'a str>>,
    /// The same without a leading `urn:uuid:`: PDS examples sometimes give `fullUrl`
    /// without the scheme that references use.
    loose: HashMap<&'a str, Option<&'a str>>,
}

impl<'a> Practices<'a> {
    fn new(organizations: &'a [Organization], entries: &'a [pb::BundleEntry]) -> Self {
        let mut exact = HashMap::new();
        let mut loose = HashMap::new();
        for org in organizations {
            let Some(url) = entries.get(org.entry).map(|e| e.full_url.as_str()) else {
                continue;
            };
            let code = org.ods_code.as_deref();
            exact.entry(url).or_insert(code);
            if !url.is_empty() {
                loose.entry(without_uuid_scheme(url)).or_insert(code);
            }
        }
        Self { exact, loose }
    }

    /// Resolves a `generalPractitioner` reference to an ODS practice code: the last segment
    /// of a Spine directory URL, or the ODS identifier of the in-bundle Organization it names.
    fn code(&self, reference: &'a str) -> Option<&'a str> {
        if let Some(rest) = reference.strip_prefix(ODS_ORGANIZATION_URL) {
            let code = rest.split('/').next().unwrap_or_default();
            return (!code.is_empty()).then_some(code);
        }
        if reference.is_empty() {
            return None;
        }
        let found = match self.exact.get(reference) {
            Some(code) => *code,
            None => *self.loose.get(without_uuid_scheme(reference))?,
        };
        found.filter(|code| !code.is_empty())
    }
}

/// Returns a reference or `fullUrl` without a leading `urn:uuid:`.
fn without_uuid_scheme(url: &str) -> &str {
    url.strip_prefix("urn:uuid:").unwrap_or(url)
}
