//! Several cores behind one edge and one adapter (`core_url` a comma-separated list): when
//! the core in use does not answer, the edge and the adapter move to the next. Here the
//! first core named is not running at all (nothing listens on its port), so every call
//! must find the second: subscriptions are created, read and deleted and an event is
//! published through the edge, and the adapter streams the deliveries and reports them.

use nems_e2e::spine::SUBSCRIBER;
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

use crate::publish_common::{VACC_NHS, assert_accepted, publish, vaccination, wait_for_deliveries};
use crate::subscription_api::{Api, Fmt, Req, Sub, create_read_delete};

/// A core URL nothing answers on (port 1 is never served on loopback here).
const DEAD_CORE: &str = "http://127.0.0.1:1";

#[tokio::test]
async fn the_edge_and_the_adapter_move_past_a_core_that_does_not_answer() {
    let stack = TestStack::builder()
        .edge(|c| c.core_url = format!("{DEAD_CORE},{}", c.core_url))
        .adapter(|c| c.core_url = format!("{DEAD_CORE},{}", c.core_url))
        .start()
        .await;
    let api = Api::new(&stack);
    create_read_delete(&api).await;

    let sub = Sub::explicit(VACC_NHS, &["vaccinations-1"]);
    let created = api
        .send(Req::create(SUBSCRIBER, Fmt::Json, Fmt::Json, &sub))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let published = publish(&stack, SUBSCRIBER, "Vaccinations", vaccination()).await;
    assert_accepted(&published, "publish through the second core");
    let delivered = wait_for_deliveries(&stack, 1).await;
    assert_eq!(delivered[0].mailbox, "RR8MBX01");

    // The adapter's report reached core: the ledger says delivered.
    let event_id = delivered[0]
        .local_id
        .split('-')
        .next()
        .unwrap_or_default()
        .to_string();
    let operator = stack.operator();
    let event = nems_e2e::eventually::eventually(
        "the delivery to be recorded as delivered",
        std::time::Duration::from_secs(15),
        || {
            let mut operator = operator.clone();
            let event_id = event_id.clone();
            async move {
                let e = operator
                    .get_event(pb::GetEventRequest { event_id })
                    .await
                    .ok()?
                    .into_inner();
                (e.deliveries.first()?.state() == pb::DeliveryState::Delivered).then_some(e)
            }
        },
    )
    .await;
    assert_eq!(event.deliveries.len(), 1);
    stack.shutdown().await;
}
