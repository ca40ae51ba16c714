//! The install pipeline: verify, choose payloads, stream them into the inactive slot,
//! and switch the bootloader to a one-shot trial, in the order INVARIANTS.md requires.

mod chunked;
mod http;
mod source;
mod spool;
mod target;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_boot::SlotArgs;
use cairn_bundle::{
    choose_payload, decode_payload, Choice, Chunked, Image, ImageKind, Manifest, Payload, Policy,
    Source, VerifiedBundle,
};
use time::OffsetDateTime;

use crate::attestation::AttestationError;
use crate::bootstate::{BootStateError, SlotId};
use crate::config::Target;
use crate::context::{Context, ContextError};
use crate::slot::SlotError;
use crate::state::store::StateError;
use crate::state::{ImageRecord, Refusal, SlotRecord};
use crate::transport::{Transport, TransportError};

pub use chunked::Outcome as ChunkedOutcome;
pub use http::HttpBundle;
pub use source::BundleSource;
pub use target::{SlotWriter, TargetError};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("bundle rejected: {0}")]
    Bundle(#[from] cairn_bundle::Error),
    #[error("download of {url} failed: {source}")]
    Download {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("install refused: {0}")]
    Refused(#[from] Refusal),
    #[error("bundle does not fit this device: {0}")]
    Mismatch(String),
    #[error("writing the slot: {0}")]
    Target(#[from] TargetError),
    #[error("boot state: {0}")]
    BootState(#[from] BootStateError),
    #[error("install cancelled; slot {0} stays unbootable")]
    Cancelled(SlotId),
    #[error("which slot is running: {0}")]
    Slot(#[from] SlotError),
    #[error("reading the bundle: {0}")]
    ReadBundle(#[source] io::Error),
    #[error("recording the container images to pre-load: {0}")]
    Preload(#[from] crate::containers::PreloadError),
    #[error("reading the security floor: {0}")]
    SecurityFloor(#[source] AttestationError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The trust root, or saving the device's state.
    #[error(transparent)]
    Device(#[from] ContextError),
}

impl From<StateError> for InstallError {
    fn from(e: StateError) -> InstallError {
        InstallError::Device(e.into())
    }
}

impl InstallError {
    /// Stopped by something outside the update itself (shutdown, network): worth trying
    /// again later, not a verdict on the bundle.
    pub fn is_interruption(&self) -> bool {
        matches!(self, Self::Cancelled(_) | Self::Download { .. })
    }

    pub(crate) fn download(url: &str) -> impl FnOnce(io::Error) -> InstallError + '_ {
        move |source| InstallError::Download {
            url: url.to_string(),
            source,
        }
    }
}

/// What an install reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Verified {
        version: String,
        images: usize,
    },
    Image {
        name: String,
        method: String,
        size: u64,
    },
    Bytes {
        name: String,
        done: u64,
        total: u64,
    },
    /// A chunked image was built: what it reused and what it fetched.
    Reused {
        name: String,
        outcome: chunked::Outcome,
    },
    ImageDone {
        name: String,
    },
    Armed {
        slot: SlotId,
    },
}

pub struct InstallRequest {
    /// A path or an http(s) URL.
    pub location: String,
    /// Install even a version that failed its trial before.
    pub force: bool,
    /// Server deployment this install belongs to.
    pub deployment: Option<String>,
}

/// The result: `slot` holds `version`, armed for one trial boot.
#[derive(Debug, Clone)]
pub struct Installed {
    pub slot: SlotId,
    pub version: String,
}

/// Installs a bundle into the inactive slot. Holds no lock itself: callers hold the
/// install lock (see `Context::lock_install`).
pub fn install(
    ctx: &mut Context,
    request: &InstallRequest,
    cancel: Arc<AtomicBool>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Installed, InstallError> {
    let (source, verified, plan) = match prepare(ctx, request) {
        Ok(prepared) => prepared,
        Err(e) => {
            // Nothing was written. A bad bundle or a refusal is the deployment's verdict;
            // a network failure is not, and is tried again later.
            if !e.is_interruption() {
                let reason = e.to_string();
                let now = OffsetDateTime::now_utc();
                ctx.apply(None, |state| {
                    state.install_refused(now, request.deployment.clone(), None, &reason);
                    Ok(())
                })?;
            }
            return Err(e);
        }
    };
    progress(Progress::Verified {
        version: verified.manifest.version.to_string(),
        images: plan.len(),
    });
    write_and_arm(ctx, request, &source, &verified, &plan, cancel, progress)
}

type Prepared = (BundleSource, VerifiedBundle, Vec<Step>);

/// Everything before the first write: fetch and verify the metadata, check the device
/// may install this version, and plan a payload per image.
fn prepare(ctx: &Context, request: &InstallRequest) -> Result<Prepared, InstallError> {
    let facts = ctx.boot_facts()?;
    let target = facts.slot.other();
    let transport = Transport::for_server(ctx.config.server.as_ref())?;
    let (source, unverified) = BundleSource::open(&request.location, &transport)?;
    let root = ctx.trust_root()?;
    // The TPM's NV floor counts too: a wiped data partition must not reopen old versions.
    let security_floor = crate::attestation::effective_floor(&ctx.config, ctx.state.security_floor)
        .map_err(InstallError::SecurityFloor)?;
    let policy = Policy {
        compatible: Some(ctx.config.compatible.clone()),
        security_floor,
        // Never a time below the clock floor: setting the clock back revives nothing.
        now: ctx.clock().trusted_now(),
    };
    let verified = unverified.verify(&root, &policy)?;
    let version = verified.manifest.version.to_string();
    ctx.state.check_can_install(&version, request.force)?;
    let plan = plan(ctx, &verified.manifest, facts.slot, target)?;
    let payloads: Vec<(&str, &Payload)> = plan
        .iter()
        .flat_map(|step| {
            let name = step.image.name.as_str();
            match &step.how {
                How::Stream { payload, .. } => vec![(name, payload)],
                How::Chunked { chunked, .. } => vec![(name, &chunked.index), (name, &chunked.data)],
            }
        })
        .collect();
    source.precheck(&payloads)?;
    Ok((source, verified, plan))
}

/// The writing half: INVARIANTS.md 2 and 3, in order.
fn write_and_arm(
    ctx: &mut Context,
    request: &InstallRequest,
    source: &BundleSource,
    verified: &VerifiedBundle,
    plan: &[Step],
    cancel: Arc<AtomicBool>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Installed, InstallError> {
    let facts = ctx.boot_facts()?;
    let target = facts.slot.other();
    let version = verified.manifest.version.to_string();

    // INVARIANTS.md 2: the target is unbootable, on disk, before its first byte changes. The
    // boot state is read strictly here: writing a slot on a guessed state could hit the
    // one that boots.
    let mut boot = ctx.boot_store.load()?;
    boot.prepare_install(target);
    ctx.apply(Some(&boot), |state| {
        state.begin_install(
            OffsetDateTime::now_utc(),
            target,
            &version,
            &facts.boot_id,
            verified.manifest.security_version,
            request.deployment.clone(),
        );
        Ok(())
    })?;

    let written = write_images(ctx, source, verified, plan, target, &cancel, progress);
    let record = match written {
        Ok(record) => record,
        Err(e) => {
            let reason = e.to_string();
            let now = OffsetDateTime::now_utc();
            ctx.apply(None, |state| {
                if e.is_interruption() {
                    state.install_interrupted(now, Some(&version), &reason);
                } else {
                    state.install_failed(now, Some(&version), &reason);
                }
                Ok(())
            })?;
            return Err(e);
        }
    };

    // Before the slot may boot: what cairnd must import into containerd before the
    // reboot (a plan left by an earlier install goes).
    if let Err(e) =
        crate::containers::record_plan(&ctx.config.data_dir, &verified.manifest, &record, target)
    {
        let reason = e.to_string();
        ctx.apply(None, |state| {
            state.install_failed(OffsetDateTime::now_utc(), Some(&version), &reason);
            Ok(())
        })?;
        return Err(e.into());
    }

    // INVARIANTS.md 3: only now may the slot boot, once.
    let mut boot = ctx.boot_store.load()?;
    boot.arm_trial(target);
    // Only the roots that verified are kept, never everything the bundle carried.
    let rotation = &verified.rotation;
    let pending_root =
        (!rotation.is_empty()).then(|| serde_json::to_value(rotation).expect("roots serialise"));
    ctx.apply(Some(&boot), |state| {
        progress(Progress::Armed { slot: target });
        state.install_done(
            OffsetDateTime::now_utc(),
            target,
            record,
            &facts.boot_id,
            pending_root,
        );
        Ok(())
    })?;
    Ok(Installed {
        slot: target,
        version,
    })
}

/// Whether the error comes from a full disk (ENOSPC) anywhere in its chain.
fn is_disk_full(e: &InstallError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// One image's place in the plan: where it goes and what it is made from.
struct Step {
    image: Image,
    target: Target,
    how: How,
}

enum How {
    /// Decoded from one payload as it streams in.
    Stream {
        payload: Payload,
        /// The running slot's copy, when the payload is a delta.
        source: Option<Target>,
    },
    /// Built from the blocks the device holds, fetching the chunks it lacks.
    Chunked {
        chunked: Chunked,
        /// How much of the target to hash for blocks already in place.
        target_scan: u64,
        sources: Vec<chunked::LocalCopy>,
    },
}

/// Checks the bundle against this device's slots and picks a payload per image, before
/// anything is written.
fn plan(
    ctx: &Context,
    manifest: &Manifest,
    active: SlotId,
    target: SlotId,
) -> Result<Vec<Step>, InstallError> {
    let targets = &ctx.config.slot(target).images;
    let actives = &ctx.config.slot(active).images;
    let missing: Vec<&String> = targets
        .keys()
        .filter(|n| manifest.image(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(InstallError::Mismatch(format!(
            "bundle lacks image(s) {missing:?} that every slot needs"
        )));
    }
    let held = ctx.state.slot(active).images;
    let held_by_target = ctx.state.slot(target).images;
    let mut steps = Vec::new();
    for image in &manifest.images {
        let (dest, active_target) = match image.kind {
            // Container images go to the runtime's directory, a file per slot.
            ImageKind::OciArchive => {
                let Some(containers) = &ctx.config.containers else {
                    return Err(InstallError::Mismatch(format!(
                        "bundle carries container images '{}' and this device has no \
                         container runtime ([containers])",
                        image.name
                    )));
                };
                (
                    Target::File(containers.archive(target, &image.name)),
                    Target::File(containers.archive(active, &image.name)),
                )
            }
            ImageKind::Artifact => {
                return Err(InstallError::Mismatch(format!(
                    "bundle carries '{}', an artifact for a device with its own installer \
                     (hawkBit DDI): cairnd installs none",
                    image.name
                )));
            }
            ImageKind::Slot => {
                let Some(dest) = targets.get(&image.name) else {
                    return Err(InstallError::Mismatch(format!(
                        "this device has no place for image '{}'",
                        image.name
                    )));
                };
                let running = ctx
                    .running_copy(active, &actives[&image.name])
                    .map_err(|e| InstallError::Mismatch(format!("image '{}': {e}", image.name)))?;
                (dest.clone(), running)
            }
        };
        target::check_capacity(&dest, &image.name, image.size)?;
        let has = |s: &Source| holds_source(held.get(&image.name), &active_target, s);
        let how = match choose_payload(image, has)? {
            Choice::Delta(payload) => How::Stream {
                payload: payload.clone(),
                source: Some(active_target.clone()),
            },
            Choice::Full(payload) => How::Stream {
                payload: payload.clone(),
                source: None,
            },
            Choice::Chunked(c) => How::Chunked {
                chunked: c.clone(),
                // What an earlier image left in the target may hold blocks too.
                target_scan: held_by_target
                    .get(&image.name)
                    .map_or(image.size, |r| r.size.max(image.size)),
                sources: chunked::local_copies(
                    &dest,
                    &active_target,
                    held.get(&image.name).map(|r| r.size),
                )?,
            },
        };
        steps.push(Step {
            image: image.clone(),
            target: dest,
            how,
        });
    }
    Ok(steps)
}

/// Does the running slot hold the image `source` describes? Answered from cairnd's own
/// record when it has one, else by hashing the running copy.
fn holds_source(record: Option<&ImageRecord>, active: &Target, source: &Source) -> bool {
    if let Some(r) = record {
        return r.sha256 == source.sha256 && r.size == source.size;
    }
    let Ok(map) = target::map_source(active, source.size) else {
        return false;
    };
    cairn_bundle::sha256_reader(&mut io::Cursor::new(&map[..]))
        .is_ok_and(|(sha, _)| sha == source.sha256)
}

fn write_images(
    ctx: &Context,
    source: &BundleSource,
    verified: &VerifiedBundle,
    plan: &[Step],
    target: SlotId,
    cancel: &Arc<AtomicBool>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<SlotRecord, InstallError> {
    let mut images = BTreeMap::new();
    let spool = spool::Spool::new(&ctx.config.data_dir);
    let deltas: Vec<&Payload> = plan
        .iter()
        .filter_map(|step| match &step.how {
            How::Stream {
                payload,
                source: Some(_),
            } if payload.source.is_some() => Some(payload),
            _ => None,
        })
        .collect();
    if let Err(e) = spool.keep_only(&deltas) {
        tracing::warn!(error = %e, "cannot clean the spool of other bundles' deltas");
    }
    for step in plan {
        let result = match &step.how {
            How::Stream {
                payload,
                source: from,
            } => write_image(
                source,
                verified,
                step,
                payload,
                from.as_ref().map(|active| (active, &spool)),
                cancel,
                progress,
            ),
            How::Chunked {
                chunked,
                target_scan,
                sources,
            } => {
                progress(Progress::Image {
                    name: step.image.name.clone(),
                    method: chunked.data.method.clone(),
                    size: step.image.size,
                });
                chunked::install(
                    source,
                    &verified.header,
                    &step.image,
                    chunked,
                    &step.target,
                    *target_scan,
                    sources,
                    cancel,
                    progress,
                )
                .map(|outcome| {
                    let name = step.image.name.clone();
                    progress(Progress::Reused {
                        name: name.clone(),
                        outcome,
                    });
                    progress(Progress::ImageDone { name })
                })
            }
        };
        let result = result.map_err(|e| {
            if cancel.load(Ordering::Relaxed) {
                InstallError::Cancelled(target)
            } else {
                e
            }
        });
        let is_delta = matches!(
            &step.how,
            How::Stream {
                source: Some(_),
                ..
            }
        );
        if let (Err(InstallError::Bundle(cairn_bundle::Error::ImageHashMismatch { .. })), true) =
            (&result, is_delta)
        {
            // The running slot did not hold what its record said: the delta cannot work,
            // the full payload can.
            tracing::warn!(image = %step.image.name, "delta produced a wrong image; falling back to the full payload");
            write_image(
                source,
                verified,
                step,
                &step.image.full,
                None,
                cancel,
                progress,
            )
            .map_err(|e| {
                if cancel.load(Ordering::Relaxed) {
                    InstallError::Cancelled(target)
                } else {
                    e
                }
            })?;
        } else if step.image.kind == ImageKind::OciArchive
            && result.as_ref().is_err_and(is_disk_full)
        {
            // Container images are a convenience (nothing to pull after the reboot); the OS
            // update is not. With /data full (a workload filled it) the release installs
            // without them, and after the reboot they are pulled, or a declared workload's
            // check fails the trial.
            tracing::warn!(
                image = %step.image.name,
                "the data partition is full: container images not staged, not pre-loaded"
            );
            continue;
        } else {
            result?;
        }
        images.insert(
            step.image.name.clone(),
            ImageRecord {
                sha256: step.image.sha256.clone(),
                size: step.image.size,
            },
        );
    }
    spool.clear();
    if let Some(path) = &ctx.config.slot(target).slot_env {
        let manifest = &verified.manifest;
        let rootfs_verity = manifest.image("rootfs").and_then(|i| i.verity.as_ref());
        SlotArgs::new(rootfs_verity, &manifest.version.to_string())
            .write(path)
            .map_err(|source| TargetError::Io {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(SlotRecord {
        version: Some(verified.manifest.version.to_string()),
        security_version: verified.manifest.security_version,
        images,
    })
}

/// Streams `payload` into `step`'s target. A delta comes with the running slot's copy of
/// the image and the spool: over HTTP it is downloaded there first, so that an
/// interrupted download resumes (`spool.rs`).
fn write_image(
    source: &BundleSource,
    verified: &VerifiedBundle,
    step: &Step,
    payload: &Payload,
    delta: Option<(&Target, &spool::Spool)>,
    cancel: &Arc<AtomicBool>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), InstallError> {
    let image = &step.image;
    progress(Progress::Image {
        name: image.name.clone(),
        method: payload.method.clone(),
        size: image.size,
    });
    let spooled = match (delta, &payload.source) {
        (Some((_, spool)), Some(_)) => {
            spool.fetch(source, &verified.header, &image.name, payload, cancel)?
        }
        _ => None,
    };
    let delta_source = delta.map(|(active, _)| active);
    // The spool whose file this image reads, to remove it once the image is written.
    let spooled_in = delta.map(|(_, spool)| spool).filter(|_| spooled.is_some());
    let reader: Box<dyn io::Read + Send> = match spooled {
        Some(file) => Box::new(io::BufReader::with_capacity(256 << 10, file)),
        None => source.payload(&verified.header, payload)?,
    };
    let (name, total) = (image.name.clone(), image.size);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let on_write = Box::new(move |done: u64| {
        let _ = tx.send(done);
    });
    let writer = SlotWriter::open(&step.target, cancel.clone(), on_write)?;
    let map = match (delta_source, &payload.source) {
        (Some(active), Some(src)) => Some(target::map_source(active, src.size)?),
        _ => None,
    };
    let result = std::thread::scope(|scope| {
        let decoder = scope.spawn(|| -> Result<(), InstallError> {
            let out = io::BufWriter::with_capacity(cairn_bundle::COPY_BUF, writer);
            decode_payload(image, payload, reader, map.as_deref(), out)?
                .into_inner()
                .map_err(|e| TargetError::Io {
                    path: format!("slot image {}", image.name),
                    source: e.into_error(),
                })?
                .finish()?;
            Ok(())
        });
        // The sender lives in the writer, which the decoder thread drops when it ends
        // (also on error): the channel closing says the thread is done, at once.
        let mut last_reported = 0;
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(done) if done - last_reported >= 4 << 20 || done == total => {
                    progress(Progress::Bytes {
                        name: name.clone(),
                        done,
                        total,
                    });
                    last_reported = done;
                }
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if decoder.is_finished() => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        decoder.join().expect("decoder thread does not panic")
    });
    result?;
    if let Some(spool) = spooled_in {
        spool.remove(payload);
    }
    progress(Progress::ImageDone {
        name: image.name.clone(),
    });
    Ok(())
}
