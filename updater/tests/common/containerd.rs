//! A real containerd (Debian's 1.6, with its CRI plugin and runc) for tests: config,
//! root, state and socket in a temp dir, killed with its whole process group on drop.
//! Shared by updater/tests/cri_health.rs and cri-probe/tests/containerd.rs; needs only
//! std, tempfile, libc and cairn_cri_probe (to wait until the CRI answers).
#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's containernetworking-plugins puts the CNI binaries.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Loopback only: the smallest network config that makes containerd's CRI report
/// NetworkReady (it wants one loadable conflist in conf_dir besides its built-in
/// loopback).
const LOOPBACK_CONFLIST: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "cairn-test-loopback",
  "plugins": [{ "type": "loopback" }]
}
"#;

pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

pub enum Network {
    /// A loopback conflist in the CNI conf dir: NetworkReady.
    Loopback,
    /// An empty CNI conf dir: NetworkReady=false (NetworkPluginNotReady).
    None,
}

impl Containerd {
    /// Starts containerd and waits (up to 30 s) until its CRI answers `Status`.
    pub fn start(network: Network) -> Containerd {
        let bin = which("containerd").expect(
            "containerd is not installed (cargo xtask setup installs containerd, runc, \
             containernetworking-plugins)",
        );
        assert!(which("runc").is_some(), "runc is not installed");
        assert!(
            Path::new(CNI_BIN_DIR).join("loopback").exists(),
            "{CNI_BIN_DIR}/loopback missing (containernetworking-plugins)"
        );
        let dir = tempfile::Builder::new()
            .prefix("cairn-containerd")
            .tempdir()
            .unwrap();
        let p = |rel: &str| dir.path().join(rel);
        let cni_conf = p("cni");
        fs::create_dir_all(&cni_conf).unwrap();
        if let Network::Loopback = network {
            fs::write(cni_conf.join("10-loopback.conflist"), LOOPBACK_CONFLIST).unwrap();
        }
        let socket = p("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters this host cannot use: skipped quietly instead of logged as failures.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  # No CAP_SYS_RESOURCE on the test machines.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf}"
"#,
            root = p("root").display(),
            state = p("state").display(),
            socket = socket.display(),
            opt = p("opt").display(),
            conf = cni_conf.display(),
        );
        fs::write(p("config.toml"), config).unwrap();
        let log = fs::File::create(p("containerd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(p("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so drop can kill everything it started.
            .process_group(0)
            .spawn()
            .unwrap();
        let mut containerd = Containerd { child, dir, socket };
        containerd.wait_ready(Duration::from_secs(30));
        containerd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        let mut last = String::from("socket not there yet");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("containerd exited with {status}:\n{}", self.log());
            }
            if self.socket.exists() {
                match cairn_cri_probe::status(&self.socket, Duration::from_secs(2)) {
                    Ok(_) => return,
                    Err(e) => last = e.to_string(),
                }
            }
            if started.elapsed() > limit {
                panic!(
                    "containerd's CRI did not answer within {limit:?}: {last}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
