//! High availability on PostgreSQL (issue 13 §3): two cores, each a child process, on one
//! database behind one edge whose `core_url` names both. Under publish load through the
//! edge, core A is killed with SIGKILL; publishing goes on through core B, and every event
//! the edge acknowledged is stored with exactly its deliveries (one per subscribed
//! mailbox) and its payload.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nems_e2e::events::{nhs_number, vaccination};
use nems_e2e::postgres::PgCluster;
use nems_e2e::spine::{self, SUBSCRIBER};
use nems_e2e::stack::TEST_DIRECTORY;
use nems_edge::EdgeConfig;
use nems_proto::v1 as pb;
use nems_proto::v1::bundle_service_client::BundleServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

const PATIENTS: u64 = 8;
const PUBLISHERS: usize = 8;

struct CoreChild {
    process: Child,
    service: SocketAddr,
    operator: SocketAddr,
}

impl CoreChild {
    async fn start(url: &str, data: &std::path::Path, directory: &std::path::Path) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_nems-test-core"))
            .arg(data)
            .arg(directory)
            .env("NEMS_DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the core child");
        let stdout = process.stdout.take().expect("child stdout");
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("core child ready in time")
        .expect("read the ready line")
        .expect("a ready line");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("READY"), "{line}");
        CoreChild {
            process,
            service: parts.next().unwrap().parse().unwrap(),
            operator: parts.next().unwrap().parse().unwrap(),
        }
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Which mailboxes subscribe to patient `i`.
fn mailboxes_for(i: u64) -> BTreeSet<String> {
    let mut set = BTreeSet::from(["RR8MBX01".to_string()]);
    if i.is_multiple_of(2) {
        set.insert("RR8MBX02".into());
    }
    set
}

/// A database for this test: in the matrix's cluster, or in a cluster of its own.
async fn database(test: &'static str) -> Option<(Option<PgCluster>, String)> {
    let dir = std::env::temp_dir().join(format!("nems-{test}-{}", std::process::id()));
    if let Some(url) = nems_e2e::postgres::test_database(&dir).await {
        return Some((None, url));
    }
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start(test))
        .await
        .unwrap()?;
    let url = cluster.create_database("nems_ha").await;
    Some((Some(cluster), url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_cores_loses_no_acknowledged_event() {
    let Some((_cluster, url)) = database("ha_two_cores").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    std::fs::write(&directory, TEST_DIRECTORY).unwrap();
    let a = CoreChild::start(&url, &dir.path().join("a"), &directory).await;
    let b = CoreChild::start(&url, &dir.path().join("b"), &directory).await;

    // Subscriptions created through core B are seen by core A: one database.
    let mut subscriptions = SubscriptionServiceClient::new(channel(b.service));
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

    // One edge in front of both cores, A first.
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let http = TcpListener::bind(loopback).await.unwrap();
    let grpc = TcpListener::bind(loopback).await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let edge_config = EdgeConfig {
        listen: http.local_addr().unwrap(),
        core_url: format!("http://{},http://{}", a.service, b.service),
        base_url: format!("http://{}", http.local_addr().unwrap()),
        core_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let (stop_edge, edge_stopped) = tokio::sync::oneshot::channel::<()>();
    let edge = tokio::spawn(nems_edge::run_with_grpc(
        edge_config,
        http,
        Some(grpc),
        async move {
            let _ = edge_stopped.await;
        },
    ));

    let acked: Arc<Mutex<HashMap<String, (u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (acked, stop) = (acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut client = BundleServiceClient::new(channel(grpc_addr));
            let mut n = p as u64;
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = n % PATIENTS;
                n += PUBLISHERS as u64;
                let request = pb::PublishBundleRequest {
                    caller: Some(spine::pb_caller(SUBSCRIBER)),
                    interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
                    bundle: vaccination(&nhs_number(i), "2015-06-01", 1_000)
                        .into_bytes()
                        .into(),
                };
                match client.publish_bundle(request).await {
                    Ok(response) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(response.into_inner().event_id, (i, Instant::now()));
                    }
                    // Not acknowledged (core A died under it): no promise was made.
                    Err(_) => {
                        refused += 1;
                        tokio::task::yield_now().await;
                    }
                }
            }
            refused
        }));
    }
    // Load first on A, then A dies; the waits are the load's duration, not synchronisation.
    let before = wait_for_acks(&acked, 100).await;
    let mut a = a;
    a.process.start_kill().expect("SIGKILL core A");
    a.process.wait().await.expect("reap core A");
    let killed = Instant::now();
    wait_for_acks(&acked, before + 200).await;
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for p in publishers {
        refused += p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let after_kill = acked.values().filter(|(_, at)| *at > killed).count();
    let first_after = acked
        .values()
        .filter(|(_, at)| *at > killed)
        .map(|(_, at)| at.duration_since(killed))
        .min();
    eprintln!(
        "{} events acknowledged, {after_kill} after core A was killed (first {first_after:?} after), {refused} publishes refused",
        acked.len()
    );
    assert!(after_kill >= 200, "publishing did not go on through core B");

    // Every acknowledged event is complete, whichever core took it.
    let mut operator = OperatorServiceClient::new(channel(b.operator));
    for (event_id, (patient, _)) in &acked {
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
            "duplicate deliveries of {event_id}"
        );
        assert_eq!(unique, mailboxes_for(*patient), "deliveries of {event_id}");
        assert!(event.event.unwrap().payload_held, "payload of {event_id}");
    }
    let _ = stop_edge.send(());
    let _ = edge.await;
    let mut b = b;
    let _ = b.process.start_kill();
    let _ = b.process.wait().await;
}

/// Returns once at least `n` events are acknowledged (polling the shared map the
/// publishers fill), with how many there are.
async fn wait_for_acks(acked: &Mutex<HashMap<String, (u64, Instant)>>, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = acked.lock().unwrap().len();
        if have >= n {
            return have;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} events acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
