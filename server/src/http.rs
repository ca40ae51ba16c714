//! The HTTP server: the routes, the serve loop, and the periodic gate evaluation that
//! runs beside it.

use std::net::SocketAddr;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;

use crate::db::Db;
use crate::error::ApiResult;
use crate::{admin_api, blobs, dashboard, dashboard_actions, device_api, metrics};
use crate::{auth, campaigns, tls};

// Where other crates and the tests have always taken them from.
pub use crate::app::{AppState, Shared};
pub use crate::config::Config;

/// Starts the shared state ([`AppState::start`]) and builds the routes over it.
pub async fn build(db: Db, config: Config, local: SocketAddr) -> anyhow::Result<(Router, Shared)> {
    let state = AppState::start(db, config, local).await?;
    let device = Router::new()
        .route("/enroll", post(device_api::enroll))
        .route("/token", post(device_api::token))
        .route("/rotate-key", post(device_api::rotate_key))
        .route("/check-in", post(device_api::check_in))
        .route("/deployments/{id}/reports", post(device_api::report))
        .route(
            "/deployments/{id}/reboot-lease",
            post(device_api::reboot_lease),
        )
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
        .route("/devices/{id}/{action}", post(admin_api::device_action))
        .route("/audit", get(admin_api::audit_log))
        .route("/ddi/targets", post(admin_api::register_ddi_target))
        .route(
            "/campaigns",
            get(admin_api::list_campaigns).post(admin_api::create_campaign),
        )
        .route("/campaigns/{id}", get(admin_api::campaign_status))
        .route("/campaigns/{id}/dry-run", get(admin_api::dry_run))
        .route("/campaigns/{id}/{action}", post(admin_api::campaign_action))
        .layer(DefaultBodyLimit::max(64 * 1024));
    let router = Router::new()
        .merge(crate::ddi::routes())
        .nest("/v1/device", device)
        .nest("/admin/v1", admin)
        .route("/", get(dashboard::campaigns))
        .route(
            "/ui/login",
            get(dashboard_actions::sign_in_form).post(dashboard_actions::sign_in),
        )
        .route("/ui/logout", post(dashboard_actions::sign_out))
        .route("/ui/campaigns", post(dashboard_actions::create_campaign))
        .route("/ui/campaigns/new", get(dashboard_actions::new_campaign))
        .route("/ui/campaigns/{id}", get(dashboard::campaign))
        .route(
            "/ui/campaigns/{id}/{action}",
            post(dashboard_actions::campaign_action),
        )
        .route("/ui/devices/{id}/tags", post(dashboard_actions::set_tags))
        .route(
            "/ui/devices/{id}/{action}",
            post(dashboard_actions::device_action),
        )
        .route(
            "/ui/users",
            get(dashboard_actions::users_page).post(dashboard_actions::add_user),
        )
        .route(
            "/ui/users/{name}/{what}",
            post(dashboard_actions::change_user),
        )
        .route("/ui/devices", get(dashboard::devices))
        .route("/ui/devices/{id}", get(dashboard::device))
        .route("/ui/audit", get(dashboard::audit))
        .route("/ui/fleet", get(dashboard::fleet))
        .route(
            "/ui/releases",
            get(dashboard::releases).post(dashboard_actions::upload_release),
        )
        .route("/blobs/{name}", get(blobs::serve))
        .route("/metrics", get(metrics::serve))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        // After routing, so each request is counted under its route's template.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
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
    // Load the certificate before anything else: a server that cannot serve TLS as
    // asked must not start at all.
    let tls = match &config.tls {
        Some(files) => Some(tls::CertReloader::load(files.clone())?),
        None => None,
    };
    // Held while serving: `cairn-server restore` refuses to replace the database under it.
    let _lock = crate::backup::ServeLock::serving(&db)?;
    crate::backup::check_blobs(&db, &config.blobs).await?;
    let (router, state) = build(db, config, local).await?;
    let ticker = tokio::spawn(evaluate_forever(state.clone()));
    let served = match tls {
        Some(reloader) => {
            tracing::info!(%local, public_url = %state.public_url, "cairn-server listening (HTTPS)");
            let acceptor = tls::acceptor(reloader.clone())?;
            let watcher = tokio::spawn(reloader.watch());
            let served = tls::serve(listener, acceptor, router, shutdown).await;
            watcher.abort();
            served
        }
        None => {
            tracing::warn!(
                %local,
                public_url = %state.public_url,
                "cairn-server listening on PLAIN HTTP: device tokens, reports and the admin \
                 token cross the network unencrypted; give --tls-cert and --tls-key outside \
                 development"
            );
            // The peer address bounds enrollments per source (`devices::EnrollLimits`).
            let router = router.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
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
    auth::purge_nonces(&state.db).await?;
    state.caches.invalidate_campaigns();
    Ok(())
}
