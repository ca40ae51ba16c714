//! An install stopped part-way: kill -9 (then a restart), SIGTERM, a second install at
//! the same time. Whatever happens, the slot being written is never bootable and the
//! next run finds a consistent state. Also the daemon's metrics endpoint.

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_updater::bootstate::SlotId;
use common::http::{Faults, Server};
use common::*;

/// A v2 bundle served slowly (about 64 KiB per 20 ms), so an install takes seconds.
fn slow_install(d: &Device, v2: &Release) -> (Server, String) {
    let bundle: PathBuf = d.bundle(v2, None);
    let faults = Arc::new(Faults {
        trickle: Duration::from_millis(20),
        ..Faults::default()
    });
    let (server, url) = d.serve_bundle(&bundle, faults);
    (server, url)
}

fn installing(d: &Device) -> bool {
    d.state_json()["phase"]["phase"] == "installing"
}

fn assert_b_unbootable(d: &Device) {
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_b, boot.committed),
        (SlotId::A, 0, SlotId::A),
        "slot B must not be bootable"
    );
}

#[test]
fn kill_9_during_the_write_then_restart_is_consistent_and_retryable() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let mut d = Device::new(&v1);
    let (_server, url) = slow_install(&d, &v2);
    let mut child = d.spawn_install(&url);
    wait_for(30, "the write to start", || installing(&d));
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert_b_unbootable(&d);

    // The daemon starting again in the same boot (or after a power cut) reconciles.
    let out = d.cairnd_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = d.status();
    assert_eq!(phase(&s), "failed", "{s:#}");
    assert!(
        s["phase"]["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{s:#}"
    );
    assert_b_unbootable(&d);
    assert!(d.holds(SlotId::A, &v1));
    // Not a verdict on 2.0.0: it installs again, without --force.
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    d.cairnd_once();
    assert_eq!(phase(&d.status()), "committed");
}

#[test]
fn sigterm_cancels_the_install_and_leaves_the_slot_unbootable() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let (_server, url) = slow_install(&d, &v2);
    let mut child = d.spawn_install(&url);
    wait_for(30, "the write to start", || installing(&d));
    std::thread::sleep(Duration::from_millis(300));
    nix_kill(child.id(), "TERM");
    let status = child.wait().unwrap();
    let stderr = fs::read_to_string(d.path("install.log")).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_b_unbootable(&d);
    let s = d.status();
    assert_eq!(phase(&s), "failed", "{s:#}");
    assert!(d.holds(SlotId::A, &v1));
}

#[test]
fn a_second_install_while_one_runs_is_refused() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let (_server, url) = slow_install(&d, &v2);
    let mut first = d.spawn_install(&url);
    wait_for(30, "the first install to start", || installing(&d));
    let err = d.cairn_err(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    assert!(err.contains("another install"), "{err}");
    let err = d.cairn_err(&["mark-good"]);
    assert!(err.contains("another install"), "{err}");
    assert!(first.wait().unwrap().success());
    assert_eq!(phase(&d.status()), "installed-pending");
}

#[test]
fn the_metrics_endpoint_serves_prometheus_on_localhost_and_no_client_can_hold_it() {
    let v1 = Release::new("1.0.0", 0);
    let d = Device::new(&v1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    d.edit_config(|t| t.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")));
    let mut daemon = d.spawn_cairnd();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = String::new();
    wait_for(
        20,
        "the metrics endpoint",
        || match reqwest::blocking::get(&url).and_then(|r| r.text()) {
            Ok(text) => {
                body = text;
                true
            }
            Err(_) => false,
        },
    );
    // A client that connects and says nothing, and one that sends an endless line, must
    // not keep the endpoint from answering the next scrape.
    use std::io::Write as _;
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut flood = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = flood.write_all(&vec![b'A'; 256 << 10]);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .unwrap();
    let again = client.get(&url).send().and_then(|r| r.text());
    assert!(
        again.is_ok_and(|t| t.contains("cairn_phase")),
        "the endpoint stays available after idle and oversized requests"
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    for line in [
        "# TYPE cairn_phase gauge",
        "cairn_phase{phase=\"committed\"} 1",
        "cairn_booted_slot{slot=\"A\"} 1",
        "cairn_slot_tries_left{slot=\"A\"} 3",
        "cairn_recovery 0",
        "cairn_pending_reports 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line:?} missing from\n{body}"
        );
    }
    let log = fs::read_to_string(d.path("cairnd-0.log")).unwrap();
    assert!(log.contains("started"), "{log}");
}

fn nix_kill(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
