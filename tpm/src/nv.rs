//! NV-index plumbing shared by the floor and the EK certificate: open, read, define, and
//! the PolicyNvWritten(NO) session both floor indices use. No floor semantics here.

use tss_esapi::attributes::{NvIndexAttributes, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, NvPublic, NvPublicBuilder, SymmetricDefinition,
};
use tss_esapi::Context;

use crate::error::{Op, TpmError};
use crate::Tpm;

/// TPMA_STARTUP_CLEAR bits (TPM 2.0 Part 2, 8.11): which hierarchies are enabled since
/// the last TPM2_Startup(CLEAR).
const PH_ENABLE: u32 = 1 << 0;
const PH_ENABLE_NV: u32 = 1 << 3;

/// Which parts of the platform hierarchy are enabled right now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlatformHierarchy {
    /// Platform authorisation can be used (TPMA_STARTUP_CLEAR.phEnable). Firmware
    /// normally clears it, or sets a random platformAuth, before the OS runs.
    pub enabled: bool,
    /// Platform-created NV indices are visible (phEnableNV). While clear, the TPM acts
    /// as if they did not exist.
    pub nv_enabled: bool,
}

impl Tpm {
    pub(crate) fn platform_hierarchy(&mut self) -> Result<PlatformHierarchy, TpmError> {
        let (data, _) = self
            .ctx
            .get_capability(
                CapabilityType::TpmProperties,
                u32::from(PropertyTag::StartupClear),
                1,
            )
            .op("read startup-clear flags")?;
        let flags = match data {
            CapabilityData::TpmProperties(list) => list
                .find(PropertyTag::StartupClear)
                .map(|p| p.value())
                .ok_or_else(|| TpmError::invalid("capability", "no TPM_PT_STARTUP_CLEAR"))?,
            _ => return Err(TpmError::invalid("capability", "not a property list")),
        };
        Ok(PlatformHierarchy {
            enabled: flags & PH_ENABLE != 0,
            nv_enabled: flags & PH_ENABLE_NV != 0,
        })
    }

    /// Whether an NV index is defined (and visible) without opening it.
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
    pub(crate) fn nv_public(&mut self, index: u32) -> Result<Option<NvPublic>, TpmError> {
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

    /// Reads an 8-byte index with its own (empty) auth value, as a big-endian u64.
    pub(crate) fn nv_read_u64(&mut self, index: u32) -> Result<u64, TpmError> {
        let bytes = self.with_nv(index, |ctx, nv| {
            ctx.execute_with_nullauth_session(|ctx| ctx.nv_read(NvAuth::NvIndex(nv), nv, 8, 0))
                .op("read NV index")
        })?;
        let bytes: [u8; 8] = bytes.value().try_into().map_err(|_| {
            TpmError::FloorTampered(format!("NV index {index:#010x} is not 8 bytes"))
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Defines an 8-byte index under `hierarchy` with an empty auth value.
    pub(crate) fn nv_define(
        &mut self,
        hierarchy: Provision,
        index: u32,
        attributes: NvIndexAttributes,
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
            .execute_with_nullauth_session(|ctx| ctx.nv_define_space(hierarchy, None, public))
            .op("define NV index")?;
        self.ctx.tr_close(&mut handle.into()).op("close NV handle")
    }

    /// The digest of the policy `PolicyNvWritten(NO)`, from a trial session: satisfiable
    /// only while the index it authorises has never been written.
    pub(crate) fn unwritten_policy_digest(&mut self) -> Result<Digest, TpmError> {
        let session = self.unwritten_policy_session(SessionType::Trial)?;
        let digest = PolicySession::try_from(session)
            .and_then(|policy| self.ctx.policy_get_digest(policy))
            .op("policy digest");
        let flushed = self.flush_session(session);
        let digest = digest?;
        flushed?;
        Ok(digest)
    }

    /// A policy (or trial) session with PolicyNvWritten(NO) applied; the caller flushes it.
    pub(crate) fn unwritten_policy_session(
        &mut self,
        kind: SessionType,
    ) -> Result<AuthSession, TpmError> {
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

    pub(crate) fn flush_session(&mut self, session: AuthSession) -> Result<(), TpmError> {
        self.ctx
            .flush_context(SessionHandle::from(session).into())
            .op("flush session")
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
