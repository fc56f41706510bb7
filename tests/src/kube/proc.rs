//! Processes of the harness: free loopback ports, control-plane components in their own process
//! groups, and a watchdog that kills every group and removes the cluster's directory when the
//! test process is gone (a shared `static` cluster is never dropped; a crashed test never drops
//! anything).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal};

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it meanwhile,
/// which is unlikely enough on a test machine).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Send `signal` to every process of the group `pgid`. A group that is already gone is not an
/// error.
pub fn signal_group(pgid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Kill (SIGKILL) every process of the group `pgid`.
pub fn kill_group(pgid: u32) {
    signal_group(pgid, Signal::KILL);
}

/// Whether any live (not zombie) process is in the process group `pgid`, from `/proc`.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
        state != Some("Z") && pgrp == Some(pgid)
    })
}

/// The last `lines` lines of a file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Process groups to kill if the test process dies: appended to `<dir>/pgids`, read by the
/// watchdog.
#[derive(Debug)]
pub struct GroupRegistry {
    file: Mutex<Option<File>>,
    path: PathBuf,
}

impl GroupRegistry {
    pub fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("pgids");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(Some(file)),
            path,
        })
    }

    pub fn register(&self, pgid: u32) {
        if let Ok(mut guard) = self.file.lock()
            && let Some(f) = guard.as_mut()
        {
            let _ = writeln!(f, "{pgid}");
            let _ = f.flush();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A control-plane component: one process, leader of its own process group, output in a log file.
#[derive(Debug)]
pub struct Component {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl Component {
    /// Start `program` with `args` in its own process group, stdout and stderr to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        groups: &GroupRegistry,
    ) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        groups.register(child.id());
        Ok(Self { name, log, child })
    }

    /// The process's id, also its process group's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` when the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait: {e}")),
        }
    }

    /// Kill the whole group and reap the process.
    pub fn kill(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small shell process, in its own group, that waits for the test process to end and then
/// kills every registered group and removes the directory (unless `keep`).
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
}

const WATCHDOG: &str = r#"
parent=$1; dir=$2; keep=$3
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
if [ -f "$dir/pgids" ]; then
  for g in $(cat "$dir/pgids"); do kill -9 "-$g" 2>/dev/null; done
fi
# a real node's containers, shims, mounts and cgroups (tests/src/kube/node.rs)
[ -f "$dir/cleanup.sh" ] && sh "$dir/cleanup.sh"
[ "$keep" = 1 ] || rm -rf "$dir"
"#;

impl Watchdog {
    pub fn start(dir: &Path, keep: bool) -> Result<Self> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("pacer-e2e-watchdog")
            .arg(std::process::id().to_string())
            .arg(dir)
            .arg(if keep { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the watchdog (sh)")?;
        Ok(Self { child })
    }

    /// Stop the watchdog: the owner cleans up itself.
    pub fn stop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}
