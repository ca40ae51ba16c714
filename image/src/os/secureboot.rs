//! UEFI Secure Boot for the images Cairn builds: the project's own key hierarchy (PK, KEK,
//! db), signing EFI binaries with the db key, and firmware variable stores that trust it.
//!
//! The hierarchy is UEFI's: the platform key (PK) authorises changes to the KEK list, a
//! KEK authorises changes to db, and the firmware runs only EFI binaries signed by a
//! certificate in db (docs/UEFI.md). Cairn signs every boot binary it ships (systemd-boot
//! and each slot's UKI) with the db key; PK and KEK only matter when a board's variables
//! are enrolled, which for QEMU is done offline into a copy of OVMF's or AAVMF's template
//! variable store. The tools are Debian's: openssl makes the keys, `sbsign` (sbsigntool)
//! signs, `virt-fw-vars` (python3-virt-firmware) enrolls.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::run::run;

/// The owner GUID recorded with the certificates Cairn enrolls (any fixed GUID will do; it
/// only tells the owners of signature-list entries apart).
pub const OWNER_GUID: &str = "5b1d1f6c-0c3a-4c2e-9d39-43a6a1e4a7c2";

/// One certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The three levels of a Secure Boot key hierarchy, kept in one directory as
/// `PK.crt`/`PK.key`, `KEK.*` and `db.*`.
#[derive(Debug, Clone)]
pub struct SecureBootKeys {
    pub pk: KeyPair,
    pub kek: KeyPair,
    pub db: KeyPair,
}

impl SecureBootKeys {
    /// The keys in `dir`, made there first if any is missing (RSA 2048, the size every
    /// UEFI implementation verifies; valid for 20 years, as firmware clocks are not
    /// trusted for expiry). `common_name` prefixes each certificate's CN.
    pub fn ensure(dir: &Path, common_name: &str) -> Result<Self> {
        let pair = |name: &str| KeyPair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        let keys = Self {
            pk: pair("PK"),
            kek: pair("KEK"),
            db: pair("db"),
        };
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (level, pair) in [("PK", &keys.pk), ("KEK", &keys.kek), ("db", &keys.db)] {
            if pair.cert.exists() && pair.key.exists() {
                continue;
            }
            make_key_pair(pair, &format!("{common_name} {level}"))?;
        }
        Ok(keys)
    }

    /// The hierarchy in `dir`, which must be complete (nothing is made).
    pub fn existing(dir: &Path) -> Result<Self> {
        let keys = Self::in_dir(dir);
        for pair in [&keys.pk, &keys.kek, &keys.db] {
            for file in [&pair.cert, &pair.key] {
                if !file.is_file() {
                    bail!(
                        "{} is missing: make the keys with `cairn-image uki keys`",
                        file.display()
                    );
                }
            }
        }
        Ok(keys)
    }

    fn in_dir(dir: &Path) -> Self {
        let pair = |name: &str| KeyPair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        Self {
            pk: pair("PK"),
            kek: pair("KEK"),
            db: pair("db"),
        }
    }
}

/// A self-signed certificate and key, each written to a temporary name and renamed, so an
/// interrupted run never leaves a key without its certificate under the final names.
fn make_key_pair(pair: &KeyPair, subject_cn: &str) -> Result<()> {
    let tmp_key = pair.key.with_extension("key.tmp");
    let tmp_cert = pair.cert.with_extension("crt.tmp");
    // The private key is mode 0600 from its first byte: openssl writes into this file
    // (truncating it) rather than creating one with the process's umask.
    let _ = fs::remove_file(&tmp_key);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_key)
        .with_context(|| format!("creating {}", tmp_key.display()))?;
    run(Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        ])
        .args(["-days", "7300", "-subj"])
        .arg(format!("/CN={subject_cn}/"))
        .arg("-keyout")
        .arg(&tmp_key)
        .arg("-out")
        .arg(&tmp_cert))?;
    fs::rename(&tmp_key, &pair.key)?;
    fs::rename(&tmp_cert, &pair.cert)?;
    Ok(())
}

/// Signs the EFI binary `input` with `signer` into `output` (an Authenticode signature
/// appended as the PE certificate table; `input` is left as it was).
pub fn sign(signer: &KeyPair, input: &Path, output: &Path) -> Result<()> {
    run(Command::new("sbsign")
        .arg("--key")
        .arg(&signer.key)
        .arg("--cert")
        .arg(&signer.cert)
        .arg("--output")
        .arg(output)
        .arg(input))
    .with_context(|| {
        format!(
            "signing {} (sbsign, Debian package sbsigntool)",
            input.display()
        )
    })?;
    Ok(())
}

/// Whether `image` carries a signature by `cert` that verifies (sbverify).
pub fn verify(cert: &Path, image: &Path) -> Result<bool> {
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(image)
        .output()
        .context("running sbverify (Debian package sbsigntool)")?;
    Ok(out.status.success())
}

/// Writes `out`: a copy of the firmware's variable store `template` with `keys` enrolled
/// as PK, KEK and db and Secure Boot enabled, so that the firmware runs only binaries
/// signed by `keys.db`. Whatever PK, KEK and db the template held are deleted first: a
/// template may come with keys (Debian's AAVMF_VARS.fd is unformatted, all zeros, so the
/// arm64 tests start from its snakeoil store, whose private key Debian publishes).
pub fn enroll(template: &Path, keys: &SecureBootKeys, out: &Path) -> Result<()> {
    let tmp = out.with_extension("tmp");
    run(Command::new("virt-fw-vars")
        .arg("--input")
        .arg(template)
        .arg("--output")
        .arg(&tmp)
        .args(["--delete", "PK", "--delete", "KEK", "--delete", "db"])
        .arg("--set-pk")
        .arg(OWNER_GUID)
        .arg(&keys.pk.cert)
        .arg("--add-kek")
        .arg(OWNER_GUID)
        .arg(&keys.kek.cert)
        .arg("--add-db")
        .arg(OWNER_GUID)
        .arg(&keys.db.cert)
        .arg("--secure-boot"))
    .context(
        "enrolling Secure Boot keys with virt-fw-vars (Debian package python3-virt-firmware)",
    )?;
    fs::rename(&tmp, out)?;
    Ok(())
}
