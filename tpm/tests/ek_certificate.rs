//! The EK certificate swtpm_setup provisions, read from NV and checked against swtpm-localca.

mod common;

use cairn_attest::{verify_ek_certificate, AttestError};
use cairn_tpm::swtpm::{localca_issuer_cert, setup_with_ek_cert, Swtpm, INSTALL_HINT};
use cairn_tpm::Tpm;

#[test]
fn ek_certificate_chains_to_swtpm_localca_and_certifies_the_ek() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    setup_with_ek_cert(&state).unwrap_or_else(|e| panic!("{e}\ninstall: {INSTALL_HINT}"));
    let swtpm = Swtpm::start(&state).expect("start swtpm");
    let mut tpm = Tpm::open(&swtpm.tcti()).expect("open");
    let cert = tpm
        .ek_certificate()
        .expect("read NV")
        .expect("swtpm_setup wrote an EK certificate");
    let ek = tpm.ek_public().expect("EK public");
    drop(tpm);

    let ca_path = localca_issuer_cert();
    let ca =
        std::fs::read(&ca_path).unwrap_or_else(|e| panic!("reading {}: {e}", ca_path.display()));
    verify_ek_certificate(&cert, &ca, &ek).expect("EK certificate verifies");

    // Another TPM's EK is not the certified key.
    let other = common::TestTpm::start();
    let other_ek = other.open().ek_public().expect("EK public");
    assert!(matches!(
        verify_ek_certificate(&cert, &ca, &other_ek),
        Err(AttestError::EkCertificate(_))
    ));
    // A certificate with a flipped byte in its body fails the signature (or parsing).
    let mut tampered = cert.clone();
    let i = tampered.len() / 2;
    tampered[i] ^= 0x01;
    assert!(matches!(
        verify_ek_certificate(&tampered, &ca, &ek),
        Err(AttestError::EkCertificate(_))
    ));
    // The CA is not its own issuer's certificate: the root CA did not sign the EK cert.
    let root = ca_path.with_file_name("swtpm-localca-rootca-cert.pem");
    if let Ok(root) = std::fs::read(&root) {
        assert!(verify_ek_certificate(&cert, &root, &ek).is_err());
    }
}

#[test]
fn a_tpm_without_provisioning_has_no_ek_certificate() {
    let t = common::TestTpm::start();
    assert_eq!(t.open().ek_certificate().expect("read"), None);
}
