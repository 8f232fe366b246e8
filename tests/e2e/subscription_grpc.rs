//! The Subscription API over gRPC: `SubscriptionService` gives the same Spine code and the
//! same diagnostics as HTTP for the same request (the edge adds no rule of its own), what
//! one API creates the other reads, and `OperatorService.ListSubscriptions` lists exactly
//! the expected subscriptions by ODS code, mailbox, NHS number and rule, page by page.

use std::collections::BTreeSet;

use nems_e2e::spine::{self, Caller, OTHER, SUBSCRIBER, pb_caller};
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;
use nems_proto::v1::list_subscriptions_request::Filter;

use crate::subscription_api::{Api, CONTACT_PREFIX, Fmt, NHS, NOT_NHS, Req, Sub, check_outcome};

/// The protobuf form of `sub`, as the edge would translate it.
fn to_pb(sub: &Sub) -> pb::SubscriptionResource {
    let mut r = spine::subscription_pb(&sub.contact_ods, &sub.mailbox, &sub.criteria);
    r.id = sub.id.clone().unwrap_or_default();
    r.status.clone_from(&sub.status);
    r.reason.clone_from(&sub.reason);
    r.end = sub.end.clone().unwrap_or_default();
    if let Some(v) = &sub.version_id {
        r.meta.as_mut().unwrap().version_id.clone_from(v);
    }
    r.channel
        .as_mut()
        .unwrap()
        .r#type
        .clone_from(&sub.channel_type);
    r
}

/// What an HTTP error answer says: (Spine code, diagnostics).
fn http_refusal(r: &nems_e2e::http::HttpResponse, fmt: Fmt) -> (String, String) {
    let v = crate::subscription_api::body_of(r, fmt);
    let issue = &v["issue"];
    let code = issue["details"]["coding"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let status = nems_edge::error::table(code.parse().expect("a Spine code")).0;
    // The whole OperationOutcome is well formed for that row of the table.
    check_outcome(
        r,
        fmt,
        status.as_u16(),
        &code,
        issue["code"].as_str().unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let diagnostics = issue["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (code, diagnostics)
}

/// What a gRPC error says: (Spine code, message).
fn grpc_refusal(status: &tonic::Status) -> (String, String) {
    let code = nems_proto::spine::code_of(status)
        .unwrap_or_else(|| panic!("no Spine code in {status:?}"))
        .as_str()
        .to_string();
    (code, status.message().to_string())
}

async fn grpc_create(
    stack: &TestStack,
    caller: Caller,
    sub: &Sub,
) -> Result<pb::CreateSubscriptionResponse, tonic::Status> {
    stack
        .subscriptions()
        .create_subscription(pb::CreateSubscriptionRequest {
            caller: Some(pb_caller(caller)),
            subscription: Some(to_pb(sub)),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The same creates refused over both APIs with the same code and text.
pub(crate) async fn parity(api: &Api<'_>) {
    let stack = api.stack;
    let existing = Sub::explicit(NHS[0], &["vaccinations-1"]);
    let existing_id = api.create_ok(SUBSCRIBER, Fmt::Xml, &existing).await;
    let by_grpc = Sub::explicit(NHS[1], &["vaccinations-1", "pds-change-of-gp-1"]);
    let grpc_id = grpc_create(stack, SUBSCRIBER, &by_grpc).await.unwrap().id;

    let with = |f: fn(&mut Sub)| {
        let mut s = Sub::explicit(NHS[2], &["vaccinations-1"]);
        f(&mut s);
        s
    };
    let unlinked = Caller {
        asid: SUBSCRIBER.asid,
        ods: "ABC",
    };
    let unknown_asid = Caller {
        asid: "200000000999",
        ods: "RR8",
    };
    let creates: Vec<(&str, Caller, Sub, &str)> = vec![
        (
            "bad NHS number",
            SUBSCRIBER,
            Sub::explicit(NOT_NHS[0], &["vaccinations-1"]),
            "INVALID_NHS_NUMBER",
        ),
        (
            "bad identifier system",
            SUBSCRIBER,
            with(|s| s.criteria = s.criteria.replace("https://fhir.nhs.uk/Id", "urn:x")),
            "INVALID_IDENTIFIER_SYSTEM",
        ),
        (
            "bad criteria",
            SUBSCRIBER,
            Sub::explicit(NHS[2], &["made-up-event-1"]),
            "INVALID_REQUEST_MESSAGE",
        ),
        (
            "generic without Organization.identifier",
            SUBSCRIBER,
            Sub::new(
                "RR8",
                "RR8MBX01",
                "/Bundle?type=message&subscriptionRuleType=GP_GP_GP&MessageHeader.event=pds-change-of-gp-1",
            ),
            "INVALID_REQUEST_MESSAGE",
        ),
        (
            "unknown mailbox",
            SUBSCRIBER,
            with(|s| s.mailbox = "NOMBX99".into()),
            "INVALID_REQUEST_MESSAGE",
        ),
        (
            "duplicate of an HTTP create",
            SUBSCRIBER,
            existing.clone(),
            "DUPLICATE_REJECTED",
        ),
        (
            "duplicate of a gRPC create",
            SUBSCRIBER,
            by_grpc.clone(),
            "DUPLICATE_REJECTED",
        ),
        (
            "status active",
            SUBSCRIBER,
            with(|s| s.status = "active".into()),
            "INVALID_RESOURCE",
        ),
        (
            "client id",
            SUBSCRIBER,
            with(|s| s.id = Some("ea0a485187204b49b978bdcf7102388c".into())),
            "INVALID_ELEMENT",
        ),
        (
            "client versionId",
            SUBSCRIBER,
            with(|s| s.version_id = Some("1".into())),
            "INVALID_ELEMENT",
        ),
        (
            "another organisation's mailbox",
            SUBSCRIBER,
            with(|s| s.mailbox = "ABCMBX01".into()),
            "ACCESS_DENIED",
        ),
        (
            "missing category bag",
            OTHER,
            Sub::new(
                "ABC",
                "ABCMBX01",
                &spine::generic("GP_GP_GP", "A12345", "vaccinations-1", ""),
            ),
            "ACCESS_DENIED",
        ),
        (
            "organisation not linked",
            unlinked,
            with(|_| {}),
            "ACCESS_DENIED",
        ),
        (
            "unknown organisation",
            SUBSCRIBER,
            with(|s| s.contact_ods = "Z99999".into()),
            "ACCESS_DENIED",
        ),
        (
            "unknown ASID",
            unknown_asid,
            with(|_| {}),
            "ASID_CHECK_FAILED",
        ),
    ];
    for (name, caller, sub, expected) in &creates {
        for fmt in Fmt::BOTH {
            let http = api.send(Req::create(*caller, fmt, fmt, sub)).await;
            let http = http_refusal(&http, fmt);
            let grpc = grpc_create(stack, *caller, sub)
                .await
                .expect_err("refused over gRPC");
            let grpc = grpc_refusal(&grpc);
            assert_eq!(http.0, *expected, "{name} over HTTP in {fmt:?}");
            assert_eq!(http, grpc, "{name}: HTTP {fmt:?} and gRPC differ");
        }
    }
    // Duplicates name the existing id over both APIs.
    let dup = grpc_create(stack, SUBSCRIBER, &existing).await.unwrap_err();
    assert!(dup.message().contains(&existing_id), "{dup:?}");
    let dup = api
        .send(Req::create(SUBSCRIBER, Fmt::Json, Fmt::Json, &by_grpc))
        .await;
    assert!(dup.text().contains(&grpc_id), "{}", dup.text());

    // Read and delete of another organisation's, an unknown and a malformed id.
    let unknown = "0123456789abcdef0123456789abcdef";
    for (name, caller, id) in [
        ("another organisation's id", OTHER, existing_id.as_str()),
        (
            "another organisation's gRPC-created id",
            OTHER,
            grpc_id.as_str(),
        ),
        ("an unknown id", SUBSCRIBER, unknown),
    ] {
        for fmt in Fmt::BOTH {
            let http = api.send(Req::read(caller, fmt, id)).await;
            let http = http_refusal(&http, fmt);
            let grpc = stack
                .subscriptions()
                .get_subscription(pb::GetSubscriptionRequest {
                    caller: Some(pb_caller(caller)),
                    id: id.into(),
                })
                .await
                .expect_err("read refused over gRPC");
            assert_eq!(http.0, "NO_RECORD_FOUND", "read of {name}");
            assert_eq!(http, grpc_refusal(&grpc), "read of {name}");

            let http = api.send(Req::delete(caller, fmt, id)).await;
            let http = http_refusal(&http, fmt);
            let grpc = stack
                .subscriptions()
                .delete_subscription(pb::DeleteSubscriptionRequest {
                    caller: Some(pb_caller(caller)),
                    id: id.into(),
                })
                .await
                .expect_err("delete refused over gRPC");
            assert_eq!(http.0, "NO_RECORD_FOUND", "delete of {name}");
            assert_eq!(http, grpc_refusal(&grpc), "delete of {name}");
        }
    }

    // What one API created, the other reads the same, and deletes.
    let over_http = api.read_ok(SUBSCRIBER, Fmt::Json, &grpc_id).await;
    assert_eq!(over_http["id"], grpc_id.as_str());
    assert_eq!(over_http["criteria"], by_grpc.criteria.as_str());
    assert_eq!(over_http["status"], "active");
    let over_grpc = stack
        .subscriptions()
        .get_subscription(pb::GetSubscriptionRequest {
            caller: Some(pb_caller(SUBSCRIBER)),
            id: existing_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(over_grpc.id, existing_id);
    assert_eq!(over_grpc.status, "active");
    assert_eq!(over_grpc.criteria, existing.criteria);
    assert_eq!(over_grpc.contact[0].value, format!("{CONTACT_PREFIX}RR8"));
    let meta = over_grpc.meta.unwrap();
    assert_eq!(meta.version_id, "1");
    assert_eq!(
        meta.profile,
        [crate::subscription_api::EMS_PROFILE.to_string()]
    );
    let http_view = api.read_ok(SUBSCRIBER, Fmt::Xml, &existing_id).await;
    assert_eq!(http_view["meta"]["lastUpdated"], meta.last_updated.as_str());
    stack
        .subscriptions()
        .delete_subscription(pb::DeleteSubscriptionRequest {
            caller: Some(pb_caller(SUBSCRIBER)),
            id: existing_id.clone(),
        })
        .await
        .unwrap();
    let gone = api
        .send(Req::read(SUBSCRIBER, Fmt::Xml, &existing_id))
        .await;
    assert_eq!(http_refusal(&gone, Fmt::Xml).0, "NO_RECORD_FOUND");
    let r = api.send(Req::delete(SUBSCRIBER, Fmt::Xml, &grpc_id)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let gone = stack
        .subscriptions()
        .get_subscription(pb::GetSubscriptionRequest {
            caller: Some(pb_caller(SUBSCRIBER)),
            id: grpc_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_refusal(&gone).0, "NO_RECORD_FOUND");
}

/// Every page of a listing: (records, number of pages).
async fn list(
    stack: &TestStack,
    filter: Option<Filter>,
    page_size: u32,
    include_deleted: bool,
) -> (Vec<pb::SubscriptionRecord>, usize) {
    let mut operator = stack.operator();
    let mut out = Vec::new();
    let mut token = String::new();
    for page in 1..=50 {
        let r = operator
            .list_subscriptions(pb::ListSubscriptionsRequest {
                filter: filter.clone(),
                page_size,
                page_token: token.clone(),
                include_deleted,
            })
            .await
            .unwrap()
            .into_inner();
        if page_size > 0 {
            assert!(
                r.subscriptions.len() <= page_size as usize,
                "page of {} for page size {page_size}",
                r.subscriptions.len()
            );
        }
        out.extend(r.subscriptions);
        if r.next_page_token.is_empty() {
            return (out, page);
        }
        assert_ne!(r.next_page_token, token, "the page token does not advance");
        token = r.next_page_token;
    }
    panic!("more than 50 pages for {filter:?}");
}

fn ids(records: &[pb::SubscriptionRecord]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// `ListSubscriptions` by each filter, whole and a page of one at a time.
pub(crate) async fn operator_listing(api: &Api<'_>) {
    let stack = api.stack;
    let rr8 = |mailbox: &str, criteria: String| Sub::new("RR8", mailbox, &criteria);
    let a = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Xml,
            &rr8("RR8MBX01", spine::explicit(NHS[0], &["vaccinations-1"], "")),
        )
        .await;
    let b = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Json,
            &rr8("RR8MBX02", spine::explicit(NHS[1], &["vaccinations-1"], "")),
        )
        .await;
    let c = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Xml,
            &rr8(
                "RR8MBX01",
                spine::generic("CHO_POSTCODE_CCG", "X2458", "pds-change-of-address-1", ""),
            ),
        )
        .await;
    let d = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Json,
            &rr8(
                "RR8MBX03",
                spine::generic("CHO_POSTCODE_CCG", "Y1234", "pds-change-of-address-1", ""),
            ),
        )
        .await;
    let e = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Xml,
            &rr8(
                "RR8MBX02",
                spine::generic("GP_GP_GP", "A12345", "pds-change-of-gp-1", ""),
            ),
        )
        .await;
    let f = api
        .create_ok(
            OTHER,
            Fmt::Json,
            &Sub::new(
                "ABC",
                "ABCMBX01",
                &spine::explicit(NHS[0], &["vaccinations-1"], ""),
            ),
        )
        .await;
    let g = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Xml,
            &rr8(
                "RR8MBX03",
                spine::explicit(NHS[0], &["pds-death-notification-1"], ""),
            ),
        )
        .await;
    let r = api.send(Req::delete(SUBSCRIBER, Fmt::Xml, &g)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let rule = |rule: pb::RuleType, code: &str| {
        Some(Filter::Rule(pb::RuleFilter {
            rule_type: rule.into(),
            organisation_code: code.into(),
        }))
    };
    let ods = |c: &str| Some(Filter::OdsCode(c.into()));
    let mailbox = |m: &str| Some(Filter::Mailbox(m.into()));
    let nhs = |n: &str| Some(Filter::NhsNumber(n.into()));
    let expectations: Vec<(&str, Option<Filter>, Vec<&String>)> = vec![
        ("everything", None, vec![&a, &b, &c, &d, &e, &f]),
        ("ODS RR8", ods("RR8"), vec![&a, &b, &c, &d, &e]),
        ("ODS rr8", ods("rr8"), vec![&a, &b, &c, &d, &e]),
        ("ODS ABC", ods("ABC"), vec![&f]),
        ("ODS ZZZ", ods("ZZZ"), vec![]),
        ("mailbox RR8MBX01", mailbox("RR8MBX01"), vec![&a, &c]),
        ("mailbox rr8mbx02", mailbox("rr8mbx02"), vec![&b, &e]),
        ("mailbox RR8MBX03", mailbox("RR8MBX03"), vec![&d]),
        ("mailbox ABCMBX01", mailbox("ABCMBX01"), vec![&f]),
        ("NHS number 0", nhs(NHS[0]), vec![&a, &f]),
        ("NHS number 1", nhs(NHS[1]), vec![&b]),
        ("NHS number 2", nhs(NHS[2]), vec![]),
        (
            "rule CHO_POSTCODE_CCG X2458",
            rule(pb::RuleType::ChoPostcodeCcg, "X2458"),
            vec![&c],
        ),
        (
            "rule CHO_POSTCODE_CCG x2458",
            rule(pb::RuleType::ChoPostcodeCcg, "x2458"),
            vec![&c],
        ),
        (
            "rule CHO_POSTCODE_CCG X245 (a prefix of a code)",
            rule(pb::RuleType::ChoPostcodeCcg, "X245"),
            vec![],
        ),
        (
            "rule CHO_POSTCODE_CCG",
            rule(pb::RuleType::ChoPostcodeCcg, ""),
            vec![&c, &d],
        ),
        ("rule GP_GP_GP", rule(pb::RuleType::GpGpGp, ""), vec![&e]),
        (
            "rule COUNTRYCODE",
            rule(pb::RuleType::Countrycode, ""),
            vec![],
        ),
    ];
    for (name, filter, expected) in expectations {
        let expected: BTreeSet<String> = expected.into_iter().cloned().collect();
        let (whole, pages) = list(stack, filter.clone(), 0, false).await;
        assert_eq!(pages, 1, "{name}: one page of the default size");
        let got = ids(&whole);
        assert_eq!(
            got.iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{name}"
        );
        assert_eq!(got.len(), expected.len(), "{name}: listed twice");
        let (paged, pages) = list(stack, filter, 1, false).await;
        assert_eq!(
            ids(&paged),
            got,
            "{name}: paging by one gives the same list"
        );
        assert!(
            pages == expected.len() || pages == expected.len() + 1,
            "{name}: {pages} pages for {} subscriptions",
            expected.len()
        );
    }

    // Deleted subscriptions only when asked for, marked deleted.
    let (with_deleted, _) = list(stack, ods("RR8"), 1, true).await;
    let expected: BTreeSet<String> = [&a, &b, &c, &d, &e, &g].into_iter().cloned().collect();
    assert_eq!(
        ids(&with_deleted).into_iter().collect::<BTreeSet<_>>(),
        expected
    );
    let deleted = with_deleted.iter().find(|r| r.id == g).unwrap();
    assert_eq!(deleted.state(), pb::SubscriptionState::Deleted);

    // A record carries the owner, the mailbox, the parsed criteria and the stored resource.
    let (records, _) = list(stack, nhs(NHS[0]), 0, false).await;
    let rec = records.iter().find(|r| r.id == a).unwrap();
    assert_eq!(rec.owner_asid, SUBSCRIBER.asid);
    assert_eq!(rec.owner_ods_code, "RR8");
    assert_eq!(rec.mailbox, "RR8MBX01");
    assert_eq!(rec.state(), pb::SubscriptionState::Active);
    assert!(rec.created_at.is_some());
    let criteria = rec.criteria.as_ref().unwrap();
    assert_eq!(criteria.kind(), pb::SubscriptionKind::Explicit);
    assert_eq!(criteria.nhs_number, NHS[0]);
    assert_eq!(criteria.event_codes, ["vaccinations-1"]);
    let resource = rec.resource.as_ref().unwrap();
    assert_eq!(resource.id, a);
    assert_eq!(resource.status, "active");
    let rec = records.iter().find(|r| r.id == f).unwrap();
    assert_eq!(
        (rec.owner_asid.as_str(), rec.owner_ods_code.as_str()),
        (OTHER.asid, "ABC")
    );
    let (records, _) = list(stack, rule(pb::RuleType::ChoPostcodeCcg, "Y1234"), 0, false).await;
    let criteria = records[0].criteria.as_ref().unwrap();
    assert_eq!(criteria.kind(), pb::SubscriptionKind::Generic);
    assert_eq!(criteria.rule_type(), pb::RuleType::ChoPostcodeCcg);
    assert_eq!(criteria.organisation_code, "Y1234");
    assert_eq!(records[0].id, d);

    // Filters that cannot be met are refused with a Spine code.
    let mut operator = stack.operator();
    let bad = operator
        .list_subscriptions(pb::ListSubscriptionsRequest {
            filter: nhs("123"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_refusal(&bad).0, "INVALID_NHS_NUMBER");
    let bad = operator
        .list_subscriptions(pb::ListSubscriptionsRequest {
            filter: rule(pb::RuleType::Unspecified, ""),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_refusal(&bad).0, "INVALID_REQUEST_MESSAGE");
}

#[tokio::test]
async fn grpc_gives_the_same_spine_codes_and_text_as_http() {
    let stack = TestStack::start().await;
    parity(&Api::new(&stack)).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn operator_lists_subscriptions_by_filter_and_page() {
    let stack = TestStack::start().await;
    operator_listing(&Api::new(&stack)).await;
    stack.shutdown().await;
}
