//! Quotes from a real swtpm: verification, the tpm2_checkquote cross-check, and forged or
//! replayed quotes.

mod common;

use cairn_attest::{verify_quote, AttestError, Event, EventKind, MeasuredBoot, Slot, UefiPcrs};
use common::{measure_boot, nonce, write, TestTpm, INITRD, KERNEL, ROOT};

#[test]
fn quote_verifies_and_tpm2_checkquote_agrees() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    let ak = tpm.create_ak().expect("create AK");
    let log = measure_boot(&mut tpm, "b");
    assert_eq!(
        tpm.read_pcr(cairn_tpm::CAIRN_PCR).expect("read PCR 12"),
        log.replay().expect("replay")
    );
    let n = nonce();
    let quote = tpm.quote(&ak, &n).expect("quote");
    drop(tpm);

    let measured = verify_quote(&ak.public, &quote.attest, &quote.signature, &n, &log, None)
        .expect("quote verifies");
    assert_eq!(measured.slot, Slot::B);
    assert_eq!(measured.rootfs_verity_root, ROOT);
    assert_eq!(
        measured.boot,
        MeasuredBoot::Uboot {
            kernel_sha256: KERNEL.into(),
            initrd_sha256: INITRD.into(),
        }
    );

    // tpm2_checkquote (no TPM needed) reads our blobs as the standard structures.
    let dir = t.dir.path();
    let public = write(dir, "ak.pub", &ak.public);
    let message = write(dir, "quote.msg", &quote.attest);
    let signature = write(dir, "quote.sig", &quote.signature);
    let pcrs = write(dir, "pcrs.bin", &log.replay().expect("replay"));
    let n_hex = hex::encode(&n);
    let check = |message: &str| {
        common::run_tool(
            "tpm2_checkquote",
            &[
                "-u",
                &public,
                "-m",
                message,
                "-s",
                &signature,
                "-f",
                &pcrs,
                "-l",
                "sha256:12",
                "-g",
                "sha256",
                "-q",
                &n_hex,
            ],
            None,
        )
    };
    let out = check(&message);
    assert!(
        out.status.success(),
        "tpm2_checkquote rejected our quote: {out:?}"
    );

    let mut tampered = quote.attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = write(dir, "tampered.msg", &tampered);
    let out = check(&tampered);
    assert!(
        !out.status.success(),
        "tpm2_checkquote accepted a tampered quote: {out:?}"
    );

    t.assert_no_leftover_handles();
}

#[test]
fn replayed_and_forged_quotes_are_rejected() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    let ak = tpm.create_ak().expect("create AK");
    let log = measure_boot(&mut tpm, "a");
    let old_nonce = nonce();
    let old = tpm.quote(&ak, &old_nonce).expect("quote");
    let new_nonce = nonce();
    let fresh = tpm.quote(&ak, &new_nonce).expect("quote");
    verify_quote(
        &ak.public,
        &fresh.attest,
        &fresh.signature,
        &new_nonce,
        &log,
        None,
    )
    .expect("fresh quote verifies");

    // Replay: a valid old quote answers a new challenge.
    assert_eq!(
        verify_quote(
            &ak.public,
            &old.attest,
            &old.signature,
            &new_nonce,
            &log,
            None
        ),
        Err(AttestError::NonceMismatch)
    );

    // Any flipped byte of the signed message breaks the signature.
    for i in [0, 10, fresh.attest.len() / 2, fresh.attest.len() - 1] {
        let mut attest = fresh.attest.clone();
        attest[i] ^= 0x80;
        assert_eq!(
            verify_quote(
                &ak.public,
                &attest,
                &fresh.signature,
                &new_nonce,
                &log,
                None
            ),
            Err(AttestError::BadSignature),
            "flipped byte {i}"
        );
    }

    // A log with an extra event, or another value (with its matching digest), does not
    // replay to the quoted PCR.
    let mut extra = log.clone();
    extra.push(Event::new(EventKind::Slot, "b").expect("event"));
    assert_eq!(
        verify_quote(
            &ak.public,
            &fresh.attest,
            &fresh.signature,
            &new_nonce,
            &extra,
            None
        ),
        Err(AttestError::PcrDigestMismatch)
    );
    let mut altered = cairn_attest::EventLog::new();
    for e in log.events() {
        let value = if e.kind() == EventKind::Kernel {
            ROOT
        } else {
            e.value()
        };
        altered.push(Event::new(e.kind(), value).expect("event"));
    }
    assert_eq!(
        verify_quote(
            &ak.public,
            &fresh.attest,
            &fresh.signature,
            &new_nonce,
            &altered,
            None
        ),
        Err(AttestError::PcrDigestMismatch)
    );

    // A quote by another TPM's AK (same log, same nonce) is not signed by the enrolled AK.
    let other = TestTpm::start();
    let mut other_tpm = other.open();
    let other_ak = other_tpm.create_ak().expect("create AK");
    let other_log = measure_boot(&mut other_tpm, "a");
    assert_eq!(other_log, log);
    let forged = other_tpm.quote(&other_ak, &new_nonce).expect("quote");
    verify_quote(
        &other_ak.public,
        &forged.attest,
        &forged.signature,
        &new_nonce,
        &log,
        None,
    )
    .expect("valid for its own AK");
    assert_eq!(
        verify_quote(
            &ak.public,
            &forged.attest,
            &forged.signature,
            &new_nonce,
            &log,
            None
        ),
        Err(AttestError::BadSignature)
    );
}

/// The UEFI path's quote covers PCRs 4, 7 and 11 too: it verifies against the values the
/// release pins, and not against others.
#[test]
fn a_uefi_quote_covers_pcr4_pcr7_and_pcr11() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    let ak = tpm.create_ak().expect("create AK");
    let mut log = cairn_attest::EventLog::new();
    for (kind, value) in [
        (
            EventKind::LoaderCmdline,
            "console=ttyS0 cairn.verity.root_hash=00",
        ),
        (EventKind::Slot, "a"),
        (EventKind::RootfsVerityRoot, ROOT),
        (EventKind::Uki, KERNEL),
    ] {
        tpm.measure(&mut log, kind, value).expect("measure");
    }
    let release = UefiPcrs {
        pcr4: tpm.read_pcr(4).expect("read PCR 4"),
        pcr7: tpm.read_pcr(7).expect("read PCR 7"),
        pcr11: tpm.read_pcr(11).expect("read PCR 11"),
    };
    let n = nonce();
    let quote = tpm.quote_uefi(&ak, &n).expect("quote");
    drop(tpm);
    let measured = verify_quote(
        &ak.public,
        &quote.attest,
        &quote.signature,
        &n,
        &log,
        Some(&release),
    )
    .expect("quote verifies");
    assert_eq!(
        measured.boot,
        MeasuredBoot::Uefi {
            uki_sha256: KERNEL.into(),
            loader_cmdline: "console=ttyS0 cairn.verity.root_hash=00".into(),
        }
    );
    for other in [
        UefiPcrs {
            pcr4: [0x44; 32],
            ..release
        },
        UefiPcrs {
            pcr7: [0x77; 32],
            ..release
        },
        UefiPcrs {
            pcr11: [0x11; 32],
            ..release
        },
    ] {
        let err = verify_quote(
            &ak.public,
            &quote.attest,
            &quote.signature,
            &n,
            &log,
            Some(&other),
        )
        .unwrap_err();
        assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
    }
}
