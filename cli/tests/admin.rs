//! `nems admin` and `nems config` as an operator runs them: the real binary against a core on
//! a non-default address, reached with `--operator` or `NEMS_OPERATOR_URL`. Output lines
//! carry times and kebab-case states, an empty result says `none`, a missing record exits 3,
//! an unfiltered redrive needs `--yes`, the directory is managed entry by entry, and errors
//! when core is not what answers are one line with a hint.

use std::path::Path;
use std::process::Output;

use nems_e2e::stack::{Sink, TestStack};
use nems_proto::v1 as pb;

async fn nems(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nems"));
    // Only the settings the test gives: none inherited from the shell that runs it.
    #[allow(
        clippy::disallowed_methods,
        reason = "the test clears the NEMS_* variables it inherited"
    )]
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NEMS_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("NEMS_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.expect("run nems")
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The value of `key=` in a `key=value` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .map(|at| at + key.len() + 2)
        .or_else(|| {
            line.starts_with(&format!("{key}="))
                .then_some(key.len() + 1)
        })
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[start..].split(' ').next().unwrap_or_default()
}

/// An RFC 3339 UTC timestamp such as `2026-12-02T14:03:05.123Z`.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && text.ends_with('Z')
}

/// Queues one delivery and dead-letters it as an adapter would (MESH refused it).
async fn dead_letter(stack: &TestStack) -> pb::InjectDeliveryResponse {
    let injected = stack
        .operator()
        .inject_delivery(pb::InjectDeliveryRequest {
            mailbox: "RR8MBX01".into(),
            event_code: "vaccinations-1".into(),
            payload: b"<Bundle xmlns=\"http://hl7.org/fhir\"/>".to_vec().into(),
            partner_id: String::new(),
        })
        .await
        .expect("the test setup")
        .into_inner();
    let mut adapter = stack.deliveries();
    let mut stream = adapter
        .stream_deliveries(pb::StreamDeliveriesRequest {
            consumer: "cli-test".into(),
            max_in_flight: 1,
            max_in_flight_per_mailbox: 1,
        })
        .await
        .expect("the test setup")
        .into_inner();
    let delivery = stream
        .message()
        .await
        .expect("the test setup")
        .expect("the test setup")
        .delivery
        .expect("the test setup");
    assert_eq!(delivery.delivery_id, injected.delivery_id);
    let answer = adapter
        .complete_delivery(pb::CompleteDeliveryRequest {
            delivery_id: delivery.delivery_id,
            attempt: delivery.attempt,
            outcome: Some(pb::complete_delivery_request::Outcome::Refused(
                pb::DeliveryRefused {
                    code: "MESH_TEST".into(),
                    reason: "refused by the test".into(),
                },
            )),
        })
        .await
        .expect("the test setup")
        .into_inner();
    assert_eq!(answer.state(), pb::DeliveryState::DeadLettered);
    injected
}

async fn dead_letters(stack: &TestStack) -> u64 {
    stack
        .operator()
        .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
        .await
        .expect("the test setup")
        .into_inner()
        .mailboxes
        .iter()
        .map(|m| m.dead_lettered)
        .sum()
}

#[tokio::test]
async fn admin_reaches_a_core_on_another_address_and_prints_times_states_and_none() {
    let stack = TestStack::builder().sink(Sink::None).start().await;
    let url = format!("http://{}", stack.operator_addr);
    let dir = tempfile::tempdir().unwrap();
    let injected = dead_letter(&stack).await;

    // --operator after the subcommand; a state given in another case.
    let out = nems(
        &[
            "admin",
            "deliveries",
            "--state",
            "DEAD_LETTERED",
            "--operator",
            &url,
        ],
        &[],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let listed = lines(&out.stdout);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let line = &listed[0];
    assert_eq!(field(line, "id"), injected.delivery_id.to_string());
    assert_eq!(field(line, "state"), "dead-lettered", "{line}");
    assert_eq!(field(line, "error"), "MESH_TEST", "{line}");
    for key in ["accepted_at", "updated_at"] {
        assert!(is_rfc3339(field(line, key)), "{key} in {line}");
    }

    // NEMS_OPERATOR_URL; one event and its deliveries.
    let env = [("NEMS_OPERATOR_URL", url.as_str())];
    let out = nems(&["admin", "event", &injected.event_id], &env, dir.path()).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let shown = lines(&out.stdout);
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(field(&shown[0], "event"), injected.event_id);
    assert_eq!(field(&shown[0], "deliveries"), "1");
    assert!(is_rfc3339(field(&shown[0], "accepted_at")), "{shown:?}");
    assert_eq!(field(&shown[1], "id"), injected.delivery_id.to_string());
    assert_eq!(field(&shown[1], "state"), "dead-lettered");

    // An empty result says so; a missing record exits 3 with one line.
    let out = nems(
        &["admin", "deliveries", "--state", "delivered"],
        &env,
        dir.path(),
    )
    .await;
    assert!(out.status.success());
    assert_eq!(lines(&out.stdout), ["none"]);
    let missing = "0123456789abcdef0123456789abcdef";
    let out = nems(&["admin", "event", missing], &env, dir.path()).await;
    assert_eq!(out.status.code(), Some(3), "{:?}", lines(&out.stderr));
    let said = lines(&out.stderr);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with("nems: not found: event"), "{said:?}");
    let out = nems(
        &["admin", "lookup", "--postcode", "ZZ99 9ZZ"],
        &env,
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{:?}", lines(&out.stderr));

    // A redrive of everything needs --yes when nothing can ask (no terminal).
    let out = nems(&["admin", "redrive"], &env, dir.path()).await;
    assert_eq!(out.status.code(), Some(1));
    let said = lines(&out.stderr);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("all 1 dead letters") && said[0].contains("--yes"),
        "{said:?}"
    );
    assert_eq!(dead_letters(&stack).await, 1, "nothing was redriven");
    let out = nems(&["admin", "redrive", "--yes"], &env, dir.path()).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    assert!(
        lines(&out.stdout)[0].starts_with("redriven=1 "),
        "{:?}",
        lines(&out.stdout)
    );
    assert_eq!(dead_letters(&stack).await, 0);
    stack.shutdown().await;
}

#[tokio::test]
async fn directory_entries_are_added_changed_listed_applied_and_removed() {
    let stack = TestStack::start().await;
    let url = format!("http://{}", stack.operator_addr);
    let dir = tempfile::tempdir().unwrap();
    let admin = |args: Vec<&str>| {
        let mut all = vec!["admin", "--operator", url.as_str(), "directory"];
        all.extend(args);
        let dir = dir.path().to_path_buf();
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            nems(&refs, &[], &dir).await
        }
    };
    let asid = "200000000555";
    let out = admin(vec![
        "add-system",
        asid,
        "--ods",
        "RR9",
        "--bag",
        "NEMS_SUBS_TYPE:EXPLICIT,NEMS_EVENT_ID:VACCINATIONS_1",
        "--description",
        "a new subscriber",
    ])
    .await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    assert!(lines(&out.stdout)[0].starts_with(&format!("added asid={asid} ods=RR9 ")));
    let again = admin(vec!["add-system", asid, "--ods", "RR9"]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(lines(&again.stderr)[0].contains("use change-system"));

    // A change replaces only the fields given.
    let out = admin(vec!["change-system", asid, "--message-set", "Vaccinations"]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let stored = stack
        .directory()
        .get_system(pb::GetSystemRequest { asid: asid.into() })
        .await
        .unwrap()
        .into_inner()
        .system
        .unwrap();
    assert_eq!(stored.ods_codes, ["RR9"]);
    assert_eq!(
        stored.category_bags,
        ["NEMS_SUBS_TYPE:EXPLICIT", "NEMS_EVENT_ID:VACCINATIONS_1"]
    );
    assert_eq!(stored.publish_message_sets, ["Vaccinations"]);
    assert_eq!(stored.description, "a new subscriber");
    let out = admin(vec!["system", asid]).await;
    assert!(out.status.success());
    assert_eq!(
        field(&lines(&out.stdout)[0], "message_sets"),
        "Vaccinations"
    );
    let systems = admin(vec!["systems"]).await;
    assert!(
        lines(&systems.stdout)
            .iter()
            .any(|l| l.starts_with(&format!("asid={asid} "))),
        "{:?}",
        lines(&systems.stdout)
    );

    let out = admin(vec!["put-mailbox", "RR9MBX01", "--ods", "RR9"]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    assert!(lines(&out.stdout)[0].starts_with("added mailbox=RR9MBX01 ods=RR9"));
    let mailboxes = admin(vec!["mailboxes"]).await;
    assert!(
        lines(&mailboxes.stdout)
            .iter()
            .any(|l| l.starts_with("mailbox=RR9MBX01 ")),
        "{:?}",
        lines(&mailboxes.stdout)
    );

    // Removing, and removing what is not there (exit 3).
    let out = admin(vec!["remove-mailbox", "RR9MBX01"]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let out = admin(vec!["remove-system", asid]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    for args in [
        vec!["remove-system", asid],
        vec!["system", asid],
        vec!["change-system", asid, "--ods", "RR9"],
        vec!["remove-mailbox", "RR9MBX01"],
    ] {
        let out = admin(args.clone()).await;
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {:?}",
            lines(&out.stderr)
        );
    }

    // A directory file: --check changes nothing, then every entry is put.
    let file = dir.path().join("directory.toml");
    std::fs::write(
        &file,
        format!(
            "[[system]]\nasid = \"{asid}\"\nods_codes = [\"RR9\"]\n\n\
             [[mailbox]]\nid = \"RR8MBX01\"\nods_code = \"RR8\"\n\n\
             [[mailbox]]\nid = \"RR8MBX02\"\nods_code = \"RR8\"\ndescription = \"renamed\"\n\n\
             [[mailbox]]\nid = \"RR9MBX02\"\nods_code = \"RR9\"\ndescription = \"from a file\"\n"
        ),
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let out = admin(vec!["apply", &path, "--check"]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    assert_eq!(
        lines(&out.stdout),
        [
            format!("add system {asid}"),
            "same mailbox RR8MBX01".to_owned(),
            "change mailbox RR8MBX02".to_owned(),
            "add mailbox RR9MBX02".to_owned(),
            "2 added, 1 changed, 1 unchanged (check only: nothing changed)".to_owned(),
        ]
    );
    let out = admin(vec!["system", asid]).await;
    assert_eq!(out.status.code(), Some(3), "--check changed nothing");
    let out = admin(vec!["apply", &path]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let out = admin(vec!["system", asid]).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let mailboxes = admin(vec!["mailboxes"]).await;
    for expected in [
        "mailbox=RR9MBX02 ods=RR9 description=\"from a file\"",
        "mailbox=RR8MBX02 ods=RR8 description=\"renamed\"",
    ] {
        assert!(
            lines(&mailboxes.stdout).iter().any(|l| l == expected),
            "{expected}: {:?}",
            lines(&mailboxes.stdout)
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn errors_when_core_is_not_what_answers_are_one_line_with_a_hint() {
    let stack = TestStack::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: tcpmux (1), which no test binds. A port freed after a
    // bind could be taken meanwhile by a stack another test starts.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let one_line = |out: &Output| {
        assert_eq!(out.status.code(), Some(1));
        let said = lines(&out.stderr);
        assert_eq!(said.len(), 1, "{said:?}");
        said[0].clone()
    };
    let refused_url = format!("http://{closed}");
    let out = nems(
        &["admin", "--operator", &refused_url, "status"],
        &[],
        dir.path(),
    )
    .await;
    assert_eq!(
        one_line(&out),
        format!("nems: cannot reach core at {refused_url}: connection refused")
    );
    let bare = closed.to_string();
    let out = nems(&["admin", "--operator", &bare, "status"], &[], dir.path()).await;
    let said = one_line(&out);
    assert!(
        said.contains("has no scheme") && said.contains(&format!("http://{bare}")),
        "{said}"
    );
    let edge = format!("http://{}", stack.edge_addr);
    let out = nems(&["admin", "--operator", &edge, "status"], &[], dir.path()).await;
    let said = one_line(&out);
    assert!(said.contains("not core's operator API"), "{said}");
    let service = format!("http://{}", stack.core_addr);
    let out = nems(
        &["admin", "--operator", &service, "status"],
        &[],
        dir.path(),
    )
    .await;
    let said = one_line(&out);
    assert!(said.contains("without the operator API"), "{said}");

    // An import never says "core refused" when nothing answered.
    let csv = dir.path().join("codes.csv");
    std::fs::write(
        &csv,
        "nhs_number,birth_date,postcode,previous_postcode,gp_practice,flag,date_of_death,last_updated\n",
    )
    .unwrap();
    let out = nems(
        &["import", "--operator", &refused_url, "codes.csv"],
        &[],
        dir.path(),
    )
    .await;
    let said = lines(&out.stderr);
    assert!(!out.status.success());
    let last = said.last().cloned().unwrap_or_default();
    assert!(
        !last.contains("core refused") && last.contains("cannot reach core"),
        "{said:?}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn config_names_its_file_and_prints_every_key_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nems.toml");
    std::fs::write(&file, "[core]\nlisten = \"127.0.0.1:7171\"\n").unwrap();
    let path = file.to_string_lossy().into_owned();
    let out = nems(
        &["--config", &path, "config"],
        &[("NEMS_MESH_SHARED_KEY", "s3cr3t-shared")],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nems.toml"), "{text}");
    assert!(
        text.contains("# environment: NEMS_LOG, NEMS_MESH_SHARED_KEY"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("\n# shared_key = (set)\n"), "{text}");
    assert!(text.contains("\n# password = (not set)\n"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:7171\""), "{text}");
    // What it printed is a configuration nems reads.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, text.as_bytes()).unwrap();
    let printed = printed.to_string_lossy().into_owned();
    let again = nems(&["--config", &printed, "config"], &[], dir.path()).await;
    assert!(again.status.success(), "{:?}", lines(&again.stderr));
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("listen = \"127.0.0.1:7171\""), "{again}");
    // The secret came from the environment; the printed file does not carry it.
    assert!(again.contains("\n# shared_key = (not set)\n"), "{again}");
}

/// `nems admin replay`: refused with what to set while replay is off; a `--since` that is
/// not a time is refused before anything is sent; with replay on, a dry run prints what
/// would go and the window's start.
#[tokio::test]
async fn replay_says_when_it_is_off_and_what_a_dry_run_would_send() {
    let dir = tempfile::tempdir().unwrap();
    let dry_run = |url: String, since: String| {
        let dir = dir.path().to_owned();
        async move {
            let args = [
                "admin",
                "replay",
                "--mailbox",
                "X26HC001",
                "--since",
                &since,
                "--dry-run",
                "--operator",
                &url,
            ];
            nems(&args, &[], &dir).await
        }
    };
    let now = prost_types::Timestamp::from(std::time::SystemTime::now()).to_string();
    let off = TestStack::builder().sink(Sink::None).start().await;
    let url = format!("http://{}", off.operator_addr);
    let out = dry_run(url.clone(), now.clone()).await;
    assert!(!out.status.success());
    let err = lines(&out.stderr).join("\n");
    assert!(
        err.contains("replay is off") && err.contains("core.replay_retention"),
        "{err}"
    );
    let out = dry_run(url, "yesterday".into()).await;
    assert!(!out.status.success());
    let err = lines(&out.stderr).join("\n");
    assert!(err.contains("not an RFC 3339 time"), "{err}");
    off.shutdown().await;

    let on = TestStack::builder()
        .sink(Sink::None)
        .core(|c| c.replay_retention = std::time::Duration::from_secs(3600))
        .start()
        .await;
    let out = dry_run(format!("http://{}", on.operator_addr), now).await;
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
    let printed = lines(&out.stdout);
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(field(&printed[0], "would_replay"), "0");
    assert_eq!(field(&printed[0], "without_payload"), "0");
    assert!(
        is_rfc3339(field(&printed[0], "window_start")),
        "{printed:?}"
    );
    on.shutdown().await;
}
