//! Disk full (issue 11 §4): core's data directory on a small tmpfs that a filler file fills.
//! Publishes are accepted until the store cannot write; from the first refusal on, every
//! publish (and every other call that needs the store) is answered `503` with
//! `Retry-After` and a Spine OperationOutcome (gRPC: `UNAVAILABLE` with a retry delay),
//! readiness is false naming the store and the cause; once the filler is removed core
//! reopens the store by itself, readiness turns true and publishes are accepted again with
//! no restart. Every event acknowledged (before the fill, up to the failure, after it) is
//! delivered; no refused event is.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`); without it the test prints a notice and passes
//! without checking anything. The tmpfs is unmounted by a guard, panics included.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nems_e2e::events::vaccination;
use nems_e2e::eventually::eventually;
use nems_e2e::http::{HttpClient, HttpResponse};
use nems_e2e::outbox;
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;
use tokio::net::TcpListener;

use crate::publish_common::{FHIR_XML, PUBLISH_PATH};
use crate::subscription_api::{Fmt, outcome};

/// Size of the tmpfs holding core's data directory.
const TMPFS_MIB: u32 = 24;
/// The NHS number every event is about.
const NHS: &str = "9434765919";
/// The Bundle id of the fixture, replaced to make each event's payload unique.
const BUNDLE_ID: &str = "6e824ff8-9b0a-11e8-9eb6-529269fb1459";
/// Most publishes tried on the full disk before giving up on a refusal.
const MAX_PUBLISHES: usize = 5_000;
/// Publishes sent after the first refusal, each of which must be refused.
const REFUSALS: usize = 20;
/// How long recovery and delivery may take.
const WAIT: Duration = Duration::from_secs(60);

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or `None` (with a notice) when mounting is not permitted.
    #[allow(clippy::print_stderr, reason = "a skip notice is the point")]
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "NOTICE: disk-full test skipped: cannot mount a tmpfs ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("NOTICE: disk-full test skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a panic left core's file open): detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the filesystem of `dir` with one file until a write fails for lack of space.
fn fill(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler file");
    let chunk = vec![0xA5u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // Not even a byte more.
    assert!(file.write(&[0]).is_err(), "the filesystem is not full");
    (path, written)
}

/// The payload of event `n`: the vaccinations fixture with a Bundle id of its own.
fn event(n: usize) -> (String, String) {
    let id = format!("6e824ff8-9b0a-11e8-9eb6-{n:012}");
    let body = vaccination(NHS, "2016-05-20", 8_000);
    assert!(body.contains(BUNDLE_ID));
    (id.clone(), body.replacen(BUNDLE_ID, &id, 1))
}

async fn publish(stack: &TestStack, body: String) -> HttpResponse {
    let headers = spine::with_media(SUBSCRIBER, Op::Publish("Vaccinations"), FHIR_XML, None);
    stack.http.post(PUBLISH_PATH, &headers, body).await
}

/// Asserts a refusal: `503`, `Retry-After` in seconds, a Spine OperationOutcome.
fn assert_unavailable(r: &HttpResponse, what: &str) {
    outcome(r, Fmt::Xml, 503, "INTERNAL_SERVER_ERROR", "transient");
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After: {e}"));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
}

/// `/readyz` of this process: `Ok(())` when ready, else the body.
async fn ready(ops: &HttpClient) -> Result<(), String> {
    let r = ops.get("/readyz", &[]).await;
    match r.status {
        200 => Ok(()),
        503 => Err(r.text()),
        other => panic!("/readyz answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_with_503_and_recovers_by_itself_when_space_returns() {
    // About redb's file on a full filesystem: nothing of it applies to a PostgreSQL store.
    if nems_e2e::postgres::matrix("a_full_disk_is_refused_with_503") {
        return;
    }
    let Some(tmpfs) = Tmpfs::mount(TMPFS_MIB) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = HttpClient::new(listener.local_addr().unwrap());
    let (stop_ops, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops_task = tokio::spawn(nems_cli::ops::serve(listener, async {
        let _ = ops_stopped.await;
    }));
    let data = tmpfs.path().join("db");
    let stack = TestStack::builder()
        .core(move |c| {
            c.data_dir = data;
            c.reopen_min_free_mib = 4;
        })
        .start()
        .await;
    let created = stack
        .http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, FHIR_XML, None),
            spine::subscription_xml(
                "RR8",
                "RR8MBX01",
                &spine::explicit(NHS, &["vaccinations-1"], ""),
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    eventually("readiness at start", WAIT, || async {
        ready(&ops).await.ok()
    })
    .await;

    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut n = 0usize;
    for _ in 0..20 {
        let (id, body) = event(n);
        n += 1;
        let r = publish(&stack, body).await;
        assert_eq!(r.status, 202, "before the fill: {}", r.text());
        acked.push(id);
    }

    let (filler, filled) = fill(tmpfs.path());
    let acked_before_fill = acked.len();
    // Publish until the store cannot write; from the first refusal on, every one is refused.
    let mut accepted_on_full_disk = 0usize;
    while refused.is_empty() {
        assert!(
            n < acked_before_fill + MAX_PUBLISHES,
            "{MAX_PUBLISHES} publishes accepted on a full disk"
        );
        let (id, body) = event(n);
        n += 1;
        let r = publish(&stack, body).await;
        if r.status == 202 {
            acked.push(id);
            accepted_on_full_disk += 1;
        } else {
            assert_unavailable(&r, "the first refusal");
            refused.push(id);
        }
    }
    for i in 0..REFUSALS {
        let (id, body) = event(n);
        n += 1;
        let r = publish(&stack, body).await;
        assert_unavailable(&r, &format!("refusal {}", i + 2));
        refused.push(id);
    }
    // Other calls that need the store are refused the same way.
    let create = stack
        .http
        .post(
            "/STU3/Subscription",
            &spine::with_media(SUBSCRIBER, Op::Create, FHIR_XML, None),
            spine::subscription_xml(
                "RR8",
                "RR8MBX02",
                &spine::explicit(NHS, &["vaccinations-1"], ""),
            ),
        )
        .await;
    assert_unavailable(&create, "a subscription create");
    let (id, body) = event(n);
    n += 1;
    let grpc = stack
        .events()
        .publish_event(pb::PublishEventRequest {
            caller: Some(spine::pb_caller(SUBSCRIBER)),
            interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
            message: Some(nems_edge::translate::bundle::extract(body.as_bytes()).unwrap()),
            payload: body.into_bytes().into(),
        })
        .await
        .expect_err("a gRPC publish on a full disk");
    assert_eq!(grpc.code(), tonic::Code::Unavailable, "{grpc:?}");
    assert!(
        nems_proto::spine::retry_after_of(&grpc).is_some_and(|d| d >= Duration::from_secs(1)),
        "{grpc:?}"
    );
    refused.push(id);
    let why = ready(&ops)
        .await
        .expect_err("unready while the store is failed");
    assert!(why.contains("core-store"), "{why}");
    assert!(why.contains("No space left on device"), "{why}");

    // Space returns: the store reopens by itself, with no restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    eventually("readiness after space returned", WAIT, || async {
        ready(&ops).await.ok()
    })
    .await;
    let ready_after = freed.elapsed();
    let mut after = 0usize;
    while after < 20 {
        let (id, body) = event(n);
        n += 1;
        let r = publish(&stack, body).await;
        assert_eq!(r.status, 202, "after recovery: {}", r.text());
        acked.push(id);
        after += 1;
    }
    let accepting_after = freed.elapsed();

    // Every acknowledged event is delivered; no refused one is.
    let delivered = eventually("every acknowledged event delivered", WAIT, || async {
        let delivered: BTreeSet<String> = outbox::read(&stack.outbox)
            .into_iter()
            .filter(|d| d.mailbox == "RR8MBX01")
            .filter_map(|d| {
                let text = String::from_utf8(d.payload).ok()?;
                let at = text.find("6e824ff8-9b0a-11e8-9eb6-")?;
                Some(text[at..at + 36].to_string())
            })
            .collect();
        acked
            .iter()
            .all(|id| delivered.contains(id))
            .then_some(delivered)
    })
    .await;
    for id in &refused {
        assert!(!delivered.contains(id), "refused event {id} was delivered");
    }
    assert_eq!(
        delivered.len(),
        acked.len(),
        "only acknowledged events delivered"
    );
    let metrics = ops.get("/metrics", &[]).await.text();
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let reopens = counter("nems_store_reopens_total");
    let store_refusals = counter("nems_store_refusals_total");
    assert!(reopens >= 1.0, "the store was reopened");
    assert!(
        store_refusals >= refused.len() as f64,
        "{store_refusals} store refusals counted for {} refused",
        refused.len()
    );
    eprintln!(
        "disk full: {reopens} reopenings, {store_refusals} store refusals counted; tmpfs {TMPFS_MIB} MiB, filler {} KiB; {acked_before_fill} accepted before \
         the fill, {accepted_on_full_disk} accepted after it before the first refusal, \
         {} refused (all 503); ready again {ready_after:?} after space returned, 20 accepted \
         by {accepting_after:?}; {} acknowledged events all delivered",
        filled >> 10,
        refused.len(),
        acked.len()
    );

    stack.shutdown().await;
    let _ = stop_ops.send(());
    ops_task.await.unwrap();
    drop(tmpfs);
}
