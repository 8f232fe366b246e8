//! Limits that hold under abuse: oversized headers, a client sending its headers one byte
//! per second (slowloris) and one trickling its body, a flood from one ASID while another
//! is served normally, and connections over the limit. Each is answered with the right status
//! (and an OperationOutcome where HTTP allows one) without disturbing well-behaved clients.
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
async fn a_flood_from_one_asid_does_not_starve_another() {
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(|c| {
            c.rate_limit_per_asid = 20;
            c.rate_limit_burst = 20;
        })
        .start()
        .await;
    let flooder = {
        let http = stack.http.clone();
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
