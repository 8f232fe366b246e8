//! The FHIR wire formats of the edge: Subscription XML/JSON ⇄ protobuf round trips, XML ≡ JSON,
//! canonical output order, rejections, and an independent Python oracle (lxml + the STU3 XSDs,
//! and `fhir.resources` STU3 models) over every document the edge writes.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test helpers panic on broken fixtures and print skip notices"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nems_edge::fhir::capability::{self, CapabilityInfo};
use nems_edge::fhir::outcome::{self, Issue, OperationOutcome, Severity};
use nems_edge::fhir::{FhirError, Format};
use nems_edge::translate::subscription;
use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};

/// Fixtures that hold only elements NEMS mirrors, in schema order, each as `.xml` and `.json`.
const MIRRORED: &[&str] = &["explicit", "generic", "stored"];

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/subscription")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(format: Format, body: &[u8]) -> pb::SubscriptionResource {
    subscription::parse(format, body).unwrap_or_else(|e| panic!("{format:?}: {e}"))
}

// === A small XML tree for semantic comparison ===

/// An element: local name, attributes (sorted, namespace declarations dropped), children.
/// White space, comments and the declaration are ignored.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

fn node(start: &BytesStart<'_>) -> Node {
    let mut attrs: Vec<(String, String)> = start
        .attributes()
        .map(|a| a.unwrap())
        .filter(|a| a.key.as_namespace_binding().is_none() && !a.key.as_ref().starts_with("xsi:"))
        .map(|a| {
            let value = a
                .normalized_value(XmlVersion::Implicit1_0)
                .unwrap()
                .into_owned();
            (a.key.local_name().as_ref().to_owned(), value)
        })
        .collect();
    attrs.sort();
    Node {
        name: start.local_name().as_ref().to_owned(),
        attrs,
        children: Vec::new(),
    }
}

fn tree(xml: &[u8]) -> Node {
    let mut reader = quick_xml::Reader::from_str(std::str::from_utf8(xml).unwrap());
    let mut stack: Vec<Node> = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(s) => stack.push(node(&s)),
            Event::Empty(s) => {
                let n = node(&s);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(n),
                    None => return n,
                }
            }
            Event::End(_) => {
                let n = stack.pop().unwrap();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(n),
                    None => return n,
                }
            }
            Event::Text(t) => assert!(t.trim().is_empty(), "unexpected text {t:?}"),
            Event::Eof => panic!("unexpected end of document"),
            _ => {}
        }
    }
}

/// Serialises a tree (root in the FHIR namespace), escaping attribute values.
fn to_xml(n: &Node, out: &mut String) {
    let root = out.is_empty();
    out.push('<');
    out.push_str(&n.name);
    if root {
        out.push_str(r#" xmlns="http://hl7.org/fhir""#);
    }
    for (k, v) in &n.attrs {
        let v = quick_xml::escape::escape(v.as_str())
            .replace('\n', "&#10;")
            .replace('\t', "&#9;");
        out.push_str(&format!(r#" {k}="{v}""#));
    }
    out.push('>');
    for c in &n.children {
        to_xml(c, out);
    }
    out.push_str(&format!("</{}>", n.name));
}

/// Reorders the children of every element: `f` permutes the distinct child names (in order
/// of first appearance); elements with the same name keep their relative order, which is
/// meaningful for repeated elements.
fn permute(n: &mut Node, f: &dyn Fn(&mut Vec<String>)) {
    let mut names: Vec<String> = Vec::new();
    for c in &n.children {
        if !names.contains(&c.name) {
            names.push(c.name.clone());
        }
    }
    f(&mut names);
    let mut children = std::mem::take(&mut n.children);
    for name in &names {
        let (same, rest): (Vec<Node>, Vec<Node>) =
            children.into_iter().partition(|c| &c.name == name);
        n.children.extend(same);
        children = rest;
    }
    for c in &mut n.children {
        permute(c, f);
    }
}

// Element order of the STU3 schema (subscription.xsd, fhir-base.xsd).
const ROOT_ORDER: &[&str] = &[
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "status",
    "contact",
    "end",
    "reason",
    "criteria",
    "error",
    "channel",
    "tag",
];
const META_ORDER: &[&str] = &["versionId", "lastUpdated", "profile"];
const CONTACT_ORDER: &[&str] = &["system", "value", "use"];
const CHANNEL_ORDER: &[&str] = &["type", "endpoint", "payload", "header"];
const CODING_ORDER: &[&str] = &["system", "version", "code", "display", "userSelected"];

fn assert_order(n: &Node, order: &[&str]) {
    let positions: Vec<usize> = n
        .children
        .iter()
        .map(|c| {
            order
                .iter()
                .position(|o| *o == c.name)
                .unwrap_or_else(|| panic!("{}", c.name))
        })
        .collect();
    assert!(
        positions.is_sorted(),
        "{} children out of order: {positions:?}",
        n.name
    );
}

fn assert_schema_order(doc: &Node) {
    assert_eq!(doc.name, "Subscription");
    assert_order(doc, ROOT_ORDER);
    for c in &doc.children {
        match c.name.as_str() {
            "meta" => assert_order(c, META_ORDER),
            "contact" => assert_order(c, CONTACT_ORDER),
            "channel" => assert_order(c, CHANNEL_ORDER),
            "tag" => assert_order(c, CODING_ORDER),
            _ => assert!(c.children.is_empty(), "{} has children", c.name),
        }
    }
}

// === Round trips ===

#[test]
fn xml_round_trip_is_semantically_equal() {
    for name in MIRRORED {
        let input = fixture(&format!("{name}.xml"));
        let out = subscription::write(Format::Xml, &parse(Format::Xml, &input));
        assert_eq!(tree(&out), tree(&input), "{name}");
        assert_eq!(
            parse(Format::Xml, &out),
            parse(Format::Xml, &input),
            "{name}"
        );
    }
}

#[test]
fn json_round_trip_is_semantically_equal() {
    for name in MIRRORED {
        let input = fixture(&format!("{name}.json"));
        let out = subscription::write(Format::Json, &parse(Format::Json, &input));
        let want: serde_json::Value = serde_json::from_slice(&input).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, want, "{name}");
        assert!(
            out.starts_with(br#"{"resourceType":"Subscription""#),
            "{name}"
        );
    }
}

#[test]
fn xml_and_json_of_one_resource_give_equal_protobuf() {
    for name in MIRRORED.iter().chain(&["full"]) {
        let xml = parse(Format::Xml, &fixture(&format!("{name}.xml")));
        let json = parse(Format::Json, &fixture(&format!("{name}.json")));
        assert_eq!(xml, json, "{name}");
        // And each writer gives the other's input back.
        let from_xml = subscription::write(Format::Json, &xml);
        assert_eq!(
            parse(Format::Json, &from_xml),
            without_unwritten(&json),
            "{name}"
        );
    }
}

/// What survives a write: unmirrored elements and the `userSelected` value are not written.
fn without_unwritten(s: &pb::SubscriptionResource) -> pb::SubscriptionResource {
    let mut s = s.clone();
    s.other_elements.clear();
    for tag in &mut s.tag {
        tag.user_selected_present = false;
    }
    s
}

#[test]
fn every_element_is_mirrored_or_named() {
    let sub = parse(Format::Xml, &fixture("full.xml"));
    let mut want = vec![
        "channel.header.id",
        "channel.modifierExtension",
        "contact.extension",
        "contact.id",
        "contact.period",
        "contact.rank",
        "contained",
        "extension",
        "implicitRules",
        "language",
        "meta.extension",
        "meta.id",
        "meta.profile.extension",
        "meta.security",
        "meta.tag",
        "modifierExtension",
        "status.extension",
        "status.id",
        "text",
    ];
    want.sort_unstable();
    assert_eq!(sub.other_elements, want);
    let meta = sub.meta.as_ref().unwrap();
    assert_eq!((meta.version_id.as_str(), meta.profile.len()), ("1", 1));
    assert_eq!(sub.status, "error");
    assert_eq!(sub.error, "last delivery failed");
    let channel = sub.channel.as_ref().unwrap();
    assert_eq!(channel.header, ["X-One: 1", "X-Two: 2"]);
    assert_eq!(channel.payload, "application/fhir+xml");
    let tag = &sub.tag[0];
    assert_eq!(
        (
            tag.system.as_str(),
            tag.version.as_str(),
            tag.code.as_str(),
            tag.display.as_str()
        ),
        ("https://example.org/tags", "2", "matched", "Matched")
    );
    assert!(tag.user_selected_present);
    assert!(!sub.tag[1].user_selected_present);
    let round = parse(Format::Xml, &subscription::write(Format::Xml, &sub));
    assert_eq!(round, without_unwritten(&sub));
}

#[test]
fn entities_and_white_space_in_values_are_decoded() {
    let sub = parse(Format::Xml, &fixture("stored.xml"));
    assert_eq!(
        sub.reason,
        "Child \"health\" <team> & 'visits' \u{2014} café\nsecond line\ttab"
    );
    assert!(sub.criteria.contains("&Patient.age=gt5&Patient.age=lt19"));
    assert_eq!(sub.contact.len(), 2);
    assert_eq!(sub.contact[1].r#use, "");
}

// === Canonical order ===

#[test]
fn output_is_in_schema_order_whatever_the_input_order() {
    let canonical = subscription::write(Format::Xml, &parse(Format::Xml, &fixture("stored.xml")));
    assert_schema_order(&tree(&canonical));
    let shuffled = subscription::write(Format::Xml, &parse(Format::Xml, &fixture("shuffled.xml")));
    assert_eq!(
        String::from_utf8(shuffled).unwrap(),
        String::from_utf8(canonical).unwrap()
    );

    let reverse = |v: &mut Vec<String>| v.reverse();
    let rotate = |v: &mut Vec<String>| {
        if !v.is_empty() {
            v.rotate_left(1);
        }
    };
    for name in MIRRORED.iter().chain(&["full"]) {
        let input = fixture(&format!("{name}.xml"));
        let want = subscription::write(Format::Xml, &parse(Format::Xml, &input));
        assert_schema_order(&tree(&want));
        if *name == "full" {
            continue; // narrative and extensions are not ours to reorder
        }
        for f in [&reverse as &dyn Fn(&mut Vec<String>), &rotate] {
            let mut doc = tree(&input);
            permute(&mut doc, f);
            let mut text = String::new();
            to_xml(&doc, &mut text);
            assert_ne!(
                tree(text.as_bytes()),
                tree(&input),
                "{name}: permutation changed nothing"
            );
            let got = subscription::write(Format::Xml, &parse(Format::Xml, text.as_bytes()));
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want.clone()).unwrap(),
                "{name}"
            );
        }
    }
}

#[test]
fn writers_omit_empty_fields() {
    let sub = pb::SubscriptionResource {
        status: "active".into(),
        meta: Some(pb::ResourceMeta::default()),
        contact: vec![pb::ContactPoint::default()],
        channel: Some(pb::SubscriptionChannel {
            header: vec![String::new()],
            ..Default::default()
        }),
        tag: vec![pb::Coding {
            user_selected_present: true,
            ..Default::default()
        }],
        other_elements: vec!["text".into()],
        ..Default::default()
    };
    let xml = String::from_utf8(subscription::write(Format::Xml, &sub)).unwrap();
    assert!(xml.ends_with(
        r#"<Subscription xmlns="http://hl7.org/fhir"><status value="active"/></Subscription>"#
    ));
    let json = String::from_utf8(subscription::write(Format::Json, &sub)).unwrap();
    assert_eq!(json, r#"{"resourceType":"Subscription","status":"active"}"#);
}

#[test]
fn xml_attribute_values_are_escaped() {
    let sub = pb::SubscriptionResource {
        reason: "a&b <c> \"d\" 'e'\n\tf\r".into(),
        ..Default::default()
    };
    let xml = String::from_utf8(subscription::write(Format::Xml, &sub)).unwrap();
    assert!(
        xml.contains(r#"<reason value="a&amp;b &lt;c&gt; &quot;d&quot; 'e'&#10;&#9;f&#13;"/>"#),
        "{xml}"
    );
    // Read back by an independent parser as well as by ours.
    assert_eq!(tree(xml.as_bytes()).children[0].attrs[0].1, sub.reason);
    assert_eq!(parse(Format::Xml, xml.as_bytes()).reason, sub.reason);
}

// === Rejections ===

fn x(inner: &str) -> String {
    format!(r#"<Subscription xmlns="http://hl7.org/fhir">{inner}</Subscription>"#)
}

fn j(members: &str) -> String {
    format!(r#"{{"resourceType":"Subscription",{members}}}"#)
}

const MIN_X: &str = r#"<status value="requested"/><reason value="SECRET"/>"#;
const MIN_J: &str = r#""status":"requested","reason":"SECRET""#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    NotWellFormed,
    Invalid,
}

fn check(format: Format, body: &[u8], want: Want) {
    let got = subscription::parse(format, body);
    let shown = String::from_utf8_lossy(body);
    let text = match (&got, want) {
        (Err(FhirError::NotWellFormed(t)), Want::NotWellFormed) => t,
        (Err(FhirError::Invalid(t)), Want::Invalid) => t,
        _ => panic!("{format:?} {shown}: want {want:?}, got {got:?}"),
    };
    assert!(
        !text.contains("SECRET"),
        "{shown}: error text leaks a value: {text}"
    );
    assert!(
        !text.contains("9434765919"),
        "{shown}: error text leaks a value: {text}"
    );
    assert!(!text.is_empty() && !text.ends_with('.'), "{text}");
}

#[test]
fn minimal_bodies_parse() {
    assert_eq!(parse(Format::Xml, x(MIN_X).as_bytes()).reason, "SECRET");
    assert_eq!(parse(Format::Json, j(MIN_J).as_bytes()).reason, "SECRET");
    // A byte order mark, a declaration, comments and processing instructions are fine.
    let body = format!(
        "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?><!--c--><?pi x?>{}<!--c-->\n",
        x(MIN_X)
    );
    parse(Format::Xml, body.as_bytes());
}

#[test]
fn malformed_xml_is_not_well_formed() {
    let deep = format!("{}{}", "<extension>".repeat(70), "</extension>".repeat(70));
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"   ".to_vec(),
        b"not xml".to_vec(),
        x(MIN_X).replace("</Subscription>", "").into_bytes(),
        x(MIN_X)
            .replace("</Subscription>", "</Subscriptio>")
            .into_bytes(),
        format!("{}junk", x(MIN_X)).into_bytes(),
        format!("{}{}", x(MIN_X), x(MIN_X)).into_bytes(),
        format!("<!-- -->junk{}", x(MIN_X)).into_bytes(),
        // XML bombs and external entities: any DOCTYPE is refused before anything is expanded.
        format!(
            r#"<!DOCTYPE Subscription [<!ENTITY a "SECRET"><!ENTITY b "&a;&a;&a;&a;">]>{}"#,
            x(r#"<reason value="&b;"/>"#)
        )
        .into_bytes(),
        format!(
            r#"<!DOCTYPE Subscription [<!ENTITY x SYSTEM "file:///etc/passwd">]>{}"#,
            x("<status value=\"&x;\"/>")
        )
        .into_bytes(),
        format!(
            r#"<!DOCTYPE Subscription SYSTEM "http://example.org/s.dtd">{}"#,
            x(MIN_X)
        )
        .into_bytes(),
        x(r#"<reason value="&undeclared;"/>"#).into_bytes(),
        x(r#"<status value="a<b"/>"#).into_bytes(),
        x(r#"<status value="&#1;"/>"#).into_bytes(),
        x(r#"<status value="x" value="y"/>"#).into_bytes(),
        x(r#"<status value=x/>"#).into_bytes(),
        x("<text><div xmlns=\"http://www.w3.org/1999/xhtml\">&nbsp;</div></text>").into_bytes(),
        x(&deep).into_bytes(),
        [
            b"<Subscription xmlns=\"http://hl7.org/fhir\"><reason value=\"\xff\"/>".as_slice(),
            b"</Subscription>",
        ]
        .concat(),
        format!(r#"<?xml version="1.0" encoding="ISO-8859-1"?>{}"#, x(MIN_X)).into_bytes(),
        format!("{}<?xml version=\"1.0\"?>", x(MIN_X)).into_bytes(),
    ];
    for body in cases {
        check(Format::Xml, &body, Want::NotWellFormed);
    }
}

#[test]
fn invalid_xml_resources_are_invalid() {
    let cases = [
        r#"<Patient xmlns="http://hl7.org/fhir"><status value="requested"/></Patient>"#.to_owned(),
        r#"<Subscription><status value="requested"/></Subscription>"#.to_owned(),
        r#"<Subscription xmlns="urn:other"><status value="requested"/></Subscription>"#.to_owned(),
        r#"<Subscription xmlns="http://hl7.org/fhir" id="x"><status value="requested"/></Subscription>"#.to_owned(),
        r#"<Subscription xmlns="http://hl7.org/fhir"/>"#.to_owned(),
        x(r#"<status value="requested"/><foo value="SECRET"/>"#),
        x(r#"<status value="requested"/><o:reason xmlns:o="urn:other" value="SECRET"/>"#),
        x(r#"<status value="requested"/><status value="active"/>"#),
        x(r#"<status value="requested"/><reason value="a"/><reason value="SECRET"/>"#),
        x(r#"<channel><type value="message"/></channel><channel><type value="message"/></channel>"#),
        x(r#"<meta><versionId value="1"/><versionId value="2"/></meta>"#),
        x(r#"<text><status value="generated"/></text><text><status value="generated"/></text>"#),
        x(r#"<language value="en"/><language value="cy"/>"#),
        x(r#"<contact><rank value="1"/><rank value="2"/></contact>"#),
        x(r#"<status/>"#),
        x(r#"<status></status>"#),
        x(r#"<status><extension url="u"><valueString value="v"/></extension></status>"#),
        x(r#"<reason value=""/>"#),
        x(r#"<status value="requested">SECRET</status>"#),
        x(r#"<status value="requested"><![CDATA[SECRET]]></status>"#),
        x(r#"<status value="requested"/>SECRET"#),
        x(r#"<status value="requested">&amp;</status>"#),
        x(r#"<status value="requested" foo="SECRET"/>"#),
        x(r#"<status value="requested"><id value="x"/></status>"#),
        x(r#"<channel value="SECRET"><type value="message"/></channel>"#),
        x(r#"<channel><type value="message"/><foo value="SECRET"/></channel>"#),
        x(r#"<channel/>"#),
        x(r#"<contact id="c1"></contact>"#),
        x(r#"<meta></meta>"#),
        x(r#"<contact><system value="url"/><use value="work"/><use value="home"/></contact>"#),
        x(r#"<tag><code value="a"/><userSelected value="yes"/></tag>"#),
        x(r#"<tag><userSelected value="true"/><userSelected value="false"/></tag>"#),
        x(r#"<meta><profile/></meta>"#),
        x(r#"<Subscription><status value="requested"/></Subscription>"#),
    ];
    for body in cases {
        check(Format::Xml, body.as_bytes(), Want::Invalid);
    }
}

#[test]
fn malformed_json_is_not_well_formed() {
    let deep = format!(r#""extension":{}1{}"#, "[".repeat(70), "]".repeat(70));
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"<Subscription/>".to_vec(),
        format!("{} x", j(MIN_J)).into_bytes(),
        format!("{}{}", j(MIN_J), j(MIN_J)).into_bytes(),
        j(r#""status":"requested",}"#).into_bytes(),
        j(r#""status":'requested'"#).into_bytes(),
        j(r#""reason":"\ud800""#).into_bytes(),
        j(r#""reason":"a\qb""#).into_bytes(),
        j(&deep).into_bytes(),
        [
            br#"{"resourceType":"Subscription","reason":""#.as_slice(),
            b"\xff\xfe",
            br#""}"#,
        ]
        .concat(),
    ];
    for body in cases {
        check(Format::Json, &body, Want::NotWellFormed);
    }
}

#[test]
fn invalid_json_resources_are_invalid() {
    let cases = [
        r#"[]"#.to_owned(),
        r#""Subscription""#.to_owned(),
        r#"{"status":"requested"}"#.to_owned(),
        r#"{"resourceType":"Patient","status":"requested"}"#.to_owned(),
        r#"{"resourceType":1,"status":"requested"}"#.to_owned(),
        r#"{"resourceType":"Subscription"}"#.to_owned(),
        j(r#""status":"requested","foo":"SECRET""#),
        j(r#""status":"requested","9434765919":"SECRET""#),
        j(r#""status":"requested","status":"active""#),
        j(r#""resourceType":"Subscription","status":"requested""#),
        j(r#""status":1"#),
        j(r#""status":null"#),
        j(r#""status":["requested"]"#),
        j(r#""status":"""#),
        j(r#""reason":"SECRET\u0001""#),
        j(r#""contact":{"system":"url"}"#),
        j(r#""contact":[]"#),
        j(r#""contact":[{}]"#),
        j(r#""contact":[{"id":"c1"}]"#),
        j(r#""contact":["SECRET"]"#),
        j(r#""contact":[{"system":"url","foo":1}]"#),
        j(r#""contact":[{"system":"url","system":"email"}]"#),
        j(r#""channel":[{"type":"message"}]"#),
        j(r#""channel":{"type":"message","header":"SECRET"}"#),
        j(r#""channel":{"type":"message","header":["a"],"_header":[null,null]}"#),
        j(
            r#""meta":{"profile":"https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1"}"#,
        ),
        j(r#""meta":{"versionId":{"value":"1"}}"#),
        j(r#""_status":{"id":"s1"}"#),
        j(r#""status":"requested","_status":"SECRET""#),
        j(r#""status":"requested","_status":{"foo":1}"#),
        j(r#""status":"requested","_status":{}"#),
        j(r#""status":"requested","_contact":[{}]"#),
        j(r#""tag":[{"code":"a","userSelected":"true"}]"#),
        j(r#""tag":{"code":"a"}"#),
        j(r#""text":"SECRET""#),
        j(r#""extension":{"url":"u"}"#),
        j(r#""contained":{}"#),
    ];
    for body in cases {
        check(Format::Json, body.as_bytes(), Want::Invalid);
    }
}

#[test]
fn oversized_bodies_are_refused() {
    let big = x(&format!(
        r#"<reason value="{}"/>"#,
        "a".repeat(subscription::MAX_BODY_BYTES)
    ));
    check(Format::Xml, big.as_bytes(), Want::Invalid);
    let big = j(&format!(
        r#""reason":"{}""#,
        "a".repeat(subscription::MAX_BODY_BYTES)
    ));
    check(Format::Json, big.as_bytes(), Want::Invalid);
}

// === The independent oracle ===

/// Returns the venv's python, or `None` after a skip notice (a failure with
/// `NEMS_REQUIRE_TOOLS`).
fn python(test: &str) -> Option<PathBuf> {
    #[allow(clippy::disallowed_methods, reason = "tests read their own settings")]
    let configured = std::env::var_os("NEMS_VENV").map(PathBuf::from);
    let dir = configured.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = dir.join("bin/python3");
    if python.exists() {
        return Some(python);
    }
    #[allow(clippy::disallowed_methods, reason = "tests read their own settings")]
    let required = std::env::var_os("NEMS_REQUIRE_TOOLS").is_some();
    assert!(
        !required,
        "{test}: no Python venv at {}; run scripts/setup-test-tools.sh",
        dir.display()
    );
    eprintln!(
        "skipping {test}: no Python venv at {} (set NEMS_VENV)",
        dir.display()
    );
    None
}

fn xsd_dir(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fhir-stu3-xsd");
    if dir.join("fhir-single.xsd").is_file() {
        return Some(dir);
    }
    eprintln!("skipping {test}: ../shared is absent (no STU3 schemas)");
    None
}

/// Every document the edge writes, named `<what>.<xml|json>`.
fn documents() -> Vec<(String, Vec<u8>)> {
    let mut docs = Vec::new();
    for name in MIRRORED.iter().chain(&["full"]) {
        for (format, ext) in [(Format::Xml, "xml"), (Format::Json, "json")] {
            let sub = parse(format, &fixture(&format!("{name}.{ext}")));
            for (out, out_ext) in [(Format::Xml, "xml"), (Format::Json, "json")] {
                docs.push((
                    format!("subscription-{name}-from-{ext}.{out_ext}"),
                    subscription::write(out, &sub),
                ));
            }
        }
    }
    let issue = |severity, code, spine_code, diagnostics: Option<&str>| Issue {
        severity,
        code,
        spine_code,
        diagnostics: diagnostics.map(str::to_owned),
    };
    let outcomes = [
        vec![issue(
            Severity::Error,
            "invalid",
            SpineCode::InvalidRequestMessage,
            Some("The subscription criteria did not meet business rules"),
        )],
        vec![issue(
            Severity::Error,
            "structure",
            SpineCode::MessageNotWellFormed,
            Some("malformed xml near byte 12 & <more> \"quoted\"\nline two"),
        )],
        vec![issue(
            Severity::Error,
            "duplicate",
            SpineCode::DuplicateRejected,
            None,
        )],
        vec![
            issue(
                Severity::Information,
                "informational",
                SpineCode::Deprecated,
                Some("vaccinations-1 is deprecated"),
            ),
            issue(
                Severity::Warning,
                "informational",
                SpineCode::NoLongerSupported,
                None,
            ),
            issue(
                Severity::Fatal,
                "exception",
                SpineCode::InternalServerError,
                Some("error id 7f3a"),
            ),
        ],
    ];
    for (i, issues) in outcomes.into_iter().enumerate() {
        let o = OperationOutcome {
            id: format!("4f1c0c3e-7d39-4d2a-9f11-2a7f0b6f7d0{i}"),
            issues,
        };
        docs.push((format!("outcome-{i}.xml"), outcome::write(Format::Xml, &o)));
        docs.push((
            format!("outcome-{i}.json"),
            outcome::write(Format::Json, &o),
        ));
    }
    let every_code: Vec<Issue> = SpineCode::ALL
        .iter()
        .map(|c| issue(Severity::Error, "invalid", *c, None))
        .collect();
    let o = OperationOutcome {
        id: "every-code".into(),
        issues: every_code,
    };
    docs.push((
        "outcome-every-code.xml".into(),
        outcome::write(Format::Xml, &o),
    ));
    docs.push((
        "outcome-every-code.json".into(),
        outcome::write(Format::Json, &o),
    ));
    let info = CapabilityInfo {
        base_url: "https://nems.example.nhs.uk".into(),
        version: "0.1.0".into(),
        date: "2026-01-02T03:04:05+00:00".into(),
    };
    docs.push((
        "capability.xml".into(),
        capability::write(Format::Xml, &info),
    ));
    docs.push((
        "capability.json".into(),
        capability::write(Format::Json, &info),
    ));
    docs
}

#[test]
fn oracle_accepts_every_document_the_edge_writes() {
    let test = "oracle_accepts_every_document_the_edge_writes";
    let (Some(python), Some(xsd)) = (python(test), xsd_dir(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, body) in documents() {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        paths.push(path);
    }
    let pairs = paths.len() / 2;
    // The fixtures themselves must be valid STU3 too (shuffled.xml is out of order on purpose).
    // They are not compared as pairs: fhir.resources' XML reader drops some `id` attributes.
    for name in MIRRORED.iter().chain(&["full"]) {
        for ext in ["xml", "json"] {
            let path = dir.path().join(format!("fixture-{name}-{ext}.{ext}"));
            std::fs::write(&path, fixture(&format!("{name}.{ext}"))).unwrap();
            paths.push(path);
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/check_fhir.py");
    let out = Command::new(python)
        .arg(script)
        .arg(xsd)
        .args(&paths)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "oracle rejected documents:\n{report}");
    assert!(
        report.contains(&format!(
            "{} files, {pairs} xml/json pairs compared, 0 failed",
            paths.len()
        )),
        "{report}"
    );
}

#[test]
fn oracle_rejects_invalid_documents() {
    // The oracle must be able to fail: feed it documents that break the schema or the model.
    let test = "oracle_rejects_invalid_documents";
    let (Some(python), Some(xsd)) = (python(test), xsd_dir(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stored = String::from_utf8(subscription::write(
        Format::Xml,
        &parse(Format::Xml, &fixture("stored.xml")),
    ))
    .unwrap();
    let explicit = subscription::write(
        Format::Json,
        &parse(Format::Json, &fixture("explicit.json")),
    );
    let cases: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("out-of-order.xml", fixture("shuffled.xml"))],
        vec![("bad-status.xml", stored.replace(r#"<status value="active"/>"#, r#"<status value="bogus"/>"#).into_bytes())],
        vec![("no-status.xml", stored.replace(r#"<status value="active"/>"#, "").into_bytes())],
        vec![("empty-array.json", j(r#""status":"active","contact":[],"reason":"r","criteria":"c","channel":{"type":"message"}"#).into_bytes())],
        vec![("unknown.json", j(r#""status":"active","foo":1,"reason":"r","criteria":"c","channel":{"type":"message"}"#).into_bytes())],
        // Each valid, but not two renderings of one resource.
        vec![("pair.xml", stored.into_bytes()), ("pair.json", explicit)],
    ];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/check_fhir.py");
    for files in cases {
        let mut command = Command::new(&python);
        command.arg(&script).arg(&xsd);
        for (name, body) in &files {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            command.arg(path);
        }
        let out = command.output().unwrap();
        assert!(
            !out.status.success(),
            "oracle accepted {}: {}",
            files[0].0,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
#[ignore = "timing report; run with --release -- --ignored"]
fn timing() {
    use std::time::Instant;
    let cases = [
        (Format::Xml, "explicit.xml"),
        (Format::Json, "explicit.json"),
        (Format::Xml, "stored.xml"),
        (Format::Json, "stored.json"),
    ];
    for (format, name) in cases {
        let body = fixture(name);
        let sub = parse(format, &body);
        let n = 20_000;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(subscription::parse(format, std::hint::black_box(&body)).unwrap());
        }
        let parse_ns = start.elapsed().as_nanos() / n;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(subscription::write(format, std::hint::black_box(&sub)));
        }
        let write_ns = start.elapsed().as_nanos() / n;
        eprintln!("{name}: parse {parse_ns} ns, write {write_ns} ns");
    }
}

/// The XML rules the Subscription reader shares with the publish extractor.
#[test]
fn the_resource_reader_applies_the_shared_xml_rules() {
    let sub = |inner: &str, decl: &str| {
        format!(
            r#"{decl}<Subscription xmlns="http://hl7.org/fhir"><status value="requested"/>{inner}<reason value="r"/><criteria value="/Bundle?type=message"/><channel><type value="message"/><endpoint value="MB"/></channel></Subscription>"#
        )
    };
    let refused = |body: String, what: &str| match subscription::parse(Format::Xml, body.as_bytes())
    {
        Err(FhirError::NotWellFormed(text)) => {
            assert!(text.contains(what), "{what}: {text}");
        }
        other => panic!("{what}: expected not well-formed, got {other:?}"),
    };
    // The declaration names UTF-8 by its registered name only (as the extractor).
    refused(sub("", r#"<?xml version="1.0" encoding="utf8"?>"#), "utf-8");
    assert!(
        subscription::parse(
            Format::Xml,
            sub("", r#"<?xml version="1.0" encoding="UTF-8"?>"#).as_bytes()
        )
        .is_ok()
    );
    // Attribute and namespace bounds.
    let many: String = (0..40).map(|i| format!(r#" n{i}="{i}""#)).collect();
    refused(
        sub(&format!("<text{many}/>"), ""),
        "more than 32 attributes",
    );
    let declarations: String = (0..9).map(|i| format!(r#" xmlns:p{i}="u""#)).collect();
    refused(
        sub(&format!("<text{declarations}/>"), ""),
        "namespace declarations",
    );
    // Narrative text with a character XML does not allow, written or by reference.
    refused(
        sub(
            "<text><div xmlns=\"http://www.w3.org/1999/xhtml\">a\u{FFFE}b</div></text>",
            "",
        ),
        "not allowed",
    );
    refused(
        sub(
            "<text><div xmlns=\"http://www.w3.org/1999/xhtml\">a&#1;b</div></text>",
            "",
        ),
        "character reference",
    );
}
