//! TLS between workers and controller (docs/security.md, "The channel between workers and
//! controller"), with real workers (`pacer_worker::run`) on loopback and certificates made by
//! rcgen for each test:
//! - a relay between worker and controller that records every byte sees neither the session
//!   token nor the plan with TLS on, and sees both in plaintext (so the test can see);
//! - a worker given another CA refuses to connect, naming the CA and the verification failure;
//! - a worker with a trusted connection but not the test's token is refused after the
//!   handshake;
//! - renewed certificate files are presented to new connections without a restart;
//! - handshakes that never finish neither hold the listener nor keep a real worker out.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pacer_controller::listener::Transport;
use pacer_controller::tls::ServerTls;
use pacer_controller::{ControllerConfig, Coordinator};
use pacer_worker::{CaSource, TlsTrust, WorkerConfig, WorkerError};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tls-test-session-token-5f3a9c";
/// In the plan (a request path): found in the Assign's bytes when they are readable.
const PLAN_CANARY: &str = "plan-canary-7d41e0b2";
/// How long any one step may take on a busy 2-core machine.
const STEP: Duration = Duration::from_secs(30);

/// A CA and what it signs, written as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let dir = tempfile::tempdir().unwrap();
        // Each CA its own name, as two real CAs have.
        params.distinguished_name.push(
            DnType::CommonName,
            format!("pacer test CA {}", dir.path().display()),
        );
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A serving certificate for 127.0.0.1 and localhost, as (PEM cert, PEM key, DER cert).
    fn leaf(&self) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Write a new serving certificate to `cert.pem`/`key.pem`: its DER.
    fn write_leaf(&self) -> Vec<u8> {
        let (cert, key, der) = self.leaf();
        write_atomically(&self.cert(), &cert);
        write_atomically(&self.key(), &key);
        der
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls::from_files(self.cert(), self.key()).unwrap()
    }
}

/// Replace `path` by a new file (a rename, as Kubernetes and cert-manager do).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn plan() -> Arc<pacer_plan::Plan> {
    let text = format!(
        "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {{name: s, executor: per-vu-iterations, vus: 1, iterations: 1, requests: [{{name: a, path: /{PLAN_CANARY}}}]}}\n"
    );
    Arc::new(pacer_plan::load_str(&text, "plan.yaml", &Default::default()).unwrap())
}

/// A one-worker test served over `transport`: the coordinator, its address, and its stop.
async fn controller(transport: Transport) -> (Coordinator, String, CancellationToken) {
    let mut cfg = ControllerConfig::new("t1", TOKEN, 1);
    cfg.wait_for_workers = STEP;
    cfg.hello_timeout = Duration::from_secs(2);
    let c = Coordinator::new(plan(), cfg).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    c.serve_with(listener, transport, stop.clone());
    (c, addr, stop)
}

fn worker(addr: &str, trust: Option<&Path>, token: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(addr, token);
    cfg.test_id = Some("t1".into());
    cfg.connect_for = STEP;
    cfg.reconnect_for = Duration::from_secs(5);
    cfg.transport = match trust {
        Some(ca) => pacer_worker::Transport::Tls(TlsTrust {
            ca: CaSource::File(ca.to_path_buf()),
            server_name: None,
        }),
        None => pacer_worker::Transport::InsecurePlaintext,
    };
    cfg
}

/// A TCP relay to `upstream` that records every byte either way.
async fn recording_relay(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(copy_recording(dr, uw, seen.clone()));
                tokio::spawn(copy_recording(ur, dw, seen.clone()));
            }
        }
    });
    (addr, seen)
}

async fn copy_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen.lock().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Run a one-worker test through the recording relay: what the relay saw.
async fn run_through_relay(transport: Transport, ca: Option<&Path>) -> Vec<u8> {
    let (c, addr, stop) = controller(transport).await;
    let (relay, seen) = recording_relay(addr).await;
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run().await }
    });
    let outcome = tokio::time::timeout(
        STEP,
        pacer_worker::run(worker(&relay, ca, TOKEN), CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome.index, 0);
    tokio::time::timeout(STEP, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    stop.cancel();
    let bytes = seen.lock().clone();
    assert!(
        bytes.len() > 1000,
        "the relay saw the session: {} bytes",
        bytes.len()
    );
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_wire_shows_neither_the_token_nor_the_plan() {
    let pki = Pki::new();
    pki.write_leaf();
    let seen = run_through_relay(Transport::Tls(pki.server_tls()), Some(&pki.ca())).await;
    assert!(
        !contains(&seen, TOKEN),
        "the session token crossed in the clear"
    );
    assert!(
        !contains(&seen, PLAN_CANARY),
        "the plan crossed in the clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_plaintext_the_same_relay_sees_the_token_and_the_plan() {
    let seen = run_through_relay(Transport::InsecurePlaintext, None).await;
    assert!(contains(&seen, TOKEN), "the relay can read the Hello");
    assert!(
        contains(&seen, PLAN_CANARY),
        "the relay can read the Assign"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_given_another_ca_refuses_to_connect_naming_the_ca() {
    let pki = Pki::new();
    pki.write_leaf();
    let other = Pki::new();
    let (_c, addr, stop) = controller(Transport::Tls(pki.server_tls())).await;
    let started = Instant::now();
    let err = tokio::time::timeout(
        STEP,
        pacer_worker::run(
            worker(&addr, Some(&other.ca()), TOKEN),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    // At once, not after --connect-for: no retry changes the CA.
    assert!(started.elapsed() < STEP / 2, "{:?}", started.elapsed());
    let text = err.to_string();
    assert!(matches!(err, WorkerError::Untrusted(_)), "{err:?}");
    assert!(text.contains("not trusted"), "{text}");
    assert!(
        text.contains(&other.ca().display().to_string()),
        "names the CA: {text}"
    );
    assert!(text.contains("UnknownIssuer"), "names the failure: {text}");
    assert!(!text.contains(TOKEN), "{text}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_worker_cannot_join_a_tls_controller() {
    let pki = Pki::new();
    pki.write_leaf();
    let (_c, addr, stop) = controller(Transport::Tls(pki.server_tls())).await;
    let mut cfg = worker(&addr, None, TOKEN);
    cfg.connect_for = Duration::from_secs(2);
    let err = tokio::time::timeout(STEP, pacer_worker::run(cfg, CancellationToken::new()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, WorkerError::Unreachable { .. }), "{err:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_token_is_refused_after_the_handshake() {
    let pki = Pki::new();
    pki.write_leaf();
    let (_c, addr, stop) = controller(Transport::Tls(pki.server_tls())).await;
    let err = tokio::time::timeout(
        STEP,
        pacer_worker::run(
            worker(&addr, Some(&pki.ca()), "not-the-token-but-long-enough"),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, WorkerError::Refused(_)), "{err:?}");
    assert!(text.contains("session_token"), "{text}");
    stop.cancel();
}

/// The certificate a TLS client trusting `ca` is shown by `addr` now.
async fn presented(addr: &str, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&std::fs::read(ca).unwrap()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(pacer_controller::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_presented_to_new_connections() {
    let pki = Pki::new();
    let first = pki.write_leaf();
    let (_c, addr, stop) = controller(Transport::Tls(pki.server_tls())).await;
    assert_eq!(presented(&addr, &pki.ca()).await, first);

    let renewed = pki.write_leaf();
    assert_ne!(renewed, first);
    let deadline = Instant::now() + STEP;
    loop {
        let now = presented(&addr, &pki.ca()).await;
        if now == renewed {
            break;
        }
        assert_eq!(now, first, "the old certificate until the new one");
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A half-written renewal (a new certificate beside the old key) is not taken: the last
    // good pair stays.
    let (cert, _, _) = pki.leaf();
    write_atomically(&pki.cert(), &cert);
    tokio::time::sleep(pacer_controller::tls::RELOAD_CHECK_INTERVAL * 2).await;
    assert_eq!(presented(&addr, &pki.ca()).await, renewed);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_do_not_keep_a_worker_out() {
    let pki = Pki::new();
    pki.write_leaf();
    let (c, addr, stop) = controller(Transport::Tls(pki.server_tls())).await;
    // More silent connections than handshakes may be in flight.
    let silent = pacer_controller::listener::MAX_HANDSHAKES_IN_FLIGHT * 2;
    let mut conns = Vec::new();
    for _ in 0..silent {
        conns.push(TcpStream::connect(&addr).await.unwrap());
    }
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run().await }
    });
    let started = Instant::now();
    tokio::time::timeout(
        STEP,
        pacer_worker::run(
            worker(&addr, Some(&pki.ca()), TOKEN),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let joined = started.elapsed();
    tokio::time::timeout(STEP, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Each silent connection was closed by the listener (its handshake timed out): a read
    // ends rather than waits.
    let mut closed = 0;
    for mut conn in conns {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(STEP, conn.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, silent, "every silent connection was closed");
    eprintln!("a worker joined through {silent} silent connections in {joined:?}");
    stop.cancel();
}
