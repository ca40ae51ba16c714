//! The little of the PE/COFF format (Microsoft's "PE Format" specification) that building
//! a unified kernel image needs: read a PE32+ image's section table, and append
//! initialised-data sections to it.
//!
//! Appending never moves what is already there: the new section headers go into the slack
//! between the section table and the first section's data (`SizeOfHeaders`), and the new
//! sections' data after the last byte of the file. An image without that slack, or with
//! anything after its last section (an Authenticode signature, a symbol table), is refused
//! rather than rewritten: systemd's stub has room for far more sections than a UKI adds,
//! and a stub that is already signed must not be extended (its signature would no longer
//! cover it).

use thiserror::Error;

pub mod authenticode;

/// What is wrong with a PE image, named by the field at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    NotPe(&'static str),
    #[error("PE image is truncated: {0} lies beyond the end of the file")]
    Truncated(&'static str),
    #[error("PE image is PE32 (magic {0:#x}); only PE32+ images are supported")]
    NotPe32Plus(u16),
    #[error("PE image already has a section named {0}")]
    DuplicateSection(String),
    #[error("section name {0:?} is longer than 8 bytes")]
    NameTooLong(String),
    #[error("PE headers have room for {room} more section headers, {wanted} are needed")]
    NoHeaderRoom { room: usize, wanted: usize },
    #[error("PE image has {0} bytes after its last section (a signature or symbol table); use an unsigned stub")]
    TrailingData(u64),
    #[error("PE image is signed (its certificate table is not empty); use an unsigned stub")]
    Signed,
    #[error("{0} does not fit the PE format's 32-bit fields")]
    TooLarge(&'static str),
}

const SECTION_HEADER_LEN: usize = 40;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`: what ukify gives UKI sections.
const DATA_SECTION: u32 = 0x0000_0040 | 0x4000_0000;
/// The certificate table is data directory 4 of the optional header.
const CERTIFICATE_DIRECTORY: usize = 4;

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Bytes the section occupies once loaded; beyond `raw_size` they are zero.
    pub virtual_size: u32,
    pub virtual_address: u32,
    /// Bytes of the section in the file, a multiple of the file alignment.
    pub raw_size: u32,
    pub raw_offset: u32,
}

/// The parsed headers of a PE32+ image.
#[derive(Debug, Clone)]
pub struct PeImage {
    /// Offset of the COFF file header (just after the "PE\0\0" signature).
    coff: usize,
    /// Offset of the optional header.
    optional: usize,
    section_alignment: u32,
    file_alignment: u32,
    size_of_headers: u32,
    sections: Vec<Section>,
}

fn read_u16(bytes: &[u8], at: usize, what: &'static str) -> Result<u16, PeError> {
    let b = bytes.get(at..at + 2).ok_or(PeError::Truncated(what))?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize, what: &'static str) -> Result<u32, PeError> {
    let b = bytes.get(at..at + 4).ok_or(PeError::Truncated(what))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn align_up(value: u64, alignment: u32) -> u64 {
    let a = u64::from(alignment.max(1));
    value.div_ceil(a) * a
}

impl PeImage {
    /// Reads the headers and section table; every offset is checked against the file.
    pub fn parse(bytes: &[u8]) -> Result<Self, PeError> {
        if bytes.get(0..2) != Some(b"MZ") {
            return Err(PeError::NotPe("no MZ signature"));
        }
        let pe = read_u32(bytes, 0x3c, "e_lfanew")? as usize;
        if bytes.get(pe..pe + 4) != Some(b"PE\0\0") {
            return Err(PeError::NotPe("no PE signature at e_lfanew"));
        }
        let coff = pe + 4;
        let section_count = read_u16(bytes, coff + 2, "NumberOfSections")? as usize;
        let optional_len = read_u16(bytes, coff + 16, "SizeOfOptionalHeader")? as usize;
        let optional = coff + 20;
        let magic = read_u16(bytes, optional, "optional header magic")?;
        if magic != 0x20b {
            return Err(PeError::NotPe32Plus(magic));
        }
        let section_alignment = read_u32(bytes, optional + 32, "SectionAlignment")?;
        let file_alignment = read_u32(bytes, optional + 36, "FileAlignment")?;
        let size_of_headers = read_u32(bytes, optional + 60, "SizeOfHeaders")?;
        let table = optional + optional_len;
        let mut sections = Vec::with_capacity(section_count);
        for i in 0..section_count {
            let at = table + i * SECTION_HEADER_LEN;
            let raw_name = bytes
                .get(at..at + 8)
                .ok_or(PeError::Truncated("section table"))?;
            let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
            let section = Section {
                name: String::from_utf8_lossy(&raw_name[..name_len]).into_owned(),
                virtual_size: read_u32(bytes, at + 8, "section VirtualSize")?,
                virtual_address: read_u32(bytes, at + 12, "section VirtualAddress")?,
                raw_size: read_u32(bytes, at + 16, "section SizeOfRawData")?,
                raw_offset: read_u32(bytes, at + 20, "section PointerToRawData")?,
            };
            let end = u64::from(section.raw_offset) + u64::from(section.raw_size);
            if end > bytes.len() as u64 {
                return Err(PeError::Truncated("a section's raw data"));
            }
            sections.push(section);
        }
        Ok(Self {
            coff,
            optional,
            section_alignment,
            file_alignment,
            size_of_headers,
            sections,
        })
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section's bytes as they are once loaded: `virtual_size` bytes, the part beyond
    /// the file's raw data zero-filled (what the firmware's loader does).
    pub fn loaded_bytes(&self, bytes: &[u8], section: &Section) -> Vec<u8> {
        let start = section.raw_offset as usize;
        let in_file = section.raw_size.min(section.virtual_size) as usize;
        let mut data = bytes[start..start + in_file].to_vec();
        data.resize(section.virtual_size as usize, 0);
        data
    }

    fn table_offset(&self, bytes: &[u8]) -> Result<usize, PeError> {
        let optional_len = read_u16(bytes, self.coff + 16, "SizeOfOptionalHeader")? as usize;
        Ok(self.optional + optional_len)
    }
}

/// Returns `stub` with `sections` appended in the given order, each as initialised,
/// read-only data at the next section-aligned address. Deterministic: the same inputs give
/// the same bytes (nothing is timestamped; the stub's own header fields are kept).
pub fn append_sections(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, PeError> {
    let image = PeImage::parse(stub)?;
    let directories = read_u32(stub, image.optional + 108, "NumberOfRvaAndSizes")? as usize;
    if directories > CERTIFICATE_DIRECTORY {
        let cert_dir = image.optional + 112 + CERTIFICATE_DIRECTORY * 8;
        if read_u32(stub, cert_dir + 4, "certificate table size")? != 0 {
            return Err(PeError::Signed);
        }
    }
    let data_end = image
        .sections
        .iter()
        .map(|s| u64::from(s.raw_offset) + u64::from(s.raw_size))
        .max()
        .unwrap_or(u64::from(image.size_of_headers));
    if (stub.len() as u64) > data_end {
        return Err(PeError::TrailingData(stub.len() as u64 - data_end));
    }
    for (name, _) in sections {
        if name.len() > 8 {
            return Err(PeError::NameTooLong((*name).to_owned()));
        }
        if image.section(name).is_some() {
            return Err(PeError::DuplicateSection((*name).to_owned()));
        }
    }
    let table = image.table_offset(stub)?;
    let table_end = table + image.sections.len() * SECTION_HEADER_LEN;
    let first_data = image
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset)
        .min()
        .unwrap_or(image.size_of_headers)
        .min(image.size_of_headers) as usize;
    let room = first_data.saturating_sub(table_end) / SECTION_HEADER_LEN;
    if room < sections.len() {
        return Err(PeError::NoHeaderRoom {
            room,
            wanted: sections.len(),
        });
    }

    let mut out = stub.to_vec();
    let mut next_va = image
        .sections
        .iter()
        .map(|s| {
            align_up(
                u64::from(s.virtual_address) + u64::from(s.virtual_size),
                image.section_alignment,
            )
        })
        .max()
        .unwrap_or(u64::from(image.size_of_headers));
    for (i, (name, data)) in sections.iter().enumerate() {
        let raw_offset = align_up(out.len() as u64, image.file_alignment);
        let raw_size = align_up(data.len() as u64, image.file_alignment);
        let header = table_end + i * SECTION_HEADER_LEN;
        let mut name_field = [0u8; 8];
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        out[header..header + 8].copy_from_slice(&name_field);
        write_u32(
            &mut out,
            header + 8,
            fits(data.len() as u64, "a section's size")?,
        );
        write_u32(
            &mut out,
            header + 12,
            fits(next_va, "the image's virtual size")?,
        );
        write_u32(
            &mut out,
            header + 16,
            fits(raw_size, "a section's file size")?,
        );
        write_u32(&mut out, header + 20, fits(raw_offset, "the file's size")?);
        out[header + 24..header + 36].fill(0);
        write_u32(&mut out, header + 36, DATA_SECTION);
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(data);
        out.resize((raw_offset + raw_size) as usize, 0);
        next_va = align_up(next_va + data.len() as u64, image.section_alignment);
    }
    let count = image.sections.len() + sections.len();
    write_u16(
        &mut out,
        image.coff + 2,
        u16::try_from(count).map_err(|_| PeError::TooLarge("the section count"))?,
    );
    write_u32(&mut out, image.optional + 56, fits(next_va, "SizeOfImage")?);
    // The checksum is not checked by UEFI loaders; it would be stale now, so clear it.
    write_u32(&mut out, image.optional + 64, 0);
    Ok(out)
}

fn fits(value: u64, what: &'static str) -> Result<u32, PeError> {
    u32::try_from(value).map_err(|_| PeError::TooLarge(what))
}

/// A minimal PE32+ image, for tests of code that reads or extends PE images: `sections`
/// (name, data) laid out as a linker would, with `header_room` free section-header slots
/// after them. It has no entry point and runs nowhere.
pub fn minimal_image(sections: &[(&str, &[u8])], header_room: usize) -> Vec<u8> {
    const PE: usize = 0x40;
    let table = PE + 4 + 20 + 240;
    let headers_end = table + (sections.len() + header_room) * SECTION_HEADER_LEN;
    let size_of_headers = align_up(headers_end as u64, 0x200) as usize;
    let mut out = vec![0u8; size_of_headers];
    out[0..2].copy_from_slice(b"MZ");
    write_u32(&mut out, 0x3c, PE as u32);
    out[PE..PE + 4].copy_from_slice(b"PE\0\0");
    let coff = PE + 4;
    write_u16(&mut out, coff, 0x8664);
    write_u16(&mut out, coff + 2, sections.len() as u16);
    write_u16(&mut out, coff + 16, 240);
    let optional = coff + 20;
    write_u16(&mut out, optional, 0x20b);
    write_u32(&mut out, optional + 32, 0x1000);
    write_u32(&mut out, optional + 36, 0x200);
    write_u32(&mut out, optional + 60, size_of_headers as u32);
    write_u32(&mut out, optional + 108, 16);
    let mut va = 0x1000u64;
    for (i, (name, data)) in sections.iter().enumerate() {
        let header = table + i * SECTION_HEADER_LEN;
        let raw_offset = out.len();
        let raw_size = align_up(data.len() as u64, 0x200) as usize;
        out[header..header + name.len()].copy_from_slice(name.as_bytes());
        write_u32(&mut out, header + 8, data.len() as u32);
        write_u32(&mut out, header + 12, va as u32);
        write_u32(&mut out, header + 16, raw_size as u32);
        write_u32(&mut out, header + 20, raw_offset as u32);
        out.extend_from_slice(data);
        out.resize(raw_offset + raw_size, 0);
        va = align_up(va + data.len() as u64, 0x1000);
    }
    write_u32(&mut out, optional + 56, va as u32);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub() -> Vec<u8> {
        minimal_image(
            &[
                (".text", &[0xc3; 0x30]),
                (".sdmagic", b"#### LoaderInfo: test ####"),
            ],
            8,
        )
    }

    #[test]
    fn appended_sections_read_back_in_order_aligned_and_after_everything() {
        let stub = stub();
        let kernel = vec![7u8; 5000];
        let out =
            append_sections(&stub, &[(".osrel", b"ID=cairn\n"), (".linux", &kernel)]).unwrap();
        let image = PeImage::parse(&out).unwrap();
        let names: Vec<&str> = image.sections().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".sdmagic", ".osrel", ".linux"]);
        let linux = image.section(".linux").unwrap();
        assert_eq!(image.loaded_bytes(&out, linux), kernel);
        assert_eq!(linux.virtual_size, 5000);
        assert_eq!(linux.raw_offset % 0x200, 0);
        assert_eq!(linux.virtual_address % 0x1000, 0);
        let osrel = image.section(".osrel").unwrap();
        assert_eq!(
            osrel.virtual_address, 0x3000,
            "the first free page after .sdmagic"
        );
        assert!(linux.virtual_address >= osrel.virtual_address + osrel.virtual_size);
        let size_of_image = read_u32(&out, image.optional + 56, "").unwrap();
        assert_eq!(
            u64::from(size_of_image),
            align_up(u64::from(linux.virtual_address) + 5000, 0x1000)
        );
        // The stub's own bytes are untouched but for the header fields that must change.
        assert_eq!(&out[0x400..stub.len()], &stub[0x400..]);
        assert_eq!(
            out,
            append_sections(&stub, &[(".osrel", b"ID=cairn\n"), (".linux", &kernel)]).unwrap()
        );
    }

    #[test]
    fn loaded_bytes_are_zero_filled_past_the_raw_data() {
        let image_bytes = stub();
        let image = PeImage::parse(&image_bytes).unwrap();
        let mut text = image.section(".text").unwrap().clone();
        text.virtual_size = 0x300;
        let loaded = image.loaded_bytes(&image_bytes, &text);
        assert_eq!(loaded.len(), 0x300);
        assert!(loaded[0x200..].iter().all(|&b| b == 0));
    }

    #[test]
    fn images_that_cannot_be_extended_in_place_are_refused() {
        let stub = stub();
        assert_eq!(
            PeImage::parse(b"ELF").unwrap_err(),
            PeError::NotPe("no MZ signature")
        );
        assert_eq!(
            PeImage::parse(&stub[..0x100]).unwrap_err(),
            PeError::Truncated("section table")
        );

        let mut signed = stub.clone();
        let optional = 0x40 + 4 + 20;
        write_u32(&mut signed, optional + 112 + 4 * 8 + 4, 0x800);
        assert_eq!(
            append_sections(&signed, &[(".osrel", b"x")]).unwrap_err(),
            PeError::Signed
        );

        let mut trailing = stub.clone();
        trailing.extend_from_slice(&[1; 16]);
        assert_eq!(
            append_sections(&trailing, &[(".osrel", b"x")]).unwrap_err(),
            PeError::TrailingData(16)
        );

        let full = minimal_image(&[(".text", &[0xc3; 16])], 0);
        // One header slot fits in the padding up to the file alignment; ask for more.
        let many: Vec<(&str, &[u8])> = [".a", ".b", ".c", ".d", ".e", ".f", ".g", ".h"]
            .iter()
            .map(|n| (*n, &b"x"[..]))
            .collect();
        assert!(matches!(
            append_sections(&full, &many).unwrap_err(),
            PeError::NoHeaderRoom { .. }
        ));

        assert_eq!(
            append_sections(&stub, &[(".sdmagic", b"x")]).unwrap_err(),
            PeError::DuplicateSection(".sdmagic".into())
        );
        assert_eq!(
            append_sections(&stub, &[(".toolongname", b"x")]).unwrap_err(),
            PeError::NameTooLong(".toolongname".into())
        );
    }
}
