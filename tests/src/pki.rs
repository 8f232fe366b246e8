//! Test certificates (rcgen) and a raw HTTPS client for the TLS tests.
//!
//! [`TestPki::new`] writes, as PEM files: the service CA (`ca.pem`), a server certificate
//! for `localhost`/`127.0.0.1`, client certificates from that CA naming
//! `rr8.client.nems.test` and `other.client.nems.test`, an expired one, one from a rogue CA,
//! a self-signed one naming the RR8 identity (a forgery), an operators' CA with an operator
//! client certificate, and an internal CA for core's own clients with an edge, an adapter
//! and a direct caller certificate (see [`EDGE_IDENTITY`] and the others).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::http::HttpResponse;

/// The DNS identity of the RR8 test client certificate.
pub const RR8_IDENTITY: &str = "rr8.client.nems.test";
/// The identity of the operator certificate.
pub const OPERATOR_IDENTITY: &str = "operator.nems.test";
/// The identity of the edge's client certificate for core.
pub const EDGE_IDENTITY: &str = "edge.nems.test";
/// The identity of the adapter's client certificate for core.
pub const ADAPTER_IDENTITY: &str = "adapter.nems.test";
/// The identity of a direct caller's certificate (an internal service).
pub const DIRECT_IDENTITY: &str = "feed.nems.test";

/// A certificate and key file pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Key (PEM).
    pub key: PathBuf,
}

/// The test PKI on disk.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// Service CA (clients and servers of the service API).
    pub ca: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server: Pair,
    /// Client for ASID 200000000111 (`rr8.client.nems.test`).
    pub rr8: Pair,
    /// Client from the same CA with another identity.
    pub other: Pair,
    /// Client whose certificate expired.
    pub expired: Pair,
    /// Client from a CA nobody trusts.
    pub rogue: Pair,
    /// Operators' CA.
    pub operator_ca: PathBuf,
    /// An operator's client certificate.
    pub operator: Pair,
    /// A self-signed certificate naming [`RR8_IDENTITY`].
    pub forged: Pair,
    /// A certificate for [`RR8_IDENTITY`] issued by an intermediate of the service CA; its
    /// file holds the leaf and then the intermediate, so a client presents both.
    pub rr8_via_intermediate: Pair,
    /// The CA of core's own clients (edge, adapters, direct callers).
    pub internal_ca: PathBuf,
    /// The edge's client certificate for core ([`EDGE_IDENTITY`]).
    pub edge: Pair,
    /// The adapter's client certificate for core ([`ADAPTER_IDENTITY`]).
    pub adapter: Pair,
    /// A direct caller's certificate ([`DIRECT_IDENTITY`]).
    pub direct: Pair,
}

/// The DER of the first certificate in a PEM file.
pub fn der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("read pem")
        .next()
        .expect("a certificate")
        .expect("a certificate")
        .to_vec()
}

/// Writes the concatenation of PEM files `parts` to `to` (a CA bundle).
pub fn bundle(to: &Path, parts: &[&Path]) -> PathBuf {
    let mut text = String::new();
    for part in parts {
        text.push_str(&std::fs::read_to_string(part).expect("read pem"));
    }
    std::fs::write(to, text).expect("write bundle");
    to.to_path_buf()
}

fn self_signed(dir: &Path, name: &str, san: &str) -> Pair {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![san.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, san);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).expect("self-signed cert");
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert.pem()).expect("write cert");
    std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
    pair
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("ca cert");
    (cert, Issuer::new(params, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    server: bool,
    issuer: &Issuer<'_, KeyPair>,
    expired: bool,
) -> Pair {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, sans.first().copied().unwrap_or(name));
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if expired {
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    }
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert.pem()).expect("write cert");
    std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
    pair
}

fn intermediate(
    name: &str,
    parent: &Issuer<'_, KeyPair>,
) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.signed_by(&key, parent).expect("intermediate cert");
    (cert, Issuer::new(params, key))
}

impl TestPki {
    /// Generates everything into `dir`.
    pub fn new(dir: &Path) -> Self {
        let (ca_cert, issuer) = ca("nems test service ca");
        let (intermediate_cert, intermediate_issuer) =
            intermediate("nems test service intermediate", &issuer);
        let rr8_via_intermediate = leaf(
            dir,
            "rr8-via-intermediate",
            &[RR8_IDENTITY],
            false,
            &intermediate_issuer,
            false,
        );
        let mut chain = std::fs::read_to_string(&rr8_via_intermediate.cert).expect("read leaf");
        chain.push_str(&intermediate_cert.pem());
        std::fs::write(&rr8_via_intermediate.cert, chain).expect("write chain");
        let (op_cert, op_issuer) = ca("nems test operators ca");
        let (_, rogue_issuer) = ca("nems rogue ca");
        let (internal_cert, internal_issuer) = ca("nems test internal ca");
        let ca_path = dir.join("ca.pem");
        let operator_ca = dir.join("operator-ca.pem");
        let internal_ca = dir.join("internal-ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write ca");
        std::fs::write(&operator_ca, op_cert.pem()).expect("write operator ca");
        std::fs::write(&internal_ca, internal_cert.pem()).expect("write internal ca");
        TestPki {
            server: leaf(
                dir,
                "server",
                &["localhost", "127.0.0.1"],
                true,
                &issuer,
                false,
            ),
            rr8: leaf(dir, "rr8", &[RR8_IDENTITY], false, &issuer, false),
            other: leaf(
                dir,
                "other",
                &["other.client.nems.test"],
                false,
                &issuer,
                false,
            ),
            expired: leaf(dir, "expired", &[RR8_IDENTITY], false, &issuer, true),
            rogue: leaf(dir, "rogue", &[RR8_IDENTITY], false, &rogue_issuer, false),
            operator: leaf(
                dir,
                "operator",
                &[OPERATOR_IDENTITY],
                false,
                &op_issuer,
                false,
            ),
            forged: self_signed(dir, "forged", RR8_IDENTITY),
            rr8_via_intermediate,
            edge: leaf(
                dir,
                "edge",
                &[EDGE_IDENTITY],
                false,
                &internal_issuer,
                false,
            ),
            adapter: leaf(
                dir,
                "adapter",
                &[ADAPTER_IDENTITY],
                false,
                &internal_issuer,
                false,
            ),
            direct: leaf(
                dir,
                "direct",
                &[DIRECT_IDENTITY],
                false,
                &internal_issuer,
                false,
            ),
            internal_ca,
            ca: ca_path,
            operator_ca,
        }
    }
}

/// An HTTPS request over a fresh connection to `addr` (server name `localhost`), trusting
/// `ca` and presenting `client` if given. `Err` describes a refused handshake or a
/// connection closed before an answer (what a client without a valid certificate sees).
pub async fn https(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&Pair>,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Result<HttpResponse, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        Some(pair) => {
            let certs = CertificateDer::pem_file_iter(&pair.cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
