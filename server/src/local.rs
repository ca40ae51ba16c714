//! A server running on its own thread and tokio runtime, for programs that are not async
//! themselves: the updater's and the QEMU tests, and `cargo xtask demo`. Same code path
//! as `cairn-server serve` (real HTTP, real database); stopped when dropped.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::db::Db;
use crate::http;

pub struct LocalServer {
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalServer {
    /// Opens (or creates) the database at `db_url` and serves on `listen`
    /// (`127.0.0.1:0` picks a free port).
    pub fn start(db_url: &str, config: Config, listen: &str) -> Result<LocalServer> {
        let runtime = tokio::runtime::Runtime::new().context("starting a tokio runtime")?;
        let (db, listener) = runtime.block_on(async {
            let db = Db::connect(db_url).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            anyhow::Ok((db, listener))
        })?;
        let addr = listener.local_addr()?;
        let tls = config.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cairn-server".into())
            .spawn(move || {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = runtime.block_on(http::serve(db, config, listener, shutdown)) {
                    tracing::error!("cairn-server stopped: {e:#}");
                }
            })?;
        Ok(LocalServer {
            addr,
            tls,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:PORT` when it serves TLS, else `http://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// `cairn-server backup FILE` for programs that are not async: a consistent copy of the
/// SQLite database at `db_url`, made while servers keep serving it.
pub fn backup(db_url: &str, file: &std::path::Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting a tokio runtime")?;
    runtime.block_on(async {
        let db = Db::connect(db_url).await?;
        crate::backup::backup(&db, db_url, file).await?;
        db.pool.close().await;
        anyhow::Ok(())
    })
}

/// `cairn-server restore FILE` for programs that are not async; refused while a server
/// serves `db_url`. The database is opened once afterwards, which migrates it.
pub fn restore(db_url: &str, file: &std::path::Path) -> Result<crate::backup::Restored> {
    let runtime = tokio::runtime::Runtime::new().context("starting a tokio runtime")?;
    runtime.block_on(async {
        let restored = crate::backup::restore(db_url, file).await?;
        Db::connect(db_url).await?.pool.close().await;
        anyhow::Ok(restored)
    })
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
