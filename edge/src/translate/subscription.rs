//! The STU3 `Subscription` resource in XML and JSON ⇄ [`pb::SubscriptionResource`].
//!
//! Reading mirrors every element of the base STU3 Subscription into protobuf exactly as sent
//! and applies no NEMS rule (core does): it only rejects what is not a well-formed, structurally
//! valid STU3 Subscription. Legal elements NEMS does not mirror (`text`, `extension`,
//! `contained`, `contact.period`, an `id` or `extension` on a mirrored element, ...) are named
//! in `other_elements` by their path below `Subscription` (`extension`, `contact.extension`,
//! `status.extension`), sorted and without duplicates, the same for both formats. XML element
//! order is not checked on input; output is always in schema order.

use nems_proto::v1 as pb;

use crate::fhir::common::{ElementExt, Path, ResourceWriter};
use crate::fhir::json::{self, JsonWriter, Value};
use crate::fhir::xml::{Element, XmlReader, XmlWriter, unknown_element};
use crate::fhir::{FhirError, Format};

/// The largest Subscription body read, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Reads a Subscription resource sent by a client.
pub fn parse(format: Format, body: &[u8]) -> Result<pb::SubscriptionResource, FhirError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(FhirError::Invalid(format!(
            "subscription body exceeds {MAX_BODY_BYTES} bytes"
        )));
    }
    let (mut sub, notes) = match format {
        Format::Xml => parse_xml(body)?,
        Format::Json => parse_json(body)?,
    };
    sub.other_elements = notes.finish();
    Ok(sub)
}

/// Writes a stored Subscription resource. Empty fields are omitted; `other_elements` is not
/// written, and neither is `tag.userSelected` (only its presence is kept).
pub fn write(format: Format, subscription: &pb::SubscriptionResource) -> Vec<u8> {
    match format {
        Format::Xml => write_with(XmlWriter::start(ROOT), subscription),
        Format::Json => write_with(JsonWriter::start(ROOT), subscription),
    }
}

const ROOT: &str = "Subscription";
const META: &str = "Subscription.meta";
const CONTACT: &str = "Subscription.contact";
const CHANNEL: &str = "Subscription.channel";
const TAG: &str = "Subscription.tag";

// === Notes ===

/// Paths of elements present but not mirrored, relative to the resource.
#[derive(Debug, Default)]
struct Notes(Vec<String>);

impl Notes {
    /// Records element `name` of the element at `parent` (a path such as `Subscription.contact`).
    fn add(&mut self, parent: &str, name: &str) {
        let note = match parent.split_once('.') {
            Some((_, rest)) => format!("{rest}.{name}"),
            None => name.to_owned(),
        };
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }

    /// Records what a primitive `name` of `parent` carries besides its value.
    fn ext(&mut self, parent: &str, name: &str, ext: ElementExt) {
        if ext.id {
            self.add(parent, &format!("{name}.id"));
        }
        if ext.extension {
            self.add(parent, &format!("{name}.extension"));
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.0.sort_unstable();
        self.0
    }
}

/// Stores `value` in the 0..1 field `slot` at `path`.
fn set(slot: &mut String, value: String, path: Path<'_>) -> Result<(), FhirError> {
    if !slot.is_empty() {
        return Err(repeated(path));
    }
    *slot = value;
    Ok(())
}

fn repeated(path: Path<'_>) -> FhirError {
    FhirError::Invalid(format!("{path} is repeated"))
}

/// Marks a 0..1 element NEMS does not mirror as seen.
fn once(seen: &mut bool, path: Path<'_>) -> Result<(), FhirError> {
    if std::mem::replace(seen, true) {
        return Err(repeated(path));
    }
    Ok(())
}

// === XML reader ===

/// The XML reader and the notes taken while reading.
struct XmlCx<'a> {
    r: XmlReader<'a>,
    notes: Notes,
}

impl<'a> XmlCx<'a> {
    /// Reads primitive child `el` of `parent` and notes its `id` and `extension`.
    fn prim(&mut self, el: &Element<'a>, parent: &str) -> Result<String, FhirError> {
        let (value, ext) = self.r.primitive(el, Path(parent, el.name()))?;
        self.notes.ext(parent, el.name(), ext);
        Ok(value)
    }

    /// Reads 0..1 primitive child `el` of `parent` into `slot`.
    fn prim_once(
        &mut self,
        slot: &mut String,
        el: &Element<'a>,
        parent: &str,
    ) -> Result<(), FhirError> {
        let value = self.prim(el, parent)?;
        set(slot, value, Path(parent, el.name()))
    }

    /// Reads repeated primitive child `el` of `parent` onto `list`.
    fn prim_push(
        &mut self,
        list: &mut Vec<String>,
        el: &Element<'a>,
        parent: &str,
    ) -> Result<(), FhirError> {
        list.push(self.prim(el, parent)?);
        Ok(())
    }

    /// Reads primitive child `el` of `parent` that NEMS does not mirror and notes it.
    fn skip_prim(&mut self, el: &Element<'a>, parent: &str) -> Result<(), FhirError> {
        self.r.primitive(el, Path(parent, el.name()))?;
        self.notes.add(parent, el.name());
        Ok(())
    }

    /// Skips child `el` of `parent` (an element NEMS does not mirror) and notes it.
    fn skip(&mut self, el: &Element<'a>, parent: &str) -> Result<(), FhirError> {
        self.r.skip(el)?;
        self.notes.add(parent, el.name());
        Ok(())
    }

    /// Calls `f` for each child of complex element `el` at `path`, which must have one.
    fn children(
        &mut self,
        el: &Element<'a>,
        path: &str,
        mut f: impl FnMut(&mut Self, &Element<'a>, Path<'_>) -> Result<(), FhirError>,
    ) -> Result<(), FhirError> {
        if self.r.complex_id(el, Path(path, ""))? {
            self.notes.add(path, "id");
        }
        let mut any = false;
        while let Some(child) = self.r.next_child(el, Path(path, ""))? {
            any = true;
            f(self, &child, Path(path, child.name()))?;
        }
        if !any {
            return Err(FhirError::Invalid(format!("{path} has no content")));
        }
        Ok(())
    }
}

fn parse_xml(body: &[u8]) -> Result<(pb::SubscriptionResource, Notes), FhirError> {
    let mut r = XmlReader::new(body)?;
    let root = r.root_named(ROOT)?;
    let mut cx = XmlCx {
        r,
        notes: Notes::default(),
    };
    let mut sub = pb::SubscriptionResource::default();
    let (mut implicit_rules, mut language, mut text) = (false, false, false);
    cx.children(&root, ROOT, |cx, el, path| {
        match el.name() {
            "id" => cx.prim_once(&mut sub.id, el, ROOT)?,
            "meta" if sub.meta.is_some() => return Err(repeated(path)),
            "meta" => sub.meta = Some(xml_meta(cx, el)?),
            "implicitRules" => {
                once(&mut implicit_rules, path).and_then(|()| cx.skip_prim(el, ROOT))?
            }
            "language" => once(&mut language, path).and_then(|()| cx.skip_prim(el, ROOT))?,
            "text" => once(&mut text, path).and_then(|()| cx.skip(el, ROOT))?,
            "contained" | "extension" | "modifierExtension" => cx.skip(el, ROOT)?,
            "status" => cx.prim_once(&mut sub.status, el, ROOT)?,
            "contact" => sub.contact.push(xml_contact(cx, el)?),
            "end" => cx.prim_once(&mut sub.end, el, ROOT)?,
            "reason" => cx.prim_once(&mut sub.reason, el, ROOT)?,
            "criteria" => cx.prim_once(&mut sub.criteria, el, ROOT)?,
            "error" => cx.prim_once(&mut sub.error, el, ROOT)?,
            "channel" if sub.channel.is_some() => return Err(repeated(path)),
            "channel" => sub.channel = Some(xml_channel(cx, el)?),
            "tag" => sub.tag.push(xml_coding(cx, el, TAG)?),
            name => return Err(unknown_element(Path(ROOT, ""), name)),
        }
        Ok(())
    })?;
    cx.r.finish()?;
    Ok((sub, cx.notes))
}

fn xml_meta<'a>(cx: &mut XmlCx<'a>, el: &Element<'a>) -> Result<pb::ResourceMeta, FhirError> {
    let mut meta = pb::ResourceMeta::default();
    cx.children(el, META, |cx, c, _| match c.name() {
        "versionId" => cx.prim_once(&mut meta.version_id, c, META),
        "lastUpdated" => cx.prim_once(&mut meta.last_updated, c, META),
        "profile" => cx.prim_push(&mut meta.profile, c, META),
        "extension" | "security" | "tag" => cx.skip(c, META),
        name => Err(unknown_element(Path(META, ""), name)),
    })?;
    Ok(meta)
}

fn xml_contact<'a>(cx: &mut XmlCx<'a>, el: &Element<'a>) -> Result<pb::ContactPoint, FhirError> {
    let mut contact = pb::ContactPoint::default();
    let (mut rank, mut period) = (false, false);
    cx.children(el, CONTACT, |cx, c, path| match c.name() {
        "system" => cx.prim_once(&mut contact.system, c, CONTACT),
        "value" => cx.prim_once(&mut contact.value, c, CONTACT),
        "use" => cx.prim_once(&mut contact.r#use, c, CONTACT),
        "rank" => once(&mut rank, path).and_then(|()| cx.skip_prim(c, CONTACT)),
        "period" => once(&mut period, path).and_then(|()| cx.skip(c, CONTACT)),
        "extension" => cx.skip(c, CONTACT),
        name => Err(unknown_element(Path(CONTACT, ""), name)),
    })?;
    Ok(contact)
}

fn xml_channel<'a>(
    cx: &mut XmlCx<'a>,
    el: &Element<'a>,
) -> Result<pb::SubscriptionChannel, FhirError> {
    let mut channel = pb::SubscriptionChannel::default();
    cx.children(el, CHANNEL, |cx, c, _| match c.name() {
        "type" => cx.prim_once(&mut channel.r#type, c, CHANNEL),
        "endpoint" => cx.prim_once(&mut channel.endpoint, c, CHANNEL),
        "payload" => cx.prim_once(&mut channel.payload, c, CHANNEL),
        "header" => cx.prim_push(&mut channel.header, c, CHANNEL),
        "extension" | "modifierExtension" => cx.skip(c, CHANNEL),
        name => Err(unknown_element(Path(CHANNEL, ""), name)),
    })?;
    Ok(channel)
}

fn xml_coding<'a>(
    cx: &mut XmlCx<'a>,
    el: &Element<'a>,
    at: &'static str,
) -> Result<pb::Coding, FhirError> {
    let mut coding = pb::Coding::default();
    cx.children(el, at, |cx, c, path| match c.name() {
        "system" => cx.prim_once(&mut coding.system, c, at),
        "version" => cx.prim_once(&mut coding.version, c, at),
        "code" => cx.prim_once(&mut coding.code, c, at),
        "display" => cx.prim_once(&mut coding.display, c, at),
        "userSelected" => {
            let value = cx.prim(c, at)?;
            if value != "true" && value != "false" {
                return Err(FhirError::Invalid(format!("{path} must be true or false")));
            }
            once(&mut coding.user_selected_present, path)
        }
        "extension" => cx.skip(c, at),
        name => Err(unknown_element(Path(at, ""), name)),
    })?;
    Ok(coding)
}

// === JSON reader ===

#[rustfmt::skip]
const ROOT_FIELDS: &[&str] = &[
    "resourceType", "id", "_id", "meta", "implicitRules", "_implicitRules", "language",
    "_language", "text", "contained", "extension", "modifierExtension", "status", "_status",
    "contact", "end", "_end", "reason", "_reason", "criteria", "_criteria", "error", "_error",
    "channel", "tag",
];
#[rustfmt::skip]
const META_FIELDS: &[&str] = &[
    "id", "extension", "versionId", "_versionId", "lastUpdated", "_lastUpdated", "profile",
    "_profile", "security", "tag",
];
#[rustfmt::skip]
const CONTACT_FIELDS: &[&str] = &[
    "id", "extension", "system", "_system", "value", "_value", "use", "_use", "rank", "_rank",
    "period",
];
#[rustfmt::skip]
const CHANNEL_FIELDS: &[&str] = &[
    "id", "extension", "modifierExtension", "type", "_type", "endpoint", "_endpoint", "payload",
    "_payload", "header", "_header",
];
#[rustfmt::skip]
const CODING_FIELDS: &[&str] = &[
    "id", "extension", "system", "_system", "version", "_version", "code", "_code", "display",
    "_display", "userSelected", "_userSelected",
];

fn parse_json(body: &[u8]) -> Result<(pb::SubscriptionResource, Notes), FhirError> {
    let doc = json::parse(body)?;
    let Value::Object(members) = &doc else {
        return Err(FhirError::Invalid("body must be a json object".into()));
    };
    match members.iter().find(|(k, _)| k == "resourceType") {
        Some((_, Value::String(t))) if t == ROOT => {}
        _ => {
            return Err(FhirError::Invalid(
                "resourceType must be Subscription".into(),
            ));
        }
    }
    if members.len() == 1 {
        return Err(FhirError::Invalid(format!("{ROOT} has no content")));
    }
    let mut sub = pb::SubscriptionResource::default();
    let mut notes = Notes::default();
    for field in json::fields(&doc, ROOT_FIELDS, ROOT)? {
        let (key, v) = field?;
        let path = Path(ROOT, key);
        match key {
            "resourceType" => {}
            "id" => sub.id = json::string(v, path)?,
            "meta" => sub.meta = Some(json_meta(v, &mut notes)?),
            "status" => sub.status = json::string(v, path)?,
            "contact" => {
                for item in json::array(v, path)? {
                    sub.contact.push(json_contact(item, &mut notes)?);
                }
            }
            "end" => sub.end = json::string(v, path)?,
            "reason" => sub.reason = json::string(v, path)?,
            "criteria" => sub.criteria = json::string(v, path)?,
            "error" => sub.error = json::string(v, path)?,
            "channel" => sub.channel = Some(json_channel(v, &mut notes)?),
            "tag" => {
                for item in json::array(v, path)? {
                    sub.tag.push(json_coding(item, TAG, &mut notes)?);
                }
            }
            _ => json_other(key, v, ROOT, &mut notes)?,
        }
    }
    Ok((sub, notes))
}

/// Handles a member NEMS does not mirror, or the `_x` companion of a mirrored primitive.
fn json_other(key: &str, v: &Value<'_>, parent: &str, notes: &mut Notes) -> Result<(), FhirError> {
    let path = Path(parent, key);
    match key {
        "extension" | "modifierExtension" | "contained" | "security" | "tag" => {
            json::array(v, path)?;
        }
        "text" | "period" => json::object(v, path)?,
        "id" => {
            json::string(v, path)?;
        }
        "implicitRules" | "language" | "rank" | "_implicitRules" | "_language" | "_rank" => {}
        _ => {
            // A companion `_x` of a mirrored 0..1 primitive.
            let name = key.trim_start_matches('_');
            notes.ext(parent, name, json::element_ext(v, path)?);
            return Ok(());
        }
    }
    notes.add(parent, key.trim_start_matches('_'));
    Ok(())
}

/// Reads a repeated primitive and its `_x` companion, which must line up.
fn json_list(
    values: Option<&Value<'_>>,
    ext: Option<&Value<'_>>,
    parent: &str,
    name: &str,
    notes: &mut Notes,
) -> Result<Vec<String>, FhirError> {
    let path = Path(parent, name);
    let mut out = Vec::new();
    if let Some(v) = values {
        for item in json::array(v, path)? {
            out.push(json::string(item, path)?);
        }
    }
    if let Some(e) = ext {
        let (len, ext) = json::element_ext_list(e, path)?;
        if len != out.len() {
            return Err(FhirError::Invalid(format!(
                "{path} and its _{name} differ in length"
            )));
        }
        notes.ext(parent, name, ext);
    }
    Ok(out)
}

fn json_meta(v: &Value<'_>, notes: &mut Notes) -> Result<pb::ResourceMeta, FhirError> {
    let mut meta = pb::ResourceMeta::default();
    let (mut profile, mut profile_ext) = (None, None);
    for field in json::fields(v, META_FIELDS, META)? {
        let (key, v) = field?;
        match key {
            "versionId" => meta.version_id = json::string(v, Path(META, key))?,
            "lastUpdated" => meta.last_updated = json::string(v, Path(META, key))?,
            "profile" => profile = Some(v),
            "_profile" => profile_ext = Some(v),
            _ => json_other(key, v, META, notes)?,
        }
    }
    meta.profile = json_list(profile, profile_ext, META, "profile", notes)?;
    Ok(meta)
}

fn json_contact(v: &Value<'_>, notes: &mut Notes) -> Result<pb::ContactPoint, FhirError> {
    let mut contact = pb::ContactPoint::default();
    for field in json::fields(v, CONTACT_FIELDS, CONTACT)? {
        let (key, v) = field?;
        let path = Path(CONTACT, key);
        match key {
            "system" => contact.system = json::string(v, path)?,
            "value" => contact.value = json::string(v, path)?,
            "use" => contact.r#use = json::string(v, path)?,
            _ => json_other(key, v, CONTACT, notes)?,
        }
    }
    Ok(contact)
}

fn json_channel(v: &Value<'_>, notes: &mut Notes) -> Result<pb::SubscriptionChannel, FhirError> {
    let mut channel = pb::SubscriptionChannel::default();
    let (mut header, mut header_ext) = (None, None);
    for field in json::fields(v, CHANNEL_FIELDS, CHANNEL)? {
        let (key, v) = field?;
        let path = Path(CHANNEL, key);
        match key {
            "type" => channel.r#type = json::string(v, path)?,
            "endpoint" => channel.endpoint = json::string(v, path)?,
            "payload" => channel.payload = json::string(v, path)?,
            "header" => header = Some(v),
            "_header" => header_ext = Some(v),
            _ => json_other(key, v, CHANNEL, notes)?,
        }
    }
    channel.header = json_list(header, header_ext, CHANNEL, "header", notes)?;
    Ok(channel)
}

fn json_coding(
    v: &Value<'_>,
    at: &'static str,
    notes: &mut Notes,
) -> Result<pb::Coding, FhirError> {
    let mut coding = pb::Coding::default();
    for field in json::fields(v, CODING_FIELDS, at)? {
        let (key, v) = field?;
        let path = Path(at, key);
        match key {
            "system" => coding.system = json::string(v, path)?,
            "version" => coding.version = json::string(v, path)?,
            "code" => coding.code = json::string(v, path)?,
            "display" => coding.display = json::string(v, path)?,
            "userSelected" => {
                json::boolean(v, path)?;
                coding.user_selected_present = true;
            }
            _ => json_other(key, v, at, notes)?,
        }
    }
    Ok(coding)
}

// === Writer ===

fn write_with<W: ResourceWriter>(mut w: W, s: &pb::SubscriptionResource) -> Vec<u8> {
    w.value("id", &s.id);
    if let Some(meta) = &s.meta {
        w.open("meta");
        w.value("versionId", &meta.version_id);
        w.value("lastUpdated", &meta.last_updated);
        w.values("profile", &meta.profile);
        w.close();
    }
    w.value("status", &s.status);
    w.open_list("contact");
    for contact in &s.contact {
        w.item("contact");
        w.value("system", &contact.system);
        w.value("value", &contact.value);
        w.value("use", &contact.r#use);
        w.close();
    }
    w.close_list();
    w.value("end", &s.end);
    w.value("reason", &s.reason);
    w.value("criteria", &s.criteria);
    w.value("error", &s.error);
    if let Some(channel) = &s.channel {
        w.open("channel");
        w.value("type", &channel.r#type);
        w.value("endpoint", &channel.endpoint);
        w.value("payload", &channel.payload);
        w.values("header", &channel.header);
        w.close();
    }
    w.open_list("tag");
    for tag in &s.tag {
        w.item("tag");
        w.value("system", &tag.system);
        w.value("version", &tag.version);
        w.value("code", &tag.code);
        w.value("display", &tag.display);
        w.close();
    }
    w.close_list();
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_element_path() {
        let cases = [
            (
                Format::Xml,
                "<Subscription xmlns=\"http://hl7.org/fhir\"><foo/></Subscription>",
                "unknown element foo in Subscription",
            ),
            (
                Format::Xml,
                "<Subscription xmlns=\"http://hl7.org/fhir\"><channel><type value=\"a\"/><type value=\"b\"/></channel></Subscription>",
                "Subscription.channel.type is repeated",
            ),
            (
                Format::Xml,
                "<Subscription xmlns=\"http://hl7.org/fhir\"><contact><use/></contact></Subscription>",
                "Subscription.contact.use has no value",
            ),
            (
                Format::Xml,
                "<Subscription xmlns=\"http://hl7.org/fhir\"><reason value=\"\"/></Subscription>",
                "Subscription.reason must not be empty",
            ),
            (
                Format::Json,
                r#"{"resourceType":"Subscription","channel":{"type":1}}"#,
                "Subscription.channel.type must be a string, not a number",
            ),
            (
                Format::Json,
                r#"{"resourceType":"Subscription","meta":{"profile":"p"}}"#,
                "Subscription.meta.profile must be an array, not a string",
            ),
            (
                Format::Json,
                r#"{"resourceType":"Subscription","tag":[{"code":"c","_code":{"ext":1}}]}"#,
                "unknown element ext in Subscription.tag._code",
            ),
        ];
        for (format, body, want) in cases {
            assert_eq!(
                parse(format, body.as_bytes()),
                Err(FhirError::Invalid(want.into())),
                "{body}"
            );
        }
    }

    #[test]
    fn notes_are_relative_sorted_and_unique() {
        let mut notes = Notes::default();
        notes.add(ROOT, "text");
        notes.add(CONTACT, "extension");
        notes.ext(
            CHANNEL,
            "header",
            ElementExt {
                id: true,
                extension: true,
            },
        );
        notes.add(CONTACT, "extension");
        let want = [
            "channel.header.extension",
            "channel.header.id",
            "contact.extension",
            "text",
        ];
        assert_eq!(notes.finish(), want);
    }
}
