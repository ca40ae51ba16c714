//! TLS termination for `cairn-server serve --tls-cert --tls-key`: rustls (ring), HTTP/1.1.
//!
//! The certificate and key are read again on SIGHUP and whenever either file changes
//! (checked every few seconds), so a renewed certificate takes effect without a restart
//! and without dropping connections; a pair that does not load (half-written, a key that
//! does not match) is refused and the old one kept, with a warning.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are looked at for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long open connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files a server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}: no certificate in it")]
    NoCertificate(String),
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Hands rustls the current certificate; replaced in place by [`CertReloader::reload`].
#[derive(Debug)]
pub struct CertReloader {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded.
    loaded: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl CertReloader {
    pub fn load(files: TlsFiles) -> Result<Arc<CertReloader>, TlsError> {
        let stamp = stamps(&files);
        let key = certified_key(&files)?;
        Ok(Arc::new(CertReloader {
            files,
            current: RwLock::new(Arc::new(key)),
            loaded: Mutex::new(stamp),
        }))
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamps(&self.files);
        let key = certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
        Ok(())
    }

    fn changed(&self) -> bool {
        stamps(&self.files) != *self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reload_and_say(&self, why: &str) {
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.files.cert.display(), "{why}: TLS certificate reloaded")
            }
            Err(e) => {
                tracing::warn!("{why}: TLS certificate not reloaded, the old one stays: {e}");
                // Tried once for these files: wait for them to change again (or SIGHUP)
                // rather than warn every few seconds.
                *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.files);
            }
        }
    }

    /// Reloads on SIGHUP and when a file changes, until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!("no SIGHUP handler ({e}); the certificate files are still watched");
                None
            }
        };
        let mut every = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    self.reload_and_say("SIGHUP");
                }
                _ = every.tick() => {
                    if self.changed() {
                        self.reload_and_say("certificate files changed");
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn stamps(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path| {
        let path = path.display().to_string();
        move |e: rustls::pki_types::pem::Error| TlsError::File {
            path,
            reason: e.to_string(),
        }
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(file_error(&files.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error(&files.cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(file_error(&files.key))?;
    let signing = ring::sign::any_supported_type(&key)?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
    })?;
    Ok(certified)
}

/// The acceptor for `reloader`'s certificate: TLS 1.2 and 1.3, HTTP/1.1.
pub fn acceptor(reloader: Arc<CertReloader>) -> Result<TlsAcceptor, TlsError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(reloader);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets open
/// connections finish (up to a bound).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        // What `into_make_service_with_connect_info` gives plain HTTP: the peer address,
        // which bounds enrollments per source.
        let service = TowerToHyperService::new(router.clone().layer(Extension(ConnectInfo(peer))));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}
