//! Abuse resistance (issue 10 §2): the per-ASID subscription quota, a flood of refused
//! requests costing a handful of aggregated audit rows through a bounded queue, and the
//! rate limit charged to the client the edge verified rather than the ASID it names.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_e2e::spine::{self, Caller, Op, SUBSCRIBER, pb_caller};
use nems_e2e::stack::{Sink, TestStack};
use nems_proto::spine::{SpineCode, code_of};
use nems_proto::v1 as pb;

/// Valid NHS numbers (Modulus 11).
const NHS: [&str; 3] = ["9434765803", "9434765811", "9434765838"];

fn metric(sample: &str) -> f64 {
    nems_runtime::ops::encode()
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn create(stack: &TestStack, nhs: &str) -> Result<String, tonic::Status> {
    let criteria = spine::explicit(nhs, &["vaccinations-1"], "");
    stack
        .subscriptions()
        .create_subscription(pb::CreateSubscriptionRequest {
            caller: Some(pb_caller(SUBSCRIBER)),
            subscription: Some(spine::subscription_pb("RR8", "RR8MBX01", &criteria)),
        })
        .await
        .map(|r| r.into_inner().id)
}

/// Every audit record matching `filter` (all pages).
async fn audit(stack: &TestStack, filter: pb::ListAuditRequest) -> Vec<pb::AuditRecord> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = stack
            .operator()
            .list_audit(pb::ListAuditRequest {
                page_token: token.clone(),
                page_size: 500,
                ..filter.clone()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn subscriptions_beyond_an_asids_quota_are_refused_until_one_is_deleted() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .core(|c| c.subscription_quota_per_asid = 2)
        .start()
        .await;
    let first = create(&stack, NHS[0]).await.unwrap();
    create(&stack, NHS[1]).await.unwrap();
    let refused = create(&stack, NHS[2]).await.unwrap_err();
    assert_eq!(
        code_of(&refused),
        Some(SpineCode::AccessDenied),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("quota")
            && refused
                .message()
                .contains("core.subscription_quota_per_asid"),
        "{}",
        refused.message()
    );
    // Over FHIR: 403 with an OperationOutcome.
    let body = spine::subscription_xml(
        "RR8",
        "RR8MBX01",
        &spine::explicit(NHS[2], &["vaccinations-1"], ""),
    );
    let answer = stack
        .http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None),
            body,
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(answer.text().contains("ACCESS_DENIED"), "{}", answer.text());
    // Another ASID is not affected by this one's count.
    let criteria = spine::explicit(NHS[2], &["vaccinations-1"], "");
    stack
        .subscriptions()
        .create_subscription(pb::CreateSubscriptionRequest {
            caller: Some(pb_caller(spine::OTHER)),
            subscription: Some(spine::subscription_pb("ABC", "ABCMBX01", &criteria)),
        })
        .await
        .unwrap();
    // A deleted subscription frees its place.
    stack
        .subscriptions()
        .delete_subscription(pb::DeleteSubscriptionRequest {
            caller: Some(pb_caller(SUBSCRIBER)),
            id: first,
        })
        .await
        .unwrap();
    create(&stack, NHS[2]).await.unwrap();
    assert!(create(&stack, NHS[0]).await.is_err());
    // The refusals are in the audit trail, aggregated with a count.
    let refusals = eventually(
        "the quota refusals audited",
        Duration::from_secs(10),
        || {
            let stack = &stack;
            async move {
                let found: Vec<_> = audit(
                    stack,
                    pb::ListAuditRequest {
                        asid: SUBSCRIBER.asid.into(),
                        action: "create".into(),
                        ..Default::default()
                    },
                )
                .await
                .into_iter()
                .filter(|r| r.outcome == "ACCESS_DENIED")
                .collect();
                let total: u32 = found.iter().map(|r| r.count.max(1)).sum();
                (total == 3).then_some(found)
            }
        },
    )
    .await;
    assert!(refusals.len() <= 3);
    stack.shutdown().await;
}

/// A flood of refused calls: every refusal is either in the audit trail (aggregated, so a
/// few rows) or counted as dropped, the audit queue stays within its bound, and a
/// well-behaved caller is served all along.
#[tokio::test]
async fn a_flood_of_refusals_costs_a_few_aggregated_audit_rows_and_is_fully_accounted() {
    const FLOOD: usize = 20_000;
    const TASKS: usize = 16;
    let stack = TestStack::builder().sink(Sink::None).start().await;
    let dropped_before = metric("nems_audit_dropped_total");
    // An ASID the directory does not know: every read is refused and audited.
    let stranger = Caller {
        asid: "200000000999",
        ods: "ZZZ",
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = stack.subscriptions();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut refused = 0;
            for _ in 0..FLOOD / TASKS {
                let answer = client
                    .get_subscription(pb::GetSubscriptionRequest {
                        caller: Some(pb_caller(stranger)),
                        id: format!("{t:032x}"),
                    })
                    .await;
                if answer.is_err_and(|s| code_of(&s) == Some(SpineCode::AsidCheckFailed)) {
                    refused += 1;
                }
            }
            refused
        }));
    }
    // Meanwhile a known caller is served.
    let served = create(&stack, NHS[0]).await;
    assert!(served.is_ok(), "{served:?}");
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    assert_eq!(refused, FLOOD);
    let depth = metric("nems_audit_queue_depth");
    assert!(depth <= 8_192.0, "audit queue depth {depth}");
    let (rows, audited, dropped) = eventually(
        "every refusal audited or counted as dropped",
        Duration::from_secs(15),
        || {
            let stack = &stack;
            async move {
                let rows: Vec<_> = audit(
                    stack,
                    pb::ListAuditRequest {
                        asid: stranger.asid.into(),
                        ..Default::default()
                    },
                )
                .await;
                let audited: u64 = rows.iter().map(|r| u64::from(r.count.max(1))).sum();
                let dropped = (metric("nems_audit_dropped_total") - dropped_before) as u64;
                (audited + dropped == FLOOD as u64).then_some((rows.len(), audited, dropped))
            }
        },
    )
    .await;
    println!(
        "refusal flood: {FLOOD} refused reads from {TASKS} tasks -> {rows} audit rows holding {audited}, {dropped} dropped, queue depth at the end of the flood {depth}"
    );
    // One row per subscription id tried per window, not one per refusal.
    assert!(rows <= TASKS * 60, "{rows} audit rows for {FLOOD} refusals");
    assert!(rows > 0 && audited > 0);
    stack.shutdown().await;
}

/// A client naming the ASID of another system is throttled as itself (its address), so the
/// real system keeps being served: the key is what the edge verified, not `fromASID`.
#[tokio::test]
async fn a_client_borrowing_another_asid_throttles_only_itself() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| {
            c.rate_limit_per_asid = 5;
            c.rate_limit_burst = 5;
        })
        .start()
        .await;
    const UNKNOWN: &str = "/STU3/Subscription/0123456789abcdef0123456789abcdef";
    // The spoofer connects from 127.0.0.2 and names SUBSCRIBER's ASID.
    let spoofer =
        HttpClient::with_local_address(stack.edge_addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let headers = spine::headers(SUBSCRIBER, Op::Read);
    let mut limited = 0;
    for _ in 0..40 {
        if spoofer.get(UNKNOWN, &headers).await.status == 429 {
            limited += 1;
        }
    }
    assert!(
        limited >= 30,
        "the spoofer was limited {limited} times of 40"
    );
    // The real SUBSCRIBER, from its own address, is served at once.
    for _ in 0..5 {
        let r = stack.http.get(UNKNOWN, &headers).await;
        assert_eq!(r.status, 404, "the real caller was throttled: {}", r.text());
    }
    stack.shutdown().await;
}
