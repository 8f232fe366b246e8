//! Shared helpers of the `delivery_*` modules (no tests here): a stack delivering to the MESH
//! fake, a Spine directory with extra recipient mailboxes, a small valid vaccinations event,
//! subscribing and publishing through the edge, injecting deliveries, and ledger queries.

use std::time::Duration;

use nems_e2e::eventually::eventually;
use nems_e2e::mesh_fake::MeshFake;
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_e2e::stack::{Sink, TEST_DIRECTORY, TestStack, TestStackBuilder};
use nems_proto::v1 as pb;

/// The service's own mailbox at the fake.
pub(crate) const SERVICE: &str = "NEMSSVC01";
/// Its password at the fake.
pub(crate) const PASSWORD: &str = "service-password";
/// The NHS number the test events are about.
pub(crate) const NHS_NUMBER: &str = "9912003888";
/// How long a test waits for an asynchronous effect that should take well under a second.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// Returns [`TEST_DIRECTORY`] plus a `[[mailbox]]` (owned by RR8, the subscriber) per id.
pub(crate) fn directory_with(mailboxes: &[&str]) -> String {
    let mut directory = TEST_DIRECTORY.to_owned();
    for id in mailboxes {
        directory.push_str(&format!(
            "\n[[mailbox]]\nid = \"{id}\"\nods_code = \"RR8\"\n"
        ));
    }
    directory
}

/// Starts a fake with the service mailbox registered.
pub(crate) async fn fake() -> MeshFake {
    let fake = MeshFake::start().await;
    fake.add_mailbox(SERVICE, PASSWORD);
    fake
}

/// A builder for a stack delivering to `fake` for the given recipient mailboxes.
pub(crate) fn fake_stack(fake: &MeshFake, mailboxes: &[&str]) -> TestStackBuilder {
    TestStack::builder()
        .directory(&directory_with(mailboxes))
        .sink(Sink::Mesh {
            base_url: fake.base_url(),
            mailbox: SERVICE.into(),
            password: PASSWORD.into(),
        })
}

/// A small valid `vaccinations-1` event about `nhs`; `marker` makes each payload unique.
pub(crate) fn vaccination_event(nhs: &str, marker: &str) -> String {
    format!(
        r#"<Bundle xmlns="http://hl7.org/fhir">
  <id value="{marker}"/>
  <type value="message"/>
  <entry>
    <fullUrl value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000001"/>
    <resource>
      <MessageHeader>
        <id value="5a2d9b3e-0000-4000-8000-000000000001"/>
        <meta><lastUpdated value="2024-05-01T09:00:00+00:00"/></meta>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1">
          <extension url="nhsNumber"><valueIdentifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="{nhs}"/></valueIdentifier></extension>
          <extension url="name"><valueHumanName><family value="TEST"/><given value="Delivery"/></valueHumanName></extension>
          <extension url="birthDateTime"><valueDateTime value="2017-10-02T12:00:00+00:00"/></extension>
        </extension>
        <extension url="https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1">
          <valueCodeableConcept><coding><system value="https://fhir.nhs.uk/STU3/CodeSystem/MessageEventType-1"/><code value="new"/><display value="New event message"/></coding></valueCodeableConcept>
        </extension>
        <event><system value="https://fhir.nhs.uk/STU3/CodeSystem/EventType-1"/><code value="vaccinations-1"/><display value="Vaccinations"/></event>
        <timestamp value="2024-05-01T09:00:00+00:00"/>
        <source><endpoint value="urn:nhs:addressing:asid:200000000111"/></source>
        <responsible><reference value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000003"/></responsible>
        <focus><reference value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000002"/></focus>
      </MessageHeader>
    </resource>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000002"/>
    <resource>
      <Immunization>
        <id value="5a2d9b3e-0000-4000-8000-000000000002"/>
        <status value="completed"/>
        <notGiven value="false"/>
        <vaccineCode><coding><system value="http://snomed.info/sct"/><code value="34925411000001109"/><display value="Priorix"/></coding></vaccineCode>
        <patient><reference value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000004"/></patient>
        <date value="2024-05-01T08:30:00+00:00"/>
        <primarySource value="true"/>
      </Immunization>
    </resource>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000003"/>
    <resource>
      <Organization>
        <id value="5a2d9b3e-0000-4000-8000-000000000003"/>
        <identifier><system value="https://fhir.nhs.uk/Id/ods-organization-code"/><value value="RR8"/></identifier>
        <name value="TEST TRUST"/>
      </Organization>
    </resource>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:5a2d9b3e-0000-4000-8000-000000000004"/>
    <resource>
      <Patient>
        <id value="5a2d9b3e-0000-4000-8000-000000000004"/>
        <identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="{nhs}"/></identifier>
        <name><family value="TEST"/><given value="Delivery"/></name>
        <birthDate value="2017-10-02"/>
      </Patient>
    </resource>
  </entry>
</Bundle>
"#
    )
}

/// Creates a subscription through the edge (as RR8) and returns its id.
pub(crate) async fn subscribe(stack: &TestStack, mailbox: &str, criteria: &str) -> String {
    let headers = spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None);
    let body = spine::subscription_xml("RR8", mailbox, criteria);
    let response = stack.http.post("/STU3/Subscription", &headers, body).await;
    assert_eq!(response.status, 201, "subscribe: {}", response.text());
    let location = response.header("location").expect("Location");
    location
        .rsplit('/')
        .next()
        .expect("id in Location")
        .to_owned()
}

/// Publishes a vaccinations event through the edge (as RR8); expects 202.
pub(crate) async fn publish(stack: &TestStack, payload: &[u8]) {
    let headers = spine::with_media(
        SUBSCRIBER,
        Op::Publish("Vaccinations"),
        "application/fhir+xml",
        None,
    );
    let response = stack
        .http
        .post(
            "/STU3/Events/1/$process-message",
            &headers,
            payload.to_vec(),
        )
        .await;
    assert_eq!(response.status, 202, "publish: {}", response.text());
}

/// Queues one delivery through the operator resend path; returns (event id, delivery id).
pub(crate) async fn inject(stack: &TestStack, mailbox: &str, payload: &[u8]) -> (String, u64) {
    let injected = stack
        .operator()
        .inject_delivery(pb::InjectDeliveryRequest {
            mailbox: mailbox.into(),
            event_code: "vaccinations-1".into(),
            payload: payload.to_vec().into(),
            partner_id: String::new(),
        })
        .await
        .expect("inject delivery")
        .into_inner();
    (injected.event_id, injected.delivery_id)
}

/// Returns every ledger row matching `query` (all pages).
pub(crate) async fn deliveries(
    stack: &TestStack,
    query: pb::ListDeliveriesRequest,
) -> Vec<pb::DeliveryRecord> {
    let mut operator = stack.operator();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = operator
            .list_deliveries(pb::ListDeliveriesRequest {
                page_size: 1000,
                page_token: token,
                ..query.clone()
            })
            .await
            .expect("list deliveries")
            .into_inner();
        out.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Returns the ledger rows of one mailbox.
pub(crate) async fn deliveries_to(stack: &TestStack, mailbox: &str) -> Vec<pb::DeliveryRecord> {
    deliveries(
        stack,
        pb::ListDeliveriesRequest {
            mailbox: mailbox.into(),
            ..Default::default()
        },
    )
    .await
}

/// Returns one delivery's ledger row (found through its event).
pub(crate) async fn delivery(
    stack: &TestStack,
    event_id: &str,
    delivery_id: u64,
) -> pb::DeliveryRecord {
    let event = stack
        .operator()
        .get_event(pb::GetEventRequest {
            event_id: event_id.into(),
        })
        .await
        .expect("get event")
        .into_inner();
    event
        .deliveries
        .into_iter()
        .find(|d| d.delivery_id == delivery_id)
        .expect("the event has the delivery")
}

/// Waits until a delivery reaches `state`; returns its row.
pub(crate) async fn wait_for_state(
    stack: &TestStack,
    event_id: &str,
    delivery_id: u64,
    state: pb::DeliveryState,
) -> pb::DeliveryRecord {
    eventually(
        &format!("delivery {delivery_id} to be {state:?}"),
        WAIT,
        || async move {
            let row = delivery(stack, event_id, delivery_id).await;
            (row.state() == state).then_some(row)
        },
    )
    .await
}

/// Returns one mailbox's counts (all zero when it has none).
pub(crate) async fn stats(stack: &TestStack, mailbox: &str) -> pb::MailboxStats {
    let response = stack
        .operator()
        .get_mailbox_stats(pb::GetMailboxStatsRequest {
            mailbox: mailbox.into(),
        })
        .await
        .expect("mailbox stats")
        .into_inner();
    response
        .mailboxes
        .into_iter()
        .find(|m| m.mailbox == mailbox)
        .unwrap_or_else(|| pb::MailboxStats {
            mailbox: mailbox.into(),
            ..Default::default()
        })
}
