//! Shared test fixtures: real signed bundles, a real server on loopback, simulated
//! devices that speak the device API over HTTP, and a throwaway PostgreSQL cluster.
#![allow(dead_code)] // each test binary uses a different part

pub mod device;
pub mod fleet;
pub mod postgres;
pub mod reboot_budget;
pub mod tpm;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_bundle::writer::BundleSpec;
use cairn_bundle::{SigningKey, TrustRoot};
use cairn_server::db::Db;
use cairn_server::http::{self, Config, Shared};
use cairn_testkit::{
    bundle_spec, delta_sources, image_bytes, image_inputs, new_key, root_for, sign_bundle,
};
use tokio::sync::oneshot;

pub const COMPATIBLE: &str = "cairn-qemu-arm64";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Keys, a trust root, and bundles v1 (full only) and v2 (with a rootfs delta from v1).
pub struct Releases {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub root: TrustRoot,
    pub root_path: PathBuf,
    pub v1: PathBuf,
    pub v2: PathBuf,
    /// sha256 of v1's rootfs and kernel images, as a device on v1 reports them.
    pub v1_images: Vec<cairn_server_api::InstalledImage>,
}

impl Releases {
    pub fn build() -> Releases {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key();
        let signed = root_for(&key, 365);
        let root_path = dir.path().join("root.json");
        std::fs::write(&root_path, signed.to_json()).unwrap();
        let root = TrustRoot::anchor(signed).unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("rootfs-1"), image_bytes(512 << 10, 1)).unwrap();
        std::fs::write(p("kernel-1"), image_bytes(64 << 10, 2)).unwrap();
        let mut rootfs_2 = image_bytes(512 << 10, 1);
        rootfs_2[1000..3000].fill(7);
        std::fs::write(p("rootfs-2"), rootfs_2).unwrap();
        std::fs::write(p("kernel-2"), image_bytes(64 << 10, 3)).unwrap();
        let v1 = p("v1.cairn");
        let v2 = p("v2.cairn");
        make_bundle(
            &key,
            "1.0.0",
            &[("rootfs", &p("rootfs-1")), ("kernel", &p("kernel-1"))],
            &[],
            &v1,
        );
        make_bundle(
            &key,
            "2.0.0",
            &[("rootfs", &p("rootfs-2")), ("kernel", &p("kernel-2"))],
            &[("rootfs", &p("rootfs-1"))],
            &v2,
        );
        let v1_images = ["rootfs", "kernel"]
            .iter()
            .map(|name| {
                let bytes = std::fs::read(p(&format!("{name}-1"))).unwrap();
                cairn_server_api::InstalledImage {
                    name: name.to_string(),
                    sha256: cairn_bundle::sha256_reader(&mut bytes.as_slice())
                        .unwrap()
                        .0,
                    size: bytes.len() as u64,
                }
            })
            .collect();
        Releases {
            dir,
            key,
            root,
            root_path,
            v1,
            v2,
            v1_images,
        }
    }
}

/// A bundle of `version` for [`COMPATIBLE`] with `images`, deltas from `deltas` (image
/// name, old file), signed by `key`.
pub fn make_bundle(
    key: &SigningKey,
    version: &str,
    images: &[(&str, &Path)],
    deltas: &[(&str, &Path)],
    out: &Path,
) {
    let spec = BundleSpec {
        images: image_inputs(images),
        delta_sources: delta_sources(deltas),
        ..bundle_spec(COMPATIBLE, version)
    };
    sign_bundle(&spec, &[key], out);
}

/// `cairn-server` run as an operator would, on `dir`'s `cairn.db` and `blobs/`.
pub fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cairn-server"))
        .current_dir(dir)
        .args(["--db", "sqlite://cairn.db", "--blobs", "./blobs"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A server on 127.0.0.1 and a free port, stopped when dropped.
pub struct TestServer {
    pub url: String,
    pub state: Shared,
    pub blobs: PathBuf,
    _blob_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(db_url: &str, root: Option<&TrustRoot>) -> TestServer {
        TestServer::start_with(db_url, root, |_| {}).await
    }

    /// [`TestServer::start`] with `configure` applied to the configuration last.
    pub async fn start_with(
        db_url: &str,
        root: Option<&TrustRoot>,
        configure: impl FnOnce(&mut Config),
    ) -> TestServer {
        let db = Db::connect(db_url).await.unwrap();
        let blob_dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(blob_dir.path().to_path_buf());
        config.root = root.cloned();
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.poll_interval_secs = 60;
        // Gates are evaluated after every final report and on demand in the tests, not
        // on a timer, so every step is deterministic.
        config.evaluate_every = Duration::from_secs(3600);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (router, state) = http::build(db, config, local).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            url: format!("http://{local}"),
            state,
            blobs: blob_dir.path().to_path_buf(),
            _blob_dir: blob_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn admin(&self) -> Admin {
        Admin {
            url: self.url.clone(),
            http: reqwest::Client::new(),
        }
    }

    /// A dashboard page's HTML, as the operator (the admin token as bearer) sees it.
    pub async fn page(&self, path: &str) -> String {
        let answer = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "GET {path}");
        answer.text().await.unwrap()
    }
}

/// The admin API with the right token.
pub struct Admin {
    pub url: String,
    pub http: reqwest::Client,
}

impl Admin {
    /// `GET /metrics` with the admin token, as Prometheus scrapes it.
    pub async fn metrics(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Posts, and fails the test unless the answer is 200.
    pub async fn ok(&self, path: &str, body: impl Into<reqwest::Body>) -> serde_json::Value {
        let (status, value) = self.post(path, body).await;
        assert_eq!(status, 200, "POST {path}: {value}");
        value
    }

    pub async fn upload(&self, bundle: &Path) -> (u16, serde_json::Value) {
        self.post("/admin/v1/releases", std::fs::read(bundle).unwrap())
            .await
    }

    pub async fn campaign(&self, id: &str) -> serde_json::Value {
        let (status, value) = self.get(&format!("/admin/v1/campaigns/{id}")).await;
        assert_eq!(status, 200, "{value}");
        value
    }
}

/// A `cairn-server serve` process on 127.0.0.1 and a free port; interrupted (Ctrl-C, so
/// it shuts down gracefully and writes what it holds) and waited for on `stop`, killed
/// if dropped without.
pub struct ServerProcess {
    pub url: String,
    child: std::process::Child,
    _blobs: Option<tempfile::TempDir>,
}

impl ServerProcess {
    pub async fn start(db_url: &str, root: &Path) -> ServerProcess {
        let blobs = tempfile::tempdir().unwrap();
        let mut server = ServerProcess::start_with_blobs(db_url, root, blobs.path()).await;
        server._blobs = Some(blobs);
        server
    }

    pub async fn start_with_blobs(db_url: &str, root: &Path, blobs: &Path) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-server"))
            .args(["serve", "--db", db_url, "--blobs"])
            .arg(blobs)
            .arg("--root")
            .arg(root)
            .args([
                "--admin-token",
                ADMIN_TOKEN,
                "--evaluate-every-secs",
                "3600",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server process did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ServerProcess {
            url,
            child,
            _blobs: None,
        }
    }

    pub fn admin(&self) -> Admin {
        Admin {
            url: self.url.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exited = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (self, status)
        })
        .await
        .unwrap();
        let (_, status) = exited;
        assert!(status.unwrap().success(), "server process exited badly");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
