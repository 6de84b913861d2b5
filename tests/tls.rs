//! Real TLS handshakes with a throwaway CA (rcgen): the server with TLS and with mutual TLS,
//! clients with and without the CA or a client certificate, the CLI over `https://`, and the
//! router client over HTTPS to a fake router signed by a private CA.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::fake_router::{chat, FakeRouter};
use common::{test_config, TestServer};
use quarry::answer::router::Endpoint;
use quarry::grpc::pb;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, as PEM
/// files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Quarry test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, file: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
        };
        leaf(vec!["localhost".into(), "127.0.0.1".into()], "server");
        leaf(vec!["client.quarry.test".into()], "client");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }
}

async fn tls_server(pki: &Pki, mutual: bool) -> (TestServer, tempfile::TempDir, String) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.tls.cert = Some(pki.path("server.pem"));
    config.tls.key = Some(pki.path("server.key"));
    if mutual {
        config.tls.client_ca = Some(pki.path("ca.pem"));
    }
    let server = TestServer::start(config).await;
    let url = server.url.replace("http://127.0.0.1", "https://localhost");
    (server, data, url)
}

async fn connect(url: &str, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    quarry::tls::install_crypto_provider();
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn list(channel: Channel) -> Result<usize, tonic::Status> {
    pb::collections_client::CollectionsClient::new(channel)
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .map(|r| r.into_inner().collections.len())
}

#[tokio::test]
async fn the_server_speaks_tls_to_clients_that_trust_its_ca() {
    let pki = Pki::new();
    let (server, _data, url) = tls_server(&pki, false).await;
    let with_ca = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.read("ca.pem")));
    let channel = connect(&url, with_ca).await.expect("handshake with the CA");
    assert_eq!(list(channel).await.unwrap(), 0);
    // Without the CA (system roots only) the handshake fails.
    let untrusted = connect(&url, ClientTlsConfig::new().with_native_roots()).await;
    match untrusted {
        Err(_) => {}
        Ok(channel) => assert!(
            list(channel).await.is_err(),
            "an untrusted server was accepted"
        ),
    }
    // Plaintext gRPC to a TLS port fails too.
    let plain = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(list(channel).await.is_err());
    }
    // The HTTP door speaks TLS with the same certificate; plaintext HTTP to it fails.
    let https = server
        .http_url
        .replace("http://127.0.0.1", "https://localhost");
    let client = https_client(&pki, None);
    let r = client
        .get(format!("{https}/v1/collections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/collections", server.http_url))
        .send()
        .await;
    assert!(
        r.is_err() || !r.unwrap().status().is_success(),
        "plaintext HTTP was served beside TLS"
    );
    server.stop().await;
}

/// An HTTPS client trusting the test CA, with a client certificate when given.
fn https_client(pki: &Pki, identity: Option<&str>) -> reqwest::Client {
    quarry::tls::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(pki.read("ca.pem").as_bytes()).unwrap();
    let mut b = reqwest::Client::builder().add_root_certificate(ca);
    if let Some(name) = identity {
        let pem = format!(
            "{}{}",
            pki.read(&format!("{name}.pem")),
            pki.read(&format!("{name}.key"))
        );
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let (server, _data, url) = tls_server(&pki, true).await;
    let ca = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.read("ca.pem")));
    let identity = Identity::from_pem(pki.read("client.pem"), pki.read("client.key"));
    let channel = connect(&url, ca().identity(identity)).await.unwrap();
    assert_eq!(list(channel).await.unwrap(), 0);
    match connect(&url, ca()).await {
        Err(_) => {}
        Ok(channel) => assert!(
            list(channel).await.is_err(),
            "no client certificate, yet served"
        ),
    }
    // The same over HTTPS: with the client certificate served, without refused.
    let https = server
        .http_url
        .replace("http://127.0.0.1", "https://localhost");
    let with_cert = https_client(&pki, Some("client"));
    let r = with_cert
        .get(format!("{https}/v1/collections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let without = https_client(&pki, None)
        .get(format!("{https}/v1/collections"))
        .send()
        .await;
    assert!(
        without.is_err(),
        "no client certificate, yet served over HTTPS"
    );
    server.stop().await;
}

fn quarry(args: &[&str], pki: &Pki) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .env_remove("QUARRY_API_KEY")
        .env_remove("QUARRY_CA_CERT")
        .env("QUARRY_CLIENT_CERT", pki.path("client.pem"))
        .env("QUARRY_CLIENT_KEY", pki.path("client.key"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_an_https_server_with_its_ca() {
    let pki = Pki::new();
    let (server, _data, url) = tls_server(&pki, true).await;
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let corpus = common::fixture_dir().join("corpus.jsonl");
    let corpus = corpus.to_str().unwrap();
    let (url2, pki) = (url.clone(), &pki);
    let ok = tokio::task::block_in_place(|| {
        quarry(
            &[
                "ingest",
                "--quiet",
                "--server",
                &url2,
                "--ca-cert",
                ca,
                "--collection",
                "mini",
                corpus,
            ],
            pki,
        )
    });
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let found = tokio::task::block_in_place(|| {
        quarry(
            &[
                "search",
                "--json",
                "--server",
                &url,
                "--ca-cert",
                ca,
                "--collection",
                "mini",
                "which organelle produces ATP",
            ],
            pki,
        )
    });
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(json["hits"][0]["document_id"], "bio-mitochondria");
    // Without the CA the CLI fails with a message, not a hang.
    let refused = tokio::task::block_in_place(|| {
        quarry(
            &["search", "--server", &url, "--collection", "mini", "ATP"],
            pki,
        )
    });
    assert!(!refused.status.success());
    server.stop().await;
}

fn router_tls(pki: &Pki) -> Arc<rustls::ServerConfig> {
    quarry::tls::install_crypto_provider();
    let certs = pem_certs(&pki.path("server.pem"));
    let key = rustls::pki_types::PrivateKeyDer::try_from(pem_der(&pki.path("server.key"))).unwrap();
    Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

/// The DER inside a one-block PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&body)
}

fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    vec![rustls::pki_types::CertificateDer::from(pem_der(path))]
}

/// Standard base64 (the PEM body), without a dependency for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let take = chunk.len() - 1;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_an_https_router_with_a_private_ca() {
    let pki = Pki::new();
    let fake = FakeRouter::start_tls(
        vec![],
        chat(r#"{"answer": "Mitochondria make ATP.", "citations": [1]}"#),
        router_tls(&pki),
    )
    .await;
    assert!(fake.url.starts_with("https://"));
    let data = tempfile::tempdir().unwrap();
    let mut trusted = Endpoint::from_url(&fake.url);
    trusted.ca_cert = Some(pki.path("ca.pem"));
    let mut config = test_config(data.path());
    config.answer.routers = vec![trusted];
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "mini").await;
    let mut answers = pb::answers_client::AnswersClient::new(channel.clone());
    let question = pb::AnswerRequest {
        collection: "mini".into(),
        question: "Which organelle makes ATP?".into(),
        top_k: 4,
        ..Default::default()
    };
    let r = answers.answer(question.clone()).await.unwrap().into_inner();
    assert!(r.grounded && r.citations.len() == 1, "{r:?}");
    assert_eq!(fake.request_count(), 1);
    server.stop().await;

    // Without the CA the router's certificate is not trusted: UNAVAILABLE, and the fake router
    // never sees a request.
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.answer.routers = vec![Endpoint::from_url(&fake.url)];
    config.answer.retry.max_retries = 0;
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "mini").await;
    let e = pb::answers_client::AnswersClient::new(channel)
        .answer(question)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    assert_eq!(fake.request_count(), 1);
    server.stop().await;
}

/// Connections that never finish a TLS handshake are closed after the handshake timeout,
/// instead of being held open for ever.
#[tokio::test]
async fn half_open_handshakes_are_cut_off() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let (server, _data, _url) = tls_server(&pki, false).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Half a ClientHello on one of them: a started handshake is cut off as well.
    {
        use tokio::io::AsyncWriteExt;
        idle[0]
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
    }
    let limit = quarry::grpc::TLS_HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(10);
    let started = std::time::Instant::now();
    for mut s in idle {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection without a handshake was still open after {:?}",
            started.elapsed()
        );
    }
    eprintln!(
        "20 idle TLS connections closed after {:?}",
        started.elapsed()
    );
    server.stop().await;
}
