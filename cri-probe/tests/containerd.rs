//! The probe against a real containerd (see updater/tests/common/containerd.rs).

#[path = "../../updater/tests/common/containerd.rs"]
mod containerd;

use std::process::Command;

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
    let client = containerd.client();
    let conditions = client.status_v1alpha2().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.kind == "NetworkReady" && c.status),
        "{conditions:?}"
    );

    // A gRPC status other than OK is an error that names the method and the code.
    let err = client.container_status("no-such-container").unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(matches!(err, CriError::Grpc { code: 5, .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("runtime.v1.RuntimeService/ContainerStatus: gRPC status 5 (NOT_FOUND): "),
        "{err}"
    );
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

#[test]
fn images_pods_and_containers_through_the_client() {
    use cairn_cri_probe::v1;
    use std::collections::HashMap;
    use std::time::Duration;

    let containerd = Containerd::start(Network::Loopback);
    let image = containerd.import_busybox("hello", "1", &["sleep", "3600"]);
    assert_eq!(image, "docker.io/local/hello:1");
    let images = containerd.list_images();
    assert!(
        images.iter().any(|i| i.repo_tags.contains(&image)),
        "{images:?}"
    );

    let pod = containerd.run_pod("hello", &image, &[]);
    pod.wait_running(Duration::from_secs(10));
    let client = containerd.client();
    let by_label = v1::PodSandboxFilter {
        label_selector: HashMap::from([("app".to_string(), "hello".to_string())]),
        ..Default::default()
    };
    let sandboxes = client.list_pod_sandboxes(Some(by_label.clone())).unwrap();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    assert_eq!(sandboxes[0].id, pod.sandbox_id);
    assert_eq!(sandboxes[0].state, v1::PodSandboxState::SandboxReady as i32);
    let containers = client
        .list_containers(Some(v1::ContainerFilter {
            pod_sandbox_id: pod.sandbox_id.clone(),
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, pod.container_id);
    assert_eq!(containers[0].metadata.as_ref().unwrap().name, "hello");
    assert_eq!(
        containers[0].state,
        v1::ContainerState::ContainerRunning as i32
    );

    pod.remove();
    assert!(client
        .list_pod_sandboxes(Some(by_label))
        .unwrap()
        .is_empty());
    assert!(client.list_containers(None).unwrap().is_empty());
}
