//! Health checks that decide whether a trial boot is committed. Each check is a TOML
//! file in the image's `health_dir`, so every image version carries its own checks.
//!
//! ```toml
//! # /etc/cairn/health.d/containerd.toml
//! kind = "cri"        # command | process | unit | http | tcp | cri | workloads
//! socket = "/run/containerd/containerd.sock"    # the default
//! timeout_secs = 10                             # per attempt (default 10)
//! ```
//!
//! Each check is retried until it passes or the `[health]` deadline runs out, except a
//! `workloads` check (`workloads.rs`), which watches declared pods and containers over
//! time: it has its own `timeout_secs` (default 300) for them to come up, then a
//! `settle_secs` during which none may stop, and fails the trial at once when one does.

mod cri;
pub mod workloads;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[health]` in system.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// All checks must pass within this many seconds of the trial boot.
    pub deadline_secs: u64,
    /// How often a failing check is retried before the deadline.
    pub interval_secs: u64,
    /// Trial boots an update gets when they end without a verdict (power cut, reset,
    /// hang, a slot that does not boot) before it is declined, as RAUC's boot attempts.
    /// A failed health check declines at once.
    pub trial_boots: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            deadline_secs: 300,
            interval_secs: 2,
            trial_boots: 3,
        }
    }
}

// No deny_unknown_fields here: serde cannot combine it with `flatten`. The `workloads`
// kind's fields deny unknown ones (the flattened part holds all but `timeout_secs`).
#[derive(Debug, Clone, Deserialize)]
pub struct CheckSpec {
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Per attempt (default 10 s); for `workloads`, for all of them to come up (300 s).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl CheckSpec {
    /// `timeout_secs`, or its kind's default.
    pub fn timeout(&self) -> Duration {
        let default = match self.kind {
            CheckKind::Workloads(_) => workloads::DEFAULT_TIMEOUT_SECS,
            _ => DEFAULT_TIMEOUT_SECS,
        };
        Duration::from_secs(self.timeout_secs.unwrap_or(default).max(1))
    }

    /// What parsing cannot check; the message goes after the check's name.
    pub fn validate(&self) -> Result<(), String> {
        match &self.kind {
            CheckKind::Workloads(spec) => {
                if self.timeout_secs == Some(0) {
                    return Err("timeout_secs must be above 0".into());
                }
                spec.validate()
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    /// The command exits 0.
    Command { command: Vec<String> },
    /// A process with this name (`/proc/*/comm`) is running.
    Process { name: String },
    /// `systemctl is-active` says the unit is active.
    Unit { unit: String },
    /// GET returns 200.
    Http { url: String },
    /// A TCP connection is accepted.
    Tcp { address: String },
    /// The container runtime's CRI `Status` reports RuntimeReady and NetworkReady.
    Cri {
        #[serde(default = "workloads::default_socket")]
        socket: PathBuf,
    },
    /// Declared pods (by label) and containers (by name) run, judged from the CRI, and
    /// keep running for `settle_secs`.
    Workloads(workloads::WorkloadsSpec),
}

const DEFAULT_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub spec: CheckSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health check {name}: {message}")]
    BadSpec { name: String, message: String },
    #[error("health check '{name}' did not pass within {deadline_secs}s: {output}")]
    Failed {
        name: String,
        deadline_secs: u64,
        output: String,
    },
    /// A check that decides by itself before the deadline (a `workloads` check whose
    /// workloads did not come up within its timeout, or stopped while settling).
    #[error("health check '{name}' failed: {output}")]
    Unhealthy { name: String, output: String },
}

/// Loads every `*.toml` in `dir`, sorted by name. A missing directory means no checks.
pub fn load_checks(dir: &Path) -> Result<Vec<Check>, HealthError> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let bad = |message: String| HealthError::BadSpec {
                name: name.clone(),
                message,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let spec: CheckSpec = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
            spec.validate().map_err(bad)?;
            Ok(Check { name, spec })
        })
        .collect()
}

/// A check [`run_until`] has not seen pass yet, with its last output.
struct Pending<'a> {
    check: &'a Check,
    /// Only for `workloads`: its state across attempts.
    watch: Option<workloads::Watch>,
    last_output: String,
}

/// Runs `checks` until every one has passed, retrying failures every `interval`, or
/// until `deadline` runs out: then the first check still failing is named, with its
/// last output. A `workloads` check is looked at every `interval` too, and may fail
/// everything before the deadline (its workloads did not come up within its own
/// timeout, or one stopped while settling).
pub fn run_until(
    checks: &[Check],
    deadline: Duration,
    interval: Duration,
) -> Result<Vec<String>, HealthError> {
    let started = Instant::now();
    let mut pending: Vec<Pending> = checks
        .iter()
        .map(|check| Pending {
            check,
            watch: match &check.spec.kind {
                CheckKind::Workloads(spec) => {
                    Some(workloads::Watch::new(spec, check.spec.timeout()))
                }
                _ => None,
            },
            last_output: String::new(),
        })
        .collect();
    let mut passed = Vec::new();
    loop {
        let mut still = Vec::new();
        for mut p in pending {
            let outcome = match &mut p.watch {
                None => run_once(&p.check.spec),
                Some(watch) => match watch.poll() {
                    workloads::Progress::Passed => Ok(()),
                    workloads::Progress::Waiting(why) => Err(why),
                    workloads::Progress::Failed(why) => {
                        return Err(HealthError::Unhealthy {
                            name: p.check.name.clone(),
                            output: why,
                        })
                    }
                },
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(check = %p.check.name, "health check passed");
                    passed.push(p.check.name.clone());
                }
                Err(output) => {
                    p.last_output = output;
                    still.push(p);
                }
            }
        }
        pending = still;
        let Some(first) = pending.first() else {
            return Ok(passed);
        };
        if started.elapsed() + interval > deadline {
            return Err(HealthError::Failed {
                name: first.check.name.clone(),
                deadline_secs: deadline.as_secs(),
                output: first.last_output.clone(),
            });
        }
        std::thread::sleep(interval);
    }
}

/// One attempt; `Err` carries what the operator needs to see (output, status, reason).
/// For `workloads`, whether all of them run right now (`cairn check-health`; a trial
/// also waits for them to settle, see [`run_until`]).
pub fn run_once(spec: &CheckSpec) -> Result<(), String> {
    let timeout = spec.timeout();
    match &spec.kind {
        CheckKind::Command { command } => run_command(command, timeout),
        CheckKind::Unit { unit } => run_command(
            &["systemctl".into(), "is-active".into(), unit.clone()],
            timeout,
        ),
        CheckKind::Process { name } => process_running(name),
        CheckKind::Http { url } => http_ok(url, timeout),
        CheckKind::Tcp { address } => tcp_open(address, timeout),
        CheckKind::Cri { socket } => cri::runtime_ready(socket, timeout),
        CheckKind::Workloads(spec) => workloads::running_now(spec),
    }
}

fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{program} timed out after {}s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut output);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut output);
    }
    if status.success() {
        return Ok(());
    }
    let output: String = output.trim().chars().take(2000).collect();
    Err(format!("{program} exited with {status}: {output}"))
}

fn process_running(name: &str) -> Result<(), String> {
    let entries = std::fs::read_dir("/proc").map_err(|e| e.to_string())?;
    let found = entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
    });
    if found {
        Ok(())
    } else {
        Err(format!("no process named {name} is running"))
    }
}

fn http_ok(url: &str, timeout: Duration) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(());
    }
    let body: String = response
        .text()
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    Err(format!("GET {url}: {status}: {body}"))
}

fn tcp_open(address: &str, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .collect();
    let mut last = format!("{address}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.flush();
                return Ok(());
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}
