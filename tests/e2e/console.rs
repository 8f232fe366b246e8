//! The operations console in a real headless Chromium (`nems_e2e::browser`), against a
//! stack with data: every page opens and shows what the operator API says, a dead letter
//! redriven from its page moves to queued and then to delivered, a whole mailbox is
//! redriven after a confirmation page, the redrives are in the audit page with who made
//! them, no list page shows an NHS number, and the console refuses everyone where the
//! operator API requires operator credentials. Each page's screenshot is saved in
//! `target/console-screenshots/`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nems_cli::console::{Access, Console, Tokens};
use nems_e2e::browser::{Browser, screenshot_dir};
use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_e2e::mesh_fake::Behaviour;
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;
use tokio::net::TcpListener;

use nems_e2e::mesh_sandbox::{MeshSandbox, RECIPIENT_MAILBOXES};
use nems_e2e::pki::{self, TestPki};
use nems_e2e::tools;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_runtime::tls::{ClientTls, ServerTls};
use tonic::transport::Endpoint;

use crate::delivery_sandbox::sandbox_stack_with;
use crate::delivery_support::{
    NHS_NUMBER, WAIT, deliveries_to, fake, fake_stack, inject, publish, subscribe,
    vaccination_event,
};
use nems_e2e::spine;

const OK: &str = "CONOKMB01";
const DEAD: &str = "CONDEADMB01";

/// Serves the console of `stack` (plain operator API, open on loopback) on a loopback
/// port until `stop` is dropped; its base URL.
async fn serve_console(
    stack: &TestStack,
    access: Access,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let channel = nems_cli::remote::Remote::plain(&format!("http://{}", stack.operator_addr))
        .channel()
        .unwrap();
    serve_console_on(channel, access).await
}

/// Serves a console over the operator API at `channel`.
async fn serve_console_on(
    channel: tonic::transport::Channel,
    access: Access,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let console = Arc::new(OnceLock::new());
    let _ = console.set(Console::new(channel, access, 1_000));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nems_cli::ops::serve_with_console(
        listener,
        async move {
            let _ = stopped.await;
        },
        console,
    ));
    (format!("http://{addr}"), stop)
}

/// The state column of delivery `id`'s row on the current page.
async fn state_of(browser: &Browser, id: u64) -> String {
    browser
        .text(&format!("tr[data-id=\"{id}\"] td.state"))
        .await
}

#[tokio::test]
async fn every_page_opens_and_a_dead_letter_redriven_from_the_console_is_delivered() {
    let Some(browser) = Browser::start("console browser test").await else {
        return;
    };
    let fake = fake().await;
    fake.set_behaviour(DEAD, Behaviour::Dead);
    let stack = fake_stack(&fake, &[OK, DEAD]).start().await;
    let explicit = subscribe(
        &stack,
        OK,
        &spine::explicit(NHS_NUMBER, &["vaccinations-1"], ""),
    )
    .await;
    let generic = subscribe(
        &stack,
        DEAD,
        &spine::generic("GP_GP_GP", "B86001", "vaccinations-1", ""),
    )
    .await;
    for (mailbox, n) in [(OK, 3), (DEAD, 2)] {
        for i in 0..n {
            let payload = vaccination_event(NHS_NUMBER, &format!("console-{mailbox}-{i}"));
            inject(&stack, mailbox, payload.as_bytes()).await;
        }
    }
    let dead = eventually("the dead letters", WAIT, || async {
        let rows = deliveries_to(&stack, DEAD).await;
        let dead = rows
            .iter()
            .filter(|r| r.state() == pb::DeliveryState::DeadLettered)
            .count();
        let ok = deliveries_to(&stack, OK).await;
        let delivered = ok.iter().all(|r| r.state() == pb::DeliveryState::Delivered);
        (dead == 2 && ok.len() == 3 && delivered).then_some(rows)
    })
    .await;
    let (base, _stop) = serve_console(&stack, Access::Loopback).await;
    let shots = screenshot_dir();
    let no_nhs_number = |page: &str, html: &str| {
        assert!(!html.contains(NHS_NUMBER), "{page} shows an NHS number");
    };

    // Overview.
    browser.goto(&format!("{base}/console/")).await;
    assert_eq!(browser.title().await, "Overview · nems console");
    assert!(browser.text("#readiness").await.starts_with("Ready"));
    assert_eq!(browser.text("#events-accepted").await, "5");
    assert_eq!(browser.text("#dead-letters").await, "2");
    no_nhs_number("overview", &browser.source().await);
    browser.screenshot(&shots.join("overview.png")).await;

    // Mailboxes, sorted by dead letters: the dead mailbox first; its count links to its
    // dead letters.
    browser
        .goto(&format!("{base}/console/mailboxes?sort=dead_lettered"))
        .await;
    assert_eq!(
        browser.count("#mailboxes tr").await,
        3,
        "a header and two mailboxes"
    );
    let first = browser.text("#mailboxes tr:nth-child(2)").await;
    assert!(first.starts_with(DEAD), "{first}");
    no_nhs_number("mailboxes", &browser.source().await);
    browser.screenshot(&shots.join("mailboxes.png")).await;
    browser
        .click(&format!("a[href=\"/console/mailboxes/{OK}\"]"))
        .await;
    assert_eq!(browser.count("#deliveries tr").await, 4);
    no_nhs_number("mailbox", &browser.source().await);
    browser.screenshot(&shots.join("mailbox.png")).await;

    // Dead letters of one mailbox, with MESH's code and text.
    browser
        .goto(&format!("{base}/console/dead-letters?mailbox={DEAD}"))
        .await;
    assert_eq!(browser.count("#deliveries tr").await, 3);
    let (one, two) = (dead[0].delivery_id, dead[1].delivery_id);
    let row = browser.text(&format!("tr[data-id=\"{one}\"]")).await;
    assert!(row.contains("12"), "the MESH error code: {row}");
    no_nhs_number("dead letters", &browser.source().await);
    browser.screenshot(&shots.join("dead-letters.png")).await;

    // Redrive one while MESH answers 503: it is queued again (with its retry), then
    // delivered once MESH accepts.
    fake.set_behaviour(
        DEAD,
        Behaviour::Fail {
            times: u32::MAX,
            status: 503,
            retry_after: Some("1".into()),
        },
    );
    browser
        .click(&format!("tr[data-id=\"{one}\"] button.redrive"))
        .await;
    assert_eq!(
        browser.text("#message").await,
        format!("Delivery {one} is queued again.")
    );
    assert_eq!(
        browser.count("#deliveries tr").await,
        2,
        "one dead letter left"
    );
    let mailbox_page = format!("{base}/console/mailboxes/{DEAD}");
    browser.goto(&mailbox_page).await;
    assert!(
        ["queued", "in-flight"].contains(&state_of(&browser, one).await.as_str()),
        "redriven: queued again"
    );
    browser.screenshot(&shots.join("redriven-queued.png")).await;
    fake.set_behaviour(DEAD, Behaviour::Accept);
    eventually("the redriven delivery to be delivered", WAIT, || async {
        browser.goto(&mailbox_page).await;
        (state_of(&browser, one).await == "delivered").then_some(())
    })
    .await;
    browser
        .screenshot(&shots.join("redriven-delivered.png"))
        .await;

    // Redrive the rest of the mailbox, after a confirmation page.
    browser
        .goto(&format!("{base}/console/dead-letters?mailbox={DEAD}"))
        .await;
    browser.click("#redrive-all").await;
    browser
        .wait_for_title("Confirm redrive · nems console")
        .await;
    browser.screenshot(&shots.join("redrive-confirm.png")).await;
    browser.click("#confirm").await;
    assert_eq!(
        browser.text("#message").await,
        format!("1 dead letters of {DEAD} are queued again.")
    );
    eventually("the mailbox to be delivered", WAIT, || async {
        browser.goto(&mailbox_page).await;
        (state_of(&browser, two).await == "delivered").then_some(())
    })
    .await;

    // Subscriptions: every list hides the NHS number; a search by NHS number (a POST
    // form) shows the one typed; by mailbox finds that mailbox's.
    browser.goto(&format!("{base}/console/subscriptions")).await;
    assert_eq!(browser.count("#subscriptions tr").await, 3);
    let row = browser.text(&format!("tr[data-id=\"{explicit}\"]")).await;
    assert!(row.contains("NHS number not shown"), "{row}");
    no_nhs_number("subscriptions", &browser.source().await);
    browser.screenshot(&shots.join("subscriptions.png")).await;
    browser
        .goto(&format!(
            "{base}/console/subscriptions?by=mailbox&q={}",
            DEAD.to_lowercase()
        ))
        .await;
    assert_eq!(browser.count("#subscriptions tr").await, 2);
    assert_eq!(
        browser.count(&format!("tr[data-id=\"{generic}\"]")).await,
        1
    );
    browser
        .goto(&format!(
            "{base}/console/subscriptions?by=rule&rule=gp-gp-gp&q=B86001"
        ))
        .await;
    assert_eq!(
        browser.count(&format!("tr[data-id=\"{generic}\"]")).await,
        1
    );
    browser
        .fill("#nhs-search input[name=nhs_number]", NHS_NUMBER)
        .await;
    browser.click("#nhs-search-button").await;
    assert!(browser.text("#searched").await.contains(NHS_NUMBER));
    assert_eq!(browser.count("#subscriptions tr").await, 2);
    assert!(
        !browser.source().await.contains("nhs_number="),
        "not in a URL"
    );
    browser
        .screenshot(&shots.join("subscriptions-nhs-search.png"))
        .await;
    browser
        .click(&format!("a[href=\"/console/subscriptions/{explicit}\"]"))
        .await;
    assert!(browser.text("#criteria").await.contains("vaccinations-1"));
    assert_eq!(
        browser.count("#deliveries tr").await,
        4,
        "a header and the mailbox's three vaccinations deliveries"
    );
    no_nhs_number("subscription", &browser.source().await);
    browser.screenshot(&shots.join("subscription.png")).await;

    // Directory and reference data.
    browser.goto(&format!("{base}/console/directory")).await;
    assert!(browser.count("#systems tr").await >= 2);
    assert!(browser.text("#directory-mailboxes").await.contains(OK));
    browser.screenshot(&shots.join("directory.png")).await;
    browser
        .goto(&format!("{base}/console/reference-data"))
        .await;
    assert_eq!(browser.count("#reference-data tr").await, 4);
    assert!(browser.text("#reference-data").await.contains("practices"));
    browser.screenshot(&shots.join("reference-data.png")).await;

    // Both redrives are audited, with who made them.
    browser
        .goto(&format!("{base}/console/audit?action=redrive"))
        .await;
    assert_eq!(
        browser.count("#audit tr").await,
        3,
        "a header and two redrives"
    );
    let row = browser.text("#audit tr:nth-child(2)").await;
    assert!(row.contains("operator@127.0.0.1"), "{row}");
    no_nhs_number("audit", &browser.source().await);
    browser.screenshot(&shots.join("audit.png")).await;
    browser.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn the_console_refuses_everyone_where_the_operator_api_requires_credentials() {
    let stack = TestStack::builder().start().await;
    let (base, _stop) = serve_console(
        &stack,
        Access::Refused("the operator API requires operator credentials"),
    )
    .await;
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let http = HttpClient::new(addr);
    for path in [
        "/console/",
        "/console/mailboxes",
        "/console/dead-letters",
        "/console/login",
    ] {
        let page = http.get(path, &[]).await;
        assert_eq!(page.status, 403, "{path}");
        assert!(page.text().contains("operator credentials"), "{path}");
    }
    let post = http
        .post(
            "/console/dead-letters/redrive",
            &[(
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            )],
            "id=1",
        )
        .await;
    assert_eq!(post.status, 403);
    stack.shutdown().await;
}

/// Where the operator API requires operator TLS: the console asks for a console token
/// (none and a wrong one are refused with 401; a bearer header or the
/// login form's cookie let the operator in), calls core with its own operator
/// certificate, and core audits a redrive made from it with that certificate and the
/// console user; signing out ends the session.
#[tokio::test]
async fn with_operator_tls_the_console_asks_for_a_token_and_core_audits_the_console_user() {
    let Some(browser) = Browser::start("console token browser test").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let operator_tls = ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        client_ca_file: Some(pki.operator_ca.clone()),
    };
    let fake = fake().await;
    fake.set_behaviour(DEAD, Behaviour::Dead);
    let stack = fake_stack(&fake, &[DEAD])
        .core(move |c| {
            c.operator_tls = Some(operator_tls);
            c.clients.operator = vec![pki::OPERATOR_IDENTITY.into()];
        })
        .start()
        .await;
    let channel = Endpoint::from_shared(format!("https://{}", stack.operator_addr))
        .unwrap()
        .tls_config(
            ClientTls {
                ca_file: pki.ca.clone(),
                cert_file: Some(pki.operator.cert.clone()),
                key_file: Some(pki.operator.key.clone()),
                domain: Some("localhost".into()),
            }
            .to_tonic()
            .unwrap(),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut operator = OperatorServiceClient::new(channel.clone());
    let payload = vaccination_event(NHS_NUMBER, "console-token");
    let injected = operator
        .inject_delivery(pb::InjectDeliveryRequest {
            mailbox: DEAD.into(),
            event_code: "vaccinations-1".into(),
            payload: payload.into_bytes().into(),
            partner_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let list = pb::ListDeliveriesRequest {
        mailbox: DEAD.into(),
        state: pb::DeliveryState::DeadLettered.into(),
        ..Default::default()
    };
    eventually("the dead letter", WAIT, || {
        let mut operator = operator.clone();
        let list = list.clone();
        async move {
            let rows = operator.list_deliveries(list).await.ok()?.into_inner();
            (rows.deliveries.len() == 1).then_some(())
        }
    })
    .await;

    let tokens = Tokens::parse(&format!(
        "# console operators\n{}\n{}\n",
        Tokens::line("alice", "alice-token-0123456789"),
        Tokens::line("bob", "bob-token-0123456789")
    ))
    .unwrap();
    let (base, _stop) = serve_console_on(channel, Access::Tokens(tokens)).await;
    let http = HttpClient::new(base.trim_start_matches("http://").parse().unwrap());
    let anonymous = http.get("/console/", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.text().contains("Sign in"));
    assert!(anonymous.header("www-authenticate").is_some());
    let bearer = |token: &str| [("authorization", format!("Bearer {token}"))];
    let wrong = http.get("/console/", &bearer("not-a-token")).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("not valid"));
    let page = http
        .get("/console/dead-letters", &bearer("bob-token-0123456789"))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains(&injected.delivery_id.to_string()));

    // The login form, in the browser.
    let shots = screenshot_dir();
    browser.goto(&format!("{base}/console/")).await;
    assert_eq!(browser.title().await, "Sign in · nems console");
    browser.fill("#login input[name=token]", "wrong").await;
    browser.click("#sign-in").await;
    assert!(browser.text("#message").await.contains("not valid"));
    browser
        .fill("#login input[name=token]", "alice-token-0123456789")
        .await;
    browser.screenshot(&shots.join("login.png")).await;
    browser.click("#sign-in").await;
    browser.wait_for_title("Overview · nems console").await;
    assert_eq!(browser.text("#user").await, "alice");
    browser
        .goto(&format!("{base}/console/dead-letters?mailbox={DEAD}"))
        .await;
    browser
        .click(&format!(
            "tr[data-id=\"{}\"] button.redrive",
            injected.delivery_id
        ))
        .await;
    assert_eq!(
        browser.text("#message").await,
        format!("Delivery {} is queued again.", injected.delivery_id)
    );
    browser
        .goto(&format!("{base}/console/audit?action=redrive"))
        .await;
    let row = browser.text("#audit tr:nth-child(2)").await;
    assert!(
        row.contains("operator:operator.nems.test@127.0.0.1 (console user alice)"),
        "{row}"
    );
    browser
        .screenshot(&shots.join("audit-console-user.png"))
        .await;
    browser.click("#sign-out").await;
    browser.wait_for_title("Sign in · nems console").await;
    browser.goto(&format!("{base}/console/")).await;
    assert_eq!(
        browser.title().await,
        "Sign in · nems console",
        "signed out"
    );
    browser.close().await;
    stack.shutdown().await;
}

/// A replay made from the console, against the real MESH sandbox: the mailbox page leads
/// to the replay form, the preview counts the delivered messages since the time given,
/// and the confirmed replay sends each again as a new message that NHS's mesh-client
/// collects, with a local id naming the original.
#[tokio::test]
async fn a_replay_from_the_console_reaches_the_mesh_sandbox() {
    let Some(venv) = tools::venv("a_replay_from_the_console_reaches_the_mesh_sandbox") else {
        return;
    };
    let Some(browser) = Browser::start("console replay browser test").await else {
        return;
    };
    let sandbox = MeshSandbox::start(&venv).await;
    let stack = sandbox_stack_with(&sandbox, Duration::from_secs(7 * 86_400)).await;
    let [recipient, _, _] = RECIPIENT_MAILBOXES;
    let started = std::time::SystemTime::now();
    subscribe(
        &stack,
        recipient.id,
        &spine::explicit(NHS_NUMBER, &["vaccinations-1"], ""),
    )
    .await;
    for n in 0..2 {
        let payload = vaccination_event(NHS_NUMBER, &format!("console-replay-{n}"));
        publish(&stack, payload.as_bytes()).await;
    }
    let delivered = |suffix: &'static str| {
        let stack = &stack;
        async move {
            eventually("the deliveries to be delivered", WAIT, || async {
                let rows = deliveries_to(stack, recipient.id).await;
                let done = rows.len() == 2
                    && rows.iter().all(|r| {
                        r.state() == pb::DeliveryState::Delivered && r.local_id.ends_with(suffix)
                    });
                done.then_some(rows)
            })
            .await
        }
    };
    let first = delivered("").await;
    assert_eq!(sandbox.receive_with_mesh_client(&recipient).await.len(), 2);

    let (base, _stop) = serve_console(&stack, Access::Loopback).await;
    let shots = screenshot_dir();
    browser
        .goto(&format!("{base}/console/mailboxes/{}", recipient.id))
        .await;
    browser.click("#replay").await;
    browser.wait_for_title("Replay · nems console").await;
    let since = prost_types::Timestamp::from(started).to_string();
    browser.fill("#replay-form input[name=since]", &since).await;
    browser
        .fill("#replay-form input[name=event]", "vaccinations-1")
        .await;
    browser.screenshot(&shots.join("replay-form.png")).await;
    browser.click("#preview-button").await;
    let preview = browser.text("#preview").await;
    assert!(
        preview.starts_with(&format!("2 deliveries of {}", recipient.id)),
        "{preview}"
    );
    browser.screenshot(&shots.join("replay-preview.png")).await;
    assert!(
        deliveries_to(&stack, recipient.id)
            .await
            .iter()
            .all(|r| r.replays == 0),
        "the preview queues nothing"
    );
    browser.click("#confirm").await;
    let message = browser.text("#message").await;
    assert!(message.starts_with("2 deliveries"), "{message}");
    browser.screenshot(&shots.join("replayed.png")).await;
    let again = delivered("-p1").await;
    let collected = sandbox.receive_with_mesh_client(&recipient).await;
    assert_eq!(
        collected.len(),
        2,
        "one new MESH message per replayed delivery"
    );
    for m in &collected {
        let row = again
            .iter()
            .find(|r| r.mesh_message_id == m.id)
            .unwrap_or_else(|| panic!("no ledger row has MESH id {}", m.id));
        let original = first
            .iter()
            .find(|r| r.delivery_id == row.delivery_id)
            .unwrap();
        assert_ne!(row.mesh_message_id, original.mesh_message_id);
        assert_eq!(
            m.headers.get("localid"),
            Some(&format!("{}-p1", original.local_id))
        );
    }

    // The replay is audited with who made it and how many it resent.
    browser
        .goto(&format!("{base}/console/audit?action=replay"))
        .await;
    let row = browser.text("#audit tr:nth-child(2)").await;
    assert!(
        row.contains("operator@127.0.0.1") && row.ends_with('2'),
        "{row}"
    );
    browser.close().await;
    stack.shutdown().await;
}
