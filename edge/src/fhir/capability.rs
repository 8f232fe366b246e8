//! The CapabilityStatement served at `GET /STU3/metadata`.

use super::Format;
use super::common::ResourceWriter;
use super::json::JsonWriter;
use super::xml::XmlWriter;

/// The profile of the Subscription resources the service accepts.
pub const SUBSCRIPTION_PROFILE: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1";

/// The OperationDefinition of `$process-message`, used to publish events.
pub const PROCESS_MESSAGE: &str =
    "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message";

/// The FHIR version the service speaks.
pub const FHIR_VERSION: &str = "3.0.1";

const DESCRIPTION: &str = "NEMS: National Events Management Service FHIR STU3 API";
const FORMATS: [&str; 2] = ["application/fhir+xml", "application/fhir+json"];
const INTERACTIONS: [&str; 3] = ["create", "read", "delete"];

/// What the CapabilityStatement describes about this deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityInfo {
    /// The public base URL, for example `https://nems.example.nhs.uk` (without `/STU3`).
    pub base_url: String,
    /// Software version.
    pub version: String,
    /// `date` (FHIR dateTime) the statement is dated.
    pub date: String,
}

/// Writes the CapabilityStatement in `format`.
pub fn write(format: Format, info: &CapabilityInfo) -> Vec<u8> {
    match format {
        Format::Xml => write_with(XmlWriter::start(RESOURCE_TYPE), info),
        Format::Json => write_with(JsonWriter::start(RESOURCE_TYPE), info),
    }
}

const RESOURCE_TYPE: &str = "CapabilityStatement";

fn write_with<W: ResourceWriter>(mut w: W, info: &CapabilityInfo) -> Vec<u8> {
    w.value("status", "active");
    w.value("date", &info.date);
    w.value("publisher", "nems");
    w.value("kind", "instance");
    w.open("software");
    w.value("name", "nems");
    w.value("version", &info.version);
    w.close();
    w.open("implementation");
    w.value("description", DESCRIPTION);
    w.value(
        "url",
        &format!("{}/STU3", info.base_url.trim_end_matches('/')),
    );
    w.close();
    w.value("fhirVersion", FHIR_VERSION);
    w.value("acceptUnknown", "no");
    w.values("format", &FORMATS.map(str::to_owned));
    w.open_list("rest");
    w.item("rest");
    w.value("mode", "server");
    w.open_list("resource");
    w.item("resource");
    w.value("type", "Subscription");
    w.open("profile");
    w.value("reference", SUBSCRIPTION_PROFILE);
    w.close();
    w.open_list("interaction");
    for code in INTERACTIONS {
        w.item("interaction");
        w.value("code", code);
        w.close();
    }
    w.close_list();
    w.close();
    w.close_list();
    w.open_list("operation");
    w.item("operation");
    w.value("name", "process-message");
    w.open("definition");
    w.value("reference", PROCESS_MESSAGE);
    w.close();
    w.close();
    w.close_list();
    w.close();
    w.close_list();
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CapabilityInfo {
        CapabilityInfo {
            base_url: "https://nems.example.nhs.uk/".into(),
            version: "0.1.0".into(),
            date: "2026-01-02T03:04:05Z".into(),
        }
    }

    #[test]
    fn json_describes_the_service() {
        let got: serde_json::Value = serde_json::from_slice(&write(Format::Json, &info())).unwrap();
        let want = serde_json::json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-02T03:04:05Z",
            "publisher": "nems",
            "kind": "instance",
            "software": { "name": "nems", "version": "0.1.0" },
            "implementation": { "description": DESCRIPTION, "url": "https://nems.example.nhs.uk/STU3" },
            "fhirVersion": "3.0.1",
            "acceptUnknown": "no",
            "format": ["application/fhir+xml", "application/fhir+json"],
            "rest": [{
                "mode": "server",
                "resource": [{
                    "type": "Subscription",
                    "profile": { "reference": SUBSCRIPTION_PROFILE },
                    "interaction": [{ "code": "create" }, { "code": "read" }, { "code": "delete" }]
                }],
                "operation": [{ "name": "process-message", "definition": { "reference": PROCESS_MESSAGE } }]
            }]
        });
        assert_eq!(got, want);
    }

    #[test]
    fn xml_has_the_same_content_in_schema_order() {
        let xml = String::from_utf8(write(Format::Xml, &info())).unwrap();
        let order = [
            "<status ",
            "<date ",
            "<publisher ",
            "<kind ",
            "<software>",
            "<implementation>",
            "<fhirVersion ",
            "<acceptUnknown ",
            "<format ",
            "<rest>",
            "<mode ",
            "<resource>",
            "<type ",
            "<profile>",
            "<interaction>",
            "<operation>",
            "<definition>",
        ];
        let mut at = 0;
        for tag in order {
            let found = xml[at..]
                .find(tag)
                .unwrap_or_else(|| panic!("{tag} after {at}"));
            at += found;
        }
        assert!(xml.contains(r#"<url value="https://nems.example.nhs.uk/STU3"/>"#));
    }
}
