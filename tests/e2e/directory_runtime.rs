//! Run-time changes to the Spine directory (decisions.md §13: "changed over gRPC") take
//! effect at once, without a restart: an ASID registered with `PutSystem` and a mailbox
//! registered with `PutMailbox` may subscribe over HTTP and publish, and the published event
//! reaches the new mailbox; after `DeleteMailbox` new subscriptions to it are refused
//! (`400 INVALID_REQUEST_MESSAGE`, as for any unknown mailbox); after `DeleteSystem` every
//! request of the ASID is refused (`403 ASID_CHECK_FAILED`, as for any unknown ASID).

use nems_e2e::spine::{self, Caller};
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

use crate::publish_common::{VACC_NHS, assert_accepted, publish, vaccination, wait_for_deliveries};
use crate::publish_outcome::assert_refused;
use crate::subscription_api::{Api, Fmt, NHS, Req, Sub, outcome};

/// The system added at run time; not in the test directory.
const NEWCOMER: Caller = Caller {
    asid: "200000000555",
    ods: "Y05555",
};
/// Its mailbox, added at run time.
const MAILBOX: &str = "Y05555MBX01";

fn newcomer() -> pb::SpineSystem {
    pb::SpineSystem {
        asid: NEWCOMER.asid.into(),
        ods_codes: vec![NEWCOMER.ods.into()],
        category_bags: vec![
            "NEMS_SUBS_TYPE:EXPLICIT".into(),
            "NEMS_EVENT_ID:VACCINATIONS_1".into(),
        ],
        publish_message_sets: vec!["Vaccinations".into()],
        description: "added at run time".into(),
        ..Default::default()
    }
}

fn vaccinations_of(nhs: &str) -> Sub {
    Sub::new(
        NEWCOMER.ods,
        MAILBOX,
        &spine::explicit(nhs, &["vaccinations-1"], ""),
    )
}

#[tokio::test]
async fn directory_changes_take_effect_without_a_restart() {
    let stack = TestStack::start().await;
    let api = Api::new(&stack);
    let mut directory = stack.directory();

    // Not registered yet: the ASID is unknown.
    let r = api
        .send(Req::create(
            NEWCOMER,
            Fmt::Json,
            Fmt::Json,
            &vaccinations_of(VACC_NHS),
        ))
        .await;
    let text = outcome(&r, Fmt::Json, 403, "ASID_CHECK_FAILED", "forbidden");
    assert!(text.contains("not registered"), "{text}");

    let put = directory
        .put_system(pb::PutSystemRequest {
            system: Some(newcomer()),
        })
        .await
        .expect("put system")
        .into_inner();
    assert!(!put.replaced, "a new entry");

    // The system is known now, its mailbox not yet.
    let r = api
        .send(Req::create(
            NEWCOMER,
            Fmt::Xml,
            Fmt::Xml,
            &vaccinations_of(VACC_NHS),
        ))
        .await;
    let text = outcome(&r, Fmt::Xml, 400, "INVALID_REQUEST_MESSAGE", "value");
    assert!(text.contains("not a registered MESH mailbox"), "{text}");

    let put = directory
        .put_mailbox(pb::PutMailboxRequest {
            mailbox: Some(pb::MeshMailbox {
                mailbox_id: MAILBOX.into(),
                ods_code: NEWCOMER.ods.into(),
                description: "added at run time".into(),
            }),
        })
        .await
        .expect("put mailbox")
        .into_inner();
    assert!(!put.replaced, "a new entry");

    // Both registered: the ASID subscribes and publishes, and the event reaches the mailbox.
    let id = api
        .create_ok(NEWCOMER, Fmt::Xml, &vaccinations_of(VACC_NHS))
        .await;
    let read = api.read_ok(NEWCOMER, Fmt::Json, &id).await;
    assert_eq!(read["channel"]["endpoint"], MAILBOX, "{read}");
    let response = publish(&stack, NEWCOMER, "Vaccinations", vaccination()).await;
    assert_accepted(&response, "vaccinations from the new ASID");
    let delivered = wait_for_deliveries(&stack, 1).await;
    assert_eq!(delivered[0].mailbox, MAILBOX);
    assert_eq!(delivered[0].payload, vaccination().as_bytes());

    // Without its mailbox, the ASID may not create another subscription to it.
    let deleted = directory
        .delete_mailbox(pb::DeleteMailboxRequest {
            mailbox_id: MAILBOX.into(),
        })
        .await
        .expect("delete mailbox")
        .into_inner();
    assert!(deleted.deleted);
    let r = api
        .send(Req::create(
            NEWCOMER,
            Fmt::Json,
            Fmt::Json,
            &vaccinations_of(NHS[1]),
        ))
        .await;
    let text = outcome(&r, Fmt::Json, 400, "INVALID_REQUEST_MESSAGE", "value");
    assert!(text.contains("not a registered MESH mailbox"), "{text}");

    // Without its system entry, every request of the ASID is refused.
    let deleted = directory
        .delete_system(pb::DeleteSystemRequest {
            asid: NEWCOMER.asid.into(),
        })
        .await
        .expect("delete system")
        .into_inner();
    assert!(deleted.deleted);
    let r = api.send(Req::read(NEWCOMER, Fmt::Json, &id)).await;
    let text = outcome(&r, Fmt::Json, 403, "ASID_CHECK_FAILED", "forbidden");
    assert!(text.contains("not registered"), "{text}");
    let r = api.send(Req::delete(NEWCOMER, Fmt::Xml, &id)).await;
    outcome(&r, Fmt::Xml, 403, "ASID_CHECK_FAILED", "forbidden");
    let response = publish(&stack, NEWCOMER, "Vaccinations", vaccination()).await;
    assert_refused(&response, 403, "ASID_CHECK_FAILED", &["not registered"]);
    let gone = directory
        .get_system(pb::GetSystemRequest {
            asid: NEWCOMER.asid.into(),
        })
        .await
        .expect_err("the system entry is gone");
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    stack.shutdown().await;
}
