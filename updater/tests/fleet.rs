//! cairnd against a real cairn-server (in-process, real HTTP on loopback, real SQLite):
//! enroll → approval → campaign → delta download → trial → commit, with the server's
//! view checked at each step; and a failing trial that the campaign counts and stops on.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use cairn_bundle::TrustRoot;
use cairn_server::http::Config;
use cairn_server::local::LocalServer;
use cairn_updater::bootstate::SlotId;
use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "fleet-test-admin";

struct Server {
    url: String,
    http: reqwest::blocking::Client,
    _server: LocalServer,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(root: &Path) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("server.db").display());
        let mut config = Config::new(dir.path().join("blobs"));
        config.root = Some(TrustRoot::from_json(&fs::read(root).unwrap()).unwrap());
        config.admin_token = Some(ADMIN.into());
        config.poll_interval_secs = 1;
        config.evaluate_every = Duration::from_secs(1);
        let server = LocalServer::start(&db_url, config, "127.0.0.1:0").unwrap();
        Server {
            url: server.url(),
            http: reqwest::blocking::Client::new(),
            _server: server,
            _dir: dir,
        }
    }

    fn admin(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let url = format!("{}/admin/v1{path}", self.url);
        let request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).body(body.unwrap_or_default()),
        };
        let r = request.bearer_auth(ADMIN).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn ok(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Value {
        let (status, value) = self.admin(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }

    fn campaign(&self, id: &str, version: &str) {
        let body = json!({
            "id": id,
            "release_id": format!("cairn-test@{version}"),
            "policy": {
                "selector": { "compatible": "cairn-test" },
                "waves": [{ "percent": 100.0 }],
                "min_success_ratio": 1.0,
                "bake_secs": 0,
                "failure_threshold": 0.0,
            },
        });
        self.ok("POST", "/campaigns", Some(body.to_string().into_bytes()));
        self.ok("POST", &format!("/campaigns/{id}/start"), None);
    }

    /// The device's history on the server, newest first, as "event: detail" lines.
    fn history(&self, device: &str) -> Vec<String> {
        let d = self.ok("GET", &format!("/devices/{device}"), None);
        d["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| format!("{}: {}", h["event"].as_str().unwrap(), h["detail"]))
            .collect()
    }

    /// (succeeded, failed) in the campaign's only wave, and the campaign's state.
    fn counts(&self, campaign: &str) -> (u64, u64, String) {
        let c = self.ok("GET", &format!("/campaigns/{campaign}"), None);
        let wave = &c["waves"][0];
        (
            wave["succeeded"].as_u64().unwrap(),
            wave["failed"].as_u64().unwrap(),
            c["campaign"]["state"].as_str().unwrap().to_string(),
        )
    }
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device on v1, enrolled and approved on a fresh server.
fn enrolled_device(v1: &Release) -> (Device, Server) {
    let d = Device::new(v1);
    let server = Server::start(&d.path("etc/cairn/root.json"));
    d.use_server(&server.url, "dev-0001");
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(20, "the device's enrollment", || {
        server.admin("GET", "/devices/dev-0001", None).0 == 200
    });
    drop(daemon);
    server.ok("POST", "/devices/dev-0001/approve", None);
    (d, server)
}

#[test]
fn a_campaign_installs_the_delta_and_counts_only_the_commit() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let (mut d, server) = enrolled_device(&v1);
    d.health_check("ok", "kind = \"command\"\ncommand = [\"true\"]\n");
    let bundle = d.bundle(&v2, Some(&v1));
    server.ok("POST", "/releases", Some(fs::read(&bundle).unwrap()));
    server.campaign("c-v2", "2.0.0");

    let daemon = Daemon(d.spawn_cairnd());
    wait_for(60, "the install and the reboot request", || {
        d.path("rebooted").exists()
    });
    drop(daemon); // the "reboot"
    assert!(d.holds(SlotId::B, &v2), "{}", d.cairnd_log());
    let log = d.cairnd_log();
    assert!(log.contains("zstd-patch"), "the delta was used:\n{log}");
    let history = server.history("dev-0001");
    assert!(
        history[0].starts_with("rebooting"),
        "the server heard `rebooting` before the reboot: {history:#?}"
    );
    assert_eq!(
        server.counts("c-v2").0,
        0,
        "installed is not a success until the commit"
    );

    assert_eq!(d.reboot(), SlotId::B);
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the commit to reach the server", || {
        server.counts("c-v2").0 == 1
    });
    assert_eq!(phase(&d.status()), "committed");
    let device = server.ok("GET", "/devices/dev-0001", None);
    assert_eq!(device["device"]["version"], "2.0.0", "{device:#}");
    assert_eq!(device["device"]["booted_slot"], "B", "{device:#}");
    assert_eq!(d.status()["outbox"].as_array().map_or(0, Vec::len), 0);
    eprintln!("server history: {:#?}", server.history("dev-0001"));
}

#[test]
fn a_failed_trial_is_reported_stops_the_campaign_and_is_never_retried() {
    let v1 = Release::new("1.0.0", 0);
    let v3 = Release::new("3.0.0", 5);
    let (mut d, server) = enrolled_device(&v1);
    d.health_check(
        "app",
        "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo app is not serving >&2; exit 3\"]\n",
    );
    server.ok(
        "POST",
        "/releases",
        Some(fs::read(d.bundle(&v3, None)).unwrap()),
    );
    server.campaign("c-v3", "3.0.0");

    let daemon = Daemon(d.spawn_cairnd());
    wait_for(60, "the install", || d.path("rebooted").exists());
    drop(daemon);
    fs::remove_file(d.path("rebooted")).unwrap();
    assert_eq!(d.reboot(), SlotId::B);
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the rejection's reboot", || d.path("rebooted").exists());
    drop(daemon);
    fs::remove_file(d.path("rebooted")).unwrap();
    assert_eq!(d.reboot(), SlotId::A);
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the rollback report", || server.counts("c-v3").1 == 1);
    let history = server.history("dev-0001").join("\n");
    assert!(
        history.contains("app is not serving"),
        "the failing check's output reaches the server:\n{history}"
    );
    wait_for(10, "the campaign to pause itself", || {
        server.counts("c-v3").2 == "paused"
    });
    // One deployment per device per campaign; a new campaign offers v3 again, and the
    // device declines it instead of trying it a second time.
    server.campaign("c-v3-again", "3.0.0");
    wait_for(30, "the device to decline v3", || {
        server.counts("c-v3-again").1 == 1
    });
    let history = server.history("dev-0001").join("\n");
    assert!(history.contains("not retried"), "{history}");
    assert_eq!(phase(&d.status()), "rolled-back");
    assert!(d.holds(SlotId::A, &v1));
    assert!(
        !d.path("rebooted").exists(),
        "no second trial: {}",
        d.cairnd_log()
    );
}
