//! The Authenticode digest of a PE image: the hash a signature signs, and the one UEFI
//! firmware extends into PCR 4 for each EFI application it starts (an
//! `EV_EFI_BOOT_SERVICES_APPLICATION` event). Microsoft's "PE Format" specification,
//! "Calculating the PE Image Hash", as EDK2's measured-boot code implements it:
//!
//! 1. the headers up to `SizeOfHeaders`, without the `CheckSum` field and without the
//!    certificate table's data directory entry (both change when a file is signed);
//! 2. each section's raw data, in the order of their file offsets;
//! 3. whatever follows the sections, except the certificate table (the signature itself),
//!    which sbsign appends last.
//!
//! So a signature does not change the digest, and signing the same file again with
//! another key gives the same one.

use sha2::{Digest, Sha256};

use super::{read_u32, PeError, PeImage, CERTIFICATE_DIRECTORY};

/// Offset of `CheckSum` in the optional header (PE32 and PE32+ alike).
const CHECKSUM: usize = 64;
/// Offset of `NumberOfRvaAndSizes` in a PE32+ optional header; the data directories,
/// 8 bytes each, follow it.
const RVA_COUNT: usize = 108;

/// SHA-256 Authenticode digest of a PE32+ image, signed or not.
pub fn sha256(image: &[u8]) -> Result<[u8; 32], PeError> {
    let pe = PeImage::parse(image)?;
    let headers = pe.size_of_headers as usize;
    if headers > image.len() {
        return Err(PeError::Truncated("SizeOfHeaders"));
    }
    let checksum = pe.optional + CHECKSUM;
    let mut hash = Sha256::new();
    hash.update(&image[..checksum]);
    let rva_count = read_u32(image, pe.optional + RVA_COUNT, "NumberOfRvaAndSizes")? as usize;
    let mut certificate_size = 0u64;
    if rva_count > CERTIFICATE_DIRECTORY {
        let entry = pe.optional + RVA_COUNT + 4 + 8 * CERTIFICATE_DIRECTORY;
        if entry + 8 > headers {
            return Err(PeError::Truncated(
                "the certificate table's directory entry",
            ));
        }
        certificate_size = u64::from(read_u32(image, entry + 4, "certificate table size")?);
        hash.update(&image[checksum + 4..entry]);
        hash.update(&image[entry + 8..headers]);
    } else {
        hash.update(&image[checksum + 4..headers]);
    }
    let mut sections: Vec<_> = pe.sections().iter().filter(|s| s.raw_size > 0).collect();
    sections.sort_by_key(|s| s.raw_offset);
    let mut hashed = headers as u64;
    for s in sections {
        let start = s.raw_offset as usize;
        hash.update(&image[start..start + s.raw_size as usize]);
        hashed += u64::from(s.raw_size);
    }
    let len = image.len() as u64;
    if len > hashed {
        let rest = len
            .checked_sub(hashed + certificate_size)
            .ok_or(PeError::Truncated("the certificate table"))?;
        hash.update(&image[hashed as usize..(hashed + rest) as usize]);
    }
    Ok(hash.finalize().into())
}

/// The certificate table of a signed image (its WIN_CERTIFICATE entries: the Authenticode
/// signature with the signer's certificate), or `None` when the image is not signed.
pub fn certificate_table(image: &[u8]) -> Result<Option<&[u8]>, PeError> {
    let pe = PeImage::parse(image)?;
    let rva_count = read_u32(image, pe.optional + RVA_COUNT, "NumberOfRvaAndSizes")? as usize;
    if rva_count <= CERTIFICATE_DIRECTORY {
        return Ok(None);
    }
    let entry = pe.optional + RVA_COUNT + 4 + 8 * CERTIFICATE_DIRECTORY;
    // For this directory the "address" is a file offset, not an RVA.
    let offset = read_u32(image, entry, "certificate table offset")? as usize;
    let size = read_u32(image, entry + 4, "certificate table size")? as usize;
    if size == 0 {
        return Ok(None);
    }
    image
        .get(offset..offset.saturating_add(size))
        .map(Some)
        .ok_or(PeError::Truncated("the certificate table"))
}

#[cfg(test)]
mod tests {
    use super::super::minimal_image;
    use super::*;

    #[test]
    fn the_checksum_and_an_appended_signature_do_not_change_the_digest() {
        let image = minimal_image(&[(".text", b"code"), (".data", b"data")], 2);
        let digest = sha256(&image).unwrap();

        let mut summed = image.clone();
        let pe = PeImage::parse(&image).unwrap();
        summed[pe.optional + CHECKSUM] ^= 0xff;
        assert_eq!(sha256(&summed).unwrap(), digest, "CheckSum is skipped");

        // What sbsign does: a certificate table appended, its directory entry set.
        let mut signed = image.clone();
        let table = signed.len() as u32;
        signed.extend_from_slice(&[0x5a; 24]);
        let entry = pe.optional + RVA_COUNT + 4 + 8 * CERTIFICATE_DIRECTORY;
        signed[entry..entry + 4].copy_from_slice(&table.to_le_bytes());
        signed[entry + 4..entry + 8].copy_from_slice(&24u32.to_le_bytes());
        assert_eq!(sha256(&signed).unwrap(), digest, "the signature is skipped");
        assert_eq!(certificate_table(&signed).unwrap(), Some(&[0x5a; 24][..]));
        assert_eq!(certificate_table(&image).unwrap(), None);
    }

    #[test]
    fn every_section_byte_and_trailing_data_count() {
        let image = minimal_image(&[(".text", b"code"), (".data", b"data")], 2);
        let digest = sha256(&image).unwrap();
        let pe = PeImage::parse(&image).unwrap();
        let data = pe.section(".data").unwrap().raw_offset as usize;
        let mut changed = image.clone();
        changed[data] ^= 1;
        assert_ne!(sha256(&changed).unwrap(), digest);

        let mut trailing = image.clone();
        trailing.extend_from_slice(b"symbols");
        assert_ne!(sha256(&trailing).unwrap(), digest);
    }

    #[test]
    fn a_certificate_table_larger_than_the_file_is_an_error() {
        let mut image = minimal_image(&[(".text", b"code")], 1);
        image.extend_from_slice(&[0; 8]);
        let pe = PeImage::parse(&image).unwrap();
        let entry = pe.optional + RVA_COUNT + 4 + 8 * CERTIFICATE_DIRECTORY;
        image[entry + 4..entry + 8].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            sha256(&image),
            Err(PeError::Truncated("the certificate table"))
        );
    }
}
