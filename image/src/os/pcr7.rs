//! PCR 7, where UEFI firmware measures its Secure Boot policy (the TCG PC Client Platform
//! Firmware Profile, as EDK2's OVMF and AAVMF implement it), and the firmware variables
//! that value comes from.
//!
//! In order, PCR 7 receives:
//! 1. `SecureBoot` (one byte, 1 when on), then `PK`, `KEK`, `db` and `dbx`
//!    (`EV_EFI_VARIABLE_DRIVER_CONFIG`; a variable that is not set is measured with no
//!    data);
//! 2. the separator that ends the pre-boot measurements (four zero bytes);
//! 3. for each EFI application the firmware starts, the `db` entry that authorized it
//!    (`EV_EFI_VARIABLE_AUTHORITY`), each entry only the first time: systemd-boot and a
//!    UKI signed with the same key add one event.
//!
//! Each event's digest is SHA-256 of a UEFI_VARIABLE_DATA: the variable's vendor GUID, the
//! length of its name (UTF-16 units) and of its data (bytes) as little-endian u64, the
//! name in UTF-16LE without NUL, then the data; for an authority, the variable is `db` and
//! the data is the one EFI_SIGNATURE_DATA (owner GUID, then the certificate) that matched.
//!
//! So PCR 7 is a function of the device's firmware variables and of which certificate
//! signed what it booted: a device whose firmware holds other keys, or verified its boot
//! loader with another certificate, has another value.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::pe::authenticode;
use super::run::run;

/// EFI_GLOBAL_VARIABLE: the vendor of `SecureBoot`, `PK` and `KEK`.
const GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// EFI_IMAGE_SECURITY_DATABASE_GUID: the vendor of `db` and `dbx`.
const IMAGE_SECURITY_DATABASE: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// EFI_CERT_X509_GUID: a signature list of X.509 certificates.
const CERT_X509: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
/// SignatureType, SignatureListSize, SignatureHeaderSize, SignatureSize.
const SIGNATURE_LIST_HEADER: usize = 16 + 4 + 4 + 4;

/// The Secure Boot variables of one firmware variable store, as the firmware measures
/// them (each an EFI_SIGNATURE_LIST sequence; empty when the variable is not set).
#[derive(Debug, Clone, Default)]
pub struct SecureBootVariables {
    pub pk: Vec<u8>,
    pub kek: Vec<u8>,
    pub db: Vec<u8>,
    pub dbx: Vec<u8>,
}

impl SecureBootVariables {
    /// Reads an EDK2 variable store file (such as a profile's `efi-vars.fd`) with
    /// `virt-fw-vars`, the tool that enrolled it.
    pub fn read(store: &Path) -> Result<Self> {
        let scratch = tempfile::tempdir()?;
        let json = scratch.path().join("vars.json");
        run(Command::new("virt-fw-vars")
            .arg("--input")
            .arg(store)
            .arg("--output-json")
            .arg(&json))
        .with_context(|| format!("reading the variable store {}", store.display()))?;
        let dump: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)
            .context("virt-fw-vars wrote JSON that does not parse")?;
        let mut vars = SecureBootVariables::default();
        for var in dump["variables"].as_array().into_iter().flatten() {
            let field = |key: &str| var[key].as_str().unwrap_or_default();
            let slot = match (field("name"), field("guid")) {
                ("PK", GLOBAL_VARIABLE) => &mut vars.pk,
                ("KEK", GLOBAL_VARIABLE) => &mut vars.kek,
                ("db", IMAGE_SECURITY_DATABASE) => &mut vars.db,
                ("dbx", IMAGE_SECURITY_DATABASE) => &mut vars.dbx,
                _ => continue,
            };
            *slot = hex::decode(field("data"))
                .with_context(|| format!("variable {} of {}", field("name"), store.display()))?;
        }
        Ok(vars)
    }

    /// The `db` entry that authorizes `signed` (a signed PE image): the X.509 entry whose
    /// certificate its Authenticode signature carries, as sbsign embeds the signer's.
    /// A db holding only a CA above the signer is not recognised.
    pub fn authority_for(&self, signed: &[u8]) -> Result<Vec<u8>> {
        let Some(signature) = authenticode::certificate_table(signed)? else {
            bail!("the image is not signed: no certificate table");
        };
        for entry in x509_entries(&self.db)? {
            let certificate = &entry[16..];
            if !certificate.is_empty()
                && signature
                    .windows(certificate.len())
                    .any(|w| w == certificate)
            {
                return Ok(entry.to_vec());
            }
        }
        bail!("no certificate in db signed the image")
    }
}

/// The EFI_SIGNATURE_DATA entries (owner GUID, then the certificate) of the X.509 lists
/// in a signature database.
fn x509_entries(database: &[u8]) -> Result<Vec<&[u8]>> {
    let x509 = guid_bytes(CERT_X509);
    let mut entries = Vec::new();
    let mut at = 0;
    while at < database.len() {
        let header = database
            .get(at..at + SIGNATURE_LIST_HEADER)
            .context("db: a signature list header runs past the end")?;
        let u32_at = |i: usize| {
            u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]) as usize
        };
        let (list_size, header_size, entry_size) = (u32_at(16), u32_at(20), u32_at(24));
        let end = at
            .checked_add(list_size)
            .filter(|&end| {
                end <= database.len() && list_size >= SIGNATURE_LIST_HEADER + header_size
            })
            .context("db: a signature list's size does not fit")?;
        if header[..16] == x509 {
            if entry_size < 16 {
                bail!("db: an X.509 list with {entry_size}-byte entries");
            }
            let first = at + SIGNATURE_LIST_HEADER + header_size;
            entries.extend(database[first..end].chunks_exact(entry_size));
        }
        at = end;
    }
    Ok(entries)
}

/// The SHA-256 PCR 7 value after the firmware measured `vars` with Secure Boot on and then
/// authorized EFI applications with `authorities` (db entries, in the order the
/// applications started; an entry already measured is not measured again).
pub fn pcr7_after_verification(vars: &SecureBootVariables, authorities: &[Vec<u8>]) -> [u8; 32] {
    use cairn_attest::event::extend;
    let mut pcr = [0u8; 32];
    let mut measure = |vendor: &str, name: &str, data: &[u8]| {
        pcr = extend(
            &pcr,
            &Sha256::digest(variable_data(vendor, name, data)).into(),
        );
    };
    measure(GLOBAL_VARIABLE, "SecureBoot", &[1]);
    measure(GLOBAL_VARIABLE, "PK", &vars.pk);
    measure(GLOBAL_VARIABLE, "KEK", &vars.kek);
    measure(IMAGE_SECURITY_DATABASE, "db", &vars.db);
    measure(IMAGE_SECURITY_DATABASE, "dbx", &vars.dbx);
    pcr = extend(&pcr, &Sha256::digest([0u8; 4]).into());
    let mut measured: Vec<&[u8]> = Vec::new();
    for authority in authorities {
        if !measured.contains(&authority.as_slice()) {
            pcr = extend(
                &pcr,
                &Sha256::digest(variable_data(IMAGE_SECURITY_DATABASE, "db", authority)).into(),
            );
            measured.push(authority);
        }
    }
    pcr
}

/// UEFI_VARIABLE_DATA, the event data of PCR 7's measurements.
fn variable_data(vendor: &str, name: &str, data: &[u8]) -> Vec<u8> {
    let name: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut out = guid_bytes(vendor).to_vec();
    out.extend_from_slice(&(name.len() as u64 / 2).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&name);
    out.extend_from_slice(data);
    out
}

/// A GUID in its textual form, in the byte order EFI stores it (the first three fields
/// little-endian).
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(hex).unwrap_or_default();
    let mut out = [0u8; 16];
    if raw.len() == 16 {
        out[..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
        out[4..6].copy_from_slice(&[raw[5], raw[4]]);
        out[6..8].copy_from_slice(&[raw[7], raw[6]]);
        out[8..].copy_from_slice(&raw[8..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One X.509 signature list holding `certs`, each owned by a fixed GUID.
    fn x509_list(certs: &[&[u8]]) -> Vec<u8> {
        let size = 16 + certs[0].len();
        let mut list = guid_bytes(CERT_X509).to_vec();
        list.extend_from_slice(
            &((SIGNATURE_LIST_HEADER + size * certs.len()) as u32).to_le_bytes(),
        );
        list.extend_from_slice(&0u32.to_le_bytes());
        list.extend_from_slice(&(size as u32).to_le_bytes());
        for cert in certs {
            list.extend_from_slice(&[0x5b; 16]);
            list.extend_from_slice(cert);
        }
        list
    }

    #[test]
    fn guids_are_stored_with_their_first_fields_little_endian() {
        assert_eq!(
            guid_bytes(GLOBAL_VARIABLE),
            [
                0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
                0x2b, 0x8c
            ]
        );
    }

    #[test]
    fn x509_entries_are_found_in_every_list_and_bad_sizes_refused() {
        let mut db = x509_list(&[b"cert-one", b"cert-two"]);
        db.extend(x509_list(&[b"third-certificate"]));
        let entries = x509_entries(&db).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(&entries[2][16..], b"third-certificate");
        let mut cut = db.clone();
        cut.truncate(db.len() - 1);
        assert!(x509_entries(&cut).is_err());
    }

    #[test]
    fn each_authority_is_measured_once_and_every_variable_counts() {
        let vars = SecureBootVariables {
            pk: x509_list(&[b"pk"]),
            kek: x509_list(&[b"kek"]),
            db: x509_list(&[b"db"]),
            dbx: Vec::new(),
        };
        let db_entry = x509_entries(&vars.db).unwrap()[0].to_vec();
        let once = pcr7_after_verification(&vars, std::slice::from_ref(&db_entry));
        assert_eq!(
            pcr7_after_verification(&vars, &[db_entry.clone(), db_entry.clone()]),
            once
        );
        assert_ne!(pcr7_after_verification(&vars, &[]), once);
        let other_kek = SecureBootVariables {
            kek: x509_list(&[b"KEK"]),
            ..vars.clone()
        };
        assert_ne!(pcr7_after_verification(&other_kek, &[db_entry]), once);
    }
}
