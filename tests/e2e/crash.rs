//! Crash safety of acceptance (reliability.md §5.2): core runs as a child process under
//! concurrent publish load and is killed with SIGKILL at random moments, several times,
//! restarting on the same data directory. Afterwards every event that was acknowledged
//! has exactly its expected deliveries (one per matching mailbox, none missing, none
//! extra) and its payload, and every delivery in the ledger belongs to a stored event with
//! its payload. The random seed is printed so a failure can be replayed (`NEMS_CRASH_SEED`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nems_e2e::events::{nhs_number, vaccination};
use nems_e2e::spine::{self, SUBSCRIBER};
use nems_e2e::stack::TEST_DIRECTORY;
use nems_proto::v1 as pb;
use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

const PATIENTS: u64 = 12;
const ROUNDS: usize = 6;
const PUBLISHERS: usize = 8;

struct CoreChild {
    process: Child,
    service: SocketAddr,
    operator: SocketAddr,
}

impl CoreChild {
    async fn start(data_dir: &std::path::Path, directory: &std::path::Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nems-test-core"));
        // The backend matrix: the same database for every restart on this data directory.
        if let Some(url) = nems_e2e::postgres::test_database(data_dir).await {
            command.env("NEMS_DATABASE_URL", url);
        }
        let mut process = command
            .arg(data_dir)
            .arg(directory)
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
        let service = parts.next().unwrap().parse().unwrap();
        let operator = parts.next().unwrap().parse().unwrap();
        CoreChild {
            process,
            service,
            operator,
        }
    }

    fn channel(addr: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    async fn kill(mut self) {
        self.process.start_kill().expect("SIGKILL the core child");
        self.process.wait().await.expect("reap the core child");
    }
}

/// Which mailboxes subscribe to patient `i` (RR8MBX01 always, 02 for even, 03 for multiples of 3).
fn mailboxes_for(i: u64) -> BTreeSet<String> {
    let mut set = BTreeSet::from(["RR8MBX01".to_string()]);
    if i.is_multiple_of(2) {
        set.insert("RR8MBX02".into());
    }
    if i.is_multiple_of(3) {
        set.insert("RR8MBX03".into());
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    #[allow(clippy::disallowed_methods, reason = "test seed override")]
    let seed: u64 = std::env::var("NEMS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (replay with NEMS_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    std::fs::write(&directory, TEST_DIRECTORY).unwrap();
    let data = dir.path().join("db");

    let mut child = CoreChild::start(&data, &directory).await;
    let mut subscriptions = SubscriptionServiceClient::new(CoreChild::channel(child.service));
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
    let messages: Vec<(pb::EventMessage, Vec<u8>)> = (0..PATIENTS)
        .map(|i| {
            let xml = vaccination(&nhs_number(i), "2015-06-01", 2_000);
            (
                nems_edge::translate::bundle::extract(xml.as_bytes()).unwrap(),
                xml.into_bytes(),
            )
        })
        .collect();
    let messages = Arc::new(messages);
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();

    for round in 0..ROUNDS {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let channel = CoreChild::channel(child.service);
            let (messages, acked, stop) = (messages.clone(), acked.clone(), stop.clone());
            publishers.push(tokio::spawn(async move {
                let mut client = EventServiceClient::new(channel);
                let mut n = p as u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
        // The crash point is random: this delay is the fault injection, not a wait for an effect.
        let crash_after = Duration::from_millis(rng.random_range(50..400));
        tokio::time::sleep(crash_after).await;
        child.kill().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for p in publishers {
            p.await.unwrap();
        }
        eprintln!(
            "round {round}: killed after {crash_after:?}, {} events acknowledged so far",
            acked.lock().unwrap().len()
        );
        child = CoreChild::start(&data, &directory).await;
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load produced too few acknowledged events ({})",
        acked.len()
    );
    let mut operator = OperatorServiceClient::new(CoreChild::channel(child.operator));
    for (event_id, patient) in &acked {
        let event = operator
            .get_event(pb::GetEventRequest {
                event_id: event_id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged event {event_id} lost: {s}"))
            .into_inner();
        let mailboxes: Vec<String> = event.deliveries.iter().map(|d| d.mailbox.clone()).collect();
        let unique: BTreeSet<String> = mailboxes.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            mailboxes.len(),
            "event {event_id} has duplicate deliveries: {mailboxes:?}"
        );
        assert_eq!(
            unique,
            mailboxes_for(*patient),
            "event {event_id} has the wrong deliveries"
        );
        assert!(
            event.event.unwrap().payload_held,
            "event {event_id} lost its payload"
        );
        for d in &event.deliveries {
            assert_eq!(d.state(), pb::DeliveryState::Queued, "event {event_id}");
        }
    }
    // Every delivery in the ledger (acknowledged or not) belongs to a complete event.
    let mut token = String::new();
    let mut seen = 0usize;
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
            let event = operator
                .get_event(pb::GetEventRequest {
                    event_id: d.event_id.clone(),
                })
                .await
                .unwrap_or_else(|s| panic!("delivery {} without its event: {s}", d.delivery_id))
                .into_inner();
            assert!(
                event.event.unwrap().payload_held,
                "delivery {} without its payload",
                d.delivery_id
            );
        }
        seen += page.deliveries.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: usize = acked.values().map(|p| mailboxes_for(*p).len()).sum();
    assert!(
        seen >= expected,
        "ledger has {seen} deliveries, fewer than the {expected} acknowledged"
    );
    child.kill().await;
}
