//! Delivery recovery through the whole stack against the in-process MESH fake (issue 11):
//! a delivery MESH reported undeliverable and an operator redrove is sent as a new MESH
//! message (never taken for the old one); an outage of the endpoint opens the adapter's
//! circuit, which holds deliveries without spending their failures, and releases the backlog
//! as soon as MESH answers; one failing mailbox never opens it.
//!
//! Metrics and readiness are process-wide; nextest runs each test in its own process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nems_e2e::eventually::eventually;
use nems_e2e::mesh_fake::{Behaviour, FakeReport};
use nems_e2e::spine::explicit;
use nems_proto::v1 as pb;

use crate::delivery_support::{
    NHS_NUMBER, SERVICE, WAIT, deliveries_to, fake, fake_stack, inject, publish, subscribe,
    vaccination_event,
};

/// Reads one sample of the process's metrics (`name` with its labels, as encoded).
pub(crate) fn metric(sample: &str) -> f64 {
    nems_runtime::ops::encode()
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Waits until a row of `mailbox` is in `state`; returns it.
async fn first_in_state(
    stack: &nems_e2e::stack::TestStack,
    mailbox: &str,
    state: pb::DeliveryState,
    what: &str,
) -> pb::DeliveryRecord {
    eventually(what, WAIT, || async {
        deliveries_to(stack, mailbox)
            .await
            .into_iter()
            .find(|r| r.state() == state)
    })
    .await
}

/// The readiness failure of the adapter's MESH check, if any.
fn mesh_unready() -> Option<String> {
    nems_runtime::ops::readiness()
        .into_iter()
        .find(|(name, _)| name == "mesh")
        .map(|(_, why)| why)
}

#[tokio::test]
async fn a_redriven_delivery_mesh_reported_undeliverable_is_sent_as_a_new_message() {
    let fake = fake().await;
    fake.add_mailbox("RECIP01", "pw");
    // A second subscriber whose mailbox MESH does not know: its dead letter keeps the
    // event's payload (dead_letter_retention), so the reported delivery can be redriven.
    fake.set_behaviour("DEAD01", Behaviour::Dead);
    let stack = fake_stack(&fake, &["RECIP01", "DEAD01"]).start().await;
    for mailbox in ["RECIP01", "DEAD01"] {
        subscribe(
            &stack,
            mailbox,
            &explicit(NHS_NUMBER, &["vaccinations-1"], ""),
        )
        .await;
    }
    let payload = vaccination_event(NHS_NUMBER, "recovery-ndr-redrive");
    publish(&stack, payload.as_bytes()).await;
    let sent = first_in_state(
        &stack,
        "RECIP01",
        pb::DeliveryState::Delivered,
        "RECIP01's delivery to be delivered",
    )
    .await;
    first_in_state(
        &stack,
        "DEAD01",
        pb::DeliveryState::DeadLettered,
        "DEAD01's delivery to be dead-lettered",
    )
    .await;

    // MESH gives up on the message (never collected) and reports it to our mailbox.
    assert!(fake.set_message_status(&sent.mesh_message_id, "undeliverable"));
    fake.inject_report(
        SERVICE,
        &FakeReport {
            linked_message_id: sent.mesh_message_id.clone(),
            local_id: sent.local_id.clone(),
            workflow_id: sent.workflow_id.clone(),
            code: "14".into(),
            description: "Message not collected by recipient after 5 days".into(),
        },
    );
    let dead = first_in_state(
        &stack,
        "RECIP01",
        pb::DeliveryState::DeadLettered,
        "the report to dead-letter the delivery",
    )
    .await;
    assert_eq!(dead.last_error_code, "MESH_14");

    let redriven = stack
        .operator()
        .redrive_deliveries(pb::RedriveDeliveriesRequest {
            delivery_ids: vec![dead.delivery_id],
            ..Default::default()
        })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(redriven.redriven, 1, "{redriven:?}");
    let again = first_in_state(
        &stack,
        "RECIP01",
        pb::DeliveryState::Delivered,
        "the redriven delivery to be delivered",
    )
    .await;
    assert_ne!(
        again.mesh_message_id, sent.mesh_message_id,
        "delivered means a message MESH accepted, not the one it reported undeliverable"
    );
    let copies = fake.messages_to("RECIP01");
    assert_eq!(copies.len(), 2, "the original and the redriven copy");
    let new_copy = fake
        .message(&again.mesh_message_id)
        .expect("the ledger's message id is a message MESH holds");
    assert_eq!(new_copy.status, "accepted");
    assert_eq!(new_copy.payload(), payload.as_bytes(), "payload unchanged");
    assert_ne!(
        new_copy.mex_header("mex-localid"),
        Some(sent.local_id.as_str()),
        "a redrive is a new generation of the local id"
    );
    assert_eq!(
        new_copy.mex_header("mex-localid"),
        Some(again.local_id.as_str())
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_outage_holds_deliveries_and_releases_them_when_mesh_answers() {
    let fake = fake().await;
    let mailboxes = ["RECIP01", "RECIP02", "RECIP03"];
    let stack = fake_stack(&fake, &mailboxes)
        .adapter(|a| {
            a.mesh.request_timeout = Duration::from_millis(500);
            a.mesh.connect_timeout = Duration::from_millis(500);
            a.mesh.circuit_probe_max = Duration::from_millis(200);
            // An hour's per-message backoff: a delivery charged a failure for the outage
            // would wait (a uniform draw of) up to an hour, far past WAIT, so a drain within
            // WAIT shows the outage was not charged to them.
            a.retry_initial = Duration::from_secs(3600);
            a.retry_max_delay = Duration::from_secs(3600);
        })
        .start()
        .await;
    fake.set_unreachable(true);
    let mut ids = BTreeMap::new();
    for i in 0..30 {
        let mailbox = mailboxes[i % mailboxes.len()];
        let (event, id) = inject(&stack, mailbox, format!("<outage n='{i}'/>").as_bytes()).await;
        ids.insert(id, (event, mailbox));
    }
    let why = eventually("the circuit to open", WAIT, || async {
        mesh_unready().filter(|why| why.contains("circuit open"))
    })
    .await;
    assert!(why.starts_with("MESH unreachable"), "{why}");
    assert_eq!(metric("nems_mesh_circuit_open"), 1.0);
    // While open: probes fail, and deliveries are neither attempted nor charged.
    let probes = metric("nems_mesh_circuit_probes_total{result=\"failed\"}");
    let sends_before = fake.sends().len();
    eventually("two more failed probes", WAIT, || async {
        (metric("nems_mesh_circuit_probes_total{result=\"failed\"}") >= probes + 2.0).then_some(())
    })
    .await;
    assert_eq!(
        fake.sends().len(),
        sends_before,
        "no delivery attempted while the circuit is open"
    );

    let back = Instant::now();
    fake.set_unreachable(false);
    eventually("every delivery to be delivered", WAIT, || async {
        let mut delivered = 0;
        for mailbox in mailboxes {
            delivered += deliveries_to(&stack, mailbox)
                .await
                .iter()
                .filter(|r| r.state() == pb::DeliveryState::Delivered)
                .count();
        }
        (delivered == ids.len()).then_some(())
    })
    .await;
    let drained = back.elapsed();
    println!(
        "circuit: {} deliveries delivered {:.2} s after MESH answered again",
        ids.len(),
        drained.as_secs_f64()
    );
    assert_eq!(metric("nems_mesh_circuit_open"), 0.0);
    assert!(mesh_unready().is_none_or(|why| !why.contains("circuit open")));
    // Exactly one copy of each delivery, none dead-lettered.
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for message in fake.messages() {
        *copies
            .entry(message.mex_header("mex-localid").unwrap_or("").to_owned())
            .or_default() += 1;
    }
    for mailbox in mailboxes {
        for row in deliveries_to(&stack, mailbox).await {
            assert_eq!(row.state(), pb::DeliveryState::Delivered, "{row:?}");
            assert_eq!(copies.get(&row.local_id), Some(&1), "{}", row.local_id);
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn one_failing_mailbox_keeps_its_own_backoff_and_never_opens_the_circuit() {
    let fake = fake().await;
    fake.set_behaviour(
        "BROKEN1",
        Behaviour::Fail {
            times: u32::MAX,
            status: 503,
            retry_after: None,
        },
    );
    let stack = fake_stack(&fake, &["BROKEN1", "RECIP01"]).start().await;
    let (broken_event, broken) = inject(&stack, "BROKEN1", b"<broken/>").await;
    eventually("the broken mailbox to fail twice", WAIT, || async {
        let row = crate::delivery_support::delivery(&stack, &broken_event, broken).await;
        (row.attempts >= 2 && row.last_error_code == "503").then_some(())
    })
    .await;
    // A healthy mailbox is delivered meanwhile, and the endpoint is not taken for down.
    for i in 0..5 {
        let (event, id) = inject(&stack, "RECIP01", format!("<ok n='{i}'/>").as_bytes()).await;
        crate::delivery_support::wait_for_state(&stack, &event, id, pb::DeliveryState::Delivered)
            .await;
    }
    // Still retried on its own backoff: waiting for its next attempt, or in one (its retry
    // delays are short here), never delivered or given up.
    let row = crate::delivery_support::delivery(&stack, &broken_event, broken).await;
    assert!(
        matches!(
            row.state(),
            pb::DeliveryState::Queued | pb::DeliveryState::InFlight
        ),
        "{row:?}"
    );
    assert_eq!(row.last_error_code, "503", "{row:?}");
    assert_eq!(metric("nems_mesh_circuit_opens_total"), 0.0);
    assert!(mesh_unready().is_none_or(|why| !why.contains("circuit open")));
    stack.shutdown().await;
}

/// A stack delivering to the real sandbox, for `mailboxes` (recipients the sandbox knows, and
/// any it does not).
async fn sandbox_stack(
    sandbox: &nems_e2e::mesh_sandbox::MeshSandbox,
    mailboxes: &[&str],
) -> nems_e2e::stack::TestStack {
    use nems_e2e::mesh_sandbox::SERVICE_MAILBOX;
    nems_e2e::stack::TestStack::builder()
        .directory(&crate::delivery_support::directory_with(mailboxes))
        .sink(nems_e2e::stack::Sink::Mesh {
            base_url: sandbox.base_url().to_owned(),
            mailbox: SERVICE_MAILBOX.id.into(),
            password: SERVICE_MAILBOX.password.into(),
        })
        .adapter(|a| {
            a.mesh.request_timeout = Duration::from_secs(2);
            a.mesh.connect_timeout = Duration::from_secs(1);
            a.retry_initial = Duration::from_secs(3600);
            a.retry_max_delay = Duration::from_secs(3600);
        })
        .start()
        .await
}

#[tokio::test]
async fn sandbox_redrive_after_a_non_delivery_report_reaches_the_recipient() {
    use nems_e2e::mesh_sandbox::{MeshSandbox, RECIPIENT_MAILBOXES, SERVICE_MAILBOX};
    let Some(venv) =
        nems_e2e::tools::venv("sandbox_redrive_after_a_non_delivery_report_reaches_the_recipient")
    else {
        return;
    };
    let sandbox = MeshSandbox::start(&venv).await;
    let recipient = RECIPIENT_MAILBOXES[0];
    // UNREG01 is in our directory but not in MESH: its dead letter (code 12) keeps the
    // payload, so the reported delivery can be redriven.
    let stack = sandbox_stack(&sandbox, &[recipient.id, "UNREG01"]).await;
    for mailbox in [recipient.id, "UNREG01"] {
        subscribe(
            &stack,
            mailbox,
            &explicit(NHS_NUMBER, &["vaccinations-1"], ""),
        )
        .await;
    }
    let payload = vaccination_event(NHS_NUMBER, "recovery-sandbox-redrive");
    publish(&stack, payload.as_bytes()).await;
    let sent = first_in_state(
        &stack,
        recipient.id,
        pb::DeliveryState::Delivered,
        "the delivery to be delivered",
    )
    .await;
    first_in_state(
        &stack,
        "UNREG01",
        pb::DeliveryState::DeadLettered,
        "UNREG01's delivery to be dead-lettered",
    )
    .await;
    // MESH gives up on the message and reports it to our mailbox.
    sandbox
        .add_message_event(
            &sent.mesh_message_id,
            "undeliverable",
            "14",
            "Message not collected by recipient after 5 days",
        )
        .await;
    sandbox
        .inject_report(
            SERVICE_MAILBOX.id,
            &sent.mesh_message_id,
            &sent.local_id,
            &sent.workflow_id,
            "14",
            "Message not collected by recipient after 5 days",
        )
        .await;
    let dead = first_in_state(
        &stack,
        recipient.id,
        pb::DeliveryState::DeadLettered,
        "the report to dead-letter the delivery",
    )
    .await;
    assert_eq!(dead.last_error_code, "MESH_14");
    let redriven = stack
        .operator()
        .redrive_deliveries(pb::RedriveDeliveriesRequest {
            delivery_ids: vec![dead.delivery_id],
            ..Default::default()
        })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(redriven.redriven, 1, "{redriven:?}");
    let again = first_in_state(
        &stack,
        recipient.id,
        pb::DeliveryState::Delivered,
        "the redriven delivery to be delivered",
    )
    .await;
    assert_ne!(again.mesh_message_id, sent.mesh_message_id);
    assert_ne!(
        again.local_id, sent.local_id,
        "a new generation of the local id"
    );
    // NHS's own mesh-client receives the new copy, unchanged.
    let received = sandbox.receive_with_mesh_client(&recipient).await;
    let copy = received
        .iter()
        .find(|m| m.id == again.mesh_message_id)
        .unwrap_or_else(|| panic!("the redriven copy in {recipient:?}'s inbox: {received:?}"));
    assert_eq!(copy.payload, payload.as_bytes());
    assert_eq!(copy.headers.get("localid"), Some(&again.local_id));
    stack.shutdown().await;
}

/// How many events and how long an outage [`sandbox_outage_backlog_flows_when_mesh_returns`]
/// uses: `NEMS_OUTAGE_EVENTS` (default 20, three deliveries each) and `NEMS_OUTAGE_SECS`
/// (default: only until the circuit has opened and failed two probes), so the same test is
/// the benchmark (`NEMS_OUTAGE_EVENTS=67 NEMS_OUTAGE_SECS=60`: 201 deliveries, 60 s).
#[allow(
    clippy::disallowed_methods,
    reason = "benchmark sizes from the environment"
)]
fn outage_shape() -> (usize, Option<Duration>) {
    let events = std::env::var("NEMS_OUTAGE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let secs = std::env::var("NEMS_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    (events, secs)
}

#[tokio::test]
async fn sandbox_outage_backlog_flows_when_mesh_returns() {
    use nems_e2e::mesh_sandbox::{MeshSandbox, RECIPIENT_MAILBOXES};
    let Some(venv) = nems_e2e::tools::venv("sandbox_outage_backlog_flows_when_mesh_returns") else {
        return;
    };
    let (events, outage) = outage_shape();
    let mut sandbox = MeshSandbox::start(&venv).await;
    let recipients: Vec<&str> = RECIPIENT_MAILBOXES.iter().map(|m| m.id).collect();
    let stack = sandbox_stack(&sandbox, &recipients).await;
    for mailbox in &recipients {
        subscribe(
            &stack,
            mailbox,
            &explicit(NHS_NUMBER, &["vaccinations-1"], ""),
        )
        .await;
    }
    // MESH goes away (its process stops: connections refused), with publishing going on.
    let down = Instant::now();
    sandbox.stop().await;
    for i in 0..events {
        publish(
            &stack,
            vaccination_event(NHS_NUMBER, &format!("recovery-outage-{i}")).as_bytes(),
        )
        .await;
    }
    eventually("the circuit to open", WAIT, || async {
        mesh_unready().filter(|why| why.contains("circuit open"))
    })
    .await;
    let failed = metric("nems_mesh_circuit_probes_total{result=\"failed\"}");
    eventually("two more failed probes", WAIT, || async {
        (metric("nems_mesh_circuit_probes_total{result=\"failed\"}") >= failed + 2.0).then_some(())
    })
    .await;
    if let Some(outage) = outage {
        // The benchmark's outage length: deliberate, not a synchronisation.
        tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    }
    let total = events * recipients.len();
    sandbox.restart().await;
    let back = Instant::now();
    eventually(
        "every delivery to be delivered",
        WAIT + Duration::from_millis(50 * total as u64),
        || async {
            let mut delivered = 0;
            for mailbox in &recipients {
                delivered += deliveries_to(&stack, mailbox)
                    .await
                    .iter()
                    .filter(|r| r.state() == pb::DeliveryState::Delivered)
                    .count();
            }
            (delivered == total).then_some(())
        },
    )
    .await;
    let drained = back.elapsed();
    println!(
        "sandbox outage: {total} deliveries queued over a {:.1} s outage, the last delivered \
         {:.2} s after MESH answered again",
        back.duration_since(down).as_secs_f64(),
        drained.as_secs_f64()
    );
    // Each recipient received each event once (NHS's mesh-client reads the inboxes).
    for mailbox in RECIPIENT_MAILBOXES {
        let received = sandbox.receive_with_mesh_client(&mailbox).await;
        let mut local_ids: Vec<&String> = received
            .iter()
            .filter_map(|m| m.headers.get("localid"))
            .collect();
        local_ids.sort();
        local_ids.dedup();
        assert_eq!(received.len(), events, "{}: one copy per event", mailbox.id);
        assert_eq!(
            local_ids.len(),
            events,
            "{}: distinct deliveries",
            mailbox.id
        );
    }
    stack.shutdown().await;
}

/// A core that streams a script of deliveries to the adapter and records its reports.
#[derive(Clone)]
struct ScriptedCore {
    deliveries: std::sync::Arc<std::sync::Mutex<Vec<pb::Delivery>>>,
    reports: tokio::sync::mpsc::UnboundedSender<pb::CompleteDeliveryRequest>,
}

#[tonic::async_trait]
impl nems_proto::v1::delivery_service_server::DeliveryService for ScriptedCore {
    type StreamDeliveriesStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::StreamDeliveriesResponse, tonic::Status>>;

    async fn stream_deliveries(
        &self,
        _request: tonic::Request<pb::StreamDeliveriesRequest>,
    ) -> Result<tonic::Response<Self::StreamDeliveriesStream>, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let script: Vec<pb::Delivery> = std::mem::take(&mut *self.deliveries.lock().unwrap());
        for delivery in script {
            tx.send(Ok(pb::StreamDeliveriesResponse {
                delivery: Some(delivery),
            }))
            .await
            .unwrap();
        }
        // Keep the stream open (the sender lives as long as the stream).
        tokio::spawn(async move { tx.closed().await });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn complete_delivery(
        &self,
        request: tonic::Request<pb::CompleteDeliveryRequest>,
    ) -> Result<tonic::Response<pb::CompleteDeliveryResponse>, tonic::Status> {
        let _ = self.reports.send(request.into_inner());
        Ok(tonic::Response::new(pb::CompleteDeliveryResponse::default()))
    }

    async fn report_undelivered(
        &self,
        _request: tonic::Request<pb::ReportUndeliveredRequest>,
    ) -> Result<tonic::Response<pb::ReportUndeliveredResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not scripted"))
    }
}

/// A sink whose sends wait until released, recording which deliveries it was given.
struct GatedSink {
    calls: std::sync::Mutex<Vec<u64>>,
    started: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::Semaphore,
}

impl nems_mesh_adapter::sink::Sink for GatedSink {
    async fn deliver(&self, delivery: &pb::Delivery) -> nems_mesh_adapter::sink::SinkOutcome {
        let count = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(delivery.delivery_id);
            calls.len()
        };
        self.started.send_replace(count);
        let _permit = self.release.acquire().await;
        nems_mesh_adapter::sink::SinkOutcome::Sent {
            message_id: "MSG-1".into(),
        }
    }
}

#[tokio::test]
async fn a_delivery_handed_out_again_while_its_attempt_runs_is_not_sent_twice() {
    use nems_mesh_adapter::pump::{PumpSettings, run};
    let delivery = |id: u64, attempt: u32| pb::Delivery {
        delivery_id: id,
        attempt,
        local_id: "evt-0".into(),
        mailbox: "RECIP01".into(),
        payload: b"<x/>".to_vec().into(),
        ..Default::default()
    };
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let core = ScriptedCore {
        // Core gave the first lease back (its stream ended) and leased it again; then
        // another delivery, whose start shows the pump has read the second hand-out.
        deliveries: std::sync::Arc::new(std::sync::Mutex::new(vec![
            delivery(7, 1),
            delivery(7, 2),
            delivery(8, 1),
        ])),
        reports: reports_tx,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(nems_proto::v1::delivery_service_server::DeliveryServiceServer::new(core))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let sink = std::sync::Arc::new(GatedSink {
        calls: std::sync::Mutex::default(),
        started: tokio::sync::watch::channel(0).0,
        release: tokio::sync::Semaphore::new(0),
    });
    let mut started = sink.started.subscribe();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let settings = PumpSettings {
        consumer: "test".into(),
        max_in_flight: 8,
        max_in_flight_per_mailbox: 4,
        retry: nems_mesh_adapter::retry::RetryPolicy::for_test(),
        drain_timeout: Duration::from_secs(5),
        sink_name: "folder",
        health: std::sync::Arc::default(),
        attempt_budget: None,
        circuit: None,
    };
    let pump = tokio::spawn(run(
        std::sync::Arc::new(nems_mesh_adapter::cores::Cores::one(channel)),
        sink.clone(),
        settings,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    // Delivery 7's first attempt runs while its second hand-out is read; delivery 8 starts
    // after that (the pump reads its stream in order).
    tokio::time::timeout(WAIT, started.wait_for(|n| *n >= 2))
        .await
        .expect("two attempts start")
        .unwrap();
    assert_eq!(
        *sink.calls.lock().unwrap(),
        [7, 8],
        "one send of delivery 7, not two"
    );
    sink.release.add_permits(2);
    let mut got = Vec::new();
    for _ in 0..2 {
        let report = tokio::time::timeout(WAIT, reports.recv())
            .await
            .expect("a report")
            .expect("the channel is open");
        assert!(matches!(
            report.outcome,
            Some(pb::complete_delivery_request::Outcome::Sent(_))
        ));
        got.push((report.delivery_id, report.attempt));
    }
    got.sort_unstable();
    assert_eq!(got, [(7, 2), (8, 1)], "7 reported under its newest attempt");
    assert_eq!(sink.calls.lock().unwrap().len(), 2);
    stop.send_replace(true);
    pump.await.unwrap();
    server.abort();
}
