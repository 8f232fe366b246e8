//! Run-time visibility (issue 14): a folder sink that cannot write turns `/readyz` false
//! (and logs a warning, without patient data), and turns it true again once it can write
//! and the held delivery is written.
//!
//! Readiness checks are process-wide; nextest runs each test in its own process.

use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_e2e::stack::TestStack;
use tokio::net::TcpListener;

use crate::delivery_support::{WAIT, inject};

/// `/readyz` of this process: `Ok(())` when ready, else `Err(body)`.
async fn ready(client: &HttpClient) -> Result<(), String> {
    let response = client.get("/readyz", &[]).await;
    match response.status {
        200 => Ok(()),
        503 => Err(response.text()),
        other => panic!("/readyz answered {other}"),
    }
}

#[tokio::test]
async fn a_folder_sink_that_cannot_write_turns_readiness_false_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    // The outbox path runs through a regular file: nothing can be created under it.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"a file").unwrap();
    let outbox = blocker.join("outbox");
    let stack = TestStack::builder()
        .adapter({
            let outbox = outbox.clone();
            move |c| {
                c.folder = outbox;
                c.retry_initial = std::time::Duration::from_millis(20);
                c.retry_max_delay = std::time::Duration::from_millis(100);
            }
        })
        .start()
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = HttpClient::new(listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nems_cli::ops::serve(listener, async {
        let _ = stopped.await;
    }));

    // Unready at once (the folder could not be made at start), and still while a delivery
    // fails to be written.
    inject(&stack, "RR8MBX01", b"<Bundle/>").await;
    let body = eventually("readiness to say the folder sink fails", WAIT, || async {
        ready(&ops)
            .await
            .err()
            .filter(|b| b.contains("folder: folder sink cannot write"))
    })
    .await;
    assert!(!body.contains("9912003888"), "{body}");
    assert!(!outbox.exists());

    // The folder becomes writable: the held delivery is written and readiness returns.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir_all(&outbox).unwrap();
    eventually("the held delivery written", WAIT, || {
        let outbox = outbox.clone();
        async move {
            nems_e2e::outbox::read(&outbox)
                .iter()
                .any(|d| d.mailbox == "RR8MBX01" && d.payload == b"<Bundle/>")
                .then_some(())
        }
    })
    .await;
    eventually("readiness back", WAIT, || async { ready(&ops).await.ok() }).await;
    let _ = stop.send(());
    server.await.unwrap();
    stack.shutdown().await;
}
