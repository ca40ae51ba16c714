//! The anti-rollback security floor in TPM NV.
//!
//! # Design
//! Two owner-range NV indices:
//! - [`FLOOR_COUNTER_NV_INDEX`] (0x0100CA10), a `TPM_NT_COUNTER`: the TPM only ever
//!   increments it (TPM2_NV_Increment); no command lowers or rewrites it. It starts at an
//!   arbitrary value (the TPM initialises a new counter at or above any count it ever held).
//!   Written with owner authorisation, read with its (empty) auth value.
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
//! # Why wiping the data partition cannot lower it
//! Nothing of the floor lives on disk: both values are inside the TPM, the counter only
//! moves up, and the base can be written once. Wiping, restoring or forging the data
//! partition (or reinstalling the whole disk) leaves the TPM's NV as it was, so the next
//! read gives the same floor, and an old bundle is still refused.
//!
//! # Limits
//! - An attacker holding *owner authorisation* can undefine both indices
//!   (TPM2_NV_UndefineSpace) and so return the floor to 0 ("never provisioned"). Owner
//!   indices cannot carry TPMA_NV_POLICY_DELETE (that needs the platform hierarchy). swtpm
//!   and a fresh TPM have an empty owner password; a production device must set one (and
//!   then hand it to cairnd) for the floor to resist a root attacker. If only one index is
//!   deleted (or unwritten), or the counter reads below the base, reads fail with
//!   [`crate::TpmError::FloorTampered`] instead of returning 0;
//!   a deleted base alone reads as 0, because it is indistinguishable from a power cut
//!   during provisioning.
//! - One raise moves the floor by at most [`MAX_FLOOR_STEP`] (each step is an NV write;
//!   security versions are meant to be small, consecutive integers).
//! - The floor is at most `u64::MAX - base`; in practice unbounded.

use tss_esapi::attributes::{NvIndexAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, NvIndexType, SessionType};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, MaxNvBuffer, NvPublic, NvPublicBuilder, SymmetricDefinition,
};
use tss_esapi::Context;

use crate::error::{Op, TpmError};
use crate::Tpm;

/// NV index of the floor's monotonic counter (`TPM_NT_COUNTER`, owner range).
pub const FLOOR_COUNTER_NV_INDEX: u32 = 0x0100_CA10;
/// NV index of the floor's write-once base (8 bytes, big-endian, owner range).
pub const FLOOR_BASE_NV_INDEX: u32 = 0x0100_CA11;
/// The most one `raise_security_floor` call moves the floor.
pub const MAX_FLOOR_STEP: u64 = 1024;

impl Tpm {
    /// The device's security floor: 0 when never provisioned.
    pub fn security_floor(&mut self) -> Result<u64, TpmError> {
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
            self.with_nv(FLOOR_COUNTER_NV_INDEX, |ctx, nv| {
                ctx.execute_with_nullauth_session(|ctx| ctx.nv_increment(NvAuth::Owner, nv))
                    .op("increment floor counter")
            })?;
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

    /// Brings both indices to "defined and written", from whatever step a power cut left.
    fn provision_floor(&mut self) -> Result<(), TpmError> {
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
        if counter.is_none() {
            let attributes = NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Counter)
                .with_owner_write(true)
                .with_auth_read(true)
                .with_no_da(true)
                .build()
                .op("counter attributes")?;
            self.define_nv(FLOOR_COUNTER_NV_INDEX, attributes, Digest::default())?;
        }
        if !is_written(&counter) {
            // A counter has no value until its first increment.
            self.with_nv(FLOOR_COUNTER_NV_INDEX, |ctx, nv| {
                ctx.execute_with_nullauth_session(|ctx| ctx.nv_increment(NvAuth::Owner, nv))
                    .op("initialise floor counter")
            })?;
        }
        if base.is_none() {
            let attributes = NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Ordinary)
                .with_policy_write(true)
                .with_write_all(true)
                .with_auth_read(true)
                .with_no_da(true)
                .build()
                .op("base attributes")?;
            let policy = self.write_once_policy_digest()?;
            self.define_nv(FLOOR_BASE_NV_INDEX, attributes, policy)?;
        }
        // The base is unwritten here, so the floor was never raised: base = counter now.
        let start = self.nv_read_u64(FLOOR_COUNTER_NV_INDEX)?;
        let data = MaxNvBuffer::try_from(start.to_be_bytes().to_vec()).op("base bytes")?;
        let session = self.write_once_policy_session(SessionType::Policy)?;
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

    fn define_nv(
        &mut self,
        index: u32,
        attributes: tss_esapi::attributes::NvIndexAttributes,
        policy: Digest,
    ) -> Result<(), TpmError> {
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(index).op("NV index handle")?)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_index_auth_policy(policy)
            .with_data_area_size(8)
            .build()
            .op("NV public")?;
        let handle = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.nv_define_space(Provision::Owner, None, public)
            })
            .op("define NV index")?;
        self.ctx.tr_close(&mut handle.into()).op("close NV handle")
    }

    /// The authPolicy of the base index: PolicyNvWritten(NO), from a trial session.
    fn write_once_policy_digest(&mut self) -> Result<Digest, TpmError> {
        let session = self.write_once_policy_session(SessionType::Trial)?;
        let digest = PolicySession::try_from(session)
            .and_then(|policy| self.ctx.policy_get_digest(policy))
            .op("policy digest");
        let flushed = self.flush_session(session);
        let digest = digest?;
        flushed?;
        Ok(digest)
    }

    /// A policy (or trial) session with PolicyNvWritten(NO) applied.
    fn write_once_policy_session(&mut self, kind: SessionType) -> Result<AuthSession, TpmError> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .op("start policy session")?
            .ok_or_else(|| TpmError::invalid("policy session", "TPM returned no session"))?;
        let (attributes, mask) = SessionAttributesBuilder::new().build();
        let applied = self
            .ctx
            .tr_sess_set_attributes(session, attributes, mask)
            .and_then(|()| PolicySession::try_from(session))
            .and_then(|policy| self.ctx.policy_nv_written(policy, false))
            .op("PolicyNvWritten");
        if let Err(e) = applied {
            let _ = self.flush_session(session);
            return Err(e);
        }
        Ok(session)
    }

    fn flush_session(&mut self, session: AuthSession) -> Result<(), TpmError> {
        self.ctx
            .flush_context(SessionHandle::from(session).into())
            .op("flush session")
    }

    /// Whether an NV index is defined (without opening it).
    pub(crate) fn nv_index_defined(&mut self, index: u32) -> Result<bool, TpmError> {
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::Handles, index, 1)
            .op("list NV indices")?;
        Ok(match data {
            CapabilityData::Handles(handles) => handles.iter().any(|h| u32::from(*h) == index),
            _ => false,
        })
    }

    /// The index's public area, or `None` if it is not defined.
    fn nv_public(&mut self, index: u32) -> Result<Option<NvPublic>, TpmError> {
        if !self.nv_index_defined(index)? {
            return Ok(None);
        }
        self.with_nv(index, |ctx, nv| {
            let (public, _) = ctx
                .execute_without_session(|ctx| ctx.nv_read_public(nv))
                .op("read NV public")?;
            Ok(Some(public))
        })
    }

    fn nv_read_u64(&mut self, index: u32) -> Result<u64, TpmError> {
        let bytes = self.with_nv(index, |ctx, nv| {
            ctx.execute_with_nullauth_session(|ctx| ctx.nv_read(NvAuth::NvIndex(nv), nv, 8, 0))
                .op("read NV index")
        })?;
        let bytes: [u8; 8] = bytes.value().try_into().map_err(|_| {
            TpmError::FloorTampered(format!("NV index {index:#010x} is not 8 bytes"))
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Runs `f` with an ESYS handle for an existing NV index, then closes the handle.
    pub(crate) fn with_nv<T>(
        &mut self,
        index: u32,
        f: impl FnOnce(&mut Context, NvIndexHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let tpm_handle = NvIndexTpmHandle::new(index).op("NV index handle")?;
        let mut handle = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle.into()))
            .op("open NV index")?;
        let out = f(&mut self.ctx, handle.into());
        let closed = self.ctx.tr_close(&mut handle).op("close NV handle");
        let value = out?;
        closed?;
        Ok(value)
    }
}

fn is_written(public: &Option<NvPublic>) -> bool {
    public.as_ref().is_some_and(|p| p.attributes().written())
}
