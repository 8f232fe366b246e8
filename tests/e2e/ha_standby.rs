//! Failover of PostgreSQL itself (issue 13 §3): a primary with a synchronous streaming
//! standby, core's `database_url` naming both (`target_session_attrs=read-write`). Under
//! publish load the primary is killed (`pg_ctl -m immediate`) and the standby promoted:
//! core reconnects by itself, publishing goes on, and every event core acknowledged before
//! or after is on the new primary with its deliveries.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nems_core::{Core, CoreConfig, CoreListeners};
use nems_e2e::events::{nhs_number, vaccination};
use nems_e2e::postgres::PgCluster;
use nems_e2e::spine::{self, SUBSCRIBER};
use nems_e2e::stack::TEST_DIRECTORY;
use nems_proto::v1 as pb;
use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

const PATIENTS: u64 = 6;
const PUBLISHERS: usize = 6;

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Returns once at least `n` events are acknowledged, with how many there are.
async fn wait_for_acks(acked: &Mutex<HashMap<String, u64>>, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let have = acked.lock().unwrap().len();
        if have >= n {
            return have;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} events acknowledged in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_the_synchronous_standby_loses_no_acknowledged_event() {
    let primary = match tokio::task::spawn_blocking(|| PgCluster::start("ha_standby_promotion"))
        .await
        .unwrap()
    {
        Some(p) => Arc::new(p),
        None => return,
    };
    primary.create_database("nems").await;
    let p = primary.clone();
    let standby = tokio::task::spawn_blocking(move || p.standby(true))
        .await
        .unwrap();
    let url = format!(
        "postgres://nems@127.0.0.1:{},127.0.0.1:{}/nems?target_session_attrs=read-write&connect_timeout=2",
        primary.port, standby.port
    );

    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    std::fs::write(&directory, TEST_DIRECTORY).unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = CoreConfig {
        listen: loopback,
        operator_listen: loopback,
        data_dir: dir.path().join("db"),
        database_url: Some(url),
        directory_file: Some(directory),
        ..Default::default()
    };
    let listeners = CoreListeners {
        service: TcpListener::bind(loopback).await.unwrap(),
        operator: TcpListener::bind(loopback).await.unwrap(),
    };
    let (service, operator_addr) = listeners.addrs().unwrap();
    let core = Core::open(config).await.expect("core opens on the primary");
    let (stop_core, core_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(core.serve(listeners, async move {
        let _ = core_stopped.await;
    }));

    let mut subscriptions = SubscriptionServiceClient::new(channel(service));
    for i in 0..PATIENTS {
        let criteria = spine::explicit(&nhs_number(i), &["vaccinations-1"], "");
        subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                caller: Some(spine::pb_caller(SUBSCRIBER)),
                subscription: Some(spine::subscription_pb("RR8", "RR8MBX01", &criteria)),
            })
            .await
            .expect("subscription created");
    }

    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (acked, stop) = (acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut client = EventServiceClient::new(channel(service));
            let mut n = p as u64;
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = n % PATIENTS;
                n += PUBLISHERS as u64;
                let xml = vaccination(&nhs_number(i), "2015-06-01", 1_000);
                let request = pb::PublishEventRequest {
                    caller: Some(spine::pb_caller(SUBSCRIBER)),
                    interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
                    message: Some(nems_edge::translate::bundle::extract(xml.as_bytes()).unwrap()),
                    payload: xml.into_bytes().into(),
                };
                match client.publish_event(request).await {
                    Ok(response) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(response.into_inner().event_id, i);
                    }
                    // Refused while the database fails over: no promise was made.
                    Err(_) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            refused
        }));
    }
    let before = wait_for_acks(&acked, 100).await;
    let p = primary.clone();
    tokio::task::spawn_blocking(move || p.kill()).await.unwrap();
    let killed = Instant::now();
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote();
        standby
    })
    .await
    .unwrap();
    let promoted = killed.elapsed();
    let resumed = wait_for_acks(&acked, before + 1).await;
    let back_after = killed.elapsed();
    wait_for_acks(&acked, resumed + 100).await;
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for p in publishers {
        refused += p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} events acknowledged ({before} before the primary died); standby promoted after \
         {promoted:?}, publishing again {back_after:?} after the kill; {refused} publishes refused meanwhile",
        acked.len()
    );

    let mut operator = OperatorServiceClient::new(channel(operator_addr));
    for (event_id, patient) in &acked {
        let event = operator
            .get_event(pb::GetEventRequest {
                event_id: event_id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged event {event_id} lost in the failover: {s}"))
            .into_inner();
        let mailboxes: BTreeSet<String> =
            event.deliveries.iter().map(|d| d.mailbox.clone()).collect();
        assert_eq!(
            mailboxes,
            BTreeSet::from(["RR8MBX01".to_string()]),
            "deliveries of {event_id} (patient {patient})"
        );
        assert!(event.event.unwrap().payload_held, "payload of {event_id}");
    }
    let _ = stop_core.send(());
    let _ = serving.await;
    drop(standby);
}
