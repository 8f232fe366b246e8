//! Readiness through a MESH outage (the in-process fake drops every request unanswered):
//! `/readyz` turns unready when the adapter notices, through a delivery whose attempt fails
//! (which opens the MESH circuit and holds the delivery) or through the report poller once
//! MESH has not answered for `mesh_adapter.mesh.unready_after` while nothing is being
//! delivered, and turns ready again once MESH answers.
//!
//! Readiness checks are process-wide; nextest runs each test in its own process.

use std::time::Duration;

use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::delivery_support::{
    NHS_NUMBER, WAIT, delivery, fake, fake_stack, inject, vaccination_event, wait_for_state,
};

/// The tiny `unready_after` of these tests.
const UNREADY_AFTER: Duration = Duration::from_millis(100);

/// The readiness line of the adapter's MESH check.
const MESH_UNREACHABLE: &str = "mesh: MESH unreachable";

/// An operations endpoint (`/readyz`) in this process.
struct Ops {
    client: HttpClient,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Ops {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = HttpClient::new(listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nems_cli::ops::serve(listener, async {
            let _ = stopped.await;
        }));
        Self { client, stop, task }
    }

    /// `/readyz`: `Ok(())` when ready, else `Err(body)`.
    async fn ready(&self) -> Result<(), String> {
        let response = self.client.get("/readyz", &[]).await;
        match response.status {
            200 => Ok(()),
            503 => Err(response.text()),
            other => panic!("/readyz answered {other}"),
        }
    }

    async fn wait_ready(&self, what: &str) {
        eventually(what, WAIT, || async { self.ready().await.ok() }).await;
    }

    async fn wait_mesh_unready(&self, what: &str) -> String {
        eventually(what, WAIT, || async {
            self.ready()
                .await
                .err()
                .filter(|body| body.contains(MESH_UNREACHABLE))
        })
        .await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn mesh_outage_during_retries_turns_readiness_false_until_mesh_answers_again() {
    const MAILBOX: &str = "OUTAGEMB01";
    let ops = Ops::start().await;
    let fake = fake().await;
    let stack = fake_stack(&fake, &[MAILBOX])
        .adapter(|c| {
            c.mesh.unready_after = UNREADY_AFTER;
            // The poller handshakes and polls once at start, then not within the test:
            // only the delivery's attempts tell readiness about the outage.
            c.mesh.report_poll_interval = Duration::from_secs(3600);
            c.mesh.request_timeout = Duration::from_secs(2);
        })
        .start()
        .await;
    ops.wait_ready("readiness at start").await;
    // The start-up handshake and inbox poll are answered before the outage begins.
    let startup = fake.wait_for_requests(2, WAIT).await;
    assert!(startup.iter().all(|r| r.status == Some(200)), "{startup:?}");

    fake.set_unreachable(true);
    let payload = vaccination_event(NHS_NUMBER, MAILBOX).into_bytes();
    let (event_id, id) = inject(&stack, MAILBOX, &payload).await;
    // The first attempt fails as MESH as a whole fails (and so does the circuit's probe):
    // the circuit opens, readiness says so, and the delivery is held, queued and not
    // attempted again (nor charged a failure) while MESH is away.
    let (row, body) = eventually("readiness to fail with the circuit open", WAIT, || async {
        let row = delivery(&stack, &event_id, id).await;
        if row.attempts < 1 || row.state() != pb::DeliveryState::Queued {
            return None;
        }
        let body = ops.ready().await.err()?;
        (body.contains(MESH_UNREACHABLE) && body.contains("circuit open")).then_some((row, body))
    })
    .await;
    assert_eq!(
        row.attempts, 1,
        "held, not retried, while MESH is away: {row:?}"
    );
    assert!(!body.contains(NHS_NUMBER), "{body}");
    assert!(fake.messages_to(MAILBOX).is_empty());

    fake.set_unreachable(false);
    let delivered = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await;
    ops.wait_ready("readiness once MESH answers again").await;
    let stored = fake.messages_to(MAILBOX);
    assert_eq!(stored.len(), 1, "exactly one copy at MESH");
    assert_eq!(delivered.mesh_message_id, stored[0].message_id);
    // The attempt after the outage asked tracking first (attempt 2 may follow a send MESH
    // stored), and MESH answered that it had no copy.
    let lookups = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/tracking/{}", row.local_id)))
        .collect::<Vec<_>>();
    assert!(
        lookups.iter().any(|r| r.status == Some(404)),
        "the attempt after the outage asked tracking first: {lookups:?}"
    );

    stack.shutdown().await;
    ops.stop().await;
}

#[tokio::test]
async fn mesh_outage_while_idle_is_seen_by_the_report_poller() {
    let ops = Ops::start().await;
    let fake = fake().await;
    let stack = fake_stack(&fake, &[])
        .adapter(|c| {
            c.mesh.unready_after = UNREADY_AFTER;
            c.mesh.report_poll_interval = Duration::from_millis(50);
            c.mesh.request_timeout = Duration::from_secs(2);
        })
        .start()
        .await;
    ops.wait_ready("readiness at start").await;
    fake.wait_for_requests(2, WAIT).await;

    fake.set_unreachable(true);
    let body = ops
        .wait_mesh_unready("readiness to fail with nothing to deliver")
        .await;
    assert!(body.contains(MESH_UNREACHABLE), "{body}");
    assert!(fake.sends().is_empty(), "only the poller talked to MESH");
    let polled = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/inbox") && r.status.is_none())
        .count();
    assert!(polled >= 1, "the poller's inbox polls went unanswered");

    fake.set_unreachable(false);
    ops.wait_ready("readiness once the poller reaches MESH again")
        .await;

    stack.shutdown().await;
    ops.stop().await;
}
