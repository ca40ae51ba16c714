//! Pre-loading the next version's container images: a bundle's OCI archive images
//! (`ImageKind::OciArchive`, `cairn-image bundle create --oci`) are written into the slot
//! like any image (a file per slot on the data partition, so deltas apply to them), and
//! imported into containerd before the reboot into the release, so nothing has to be
//! pulled after it, online or offline.
//!
//! - Each archive is a file per slot, `<dir>/<slot>/<name>.tar` ([`ContainersConfig::archive`]):
//!   optional content of a release, unlike the slot images system.toml lists.
//! - The install records which images to import ([`record_plan`], in
//!   `<data_dir>/preload.json`, atomically, before the slot is armed).
//! - Before the reboot ([`preload`], called by cairnd before it asks for a reboot lease
//!   or drains), each archive is hashed through the descriptor that then feeds
//!   containerd's own importer (`ctr images import -`): an archive changed on the data
//!   partition after the install is refused, never imported. A failure postpones the
//!   reboot, retried with the reboot hooks' backoff (10 s doubling to 10 min), and is
//!   what `cairn status` and the check-in say the reboot waits for; the running version
//!   is never touched.
//!
//! Why `ctr` and not a gRPC client: it ships with containerd in the image, of the same
//! version, and owns the archive formats (OCI and Docker) and unpacking; a client crate
//! would re-implement the import on top of the content API.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_bundle::{ImageKind, Manifest};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bootstate::SlotId;
use crate::command::{self, CommandError};
use crate::context::Context;
use crate::reboot_hooks::Pending;
use crate::state::json_file::JsonFile;
use crate::state::{Phase, SlotRecord};

const PLAN_FILE: &str = "preload.json";

/// `[containers]` in system.toml: the container runtime a bundle's OCI archives go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// containerd's socket.
    pub socket: PathBuf,
    /// The containerd namespace; the CRI's (Kubernetes') is `k8s.io`.
    pub namespace: String,
    /// containerd's client, as argv words (`ctr`).
    pub ctr: Vec<String>,
    /// One archive's import is killed after this long.
    pub import_timeout_secs: u64,
    /// Where the archives are kept, a subdirectory per slot (on the data partition).
    pub dir: PathBuf,
}

impl ContainersConfig {
    /// Where the archive image `name` of `slot` is kept.
    pub fn archive(&self, slot: SlotId, name: &str) -> PathBuf {
        let slot = slot.to_string().to_lowercase();
        self.dir.join(slot).join(format!("{name}.tar"))
    }
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            socket: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            ctr: vec!["ctr".into()],
            import_timeout_secs: 900,
            dir: "/data/cairn/containers".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "container images {name} in {path} are not what was installed (sha256 {found}, \
         installed {expected}): not imported"
    )]
    Changed {
        name: String,
        path: String,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Import(#[from] CommandError),
}

/// `preload.json`: what the installed update needs imported, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreloadPlan {
    /// The update's version and the tries so far, as the reboot hooks keep theirs.
    #[serde(flatten)]
    pub tries: Pending,
    pub slot: SlotId,
    /// The OCI archive images of the release, as installed into `slot`.
    pub images: Vec<PlannedImage>,
    /// All of them are in containerd.
    #[serde(default)]
    pub imported: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedImage {
    pub name: String,
    pub sha256: String,
}

/// What [`preload`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preload {
    /// Imported (now or before), or nothing to import: the reboot may go on.
    Done,
    /// The last failure's backoff is not over.
    Waiting,
    /// The import failed just now; the reboot is postponed.
    Failed(String),
}

/// Called by the install before it arms `slot`: records the release's OCI archive images
/// that were written (`written`: the slot's record; an archive /data had no room for is
/// not in it) for [`preload`], or removes a plan left by an earlier install.
pub fn record_plan(
    data_dir: &Path,
    manifest: &Manifest,
    written: &SlotRecord,
    slot: SlotId,
) -> Result<(), PreloadError> {
    let images: Vec<PlannedImage> = manifest
        .images
        .iter()
        .filter(|i| i.kind == ImageKind::OciArchive && written.images.contains_key(&i.name))
        .map(|i| PlannedImage {
            name: i.name.clone(),
            sha256: i.sha256.clone(),
        })
        .collect();
    let file = plan_file(data_dir);
    let io = |source| PreloadError::Io {
        path: file.path().display().to_string(),
        source,
    };
    if images.is_empty() {
        return file.clear().map_err(io);
    }
    file.save(&PreloadPlan {
        tries: Pending::owed(&manifest.version.to_string()),
        slot,
        images,
        imported: false,
    })
    .map_err(io)
}

/// Before a reboot into the installed update: imports its container images into
/// containerd, once. `respect_backoff`: false for an operator's command, which tries now.
pub fn preload(
    ctx: &Context,
    now: OffsetDateTime,
    respect_backoff: bool,
) -> Result<Preload, PreloadError> {
    let Phase::InstalledPending { version, .. } = &ctx.state.phase else {
        return Ok(Preload::Done);
    };
    let file = plan_file(&ctx.config.data_dir);
    let save = |plan: &PreloadPlan| {
        file.save(plan).map_err(|source| PreloadError::Io {
            path: file.path().display().to_string(),
            source,
        })
    };
    let Some(mut plan) = file.load().filter(|p| p.tries.version == *version) else {
        return Ok(Preload::Done);
    };
    if plan.imported {
        return Ok(Preload::Done);
    }
    if respect_backoff && plan.tries.wait_left(now) > 0 {
        return Ok(Preload::Waiting);
    }
    let config = ctx.config.containers.clone().unwrap_or_default();
    match import_all(&config, &plan) {
        Ok(()) => {
            tracing::info!(%version, images = plan.images.len(), "container images pre-loaded");
            plan.imported = true;
            plan.tries.last_error = None;
            plan.tries.next_try = None;
            save(&plan)?;
            Ok(Preload::Done)
        }
        Err(e) => {
            plan.tries.failed(e.to_string(), now);
            tracing::warn!(
                %version,
                attempt = plan.tries.attempts,
                retry_in_secs = plan.tries.wait_left(now),
                output = match &e {
                    PreloadError::Import(c) => c.output(),
                    _ => "",
                },
                "reboot postponed, waiting for container preload: {e}"
            );
            save(&plan)?;
            Ok(Preload::Failed(e.to_string()))
        }
    }
}

fn import_all(config: &ContainersConfig, plan: &PreloadPlan) -> Result<(), PreloadError> {
    for image in &plan.images {
        let path = config.archive(plan.slot, &image.name);
        import(config, &image.name, &path, &image.sha256)?;
    }
    Ok(())
}

/// Hashes the archive through the descriptor that then becomes the importer's stdin.
fn import(
    config: &ContainersConfig,
    name: &str,
    path: &Path,
    sha256: &str,
) -> Result<(), PreloadError> {
    let io = |source| PreloadError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let (found, _) = cairn_bundle::sha256_reader(&mut file).map_err(io)?;
    if found != sha256 {
        return Err(PreloadError::Changed {
            name: name.to_string(),
            path: path.display().to_string(),
            found,
            expected: sha256.to_string(),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut argv = config.ctr.clone();
    argv.extend([
        "--address".into(),
        config.socket.display().to_string(),
        "--namespace".into(),
        config.namespace.clone(),
        "images".into(),
        "import".into(),
        "-".into(),
    ]);
    tracing::info!(image = name, "importing container images into containerd");
    command::run(command::Run {
        what: "container import",
        argv: &argv,
        timeout: Duration::from_secs(config.import_timeout_secs.max(1)),
        env: &[],
        stdin: Some(file),
    })?;
    Ok(())
}

/// Why the reboot waits for the container preload, if it does: the line for `cairn
/// status` and check-ins.
pub fn waiting_reason(ctx: &Context) -> Option<String> {
    let Phase::InstalledPending { version, .. } = &ctx.state.phase else {
        return None;
    };
    let plan = plan_file(&ctx.config.data_dir)
        .load()
        .filter(|p| p.tries.version == *version && !p.imported)?;
    let now = OffsetDateTime::now_utc();
    Some(match &plan.tries.last_error {
        None => format!(
            "waiting for container preload: {} archive(s) not imported yet",
            plan.images.len()
        ),
        Some(e) => format!(
            "waiting for container preload: {e} (attempt {}, next try in {}s)",
            plan.tries.attempts,
            plan.tries.wait_left(now)
        ),
    })
}

/// `<data_dir>/preload.json`.
fn plan_file(data_dir: &Path) -> JsonFile<PreloadPlan> {
    JsonFile::new(data_dir.join(PLAN_FILE))
}
