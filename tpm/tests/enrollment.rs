//! Enrollment against a real swtpm: the server's software MakeCredential, the device's
//! ActivateCredential.

mod common;

use cairn_attest::{challenge_ak, make_credential, RsaPublicArea};
use cairn_tpm::TpmError;
use common::TestTpm;

#[test]
fn credential_activates_only_for_the_same_tpm_and_ak() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    let ek = tpm.ek_public().expect("EK public");
    let ak = tpm.create_ak().expect("create AK");
    let name = tpm.ak_name(&ak).expect("AK name");

    let parsed = RsaPublicArea::parse(&ak.public).expect("AK public parses");
    assert_eq!(parsed.key_bits, 2048);
    parsed
        .check_attestation_key()
        .expect("AK is a restricted signing key");
    assert_eq!(RsaPublicArea::parse(&ek).expect("EK parses").key_bits, 2048);

    let secret = b"enrollment secret 0123456789abcd";
    let challenge = challenge_ak(&ek, &ak.public, secret).expect("challenge");
    let got = tpm
        .activate_credential(&ak, &challenge.credential_blob, &challenge.encrypted_secret)
        .expect("activate on the right TPM");
    assert_eq!(got, secret);

    // A credential made for another AK's Name is refused (the outer HMAC covers it).
    let mut other_name = name.clone();
    *other_name.last_mut().expect("non-empty name") ^= 1;
    let wrong_ak = make_credential(&ek, &other_name, secret).expect("make credential");
    assert_refused(tpm.activate_credential(
        &ak,
        &wrong_ak.credential_blob,
        &wrong_ak.encrypted_secret,
    ));

    // A credential made for another TPM's EK cannot be activated here.
    let other = TestTpm::start();
    let other_ek = other.open().ek_public().expect("second EK");
    assert_ne!(other_ek, ek);
    let wrong_ek = make_credential(&other_ek, &name, secret).expect("make credential");
    assert_refused(tpm.activate_credential(
        &ak,
        &wrong_ek.credential_blob,
        &wrong_ek.encrypted_secret,
    ));

    // The AK blob survives a JSON round trip and a new connection.
    let json = serde_json::to_string(&ak).expect("serialise");
    drop(tpm);
    let mut tpm = t.open();
    let ak2 = serde_json::from_str(&json).expect("parse");
    let again = challenge_ak(&ek, &ak.public, b"second").expect("challenge");
    assert_eq!(
        tpm.activate_credential(&ak2, &again.credential_blob, &again.encrypted_secret)
            .expect("activate after reopen"),
        b"second"
    );
    drop(tpm);
    t.assert_no_leftover_handles();
}

#[test]
fn ak_name_is_the_tpm_name() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    let ak = tpm.create_ak().expect("create AK");
    let name = tpm.ak_name(&ak).expect("AK name");
    drop(tpm);
    // tpm2_loadexternal computes the Name of a public area the same way the TPM does.
    let public = common::write(t.dir.path(), "ak.pub", &ak.public);
    let out = t.tool(
        "tpm2_loadexternal",
        &[
            "-C",
            "o",
            "-u",
            &public,
            "-c",
            &t.dir.path().join("ak.ctx").display().to_string(),
            "-n",
            &t.dir.path().join("ak.name").display().to_string(),
        ],
    );
    assert!(out.status.success(), "tpm2_loadexternal: {out:?}");
    let tpm_name = std::fs::read(t.dir.path().join("ak.name")).expect("name file");
    assert_eq!(tpm_name, name);
    let out = t.tool("tpm2_flushcontext", &["-t"]);
    assert!(out.status.success(), "flush: {out:?}");
}

/// The TPM itself refused ActivateCredential (not our input checks).
fn assert_refused(result: Result<Vec<u8>, TpmError>) {
    assert!(
        matches!(
            result,
            Err(TpmError::Tss {
                op: "activate credential",
                ..
            })
        ),
        "{result:?}"
    );
}
