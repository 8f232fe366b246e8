//! Limits that hold under abuse: oversized headers, a client sending its headers one byte
//! per second (slowloris) and one trickling its body, a flood from one client while another
//! is served normally, connections over the limit, bodies from unauthenticated or throttled
//! clients (never read), HTTP/2 streams per connection, and HTTP/2 peers that stop
//! answering. Each is answered with the right status (and an OperationOutcome where HTTP
//! allows one) without disturbing well-behaved clients.
//! The sleeps in the slow clients are the fault being injected, not synchronisation.

use std::time::{Duration, Instant};

use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpClient;
use nems_e2e::spine::{self, OTHER, Op, SUBSCRIBER};
use nems_e2e::stack::{Sink, TestStack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UNKNOWN: &str = "/STU3/Subscription/0123456789abcdef0123456789abcdef";

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| c.max_header_bytes = 16 * 1024)
        .start()
        .await;
    // Over the limit: 431 with an OperationOutcome carrying the request id.
    let mut headers = spine::headers(SUBSCRIBER, Op::Read);
    headers.push(("X-Padding", "a".repeat(20 * 1024)));
    headers.push(("X-Request-ID", "oversized-1".into()));
    let refused = stack.http.get(UNKNOWN, &headers).await;
    assert_eq!(refused.status, 431, "{}", refused.text());
    let text = refused.text();
    assert!(
        text.contains("OperationOutcome")
            && text.contains("too-costly")
            && text.contains("INVALID_REQUEST_MESSAGE")
            && text.contains("16384-byte limit")
            && text.contains("oversized-1"),
        "{text}"
    );
    // Just under the limit: served (here: the unknown subscription's 404).
    let mut headers = spine::headers(SUBSCRIBER, Op::Read);
    headers.push(("X-Padding", "a".repeat(12 * 1024)));
    assert_eq!(stack.http.get(UNKNOWN, &headers).await.status, 404);

    // Far over it (past the 4× read buffer): the HTTP library answers a bare 431 and
    // closes the connection without buffering the rest.
    let mut headers = spine::headers(SUBSCRIBER, Op::Read);
    headers.push(("X-Padding", "a".repeat(256 * 1024)));
    let mut stream = TcpStream::connect(stack.edge_addr).await.unwrap();
    let mut request = format!("GET {UNKNOWN} HTTP/1.1\r\nHost: nems\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        answer.lines().next().unwrap_or("")
    );
    // The service is unaffected.
    assert_eq!(stack.http.get("/STU3/metadata", &[]).await.status, 200);
    stack.shutdown().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| {
            c.header_read_timeout = Duration::from_secs(1);
            c.request_timeout = Duration::from_secs(2);
        })
        .start()
        .await;
    // Headers one byte per second: the connection is closed after the header timeout.
    let addr = stack.edge_addr;
    let slow_headers = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for byte in b"GET /STU3/metadata HTTP/1.1\r\nHost: nems\r\n" {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        let answer = read_to_close(&mut stream).await;
        (started.elapsed(), answer)
    });
    // A body one byte per second: 408 with an OperationOutcome after the request timeout.
    let headers = spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None);
    let slow_body = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head = "POST /STU3/Subscription HTTP/1.1\r\nHost: nems\r\nContent-Length: 1000\r\n"
            .to_string();
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = String::new();
        for _ in 0..10 {
            if stream.write_all(b"<").await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    answer.push_str(&String::from_utf8_lossy(&buf[..n]));
                    break;
                }
                Ok(_) => break,
                Err(_) => {}
            }
        }
        (started.elapsed(), answer)
    });
    // Meanwhile a normal client is served promptly.
    let served = Instant::now();
    for _ in 0..20 {
        assert_eq!(stack.http.get("/STU3/metadata", &[]).await.status, 200);
    }
    assert!(
        served.elapsed() < Duration::from_secs(2),
        "normal clients slowed to {:?}",
        served.elapsed()
    );

    let (took, answer) = slow_headers.await.unwrap();
    assert!(
        took < Duration::from_secs(6),
        "slow header client held the connection for {took:?}"
    );
    assert!(
        !answer.contains("200 OK"),
        "slow headers were served: {answer}"
    );
    let (took, answer) = slow_body.await.unwrap();
    assert!(
        took < Duration::from_secs(6),
        "slow body client held the request for {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("OperationOutcome"), "{answer}");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_flood_from_one_client_does_not_starve_another() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| {
            c.rate_limit_per_asid = 20;
            c.rate_limit_burst = 20;
        })
        .start()
        .await;
    // The flooder is another peer address (the limiter's key without mutual TLS).
    let flooder = {
        let http = HttpClient::with_local_address(
            stack.edge_addr,
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
        );
        tokio::spawn(async move {
            let headers = spine::headers(SUBSCRIBER, Op::Read);
            let mut limited = None;
            let mut answered = 0;
            for _ in 0..200 {
                let r = http.get(UNKNOWN, &headers).await;
                answered += 1;
                if r.status == 429 {
                    limited = Some(r);
                }
            }
            (answered, limited)
        })
    };
    let other_headers = spine::headers(OTHER, Op::Read);
    for _ in 0..15 {
        let r = stack.http.get(UNKNOWN, &other_headers).await;
        assert_eq!(r.status, 404, "the other ASID was affected: {}", r.text());
    }
    let (answered, limited) = flooder.await.unwrap();
    assert_eq!(answered, 200);
    let limited = limited.expect("the flood was never limited");
    assert!(limited.header("retry-after").is_some());
    assert!(
        limited.text().contains("OperationOutcome") && limited.text().contains("throttled"),
        "{}",
        limited.text()
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_answered_503_until_a_slot_frees() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| c.max_connections = 1)
        .start()
        .await;
    // Hold the only slot with an open keep-alive connection.
    let mut holder = TcpStream::connect(stack.edge_addr).await.unwrap();
    holder
        .write_all(b"GET /STU3/metadata HTTP/1.1\r\nHost: nems\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = holder.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Another connection is answered at once: 503, Retry-After, an OperationOutcome.
    let mut other = TcpStream::connect(stack.edge_addr).await.unwrap();
    other
        .write_all(b"GET /STU3/metadata HTTP/1.1\r\nHost: nems\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains("OperationOutcome")
            && answer.contains("transient")
            && answer.contains("connection limit"),
        "{answer}"
    );
    // Its id is the X-Request-ID answered, as on every other answer.
    let request_id = lower
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("an X-Request-ID header");
    assert!(
        answer.contains(&format!("<id value=\"{}\"/>", request_id.trim())),
        "{answer}"
    );

    // Once the slot is free, requests are served again.
    drop(holder);
    let http = HttpClient::new(stack.edge_addr);
    eventually("a free connection slot", Duration::from_secs(5), || {
        let http = http.clone();
        async move { (http.get("/STU3/metadata", &[]).await.status == 200).then_some(()) }
    })
    .await;
    stack.shutdown().await;
}

/// Sends the request line, `headers` and `Content-Length: declared`, but only the first
/// 64 KiB of the body; returns the answer read while the rest is still owed (`None` when
/// none comes within `wait`).
async fn answer_before_the_body_ends(
    stack: &TestStack,
    path: &str,
    headers: &[(&str, String)],
    declared: usize,
    wait: Duration,
) -> Option<String> {
    let mut stream = TcpStream::connect(stack.edge_addr).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: nems\r\nContent-Length: {declared}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; 64 * 1024]).await.unwrap();
    tokio::time::timeout(wait, read_response(&mut stream))
        .await
        .ok()
}

/// Reads one HTTP/1.1 response with a `Content-Length` body (as the edge sends).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&all).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return text,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `body` with `Transfer-Encoding: chunked` (no `Content-Length`, so nothing is
/// refused up front); returns the answer. Write errors after the answer are expected.
async fn send_chunked(
    stack: &TestStack,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> String {
    let stream = TcpStream::connect(stack.edge_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: nems\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut raw = Vec::new();
    let _ = reader.read_to_end(&mut raw).await;
    // The write half is dropped only now: dropping it earlier would half-close the
    // connection, which the server takes as the client going away.
    let _ = writing.await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// `headers` with `name` replaced by `value` (or removed when `None`).
fn replaced(
    mut headers: Vec<(&'static str, String)>,
    name: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    headers.retain(|(n, _)| *n != name);
    if let Some(value) = value {
        headers.push((name, value.to_string()));
    }
    headers
}

/// The Spine headers, the JWT and the rate limit are checked before a request body is
/// read: an unauthenticated or throttled client is answered at once, while its body is
/// still arriving, and never with `413` however large the body it sends.
#[tokio::test]
async fn headers_are_checked_before_the_body_is_read() {
    const PUBLISH: &str = "/STU3/Events/1/$process-message";
    // How long an answer may take; far less than the request timeout, which waiting for
    // the rest of a body would run into.
    const WAIT: Duration = Duration::from_secs(10);
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| {
            c.request_timeout = Duration::from_secs(60);
            c.rate_limit_per_asid = 1;
            c.rate_limit_burst = 1;
        })
        .start()
        .await;
    let xml = "application/fhir+xml";
    let publish = spine::with_media(SUBSCRIBER, Op::Publish("Vaccinations"), xml, None);
    let create = spine::with_media(SUBSCRIBER, Op::Create, xml, None);
    let limit = 3 * 1024 * 1024;
    let refused = [
        (
            PUBLISH,
            replaced(publish.clone(), "Authorization", Some("Bearer not-a-jwt")),
            "HTTP/1.1 400",
            "MISSING_OR_INVALID_HEADER",
        ),
        (
            "/STU3/Subscription",
            replaced(create.clone(), "Authorization", None),
            "HTTP/1.1 400",
            "MISSING_OR_INVALID_HEADER",
        ),
        (
            "/STU3/Subscription",
            replaced(create.clone(), "toASID", Some("200000000999")),
            "HTTP/1.1 403",
            "ASID_CHECK_FAILED",
        ),
    ];
    for (path, headers, status, code) in &refused {
        // A body within the limit, mostly unsent: the answer does not wait for it.
        let answer = answer_before_the_body_ends(&stack, path, headers, limit, WAIT)
            .await
            .unwrap_or_else(|| panic!("{path} {code}: no answer while the body was owed"));
        assert!(answer.starts_with(status), "{path} {code}: {answer}");
        assert!(answer.contains(code), "{path} {code}: {answer}");
        // A body over the limit sent in chunks: the header error, not 413.
        let answer = send_chunked(&stack, path, headers, vec![b' '; limit + 1]).await;
        assert!(answer.starts_with(status), "{path} {code}: {answer}");
        assert!(answer.contains(code), "{path} {code}: {answer}");
    }
    // The same chunked body with valid headers is read, and refused for its size.
    let answer = send_chunked(&stack, PUBLISH, &publish, vec![b' '; limit + 1]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A throttled caller (one request a second, a bucket of one) is answered 429 without
    // its body being read either. Its bucket refills within a second: should the create
    // come that late (a loaded machine), its body is awaited, and the attempt is repeated.
    let read = spine::headers(SUBSCRIBER, Op::Read);
    let mut answer = None;
    for _ in 0..3 {
        let http = stack.http.clone();
        eventually("the caller to be throttled", Duration::from_secs(5), || {
            let (http, read) = (http.clone(), read.clone());
            async move { (http.get(UNKNOWN, &read).await.status == 429).then_some(()) }
        })
        .await;
        let path = "/STU3/Subscription";
        let wait = Duration::from_secs(2);
        answer = answer_before_the_body_ends(&stack, path, &create, limit, wait).await;
        if answer.is_some() {
            break;
        }
    }
    let answer = answer.expect("no answer while the body was owed");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("throttled"), "{answer}");
    stack.shutdown().await;
}

/// Connects to the edge with a bare HTTP/2 client (prior knowledge, no TLS) and has one
/// `GET /STU3/metadata` answered, so that the server's SETTINGS have been applied.
async fn http2_client(stack: &TestStack) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(stack.edge_addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    http2_metadata(client.clone()).await;
    client
}

/// `GET /STU3/metadata` over `client`, expecting `200`.
async fn http2_metadata(client: h2::client::SendRequest<bytes::Bytes>) {
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("http://nems/STU3/metadata")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}

#[tokio::test]
async fn http2_connections_are_limited_to_32_streams_or_as_configured() {
    let stack = TestStack::builder().sink(Sink::None).start().await;
    let client = http2_client(&stack).await;
    assert_eq!(client.current_max_send_streams(), 32);
    stack.shutdown().await;

    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| c.http2_max_concurrent_streams = 4)
        .start()
        .await;
    let client = http2_client(&stack).await;
    assert_eq!(client.current_max_send_streams(), 4);
    stack.shutdown().await;
}

/// The types of the HTTP/2 frames in `bytes` (whole frames only).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + length {
            break;
        }
        types.push(rest[3]);
        rest = &rest[9 + length..];
    }
    types
}

/// An HTTP/2 peer that stops answering is PINGed and dropped after the keep-alive timeout,
/// freeing its connection slot; a live peer on the same edge answers its PINGs and stays.
#[tokio::test]
async fn dead_http2_peers_are_dropped_after_an_unanswered_ping() {
    const PING: u8 = 6;
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| {
            // The live peer has 2 s to answer each PING, even on a loaded machine.
            c.http2_keep_alive_interval = Duration::from_millis(500);
            c.http2_keep_alive_timeout = Duration::from_secs(2);
        })
        .start()
        .await;
    let live = http2_client(&stack).await;

    // The dead peer sends the connection preface and its (empty) SETTINGS, then only
    // listens: it never acknowledges anything nor answers a PING.
    let mut dead = TcpStream::connect(stack.edge_addr).await.unwrap();
    dead.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match dead.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the dead peer's connection is still open");
    let types = frame_types(&received);
    assert!(
        types.contains(&PING),
        "closed without a PING first: {types:?}"
    );

    // The live peer has had the same PINGs, answered them, and is still served.
    http2_metadata(live).await;
    stack.shutdown().await;
}
