//! `cairn-server`: the fleet update server. Releases (verified bundles), devices
//! (enrollment, approval, state), campaigns (waves, gates, auto-pause), the device API
//! (`API.md`), the admin API and a dashboard. SQLite or PostgreSQL behind `sqlx::Any`.
//!
//! Decisions are pure functions ([`policy`], [`gates`], [`transitions`], [`plan`]); the
//! modules around them load state, call them, and write the result with
//! compare-and-set statements so several servers can share one database.
//!
//! - [`db`]: connection, portable migrations (`migrations/`), ids and time.
//! - [`releases`], [`devices`], [`campaigns`]: the model and its store; [`dry_run`].
//! - [`deployments`]: every statement on the `deployments` table.
//! - [`checkin`], [`device_reader`], [`state_writer`], [`caches`]: the hot path of the
//!   device API.
//! - [`reports`]: progress reports, applied once and atomically.
//! - [`reboot_leases`]: a campaign's reboot budget: at most N devices of a group between
//!   their reboot and their verdict at once.
//! - [`attestation`]: TPM enrollment (MakeCredential challenge) and quote checks that
//!   hold a deployment's success until the device proves which image booted.
//! - [`backup`]: `backup` and `restore` of a SQLite database, the serve lock that keeps
//!   a restore from replacing a served database, the start-up check of the blob directory.
//! - [`audit`]: the log of operator actions: a device's trust (approve, TPM reset,
//!   reject, revoke), campaigns run from the dashboard, users.
//! - [`users`]: dashboard accounts with roles (viewer, operator, admin), Argon2id
//!   passwords.
//! - [`auth`]: request authentication: signed device requests (timestamp + nonce),
//!   device tokens, the admin token (admin API and dashboard).
//! - [`config`], [`app`]: how a server is run and the state its handlers share.
//! - [`http`]: routes and the serve loop; [`tls`]: HTTPS, its certificate reloaded on
//!   change; [`device_api`], [`admin_api`], [`dashboard`] (pages) and [`dashboard_actions`]
//!   (sign-in and the forms that act, role- and CSRF-checked), [`blobs`]: the handlers;
//!   [`json`], [`error`]: request bodies and error answers;
//!   [`local`] runs a server on a thread for non-async programs (tests, the demo).
//! - [`overview`]: the fleet at a glance (versions day by day, success per release,
//!   devices not seen) for the dashboard.
//! - [`metrics`]: `/metrics` (Prometheus), `/healthz`, `/readyz`, and the middleware that
//!   times every request.

pub mod admin_api;
pub mod app;
pub mod attestation;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod blobs;
pub mod caches;
pub mod campaigns;
pub mod checkin;
pub mod config;
pub mod dashboard;
pub mod dashboard_actions;
pub mod db;
pub mod ddi;
pub mod deployments;
pub mod device_api;
pub mod device_reader;
pub mod devices;
pub mod dry_run;
pub mod error;
pub mod gates;
pub mod http;
pub mod json;
pub mod local;
pub mod metrics;
pub mod overview;
pub mod plan;
pub mod policy;
pub mod reboot_leases;
pub mod releases;
pub mod reports;
pub mod state_writer;
pub mod tls;
pub mod transitions;
pub mod users;
