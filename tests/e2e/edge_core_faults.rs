//! The edge when core is unreachable or failing. Subscription reads, creates and deletes and
//! publishes are answered with a Spine OperationOutcome carrying the request id: `503` with
//! `Retry-After` when core cannot be reached or asks for a pause, `500` (quoting the request
//! id) when it fails otherwise. Nothing of the failure itself (core's address, its message,
//! the gRPC library's words) reaches the client.

use std::net::SocketAddr;

use nems_e2e::http::HttpResponse;
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_e2e::stack::{Sink, TestStack};
use nems_proto::v1 as pb;
use nems_proto::v1::event_service_server::{EventService, EventServiceServer};
use nems_proto::v1::subscription_service_server::{SubscriptionService, SubscriptionServiceServer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::publish_common::{FHIR_XML, PUBLISH_PATH, vaccination};
use crate::subscription_api::{Fmt, outcome};

const SUBSCRIPTION: &str = "/STU3/Subscription/0123456789abcdef0123456789abcdef";

/// Words that would give away how the edge reaches core.
const INTERNALS: [&str; 6] = [
    "tonic",
    "transport",
    "grpc",
    "connect",
    "127.0.0.1",
    "10.9.8.7",
];

/// A local address nothing listens on: bound, read, and released again.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A create, a read, a delete and a publish, each with its own `X-Request-ID`.
async fn send_all(stack: &TestStack, tag: &str) -> Vec<(String, HttpResponse)> {
    let sub = spine::subscription_xml("RR8", "RR8MBX01", &spine::explicit("9434765919", &[], ""));
    let with_id = |mut headers: Vec<(&'static str, String)>, id: &str| {
        headers.push(("X-Request-ID", id.to_string()));
        headers
    };
    let mut answers = Vec::new();
    let id = format!("{tag}-create");
    let headers = with_id(
        spine::with_media(SUBSCRIBER, Op::Create, FHIR_XML, None),
        &id,
    );
    let r = stack.http.post("/STU3/Subscription", &headers, sub).await;
    answers.push((id, r));
    let id = format!("{tag}-read");
    let headers = with_id(spine::headers(SUBSCRIBER, Op::Read), &id);
    answers.push((id, stack.http.get(SUBSCRIPTION, &headers).await));
    let id = format!("{tag}-delete");
    let headers = with_id(spine::headers(SUBSCRIBER, Op::Delete), &id);
    answers.push((id, stack.http.delete(SUBSCRIPTION, &headers).await));
    let id = format!("{tag}-publish");
    let op = Op::Publish("Vaccinations");
    let headers = with_id(spine::with_media(SUBSCRIBER, op, FHIR_XML, None), &id);
    let r = stack.http.post(PUBLISH_PATH, &headers, vaccination()).await;
    answers.push((id, r));
    answers
}

/// Checks a Spine OperationOutcome with `status`, `INTERNAL_SERVER_ERROR` and `issue`, whose
/// `id` (and `X-Request-ID`) is `request_id`, free of internal detail; returns the diagnostics.
fn internal_outcome(r: &HttpResponse, request_id: &str, status: u16, issue: &str) -> String {
    let diagnostics = outcome(r, Fmt::Xml, status, "INTERNAL_SERVER_ERROR", issue);
    assert_eq!(r.header("x-request-id"), Some(request_id), "{}", r.text());
    let text = r.text().to_ascii_lowercase();
    for word in INTERNALS {
        assert!(
            !text.contains(word),
            "`{word}` in {request_id}: {}",
            r.text()
        );
    }
    diagnostics
}

/// Returns the `Retry-After` seconds of `r`.
fn retry_after(r: &HttpResponse) -> u64 {
    let value = r.header("retry-after").expect("a Retry-After header");
    value.parse().expect("Retry-After in seconds")
}

#[tokio::test]
async fn an_unreachable_core_is_answered_503_with_retry_after() {
    let closed = closed_port().await;
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(move |c| c.core_url = format!("http://{closed}"))
        .start()
        .await;
    for (id, r) in send_all(&stack, "core-down").await {
        internal_outcome(&r, &id, 503, "transient");
        assert!(retry_after(&r) >= 1, "{id}");
        assert!(
            !r.text().contains(&closed.port().to_string()),
            "{id}: {}",
            r.text()
        );
    }
    stack.shutdown().await;
}

/// A core stand-in answering every subscription and publish call with one status.
#[derive(Debug, Clone, Copy)]
struct FailingCore(fn() -> Status);

#[tonic::async_trait]
impl SubscriptionService for FailingCore {
    async fn create_subscription(
        &self,
        _: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        Err((self.0)())
    }

    async fn get_subscription(
        &self,
        _: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        Err((self.0)())
    }

    async fn delete_subscription(
        &self,
        _: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        Err((self.0)())
    }
}

#[tonic::async_trait]
impl EventService for FailingCore {
    async fn publish_event(
        &self,
        _: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        Err((self.0)())
    }
}

/// Serves `core` on a local port; the task is aborted by the caller.
async fn serve(core: FailingCore) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SubscriptionServiceServer::new(core))
            .add_service(EventServiceServer::new(core))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, task)
}

/// Starts a stack whose edge talks to `core` instead of the real core.
async fn stack_with(core: FailingCore) -> (TestStack, JoinHandle<()>) {
    let (addr, task) = serve(core).await;
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(move |c| c.core_url = format!("http://{addr}"))
        .start()
        .await;
    (stack, task)
}

#[tokio::test]
async fn a_busy_core_is_answered_503_with_its_retry_after() {
    let (stack, core) = stack_with(FailingCore(|| {
        nems_proto::spine::unavailable(
            "write queue full at 10.9.8.7",
            std::time::Duration::from_secs(7),
        )
    }))
    .await;
    for (id, r) in send_all(&stack, "core-busy").await {
        let diagnostics = internal_outcome(&r, &id, 503, "transient");
        assert_eq!(retry_after(&r), 7, "{id}");
        assert!(diagnostics.contains("7 seconds"), "{id}: {diagnostics}");
        assert!(!diagnostics.contains("queue"), "{id}: {diagnostics}");
    }
    core.abort();
    stack.shutdown().await;
}

#[tokio::test]
async fn a_failing_core_is_answered_500_quoting_the_request_id() {
    let (stack, core) = stack_with(FailingCore(|| {
        Status::internal("tonic transport error: redb commit failed at 10.9.8.7")
    }))
    .await;
    for (id, r) in send_all(&stack, "core-failed").await {
        let diagnostics = internal_outcome(&r, &id, 500, "exception");
        assert!(diagnostics.contains(&id), "{id}: {diagnostics}");
        assert!(!diagnostics.contains("redb"), "{id}: {diagnostics}");
        assert_eq!(r.header("retry-after"), None, "{id}");
    }
    core.abort();
    stack.shutdown().await;
}
