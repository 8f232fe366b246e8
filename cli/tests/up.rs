//! `nems up`, the README's run command, as a user meets it: the real binary on embedded
//! defaults (sample directory, synthetic reference data, folder sink) in a fresh directory.
//! It serves the FHIR API and the ops endpoint, delivers a published event to the folder
//! sink, stops cleanly on SIGTERM, and finds its subscriptions again after a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nems_e2e::events::vaccination;
use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_e2e::outbox;
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_proto::v1 as pb;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const NHS: &str = "9434765919";
const XML: &str = "application/fhir+xml";

struct Up {
    child: Child,
    edge: SocketAddr,
    core: SocketAddr,
    operator: SocketAddr,
    ops: SocketAddr,
    /// The console's URL, as the banner prints it.
    console: String,
}

/// The address after `marker` on a ready line (`http://` and any path stripped).
fn address(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split_once(marker)?.1.trim_start();
    let word = rest.split_whitespace().next()?;
    word.trim_start_matches("http://")
        .split('/')
        .next()?
        .parse()
        .ok()
}

async fn start(dir: &Path) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nems"))
        .arg("up")
        .current_dir(dir)
        .env("NEMS_DATA_DIR", dir.join("data"))
        .env("NEMS_OUTBOX_DIR", dir.join("outbox"))
        .env("NEMS_EDGE_LISTEN", "127.0.0.1:0")
        .env("NEMS_CORE_LISTEN", "127.0.0.1:0")
        .env("NEMS_CORE_OPERATOR_LISTEN", "127.0.0.1:0")
        .env("NEMS_OPS_LISTEN", "127.0.0.1:0")
        .env("NEMS_LOG", "warn")
        .env_remove("NEMS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start nems up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut edge, mut core, mut operator, mut ops) = (None, None, None, None);
    let mut console = None;
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            edge = edge.or_else(|| address(&line, "FHIR API"));
            core = core.or_else(|| address(&line, "core gRPC"));
            operator = operator.or_else(|| address(&line, "operator"));
            ops = ops.or_else(|| address(&line, "ops"));
            if line.trim_start().starts_with("console") {
                console = line.split_whitespace().nth(1).map(str::to_owned);
            }
            if line.contains("Ctrl-C stops all three") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "nems up did not print its ready lines");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Up {
        child,
        edge: edge.expect("FHIR API address on the ready lines"),
        core: core.expect("core address on the ready lines"),
        operator: operator.expect("operator address on the ready lines"),
        ops: ops.expect("ops address on the ready lines"),
        console: console.expect("console URL on the ready lines"),
    }
}

/// SIGTERM, then the process must exit successfully on its own.
async fn stop(mut up: Up) {
    let pid = up.child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), up.child.wait())
        .await
        .expect("nems up stopped within a minute of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "nems up exited with {exit}");
}

#[tokio::test]
async fn up_serves_delivers_stops_cleanly_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path()).await;
    let http = HttpClient::new(up.edge);

    let metadata = http.get("/STU3/metadata", &[]).await;
    assert_eq!(metadata.status, 200);
    assert!(metadata.text().contains("CapabilityStatement"));
    let ops = HttpClient::new(up.ops);
    eventually("readyz", Duration::from_secs(30), || async {
        (ops.get("/readyz", &[]).await.status == 200).then_some(())
    })
    .await;
    // The banner's console URL is the ops listener's, and its overview answers.
    assert_eq!(up.console, format!("http://{}/console/", up.ops));
    let overview = ops.get("/console/", &[]).await;
    assert_eq!(overview.status, 200);
    assert!(
        overview.text().contains("Events accepted"),
        "{}",
        overview.text()
    );

    // A subscriber from the sample directory subscribes; a publisher publishes.
    let criteria = spine::explicit(NHS, &["vaccinations-1"], "");
    let created = http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, XML, None),
            spine::subscription_xml("RR8", "RR8MBX01", &criteria),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").expect("Location").to_string();
    let path = location
        .find("/STU3/")
        .map(|i| location[i..].to_string())
        .expect("Location names /STU3/Subscription/{id}");
    let event = vaccination(NHS, "2016-05-20", 0);
    let published = http
        .post(
            "/STU3/Events/1/$process-message",
            &spine::with_media(SUBSCRIBER, Op::Publish("Vaccinations"), XML, None),
            event.clone(),
        )
        .await;
    assert_eq!(published.status, 202, "{}", published.text());
    let outbox_dir = dir.path().join("outbox");
    let delivered = eventually(
        "the delivery in the folder sink",
        Duration::from_secs(30),
        || {
            let found = outbox::read(&outbox_dir);
            async move { (!found.is_empty()).then_some(found) }
        },
    )
    .await;
    assert_eq!(delivered.len(), 1, "one delivery for one matching mailbox");
    assert_eq!(delivered[0].mailbox, "RR8MBX01");
    assert_eq!(delivered[0].payload, event.as_bytes());

    stop(up).await;

    // The same directory again: the subscription is still there.
    let up = start(dir.path()).await;
    let http = HttpClient::new(up.edge);
    let read = http
        .get(
            &path,
            &spine::with_media(SUBSCRIBER, Op::Read, XML, Some(XML)),
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert!(read.text().contains("RR8MBX01"));
    // The operator API is on its own loopback listener, not on the service listener.
    let on_service = OperatorServiceClient::new(nems_e2e::bench::channel(up.core))
        .get_status(pb::GetStatusRequest {})
        .await
        .expect_err("no operator API on the service listener");
    assert_eq!(
        on_service.code(),
        tonic::Code::Unimplemented,
        "{on_service:?}"
    );
    // The ledger kept the delivery as delivered (settled: not to be sent again).
    let mut operator = OperatorServiceClient::new(nems_e2e::bench::channel(up.operator));
    let ledger = operator
        .list_deliveries(pb::ListDeliveriesRequest::default())
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries;
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        ledger[0].state(),
        pb::DeliveryState::Delivered,
        "{:?}",
        ledger[0]
    );
    assert_eq!(outbox::read(&outbox_dir).len(), 1);
    stop(up).await;
}
