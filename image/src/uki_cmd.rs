//! `cairn-image uki`: build a unified kernel image from its parts, print the PCR 11 value
//! one leaves when systemd-stub boots it, and the Secure Boot side: the key hierarchy,
//! signing, and firmware variables that trust it (docs/UEFI.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_image::os::secureboot::{self, SecureBootKeys};
use cairn_image::os::uki::{self, UkiParts};
use clap::{Args, Subcommand};

use crate::keys_cmd::read;

#[derive(Subcommand)]
pub enum UkiCommand {
    /// Append kernel, initramfs, command line, os-release and kernel release to systemd's
    /// EFI stub (linuxx64.efi.stub / linuxaa64.efi.stub). The result is not signed.
    Build(BuildArgs),
    /// Print the SHA-256 PCR 11 value systemd-stub leaves after measuring this UKI.
    Pcr11 { uki: PathBuf },
    /// Make a Secure Boot key hierarchy (PK, KEK, db: DIR/{PK,KEK,db}.{crt,key}), or keep
    /// the one already in DIR.
    Keys {
        #[arg(long)]
        dir: PathBuf,
        /// Prefix of the certificates' common names.
        #[arg(long, default_value = "Cairn")]
        name: String,
    },
    /// Sign an EFI binary (a UKI, systemd-boot) with the db key of `--keys`, and check
    /// the signature.
    Sign {
        #[arg(long)]
        keys: PathBuf,
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a copy of a firmware variable store (OVMF_VARS*.fd, AAVMF_VARS*.fd) with the
    /// hierarchy in `--keys` enrolled and Secure Boot on.
    Enroll {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        template: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct BuildArgs {
    #[arg(long)]
    stub: PathBuf,
    #[arg(long)]
    linux: PathBuf,
    #[arg(long)]
    initrd: PathBuf,
    /// The kernel command line (text, one line).
    #[arg(long)]
    cmdline: String,
    #[arg(long)]
    os_release: PathBuf,
    /// The kernel's `uname -r`.
    #[arg(long)]
    uname: String,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: UkiCommand) -> Result<()> {
    match cmd {
        UkiCommand::Build(args) => {
            let os_release = String::from_utf8(read(&args.os_release)?)
                .with_context(|| format!("{} is not UTF-8", args.os_release.display()))?;
            let (linux, initrd) = (read(&args.linux)?, read(&args.initrd)?);
            let parts = UkiParts {
                linux: &linux,
                initrd: &initrd,
                cmdline: &args.cmdline,
                os_release: &os_release,
                uname: &args.uname,
            };
            let image = uki::build(&read(&args.stub)?, &parts)?;
            cairn_atomic::write(&args.out, &image)
                .with_context(|| format!("writing {}", args.out.display()))?;
            println!("{}: {} bytes", args.out.display(), image.len());
        }
        UkiCommand::Pcr11 { uki: path } => {
            let value = uki::pcr11_sha256(&read(&path)?)?;
            println!("11:sha256={}", hex::encode(value));
        }
        UkiCommand::Keys { dir, name } => {
            let keys = SecureBootKeys::ensure(&dir, &name)?;
            for pair in [&keys.pk, &keys.kek, &keys.db] {
                println!("{}", pair.cert.display());
            }
        }
        UkiCommand::Sign { keys, input, out } => {
            let db = SecureBootKeys::existing(&keys)?.db;
            secureboot::sign(&db, &input, &out)?;
            if !secureboot::verify(&db.cert, &out)? {
                bail!(
                    "{} does not verify against {}",
                    out.display(),
                    db.cert.display()
                );
            }
            println!("{}: signed by {}", out.display(), db.cert.display());
        }
        UkiCommand::Enroll {
            keys,
            template,
            out,
        } => {
            secureboot::enroll(&template, &SecureBootKeys::existing(&keys)?, &out)?;
            println!(
                "{}: Secure Boot on, keys from {}",
                out.display(),
                keys.display()
            );
        }
    }
    Ok(())
}
