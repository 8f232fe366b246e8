//! A small HTTP/1.1 client for the edge.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client bound to one server.
#[derive(Debug, Clone)]
pub struct HttpClient {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            addr,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// A client for `addr` whose connections come from `local` (e.g. `127.0.0.2`, another
    /// peer address on loopback).
    pub fn with_local_address(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_local_address(Some(local));
        HttpClient {
            addr,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends a request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = self.client.request(request).await.expect("http request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("http body").to_bytes();
        HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// `GET`.
    pub async fn get(&self, path: &str, headers: &[(&str, String)]) -> HttpResponse {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    /// `POST`.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        self.send(Method::POST, path, headers, body).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str, headers: &[(&str, String)]) -> HttpResponse {
        self.send(Method::DELETE, path, headers, Bytes::new()).await
    }
}
