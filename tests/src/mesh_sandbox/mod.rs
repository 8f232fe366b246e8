//! The real `mesh-sandbox` (NHS Digital's runnable MESH API, `shared/spec/mesh.md` §7) as a
//! child process, plus NHS's Python `mesh-client` as an independent client.
//!
//! # Mailboxes
//! The sandbox reads mailboxes only from its packaged `mesh_sandbox/store/data/mailboxes.jsonl`.
//! The shared venv is never touched (tests run in parallel processes): each sandbox copies the
//! installed `mesh_sandbox` package into its own temp dir, appends [`SERVICE_MAILBOX`] and
//! [`RECIPIENT_MAILBOXES`] to the copy's `mailboxes.jsonl`, and runs uvicorn with `PYTHONPATH`
//! pointing at the temp dir, so the copy shadows the installed package.
//!
//! # Lifecycle
//! uvicorn binds `127.0.0.1:0`; the harness reads the bound port from uvicorn's
//! "Uvicorn running on" log line (no port guessing, no races), then polls `/health` a bounded
//! number of times. Logs go to `<temp dir>/sandbox.log`. The process is killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nems_mesh_adapter::mesh::{MeshClient, MeshClientConfig, TlsConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The shared HMAC key the sandbox runs with.
pub const SHARED_KEY: &str = "TestKey";

/// The NEMS service's own (sending) mailbox, provisioned into every sandbox.
pub const SERVICE_MAILBOX: SandboxMailbox = SandboxMailbox {
    id: "NEMSSVC01",
    password: "nems-service-pw",
};

/// Recipient mailboxes provisioned into every sandbox.
pub const RECIPIENT_MAILBOXES: [SandboxMailbox; 3] = [
    SandboxMailbox {
        id: "NEMSRCP01",
        password: "recipient-pw-1",
    },
    SandboxMailbox {
        id: "NEMSRCP02",
        password: "recipient-pw-2",
    },
    SandboxMailbox {
        id: "NEMSRCP03",
        password: "recipient-pw-3",
    },
];

/// Attempts at `GET /health` before giving up (100 ms apart).
const HEALTH_ATTEMPTS: u32 = 100;
/// How long uvicorn may take to import and bind.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A mailbox id and its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxMailbox {
    /// Mailbox id.
    pub id: &'static str,
    /// Password.
    pub password: &'static str,
}

/// Serve HTTPS (optionally requiring client certificates, like real MESH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxTls {
    /// Server certificate chain (PEM).
    pub cert_pem: PathBuf,
    /// Server private key (PEM).
    pub key_pem: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca_pem: Option<PathBuf>,
}

/// A message received by mesh-client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Message id.
    pub id: String,
    /// Every `mex-*` header, lower case and without the `mex-` prefix (mesh-client's view).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The payload, all chunks joined and decompressed.
    pub payload: Vec<u8>,
}

/// A running sandbox; killed on drop.
#[derive(Debug)]
pub struct MeshSandbox {
    child: Child,
    base_url: String,
    venv: PathBuf,
    dir: tempfile::TempDir,
    http: Client<HttpConnector, Full<Bytes>>,
    port: u16,
    tls: Option<SandboxTls>,
}

// === MeshSandbox ===

impl MeshSandbox {
    /// Starts a plain-HTTP sandbox from `venv` (see [`crate::tools::venv`]).
    pub async fn start(venv: &Path) -> Self {
        Self::start_with(venv, None).await
    }

    /// Starts a sandbox, serving HTTPS when `tls` is given.
    pub async fn start_with(venv: &Path, tls: Option<SandboxTls>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nems-mesh-sandbox-")
            .tempdir()
            .expect("sandbox temp dir");
        let package = installed_package(venv);
        let python_path = dir.path().join("pkg");
        copy_package(&package, &python_path.join("mesh_sandbox"));
        provision_mailboxes(&python_path.join("mesh_sandbox/store/data/mailboxes.jsonl"));
        std::fs::write(
            dir.path().join("mesh_client_helper.py"),
            include_str!("mesh_client_helper.py"),
        )
        .expect("write mesh-client helper");

        let (child, port) = spawn(venv, dir.path(), 0, tls.as_ref()).await;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let sandbox = Self {
            child,
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            venv: venv.to_owned(),
            dir,
            http: Client::builder(TokioExecutor::new()).build_http(),
            port,
            tls,
        };
        if sandbox.tls.is_some() {
            // The harness has no TLS client; the "running" line already means it is bound.
            sandbox.wait_for_port(port).await;
        } else {
            sandbox.wait_for_health().await;
        }
        sandbox
    }

    /// Stops the sandbox process (an outage: connections to its port are refused until
    /// [`MeshSandbox::restart`]).
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Starts the sandbox again on the same port, after [`MeshSandbox::stop`]. Its memory store
    /// starts anew from the provisioned mailboxes: messages sent before the stop are gone.
    pub async fn restart(&mut self) {
        let (child, port) = spawn(&self.venv, self.dir.path(), self.port, self.tls.as_ref()).await;
        assert_eq!(port, self.port, "restarted on the same port");
        self.child = child;
        if self.tls.is_some() {
            self.wait_for_port(port).await;
        } else {
            self.wait_for_health().await;
        }
    }

    /// Returns the base URL, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Returns the sandbox's temp dir (logs, package copy).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the sandbox's logs so far.
    pub fn logs(&self) -> String {
        read_logs(self.dir.path())
    }

    /// Returns a client configuration for `mailbox` with test-friendly timeouts.
    pub fn client_config(&self, mailbox: &SandboxMailbox) -> MeshClientConfig {
        let mut config =
            MeshClientConfig::new(&self.base_url, mailbox.id, mailbox.password, SHARED_KEY);
        config.connect_timeout = Duration::from_secs(5);
        config.request_timeout = Duration::from_secs(30);
        config
    }

    /// Returns a Rust [`MeshClient`] for `mailbox`.
    pub fn client(&self, mailbox: &SandboxMailbox) -> MeshClient {
        MeshClient::new(self.client_config(mailbox)).expect("mesh client config")
    }

    /// Returns a client configuration over TLS (for [`MeshSandbox::start_with`]).
    pub fn tls_client_config(&self, mailbox: &SandboxMailbox, tls: TlsConfig) -> MeshClientConfig {
        let mut config = self.client_config(mailbox);
        config.tls = Some(tls);
        config
    }

    /// Resets the whole store (`DELETE /admin/reset`).
    pub async fn reset(&self) {
        let (status, body) = self.admin(Method::DELETE, "/admin/reset", None).await;
        assert_eq!(status, StatusCode::OK, "sandbox reset: {body}");
    }

    /// Clears one mailbox's inbox and outbox.
    pub async fn reset_mailbox(&self, mailbox: &str) {
        let (status, body) = self
            .admin(Method::DELETE, &format!("/admin/reset/{mailbox}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "sandbox mailbox reset: {body}");
    }

    /// Injects a REPORT into `mailbox`'s inbox through `POST /messageexchange/admin/report`
    /// (status `error`, so `code` and `description` pass through unchanged); returns its id.
    pub async fn inject_report(
        &self,
        mailbox: &str,
        linked_message_id: &str,
        local_id: &str,
        workflow_id: &str,
        code: &str,
        description: &str,
    ) -> String {
        let request = json!({
            "mailbox_id": mailbox,
            "code": code,
            "description": description,
            "workflow_id": workflow_id,
            "local_id": local_id,
            "linked_message_id": linked_message_id,
            "status": "error",
        });
        let (status, body) = self
            .admin(Method::POST, "/messageexchange/admin/report", Some(request))
            .await;
        assert_eq!(status, StatusCode::OK, "sandbox report: {body}");
        body["message_id"].as_str().expect("report id").to_owned()
    }

    /// Appends a status event to a message (`POST /admin/message/{id}/event`), as MESH does
    /// when it gives up on one: tracking then shows `status` (e.g. `undeliverable`).
    pub async fn add_message_event(
        &self,
        message_id: &str,
        status: &str,
        code: &str,
        description: &str,
    ) {
        let request = json!({
            "status": status,
            "code": code,
            "event": "TRANSFER",
            "description": description,
        });
        let (status, body) = self
            .admin(
                Method::POST,
                &format!("/admin/message/{message_id}/event"),
                Some(request),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "sandbox message event: {body}");
    }

    /// Returns the sandbox's full record of a message (`GET /admin/message/{id}`).
    pub async fn message_details(&self, message_id: &str) -> Option<Value> {
        let (status, body) = self
            .admin(Method::GET, &format!("/admin/message/{message_id}"), None)
            .await;
        (status == StatusCode::OK).then_some(body)
    }

    /// Receives (downloads and acknowledges) everything in `mailbox` with NHS's mesh-client.
    pub async fn receive_with_mesh_client(&self, mailbox: &SandboxMailbox) -> Vec<ReceivedMessage> {
        let output = self.mesh_client_helper(mailbox, &["receive"]).await;
        let Value::Array(messages) = output else {
            panic!("mesh-client helper printed {output}");
        };
        messages
            .into_iter()
            .map(|m| ReceivedMessage {
                id: m["id"].as_str().expect("id").to_owned(),
                headers: serde_json::from_value(m["headers"].clone()).expect("headers"),
                payload: hex::decode(m["payload_hex"].as_str().expect("payload")).expect("hex"),
            })
            .collect()
    }

    /// Sends a message with NHS's mesh-client; returns its message id.
    pub async fn send_with_mesh_client(
        &self,
        from: &SandboxMailbox,
        to: &str,
        workflow_id: &str,
        local_id: &str,
        payload: &[u8],
    ) -> String {
        let payload = hex::encode(payload);
        let output = self
            .mesh_client_helper(from, &["send", to, workflow_id, local_id, &payload])
            .await;
        output["id"].as_str().expect("sent id").to_owned()
    }

    async fn mesh_client_helper(&self, mailbox: &SandboxMailbox, args: &[&str]) -> Value {
        let output = Command::new(self.venv.join("bin/python"))
            .arg(self.dir.path().join("mesh_client_helper.py"))
            .args([&self.base_url, mailbox.id, mailbox.password, SHARED_KEY])
            .args(args)
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run mesh-client helper");
        assert!(
            output.status.success(),
            "mesh-client helper failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "mesh-client helper output is not json ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_url));
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let response = self
            .http
            .request(request.body(Full::new(body)).expect("admin request"))
            .await
            .expect("sandbox admin call");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("admin body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn wait_for_health(&self) {
        let url: http::Uri = format!("{}/health", self.base_url)
            .parse()
            .expect("health url");
        for _ in 0..HEALTH_ATTEMPTS {
            if let Ok(response) = self.http.get(url.clone()).await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mesh-sandbox never became healthy; log:\n{}", self.logs());
    }

    async fn wait_for_port(&self, port: u16) {
        for _ in 0..HEALTH_ATTEMPTS {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mesh-sandbox port never opened; log:\n{}", self.logs());
    }
}

impl Drop for MeshSandbox {
    fn drop(&mut self) {
        // kill_on_drop also does this; being explicit keeps the order (kill before the temp
        // dir is removed) obvious.
        let _ = self.child.start_kill();
    }
}

/// Spawns uvicorn serving the sandbox copy in `dir` on `port` (0: any); returns the child and
/// the port it reported.
async fn spawn(venv: &Path, dir: &Path, port: u16, tls: Option<&SandboxTls>) -> (Child, u16) {
    let python_path = dir.join("pkg");
    let log_path = dir.join("sandbox.log");
    let stdout_log = std::fs::File::create(&log_path).expect("sandbox log");
    let mut command = Command::new(venv.join("bin/uvicorn"));
    let port_arg = port.to_string();
    command
        .args([
            "mesh_sandbox.api:app",
            "--host",
            "127.0.0.1",
            "--port",
            &port_arg,
        ])
        .args(["--workers", "1", "--log-level", "info"])
        .env("AUTH_MODE", "full")
        .env("STORE_MODE", "memory")
        .env("SHARED_KEY", SHARED_KEY)
        .env("PYTHONPATH", &python_path)
        .env("PYTHONWARNINGS", "ignore")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout_log))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(tls) = tls {
        command
            .arg("--ssl-certfile")
            .arg(&tls.cert_pem)
            .arg("--ssl-keyfile")
            .arg(&tls.key_pem);
        if let Some(ca) = &tls.client_ca_pem {
            command
                .arg("--ssl-ca-certs")
                .arg(ca)
                .args(["--ssl-cert-reqs", "2"]);
        }
    }
    let mut child = command.spawn().expect("spawn mesh-sandbox uvicorn");
    match read_port(&mut child, dir.join("sandbox.stderr.log")).await {
        Some(port) => (child, port),
        None => panic!(
            "mesh-sandbox did not report its port; log:\n{}",
            read_logs(dir)
        ),
    }
}

/// Reads uvicorn's stderr into `log` and returns the port from its "running on" line.
async fn read_port(child: &mut Child, log: PathBuf) -> Option<u16> {
    let stderr = child.stderr.take()?;
    let (port_tx, port_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut file = tokio::fs::File::create(&log).await.ok();
        let mut port_tx = Some(port_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(file) = file.as_mut() {
                let _ = file.write_all(format!("{line}\n").as_bytes()).await;
                let _ = file.flush().await;
            }
            if let Some(port) = running_port(&line)
                && let Some(tx) = port_tx.take()
            {
                let _ = tx.send(port);
            }
        }
    });
    tokio::time::timeout(STARTUP_TIMEOUT, port_rx)
        .await
        .ok()?
        .ok()
}

/// Parses `Uvicorn running on http://127.0.0.1:43729 (Press CTRL+C to quit)`.
fn running_port(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("Uvicorn running on ")?;
    let rest = rest.split_once("://")?.1;
    let port: String = rest
        .split_once(':')?
        .1
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    port.parse().ok()
}

/// Finds `<venv>/lib/python3.*/site-packages/mesh_sandbox`.
fn installed_package(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    for entry in entries.flatten() {
        let candidate = entry.path().join("site-packages/mesh_sandbox");
        if candidate.join("api.py").is_file() {
            return candidate;
        }
    }
    panic!("mesh_sandbox is not installed in {}", venv.display());
}

/// Copies the package, leaving out its own tests and bytecode caches.
fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create package copy");
    for entry in std::fs::read_dir(from).expect("read package").flatten() {
        let name = entry.file_name();
        if name == "__pycache__" || name == "tests" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("file type").is_dir() {
            copy_package(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy package file");
        }
    }
}

/// Appends the test mailboxes to the copied `mailboxes.jsonl`.
fn provision_mailboxes(path: &Path) {
    let mut data = std::fs::read_to_string(path).expect("read mailboxes.jsonl");
    if !data.ends_with('\n') {
        data.push('\n');
    }
    for mailbox in std::iter::once(&SERVICE_MAILBOX).chain(RECIPIENT_MAILBOXES.iter()) {
        let line = json!({
            "mailbox_id": mailbox.id,
            "mailbox_name": format!("nems test {}", mailbox.id),
            "billing_entity": "England",
            "ods_code": "X26",
            "org_code": "X26",
            "password": mailbox.password,
        });
        data.push_str(&line.to_string());
        data.push('\n');
    }
    std::fs::write(path, data).expect("write mailboxes.jsonl");
}

fn read_logs(dir: &Path) -> String {
    let mut text = String::new();
    for name in ["sandbox.stderr.log", "sandbox.log"] {
        if let Ok(content) = std::fs::read_to_string(dir.join(name)) {
            // The sandbox prints many deprecation warnings at import; keep the tail.
            let tail: Vec<&str> = content.lines().rev().take(60).collect();
            text.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_running_line() {
        assert_eq!(
            running_port(
                "INFO:     Uvicorn running on http://127.0.0.1:43729 (Press CTRL+C to quit)"
            ),
            Some(43729)
        );
        assert_eq!(
            running_port(
                "INFO:     Uvicorn running on https://127.0.0.1:8443 (Press CTRL+C to quit)"
            ),
            Some(8443)
        );
        assert_eq!(
            running_port("INFO:     Application startup complete."),
            None
        );
    }
}
