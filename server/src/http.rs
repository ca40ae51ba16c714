//! The HTTP server: shared state, routes, background gate evaluation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use cairn_bundle::TrustRoot;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::auth::{shared_secret, TokenKey};
use crate::campaigns;
use crate::checkin::{Caches, CheckInContext};
use crate::db::Db;
use crate::device_reader::DeviceReader;
use crate::error::{ApiError, ApiResult};
use crate::state_writer::StateWriter;
use crate::{admin_api, blobs, dashboard, device_api};

/// How a server is run; everything else lives in the database.
#[derive(Debug, Clone)]
pub struct Config {
    pub blobs: PathBuf,
    pub root: Option<TrustRoot>,
    /// Overrides the admin token kept in the database.
    pub admin_token: Option<String>,
    /// The base URL devices reach this server at (for bundle URLs); defaults to
    /// `http://<listen address>`.
    pub public_url: Option<String>,
    pub poll_interval_secs: u64,
    /// How often running campaigns' gates are evaluated besides after each final report.
    pub evaluate_every: Duration,
    /// The CA (PEM or DER) that must have issued a device's TPM EK certificate; `None`
    /// accepts any EK (the MakeCredential challenge still binds the AK to it).
    pub ek_ca: Option<Vec<u8>>,
}

impl Config {
    pub fn new(blobs: PathBuf) -> Config {
        Config {
            blobs,
            root: None,
            admin_token: None,
            public_url: None,
            poll_interval_secs: 300,
            evaluate_every: Duration::from_secs(5),
            ek_ca: None,
        }
    }
}

pub struct AppState {
    pub db: Db,
    pub config: Config,
    pub public_url: String,
    pub token_key: TokenKey,
    /// sha256 of the admin token: compared digest to digest, never the token itself.
    admin_token_digest: [u8; 32],
    pub caches: Caches,
    pub writer: StateWriter,
    pub reader: DeviceReader,
}

pub type Shared = Arc<AppState>;

impl AppState {
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

    pub fn admin_token_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Comparing fixed-size digests leaks nothing useful about the token.
        digest == self.admin_token_digest
    }
}

/// The admin token: from the configuration, else the one kept in the database (created
/// on first start and shown by `cairn-server admin-token`).
pub async fn admin_token(db: &Db, configured: Option<&str>) -> ApiResult<String> {
    match configured {
        Some(t) => Ok(t.to_string()),
        None => shared_secret(db, "admin_token").await,
    }
}

pub async fn build(db: Db, config: Config, local: SocketAddr) -> anyhow::Result<(Router, Shared)> {
    tokio::fs::create_dir_all(&config.blobs).await?;
    let token_key = TokenKey::new(&shared_secret(&db, "device_token_key").await?);
    let admin = admin_token(&db, config.admin_token.as_deref()).await?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let state = Arc::new(AppState {
        writer: StateWriter::start(db.clone()),
        reader: DeviceReader::start(db.clone(), 2),
        db,
        public_url,
        token_key,
        admin_token_digest: Sha256::digest(admin.as_bytes()).into(),
        caches: Caches::default(),
        config,
    });
    let device = Router::new()
        .route("/enroll", post(device_api::enroll))
        .route("/token", post(device_api::token))
        .route("/check-in", post(device_api::check_in))
        .route("/deployments/{id}/reports", post(device_api::report))
        .route(
            "/deployments/{id}/attestation",
            post(device_api::attestation),
        )
        .route("/tpm", post(device_api::tpm_enroll))
        .route("/tpm/activate", post(device_api::tpm_activate))
        .layer(DefaultBodyLimit::max(64 * 1024));
    let admin = Router::new()
        .route(
            "/releases",
            get(admin_api::list_releases).post(admin_api::add_release),
        )
        .route("/devices", get(admin_api::list_devices))
        .route("/devices/import", post(admin_api::import_devices))
        .route("/devices/{id}", get(admin_api::show_device))
        .route("/devices/{id}/approve", post(admin_api::approve_device))
        .route("/devices/{id}/tags", put(admin_api::set_tags))
        .route(
            "/campaigns",
            get(admin_api::list_campaigns).post(admin_api::create_campaign),
        )
        .route("/campaigns/{id}", get(admin_api::campaign_status))
        .route("/campaigns/{id}/dry-run", get(admin_api::dry_run))
        .route("/campaigns/{id}/{action}", post(admin_api::campaign_action))
        .layer(DefaultBodyLimit::max(64 * 1024));
    let router = Router::new()
        .nest("/v1/device", device)
        .nest("/admin/v1", admin)
        .route("/", get(dashboard::campaigns))
        .route("/ui/campaigns/{id}", get(dashboard::campaign))
        .route("/ui/devices", get(dashboard::devices))
        .route("/ui/devices/{id}", get(dashboard::device))
        .route("/blobs/{name}", get(blobs::serve))
        .with_state(state.clone());
    Ok((router, state))
}

/// Serves until `shutdown` resolves. Also runs the periodic gate evaluation.
pub async fn serve(
    db: Db,
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let (router, state) = build(db, config, local).await?;
    let ticker = tokio::spawn(evaluate_forever(state.clone()));
    tracing::info!(%local, public_url = %state.public_url, "cairn-server listening");
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    ticker.abort();
    state.writer.flush().await;
    served?;
    Ok(())
}

async fn evaluate_forever(state: Shared) {
    let mut every = tokio::time::interval(state.config.evaluate_every);
    loop {
        every.tick().await;
        if let Err(e) = evaluate_once(&state).await {
            tracing::warn!("campaign evaluation: {e}");
        }
    }
}

pub async fn evaluate_once(state: &AppState) -> ApiResult<()> {
    for c in campaigns::list_assigning(&state.db).await? {
        if c.state == campaigns::state::RUNNING {
            campaigns::evaluate(&state.db, &c.id).await?;
        }
    }
    crate::auth::purge_nonces(&state.db).await?;
    state.caches.invalidate_campaigns();
    Ok(())
}

/// Parses a JSON body with a message that names what is wrong.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad-json", format!("request body: {e}")))
}
