//! What every request handler of one server shares: the database, the configuration,
//! the keys requests are checked against, the in-memory caches and the batched device
//! reader and state writer.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::{admin_token, shared_secret, AdminToken, Credentials, SessionKey, TokenKey};
use crate::caches::Caches;
use crate::checkin::CheckInContext;
use crate::config::Config;
use crate::db::Db;
use crate::device_reader::DeviceReader;
use crate::metrics::Metrics;
use crate::state_writer::StateWriter;

pub struct AppState {
    pub db: Db,
    pub config: Config,
    pub public_url: String,
    pub token_key: TokenKey,
    pub admin_token: AdminToken,
    /// Signs dashboard users' sessions and their forms' CSRF tokens.
    pub session_key: SessionKey,
    pub caches: Caches,
    pub writer: StateWriter,
    pub reader: DeviceReader,
    /// Request counts and latencies for `/metrics`.
    pub metrics: Metrics,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// Loads (or creates) the server secrets and starts the reader and writer tasks.
    /// `local` is the listen address, for the public URL when none is configured.
    pub async fn start(db: Db, config: Config, local: SocketAddr) -> anyhow::Result<Shared> {
        tokio::fs::create_dir_all(&config.blobs).await?;
        let token_key = TokenKey::new(&shared_secret(&db, "device_token_key").await?);
        let admin = admin_token(&db, config.admin_token.as_deref()).await?;
        let session_key = SessionKey::new(&shared_secret(&db, "dashboard_session_key").await?);
        let public_url = config.public_url.clone().unwrap_or_else(|| {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{local}")
        });
        Ok(Arc::new(AppState {
            writer: StateWriter::start(db.clone()),
            reader: DeviceReader::start(db.clone(), 2),
            db,
            public_url,
            token_key,
            admin_token: AdminToken::new(&admin),
            session_key,
            caches: Caches::default(),
            metrics: Metrics::default(),
            config,
        }))
    }

    pub fn check_in_context(&self) -> CheckInContext<'_> {
        CheckInContext {
            db: &self.db,
            caches: &self.caches,
            writer: &self.writer,
            reader: &self.reader,
            public_url: &self.public_url,
            poll_interval_secs: self.config.poll_interval_secs,
        }
    }
}

impl Credentials for Shared {
    fn token_key(&self) -> &TokenKey {
        &self.token_key
    }
    fn admin_token(&self) -> &AdminToken {
        &self.admin_token
    }
}
