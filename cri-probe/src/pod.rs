//! A one-container pod the way a kubelet would ask the CRI for it: a sandbox on the host
//! network in namespace `default`, labelled `app=<name>`, and one container `<name>`.
//! `cairn-cri-probe run-pod` starts one (a stand-in for a kubelet's static pod where no
//! Kubernetes runs, as in the QEMU tests), and so do the host tests that play kubelet.

use std::collections::HashMap;
use std::path::Path;

use crate::client::Client;
use crate::v1;
use crate::CriError;

/// What to run.
pub struct PodSpec<'a> {
    pub name: &'a str,
    /// Fully qualified (`docker.io/local/app:1`): the CRI pulls anything it lacks.
    pub image: &'a str,
    /// Empty: the image's own command.
    pub cmd: &'a [String],
    /// Where the runtime writes the container's log.
    pub log_dir: &'a Path,
}

impl PodSpec<'_> {
    pub fn sandbox_config(&self) -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: self.name.into(),
                uid: format!("uid-{}", self.name),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Host network: empty, or the CRI tries to set the host's hostname.
            hostname: String::new(),
            log_directory: self.log_dir.display().to_string(),
            labels: HashMap::from([("app".to_string(), self.name.to_string())]),
            linux: Some(v1::LinuxPodSandboxConfig {
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption {
                        network: v1::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The container of restart `attempt` (kubelet counts restarts the same way).
    pub fn container_config(&self, attempt: u32) -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: self.name.into(),
                attempt,
            }),
            image: Some(v1::ImageSpec {
                image: self.image.into(),
                ..Default::default()
            }),
            command: self.cmd.to_vec(),
            log_path: format!("{}_{attempt}.log", self.name),
            labels: HashMap::from([("app".to_string(), self.name.to_string())]),
            annotations: HashMap::from([(
                "io.kubernetes.container.restartCount".to_string(),
                attempt.to_string(),
            )]),
            ..Default::default()
        }
    }
}

/// The ids of a started pod.
#[derive(Debug, Clone)]
pub struct StartedPod {
    pub sandbox_id: String,
    pub container_id: String,
}

/// Runs the sandbox, then creates and starts attempt 0 of the container.
pub fn run(client: &Client, spec: &PodSpec<'_>) -> Result<StartedPod, CriError> {
    let sandbox = spec.sandbox_config();
    let sandbox_id = client.run_pod_sandbox(sandbox.clone(), "")?;
    let container_id = client.create_container(&sandbox_id, spec.container_config(0), sandbox)?;
    client.start_container(&container_id)?;
    Ok(StartedPod {
        sandbox_id,
        container_id,
    })
}
