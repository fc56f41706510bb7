//! Helpers for pacer's end-to-end tests: the real `pacer` binary as a process, the real mock
//! API on a loopback port, plan files in temporary directories. Every run is bounded in time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pacer_mock::{AuthMode, LatencyConfig, MockConfig, MockServer};

/// A Kubernetes control plane and a process kubelet for the operator's end-to-end tests.
pub mod kube;

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

/// What `pacer run -q PLAN --summary-json FILE` left behind.
pub struct RunSummary {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub summary: serde_json::Value,
}

/// Write `plan` to `dir/plan.yaml` and run `pacer run -q plan.yaml --summary-json
/// dir/summary.json` followed by `extra`; panics, with pacer's output, when no summary was
/// written. `dir` also holds whatever other files `extra` names (`--report`, `--out`).
pub async fn run_summary(
    dir: &Path,
    plan: &str,
    extra: &[String],
    envs: &[(&str, &str)],
    limit: Duration,
) -> RunSummary {
    let p = write(dir, "plan.yaml", plan);
    let sj = dir.join("summary.json");
    let args = ["run", "-q"]
        .into_iter()
        .map(String::from)
        .chain([p.display().to_string()])
        .chain(["--summary-json".to_string(), sj.display().to_string()])
        .chain(extra.iter().cloned())
        .collect();
    let envs = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = pacer_async(args, envs, limit).await;
    let code = out.status.code().unwrap_or(-1);
    assert!(
        sj.exists(),
        "no summary (exit {code}):\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    RunSummary {
        code,
        stdout: stdout(&out),
        stderr: stderr(&out),
        summary: summary(&sj),
    }
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

/// A throwaway `redis-server` on a free loopback port, without persistence, stopped on drop.
/// `restart` brings it back on the same port (empty). A missing `redis-server` fails the test
/// with the way to install it.
pub struct RedisServer {
    pub port: u16,
    /// `--tls-port`, when started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    /// `requirepass`, sent as AUTH by [`RedisServer::command`].
    pub password: Option<String>,
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None, Vec::new())
    }

    /// With a password and extra `redis-server` arguments.
    pub fn start_with(password: Option<&str>, mut extra: Vec<String>) -> Self {
        if let Some(p) = password {
            extra.extend(["--requirepass".to_string(), p.to_string()]);
        }
        let mut s = Self {
            port: kube::free_port().expect("a free loopback port"),
            tls_port: None,
            password: password.map(str::to_string),
            extra,
            child: None,
        };
        s.restart();
        s
    }

    /// TLS on a second port (`rediss://`) with the certificate and key given (PEM files),
    /// clients not asked for certificates; the plain port stays for the test's inspection.
    pub fn start_tls(password: &str, cert: &Path, key: &Path, ca: &Path) -> Self {
        let tls_port = kube::free_port().expect("a free loopback port");
        let extra = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-ca-cert-file",
            &ca.display().to_string(),
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_string)
        .to_vec();
        let mut s = Self::start_with(Some(password), extra);
        s.tls_port = Some(tls_port);
        s
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The `rediss://` URL (with the password) of a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        match &self.password {
            Some(p) => format!("rediss://:{p}@127.0.0.1:{port}"),
            None => format!("rediss://127.0.0.1:{port}"),
        }
    }

    /// Start it (again) on the same port and wait until it answers PING (at most 10 s).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): run `make deps` to install it")
            });
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.command(&["PING"]).is_ok_and(|r| r == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer on port {} within 10 s",
            self.port
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command over RESP; the reply as text (arrays joined by newlines).
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let encode = |args: &[&str]| {
            let mut req = format!("*{}\r\n", args.len());
            for a in args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            req
        };
        let mut req = String::new();
        if let Some(p) = &self.password {
            req.push_str(&encode(&["AUTH", p]));
        }
        req.push_str(&encode(args));
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        fn reply(r: &mut BufReader<std::net::TcpStream>) -> Result<String, String> {
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let line = line.trim_end();
            let (kind, rest) = line.split_at(line.len().min(1));
            match kind {
                "+" | ":" => Ok(rest.to_string()),
                "-" => Err(rest.to_string()),
                "$" => {
                    let n: i64 = rest.parse().map_err(|_| "bad bulk length".to_string())?;
                    if n < 0 {
                        return Ok(String::new());
                    }
                    let mut buf = vec![0; n as usize + 2];
                    r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                    buf.truncate(n as usize);
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
                "*" => {
                    let n: i64 = rest.parse().map_err(|_| "bad array length".to_string())?;
                    let items = (0..n.max(0))
                        .map(|_| reply(r))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(items.join("\n"))
                }
                _ => Err(format!("unexpected reply {line:?}")),
            }
        }
        let mut r = BufReader::new(s);
        if self.password.is_some() {
            reply(&mut r)?;
        }
        reply(&mut r)
    }

    /// Commands Redis ran since the last `CONFIG RESETSTAT`: the sum of `calls` in
    /// `INFO commandstats` (commands run inside scripts count too).
    pub fn commands_run(&self) -> u64 {
        let info = self.command(&["INFO", "commandstats"]).expect("INFO");
        info.lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|v| v.split(',').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway Redis Cluster of `n` masters on loopback (no replicas), each a
/// [`RedisServer`] with `cluster-enabled`; slots are spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|i| {
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                RedisServer::start_with(
                    None,
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf.display().to_string(),
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(str::to_string)
                    .to_vec(),
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): run `make deps`"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Self { nodes, _dir: dir };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if c.nodes.iter().all(|s| {
                s.command(&["CLUSTER", "INFO"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            }) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Redis Cluster did not reach cluster_state:ok within 20 s");
    }

    /// The node serving `key`'s slot (the others answer MOVED).
    pub fn node_of(&self, key: &str) -> &RedisServer {
        self.nodes
            .iter()
            .find(|s| s.command(&["GET", key]).is_ok())
            .expect("a node serving the key's slot")
    }
}
