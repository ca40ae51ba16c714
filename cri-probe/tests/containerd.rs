//! The probe against a real containerd (see updater/tests/common/containerd.rs).

#[path = "../../updater/tests/common/containerd.rs"]
mod containerd;

use std::process::Command;
use std::time::Duration;

use cairn_cri_probe::CriError;
use containerd::{Containerd, Network};

fn probe(containerd: &Containerd) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-cri-probe"))
        .arg(&containerd.socket)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn the_probe_reports_both_conditions_over_both_api_versions() {
    let containerd = Containerd::start(Network::Loopback);
    let (code, stdout) = probe(&containerd);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("RuntimeReady=true"), "{stdout}");
    assert!(stdout.contains("NetworkReady=true"), "{stdout}");

    // containerd 1.6 also answers the v1alpha2 API the probe falls back to.
    let timeout = Duration::from_secs(5);
    let reply = cairn_cri_probe::unary_call(
        &containerd.socket,
        cairn_cri_probe::STATUS_METHODS[1],
        &[],
        timeout,
    )
    .unwrap();
    assert!(reply.windows(12).any(|w| w == b"NetworkReady"), "{reply:?}");

    // A grpc-status other than 0 (here in a trailers-only reply) is an error.
    let err = cairn_cri_probe::unary_call(
        &containerd.socket,
        "/runtime.v1.RuntimeService/NoSuchMethod",
        &[],
        timeout,
    )
    .unwrap_err();
    assert!(matches!(err, CriError::Grpc { code: 12, .. }), "{err:?}");
    assert!(err.to_string().contains("UNIMPLEMENTED"), "{err}");
}

#[test]
fn network_not_ready_is_printed_but_runtime_ready_decides_the_exit_code() {
    let containerd = Containerd::start(Network::None);
    let (code, stdout) = probe(&containerd);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("RuntimeReady=true"), "{stdout}");
    assert!(
        stdout.contains("NetworkReady=false NetworkPluginNotReady"),
        "{stdout}"
    );
}
