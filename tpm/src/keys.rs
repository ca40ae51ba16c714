//! Endorsement key, attestation key, credential activation and quotes.
//!
//! The EK is re-created from the TCG default RSA-2048 template (L-1) on every call that
//! needs it (same seed, same key) and flushed afterwards; the AK is loaded from its blob
//! under the EK and flushed too, so no call leaves a transient object or session behind.

use cairn_attest::{RsaPublicArea, CAIRN_PCR};
use tss_esapi::abstraction::{ak, ek, nv, DefaultKey};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, HashScheme, IdObject, PcrSelectionListBuilder, PcrSlot, SignatureScheme,
    SymmetricDefinition,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use crate::blob::*;
use crate::error::{Op, TpmError};
use crate::Tpm;

/// NV index of the RSA-2048 EK certificate (TCG EK Credential Profile).
pub const EK_CERT_NV_INDEX: u32 = 0x01c0_0002;

/// PCR 12 as tss-esapi's slot bit; `CAIRN_PCR` is checked against it in a test.
pub(crate) const CAIRN_PCR_SLOT: PcrSlot = PcrSlot::Slot12;
const _: () = assert!(CAIRN_PCR == 12);

impl Tpm {
    /// Runs `f` with the EK loaded, then flushes it (also when `f` fails).
    fn with_ek<T>(
        &mut self,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let ek = ek::create_ek_object(&mut self.ctx, AsymmetricAlgorithm::Rsa, None::<DefaultKey>)
            .op("create EK")?;
        let out = f(&mut self.ctx, ek);
        let flushed = self.ctx.flush_context(ek.into()).op("flush EK");
        let value = out?;
        flushed?;
        Ok(value)
    }

    /// Runs `f` with the EK and the AK loaded, then flushes both.
    fn with_ak<T>(
        &mut self,
        blob: &AkBlob,
        f: impl FnOnce(&mut Context, KeyHandle, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let private = private_from_tpm2b(&blob.private)?;
        let public = public_from_tpm2b(&blob.public)?;
        self.with_ek(|ctx, ek| {
            let ak = ak::load_ak(ctx, ek, None, private, public).op("load AK")?;
            let out = f(ctx, ek, ak);
            let flushed = ctx.flush_context(ak.into()).op("flush AK");
            let value = out?;
            flushed?;
            Ok(value)
        })
    }

    /// TPM2B_PUBLIC of the standard RSA-2048 EK (TCG default template L-1).
    pub fn ek_public(&mut self) -> Result<Vec<u8>, TpmError> {
        self.with_ek(|ctx, ek| {
            let (public, _, _) = ctx.read_public(ek).op("read EK public")?;
            public_to_tpm2b(&public)
        })
    }

    /// The RSA-2048 EK certificate (DER) from NV index 0x01c00002, if the manufacturer
    /// (or `swtpm_setup --create-ek-cert`) put one there.
    pub fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        if !self.nv_index_defined(EK_CERT_NV_INDEX)? {
            return Ok(None);
        }
        let chunk = nv::max_nv_buffer_size(&mut self.ctx).op("NV buffer size")?;
        let chunk = u16::try_from(chunk.min(1024)).unwrap_or(1024);
        let cert = self.with_nv(EK_CERT_NV_INDEX, |ctx, handle| {
            let (public, _) = ctx
                .execute_without_session(|ctx| ctx.nv_read_public(handle))
                .op("read EK cert NV public")?;
            let size = public.data_size();
            let mut cert = Vec::with_capacity(size);
            while cert.len() < size {
                let offset = u16::try_from(cert.len())
                    .map_err(|_| TpmError::invalid("EK certificate", "larger than 64 KiB"))?;
                let want = u16::try_from(size - cert.len())
                    .unwrap_or(u16::MAX)
                    .min(chunk);
                let part = ctx
                    .execute_with_nullauth_session(|ctx| {
                        ctx.nv_read(NvAuth::NvIndex(handle), handle, want, offset)
                    })
                    .op("read EK certificate")?;
                if part.is_empty() {
                    return Err(TpmError::invalid("EK certificate", "TPM returned no data"));
                }
                cert.extend_from_slice(part.value());
            }
            Ok(cert)
        })?;
        Ok(Some(cert))
    }

    /// Creates an RSA-2048 restricted signing key (RSASSA-SHA256, SHA-256 name) under the
    /// EK. The caller stores the blob; the TPM keeps nothing.
    pub fn create_ak(&mut self) -> Result<AkBlob, TpmError> {
        self.with_ek(|ctx, ek| {
            let created = ak::create_ak(
                ctx,
                ek,
                HashingAlgorithm::Sha256,
                SignatureSchemeAlgorithm::RsaSsa,
                None,
                None::<DefaultKey>,
            )
            .op("create AK")?;
            Ok(AkBlob {
                private: private_to_tpm2b(&created.out_private)?,
                public: public_to_tpm2b(&created.out_public)?,
            })
        })
    }

    /// The AK's TPM Name (nameAlg || SHA-256 of its TPMT_PUBLIC), computed from the blob
    /// exactly as the TPM does; no TPM command is needed.
    pub fn ak_name(&mut self, ak: &AkBlob) -> Result<Vec<u8>, TpmError> {
        Ok(RsaPublicArea::parse(&ak.public)?.name()?)
    }

    /// TPM2_ActivateCredential: recovers the secret a verifier wrapped with
    /// `cairn_attest::make_credential` for this TPM's EK and this AK's Name. The EK is
    /// authorised by a policy session with PolicySecret(TPM_RH_ENDORSEMENT), as its
    /// template's authPolicy demands.
    pub fn activate_credential(
        &mut self,
        ak: &AkBlob,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let id_object = IdObject::try_from(tpm2b_body(credential_blob, "TPM2B_ID_OBJECT")?)
            .op("TPM2B_ID_OBJECT size")?;
        let secret =
            EncryptedSecret::try_from(tpm2b_body(encrypted_secret, "TPM2B_ENCRYPTED_SECRET")?)
                .op("TPM2B_ENCRYPTED_SECRET size")?;
        self.with_ak(ak, |ctx, ek, ak| {
            let session = endorsement_policy_session(ctx)?;
            let out = ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                    ctx.activate_credential(ak, ek, id_object, secret)
                })
                .op("activate credential");
            let flushed = ctx
                .flush_context(SessionHandle::from(session).into())
                .op("flush policy session");
            let digest = out?;
            flushed?;
            Ok(digest.value().to_vec())
        })
    }

    /// TPM2_Quote over SHA-256 {CAIRN_PCR} with `nonce` (at most 64 bytes) as qualifying
    /// data, signed RSASSA-SHA256 by the AK.
    pub fn quote(&mut self, ak: &AkBlob, nonce: &[u8]) -> Result<Quote, TpmError> {
        self.quote_pcrs(ak, nonce, &[CAIRN_PCR_SLOT])
    }

    /// [`Tpm::quote`] on the UEFI path: over SHA-256 {4, 7, 11, CAIRN_PCR}, where the
    /// firmware measured systemd-boot and the UKI it started into PCR 4 and its Secure Boot
    /// policy into PCR 7, and systemd-stub the UKI's sections into PCR 11 (docs/UEFI.md).
    pub fn quote_uefi(&mut self, ak: &AkBlob, nonce: &[u8]) -> Result<Quote, TpmError> {
        self.quote_pcrs(
            ak,
            nonce,
            &[
                PcrSlot::Slot4,
                PcrSlot::Slot7,
                PcrSlot::Slot11,
                CAIRN_PCR_SLOT,
            ],
        )
    }

    fn quote_pcrs(
        &mut self,
        ak: &AkBlob,
        nonce: &[u8],
        pcrs: &[PcrSlot],
    ) -> Result<Quote, TpmError> {
        let data = Data::try_from(nonce.to_vec())
            .map_err(|_| TpmError::invalid("nonce", format!("{} bytes, max 64", nonce.len())))?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, pcrs)
            .build()
            .op("PCR selection")?;
        self.with_ak(ak, |ctx, _ek, ak| {
            let (attest, signature) = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(
                        ak,
                        data,
                        SignatureScheme::RsaSsa {
                            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                        },
                        selection,
                    )
                })
                .op("quote")?;
            Ok(Quote {
                attest: attest.marshall().op("marshal TPMS_ATTEST")?,
                signature: signature.marshall().op("marshal TPMT_SIGNATURE")?,
            })
        })
    }
}

/// A policy session satisfying the TCG EK template's policy: PolicySecret(endorsement).
fn endorsement_policy_session(ctx: &mut Context) -> Result<AuthSession, TpmError> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .op("start policy session")?
        .ok_or_else(|| TpmError::invalid("policy session", "TPM returned no session"))?;
    let policy = (|| {
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        ctx.tr_sess_set_attributes(session, attributes, mask)?;
        let policy_session = PolicySession::try_from(session)?;
        ctx.execute_with_nullauth_session(|ctx| {
            ctx.policy_secret(
                policy_session,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
    })();
    if let Err(source) = policy {
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        return Err(TpmError::Tss {
            op: "PolicySecret(endorsement)",
            source,
        });
    }
    Ok(session)
}
