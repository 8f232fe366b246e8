//! Shared by the `publish_*` modules: the test's own event fixtures and their edits,
//! publishing over HTTP, refusal cases, subscriptions, and reading deliveries and events
//! from the folder sink and the ledger. Holds no tests itself.

use std::path::PathBuf;
use std::time::Duration;

use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpResponse;
use nems_e2e::outbox::{self, FolderDelivery};
use nems_e2e::spine::{self, Caller, Op};
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

use crate::publish_outcome::assert_refused;

/// The publish endpoint, with its literal `$`.
pub(crate) const PUBLISH_PATH: &str = "/STU3/Events/1/$process-message";
/// The XML media type publishers send.
pub(crate) const FHIR_XML: &str = "application/fhir+xml";
/// The routing NHS number of `vaccinations-1-new.xml`.
pub(crate) const VACC_NHS: &str = "9434765919";
/// The routing birth date of `vaccinations-1-new.xml` (also the Patient's `birthDate`).
pub(crate) const VACC_BIRTH: &str = "2016-05-20";
/// The routing NHS number of `newborn-hearing-1-new.xml`.
pub(crate) const HEARING_NHS: &str = "9990000018";
/// The routing NHS number of `pds-record-change-1-new.xml`.
pub(crate) const RECORD_NHS: &str = "9990000026";
/// How long asynchronous effects (deliveries, ledger updates) may take.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// Reads one of this crate's own event fixtures (`e2e/fixtures/events/<name>`).
pub(crate) fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("e2e/fixtures/events")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`, failing when `from` is absent (so that a fixture
/// edit that stops matching cannot silently leave the message valid).
pub(crate) fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture has no `{from}` to replace");
    text.replace(from, to)
}

/// `text` with its one `from` replaced by `to`.
pub(crate) fn edit_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
    text.replacen(from, to, 1)
}

/// The valid vaccinations fixture (RR8 publishes it under `Vaccinations`).
pub(crate) fn vaccination() -> String {
    fixture("vaccinations-1-new.xml")
}

/// The vaccinations fixture for another patient (NHS number and birth date replaced in
/// the routing demographics and the Patient).
pub(crate) fn vaccination_for(nhs: &str, birth_date: &str) -> String {
    let text = edit(&fixture("vaccinations-1-new.xml"), VACC_NHS, nhs);
    edit(&text, VACC_BIRTH, birth_date)
}

/// Publishes `body` as `caller` with `InteractionID` `…:<interaction>.Write`.
pub(crate) async fn publish(
    stack: &TestStack,
    caller: Caller,
    interaction: &'static str,
    body: impl Into<bytes::Bytes>,
) -> HttpResponse {
    let headers = spine::with_media(caller, Op::Publish(interaction), FHIR_XML, None);
    stack.http.post(PUBLISH_PATH, &headers, body).await
}

/// Asserts a `202 Accepted` with an empty body.
pub(crate) fn assert_accepted(response: &HttpResponse, what: &str) {
    assert_eq!(
        (response.status, response.text()),
        (202, String::new()),
        "{what}: expected 202 with an empty body"
    );
}

// === Refusal cases ===

/// One broken message and how it must be refused.
pub(crate) struct Case {
    /// Names the case in failure messages.
    pub(crate) what: &'static str,
    pub(crate) caller: Caller,
    /// The event code of the `InteractionID`.
    pub(crate) interaction: &'static str,
    pub(crate) body: String,
    pub(crate) status: u16,
    /// The Spine code.
    pub(crate) code: &'static str,
    /// Words the diagnostics must contain.
    pub(crate) mentions: &'static [&'static str],
}

/// Publishes every case and checks its refusal; then checks nothing was accepted.
pub(crate) async fn refuse_all(stack: &TestStack, cases: Vec<Case>) {
    let before = events_accepted(stack).await;
    for case in cases {
        let response = publish(stack, case.caller, case.interaction, case.body).await;
        let text = response.text();
        assert_eq!(response.status, case.status, "{}: {text}", case.what);
        assert!(text.contains(case.code), "{}: {text}", case.what);
        assert_refused(&response, case.status, case.code, case.mentions);
    }
    assert_eq!(
        events_accepted(stack).await,
        before,
        "refusals accept nothing"
    );
}

/// A refusal case for the vaccinations fixture published by RR8.
pub(crate) fn vacc(
    what: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    mentions: &'static [&'static str],
) -> Case {
    Case {
        what,
        caller: spine::SUBSCRIBER,
        interaction: "Vaccinations",
        body,
        status,
        code,
        mentions,
    }
}

// === Subscriptions ===

/// Creates a subscription over HTTP and returns its id.
pub(crate) async fn subscribe(
    stack: &TestStack,
    caller: Caller,
    mailbox: &str,
    criteria: &str,
) -> String {
    let headers = spine::with_media(caller, Op::Create, FHIR_XML, None);
    let body = spine::subscription_xml(caller.ods, mailbox, criteria);
    let response = stack.http.post("/STU3/Subscription", &headers, body).await;
    assert_eq!(
        response.status,
        201,
        "create {criteria}: {}",
        response.text()
    );
    let location = response.header("location").expect("Location");
    let (_, id) = location
        .rsplit_once("/STU3/Subscription/")
        .expect("Location names the subscription");
    id.to_string()
}

/// Deletes a subscription over HTTP.
pub(crate) async fn unsubscribe(stack: &TestStack, caller: Caller, id: &str) {
    let headers = spine::headers(caller, Op::Delete);
    let response = stack
        .http
        .delete(&format!("/STU3/Subscription/{id}"), &headers)
        .await;
    assert_eq!(response.status, 200, "delete {id}: {}", response.text());
}

// === Deliveries and the ledger ===

/// Waits until the folder sink holds exactly `count` deliveries and returns them.
pub(crate) async fn wait_for_deliveries(stack: &TestStack, count: usize) -> Vec<FolderDelivery> {
    eventually(
        &format!("{count} deliveries in the folder sink"),
        WAIT,
        || async {
            let found = outbox::read(&stack.outbox);
            assert!(
                found.len() <= count,
                "more deliveries than expected: {found:#?}"
            );
            (found.len() == count).then_some(found)
        },
    )
    .await
}

/// Every ledger row (all pages) of one event.
pub(crate) async fn ledger(stack: &TestStack, event_id: &str) -> Vec<pb::DeliveryRecord> {
    let mut operator = stack.operator();
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = operator
            .list_deliveries(pb::ListDeliveriesRequest {
                event_id: event_id.into(),
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list deliveries")
            .into_inner();
        rows.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return rows;
        }
        page_token = page.next_page_token;
    }
}

/// Reads one event from the ledger.
pub(crate) async fn get_event(stack: &TestStack, event_id: &str) -> pb::GetEventResponse {
    stack
        .operator()
        .get_event(pb::GetEventRequest {
            event_id: event_id.into(),
        })
        .await
        .expect("get event")
        .into_inner()
}

/// Waits until every delivery of `event_id` is delivered and the payload released.
pub(crate) async fn wait_settled(stack: &TestStack, event_id: &str) -> pb::GetEventResponse {
    eventually(
        &format!("every delivery of event {event_id} to be delivered"),
        WAIT,
        || async {
            let event = get_event(stack, event_id).await;
            let done = event
                .deliveries
                .iter()
                .all(|d| d.state() == pb::DeliveryState::Delivered);
            (done && !event.event.as_ref()?.payload_held).then_some(event)
        },
    )
    .await
}

/// The event id in a delivery's `Mex-LocalID` (`<event id>-<index>`).
pub(crate) fn event_of(delivery: &FolderDelivery) -> String {
    delivery
        .local_id
        .rsplit_once('-')
        .map(|(event, _)| event.to_string())
        .unwrap_or_else(|| panic!("local id without an event: {}", delivery.local_id))
}

/// The id of the event a `202` answer accepted: the audit trail links the request id the
/// edge answered with to the event id. Read without waiting: the audit row is committed with
/// the event, before the answer.
pub(crate) async fn accepted_event_id(stack: &TestStack, response: &HttpResponse) -> String {
    let request_id = response
        .header("x-request-id")
        .expect("the edge answers with its request id");
    let mut operator = stack.operator();
    let mut page_token = String::new();
    loop {
        let page = operator
            .list_audit(pb::ListAuditRequest {
                action: "publish".into(),
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list audit")
            .into_inner();
        if let Some(record) = page
            .records
            .iter()
            .find(|r| r.request_id == request_id && r.outcome == "ok")
        {
            return record.resource_id.clone();
        }
        assert!(
            !page.next_page_token.is_empty(),
            "no accepted publish is audited for request {request_id}"
        );
        page_token = page.next_page_token;
    }
}

/// Events accepted since the store was created.
pub(crate) async fn events_accepted(stack: &TestStack) -> u64 {
    stack
        .operator()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .events_accepted
}

/// Waits until no delivery of any mailbox is queued or in flight: every delivery made so
/// far is settled in the ledger (and the adapter has nothing left to report at shutdown).
pub(crate) async fn wait_quiet(stack: &TestStack) {
    eventually("every delivery to be settled", WAIT, || async {
        let stats = stack
            .operator()
            .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
            .await
            .ok()?
            .into_inner();
        stats
            .mailboxes
            .iter()
            .all(|m| m.queued == 0 && m.in_flight == 0)
            .then_some(())
    })
    .await;
}
