//! [`Client`]: tonic's generated CRI clients on one HTTP/2 connection to the runtime's unix
//! socket, behind a blocking facade (a current-thread tokio runtime the client owns).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::{v1, v1alpha2};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Condition, CriError, MAX_REPLY_BYTES};

/// A connection to a container runtime's CRI. Every call gives up after the client's
/// timeout and accepts replies up to [`MAX_REPLY_BYTES`]. A broken connection is made
/// again by the next call (tonic reconnects through the same socket path).
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    channel: Channel,
    // Declared last: dropped after the channel whose tasks it runs.
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// Connects to the runtime at `socket`; `timeout` bounds the connection and, from then
    /// on, each call.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Client, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(CriError::Runtime)?;
        let channel = rt.block_on(connect(socket, timeout))?;
        Ok(Client {
            socket: socket.to_path_buf(),
            timeout,
            channel,
            rt,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The runtime's conditions (RuntimeReady, NetworkReady, ...), asking CRI v1 and, if
    /// the runtime does not implement it, v1alpha2 (runtimes before containerd 1.6).
    pub fn status(&self) -> Result<Vec<Condition>, CriError> {
        match self.status_v1() {
            Err(e) if e.is_unimplemented() => self.status_v1alpha2(),
            other => other,
        }
    }

    /// `Status` through CRI v1 only.
    pub fn status_v1(&self) -> Result<Vec<Condition>, CriError> {
        let mut c = self.runtime_client();
        let reply = self.run("runtime.v1.RuntimeService/Status", async move {
            c.status(v1::StatusRequest { verbose: false }).await
        })?;
        Ok(reply
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| Condition {
                kind: c.r#type,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect())
    }

    /// `Status` through CRI v1alpha2 only (containerd 1.6 serves both).
    pub fn status_v1alpha2(&self) -> Result<Vec<Condition>, CriError> {
        let mut c =
            v1alpha2::runtime_service_client::RuntimeServiceClient::new(self.channel.clone())
                .max_decoding_message_size(MAX_REPLY_BYTES);
        let reply = self.run("runtime.v1alpha2.RuntimeService/Status", async move {
            c.status(v1alpha2::StatusRequest { verbose: false }).await
        })?;
        Ok(reply
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| Condition {
                kind: c.r#type,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect())
    }

    /// The images the runtime holds.
    pub fn list_images(&self) -> Result<Vec<v1::Image>, CriError> {
        let mut c = self.image_client();
        let reply = self.run("runtime.v1.ImageService/ListImages", async move {
            c.list_images(v1::ListImagesRequest { filter: None }).await
        })?;
        Ok(reply.images)
    }

    /// The pod sandboxes, all of them or those `filter` selects (by id, state, labels).
    pub fn list_pod_sandboxes(
        &self,
        filter: Option<v1::PodSandboxFilter>,
    ) -> Result<Vec<v1::PodSandbox>, CriError> {
        let mut c = self.runtime_client();
        let reply = self.run("runtime.v1.RuntimeService/ListPodSandbox", async move {
            c.list_pod_sandbox(v1::ListPodSandboxRequest { filter })
                .await
        })?;
        Ok(reply.items)
    }

    /// The containers, all of them or those `filter` selects (by id, state, sandbox,
    /// labels). Exited containers are listed until they are removed.
    pub fn list_containers(
        &self,
        filter: Option<v1::ContainerFilter>,
    ) -> Result<Vec<v1::Container>, CriError> {
        let mut c = self.runtime_client();
        let reply = self.run("runtime.v1.RuntimeService/ListContainers", async move {
            c.list_containers(v1::ListContainersRequest { filter })
                .await
        })?;
        Ok(reply.containers)
    }

    /// One container's status: state, exit code, reason, times.
    pub fn container_status(&self, id: &str) -> Result<v1::ContainerStatus, CriError> {
        const METHOD: &str = "runtime.v1.RuntimeService/ContainerStatus";
        let mut c = self.runtime_client();
        let request = v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let reply = self.run(METHOD, async move { c.container_status(request).await })?;
        reply.status.ok_or_else(|| CriError::Decode {
            method: METHOD.into(),
            message: format!("no status for container {id}"),
        })
    }

    /// Starts a pod sandbox; returns its id. `runtime_handler` "" is the runtime's default.
    pub fn run_pod_sandbox(
        &self,
        config: v1::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriError> {
        let mut c = self.runtime_client();
        let request = v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.into(),
        };
        let reply = self.run("runtime.v1.RuntimeService/RunPodSandbox", async move {
            c.run_pod_sandbox(request).await
        })?;
        Ok(reply.pod_sandbox_id)
    }

    /// Creates a container in a sandbox (`sandbox_config` is the one it was run with);
    /// returns the container's id.
    pub fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: v1::ContainerConfig,
        sandbox_config: v1::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut c = self.runtime_client();
        let request = v1::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let reply = self.run("runtime.v1.RuntimeService/CreateContainer", async move {
            c.create_container(request).await
        })?;
        Ok(reply.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime_client();
        let request = v1::StartContainerRequest {
            container_id: id.into(),
        };
        self.run("runtime.v1.RuntimeService/StartContainer", async move {
            c.start_container(request).await
        })?;
        Ok(())
    }

    /// Stops a container, killing it after `grace` seconds.
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> Result<(), CriError> {
        let mut c = self.runtime_client();
        let request = v1::StopContainerRequest {
            container_id: id.into(),
            timeout: grace_secs,
        };
        self.run("runtime.v1.RuntimeService/StopContainer", async move {
            c.stop_container(request).await
        })?;
        Ok(())
    }

    /// Stops a sandbox and every container in it.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime_client();
        let request = v1::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.run("runtime.v1.RuntimeService/StopPodSandbox", async move {
            c.stop_pod_sandbox(request).await
        })?;
        Ok(())
    }

    /// Removes a sandbox and its containers (stopping them first).
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime_client();
        let request = v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.run("runtime.v1.RuntimeService/RemovePodSandbox", async move {
            c.remove_pod_sandbox(request).await
        })?;
        Ok(())
    }

    fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_REPLY_BYTES)
    }

    fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_REPLY_BYTES)
    }

    /// Runs one call to completion on the client's runtime, bounded by its timeout.
    fn run<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, call).await })
        {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(grpc_error(method, &status)),
            Err(_elapsed) => Err(CriError::Timeout {
                method: method.into(),
                timeout: self.timeout,
            }),
        }
    }
}

/// One connection: the socket is connected here first, so that a missing socket or a
/// refused connection is reported as what it is; tonic gets that stream, and a fresh one
/// from the same path whenever it has to reconnect.
async fn connect(socket: &Path, timeout: Duration) -> Result<Channel, CriError> {
    let timed_out = || CriError::Timeout {
        method: "connect".into(),
        timeout,
    };
    let first = tokio::time::timeout(timeout, UnixStream::connect(socket))
        .await
        .map_err(|_| timed_out())?
        .map_err(CriError::Connect)?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let ready = first.lock().ok().and_then(|mut f| f.take());
        let path = path.clone();
        async move {
            let stream = match ready {
                Some(stream) => stream,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI only fills in HTTP/2's :authority; the connector decides where it goes.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(timeout);
    tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| CriError::Connect(io::Error::other(error_chain(&e))))
}

fn grpc_error(method: &str, status: &tonic::Status) -> CriError {
    let mut message = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        message = if chain.starts_with(&message) {
            chain
        } else {
            format!("{message}: {chain}")
        };
    }
    CriError::Grpc {
        method: method.into(),
        code: u32::try_from(i32::from(status.code())).unwrap_or(2),
        message,
    }
}

/// An error and its sources, "outer: inner: innermost".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}
