//! Everything an operation needs: the config, the boot-state store, cairnd's state and
//! where it persists. Built once per process.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use cairn_boot::{images, layout, SlotImages};
use cairn_bundle::{SignedRoot, TrustRoot};

use crate::bootstate::{
    BootState, BootStateError, BootStateStore, EfiEntryStore, FileStore, SlotId, UbootEnvStore,
};
use crate::config::{BootloaderConfig, SystemConfig, Target};
use crate::fleet::server_override::OverrideOutcome;
use crate::slot::{boot_facts, BootFacts, SlotError};
use crate::state::{DeviceState, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Slot(#[from] SlotError),
    #[error("{0}")]
    BootState(#[from] BootStateError),
    #[error("{0}")]
    State(#[from] crate::state::store::StateError),
    #[error("trust root: {0}")]
    Trust(#[from] cairn_bundle::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another install or state change is running (lock {0} is held)")]
    Busy(String),
}

pub struct Context {
    pub config: SystemConfig,
    pub boot_store: Box<dyn BootStateStore>,
    pub state_store: StateStore,
    pub state: DeviceState,
    /// Whether a signed server override replaced `config.server` (applied at open).
    pub server_override: OverrideOutcome,
}

/// Held while an install or a state change runs; released on drop (also on kill -9,
/// since the kernel drops the lock with the process).
pub struct InstallLock {
    _file: File,
}

impl Context {
    pub fn open(config_path: &Path) -> Result<Context, ContextError> {
        let config = SystemConfig::load(config_path)?;
        let boot_store: Box<dyn BootStateStore> = match &config.bootloader {
            BootloaderConfig::UbootEnv { dir } => Box::new(UbootEnvStore::new(dir)),
            BootloaderConfig::Efi { esp } => Box::new(EfiEntryStore::new(esp)),
            BootloaderConfig::File { dir } => Box::new(FileStore::new(dir)),
        };
        let state_store = StateStore::new(&config.data_dir);
        let state = match state_store.load()? {
            Some(state) => state,
            None => {
                let booted = boot_facts(&config).map(|f| f.slot).unwrap_or(SlotId::A);
                let mut state = DeviceState::first_boot(booted, installed_version(&config));
                if let Some(record) = state.slots.get_mut(&booted) {
                    record.images = factory_images(&config, booted);
                }
                state
            }
        };
        let mut ctx = Context {
            config,
            boot_store,
            state_store,
            state,
            server_override: OverrideOutcome::Absent,
        };
        ctx.server_override = crate::fleet::server_override::apply(&mut ctx);
        Ok(ctx)
    }

    pub fn boot_facts(&self) -> Result<BootFacts, SlotError> {
        boot_facts(&self.config)
    }

    /// The boot state, or the factory default when no copy is valid (a freshly flashed
    /// device whose bootloader has not written one yet).
    pub fn boot_state(&self) -> Result<BootState, BootStateError> {
        match self.boot_store.load() {
            Ok(state) => Ok(state),
            Err(BootStateError::NoValidCopy(why)) => {
                tracing::warn!(%why, "no valid boot state; assuming factory state");
                Ok(BootState::factory())
            }
            Err(e) => Err(e),
        }
    }

    /// Where the running copy of one of `slot`'s images is, for a delta to apply to: its
    /// target, except for a UKI on the `efi` backend, whose staged file became the slot's
    /// systemd-boot entry (docs/UEFI.md) and is found under that name.
    pub fn running_copy(&self, slot: SlotId, target: &Target) -> Result<Target, BootStateError> {
        if let (BootloaderConfig::Efi { esp }, Target::File(path)) =
            (&self.config.bootloader, target)
        {
            let store = EfiEntryStore::new(esp);
            if *path == store.staged_path(slot) {
                if let Some(entry) = store.entry_path(slot)? {
                    return Ok(Target::File(entry));
                }
            }
        }
        Ok(target.clone())
    }

    pub fn save_state(&self) -> Result<(), crate::state::store::StateError> {
        self.state_store.save(&self.state)
    }

    /// The one way cairnd changes state: `boot`, when given, is stored first (fsynced; it
    /// is what the bootloader acts on), then `change` updates cairnd's own record, which is
    /// saved last. A power cut between the two leaves the boot state ahead of the record,
    /// and `reconcile` completes the step on the next start; the other order could leave a
    /// record claiming what the bootloader never heard. `change` is not called when the
    /// boot state could not be stored.
    pub fn apply<T>(
        &mut self,
        boot: Option<&BootState>,
        change: impl FnOnce(&mut DeviceState) -> Result<T, ContextError>,
    ) -> Result<T, ContextError> {
        if let Some(boot) = boot {
            self.boot_store.store(boot)?;
        }
        let result = change(&mut self.state)?;
        self.save_state()?;
        Ok(result)
    }

    /// Takes the install lock, or says who holds it. A second install while one runs is
    /// refused rather than queued.
    pub fn lock_install(&self) -> Result<InstallLock, ContextError> {
        let dir = &self.config.data_dir;
        let io = |source| ContextError::Io {
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("install.lock");
        let file = File::create(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(InstallLock { _file: file }),
            Err(_) => Err(ContextError::Busy(path.display().to_string())),
        }
    }

    /// The shipped trust root, walked forward through the roots committed since.
    pub fn trust_root(&self) -> Result<TrustRoot, ContextError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| ContextError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let anchor = TrustRoot::from_json(&read(&self.config.trust_root)?)?;
        let committed = self.committed_roots_path();
        let chain: Vec<SignedRoot> = match fs::read(&committed) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Ok(anchor.walk_forward(&chain, self.clock().trusted_now())?)
    }

    /// The device's clock: floor, server time, NTP ([`crate::clock`]).
    pub fn clock(&self) -> crate::clock::Clock {
        crate::clock::Clock::new(&self.config.clock, &self.config.data_dir)
    }

    pub fn committed_roots_path(&self) -> PathBuf {
        self.config.data_dir.join("roots.json")
    }
}

/// Adds the roots a committed bundle carried to the chain the device trusts (the file at
/// [`Context::committed_roots_path`]).
pub fn commit_roots(path: &Path, roots: serde_json::Value) -> Result<(), ContextError> {
    let mut chain: Vec<SignedRoot> = fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let new: Vec<SignedRoot> = serde_json::from_value(roots).unwrap_or_default();
    for root in new {
        if !chain
            .iter()
            .any(|r| r.signed.version == root.signed.version)
        {
            chain.push(root);
        }
    }
    let bytes = serde_json::to_vec_pretty(&chain).expect("roots serialise");
    crate::state::reserve::write(path, &bytes).map_err(|source| ContextError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// What the image builder recorded of a factory slot's images (`images.json` next to the
/// slot's `slot.env`, or in the slot's directory on the ESP), limited to the images this device's slots have. Only steers which
/// delta the server plans and the device picks: a wrong record makes a delta's decoded
/// image fail its manifest hash, never trusts wrong bytes. Empty when absent or unreadable.
fn factory_images(config: &SystemConfig, slot: SlotId) -> SlotImages {
    let slot_config = config.slot(slot);
    // Beside the slot's slot.env; on the UEFI path, which has none, in the slot's
    // directory on the ESP (the boot partition there).
    let path = match (&slot_config.slot_env, &config.bootloader) {
        (Some(slot_env), _) => slot_env.with_file_name(layout::IMAGES_JSON),
        (None, BootloaderConfig::Efi { esp }) => {
            esp.join(layout::slot_dir(slot)).join(layout::IMAGES_JSON)
        }
        (None, _) => return SlotImages::new(),
    };
    let Ok(bytes) = fs::read(&path) else {
        return SlotImages::new();
    };
    let mut images = match images::from_json(&bytes) {
        Ok(images) => images,
        Err(e) => {
            tracing::warn!(path = %path.display(), "factory image record ignored: {e}");
            return SlotImages::new();
        }
    };
    images.retain(|name, _| slot_config.images.contains_key(name));
    images
}

impl Context {
    /// The version of the image this process runs from, if known.
    pub fn image_version(&self) -> Option<String> {
        installed_version(&self.config)
    }
}

/// The version of the image this process runs from (`/etc/cairn/version`, written by
/// the image builder), if known.
fn installed_version(config: &SystemConfig) -> Option<String> {
    let path = config.trust_root.with_file_name("version");
    fs::read_to_string(path).ok().map(|v| v.trim().to_string())
}
