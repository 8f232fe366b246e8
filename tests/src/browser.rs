//! A real headless Chromium for the console's browser tests, driven over the W3C WebDriver
//! protocol by Debian's `chromedriver` (`chromium` and `chromium-driver`, installed by the
//! test command): start it on a free loopback port, open a session, go to pages, find
//! elements by CSS selector, click, read text and save screenshots.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::http::HttpClient;

/// Where the console tests save their screenshots: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// The Chromium and chromedriver binaries, or `None` after a skip notice (a failure with
/// `NEMS_REQUIRE_TOOLS=1`).
fn binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            crate::tools::missing_tool(
                test,
                "Chromium and chromedriver are missing (Debian chromium and chromium-driver; \
                 scripts/setup-test-tools.sh installs them)",
            );
            None
        }
    }
}

/// One browser session; the driver process ends with it.
pub struct Browser {
    http: HttpClient,
    session: String,
    _driver: tokio::process::Child,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("session", &self.session)
            .finish()
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or `None` (skip notice).
    pub async fn start(test: &str) -> Option<Browser> {
        let (chromium, driver) = binaries(test)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let http = HttpClient::new(addr);
        crate::eventually::eventually("chromedriver to answer", Duration::from_secs(20), || {
            let http = http.clone();
            async move {
                let ready = tokio::time::timeout(Duration::from_secs(2), async {
                    tokio::net::TcpStream::connect(addr).await.ok()?;
                    let status = http.get("/status", &[]).await;
                    (status.status == 200 && status.json()["value"]["ready"] == true).then_some(())
                })
                .await;
                ready.ok().flatten()
            }
        })
        .await;
        let created = call(
            &http,
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                // Finding an element waits up to 5 s for it to appear (a page a click
                // led to may still be loading).
                "timeouts": {"implicit": 5000},
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"],
                },
            }}}),
        )
        .await;
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(Browser {
            http,
            session,
            _driver: child,
        })
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(&self.http, method, &path, body).await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    /// The element `css` selects (panics when none does).
    pub async fn find(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// How many elements `css` selects.
    pub async fn count(&self, css: &str) -> usize {
        let found = self
            .call(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found.as_array().map_or(0, Vec::len)
    }

    /// Clicks the element `css` selects (a link or a form's button: the page it leads to
    /// has loaded when this returns).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Replaces the value of the input `css` selects with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call("POST", &format!("/element/{element}/clear"), json!({}))
            .await;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The visible text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self
            .call("GET", &format!("/element/{element}/text"), Value::Null)
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the current page's title is `title` (a form whose answer redirects
    /// may still be loading when its click returns); panics after 20 s.
    pub async fn wait_for_title(&self, title: &str) {
        let what = format!("the page titled `{title}`");
        crate::eventually::eventually(&what, Duration::from_secs(20), || async {
            (self.title().await == title).then_some(())
        })
        .await;
    }

    /// The current page's title.
    pub async fn title(&self) -> String {
        let title = self.call("GET", "/title", Value::Null).await;
        title.as_str().unwrap_or_default().to_owned()
    }

    /// The current page's HTML.
    pub async fn source(&self) -> String {
        let source = self.call("GET", "/source", Value::Null).await;
        source.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self.call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the session (the browser exits; the driver goes with `self`).
    pub async fn close(self) {
        self.call("DELETE", "", Value::Null).await;
    }
}

/// One WebDriver command; its `value`, or a panic naming the WebDriver error.
async fn call(http: &HttpClient, method: &str, path: &str, body: Value) -> Value {
    let headers = [("content-type", "application/json".to_owned())];
    let response = match method {
        "GET" => http.get(path, &[]).await,
        "DELETE" => http.delete(path, &[]).await,
        _ => http.post(path, &headers, body.to_string()).await,
    };
    let value = response.json()["value"].clone();
    assert!(
        response.status == 200,
        "WebDriver {method} {path}: {} {value}",
        response.status
    );
    value
}
