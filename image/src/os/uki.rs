//! Unified kernel images (UKIs): systemd's EFI stub with the kernel, the initramfs, the
//! kernel command line, os-release and the kernel release appended as PE sections
//! (systemd's "Unified Kernel Image" specification, `docs/UEFI.md`), and the PCR 11 value
//! the stub will leave when it boots one.
//!
//! Why PCR 11 can be computed here: before it starts the kernel, systemd-stub (254)
//! measures each of its known sections that the image has, in one fixed order
//! ([`MEASURED_SECTIONS`], not the order in the file), into PCR 11: first the section's
//! name with its terminating NUL, then the section's loaded bytes. Each measurement is a
//! TPM extend, `PCR = SHA-256(PCR || SHA-256(bytes))`, starting from 32 zero bytes. The
//! stub itself, the firmware and the signature play no part, so the value is a function
//! of the UKI's sections alone: a kernel, initramfs or command line that differs by one
//! byte gives another value. `systemd-measure calculate` implements the same rule; a test
//! checks ours against it.

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::pe::{self, PeError, PeImage};

/// The sections systemd-stub 254 measures into PCR 11, in the order it measures them
/// (`.pcrsig`, which holds signatures over PCR 11 itself, is never measured).
pub const MEASURED_SECTIONS: [&str; 9] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey",
];

#[derive(Debug, Error)]
pub enum UkiError {
    #[error("EFI stub: {0}")]
    Stub(PeError),
    #[error("unified kernel image: {0}")]
    Image(PeError),
    #[error("the EFI stub has no .sdmagic section: it is not systemd-stub")]
    NotSystemdStub,
    #[error("unified kernel image has no {0} section")]
    MissingSection(&'static str),
    #[error("the kernel command line must be one line, without NUL, CR or LF")]
    BadCmdline,
    #[error("the UKI's os-release sets {0}: systemd-boot would then order entries by version instead of by Cairn's generation (docs/UEFI.md)")]
    SortKeyInOsRelease(&'static str),
}

/// What goes into one slot's UKI.
pub struct UkiParts<'a> {
    /// The kernel (an EFI-stub kernel image: bzImage on x86_64, Image on arm64).
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
    /// The whole kernel command line: with Secure Boot on, the stub ignores any other.
    pub cmdline: &'a str,
    /// os-release of the release, so boot menus and `bootctl` name the entry. Without
    /// `ID` and `IMAGE_ID`: either would give the entry a sort key, and systemd-boot
    /// would order by version rather than by the file name Cairn counts on.
    pub os_release: &'a str,
    /// `uname -r` of the kernel.
    pub uname: &'a str,
}

/// Builds the UKI: `stub` with `.osrel`, `.cmdline`, `.uname`, `.initrd` and `.linux`
/// appended in that order (ukify's order: the kernel last). Deterministic.
pub fn build(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>, UkiError> {
    let image = PeImage::parse(stub).map_err(UkiError::Stub)?;
    if image.section(".sdmagic").is_none() {
        return Err(UkiError::NotSystemdStub);
    }
    if parts
        .cmdline
        .bytes()
        .any(|b| b == 0 || b == b'\n' || b == b'\r')
    {
        return Err(UkiError::BadCmdline);
    }
    let sections: [(&str, &[u8]); 5] = [
        (".osrel", parts.os_release.as_bytes()),
        (".cmdline", parts.cmdline.as_bytes()),
        (".uname", parts.uname.as_bytes()),
        (".initrd", parts.initrd),
        (".linux", parts.linux),
    ];
    pe::append_sections(stub, &sections).map_err(UkiError::Stub)
}

/// The SHA-256 PCR 11 value systemd-stub leaves after it measured `uki`.
pub fn pcr11_sha256(uki: &[u8]) -> Result<[u8; 32], UkiError> {
    let image = PeImage::parse(uki).map_err(UkiError::Image)?;
    if image.section(".linux").is_none() {
        return Err(UkiError::MissingSection(".linux"));
    }
    let mut pcr = [0u8; 32];
    for name in MEASURED_SECTIONS {
        let Some(section) = image.section(name) else {
            continue;
        };
        let mut name_with_nul = name.as_bytes().to_vec();
        name_with_nul.push(0);
        extend(&mut pcr, &name_with_nul);
        extend(&mut pcr, &image.loaded_bytes(uki, section));
    }
    Ok(pcr)
}

/// The SHA-256 PCR 12 value after systemd-boot (254) started a UKI entry whose command
/// line is `cmdline`, before anything else extends PCR 12: systemd-boot passes the entry's
/// `.cmdline` to the stub as its load options and measures them first, as UTF-16LE with
/// the terminating NUL. The device's event log records that measurement as its first
/// event (`cairn_attest::EventKind::LoaderCmdline`, whose digest is this one), so the
/// log's replay from zeros comes to this value before cairnd's own events.
pub fn pcr12_after_systemd_boot(cmdline: &str) -> [u8; 32] {
    cairn_attest::event::extend(&[0; 32], &cairn_attest::loader_cmdline_digest(cmdline))
}

/// What UEFI firmware (EDK2's OVMF and AAVMF) measures into PCR 4 when it starts a boot
/// option, in order: the `EV_EFI_ACTION` string below, the `EV_SEPARATOR` that ends the
/// pre-boot measurements (four zero bytes), then the Authenticode digest
/// ([`pe::authenticode::sha256`]) of each EFI application loaded through the firmware.
pub const PCR4_BOOT_OPTION_ACTION: &str = "Calling EFI Application from Boot Option";

/// The SHA-256 PCR 4 value after the firmware started `applications` (Authenticode
/// digests, in load order: systemd-boot, then the UKI it chose) from a boot option.
/// systemd-stub starts the kernel inside the UKI without the firmware's loader checks, so
/// the kernel is not measured on its own. Firmware that also starts an option ROM, a shim
/// or a boot menu application adds events of its own; the QEMU chain tests check this
/// value on OVMF and AAVMF (docs/UEFI.md).
pub fn pcr4_after_firmware(applications: &[[u8; 32]]) -> [u8; 32] {
    use cairn_attest::event::extend as extend_digest;
    let mut pcr = [0u8; 32];
    pcr = extend_digest(&pcr, &Sha256::digest(PCR4_BOOT_OPTION_ACTION).into());
    pcr = extend_digest(&pcr, &Sha256::digest([0u8; 4]).into());
    for digest in applications {
        pcr = extend_digest(&pcr, digest);
    }
    pcr
}

fn extend(pcr: &mut [u8; 32], event: &[u8]) {
    let digest = Sha256::digest(event);
    let mut h = Sha256::new();
    h.update(*pcr);
    h.update(digest);
    *pcr = h.finalize().into();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::pe::minimal_image;

    fn stub() -> Vec<u8> {
        minimal_image(
            &[
                (".text", &[0xc3; 0x30]),
                (".sdmagic", b"#### LoaderInfo: test ####"),
                (".sbat", b"sbat,1\n"),
            ],
            8,
        )
    }

    fn parts<'a>(initrd: &'a [u8], cmdline: &'a str) -> UkiParts<'a> {
        UkiParts {
            linux: b"MZkernel",
            initrd,
            cmdline,
            os_release: "NAME=Cairn\n",
            uname: "6.1.0-test",
        }
    }

    /// The chain written out by hand, in the stub's measuring order (which is not the
    /// order of the sections in the file).
    fn expected_pcr11(sections: &[(&str, &[u8])]) -> [u8; 32] {
        let mut pcr = [0u8; 32];
        for (name, data) in sections {
            for event in [[name.as_bytes(), b"\0"].concat(), data.to_vec()] {
                let mut h = Sha256::new();
                h.update(pcr);
                h.update(Sha256::digest(&event));
                pcr = h.finalize().into();
            }
        }
        pcr
    }

    #[test]
    fn pcr11_measures_the_known_sections_in_the_stubs_order() {
        let uki = build(&stub(), &parts(b"initrd", "cairn.slot=a ro")).unwrap();
        let expected = expected_pcr11(&[
            (".linux", b"MZkernel"),
            (".osrel", b"NAME=Cairn\n"),
            (".cmdline", b"cairn.slot=a ro"),
            (".initrd", b"initrd"),
            (".uname", b"6.1.0-test"),
            (".sbat", b"sbat,1\n"),
        ]);
        assert_eq!(pcr11_sha256(&uki).unwrap(), expected);
    }

    #[test]
    fn one_byte_of_initrd_or_command_line_changes_pcr11() {
        let stub = stub();
        let base = pcr11_sha256(&build(&stub, &parts(b"initrd", "cairn.slot=a")).unwrap()).unwrap();
        let initrd =
            pcr11_sha256(&build(&stub, &parts(b"initrD", "cairn.slot=a")).unwrap()).unwrap();
        let cmdline =
            pcr11_sha256(&build(&stub, &parts(b"initrd", "cairn.slot=b")).unwrap()).unwrap();
        assert_ne!(base, initrd);
        assert_ne!(base, cmdline);
        assert_ne!(initrd, cmdline);
    }

    #[test]
    fn stubs_and_command_lines_that_are_not_fit_are_refused() {
        let plain = minimal_image(&[(".text", &[0xc3; 16])], 8);
        assert!(matches!(
            build(&plain, &parts(b"i", "x")),
            Err(UkiError::NotSystemdStub)
        ));
        assert!(matches!(
            build(&stub(), &parts(b"i", "a\nb")),
            Err(UkiError::BadCmdline)
        ));
        assert!(matches!(
            pcr11_sha256(&stub()),
            Err(UkiError::MissingSection(".linux"))
        ));
    }
}
