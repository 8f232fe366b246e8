//! Bundle extraction on hand-written bodies: what the edge rejects (not well-formed, unsafe,
//! not a Bundle, an empty `entry.resource`) and the XML shapes it must read through
//! (comments, CDATA, entities, prefixes, contained and nested resources).

use std::path::Path;

use nems_edge::fhir::FhirError;
use nems_edge::translate::bundle::extract;
use nems_proto::v1 as pb;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bundles")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn ok(body: &[u8]) -> pb::EventMessage {
    extract(body).unwrap_or_else(|err| panic!("{err}"))
}

/// Asserts a `NotWellFormed` error and returns its text.
fn not_well_formed(body: &[u8]) -> String {
    match extract(body) {
        Err(FhirError::NotWellFormed(text)) => text,
        other => panic!("expected NotWellFormed, got {other:?}"),
    }
}

/// Asserts an `Invalid` error and returns its text.
fn invalid(body: &[u8]) -> String {
    match extract(body) {
        Err(FhirError::Invalid(text)) => text,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// A minimal bundle with `entries` (raw XML) after a MessageHeader entry.
fn bundle(entries: &str) -> String {
    format!(
        r#"<Bundle xmlns="http://hl7.org/fhir"><type value="message"/><entry><fullUrl value="urn:uuid:1"/><resource><MessageHeader><id value="1"/></MessageHeader></resource></entry>{entries}</Bundle>"#
    )
}

// === rejected bodies ===

#[test]
fn malformed_xml_is_not_well_formed() {
    let text = not_well_formed(&fixture("malformed.xml"));
    assert!(text.contains("mismatched end tag"), "{text}");
    assert!(
        text.contains("Bundle.entry[0].resource.MessageHeader"),
        "{text}"
    );
}

#[test]
fn doctype_and_entity_declarations_are_refused() {
    let text = not_well_formed(&fixture("doctype-entity.xml"));
    assert!(text.contains("DOCTYPE"), "{text}");
    // Nothing of the declarations leaks into the message.
    assert!(!text.contains("passwd") && !text.contains("lol"), "{text}");
}

#[test]
fn undeclared_entities_are_refused_in_attributes_and_text() {
    let attr = bundle(r#"<entry><fullUrl value="&xxe;"/></entry>"#);
    assert!(not_well_formed(attr.as_bytes()).contains("entity reference"));
    let text = r#"<Bundle xmlns="http://hl7.org/fhir"><text>&xxe;</text></Bundle>"#;
    assert!(not_well_formed(text.as_bytes()).contains("undefined entity reference"));
    let char_ref = bundle(r#"<entry><fullUrl value="&#0;"/></entry>"#);
    not_well_formed(char_ref.as_bytes());
}

#[test]
fn non_utf8_bodies_are_not_well_formed() {
    // Latin-1 "é" in an attribute value.
    let mut latin1 = bundle(r#"<entry><fullUrl value="caf#"/></entry>"#).into_bytes();
    let at = latin1.iter().position(|&b| b == b'#').unwrap();
    latin1[at] = 0xE9;
    assert!(not_well_formed(&latin1).contains("not UTF-8"));
    // UTF-16 with a byte-order mark.
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("<Bundle/>".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    not_well_formed(&utf16);
    // A declaration naming another encoding.
    let declared = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1"?>{}"#,
        bundle("")
    );
    assert!(not_well_formed(declared.as_bytes()).contains("encoding"));
    // A control character.
    let control = bundle("<entry>\u{1}</entry>");
    assert!(not_well_formed(control.as_bytes()).contains("control character"));
}

#[test]
fn trailing_content_is_not_well_formed() {
    for trailing in [
        "<Bundle xmlns=\"http://hl7.org/fhir\"/>",
        "text",
        "<![CDATA[x]]>",
        "&amp;",
    ] {
        let body = format!("{}\n{trailing}", bundle(""));
        let text = not_well_formed(body.as_bytes());
        assert!(
            text.contains("after the root element"),
            "{trailing}: {text}"
        );
    }
    // Comments, processing instructions and whitespace after the root are fine.
    ok(format!("{}\n<!-- end -->\n<?pi x?>\n\n", bundle("")).as_bytes());
}

#[test]
fn empty_truncated_and_misplaced_declarations_are_not_well_formed() {
    assert!(not_well_formed(b"").contains("no root element"));
    assert!(not_well_formed(b"  \n<!-- only a comment -->").contains("no root element"));
    let full = bundle("");
    let truncated = &full.as_bytes()[..full.len() - "</Bundle>".len()];
    assert!(not_well_formed(truncated).contains("unexpected end"));
    assert!(
        not_well_formed(b"junk<Bundle xmlns=\"http://hl7.org/fhir\"/>").contains("before the root")
    );
    let late_decl = format!("\n<?xml version=\"1.0\"?>{}", bundle(""));
    assert!(not_well_formed(late_decl.as_bytes()).contains("declaration"));
    let dup_attr = bundle(r#"<entry><fullUrl value="a" value="b"/></entry>"#);
    assert!(not_well_formed(dup_attr.as_bytes()).contains("attribute"));
    let unbound = bundle(r#"<x:entry/>"#);
    assert!(not_well_formed(unbound.as_bytes()).contains("namespace prefix"));
    let lt_in_attr = bundle(r#"<entry><fullUrl value="a<b"/></entry>"#);
    not_well_formed(lt_in_attr.as_bytes());
}

#[test]
fn deep_nesting_is_refused() {
    let depth = 200;
    let body = format!(
        r#"<Bundle xmlns="http://hl7.org/fhir">{}{}</Bundle>"#,
        "<extension>".repeat(depth),
        "</extension>".repeat(depth)
    );
    assert!(not_well_formed(body.as_bytes()).contains("nested deeper than"));
    // Inside the bound (64, as for every FHIR XML the edge reads) is fine; real messages
    // nest about 12 levels.
    let body = format!(
        r#"<Bundle xmlns="http://hl7.org/fhir">{}{}</Bundle>"#,
        "<extension>".repeat(60),
        "</extension>".repeat(60)
    );
    ok(body.as_bytes());
}

#[test]
fn errors_never_quote_values() {
    // A malformed body whose only text is patient data.
    let body = r#"<Bundle xmlns="http://hl7.org/fhir"><entry><resource><Patient><identifier><value value="9912003888"></identifier></Patient></resource></entry></Bundle>"#;
    let text = not_well_formed(body.as_bytes());
    assert!(!text.contains("9912003888"), "{text}");
    assert!(text.contains("Bundle.entry[0].resource.Patient"), "{text}");
    let body = r#"<Bundle xmlns="http://hl7.org/fhir"><entry><fullUrl value="&DAWKINS;"/></entry></Bundle>"#;
    let text = not_well_formed(body.as_bytes());
    assert!(!text.contains("DAWKINS"), "{text}");
}

#[test]
fn wrong_root_is_invalid() {
    assert!(invalid(&fixture("wrong-root.xml")).contains("not a FHIR Bundle"));
    // A Bundle outside the FHIR namespace, or in none, is not a FHIR Bundle either.
    invalid(b"<Bundle xmlns=\"http://hl7.org/fhir/other\"><type value=\"message\"/></Bundle>");
    invalid(b"<Bundle><type value=\"message\"/></Bundle>");
    // Well-formedness is judged first.
    not_well_formed(b"<Parameters xmlns=\"http://hl7.org/fhir\"><a></b></Parameters>");
}

#[test]
fn missing_resource_is_invalid() {
    let text = invalid(&fixture("missing-resource.xml"));
    assert_eq!(text, "Bundle.entry[1].resource: no resource element");
    // A resource in a foreign namespace is no resource.
    let foreign = bundle(r#"<entry><resource><Patient xmlns="urn:other"/></resource></entry>"#);
    assert!(invalid(foreign.as_bytes()).contains("Bundle.entry[1].resource"));
    // An entry without `resource` at all is core's business.
    let msg = ok(bundle(r#"<entry><fullUrl value="urn:uuid:2"/></entry>"#).as_bytes());
    assert_eq!(msg.entries[1].resource_type, "");
}

// === bodies read through ===

#[test]
fn first_entry_not_a_message_header_leaves_the_header_unset() {
    let msg = ok(&fixture("first-entry-not-header.xml"));
    assert!(msg.header.is_none());
    let types: Vec<&str> = msg
        .entries
        .iter()
        .map(|e| e.resource_type.as_str())
        .collect();
    assert_eq!(types, ["Patient", "MessageHeader"]);
    assert_eq!(msg.patients.len(), 1);
    assert_eq!(msg.patients[0].nhs_numbers, ["9912003888"]);
    assert_eq!(msg.patients[0].full_url, msg.entries[0].full_url);
}

#[test]
fn gp_resolves_to_an_organization_defined_after_the_patient() {
    let msg = ok(&fixture("gp-organization-after-patient.xml"));
    let codes: Vec<(&str, bool)> = msg
        .patients
        .iter()
        .map(|p| (p.gp_practice_code.as_str(), p.gp_present))
        .collect();
    assert_eq!(
        codes,
        [
            // ods-organization-code, not the ods-site-code listed first
            ("B86056", true),
            // fullUrl without `urn:uuid:`
            ("B85612", true),
            // practice without an ODS code: present but unresolved
            ("", true),
        ]
    );
}

#[test]
fn gp_absolute_reference_and_absent_gp() {
    let patient = |gp: &str| {
        let body = bundle(&format!(
            r#"<entry><fullUrl value="urn:uuid:p"/><resource><Patient>{gp}</Patient></resource></entry>"#
        ));
        ok(body.as_bytes()).patients.remove(0)
    };
    let absolute = patient(
        r#"<generalPractitioner><reference value="https://directory.spineservices.nhs.uk/STU3/Organization/Y01234"/></generalPractitioner>"#,
    );
    assert_eq!(
        (absolute.gp_practice_code.as_str(), absolute.gp_present),
        ("Y01234", true)
    );
    let absent = patient("");
    assert_eq!(
        (absent.gp_practice_code.as_str(), absent.gp_present),
        ("", false)
    );
    let dangling = patient(
        r#"<generalPractitioner><reference value="urn:uuid:nowhere"/></generalPractitioner>"#,
    );
    assert_eq!(
        (dangling.gp_practice_code.as_str(), dangling.gp_present),
        ("", true)
    );
}

#[test]
fn contained_and_nested_resources_are_not_entries() {
    let msg = ok(&fixture("contained.xml"));
    let types: Vec<&str> = msg
        .entries
        .iter()
        .map(|e| e.resource_type.as_str())
        .collect();
    assert_eq!(
        types,
        ["MessageHeader", "Immunization", "Patient", "Bundle"]
    );
    let header = msg.header.as_ref().unwrap();
    // The contained MessageHeader's event and focus are not the header's.
    assert_eq!(header.event.len(), 1);
    assert_eq!(header.event[0].code, "vaccinations-1");
    assert_eq!(
        header.focus,
        ["urn:uuid:f1e1d5c2-0000-4000-8000-000000000032"]
    );
    assert_eq!(header.id, "f1e1d5c2-0000-4000-8000-000000000031");
    assert_eq!(header.element_counts.get("contained"), Some(&2));
    assert_eq!(header.element_counts.get("event"), Some(&1));
    // Only the top-level Patient entry is a Patient; contained and nested ones are not.
    assert_eq!(msg.patients.len(), 1);
    let patient = &msg.patients[0];
    assert_eq!(
        patient.full_url,
        "urn:uuid:f1e1d5c2-0000-4000-8000-000000000033"
    );
    assert_eq!(patient.nhs_numbers, ["9912003888"]);
    // A reference to a contained Organization is not resolved (not a practice code source).
    assert!(patient.gp_present);
    assert_eq!(patient.gp_practice_code, "");
    // Only direct subject/patient references count (not practitioner.actor, not link.other).
    assert_eq!(msg.entries[1].subject_references, ["#p1"]);
    assert!(msg.entries[2].subject_references.is_empty());
    assert_eq!(
        msg.entries[1].resource_id,
        "f1e1d5c2-0000-4000-8000-000000000032"
    );
    assert_eq!(
        msg.entries[3].resource_id,
        "f1e1d5c2-0000-4000-8000-000000000034"
    );
}

#[test]
fn comments_cdata_entities_and_prefixes_are_read_through() {
    let msg = ok(&fixture("comments-cdata-entities.xml"));
    assert_eq!(msg.bundle_id, "f1e1d5c2-0000-4000-8000-000000000040");
    assert_eq!(msg.bundle_type, "message");
    let types: Vec<&str> = msg
        .entries
        .iter()
        .map(|e| e.resource_type.as_str())
        .collect();
    assert_eq!(types, ["MessageHeader", "Patient"]);
    assert_eq!(
        msg.entries[0].full_url,
        "urn:uuid:f1e1d5c2-0000-4000-8000-000000000041"
    );
    let header = msg.header.as_ref().unwrap();
    // XHTML elements named like FHIR ones do not count; the foreign extension does not count.
    assert_eq!(header.id, "f1e1d5c2-0000-4000-8000-000000000041");
    assert_eq!(
        header.focus,
        ["urn:uuid:f1e1d5c2-0000-4000-8000-000000000042"]
    );
    assert_eq!(header.element_counts.get("extension"), Some(&1));
    assert_eq!(header.element_counts.get("text"), Some(&1));
    assert_eq!(header.element_counts.get("div"), None);
    assert_eq!(header.message_event_type_extensions, 1);
    assert_eq!(
        header.message_event_type[0].display,
        "New \"event\" message"
    );
    assert_eq!(header.event[0].display, "Vaccinations & Immunisations");
    assert!(header.event[0].user_selected_present);
    assert!(header.routing.is_empty());
    assert_eq!(
        header.responsible,
        ["https://directory.spineservices.nhs.uk/STU3/Organization/X26"]
    );
    let patient = &msg.patients[0];
    assert_eq!(patient.addresses.len(), 1, "only addresses with a postcode");
    assert_eq!(patient.addresses[0].r#use, "home");
    // A character reference keeps its tab; only literal whitespace is normalised.
    assert_eq!(patient.addresses[0].postal_code, "LS1\t4AP");
}

#[test]
fn repeated_header_parts_are_all_reported() {
    let body = r#"<Bundle xmlns="http://hl7.org/fhir"><entry><resource><MessageHeader>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1">
            <extension url="nhsNumber"><valueIdentifier><system value="s1"/><value value="1"/></valueIdentifier></extension>
            <extension url="nhsNumber"><valueIdentifier><system value="s2"/><value value="2"/></valueIdentifier></extension>
            <extension url="birthDateTime"><valueDate value="2001-02-03"/></extension>
        </extension>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1"/>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1"/>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1">
            <valueCodeableConcept><coding><code value="new"/><version value="1"/></coding><coding><code value="update"/></coding></valueCodeableConcept>
        </extension>
        <event><code value="a"/></event><event><code value="b"/></event>
        <receiver><reference value="urn:uuid:r"/></receiver>
        <focus><reference value="urn:uuid:f1"/></focus><focus><display value="no reference"/></focus>
    </MessageHeader></resource></entry></Bundle>"#;
    let msg = ok(body.as_bytes());
    let header = msg.header.unwrap();
    assert_eq!(msg.bundle_type, "");
    assert_eq!(header.routing.len(), 2);
    let routing = &header.routing[0];
    assert_eq!(routing.nhs_number_count, 2);
    assert_eq!(
        (
            routing.nhs_number_system.as_str(),
            routing.nhs_number.as_str()
        ),
        ("s1", "1")
    );
    assert_eq!(routing.birth_date_time, "2001-02-03");
    assert!(!routing.name_present);
    assert_eq!(header.routing[1], pb::RoutingDemographics::default());
    assert_eq!(header.message_event_type_extensions, 2);
    let codes: Vec<&str> = header
        .message_event_type
        .iter()
        .map(|c| c.code.as_str())
        .collect();
    assert_eq!(codes, ["new", "update"]);
    assert_eq!(header.message_event_type[0].version, "1");
    let events: Vec<&str> = header.event.iter().map(|c| c.code.as_str()).collect();
    assert_eq!(events, ["a", "b"]);
    assert_eq!(header.focus, ["urn:uuid:f1"]);
    for (element, count) in [
        ("extension", 4),
        ("event", 2),
        ("receiver", 1),
        ("focus", 2),
    ] {
        assert_eq!(
            header.element_counts.get(element),
            Some(&count),
            "{element}"
        );
    }
    assert_eq!(header.element_counts.len(), 4);
}

#[test]
fn patient_flags_meta_and_identifiers() {
    let body = bundle(
        r#"<entry><fullUrl value="urn:uuid:p"/><resource><Patient>
            <id value="p"/>
            <meta><versionId value="7"/><lastUpdated value="2020-01-01T00:00:00+00:00"/>
                <security><system value="http://hl7.org/fhir/v3/Confidentiality"/><code value="R"/></security>
                <security><code value="REDACTED"/></security></meta>
            <identifier><value value="1111111111"/><system value="https://fhir.nhs.uk/Id/nhs-number"/></identifier>
            <identifier><system value="https://fhir.nhs.uk/Id/local"/><value value="L1"/></identifier>
            <identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="2222222222"/></identifier>
            <birthDate value="1990-01-01"/>
            <deceasedDateTime value="2020-01-01T00:00:00+00:00"/>
        </Patient></resource></entry>"#,
    );
    let patient = ok(body.as_bytes()).patients.remove(0);
    assert_eq!(patient.resource_id, "p");
    assert_eq!(patient.version_id, "7");
    assert_eq!(patient.last_updated, "2020-01-01T00:00:00+00:00");
    assert_eq!(patient.security_codes, ["R", "REDACTED"]);
    assert_eq!(patient.nhs_numbers, ["1111111111", "2222222222"]);
    assert_eq!(patient.birth_date, "1990-01-01");
    assert_eq!(patient.deceased_date_time, "2020-01-01T00:00:00+00:00");
    assert_eq!(patient.death_notification_status, "");
}

#[test]
fn attribute_syntax_is_checked() {
    for bad in [
        r#"<entry b="1"c="2"/>"#,
        r#"<entry b=c/>"#,
        r#"<entry b/>"#,
        r#"<entry ="x"/>"#,
        r#"<entry b="1" b="2"/>"#,
        r#"<entry b="1" c="2" d="3" e="4" f="5" g="6" h="7" i="8" j="9" j="10"/>"#,
        r#"<entry b"c="1"/>"#,
        r#"<entry b="x&y"/>"#,
    ] {
        let text = not_well_formed(bundle(bad).as_bytes());
        let named = ["attribute", "reference", "markup"];
        assert!(
            named.iter().any(|what| text.contains(what)),
            "{bad}: {text}"
        );
    }
    let good = r#"<entry  id = "1"	xmlns:a='x"y' xmlns:b="a>b" ><fullUrl value = 'urn:uuid:&#x41;&amp;&lt;' /></entry>"#;
    let msg = ok(bundle(good).as_bytes());
    assert_eq!(msg.entries[1].full_url, "urn:uuid:A&<");
    // Literal tabs and line breaks in a value read as spaces (XML attribute normalisation).
    let msg = ok(bundle("<entry><fullUrl value=\"a\tb\r\nc\"/></entry>").as_bytes());
    assert_eq!(msg.entries[1].full_url, "a b c");
}

#[test]
fn namespace_scopes_open_and_close_with_their_element() {
    let body = r#"<Bundle xmlns="http://hl7.org/fhir">
        <entry xmlns="urn:other"><fullUrl value="not-fhir"/></entry>
        <entry><fullUrl value="fhir"/><resource><p:Patient xmlns:p="http://hl7.org/fhir"><p:id value="1"/><id value="2"/></p:Patient></resource></entry>
        <q:entry xmlns:q="http://hl7.org/fhir"><q:fullUrl value="prefixed"/></q:entry>
    </Bundle>"#;
    let msg = ok(body.as_bytes());
    let urls: Vec<&str> = msg.entries.iter().map(|e| e.full_url.as_str()).collect();
    assert_eq!(urls, ["fhir", "prefixed"]);
    assert_eq!(msg.entries[0].resource_type, "Patient");
    // Both ids are FHIR: the prefixed one and the one in the default namespace, in order.
    assert_eq!(msg.patients[0].resource_id, "2");
    // The prefix `p` is out of scope after its element closed.
    let out_of_scope = r#"<Bundle xmlns="http://hl7.org/fhir"><entry xmlns:p="http://hl7.org/fhir"/><p:entry/></Bundle>"#;
    assert!(not_well_formed(out_of_scope.as_bytes()).contains("namespace prefix"));
}

#[test]
fn attributes_a_fhir_element_cannot_carry_are_refused() {
    for bad in [
        r#"<entry junk="1"/>"#,
        r#"<entry><fullUrl value="x" other="y"/></entry>"#,
        r#"<entry xml:lang="en"/>"#,
        r#"<entry p:x="1" xmlns:p="urn:other"/>"#,
    ] {
        let text = invalid(bundle(bad).as_bytes());
        assert!(
            text.contains("attribute FHIR XML does not allow"),
            "{bad}: {text}"
        );
    }
    // What FHIR XML has: value, id, url, declarations and xsi attributes; XHTML narrative
    // (another namespace) carries its own.
    let good = r#"<entry id="e1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir x.xsd"><fullUrl value="urn:uuid:1" id="f"/><resource><Patient><text><div xmlns="http://www.w3.org/1999/xhtml" class="c" style="s"><p lang="en">x</p></div></text><extension url="u"><valueString value="v"/></extension></Patient></resource></entry>"#;
    let msg = ok(bundle(good).as_bytes());
    assert_eq!(msg.entries[1].full_url, "urn:uuid:1");
}

#[test]
fn start_tags_are_bounded() {
    // A start tag with thousands of attributes is refused after the 32nd, whatever follows:
    // its cost no longer grows with its length (it was quadratic).
    let many: String = (0..40_000).map(|i| format!(" a{i}=\"{i}\"")).collect();
    let text =
        not_well_formed(format!(r#"<Bundle xmlns="http://hl7.org/fhir"{many}/>"#).as_bytes());
    assert!(text.contains("more than 32 attributes"), "{text}");
    let text = not_well_formed(
        bundle(&format!(
            "<entry{}/>",
            (0..33)
                .map(|i| format!(" xmlns:p{i}=\"u\""))
                .collect::<String>()
        ))
        .as_bytes(),
    );
    assert!(
        text.contains("more than 32 attributes") || text.contains("namespace"),
        "{text}"
    );
    let text = not_well_formed(
        bundle(&format!(
            "<entry{}/>",
            (0..9)
                .map(|i| format!(" xmlns:p{i}=\"u\""))
                .collect::<String>()
        ))
        .as_bytes(),
    );
    assert!(
        text.contains("more than 8 namespace declarations"),
        "{text}"
    );
    // Declarations in scope are bounded too (each element's lookup walks them).
    let nested: String = (0..5)
        .map(|d| {
            format!(
                "<extension{}>",
                (0..8)
                    .map(|i| format!(" xmlns:q{d}x{i}=\"u\""))
                    .collect::<String>()
            )
        })
        .collect();
    let closing = "</extension>".repeat(5);
    let text = not_well_formed(bundle(&format!("{nested}{closing}")).as_bytes());
    assert!(
        text.contains("more than 32 namespace declarations in scope"),
        "{text}"
    );
}

#[test]
fn characters_xml_does_not_allow_are_refused_however_written() {
    for bad in [
        "<entry><fullUrl value=\"a&#1;b\"/></entry>".to_owned(),
        "<entry><fullUrl value=\"a&#xFFFE;\"/></entry>".to_owned(),
        "<entry>&#1;</entry>".to_owned(),
        "<entry><fullUrl value=\"a\u{FFFE}b\"/></entry>".to_owned(),
        "<entry><fullUrl value=\"a\u{FFFF}b\"/></entry>".to_owned(),
    ] {
        let text = not_well_formed(bundle(&bad).as_bytes());
        assert!(
            ["reference", "U+FFFE", "character"]
                .iter()
                .any(|w| text.contains(w)),
            "{bad:?}: {text}"
        );
    }
    // `utf8` is not the registered name of UTF-8.
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf8\"?>{}",
        bundle("<entry/>")
    );
    let text = not_well_formed(body.as_bytes());
    assert!(text.contains("encoding"), "{text}");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>{}",
        bundle("<entry/>")
    );
    ok(body.as_bytes());
}

#[test]
fn repeated_single_valued_elements_are_refused() {
    let header = |coding: &str| {
        format!(
            r#"<Bundle xmlns="http://hl7.org/fhir"><type value="message"/><entry><fullUrl value="urn:uuid:1"/><resource><MessageHeader><event>{coding}</event></MessageHeader></resource></entry></Bundle>"#
        )
    };
    let text =
        invalid(header(r#"<system value="s"/><code value="a"/><code value="b"/>"#).as_bytes());
    assert!(text.contains("repeated"), "{text}");
    let msg = ok(header(r#"<system value="s"/><code value="a"/>"#).as_bytes());
    assert_eq!(msg.header.unwrap().event[0].code, "a");
    // The routing NHS number and a Patient identifier: recipients read the first, so a
    // second value must not be taken silently.
    let routing = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="message"/><entry><fullUrl value="urn:uuid:1"/><resource><MessageHeader><extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1"><extension url="nhsNumber"><valueIdentifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="9912003888"/><value value="9912003889"/></valueIdentifier></extension></extension></MessageHeader></resource></entry></Bundle>"#;
    let text = invalid(routing.as_bytes());
    assert!(text.contains("routing NHS number"), "{text}");
    assert!(
        !text.contains("9912003888"),
        "no patient data in errors: {text}"
    );
    let patient = bundle(
        r#"<entry><fullUrl value="urn:uuid:2"/><resource><Patient><identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="9912003888"/><value value="9912003889"/></identifier></Patient></resource></entry>"#,
    );
    let text = invalid(patient.as_bytes());
    assert!(text.contains("identifier's value"), "{text}");
}
