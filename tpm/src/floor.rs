//! The anti-rollback security floor in TPM NV.
//!
//! # Design
//! Two NV indices:
//! - [`FLOOR_COUNTER_NV_INDEX`] (0x0100CA10), a `TPM_NT_COUNTER`: the TPM only ever
//!   increments it (TPM2_NV_Increment); no command lowers or rewrites it. It starts at an
//!   arbitrary value (the TPM initialises a new counter at or above any count it ever held).
//!   Incremented and read with its own (empty) auth value: anyone may raise the floor,
//!   nobody may lower it.
//! - [`FLOOR_BASE_NV_INDEX`] (0x0100CA11), an ordinary 8-byte index written exactly once:
//!   its only write authorisation is the policy `TPM2_PolicyNvWritten(NO)`, which the TPM
//!   refuses once the index has been written. Provisioning stores the counter's starting
//!   value there.
//!
//! The floor is `counter - base`. Raising it to `n` increments the counter
//! `n - floor` times; each increment is atomic, so a power cut mid-raise leaves a floor
//! between the old and the new value, never below the old one, and retrying finishes the
//! job. Provisioning (define counter, first increment, define base, write base) resumes
//! wherever a power cut stopped it; until the base is written the floor reads 0, and it
//! can only have been raised after the base was written, so that is exact.
//!
//! # Why nobody can delete it: platform-created, policy-delete indices
//! Deleting both indices would return the floor to 0 ("never provisioned"). So, whenever
//! the platform hierarchy is open at provisioning (swtpm; U-Boot boards, whose firmware
//! leaves it open; a factory step before firmware closes it), both are defined by the
//! platform with `TPMA_NV_PLATFORMCREATE | TPMA_NV_POLICY_DELETE` and the authPolicy
//! `PolicyNvWritten(NO)`. The TPM then refuses TPM2_NV_UndefineSpace for them with any
//! authorisation, owner or platform (TPM_RC_ATTRIBUTES); the only way left,
//! TPM2_NV_UndefineSpaceSpecial, needs that policy, which no session can satisfy once the
//! index was written; and TPM2_Clear removes owner indices only. The result is
//! [`FloorProtection::Undeletable`].
//!
//! Platform-created indices cannot be opened while `phEnableNV` is clear (someone with
//! platform authorisation can clear it until the next TPM reset). The floor then refuses to
//! read or raise ([`TpmError::FloorUnavailable`]) instead of answering "never provisioned";
//! firmware that clears phEnableNV for good leaves a device without a TPM floor.
//!
//! Where the platform hierarchy is already closed (UEFI firmware closes it or randomises
//! its password before the OS starts), the indices are owner-created instead
//! ([`FloorProtection::OwnerDeletable`]): anyone with owner authorisation (empty on a
//! fresh TPM) can delete them, and TPM2_Clear does. SECURITY.md says what that leaves open.
//!
//! # Why wiping the data partition cannot lower it
//! Nothing of the floor lives on disk: both values are inside the TPM, the counter only
//! moves up, and the base can be written once. Wiping, restoring or forging the data
//! partition (or reinstalling the whole disk) leaves the TPM's NV as it was, so the next
//! read gives the same floor, and an old bundle is still refused.
//!
//! # Limits
//! - If only one index is deleted (or unwritten), or the counter reads below the base,
//!   reads fail with [`TpmError::FloorTampered`] instead of returning 0; a deleted base
//!   alone reads as 0, because it is indistinguishable from a power cut during
//!   provisioning (only possible for owner-created indices).
//! - One raise moves the floor by at most [`MAX_FLOOR_STEP`] (each step is an NV write;
//!   security versions are meant to be small, consecutive integers).
//! - The floor is at most `u64::MAX - base`; in practice unbounded.

use tss_esapi::attributes::{NvIndexAttributes, NvIndexAttributesBuilder};
use tss_esapi::constants::{NvIndexType, SessionType};
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::{Digest, MaxNvBuffer, NvPublic};

use crate::error::{Op, TpmError};
use crate::Tpm;

/// NV index of the floor's monotonic counter (`TPM_NT_COUNTER`).
pub const FLOOR_COUNTER_NV_INDEX: u32 = 0x0100_CA10;
/// NV index of the floor's write-once base (8 bytes, big-endian).
pub const FLOOR_BASE_NV_INDEX: u32 = 0x0100_CA11;
/// The most one `raise_security_floor` call moves the floor.
pub const MAX_FLOOR_STEP: u64 = 1024;

/// Who could delete the floor's NV indices, and so return the floor to 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorProtection {
    /// Not provisioned yet (the floor is 0).
    Unprovisioned,
    /// Platform-created with a delete policy that can no longer be satisfied: no
    /// authorisation deletes them, and TPM2_Clear leaves them.
    Undeletable,
    /// Owner-created (the platform hierarchy was closed at provisioning): owner
    /// authorisation deletes them, and so does TPM2_Clear.
    OwnerDeletable,
}

impl std::fmt::Display for FloorProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloorProtection::Unprovisioned => "unprovisioned",
            FloorProtection::Undeletable => "undeletable",
            FloorProtection::OwnerDeletable => "owner-deletable",
        })
    }
}

impl Tpm {
    /// The device's security floor: 0 when never provisioned.
    pub fn security_floor(&mut self) -> Result<u64, TpmError> {
        self.require_platform_nv()?;
        let counter = self.nv_public(FLOOR_COUNTER_NV_INDEX)?;
        let base = self.nv_public(FLOOR_BASE_NV_INDEX)?;
        if !is_written(&base) {
            return Ok(0);
        }
        if !is_written(&counter) {
            return Err(TpmError::FloorTampered(
                "the base is written but the counter is missing or unwritten".into(),
            ));
        }
        self.floor_from_nv()
    }

    /// How well the floor's indices resist deletion (see the module docs).
    pub fn floor_protection(&mut self) -> Result<FloorProtection, TpmError> {
        self.require_platform_nv()?;
        let counter = self.nv_public(FLOOR_COUNTER_NV_INDEX)?;
        let base = self.nv_public(FLOOR_BASE_NV_INDEX)?;
        Ok(match (&counter, &base) {
            (None, None) => FloorProtection::Unprovisioned,
            (Some(c), Some(b)) if undeletable(c) && undeletable(b) => FloorProtection::Undeletable,
            _ => FloorProtection::OwnerDeletable,
        })
    }

    /// Raises the floor to `to`; a no-op if it is already `to` or higher (never lowers).
    /// Provisions the NV indices on first use. Returns the floor afterwards.
    pub fn raise_security_floor(&mut self, to: u64) -> Result<u64, TpmError> {
        self.provision_floor()?;
        let floor = self.floor_from_nv()?;
        if floor >= to {
            return Ok(floor);
        }
        if to - floor > MAX_FLOOR_STEP {
            return Err(TpmError::FloorStepTooLarge {
                from: floor,
                to,
                max: MAX_FLOOR_STEP,
            });
        }
        for _ in floor..to {
            self.increment_counter("increment floor counter")?;
        }
        self.floor_from_nv()
    }

    fn floor_from_nv(&mut self) -> Result<u64, TpmError> {
        let counter = self.nv_read_u64(FLOOR_COUNTER_NV_INDEX)?;
        let base = self.nv_read_u64(FLOOR_BASE_NV_INDEX)?;
        counter.checked_sub(base).ok_or_else(|| {
            TpmError::FloorTampered(format!("counter {counter} is below base {base}"))
        })
    }

    /// With phEnableNV clear, platform-created indices cannot be opened (TPM_RC_HANDLE):
    /// "not there" may then mean "hidden", so nothing is read. Only someone with platform
    /// authorisation (or the firmware) can clear it, and only until the next TPM reset.
    fn require_platform_nv(&mut self) -> Result<(), TpmError> {
        if self.platform_hierarchy()?.nv_enabled {
            Ok(())
        } else {
            Err(TpmError::FloorUnavailable(
                "the platform NV hierarchy is disabled (phEnableNV clear), which hides \
                 platform-created floor indices until the next TPM reset"
                    .into(),
            ))
        }
    }

    /// Brings both indices to "defined and written", from whatever step a power cut left.
    fn provision_floor(&mut self) -> Result<(), TpmError> {
        self.require_platform_nv()?;
        let counter = self.nv_public(FLOOR_COUNTER_NV_INDEX)?;
        let base = self.nv_public(FLOOR_BASE_NV_INDEX)?;
        if is_written(&base) {
            if !is_written(&counter) {
                return Err(TpmError::FloorTampered(
                    "the base is written but the counter is missing or unwritten".into(),
                ));
            }
            return Ok(());
        }
        // The base goes into the hierarchy the counter went into.
        let hierarchy = match &counter {
            Some(c) if c.attributes().platform_create() => Provision::Platform,
            Some(_) => Provision::Owner,
            None => self.define_counter()?,
        };
        if !is_written(&counter) {
            // A counter has no value until its first increment.
            self.increment_counter("initialise floor counter")?;
        }
        if base.is_none() {
            let attributes = NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Ordinary)
                .with_policy_write(true)
                .with_write_all(true)
                .with_auth_read(true)
                .with_no_da(true);
            let attributes = undeletable_if_platform(attributes, hierarchy)?;
            let policy = self.unwritten_policy_digest()?;
            self.nv_define(hierarchy, FLOOR_BASE_NV_INDEX, attributes, policy)?;
        }
        // The base is unwritten here, so the floor was never raised: base = counter now.
        let start = self.nv_read_u64(FLOOR_COUNTER_NV_INDEX)?;
        let data = MaxNvBuffer::try_from(start.to_be_bytes().to_vec()).op("base bytes")?;
        let session = self.unwritten_policy_session(SessionType::Policy)?;
        let written = self.with_nv(FLOOR_BASE_NV_INDEX, |ctx, nv| {
            ctx.execute_with_session(Some(session), |ctx| {
                ctx.nv_write(NvAuth::NvIndex(nv), nv, data, 0)
            })
            .op("write floor base")
        });
        let flushed = self.flush_session(session);
        written?;
        flushed
    }

    /// Defines the counter, by the platform when its hierarchy is usable, else by the
    /// owner. Returns the hierarchy used.
    fn define_counter(&mut self) -> Result<Provision, TpmError> {
        let attributes = || {
            NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Counter)
                .with_auth_write(true)
                .with_auth_read(true)
                .with_no_da(true)
        };
        if self.platform_hierarchy()?.enabled {
            let policy = self.unwritten_policy_digest()?;
            let platform = undeletable_if_platform(attributes(), Provision::Platform)?;
            match self.nv_define(
                Provision::Platform,
                FLOOR_COUNTER_NV_INDEX,
                platform,
                policy,
            ) {
                Ok(()) => return Ok(Provision::Platform),
                // Enabled but with a password we do not have (firmware randomised it).
                Err(e) => tracing::warn!(
                    "cannot define the floor in the platform hierarchy ({e}); \
                     defining it owner-deletable"
                ),
            }
        } else {
            tracing::warn!(
                "the TPM's platform hierarchy is closed: the security floor is defined \
                 owner-deletable"
            );
        }
        let owner = attributes().build().op("counter attributes")?;
        self.nv_define(
            Provision::Owner,
            FLOOR_COUNTER_NV_INDEX,
            owner,
            Digest::default(),
        )?;
        Ok(Provision::Owner)
    }

    /// One TPM2_NV_Increment, authorised the way the counter was defined (owner-write
    /// counters from before platform provisioning existed, else the index's own auth).
    fn increment_counter(&mut self, op: &'static str) -> Result<(), TpmError> {
        let owner_write = self
            .nv_public(FLOOR_COUNTER_NV_INDEX)?
            .is_some_and(|p| p.attributes().owner_write());
        self.with_nv(FLOOR_COUNTER_NV_INDEX, |ctx, nv| {
            let auth = if owner_write {
                NvAuth::Owner
            } else {
                NvAuth::NvIndex(nv)
            };
            ctx.execute_with_nullauth_session(|ctx| ctx.nv_increment(auth, nv))
                .op(op)
        })
    }
}

/// Adds PLATFORMCREATE and POLICY_DELETE for platform-defined indices.
fn undeletable_if_platform(
    attributes: NvIndexAttributesBuilder,
    hierarchy: Provision,
) -> Result<NvIndexAttributes, TpmError> {
    let platform = hierarchy == Provision::Platform;
    attributes
        .with_platform_create(platform)
        .with_policy_delete(platform)
        .build()
        .op("NV attributes")
}

fn undeletable(public: &NvPublic) -> bool {
    let a = public.attributes();
    a.platform_create() && a.policy_delete() && a.written()
}

fn is_written(public: &Option<NvPublic>) -> bool {
    public.as_ref().is_some_and(|p| p.attributes().written())
}
