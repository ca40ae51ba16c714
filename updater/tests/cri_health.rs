//! The `cri` health check against a real containerd (Debian's 1.6 with its CRI plugin,
//! runc and the CNI plugins, as `cargo xtask setup` installs them), through the real
//! `cairn` binary and through the `cairn_cri_probe` library it uses. Runs as root.

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_cri_probe::{Condition, CriError};
use common::{Device, Release};
use containerd::{Containerd, Network};

fn device_checking(socket: &Path, timeout_secs: u64) -> Device {
    let d = Device::new(&Release::new("1.0.0", 0));
    d.health_check(
        "containerd",
        &format!(
            "kind = \"cri\"\nsocket = \"{}\"\ntimeout_secs = {timeout_secs}\n",
            socket.display()
        ),
    );
    d
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} in {conditions:?}"))
}

#[test]
fn a_ready_containerd_passes() {
    let containerd = Containerd::start(Network::Loopback);
    let conditions = cairn_cri_probe::status(&containerd.socket, Duration::from_secs(5)).unwrap();
    assert!(
        condition(&conditions, "RuntimeReady").status,
        "{conditions:?}"
    );
    assert!(
        condition(&conditions, "NetworkReady").status,
        "{conditions:?}"
    );

    let device = device_checking(&containerd.socket, 5);
    let out = device.cairn(&["check-health"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-health failed:\n{stdout}{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        containerd.log()
    );
    assert!(stdout.contains("ok    containerd"), "{stdout}");
}

#[test]
fn without_a_cni_config_network_ready_is_false_and_the_check_fails_naming_it() {
    let containerd = Containerd::start(Network::None);
    let conditions = cairn_cri_probe::status(&containerd.socket, Duration::from_secs(5)).unwrap();
    assert!(
        condition(&conditions, "RuntimeReady").status,
        "{conditions:?}"
    );
    let network = condition(&conditions, "NetworkReady");
    assert!(!network.status, "{conditions:?}");
    assert_eq!(network.reason, "NetworkPluginNotReady");

    let device = device_checking(&containerd.socket, 5);
    let out = device.cairn(&["check-health"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-health passed:\n{stdout}");
    assert!(stdout.contains("FAIL  containerd"), "{stdout}");
    assert!(
        stdout.contains("NetworkReady=false (NetworkPluginNotReady: "),
        "{stdout}"
    );
    assert!(
        !stdout.contains("RuntimeReady"),
        "only NetworkReady is false: {stdout}"
    );
    assert!(stderr.contains("1 of 1 health checks failed"), "{stderr}");
}

#[test]
fn a_socket_nobody_answers_on_fails_fast_and_says_why() {
    let dir = tempfile::tempdir().unwrap();

    // Bound but never accepting: connect succeeds (backlog), no reply ever comes.
    let silent = dir.path().join("silent.sock");
    let _listener = UnixListener::bind(&silent).unwrap();
    let started = Instant::now();
    let err = cairn_cri_probe::status(&silent, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(err, CriError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let device = device_checking(&silent, 1);
    let started = Instant::now();
    let out = device.cairn(&["check-health"]);
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAIL  containerd: CRI Status on {}",
            silent.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("no reply within 1s"), "{stdout}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // A socket file left behind by a runtime that is gone: refused at once.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let device = device_checking(&stale, 10);
    let started = Instant::now();
    let out = device.cairn(&["check-health"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("cannot connect: Connection refused"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // No socket at all.
    let err =
        cairn_cri_probe::status(&dir.path().join("none.sock"), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, CriError::Connect(_)), "{err:?}");
    assert!(err.to_string().contains("No such file"), "{err}");
}
