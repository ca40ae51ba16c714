//! The device's CPU architecture, as a profile names it (`debian.architecture`), and what
//! each part of the build derives from it: the Rust target the workspace's binaries are
//! built for, the multiarch library directory, where the dynamic loader lives, how a
//! device binary runs on the build machine, and the EFI names of the boot files.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Arm64,
    Amd64,
}

impl Arch {
    /// From Debian's architecture name (`arm64`, `amd64`).
    pub fn from_debian(name: &str) -> Result<Arch> {
        match name {
            "arm64" => Ok(Arch::Arm64),
            "amd64" => Ok(Arch::Amd64),
            other => bail!("debian.architecture {other:?}: Cairn builds arm64 and amd64 images"),
        }
    }

    pub fn debian(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Amd64 => "amd64",
        }
    }

    /// The Rust target of the device's binaries.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
        }
    }

    /// Debian's multiarch triplet: libraries live in `lib/<triplet>` and `usr/lib/<triplet>`.
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64-linux-gnu",
            Arch::Amd64 => "x86_64-linux-gnu",
        }
    }

    /// The directory glibc's program interpreter is looked up in (`PT_INTERP`):
    /// `/lib/ld-linux-aarch64.so.1`, `/lib64/ld-linux-x86-64.so.2`.
    pub fn interpreter_dir(self) -> &'static str {
        match self {
            Arch::Arm64 => "lib",
            Arch::Amd64 => "lib64",
        }
    }

    /// The program that runs one of the device's static binaries on the build machine
    /// (an x86_64 host), or none when it runs directly.
    pub fn user_emulator(self) -> Option<&'static str> {
        match self {
            Arch::Arm64 => Some("qemu-aarch64-static"),
            Arch::Amd64 => None,
        }
    }

    /// The architecture's name in EFI file names: `BOOTAA64.EFI`, `linuxx64.efi.stub`.
    pub fn efi(self) -> &'static str {
        match self {
            Arch::Arm64 => "aa64",
            Arch::Amd64 => "x64",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_supported_architectures_parse() {
        assert_eq!(Arch::from_debian("arm64").unwrap(), Arch::Arm64);
        assert_eq!(
            Arch::from_debian("amd64").unwrap().triplet(),
            "x86_64-linux-gnu"
        );
        let err = Arch::from_debian("riscv64").unwrap_err().to_string();
        assert!(err.contains("riscv64"), "{err}");
    }
}
