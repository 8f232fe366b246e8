//! Delivery after a restart (issue 11 §2): leases come back at once, not after `lease_timeout`.
//!
//! - Core runs as a child process under publish load, delivering through an in-process
//!   adapter to the MESH fake with one slow mailbox (so deliveries are certainly in flight),
//!   and is killed with SIGKILL; restarted on the same data and address, it gives back
//!   every lease from before the restart, the adapter reconnects, and every accepted event
//!   is delivered within 30 s (the default 5-minute lease would hold them for 5 minutes).
//! - A delivery stream that ends gives back its leases at once; the stream count is capped.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nems_e2e::events::{nhs_number, vaccination};
use nems_e2e::eventually::eventually;
use nems_e2e::mesh_fake::Behaviour;
use nems_e2e::spine::{self, SUBSCRIBER};
use nems_e2e::stack::{AdapterHandle, Sink, TEST_DIRECTORY, TestStack};
use nems_mesh_adapter::{AdapterConfig, SinkKind};
use nems_proto::v1 as pb;
use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::delivery_support::{self, PASSWORD, SERVICE, WAIT};

const PATIENTS: u64 = 12;
const PUBLISHERS: usize = 6;
/// The mailbox whose MESH sends hang (60 s, longer than the test) before the kill, so that
/// its deliveries are certainly in flight when core dies and none of those sends succeeds.
const SLOW: &str = "RR8MBX03";

struct CoreChild {
    process: Child,
    operator: SocketAddr,
}

impl CoreChild {
    async fn start(
        data_dir: &std::path::Path,
        directory: &std::path::Path,
        service: SocketAddr,
    ) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_nems-test-core"))
            .arg(data_dir)
            .arg(directory)
            .arg(service.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the core child");
        let stdout = process.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("core child ready in time")
            .expect("read the ready line")
            .expect("a ready line");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("READY"), "{line}");
        assert_eq!(parts.next(), Some(service.to_string().as_str()), "{line}");
        let operator = parts.next().unwrap().parse().unwrap();
        CoreChild { process, operator }
    }

    async fn kill(mut self) {
        self.process.start_kill().expect("SIGKILL the core child");
        self.process.wait().await.expect("reap the core child");
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// Which mailboxes subscribe to patient `i`: RR8MBX01 always, 02 for even, the slow 03 for
/// multiples of 4.
fn mailboxes_for(i: u64) -> BTreeSet<String> {
    let mut set = BTreeSet::from(["RR8MBX01".to_string()]);
    if i.is_multiple_of(2) {
        set.insert("RR8MBX02".into());
    }
    if i.is_multiple_of(4) {
        set.insert(SLOW.into());
    }
    set
}

/// Per-mailbox counts summed: (queued + in flight, delivered, dead-lettered).
async fn totals(operator: &mut OperatorServiceClient<Channel>) -> Option<(u64, u64, u64)> {
    let stats = operator
        .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
        .await
        .ok()?
        .into_inner();
    Some(stats.mailboxes.iter().fold((0, 0, 0), |(p, d, x), m| {
        (
            p + m.queued + m.in_flight,
            d + m.delivered,
            x + m.dead_lettered,
        )
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_within_seconds_after_core_is_killed_under_load() {
    let fake = delivery_support::fake().await;
    fake.set_behaviour(SLOW, Behaviour::Slow(Duration::from_secs(60)));
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    std::fs::write(&directory, TEST_DIRECTORY).unwrap();
    let data = dir.path().join("db");
    // A fixed service address, so that the adapter reconnects to the restarted core.
    let service = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = CoreChild::start(&data, &directory, service).await;

    let mut subscriptions = SubscriptionServiceClient::new(channel(service));
    for i in 0..PATIENTS {
        for mailbox in mailboxes_for(i) {
            let criteria = spine::explicit(&nhs_number(i), &["vaccinations-1"], "");
            subscriptions
                .create_subscription(pb::CreateSubscriptionRequest {
                    caller: Some(spine::pb_caller(SUBSCRIBER)),
                    subscription: Some(spine::subscription_pb("RR8", &mailbox, &criteria)),
                })
                .await
                .expect("subscription created");
        }
    }
    let mut config = AdapterConfig {
        core_url: format!("http://{service}"),
        sink: SinkKind::Mesh,
        retry_initial: Duration::from_millis(50),
        retry_max_delay: Duration::from_secs(1),
        ..Default::default()
    };
    config.mesh.base_url = fake.base_url();
    config.mesh.mailbox = SERVICE.into();
    config.mesh.password = PASSWORD.into();
    config.mesh.shared_key = "TestKey".into();
    config.mesh.request_timeout = Duration::from_secs(5);
    config.mesh.report_poll_interval = Duration::from_millis(200);
    let adapter = AdapterHandle::spawn(config);

    let messages: Arc<Vec<(pb::EventMessage, Vec<u8>)>> = Arc::new(
        (0..PATIENTS)
            .map(|i| {
                let xml = vaccination(&nhs_number(i), "2015-06-01", 2_000);
                (
                    nems_edge::translate::bundle::extract(xml.as_bytes()).unwrap(),
                    xml.into_bytes(),
                )
            })
            .collect(),
    );
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (messages, acked, stop) = (messages.clone(), acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut client = EventServiceClient::new(channel(service));
            let mut n = p as u64;
            while !stop.load(Ordering::Relaxed) {
                let i = n % PATIENTS;
                n += PUBLISHERS as u64;
                let (message, payload) = &messages[i as usize];
                let request = pb::PublishEventRequest {
                    caller: Some(spine::pb_caller(SUBSCRIBER)),
                    interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
                    message: Some(message.clone()),
                    payload: payload.clone().into(),
                };
                match client.publish_event(request).await {
                    Ok(response) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(response.into_inner().event_id, i);
                    }
                    // Killed mid-request: not acknowledged, so no promise was made.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }));
    }
    // Kill once the load is going and a slow send is open (leases certainly outstanding).
    eventually("publish load and a slow send in flight", WAIT * 2, || {
        let ready = acked.lock().unwrap().len() >= 200
            && fake
                .sends()
                .iter()
                .any(|r| r.header("mex-to") == Some(SLOW));
        async move { ready.then_some(()) }
    })
    .await;
    let killed = Instant::now();
    child.kill().await;
    fake.set_behaviour(SLOW, Behaviour::Accept);
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let expected: u64 = acked.values().map(|p| mailboxes_for(*p).len() as u64).sum();

    let child = CoreChild::start(&data, &directory, service).await;
    let restarted = Instant::now();
    let mut operator = OperatorServiceClient::new(channel(child.operator));
    let (delivered, _) = eventually(
        "every delivery settled after the restart",
        Duration::from_secs(30),
        || {
            let mut operator = operator.clone();
            async move {
                let (pending, delivered, dead) = totals(&mut operator).await?;
                (pending == 0 && delivered >= expected).then_some((delivered, dead))
            }
        },
    )
    .await;
    let after_restart = restarted.elapsed();
    eprintln!(
        "{} events acknowledged ({expected} deliveries, {delivered} in the ledger): all delivered {:.2}s after the restart, {:.2}s after the SIGKILL",
        acked.len(),
        after_restart.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
    );

    // Every delivery in the ledger (acknowledged or not) is delivered; the slow mailbox's
    // were handed out again (attempt 2 or later) well inside the 5-minute lease: given back
    // at start.
    let mut handed_out_again = 0;
    let mut token = String::new();
    loop {
        let page = operator
            .list_deliveries(pb::ListDeliveriesRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for d in &page.deliveries {
            assert_eq!(d.state(), pb::DeliveryState::Delivered, "{d:?}");
            if d.attempts > 1 {
                handed_out_again += 1;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for (event_id, patient) in &acked {
        let event = operator
            .get_event(pb::GetEventRequest {
                event_id: event_id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged event {event_id} lost: {s}"))
            .into_inner();
        let mailboxes: BTreeSet<String> =
            event.deliveries.iter().map(|d| d.mailbox.clone()).collect();
        assert_eq!(mailboxes, mailboxes_for(*patient), "event {event_id}");
        for d in &event.deliveries {
            assert_eq!(d.state(), pb::DeliveryState::Delivered, "event {event_id}");
        }
    }
    assert!(
        handed_out_again > 0,
        "no delivery was in flight at the kill; the test proved nothing"
    );
    for (event_id, patient) in &acked {
        for mailbox in mailboxes_for(*patient) {
            assert!(
                fake.messages_to(&mailbox).iter().any(|m| m
                    .mex_header("mex-localid")
                    .is_some_and(|l| l.starts_with(event_id.as_str()))),
                "event {event_id} never reached {mailbox}"
            );
        }
    }
    adapter.kill().await;
    child.kill().await;
    fake.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_ends_gives_its_leases_back_at_once() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .core(|c| c.max_streams = 1)
        .start()
        .await;
    let (event_id, delivery_id) = delivery_support::inject(&stack, "RR8MBX01", b"<Bundle/>").await;
    let mut deliveries = stack.deliveries();
    let request = pb::StreamDeliveriesRequest {
        consumer: "test".into(),
        max_in_flight: 4,
        ..Default::default()
    };
    let mut stream = deliveries
        .stream_deliveries(request.clone())
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap().delivery.unwrap();
    assert_eq!((first.delivery_id, first.attempt), (delivery_id, 1));
    // One stream at a time here: a second is refused while the first is open.
    let refused = deliveries
        .stream_deliveries(request.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // The adapter goes away: its lease is given back (not held for the 5-minute lease).
    drop(stream);
    let row =
        delivery_support::wait_for_state(&stack, &event_id, delivery_id, pb::DeliveryState::Queued)
            .await;
    assert_eq!(row.attempts, 1);
    // The next stream (the cap is free again) gets it as attempt 2 at once.
    let mut stream = eventually("a new stream admitted", WAIT, || {
        let mut deliveries = deliveries.clone();
        let request = request.clone();
        async move { deliveries.stream_deliveries(request).await.ok() }
    })
    .await
    .into_inner();
    let again = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("handed out again at once")
        .unwrap()
        .unwrap()
        .delivery
        .unwrap();
    assert_eq!(
        (again.delivery_id, again.attempt, again.failures),
        (delivery_id, 2, 0)
    );
    // A late retry for the given-back attempt is stale; the current attempt's Sent settles.
    let stale = deliveries
        .complete_delivery(pb::CompleteDeliveryRequest {
            delivery_id,
            attempt: 1,
            outcome: Some(pb::complete_delivery_request::Outcome::Retry(
                pb::DeliveryRetry {
                    code: "503".into(),
                    reason: "busy".into(),
                    retry_after: None,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.state(), pb::DeliveryState::InFlight);
    let done = deliveries
        .complete_delivery(pb::CompleteDeliveryRequest {
            delivery_id,
            attempt: 2,
            outcome: Some(pb::complete_delivery_request::Outcome::Sent(
                pb::DeliverySent {
                    mesh_message_id: "M1".into(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state(), pb::DeliveryState::Delivered);
    drop(stream);
    stack.shutdown().await;
}
