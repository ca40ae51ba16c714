//! A real containerd (Debian's 1.6, with its CRI plugin and runc) for tests: config,
//! root, state and socket in a temp dir, killed with its whole process group on drop
//! (after its pods are removed). Tests play kubelet through the CRI: [`Containerd::run_pod`]
//! runs a host-network pod of one container, [`PodHandle::restart`] starts its next attempt.
//! Images are OCI archives imported with `ctr` ([`Containerd::import`]); the pods' sandbox
//! ("pause") image is a busybox one the first `run_pod` imports.
//!
//! Shared by updater/tests/{cri_health,workload_health,container_preload}.rs and
//! cri-probe/tests/containerd.rs; needs std, tempfile, libc, cairn_cri_probe and
//! cairn_testkit (for the busybox images).
#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_cri_probe::pod::PodSpec;
use cairn_cri_probe::{v1, Client};

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

/// The sandbox image the CRI is configured with (imported by the first `run_pod`): the
/// CRI would otherwise pull registry.k8s.io/pause, and there is no registry here.
const PAUSE_IMAGE: &str = "docker.io/local/pause:1";

/// Each CRI call's bound in these helpers.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pause: OnceLock<()>,
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
  # Imported by the first run_pod; never pulled.
  sandbox_image = "{PAUSE_IMAGE}"
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
        let mut containerd = Containerd {
            child,
            dir,
            socket,
            pause: OnceLock::new(),
        };
        containerd.wait_ready(Duration::from_secs(30));
        containerd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A CRI client on this containerd (10 s per call).
    pub fn client(&self) -> Client {
        Client::connect(&self.socket, CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("CRI on {}: {e}\n{}", self.socket.display(), self.log()))
    }

    /// `ctr images import` of an OCI archive into the CRI's namespace (k8s.io).
    pub fn import(&self, archive: &Path) {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .expect("ctr (containerd's client) runs");
        assert!(
            out.status.success(),
            "ctr images import {}: {}{}",
            archive.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds `docker.io/local/<name>:<tag>` (busybox, `cmd` as its command) with
    /// cairn_testkit::oci and imports it; returns the image's full name.
    pub fn import_busybox(&self, name: &str, tag: &str, cmd: &[&str]) -> String {
        let archive = self.dir.path().join(format!("{name}-{tag}.oci.tar"));
        let image = cairn_testkit::oci::busybox_image(
            Path::new(cairn_testkit::oci::HOST_BUSYBOX),
            "amd64",
            name,
            tag,
            cmd,
            &archive,
        );
        self.import(&archive);
        image.name
    }

    /// The images the CRI lists, through cairn_cri_probe's client.
    pub fn list_images(&self) -> Vec<v1::Image> {
        self.client()
            .list_images()
            .unwrap_or_else(|e| panic!("ListImages: {e}\n{}", self.log()))
    }

    /// Plays kubelet: runs pod `name` (namespace "default", label `app=<name>`, host
    /// network) with one container `name` from `image` (already imported, full name)
    /// running `cmd` (the image's command when empty), attempt 0, and starts it.
    pub fn run_pod(&self, name: &str, image: &str, cmd: &[&str]) -> PodHandle {
        self.pause.get_or_init(|| {
            self.import_busybox("pause", "1", &["sleep", "2147483647"]);
        });
        let log_dir = self.dir.path().join("pods").join(name);
        fs::create_dir_all(&log_dir).unwrap();
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let sandbox_config = PodSpec {
            name,
            image,
            cmd: &cmd,
            log_dir: &log_dir,
        }
        .sandbox_config();
        let client = self.client();
        let sandbox_id = client
            .run_pod_sandbox(sandbox_config.clone(), "")
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", self.log()));
        let mut pod = PodHandle {
            client,
            name: name.into(),
            image: image.into(),
            cmd,
            sandbox_id,
            sandbox_config,
            container_id: String::new(),
            attempt: 0,
            log_dir,
        };
        pod.start_attempt(0);
        pod
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

    /// Stops and removes every pod sandbox, so that no container (nor its shim, nor its
    /// rootfs mount) outlives the test.
    fn remove_pods(&self) {
        let Ok(client) = Client::connect(&self.socket, Duration::from_secs(5)) else {
            return;
        };
        for sandbox in client.list_pod_sandboxes(None).unwrap_or_default() {
            let _ = client.stop_pod_sandbox(&sandbox.id);
            let _ = client.remove_pod_sandbox(&sandbox.id);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_pods();
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A pod [`Containerd::run_pod`] started: its sandbox and its one container's current
/// attempt. Removed with the containerd that runs it.
pub struct PodHandle {
    client: Client,
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub sandbox_id: String,
    sandbox_config: v1::PodSandboxConfig,
    /// The current attempt's container.
    pub container_id: String,
    pub attempt: u32,
    log_dir: PathBuf,
}

impl PodHandle {
    /// What kubelet does when the container exited: creates attempt + 1 (a new container
    /// id) and starts it. The old container stays listed, exited, as kubelet keeps it.
    pub fn restart(&mut self) {
        self.start_attempt(self.attempt + 1);
    }

    fn start_attempt(&mut self, attempt: u32) {
        let config = PodSpec {
            name: &self.name,
            image: &self.image,
            cmd: &self.cmd,
            log_dir: &self.log_dir,
        }
        .container_config(attempt);
        let id = self
            .client
            .create_container(&self.sandbox_id, config, self.sandbox_config.clone())
            .unwrap_or_else(|e| panic!("CreateContainer {} #{attempt}: {e}", self.name));
        self.client
            .start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer {} #{attempt}: {e}", self.name));
        self.container_id = id;
        self.attempt = attempt;
    }

    /// The current attempt's status (state, exit code, ...).
    pub fn status(&self) -> v1::ContainerStatus {
        self.client
            .container_status(&self.container_id)
            .unwrap_or_else(|e| panic!("ContainerStatus {}: {e}", self.name))
    }

    pub fn is_running(&self) -> bool {
        self.status().state == v1::ContainerState::ContainerRunning as i32
    }

    /// Waits (up to `limit`) until the current attempt runs, or panics with its status.
    pub fn wait_running(&self, limit: Duration) {
        let started = Instant::now();
        while !self.is_running() {
            assert!(
                started.elapsed() < limit,
                "{} is not running after {limit:?}: {:?}\n{}",
                self.name,
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to `limit`) until the current attempt has exited; returns its exit code.
    pub fn wait_exited(&self, limit: Duration) -> i32 {
        let started = Instant::now();
        loop {
            let status = self.status();
            if status.state == v1::ContainerState::ContainerExited as i32 {
                return status.exit_code;
            }
            assert!(
                started.elapsed() < limit,
                "{} has not exited after {limit:?}: {status:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The current attempt's output (the CRI's log file, one line per write).
    pub fn log(&self) -> String {
        fs::read_to_string(
            self.log_dir
                .join(format!("{}_{}.log", self.name, self.attempt)),
        )
        .unwrap_or_default()
    }

    /// Stops and removes the pod (its containers with it).
    pub fn remove(self) {
        self.client
            .stop_pod_sandbox(&self.sandbox_id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", self.name));
        self.client
            .remove_pod_sandbox(&self.sandbox_id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", self.name));
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
