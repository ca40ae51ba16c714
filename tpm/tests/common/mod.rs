//! Shared test set-up: a private swtpm per test, tpm2-tools, and log fixtures.
#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::process::{Command, Output};

use cairn_tpm::swtpm::{Swtpm, INSTALL_HINT};
use cairn_tpm::{EventKind, EventLog, Tpm};
use tempfile::TempDir;

pub struct TestTpm {
    pub swtpm: Swtpm,
    pub dir: TempDir,
}

impl TestTpm {
    /// A fresh swtpm with empty state.
    pub fn start() -> TestTpm {
        let dir = tempfile::tempdir().expect("temp dir");
        let swtpm = Swtpm::start(&dir.path().join("state"))
            .unwrap_or_else(|e| panic!("cannot start swtpm: {e}"));
        TestTpm { swtpm, dir }
    }

    pub fn open(&self) -> Tpm {
        Tpm::open(&self.swtpm.tcti()).expect("open swtpm")
    }

    /// Runs a tpm2-tools command against this swtpm (the caller's `Tpm` must be dropped:
    /// swtpm serves one connection at a time).
    pub fn tool(&self, tool: &str, args: &[&str]) -> Output {
        run_tool(tool, args, Some(&self.swtpm.tcti()))
    }

    /// Asserts no transient object or session was left in the TPM.
    pub fn assert_no_leftover_handles(&self) {
        for kind in [
            "handles-transient",
            "handles-loaded-session",
            "handles-saved-session",
        ] {
            let out = self.tool("tpm2_getcap", &[kind]);
            assert!(out.status.success(), "tpm2_getcap {kind}: {out:?}");
            let listed = String::from_utf8_lossy(&out.stdout);
            assert!(listed.trim().is_empty(), "{kind} left behind: {listed}");
        }
    }
}

pub fn run_tool(tool: &str, args: &[&str], tcti: Option<&str>) -> Output {
    let mut cmd = Command::new(tool);
    cairn_tpm::swtpm::close_inherited_fds(&mut cmd);
    cmd.args(args);
    if let Some(tcti) = tcti {
        cmd.env("TPM2TOOLS_TCTI", tcti);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}\ninstall: {INSTALL_HINT}"))
}

pub const ROOT: &str = "7d2a8c1e5f3b9a0d4c6e8f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";
pub const KERNEL: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const INITRD: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// Measures the four boot events as the initramfs would.
pub fn measure_boot(tpm: &mut Tpm, slot: &str) -> EventLog {
    let mut log = EventLog::new();
    for (kind, value) in [
        (EventKind::Slot, slot),
        (EventKind::RootfsVerityRoot, ROOT),
        (EventKind::Kernel, KERNEL),
        (EventKind::Initrd, INITRD),
    ] {
        tpm.measure(&mut log, kind, value).expect("measure");
    }
    log
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write fixture");
    path.display().to_string()
}

pub fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; 32];
    getrandom::getrandom(&mut n).expect("random nonce");
    n
}
