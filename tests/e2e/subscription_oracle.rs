//! An independent STU3 parser for what the Subscription API writes: every scenario of the
//! `subscription_*` modules runs again with a recorder, and every Subscription and
//! OperationOutcome body the edge answered with (XML and JSON) must parse with the PyPI
//! `fhir.resources` STU3 models; the XML must also validate against the official
//! `fhir-single.xsd`, and XML and JSON reads of one subscription in one state must parse to
//! equal models. The checker is `edge/tests/oracle/check_fhir.py`; the test skips with a
//! notice when the Python venv or `../shared` is absent (and fails without the venv when
//! `NEMS_REQUIRE_TOOLS` is set).

use std::collections::BTreeMap;
use std::path::PathBuf;

use nems_e2e::stack::TestStack;
use nems_e2e::tools;

use crate::subscription_api::{self as api, Api, Recorder};
use crate::{subscription_errors as errors, subscription_grpc as grpc};

/// Runs each scenario on a fresh default stack, recording into `$rec`.
macro_rules! on_fresh_stacks {
    ($rec:expr; $($scenario:path),* $(,)?) => {$(
        let stack = TestStack::start().await;
        $scenario(&Api::recording(&stack, $rec.clone())).await;
        stack.shutdown().await;
    )*};
}

#[tokio::test]
async fn every_subscription_api_body_is_valid_stu3() {
    const NAME: &str = "every_subscription_api_body_is_valid_stu3";
    let Some(venv) = tools::venv(NAME) else {
        return;
    };
    let Some(shared) = tools::shared_dir(NAME) else {
        return;
    };
    let recorder = Recorder::default();
    on_fresh_stacks!(recorder;
        api::create_read_delete,
        api::status_turns_off_after_end,
        api::media_types,
        api::round_trip,
        errors::routing,
        errors::headers,
        errors::media_types,
        errors::bodies,
        errors::criteria,
        errors::permissions,
        errors::not_found,
        errors::duplicates,
        grpc::parity,
        grpc::operator_listing,
    );
    let stack = errors::lifecycle_stack().await;
    errors::lifecycle(&Api::recording(&stack, recorder.clone())).await;
    stack.shutdown().await;

    let bodies = recorder.bodies();
    let dir = tempfile::tempdir().unwrap();
    let mut kinds: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let mut files = Vec::new();
    for body in &bodies {
        let resource_type = api::parse(body.format, &body.body)["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ext = body.format.ext();
        *kinds.entry((resource_type, ext)).or_default() += 1;
        let path = dir.path().join(body.file_name());
        assert!(!path.exists(), "two bodies named {}", body.file_name());
        std::fs::write(&path, &body.body).unwrap();
        files.push(path);
    }
    // Every kind of body was collected, so the check below cannot pass vacuously.
    for kind in ["Subscription", "OperationOutcome"] {
        for ext in ["xml", "json"] {
            let n = kinds.get(&(kind.to_string(), ext)).copied().unwrap_or(0);
            assert!(n >= 5, "only {n} {kind} bodies in {ext}: {kinds:?}");
        }
    }
    assert_eq!(
        kinds
            .keys()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "Subscription" && *k != "OperationOutcome")
            .count(),
        0,
        "the edge wrote other resources: {kinds:?}"
    );

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge/tests/oracle/check_fhir.py");
    let xsd = shared.join("fixtures/fhir-stu3-xsd");
    let python = venv.join("bin/python3");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(xsd)
            .args(&files)
            .output()
            .expect("run check_fhir.py")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        output.status.success() && failures.is_empty(),
        "the STU3 oracle refused {} bodies:\n{}\n{stderr}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        stdout.contains("schema: fhir-single.xsd"),
        "fhir-single.xsd did not load:\n{stdout}"
    );
    let ok = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok, bodies.len(), "{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    let pairs: usize = summary
        .split(", ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(pairs >= 5, "too few XML/JSON pairs compared: {summary}");
    #[allow(clippy::print_stderr, reason = "what was checked, for the test log")]
    {
        eprintln!("{} bodies checked ({kinds:?}); {summary}", bodies.len());
    }
}
