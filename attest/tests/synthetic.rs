//! Quote verification and parser robustness on quotes signed by a software RSA key (the
//! swtpm tests in cairn-tpm cover real TPM output). Includes the systematic-mutation test:
//! every truncation and many byte flips of each input must give an error, never a panic.

use cairn_attest::{
    challenge_ak, loader_cmdline_digest, make_credential, verify_quote, AttestError, Event,
    EventKind, EventLog, MeasuredBoot, QuoteAttest, RsaPublicArea, RsassaSignature, UefiPcrs,
};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};

const H: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const AK_ATTRS: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);

fn tpm2b(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn rsa_public(attrs: u32, scheme: &[u8], key: &RsaPrivateKey) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // nameAlg SHA-256
    t.extend_from_slice(&attrs.to_be_bytes());
    t.extend_from_slice(&tpm2b(&[])); // authPolicy
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
    t.extend_from_slice(scheme);
    let n = key.n().to_bytes_be();
    t.extend_from_slice(&((n.len() * 8) as u16).to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // default exponent
    t.extend_from_slice(&tpm2b(&n));
    tpm2b(&t)
}

const RSASSA_SHA256: [u8; 4] = [0x00, 0x14, 0x00, 0x0B];

fn attest(nonce: &[u8], selections: &[(u16, &[u8])], pcr_digest: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&0xff54_4347u32.to_be_bytes());
    a.extend_from_slice(&0x8018u16.to_be_bytes());
    a.extend_from_slice(&tpm2b(&[0x00, 0x0B, 1, 2, 3, 4]));
    a.extend_from_slice(&tpm2b(nonce));
    a.extend_from_slice(&12345u64.to_be_bytes());
    a.extend_from_slice(&1u32.to_be_bytes());
    a.extend_from_slice(&0u32.to_be_bytes());
    a.push(1);
    a.extend_from_slice(&0x2023_1234u64.to_be_bytes());
    a.extend_from_slice(&(selections.len() as u32).to_be_bytes());
    for (hash, select) in selections {
        a.extend_from_slice(&hash.to_be_bytes());
        a.push(select.len() as u8);
        a.extend_from_slice(select);
    }
    a.extend_from_slice(&tpm2b(pcr_digest));
    a
}

fn sign(key: &RsaPrivateKey, message: &[u8]) -> Vec<u8> {
    let sig = key
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message))
        .expect("sign");
    let mut s = RSASSA_SHA256.to_vec();
    s.extend_from_slice(&tpm2b(&sig));
    s
}

fn log() -> EventLog {
    let mut log = EventLog::new();
    for (kind, value) in [
        (EventKind::Slot, "a"),
        (EventKind::RootfsVerityRoot, H),
        (EventKind::Kernel, H),
        (EventKind::Initrd, H),
    ] {
        log.push(Event::new(kind, value).expect("event"));
    }
    log
}

const PCR12: &[u8] = &[0x00, 0x10, 0x00];

struct Fixture {
    key: RsaPrivateKey,
    public: Vec<u8>,
    nonce: Vec<u8>,
    log: EventLog,
    digest: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        // 1024 bits keeps unoptimised test builds fast; the parser takes any size.
        let key = RsaPrivateKey::new(&mut OsRng, 1024).expect("keygen");
        let log = log();
        let digest = Sha256::digest(log.replay().expect("replay")).to_vec();
        Fixture {
            public: rsa_public(AK_ATTRS, &RSASSA_SHA256, &key),
            key,
            nonce: b"fresh nonce 0123456789".to_vec(),
            log,
            digest,
        }
    }

    fn quote(&self, selections: &[(u16, &[u8])]) -> (Vec<u8>, Vec<u8>) {
        let a = attest(&self.nonce, selections, &self.digest);
        let s = sign(&self.key, &a);
        (a, s)
    }

    fn verify(
        &self,
        public: &[u8],
        a: &[u8],
        s: &[u8],
    ) -> Result<cairn_attest::Measured, AttestError> {
        verify_quote(public, a, s, &self.nonce, &self.log, None)
    }
}

#[test]
fn a_well_formed_quote_verifies() {
    let f = Fixture::new();
    let (a, s) = f.quote(&[(0x000B, PCR12)]);
    let m = f.verify(&f.public, &a, &s).expect("verifies");
    assert_eq!(
        m.boot,
        MeasuredBoot::Uboot {
            kernel_sha256: H.into(),
            initrd_sha256: H.into(),
        }
    );
    let parsed = QuoteAttest::parse(&a).expect("parse");
    assert_eq!(parsed.pcr_selections[0].pcrs(), [12]);
    assert!(parsed.safe);
}

#[test]
fn other_pcr_selections_are_refused() {
    let f = Fixture::new();
    let cases: [&[(u16, &[u8])]; 5] = [
        &[(0x0004, PCR12)],                  // SHA-1 bank
        &[(0x000B, &[0x00, 0x30, 0x00])],    // PCRs 12 and 13
        &[(0x000B, &[0x00, 0x00, 0x00])],    // nothing
        &[(0x000B, PCR12), (0x0004, PCR12)], // two banks
        &[],                                 // no bank
    ];
    for selections in cases {
        let (a, s) = f.quote(selections);
        assert!(
            matches!(
                f.verify(&f.public, &a, &s),
                Err(AttestError::WrongPcrSelection { .. })
            ),
            "{selections:?}"
        );
    }
}

#[test]
fn keys_and_schemes_cairn_does_not_use_are_refused() {
    let f = Fixture::new();
    let (a, s) = f.quote(&[(0x000B, PCR12)]);
    let unrestricted = rsa_public(AK_ATTRS & !(1 << 16), &RSASSA_SHA256, &f.key);
    assert!(matches!(
        f.verify(&unrestricted, &a, &s),
        Err(AttestError::NotAttestationKey(_))
    ));
    let mut pss = s.clone();
    pss[1] = 0x16;
    assert!(matches!(
        f.verify(&f.public, &a, &pss),
        Err(AttestError::Unsupported { .. })
    ));
    let mut sha1 = s.clone();
    sha1[3] = 0x04;
    assert!(matches!(
        f.verify(&f.public, &a, &sha1),
        Err(AttestError::Unsupported { .. })
    ));
    // An AK that is not restricted cannot be challenged either.
    assert!(matches!(
        challenge_ak(&f.public, &unrestricted, b"secret"),
        Err(AttestError::NotAttestationKey(_))
    ));
}

#[test]
fn make_credential_checks_its_inputs() {
    let f = Fixture::new();
    // A signing key is not an EK.
    assert!(matches!(
        make_credential(&f.public, &[0, 0x0B, 1], b"s"),
        Err(AttestError::NotEndorsementKey(_))
    ));
    let ek_attrs = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17);
    let mut ek = rsa_public(ek_attrs, &[0x00, 0x10], &f.key);
    // symmetric NULL -> AES-128-CFB: splice in the 6 bytes after authPolicy.
    let at = 2 + 2 + 2 + 4 + 2;
    ek.splice(at..at + 2, [0x00, 0x06, 0x00, 0x80, 0x00, 0x43]);
    let size = (ek.len() - 2) as u16;
    ek[..2].copy_from_slice(&size.to_be_bytes());
    let name = RsaPublicArea::parse(&f.public)
        .expect("parse")
        .name()
        .expect("name");
    let c = make_credential(&ek, &name, b"0123456789abcdef0123456789abcdef").expect("make");
    assert_eq!(c.encrypted_secret.len(), 2 + f.key.size());
    // TPM2B_ID_OBJECT: size, TPM2B_DIGEST(hmac), encrypted TPM2B_DIGEST(secret).
    assert_eq!(c.credential_blob.len(), 2 + (2 + 32) + (2 + 32));
    assert!(matches!(
        make_credential(&ek, &name, &[7u8; 33]),
        Err(AttestError::SecretSize { len: 33, max: 32 })
    ));
    assert!(matches!(
        make_credential(&ek, &name, &[]),
        Err(AttestError::SecretSize { .. })
    ));
}

/// Every truncation, every appended byte and a flip of every byte of each input.
#[test]
fn systematic_mutations_never_panic_and_never_verify() {
    let f = Fixture::new();
    let (a, s) = f.quote(&[(0x000B, PCR12)]);
    f.verify(&f.public, &a, &s).expect("baseline verifies");

    for len in 0..a.len() {
        assert!(
            f.verify(&f.public, &a[..len], &s).is_err(),
            "attest cut at {len}"
        );
        assert!(QuoteAttest::parse(&a[..len]).is_err());
    }
    for len in 0..s.len() {
        assert!(
            f.verify(&f.public, &a, &s[..len]).is_err(),
            "signature cut at {len}"
        );
        assert!(RsassaSignature::parse(&s[..len]).is_err());
    }
    for len in 0..f.public.len() {
        assert!(
            f.verify(&f.public[..len], &a, &s).is_err(),
            "public cut at {len}"
        );
        assert!(RsaPublicArea::parse(&f.public[..len]).is_err());
    }
    let longer = |v: &[u8]| [v, &[0u8]].concat();
    assert!(f.verify(&longer(&f.public), &a, &s).is_err());
    assert!(f.verify(&f.public, &longer(&a), &s).is_err());
    assert!(f.verify(&f.public, &a, &longer(&s)).is_err());
    assert!(QuoteAttest::parse(&longer(&a)).is_err());

    for i in 0..a.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut m = a.clone();
            m[i] ^= x;
            assert!(
                f.verify(&f.public, &m, &s).is_err(),
                "attest byte {i} ^ {x:#x}"
            );
            let _ = QuoteAttest::parse(&m); // must not panic
        }
    }
    for i in 0..s.len() {
        let mut m = s.clone();
        m[i] ^= 0x01;
        assert!(f.verify(&f.public, &a, &m).is_err(), "signature byte {i}");
    }
    // A flipped bit in the public area may leave a valid key (e.g. an unrelated
    // attribute), so only the absence of panics is required there, plus: no flip in
    // the modulus verifies.
    for i in 0..f.public.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut m = f.public.clone();
            m[i] ^= x;
            let result = f.verify(&m, &a, &s);
            if i >= f.public.len() - f.key.size() {
                assert!(result.is_err(), "modulus byte {i} ^ {x:#x}");
            }
            if let Ok(p) = RsaPublicArea::parse(&m) {
                let _ = p.name();
                let _ = p.check_attestation_key();
            }
        }
    }
    // Pseudo-random garbage of every small length.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for len in 0..300 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(RsaPublicArea::parse(&junk).is_err() || len > 10);
        let _ = QuoteAttest::parse(&junk);
        let _ = RsassaSignature::parse(&junk);
        assert!(f.verify(&junk, &junk, &junk).is_err());
        let _ = make_credential(&junk, &junk, &junk);
    }
}

/// The UEFI path (docs/UEFI.md): systemd-boot's command line first, then Cairn's events
/// with the UKI's digest; the quote covers PCRs 4, 7, 11 and 12.
fn uefi_log(cmdline: &str) -> EventLog {
    let mut log = EventLog::new();
    for (kind, value) in [
        (EventKind::LoaderCmdline, cmdline),
        (EventKind::Slot, "b"),
        (EventKind::RootfsVerityRoot, H),
        (EventKind::Uki, H),
    ] {
        log.push(Event::new(kind, value).expect("event"));
    }
    log
}

const PCRS_4_7_11_12: &[u8] = &[0x90, 0x18, 0x00];
const PCRS_4_11_12: &[u8] = &[0x10, 0x18, 0x00];
const PCRS_11_12: &[u8] = &[0x00, 0x18, 0x00];
const CMDLINE: &str = "console=ttyS0 panic=5 cairn.verity.root_hash=00";

/// The pcrDigest of a quote over `firmware` PCRs (in index order) and PCR 12 from `log`.
fn digest_with_log(firmware: &[&[u8; 32]], log: &EventLog) -> Vec<u8> {
    let mut h = Sha256::new();
    for pcr in firmware {
        h.update(pcr);
    }
    h.update(log.replay().expect("replay"));
    h.finalize().to_vec()
}

#[test]
fn a_uefi_quote_must_cover_the_releases_pcr4_pcr7_and_pcr11() {
    let f = Fixture::new();
    let log = uefi_log(CMDLINE);
    let release = UefiPcrs {
        pcr4: [0x44; 32],
        pcr7: [0x77; 32],
        pcr11: [0x11; 32],
    };
    let quote = |firmware: &[&[u8; 32]], selection: &[u8]| {
        let a = attest(
            &f.nonce,
            &[(0x000B, selection)],
            &digest_with_log(firmware, &log),
        );
        let s = sign(&f.key, &a);
        (a, s)
    };
    let verify = |(a, s): (Vec<u8>, Vec<u8>)| {
        verify_quote(&f.public, &a, &s, &f.nonce, &log, Some(&release))
    };
    let all = |pcr4, pcr7, pcr11| quote(&[pcr4, pcr7, pcr11], PCRS_4_7_11_12);
    let m = verify(all(&release.pcr4, &release.pcr7, &release.pcr11)).expect("verifies");
    assert_eq!(
        m.boot,
        MeasuredBoot::Uefi {
            uki_sha256: H.into(),
            loader_cmdline: CMDLINE.into(),
        }
    );
    // Another UKI (an altered initrd, another command line) left another PCR 11.
    let err = verify(all(&release.pcr4, &release.pcr7, &[0x22; 32])).unwrap_err();
    assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
    // The firmware started another boot loader or UKI: another PCR 4.
    let err = verify(all(&[0x45; 32], &release.pcr7, &release.pcr11)).unwrap_err();
    assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
    // The firmware holds other keys, or another db certificate authorized the boot.
    let err = verify(all(&release.pcr4, &[0x78; 32], &release.pcr11)).unwrap_err();
    assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
    // A quote without PCR 7 or PCR 4, even one whose digest holds the right values of
    // the others, is not enough.
    let err = verify(quote(&[&release.pcr4, &release.pcr11], PCRS_4_11_12)).unwrap_err();
    assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
    let err = verify(quote(&[&release.pcr11], PCRS_11_12)).unwrap_err();
    assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
    // A quote of PCR 12 alone proves nothing about the UKI.
    let a = attest(
        &f.nonce,
        &[(0x000B, PCR12)],
        &Sha256::digest(log.replay().unwrap()),
    );
    let s = sign(&f.key, &a);
    let err = verify((a, s)).unwrap_err();
    assert!(matches!(err, AttestError::UefiPcrs { .. }), "{err}");
}

#[test]
fn the_loader_cmdline_event_is_systemd_boots_measurement_and_comes_first() {
    let event = Event::new(EventKind::LoaderCmdline, CMDLINE).unwrap();
    assert_eq!(*event.digest(), loader_cmdline_digest(CMDLINE));
    let mut utf16 = Vec::new();
    for unit in CMDLINE.encode_utf16().chain([0]) {
        utf16.extend(unit.to_le_bytes());
    }
    assert_eq!(event.digest().as_slice(), Sha256::digest(&utf16).as_slice());
    assert!(Event::new(EventKind::LoaderCmdline, "a\nb").is_err());

    let mut late = EventLog::new();
    late.push(Event::new(EventKind::Slot, "a").unwrap());
    late.push(event.clone());
    late.push(Event::new(EventKind::RootfsVerityRoot, H).unwrap());
    late.push(Event::new(EventKind::Uki, H).unwrap());
    assert!(matches!(
        late.measured(),
        Err(AttestError::LoaderCmdlineNotFirst)
    ));

    let mut mixed = uefi_log(CMDLINE);
    mixed.push(Event::new(EventKind::Kernel, H).unwrap());
    assert!(matches!(
        mixed.measured(),
        Err(AttestError::MixedBootPaths(EventKind::Kernel))
    ));
}
