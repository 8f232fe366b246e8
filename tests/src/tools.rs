//! Locating the test tools installed by `scripts/setup-test-tools.sh`.

use std::path::PathBuf;

/// Returns the pinned Python venv (`$NEMS_VENV`, else `<workspace>/.venv`), or `None` after
/// printing a skip notice. With `NEMS_REQUIRE_TOOLS=1` (set by the test command) a missing
/// venv is a test failure rather than a skip.
pub fn venv(test: &str) -> Option<PathBuf> {
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness reads its own settings"
    )]
    let configured = std::env::var_os("NEMS_VENV").map(PathBuf::from);
    let dir =
        configured.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    if dir.join("bin/python3").exists() {
        return Some(dir);
    }
    missing_tool(
        test,
        &format!(
            "the Python test tools are missing at {} (run scripts/setup-test-tools.sh)",
            dir.display()
        ),
    );
    None
}

/// A tool `test` needs is missing (`what` says which, and how to get it): a failure with
/// `NEMS_REQUIRE_TOOLS=1` (set by the test command), else a skip notice.
pub fn missing_tool(test: &str, what: &str) {
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness reads its own settings"
    )]
    let required = std::env::var_os("NEMS_REQUIRE_TOOLS").is_some();
    assert!(!required, "{test}: {what}");
    #[allow(clippy::print_stderr, reason = "a skip notice is the point")]
    {
        eprintln!("skipping {test}: {what}");
    }
}

/// Returns `../shared` (the public NEMS fixtures), or `None` after printing a skip notice.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if dir.join("fixtures").is_dir() {
        return Some(dir);
    }
    #[allow(clippy::print_stderr, reason = "a skip notice is the point")]
    {
        eprintln!("skipping {test}: ../shared is absent (fresh clone without the shared fixtures)");
    }
    None
}
