//! EK certificate check: the certificate (DER X.509, as TPM manufacturers and
//! `swtpm_setup --create-ek-cert` store it in NV 0x01c00002) is signed by a CA the
//! verifier pins, and certifies exactly this EK's RSA key.
//!
//! Checked: the issuer name equals the CA's subject; the signature (sha256/384/512 with
//! RSA PKCS#1 v1.5) verifies with the CA's RSA key; the certified key's modulus and
//! exponent equal the EK public area's. Not checked: validity dates (TPM EK certificates
//! are commonly valid "until 9999"), revocation, or anything above the pinned CA (pin
//! the intermediate that signs EK certificates, e.g. swtpm-localca's `issuercert.pem`).

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;

use crate::error::{AttestError, Result};
use crate::public::RsaPublicArea;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

fn reject(detail: impl Into<String>) -> AttestError {
    AttestError::EkCertificate(detail.into())
}

/// Parses a CA certificate given as PEM or DER.
fn parse_ca(ca_cert: &[u8]) -> Result<Certificate> {
    let pem = ca_cert.starts_with(b"-----BEGIN");
    let parsed = if pem {
        Certificate::from_pem(ca_cert)
    } else {
        Certificate::from_der(ca_cert)
    };
    parsed.map_err(|e| reject(format!("CA certificate does not parse: {e}")))
}

/// Verifies `ek_cert_der` was issued by `ca_cert` (PEM or DER) for the EK whose
/// TPM2B_PUBLIC is `ek_public`.
pub fn verify_ek_certificate(ek_cert_der: &[u8], ca_cert: &[u8], ek_public: &[u8]) -> Result<()> {
    let ek = RsaPublicArea::parse(ek_public)?;
    let ca = parse_ca(ca_cert)?;
    let cert = Certificate::from_der(ek_cert_der)
        .map_err(|e| reject(format!("EK certificate does not parse: {e}")))?;

    if cert.tbs_certificate.issuer != ca.tbs_certificate.subject {
        return Err(reject(format!(
            "issued by {}, not by the CA {}",
            cert.tbs_certificate.issuer, ca.tbs_certificate.subject
        )));
    }
    let ca_key = RsaPublicKey::from_public_key_der(
        &ca.tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| reject(format!("CA key: {e}")))?,
    )
    .map_err(|e| reject(format!("CA key is not RSA: {e}")))?;
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| reject(format!("re-encoding the certificate body: {e}")))?;
    let signature = cert
        .signature
        .as_bytes()
        .ok_or_else(|| reject("signature is not a whole number of bytes"))?;
    let algorithm = cert.signature_algorithm.oid;
    let verified = if algorithm == SHA256_WITH_RSA {
        ca_key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(&tbs),
            signature,
        )
    } else if algorithm == SHA384_WITH_RSA {
        ca_key.verify(
            Pkcs1v15Sign::new::<Sha384>(),
            &Sha384::digest(&tbs),
            signature,
        )
    } else if algorithm == SHA512_WITH_RSA {
        ca_key.verify(
            Pkcs1v15Sign::new::<Sha512>(),
            &Sha512::digest(&tbs),
            signature,
        )
    } else {
        return Err(reject(format!(
            "signature algorithm {algorithm} is not RSA-SHA2"
        )));
    };
    verified.map_err(|_| reject("signature does not verify with the CA's key"))?;

    // TPM EK certificates mark RSA keys as rsaEncryption or id-RSAES-OAEP; either way
    // the key bits are a PKCS#1 RSAPublicKey.
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != RSA_ENCRYPTION && spki.algorithm.oid != RSAES_OAEP {
        return Err(reject(format!(
            "certified key algorithm {}",
            spki.algorithm.oid
        )));
    }
    let key_bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| reject("certified key is not a whole number of bytes"))?;
    let certified = RsaPublicKey::from_pkcs1_der(key_bits)
        .map_err(|e| reject(format!("certified key is not an RSA key: {e}")))?;
    let ek_key = ek.rsa_key()?;
    if certified.n() != ek_key.n() || certified.e() != ek_key.e() {
        return Err(reject("the certificate certifies another key than this EK"));
    }
    Ok(())
}
