//! Helpers for pacer's end-to-end tests: the real `pacer` binary as a process, the real mock
//! API on a loopback port, plan files in temporary directories. Every run is bounded in time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pacer_mock::{AuthMode, LatencyConfig, MockConfig, MockServer};

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The `pacer` binary, built once if it is not there yet. `PACER_BIN` overrides.
pub fn pacer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("PACER_BIN") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", "pacer-cli"])
            .current_dir(&root)
            .status()
            .expect("cargo build -p pacer-cli");
        assert!(status.success(), "building pacer failed");
        target.join("debug").join("pacer")
    })
    .clone()
}

/// Run `pacer` with `args`, killing it after `limit`.
pub fn pacer(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(pacer_bin());
    cmd.args(args)
        .env_remove("PACER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn pacer");
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for pacer: {e}"),
        }
    }
    child.wait_with_output().expect("pacer output")
}

/// Async wrapper so tokio tests keep serving the mock while pacer runs.
pub async fn pacer_async(
    args: Vec<String>,
    envs: Vec<(String, String)>,
    limit: Duration,
) -> Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pacer(&a, &e, limit)
    })
    .await
    .expect("pacer task")
}

/// A mock API without auth or limits, answering after `latency`.
pub fn plain_mock_config(latency: LatencyConfig) -> MockConfig {
    MockConfig {
        auth: AuthMode::Off,
        limits: Vec::new(),
        token_rate_limit: None,
        latency,
        ..MockConfig::default()
    }
}

pub async fn start_mock(config: MockConfig) -> MockServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    pacer_mock::serve(config, listener)
        .await
        .expect("mock starts")
}

/// Write `text` to `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write plan");
    p
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Read a `--summary-json` file.
pub fn summary(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("summary json written");
    serde_json::from_str(&text).expect("summary is JSON")
}

/// Start `pacer` without waiting (stdout and stderr piped).
pub fn pacer_spawn(args: &[&str]) -> std::process::Child {
    Command::new(pacer_bin())
        .args(args)
        .env_remove("PACER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pacer")
}

/// Send SIGINT (what Ctrl-C sends) to a process.
pub fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
}

/// Wait for a child at most `limit`, killing it after that; returns its output.
pub fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Output {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("child output")
}
