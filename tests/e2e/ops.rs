//! The operations endpoint: after a subscription, a publish and a delivery, a scrape of
//! `/metrics` shows the counters moved (events accepted, HTTP requests by route and status,
//! delivery attempts, ledger gauges, group commits); `/livez` and `/readyz` answer, and
//! readiness fails once core has stopped.

use std::time::Duration;

use nems_e2e::events::{nhs_number, vaccination};
use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_e2e::outbox;
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_e2e::stack::TestStack;
use tokio::net::TcpListener;

/// The value of the sample `name{labels}` (labels exactly as exposed), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[tokio::test]
async fn metrics_move_after_a_publish_and_a_delivery() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = listener.local_addr().unwrap();
    let (stop_ops, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops_task = tokio::spawn(nems_cli::ops::serve(listener, async {
        let _ = ops_stopped.await;
    }));
    let ops = HttpClient::new(ops_addr);
    let stack = TestStack::start().await;

    assert_eq!(ops.get("/livez", &[]).await.status, 200);
    let ready = eventually("readiness", Duration::from_secs(10), || async {
        let r = ops.get("/readyz", &[]).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(ready.text().trim(), "ready");
    let scrape = ops.get("/metrics", &[]).await;
    // OpenMetrics text, served as such.
    assert_eq!(
        scrape.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let before = scrape.text();
    assert!(before.trim_end().ends_with("# EOF"), "{before}");
    let published_before = sample(
        &before,
        r#"nems_http_requests_total{route="publish",status="202"}"#,
    )
    .unwrap_or(0.0);

    let nhs = nhs_number(42);
    let criteria = spine::explicit(&nhs, &["vaccinations-1"], "");
    let created = stack
        .http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None),
            spine::subscription_xml("RR8", "RR8MBX01", &criteria),
        )
        .await;
    assert_eq!(created.status, 201);
    let published = stack
        .http
        .post(
            "/STU3/Events/1/$process-message",
            &spine::with_media(
                SUBSCRIBER,
                Op::Publish("Vaccinations"),
                "application/fhir+xml",
                None,
            ),
            vaccination(&nhs, "2019-05-01", 0),
        )
        .await;
    assert_eq!(published.status, 202, "{}", published.text());
    eventually("the delivery", Duration::from_secs(10), || async {
        (!outbox::read(&stack.outbox).is_empty()).then_some(())
    })
    .await;

    let after = eventually("the delivered gauge", Duration::from_secs(10), || async {
        let text = ops.get("/metrics", &[]).await.text();
        // The ledger gauge is read from the store at scrape time, the completion counter
        // moves just after the write that settled the delivery: wait for both.
        (sample(
            &text,
            r#"nems_deliveries{mailbox="RR8MBX01",state="delivered"}"#,
        ) == Some(1.0)
            && sample(&text, r#"nems_delivery_reports_total{result="delivered"}"#).is_some())
        .then_some(text)
    })
    .await;
    let check = |series: &str, at_least: f64| {
        let value =
            sample(&after, series).unwrap_or_else(|| panic!("{series} missing from /metrics"));
        assert!(
            value >= at_least,
            "{series} = {value}, expected at least {at_least}"
        );
    };
    check(
        r#"nems_events_accepted_total{event_code="vaccinations-1"}"#,
        1.0,
    );
    check(
        r#"nems_http_requests_total{route="publish",status="202"}"#,
        published_before + 1.0,
    );
    check(
        r#"nems_http_requests_total{route="subscription_create",status="201"}"#,
        1.0,
    );
    check(
        r#"nems_delivery_attempts_total{sink="folder",outcome="sent"}"#,
        1.0,
    );
    check(r#"nems_delivery_reports_total{result="delivered"}"#, 1.0);
    assert!(
        !after.contains("nems_deliveries_completed"),
        "the old name is gone"
    );
    check(
        r#"nems_grpc_server_requests_total{method="nems.core.v1.SubscriptionService/CreateSubscription",code="Ok"}"#,
        1.0,
    );
    check(
        r#"nems_grpc_server_duration_seconds_count{method="nems.core.v1.EventService/PublishEvent"}"#,
        1.0,
    );
    check(
        &format!(
            r#"nems_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    check("nems_process_resident_memory_bytes", 1_000_000.0);
    check("nems_process_open_fds", 3.0);
    check("nems_dead_letters_total", 0.0);
    check("nems_store_commit_batch_size_count", 1.0);
    // The writer's histograms: the +Inf bucket holds every observation, and the buckets
    // only grow with their bounds.
    for name in [
        "nems_store_commit_batch_size",
        "nems_store_commit_duration_seconds",
    ] {
        let count = sample(&after, &format!("{name}_count")).unwrap();
        assert_eq!(
            sample(&after, &format!(r#"{name}_bucket{{le="+Inf"}}"#)),
            Some(count),
            "{name}"
        );
        let buckets: Vec<f64> = after
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(buckets.len() > 10, "{name}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {buckets:?}"
        );
    }
    check("nems_publish_duration_seconds_count", 1.0);
    check("nems_delivery_backlog_limit", 1.0);
    assert_eq!(
        sample(&after, r#"nems_delivery_queue_depth{mailbox="RR8MBX01"}"#),
        Some(0.0)
    );

    stack.shutdown().await;
    let not_ready = ops.get("/readyz", &[]).await;
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready.text().contains("core-store"),
        "{}",
        not_ready.text()
    );
    let _ = stop_ops.send(());
    ops_task.await.unwrap();
}

#[tokio::test]
async fn publish_sheds_load_with_503_when_the_backlog_is_full() {
    use nems_e2e::stack::Sink;
    // No adapter: deliveries accumulate. The bound is three pending deliveries.
    let stack = TestStack::builder()
        .sink(Sink::None)
        .core(|c| c.max_pending_deliveries = 3)
        .start()
        .await;
    let nhs = nhs_number(7);
    let criteria = spine::explicit(&nhs, &["vaccinations-1"], "");
    let created = stack
        .http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None),
            spine::subscription_xml("RR8", "RR8MBX01", &criteria),
        )
        .await;
    assert_eq!(created.status, 201);
    let headers = spine::with_media(
        SUBSCRIBER,
        Op::Publish("Vaccinations"),
        "application/fhir+xml",
        None,
    );
    let shed_before =
        sample(&nems_runtime::ops::encode(), "nems_publishes_shed_total").unwrap_or(0.0);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = stack
            .http
            .post(
                "/STU3/Events/1/$process-message",
                &headers,
                vaccination(&nhs, "2019-05-01", 0),
            )
            .await;
        if r.status == 503 {
            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            assert!(
                r.text().contains("OperationOutcome") && r.text().contains("transient"),
                "{}",
                r.text()
            );
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![202, 202, 202, 503, 503]);
    let metrics = nems_runtime::ops::encode();
    assert_eq!(sample(&metrics, "nems_delivery_backlog"), Some(3.0));
    assert_eq!(sample(&metrics, "nems_delivery_backlog_limit"), Some(3.0));
    assert!(sample(&metrics, "nems_publishes_shed_total").unwrap() >= shed_before + 2.0);
    stack.shutdown().await;
}

#[tokio::test]
async fn the_audit_trail_records_who_did_what_without_clinical_content() {
    use nems_proto::v1 as pb;
    let stack = TestStack::builder()
        .sink(nems_e2e::stack::Sink::None)
        .start()
        .await;
    let nhs = nhs_number(9);
    let criteria = spine::explicit(&nhs, &["vaccinations-1"], "");
    let created = stack
        .http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None),
            spine::subscription_xml("RR8", "RR8MBX01", &criteria),
        )
        .await;
    let id = created
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let read = stack
        .http
        .get(
            &format!("/STU3/Subscription/{id}"),
            &spine::headers(SUBSCRIBER, Op::Read),
        )
        .await;
    assert_eq!(read.status, 200);
    let published = stack
        .http
        .post(
            "/STU3/Events/1/$process-message",
            &spine::with_media(
                SUBSCRIBER,
                Op::Publish("Vaccinations"),
                "application/fhir+xml",
                None,
            ),
            vaccination(&nhs, "2019-05-01", 0),
        )
        .await;
    assert_eq!(published.status, 202);
    let refused = stack
        .http
        .get(
            &format!("/STU3/Subscription/{id}"),
            &spine::headers(spine::OTHER, Op::Read),
        )
        .await;
    assert_eq!(refused.status, 404);
    let deleted = stack
        .http
        .delete(
            &format!("/STU3/Subscription/{id}"),
            &spine::headers(SUBSCRIBER, Op::Delete),
        )
        .await;
    assert_eq!(deleted.status, 200);

    let records = eventually("the audit records", Duration::from_secs(10), || {
        let mut operator = stack.operator();
        async move {
            let r = operator
                .list_audit(pb::ListAuditRequest {
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (r.records.len() >= 5).then_some(r.records)
        }
    })
    .await;
    let find = |action: &str, asid: &str| {
        records
            .iter()
            .find(|r| r.action == action && r.asid == asid)
            .unwrap_or_else(|| panic!("no {action} by {asid}: {records:?}"))
    };
    let create = find("create", "200000000111");
    assert_eq!(
        (
            create.ods_code.as_str(),
            create.resource_type.as_str(),
            create.resource_id.as_str(),
            create.outcome.as_str()
        ),
        ("RR8", "Subscription", id.as_str(), "ok")
    );
    // Every record says when: in order, and within the test's run.
    let times: Vec<i64> = records
        .iter()
        .map(|r| r.at.as_ref().expect("every record has its time").seconds)
        .collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times.iter().all(|t| (now - 300..=now + 1).contains(t)),
        "{times:?} against {now}"
    );
    let line = nems_cli::admin::audit_line(create);
    assert!(
        line.starts_with("at=20")
            && line.contains("Z request=")
            && line.contains(" action=create "),
        "{line}"
    );
    assert_eq!(find("read", "200000000111").outcome, "ok");
    assert_eq!(find("read", "200000000444").outcome, "NO_RECORD_FOUND");
    assert_eq!(find("delete", "200000000111").outcome, "ok");
    let publish = find("publish", "200000000111");
    assert_eq!(
        (publish.resource_type.as_str(), publish.outcome.as_str()),
        ("Bundle", "ok")
    );
    assert_eq!(publish.resource_id.len(), 32);
    assert!(!publish.request_id.is_empty());
    let everything = format!("{records:?}");
    assert!(
        !everything.contains(&nhs),
        "the audit trail holds an NHS number"
    );
    // Filters.
    let mut operator = stack.operator();
    let only_publish = operator
        .list_audit(pb::ListAuditRequest {
            action: "publish".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        only_publish.records.iter().all(|r| r.action == "publish")
            && !only_publish.records.is_empty()
    );
    stack.shutdown().await;
}
