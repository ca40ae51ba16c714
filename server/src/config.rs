//! How a server is run: what `cairn-server serve` takes on its command line (and the
//! tests and `LocalServer` set directly). Everything else lives in the database.

use std::path::PathBuf;
use std::time::Duration;

use cairn_bundle::TrustRoot;

pub use crate::tls::TlsFiles;

/// How a server is run; everything else lives in the database.
#[derive(Debug, Clone)]
pub struct Config {
    pub blobs: PathBuf,
    pub root: Option<TrustRoot>,
    /// Overrides the admin token kept in the database.
    pub admin_token: Option<String>,
    /// The base URL devices reach this server at (for bundle URLs); defaults to
    /// `https://<listen address>` with TLS, `http://<listen address>` without.
    pub public_url: Option<String>,
    pub poll_interval_secs: u64,
    /// How often running campaigns' gates are evaluated besides after each final report.
    pub evaluate_every: Duration,
    /// The CA (PEM or DER) that must have issued a device's TPM EK certificate; `None`
    /// accepts any EK (the MakeCredential challenge still binds the AK to it).
    pub ek_ca: Option<Vec<u8>>,
    /// Serve HTTPS with this certificate and key; `None` serves plain HTTP, which only
    /// a development setup should do (the server says so loudly at start-up).
    pub tls: Option<TlsFiles>,
    /// Bounds on enrollments of unknown ids (`429 enrollment-limit` beyond them).
    pub enroll_limits: crate::devices::EnrollLimits,
    /// The hawkBit tenant DDI clients name in their URLs (compared without case).
    pub ddi_tenant: String,
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
            tls: None,
            enroll_limits: Default::default(),
            ddi_tenant: "DEFAULT".into(),
        }
    }
}
