//! cairnd against a real cairn-server (in-process, real HTTP on loopback, real SQLite):
//! enroll → approval → campaign → delta download → trial → commit, with the server's
//! view checked at each step; a failing trial that the campaign counts and stops on; and
//! TPM attestation with a real swtpm: the AK enrolled by MakeCredential/ActivateCredential,
//! success counted only once a quote proves the release's image booted, a slot measuring
//! differently ending `attestation-failed`, and the NV security floor surviving a wiped
//! data partition.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_bundle::TrustRoot;
use cairn_server::config::TlsFiles;
use cairn_server::http::Config;
use cairn_server::local::LocalServer;
use cairn_server_api::ProvisioningRecord;
use cairn_testkit::TestCa;
use cairn_tpm::swtpm::Swtpm;
use cairn_updater::bootstate::SlotId;
use common::*;
use serde_json::{json, Value};
use sha2::Digest as _;

const ADMIN: &str = "fleet-test-admin";

/// A real cairn-server on loopback serving HTTPS with a certificate from a CA made here.
struct Server {
    url: String,
    /// The CA the server's certificate chains to (PEM): what devices pin.
    ca: PathBuf,
    http: reqwest::blocking::Client,
    server: Option<LocalServer>,
    db_url: String,
    config: Config,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(root: &Path) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("server.db").display());
        let ca = TestCa::new("Cairn fleet test CA");
        let issued = ca.issue(&["127.0.0.1", "localhost"], dir.path(), "server");
        let ca_path = dir.path().join("ca.pem");
        ca.write_cert(&ca_path);
        let mut config = Config::new(dir.path().join("blobs"));
        config.root = Some(TrustRoot::from_json(&fs::read(root).unwrap()).unwrap());
        config.admin_token = Some(ADMIN.into());
        config.poll_interval_secs = 1;
        config.evaluate_every = Duration::from_secs(1);
        config.tls = Some(TlsFiles {
            cert: issued.cert,
            key: issued.key,
        });
        let server = LocalServer::start(&db_url, config.clone(), "127.0.0.1:0").unwrap();
        let http = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        assert!(server.url().starts_with("https://"));
        Server {
            url: server.url(),
            ca: ca_path,
            http,
            server: Some(server),
            db_url,
            config,
            _dir: dir,
        }
    }

    /// `cairn-server backup FILE` while the server serves.
    fn backup(&self, file: &Path) {
        cairn_server::local::backup(&self.db_url, file).unwrap();
    }

    /// The server stops, its database is replaced by `backup` (`cairn-server restore`),
    /// and a server starts again at the same URL over the same blob directory.
    fn restore(&mut self, backup: &Path) {
        let addr = self.server.as_ref().unwrap().addr;
        let refused = cairn_server::local::restore(&self.db_url, backup).unwrap_err();
        assert!(
            format!("{refused:#}").contains("a cairn-server is serving"),
            "a restore under a running server is refused: {refused:#}"
        );
        self.server = None;
        let restored = cairn_server::local::restore(&self.db_url, backup).unwrap();
        eprintln!("restored: {restored:?}");
        let server =
            LocalServer::start(&self.db_url, self.config.clone(), &addr.to_string()).unwrap();
        assert_eq!(server.url(), self.url);
        self.server = Some(server);
    }

    fn admin(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let url = format!("{}/admin/v1{path}", self.url);
        let request = match method {
            "GET" => self.http.get(url),
            "PUT" => self.http.put(url).body(body.unwrap_or_default()),
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
        self.campaign_with(id, version, false)
    }

    fn campaign_with(&self, id: &str, version: &str, attestation_required: bool) {
        self.campaign_policy(id, version, attestation_required, false)
    }

    fn campaign_policy(
        &self,
        id: &str,
        version: &str,
        attestation_required: bool,
        retry_declined: bool,
    ) {
        let policy = json!({
            "attestation_required": attestation_required,
            "retry_declined": retry_declined,
        });
        self.campaign_started(id, version, policy);
    }

    /// A one-wave campaign of `version` for every device, all must succeed, no bake,
    /// with `policy`'s fields added to its policy; started.
    fn campaign_started(&self, id: &str, version: &str, policy: Value) {
        let mut body = json!({
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
        if let (Some(into), Value::Object(extra)) = (body["policy"].as_object_mut(), policy) {
            into.extend(extra);
        }
        self.ok("POST", "/campaigns", Some(body.to_string().into_bytes()));
        self.ok("POST", &format!("/campaigns/{id}/start"), None);
    }

    /// A dashboard page, as the operator sees it.
    fn page(&self, path: &str) -> String {
        let url = format!("{}{path}", self.url);
        let r = self.http.get(url).bearer_auth(ADMIN).send().unwrap();
        r.text().unwrap()
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
    enroll(&d, &server, "dev-0001");
    (d, server)
}

/// `d` enrolls as `id` (its cairnd runs until the server knows it) and is approved.
fn enroll(d: &Device, server: &Server, id: &str) {
    d.use_server(&server.url, &server.ca, id);
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(20, "the device's enrollment", || {
        server.admin("GET", &format!("/devices/{id}"), None).0 == 200
    });
    drop(daemon);
    server.ok("POST", &format!("/devices/{id}/approve"), None);
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
    assert!(log.contains("block-bsdiff"), "the delta was used:\n{log}");
    let history = server.history("dev-0001");
    let assigned = history.iter().find(|h| h.starts_with("assigned")).unwrap();
    assert!(
        assigned.contains("rootfs delta"),
        "the factory image record let the server plan the delta from the first check-in: {assigned}"
    );
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
    // The commit report counts the success; the check-in after it updates the device's
    // record: wait for both.
    wait_for(30, "the commit to reach the server", || {
        server.counts("c-v2").0 == 1
            && server.ok("GET", "/devices/dev-0001", None)["device"]["version"] == "2.0.0"
    });
    assert_eq!(phase(&d.status()), "committed");
    let device = server.ok("GET", "/devices/dev-0001", None);
    assert_eq!(device["device"]["version"], "2.0.0", "{device:#}");
    assert_eq!(device["device"]["booted_slot"], "B", "{device:#}");
    assert_eq!(d.status()["outbox"].as_array().map_or(0, Vec::len), 0);
    eprintln!("server history: {:#?}", server.history("dev-0001"));
}

/// Two nodes of one cluster, a campaign with a reboot budget of one: the second node
/// installs but waits (its `cairn status` and the server say why) until the first has
/// committed, then reboots.
#[test]
fn with_a_reboot_budget_of_one_the_second_node_of_a_cluster_reboots_after_the_first_commits() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let (first, server) = enrolled_device(&v1);
    let second = Device::with_key(&v1, cairn_testkit::copy_key(&first.key));
    enroll(&second, &server, "dev-0002");
    let mut nodes = [(first, "dev-0001"), (second, "dev-0002")];
    for (d, id) in &nodes {
        d.health_check("ok", "kind = \"command\"\ncommand = [\"true\"]\n");
        let tags = json!(["cluster=line-3"]).to_string().into_bytes();
        let (status, body) = server.admin("PUT", &format!("/devices/{id}/tags"), Some(tags));
        assert_eq!(status, 200, "{body}");
    }
    let bundle = nodes[0].0.bundle(&v2, Some(&v1));
    server.ok("POST", "/releases", Some(fs::read(&bundle).unwrap()));
    let budget = json!({ "max_rebooting": 1, "group_by": "cluster", "lease_secs": 120 });
    server.campaign_started("c-budget", "2.0.0", json!({ "reboot_budget": budget }));

    let daemons: Vec<Daemon> = nodes
        .iter()
        .map(|(d, _)| Daemon(d.spawn_cairnd()))
        .collect();
    wait_for(60, "one node's reboot", || {
        nodes.iter().any(|(d, _)| d.path("rebooted").exists())
    });
    let (going, waiting) = if nodes[0].0.path("rebooted").exists() {
        (0, 1)
    } else {
        (1, 0)
    };
    let waiting_id = nodes[waiting].1;
    let reason = "waiting for a reboot lease: 1 of 1 in cluster=line-3 rebooting";
    wait_for(
        60,
        "the other node to install and wait for the lease",
        || nodes[waiting].0.status()["reboot_lease"] == reason,
    );
    let text = nodes[waiting].0.cairn_ok(&["status"]);
    assert!(text.contains(reason), "{text}");
    wait_for(10, "the server to hear why it waits", || {
        server.ok("GET", &format!("/devices/{waiting_id}"), None)["device"]["waiting"] == reason
    });
    let campaign = server.ok("GET", "/campaigns/c-budget", None);
    assert_eq!(
        campaign["reboot_leases"][0]["device_id"], nodes[going].1,
        "{campaign:#}"
    );
    assert!(server
        .page("/ui/campaigns/c-budget")
        .contains("Reboot budget: 1 at a time per cluster"));
    // Still waiting a few ticks later: nothing but the first node's verdict frees the lease.
    std::thread::sleep(Duration::from_secs(6));
    assert!(!nodes[waiting].0.path("rebooted").exists());

    // The first node reboots into its trial and commits; the lease ends with the commit.
    drop(daemons);
    let (d, _) = &mut nodes[going];
    assert_eq!(d.reboot(), SlotId::B);
    let _first = Daemon(d.spawn_cairnd());
    let _second = Daemon(nodes[waiting].0.spawn_cairnd());
    wait_for(
        60,
        "the second node's reboot after the first one's commit",
        || nodes[waiting].0.path("rebooted").exists(),
    );
    assert_eq!(server.counts("c-budget").0, 1, "the first node's success");
    let history = server.history(waiting_id);
    assert!(
        history.iter().any(|h| h.starts_with("reboot-lease:")),
        "{history:#?}"
    );
    assert!(nodes[waiting].0.status()["reboot_lease"].is_null());
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

    // The operator fixed what failed and re-offers v3 on purpose: the device installs it
    // and boots a second trial.
    d.health_check("app", "kind = \"command\"\ncommand = [\"true\"]\n");
    server.campaign_policy("c-v3-reoffer", "3.0.0", false, true);
    wait_for(60, "the re-offered install", || d.path("rebooted").exists());
    drop(_daemon);
    fs::remove_file(d.path("rebooted")).unwrap();
    assert_eq!(d.reboot(), SlotId::B);
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the re-offered release to succeed", || {
        server.counts("c-v3-reoffer").0 == 1
    });
    assert_eq!(phase(&d.status()), "committed");
}

/// The device's TPM: a swtpm whose NV state lives in the device's dir. A "reboot"
/// restarts it, which resets the PCRs as a power cycle does, and clears /run.
struct DeviceTpm {
    swtpm: Option<Swtpm>,
    state: PathBuf,
}

impl DeviceTpm {
    fn attach(d: &Device) -> DeviceTpm {
        let state = d.path("tpm");
        fs::create_dir_all(&state).unwrap();
        let mut tpm = DeviceTpm { swtpm: None, state };
        tpm.power_on(d);
        tpm
    }

    /// Starts the TPM and points the device's config at it.
    fn power_on(&mut self, d: &Device) {
        self.swtpm = None;
        let swtpm = Swtpm::start(&self.state).unwrap();
        let tcti = swtpm.tcti();
        self.swtpm = Some(swtpm);
        let _ = fs::remove_dir_all(d.path("run"));
        let log = d.path("run/cairn/measurements.json");
        d.edit_config(|text| {
            let base = text.split("[tpm]\n").next().unwrap_or_default().to_string();
            format!(
                "{base}[tpm]\ntcti = \"{tcti}\"\nevent_log = \"{}\"\n",
                log.display()
            )
        });
    }

    fn tcti(&self) -> String {
        self.swtpm.as_ref().unwrap().tcti()
    }
}

/// A rootfs verity root hash made up for a test release (the server compares it with
/// what the device measures; nothing here runs dm-verity).
fn root_hash(release: &Release) -> String {
    hex::encode(sha2::Sha256::digest(&release.rootfs))
}

fn with_verity(release: &Release) -> impl FnOnce(&mut cairn_bundle::writer::BundleSpec) + '_ {
    move |spec| {
        spec.images[0].verity = Some(cairn_bundle::Verity {
            root_hash: root_hash(release),
            salt: "00".repeat(32),
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_size: release.rootfs.len() as u64 - (64 << 10),
        })
    }
}

/// What U-Boot passes the kernel: the slot and, from the slot's `slot.env` (written by
/// cairnd at install) or `root_hash` for the factory slot, the verity root hash.
fn boot_cmdline(d: &Device, slot: SlotId, root_hash: &str) {
    let cmdline = d.path("proc/cmdline");
    let base = fs::read_to_string(&cmdline).unwrap();
    fs::write(
        &cmdline,
        format!("{} cairn.verity.root_hash={root_hash}\n", base.trim_end()),
    )
    .unwrap();
    assert!(base.contains(&format!("cairn.slot={slot}")), "{base}");
}

/// The slot.env root hash cairnd wrote for `slot`.
fn installed_root_hash(d: &Device, slot: &str) -> String {
    let env = fs::read_to_string(d.path(&format!("boot/{slot}/slot.env"))).unwrap();
    env.trim_start_matches("slot_args=")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.verity.root_hash="))
        .unwrap_or_else(|| panic!("no root hash in {env}"))
        .to_string()
}

/// v1 on slot A with its TPM enrolled, v2 installed into B by an attestation-requiring
/// campaign, and the device "rebooted" into B with the TPM power-cycled. The cmdline of
/// B's boot carries `boot_root_hash` (cairnd's slot.env value unless a test tampers).
fn installed_under_attestation(tamper: Option<&str>) -> (Device, Server, DeviceTpm, Release) {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let (mut d, server) = enrolled_device(&v1);
    d.health_check("ok", "kind = \"command\"\ncommand = [\"true\"]\n");
    let mut tpm = DeviceTpm::attach(&d);
    boot_cmdline(&d, SlotId::A, &root_hash(&v1));
    let key = cairn_testkit::copy_key(&d.key);
    let bundle = d.bundle_with(&v2, Some(&v1), "2.0.0", &[key], with_verity(&v2));
    server.ok("POST", "/releases", Some(fs::read(&bundle).unwrap()));
    server.campaign_with("c-att", "2.0.0", true);

    let daemon = Daemon(d.spawn_cairnd());
    wait_for(60, "the install and the reboot request", || {
        d.path("rebooted").exists()
    });
    drop(daemon);
    let history = server.history("dev-0001").join("\n");
    assert!(
        history.contains("attestation key trusted"),
        "the AK passed MakeCredential/ActivateCredential before the install:\n{history}\n{}",
        d.cairnd_log()
    );
    assert_eq!(d.reboot(), SlotId::B);
    tpm.power_on(&d);
    let measured = tamper.map_or_else(|| installed_root_hash(&d, "b"), str::to_string);
    boot_cmdline(&d, SlotId::B, &measured);
    (d, server, tpm, v2)
}

#[test]
fn success_counts_only_once_the_tpm_quote_proves_the_release_booted() {
    let (d, server, tpm, v2) = installed_under_attestation(None);
    assert_eq!(installed_root_hash(&d, "b"), root_hash(&v2));
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the attested success", || server.counts("c-att").0 == 1);
    let history = server.history("dev-0001").join("\n");
    assert!(history.contains("attested"), "{history}");
    let device = server.ok("GET", "/devices/dev-0001", None);
    assert!(device["device"]["ak_trusted_at"].is_i64(), "{device:#}");
    let page = server.page("/ui/devices/dev-0001");
    assert!(
        page.contains("TPM: attestation key trusted since"),
        "{page}"
    );
    assert_eq!(phase(&d.status()), "committed");
    // The quote covered this boot: PCR 12 holds exactly what the log says.
    let log: cairn_attest::EventLog =
        serde_json::from_slice(&fs::read(d.path("run/cairn/measurements.json")).unwrap()).unwrap();
    let mut device_tpm = cairn_tpm::Tpm::open(&tpm.tcti()).unwrap();
    assert_eq!(device_tpm.read_pcr(12).unwrap(), log.replay().unwrap());
    assert_eq!(log.measured().unwrap().rootfs_verity_root, root_hash(&v2));
}

#[test]
fn a_slot_measuring_other_than_the_release_ends_attestation_failed() {
    let forged = "ee".repeat(32);
    let (d, server, _tpm, _v2) = installed_under_attestation(Some(&forged));
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the attestation failure", || {
        server.counts("c-att").1 == 1
    });
    let history = server.history("dev-0001").join("\n");
    assert!(
        history.contains("attestation failed: measured rootfs verity root hash"),
        "{history}"
    );
    assert_eq!(server.counts("c-att").0, 0, "never counted as a success");
    let campaign = server.ok("GET", "/campaigns/c-att", None);
    assert_eq!(campaign["campaign"]["state"], "paused", "{campaign:#}");
    let page = server.page("/ui/campaigns/c-att");
    assert!(
        page.contains("attestation-failed"),
        "the dashboard shows the distinct state:\n{page}"
    );
}

#[test]
fn the_tpm_security_floor_survives_a_wiped_data_partition() {
    let v1 = Release::new("1.0.0", 0);
    let mut v2 = Release::new("2.0.0", 3);
    v2.security_version = 3;
    let mut old = Release::new("1.5.0", 1);
    old.security_version = 2;
    let mut d = Device::new(&v1);
    let mut tpm = DeviceTpm::attach(&d);
    boot_cmdline(&d, SlotId::A, &root_hash(&v1));
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    tpm.power_on(&d);
    let output = d.cairnd_once();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(phase(&d.status()), "committed");
    let floor = cairn_tpm::Tpm::open(&tpm.tcti())
        .unwrap()
        .security_floor()
        .unwrap();
    assert_eq!(floor, 3, "the commit raised the TPM's floor");

    fs::remove_dir_all(d.path("data/cairn")).unwrap(); // an attacker resets /data
    let slot_a = d.slot_bytes("a", v1.rootfs.len());
    let err = d.cairn_err(&["install", d.bundle(&old, None).to_str().unwrap()]);
    assert!(err.contains("security"), "{err}");
    assert_eq!(
        d.slot_bytes("a", v1.rootfs.len()),
        slot_a,
        "nothing written"
    );
}

#[test]
fn a_device_pinned_to_another_ca_refuses_the_server_and_writes_nothing() {
    let v1 = Release::new("1.0.0", 0);
    let d = Device::new(&v1);
    let server = Server::start(&d.path("etc/cairn/root.json"));
    let other = TestCa::new("Someone else's CA");
    let other_pem = d.path("other-ca.pem");
    other.write_cert(&other_pem);
    d.use_server(&server.url, &other_pem, "dev-0001");
    let boot_before = d.boot_state();
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(20, "cairnd to give up on the server's certificate", || {
        d.cairnd_log().contains("UnknownIssuer")
    });
    drop(daemon);
    assert_eq!(
        server.admin("GET", "/devices/dev-0001", None).0,
        404,
        "nothing reached the server"
    );
    assert_eq!(d.boot_state(), boot_before);
    assert!(!d.path("data/cairn/state.json").exists() || phase(&d.status()) == "committed");
}

#[test]
fn a_plain_http_server_url_is_refused_at_config_load() {
    let v1 = Release::new("1.0.0", 0);
    let d = Device::new(&v1);
    d.use_server(
        "http://127.0.0.1:9",
        &d.path("etc/cairn/root.json"),
        "dev-0001",
    );
    let err = d.cairn_err(&["status"]);
    assert!(
        err.contains("plain http:// is refused") && err.contains("insecure_http"),
        "{err}"
    );
}

#[test]
fn a_bundle_url_off_the_servers_origin_is_refused_and_never_read() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let (d, server) = enrolled_device(&v1);
    // A release whose bundle "lives" at a local path of the device: a compromised or
    // mistaken server must not make cairnd read (and report on) /etc/shadow.
    server.ok(
        "POST",
        "/releases?external_url=/etc/shadow",
        Some(fs::read(d.bundle(&v2, None)).unwrap()),
    );
    server.campaign("c-v2", "2.0.0");
    let boot_before = d.boot_state();
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the refusal to reach the server", || {
        server
            .history("dev-0001")
            .iter()
            .any(|h| h.contains("failed"))
    });
    drop(daemon);
    let history = server.history("dev-0001").join("\n");
    assert!(
        history.contains("/etc/shadow: not a URL"),
        "the reason is the URL rule:\n{history}"
    );
    assert!(
        !history.contains("root:"),
        "nothing of the file leaked:\n{history}"
    );
    assert_eq!(d.boot_state(), boot_before, "nothing was armed");
    assert!(!d.holds(SlotId::B, &v2));
}

/// A device at the factory bench: its record, printed and written for a USB round trip.
fn provisioned_device(device_id: &str) -> (Device, Server, DeviceTpm, ProvisioningRecord) {
    let v1 = Release::new("1.0.0", 0);
    let d = Device::new(&v1);
    let server = Server::start(&d.path("etc/cairn/root.json"));
    d.use_server(&server.url, &server.ca, device_id);
    let tpm = DeviceTpm::attach(&d);
    boot_cmdline(&d, SlotId::A, &root_hash(&v1));
    let out = d.path("boot/provisioning");
    let printed = d.cairn_ok(&[
        "provision-record",
        "--out",
        out.to_str().unwrap(),
        "--tag",
        "line-3",
    ]);
    let record: ProvisioningRecord = serde_json::from_str(&printed).unwrap();
    let written: ProvisioningRecord =
        serde_json::from_slice(&fs::read(out.join(format!("{device_id}.json"))).unwrap()).unwrap();
    assert_eq!(written, record);
    assert_eq!(record.device_id, device_id);
    assert_eq!(record.tags, ["line-3"]);
    assert_eq!(record.image_version.as_deref(), Some("1.0.0"));
    let ek = record
        .ek_public
        .clone()
        .expect("the record names the TPM's EK");
    assert_eq!(
        hex::decode(&ek).unwrap(),
        cairn_tpm::Tpm::open(&tpm.tcti())
            .unwrap()
            .ek_public()
            .unwrap()
    );
    (d, server, tpm, record)
}

#[test]
fn a_factory_record_imported_on_the_server_approves_the_device_and_binds_its_tpm() {
    let (d, server, _tpm, record) = provisioned_device("dev-0042");
    let summary = server.ok(
        "POST",
        "/devices/import",
        Some(serde_json::to_vec(&[&record]).unwrap()),
    );
    assert_eq!(summary["imported"], 1, "{summary}");
    // In the field: approved from the first check-in (no operator step), and the
    // attestation key is trusted under the imported EK.
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the AK trusted under the imported EK", || {
        server.ok("GET", "/devices/dev-0042", None)["device"]["ak_trusted_at"].is_i64()
    });
    let device = server.ok("GET", "/devices/dev-0042", None);
    assert_eq!(device["device"]["approval"], "approved");
    assert_eq!(device["device"]["tags"], json!(["line-3"]));
}

#[test]
fn a_device_whose_tpm_is_not_the_imported_one_is_never_attested() {
    let (d, server, mut tpm, record) = provisioned_device("dev-0043");
    server.ok(
        "POST",
        "/devices/import",
        Some(serde_json::to_vec(&[&record]).unwrap()),
    );
    // The TPM was swapped between the bench and the field: another EK.
    fs::remove_dir_all(d.path("tpm")).unwrap();
    fs::create_dir_all(d.path("tpm")).unwrap();
    tpm.power_on(&d);
    let other_ek = hex::encode(
        cairn_tpm::Tpm::open(&tpm.tcti())
            .unwrap()
            .ek_public()
            .unwrap(),
    );
    assert_ne!(Some(&other_ek), record.ek_public.as_ref());
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(30, "the refused TPM enrollment", || {
        d.cairnd_log().contains("ek-changed")
    });
    drop(daemon);
    let device = server.ok("GET", "/devices/dev-0043", None);
    assert!(device["device"]["ak_trusted_at"].is_null(), "{device:#}");
    // A manifest that would move the binding to another TPM is refused for that entry.
    let mut other = record.clone();
    other.ek_public = Some(other_ek);
    let summary = server.ok(
        "POST",
        "/devices/import",
        Some(serde_json::to_vec(&[&other]).unwrap()),
    );
    assert_eq!(summary["imported"], 0, "{summary}");
    assert!(
        summary["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("bound to another TPM"),
        "{summary}"
    );
}

/// cairnd runs until it installed the assigned update and asked for the reboot; the
/// device "reboots" into `slot` with its TPM power-cycled and the slot's root hash (as
/// cairnd wrote it in slot.env) measured.
fn install_and_reboot(d: &mut Device, tpm: &mut DeviceTpm, slot: SlotId) {
    let daemon = Daemon(d.spawn_cairnd());
    wait_for(60, "the install and the reboot request", || {
        d.path("rebooted").exists()
    });
    drop(daemon);
    fs::remove_file(d.path("rebooted")).unwrap();
    assert_eq!(d.reboot(), slot, "{}", d.cairnd_log());
    tpm.power_on(d);
    let name = if slot == SlotId::A { "a" } else { "b" };
    let measured = installed_root_hash(d, name);
    boot_cmdline(d, slot, &measured);
}

/// How many times the server's history says the device's AK passed its challenge.
fn ak_trusted_events(server: &Server, device: &str) -> usize {
    server
        .history(device)
        .iter()
        .filter(|h| h.contains("attestation key trusted"))
        .count()
}

#[test]
fn devices_resync_with_a_server_restored_from_a_backup_without_an_operator() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let v3 = Release::new("3.0.0", 5);
    let mut a = Device::new(&v1);
    let mut b = Device::with_key(&v1, cairn_testkit::copy_key(&a.key));
    let mut server = Server::start(&a.path("etc/cairn/root.json"));
    let ids = ["dev-0001", "dev-0002"];
    for (d, id) in [(&a, ids[0]), (&b, ids[1])] {
        d.use_server(&server.url, &server.ca, id);
        d.health_check("ok", "kind = \"command\"\ncommand = [\"true\"]\n");
        boot_cmdline(d, SlotId::A, &root_hash(&v1));
    }
    // dev-0001's TPM is enrolled before the backup; dev-0002's only after it.
    let mut tpm_a = DeviceTpm::attach(&a);
    for (d, id) in [(&a, ids[0]), (&b, ids[1])] {
        let daemon = Daemon(d.spawn_cairnd());
        wait_for(20, "the device's enrollment", || {
            server.admin("GET", &format!("/devices/{id}"), None).0 == 200
        });
        drop(daemon);
        server.ok("POST", &format!("/devices/{id}/approve"), None);
    }
    {
        let _daemon = Daemon(a.spawn_cairnd());
        wait_for(30, "dev-0001's attestation key", || {
            ak_trusted_events(&server, ids[0]) == 1
        });
    }
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("cairn-server.db");
    server.backup(&backup);
    let mut tpm_b = DeviceTpm::attach(&b);

    // Campaign 1, on the server that is about to be lost: both devices attested on v2.
    let key = cairn_testkit::copy_key(&a.key);
    let bundle = a.bundle_with(&v2, Some(&v1), "2.0.0", &[key], with_verity(&v2));
    server.ok("POST", "/releases", Some(fs::read(&bundle).unwrap()));
    server.campaign_with("c-v2", "2.0.0", true);
    for (n, (d, tpm)) in [(&mut a, &mut tpm_a), (&mut b, &mut tpm_b)]
        .into_iter()
        .enumerate()
    {
        install_and_reboot(d, tpm, SlotId::B);
        let _daemon = Daemon(d.spawn_cairnd());
        wait_for(30, "the attested success of v2", || {
            server.counts("c-v2").0 == n as u64 + 1
        });
    }
    assert_eq!(ak_trusted_events(&server, ids[1]), 1);

    // The server is restored from the backup: it never heard of v2, campaign c-v2 or
    // dev-0002's attestation key.
    server.restore(&backup);
    let (status, _) = server.admin("GET", "/campaigns/c-v2", None);
    assert_eq!(status, 404, "the restored server predates the campaign");
    assert_eq!(ak_trusted_events(&server, ids[1]), 0);

    // Campaign 2 on the restored server, attestation required: no operator step between.
    let key = cairn_testkit::copy_key(&a.key);
    let bundle = a.bundle_with(&v3, Some(&v2), "3.0.0", &[key], with_verity(&v3));
    server.ok("POST", "/releases", Some(fs::read(&bundle).unwrap()));
    server.campaign_with("c-v3", "3.0.0", true);
    for (n, (d, tpm)) in [(&mut a, &mut tpm_a), (&mut b, &mut tpm_b)]
        .into_iter()
        .enumerate()
    {
        install_and_reboot(d, tpm, SlotId::A);
        let _daemon = Daemon(d.spawn_cairnd());
        wait_for(30, "the attested success of v3", || {
            server.counts("c-v3").0 == n as u64 + 1
        });
        assert_eq!(phase(&d.status()), "committed");
    }
    let (succeeded, failed, state) = server.counts("c-v3");
    assert_eq!((succeeded, failed), (2, 0));
    wait_for(10, "the campaign to complete", || {
        server.counts("c-v3").2 == "completed"
    });
    let _ = state;
    for id in ids {
        let device = server.ok("GET", &format!("/devices/{id}"), None);
        assert_eq!(device["device"]["version"], "3.0.0", "{device:#}");
    }
    // dev-0002 enrolled its AK again (same EK, so no operator reset); dev-0001's AK was
    // in the backup and needed nothing.
    assert_eq!(
        ak_trusted_events(&server, ids[1]),
        1,
        "{:#?}",
        server.history(ids[1])
    );
    assert!(
        b.cairnd_log()
            .contains("does not trust this device's attestation key any more"),
        "{}",
        b.cairnd_log()
    );
    assert_eq!(
        ak_trusted_events(&server, ids[0]),
        1,
        "{:#?}",
        server.history(ids[0])
    );
}
