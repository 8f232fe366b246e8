//! Event messages authored for the tests: a valid `vaccinations-1` message Bundle for any
//! NHS number, optionally padded with extra Organization entries to a target size.

/// A valid `vaccinations-1` `new` event for `nhs` (which must pass Mod 11), whose routing
/// birth date is `birth_date` (`YYYY-MM-DD`), padded to at least `min_bytes`.
pub fn vaccination(nhs: &str, birth_date: &str, min_bytes: usize) -> String {
    let mut padding = String::new();
    let mut i = 0;
    let base = TEMPLATE.len();
    while base + padding.len() < min_bytes {
        padding.push_str(&format!(
            r#"<entry><fullUrl value="urn:uuid:00000000-0000-4000-8000-{i:012}"/><resource><Organization><id value="00000000-0000-4000-8000-{i:012}"/><identifier><system value="https://fhir.nhs.uk/Id/ods-organization-code"/><value value="Z{i:05}"/></identifier><name value="PADDING ORGANISATION NUMBER {i} FOR SIZE"/><address><line value="1 EXAMPLE STREET"/><city value="LEEDS"/><postalCode value="LS1 4AP"/></address></Organization></resource></entry>"#
        ));
        i += 1;
    }
    TEMPLATE
        .replace("{NHS}", nhs)
        .replace("{BIRTH}", birth_date)
        .replace("<!--PADDING-->", &padding)
}

const TEMPLATE: &str = r#"<Bundle xmlns="http://hl7.org/fhir">
  <id value="6e824ff8-9b0a-11e8-9eb6-529269fb1459"/>
  <type value="message"/>
  <entry>
    <fullUrl value="urn:uuid:85c8a1c5-a8a1-41c9-bb99-20956fa66218"/>
    <resource>
      <MessageHeader>
        <id value="85c8a1c5-a8a1-41c9-bb99-20956fa66218"/>
        <meta>
          <lastUpdated value="2024-03-01T10:00:00+00:00"/>
          <profile value="https://fhir.nhs.uk/STU3/StructureDefinition/Event-MessageHeader-1"/>
        </meta>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1">
          <extension url="nhsNumber">
            <valueIdentifier>
              <system value="https://fhir.nhs.uk/Id/nhs-number"/>
              <value value="{NHS}"/>
            </valueIdentifier>
          </extension>
          <extension url="name">
            <valueHumanName><use value="official"/><family value="TESTER"/><given value="Alex"/></valueHumanName>
          </extension>
          <extension url="birthDateTime">
            <valueDateTime value="{BIRTH}"/>
          </extension>
        </extension>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1">
          <valueCodeableConcept>
            <coding>
              <system value="https://fhir.nhs.uk/STU3/CodeSystem/MessageEventType-1"/>
              <code value="new"/>
              <display value="New event message"/>
            </coding>
          </valueCodeableConcept>
        </extension>
        <event>
          <system value="https://fhir.nhs.uk/STU3/CodeSystem/EventType-1"/>
          <code value="vaccinations-1"/>
          <display value="Vaccinations"/>
        </event>
        <timestamp value="2024-03-01T10:00:01+00:00"/>
        <source>
          <contact><system value="phone"/><value value="0113 000 0000"/></contact>
          <endpoint value="urn:nhs:addressing:asid:200000000111"/>
        </source>
        <responsible>
          <reference value="urn:uuid:3ff6d789-af64-4d9c-aa1d-0087d29e9e1c"/>
        </responsible>
        <focus>
          <reference value="urn:uuid:076db265-8799-4dda-9418-e2a4d6d1c0d0"/>
        </focus>
      </MessageHeader>
    </resource>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:076db265-8799-4dda-9418-e2a4d6d1c0d0"/>
    <resource>
      <Immunization>
        <id value="076db265-8799-4dda-9418-e2a4d6d1c0d0"/>
        <identifier><system value="https://tests.example/identifiers"/><value value="imm-1"/></identifier>
        <status value="completed"/>
        <notGiven value="false"/>
        <vaccineCode><coding><system value="http://snomed.info/sct"/><code value="34925411000001109"/><display value="MMR vaccine"/></coding></vaccineCode>
        <patient><reference value="urn:uuid:5d5845f3-398f-474b-af59-14882fc7b0ca"/></patient>
        <date value="2024-03-01T09:30:00+00:00"/>
        <primarySource value="true"/>
      </Immunization>
    </resource>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:3ff6d789-af64-4d9c-aa1d-0087d29e9e1c"/>
    <resource>
      <Organization>
        <id value="3ff6d789-af64-4d9c-aa1d-0087d29e9e1c"/>
        <identifier><system value="https://fhir.nhs.uk/Id/ods-organization-code"/><value value="RR8"/></identifier>
        <name value="EXAMPLE CHILD HEALTH"/>
      </Organization>
    </resource>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:5d5845f3-398f-474b-af59-14882fc7b0ca"/>
    <resource>
      <Patient>
        <id value="5d5845f3-398f-474b-af59-14882fc7b0ca"/>
        <identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="{NHS}"/></identifier>
        <name><use value="official"/><family value="TESTER"/><given value="Alex"/></name>
        <birthDate value="{BIRTH}"/>
      </Patient>
    </resource>
  </entry>
  <!--PADDING-->
</Bundle>
"#;

/// The `n`-th valid NHS number of a deterministic sequence (skipping numbers whose check
/// digit would be 10), for spreading subscriptions and events over many patients.
pub fn nhs_number(n: u64) -> String {
    let mut candidate = 900_000_000 + n * 7;
    loop {
        let digits = format!("{candidate:09}");
        let sum: u32 = digits
            .bytes()
            .zip((2..=10).rev())
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => {
                candidate += 1;
                continue;
            }
            c => c,
        };
        return format!("{digits}{check}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_numbers_are_valid_and_distinct() {
        let a: Vec<String> = (0..1000).map(super::nhs_number).collect();
        assert!(a.iter().all(|n| nems_proto::ids::nhs_number_is_valid(n)));
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn events_parse_and_pad() {
        let small = super::vaccination(&super::nhs_number(1), "2020-01-01", 0);
        let big = super::vaccination(&super::nhs_number(1), "2020-01-01", 10_000);
        assert!(big.len() >= 10_000 && big.len() < 11_000, "{}", big.len());
        for xml in [small, big] {
            let m = nems_edge::translate::bundle::extract(xml.as_bytes()).unwrap();
            assert_eq!(m.header.unwrap().event[0].code, "vaccinations-1");
        }
    }
}
