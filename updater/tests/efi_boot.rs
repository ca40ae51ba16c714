//! The `efi` boot-state backend (docs/UEFI.md) with the real `cairn` and `cairnd`: a
//! bundle's `uki` image is written to the slot's staged name on the ESP, arming the trial
//! renames it into a counted systemd-boot entry, and commit and rollback are renames and
//! removals there. systemd-boot's part of a reboot (start the first entry, one try counted
//! down in its name) is played by `Device::reboot`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use cairn_boot::efi_entries::EntrySet;
use cairn_boot::EfiEntryStore;
use cairn_bundle::SigningKey;
use cairn_testkit::{
    bundle_spec, copy_key, delta_sources, image_inputs, in_days, new_key, sign_bundle,
    slot_image_bytes, DeviceDir, SlotImages,
};
use cairn_updater::bootstate::SlotId;

const SLOT_SIZE: u64 = 8 << 20;

struct Device {
    _dir: tempfile::TempDir,
    layout: DeviceDir,
    key: SigningKey,
    boots: u32,
}

impl Device {
    /// Slot A committed from the factory: its rootfs and its UKI as `cairn-1-a.efi`.
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key();
        let layout = DeviceDir::create(dir.path(), &key, "1.0.0");
        let d = Device {
            _dir: dir,
            layout,
            key,
            boots: 0,
        };
        for slot in ["a", "b"] {
            fs::File::create(d.path(&format!("dev/rootfs-{slot}")))
                .unwrap()
                .set_len(SLOT_SIZE)
                .unwrap();
        }
        fs::create_dir_all(d.entries()).unwrap();
        fs::write(d.entries().join("cairn-1-a.efi"), uki("1.0.0")).unwrap();
        let root = d.layout.root().display().to_string();
        // The test kit's system.toml, with the efi backend and a `uki` image per slot.
        let mut toml = d
            .layout
            .system_toml("cairn-test", SlotImages::Rootfs)
            .replace(
                &format!("backend = \"uboot-env\"\ndir = \"{root}/boot\""),
                &format!("backend = \"efi\"\nesp = \"{root}/esp\""),
            );
        for slot in ["a", "b"] {
            let staged = EfiEntryStore::new(d.path("esp")).staged_path(slot_id(slot));
            toml = toml.replace(
                &format!("rootfs = {{ device = \"{root}/dev/rootfs-{slot}\" }}\n"),
                &format!(
                    "rootfs = {{ device = \"{root}/dev/rootfs-{slot}\" }}\nuki = {{ file = \"{}\" }}\n",
                    staged.display()
                ),
            );
        }
        assert!(
            toml.contains("backend = \"efi\"") && toml.matches("uki = ").count() == 2,
            "{toml}"
        );
        fs::write(d.layout.config(), toml).unwrap();
        d.layout.write_cmdline("A", false);
        d.layout.write_boot_id(0);
        d
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.layout.path(rel)
    }

    fn entries(&self) -> PathBuf {
        self.path("esp/EFI/Linux")
    }

    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.entries())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn bundle(&self, version: &str, seed: u8) -> PathBuf {
        self.bundle_from(version, seed, None)
    }

    /// A bundle whose `uki` also comes as a delta from the UKI of `from`.
    fn bundle_from(&self, version: &str, seed: u8, from: Option<&str>) -> PathBuf {
        let build = self.path(&format!("build/{version}"));
        fs::create_dir_all(&build).unwrap();
        let rootfs = build.join("rootfs");
        fs::write(&rootfs, slot_image_bytes(2 << 20, seed)).unwrap();
        let uki_file = build.join("uki");
        fs::write(&uki_file, uki(version)).unwrap();
        let old_uki = build.join("old-uki");
        let mut sources = Vec::new();
        if let Some(from) = from {
            fs::write(&old_uki, uki(from)).unwrap();
            sources.push(("uki", old_uki.as_path()));
        }
        let spec = cairn_bundle::writer::BundleSpec {
            expires: in_days(10),
            images: image_inputs(&[("rootfs", rootfs.as_path()), ("uki", uki_file.as_path())]),
            delta_sources: delta_sources(&sources),
            ..bundle_spec("cairn-test", version)
        };
        let out = self.path(&format!("build/{version}.cairn"));
        sign_bundle(&spec, &[&copy_key(&self.key)], &out);
        out
    }

    /// systemd-boot at power-on: starts the first entry, counting a try down first.
    fn reboot(&mut self) -> SlotId {
        let set = EntrySet::from_file_names(self.listing());
        let next = set.next_boot().expect("an entry to boot");
        if next.counter.is_some() {
            let dir = self.entries();
            let counted = next.after_one_try();
            fs::rename(dir.join(next.file_name()), dir.join(counted.file_name())).unwrap();
        }
        self.boots += 1;
        self.layout.write_cmdline(&next.slot.to_string(), false);
        self.layout.write_boot_id(self.boots);
        next.slot
    }

    fn cairn(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--config")
            .arg(self.layout.config())
            .args(args)
            .output()
            .unwrap()
    }

    fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(
            out.status.success(),
            "cairn {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn cairnd_once(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_cairnd"))
            .arg("--config")
            .arg(self.layout.config())
            .arg("--once")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairnd --once:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn phase(&self) -> String {
        let status: serde_json::Value =
            serde_json::from_str(&self.cairn_ok(&["status", "--json"])).unwrap();
        status["phase"]["phase"].as_str().unwrap().to_string()
    }
}

fn slot_id(slot: &str) -> SlotId {
    slot.parse().unwrap()
}

/// Stand-in UKI bytes for a release (the real ones are tested under QEMU, tests/qemu).
fn uki(version: &str) -> Vec<u8> {
    let mut bytes = b"MZ unified kernel image ".to_vec();
    bytes.extend_from_slice(version.as_bytes());
    bytes.extend(slot_image_bytes(64 << 10, version.len() as u8));
    bytes
}

#[test]
fn an_update_installs_the_uki_as_a_trial_entry_and_commit_blesses_it() {
    let mut d = Device::new();
    let bundle = d.bundle("2.0.0", 7);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    assert_eq!(d.listing(), ["cairn-1-a.efi", "cairn-2-b+1-0.efi"]);
    assert_eq!(
        fs::read(d.entries().join("cairn-2-b+1-0.efi")).unwrap(),
        uki("2.0.0")
    );
    assert_eq!(d.phase(), "installed-pending");

    assert_eq!(d.reboot(), SlotId::B);
    assert_eq!(d.listing(), ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
    d.cairnd_once();
    assert_eq!(d.phase(), "committed");
    assert_eq!(d.listing(), ["cairn-1-a.efi", "cairn-2-b.efi"]);
    assert_eq!(
        d.reboot(),
        SlotId::B,
        "the committed entry boots from now on"
    );

    // The next update goes to A: its old entry goes first, then the new one is armed.
    let bundle = d.bundle("3.0.0", 9);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    assert_eq!(d.listing(), ["cairn-2-b.efi", "cairn-3-a+1-0.efi"]);
}

#[test]
fn a_failing_trial_loses_its_entry_and_the_committed_slot_boots() {
    let mut d = Device::new();
    fs::write(
        d.path("etc/cairn/health.d/app.toml"),
        "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    )
    .unwrap();
    let bundle = d.bundle("2.0.0", 7);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    d.cairnd_once();
    assert_eq!(d.phase(), "rolled-back");
    assert_eq!(d.listing(), ["cairn-1-a.efi"]);
    assert_eq!(d.reboot(), SlotId::A);
    d.cairnd_once();
    assert_eq!(d.phase(), "rolled-back");
}

#[test]
fn a_trial_that_never_reached_cairnd_gets_another_trial_boot() {
    let mut d = Device::new();
    let bundle = d.bundle("2.0.0", 7);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    // The kernel hung before cairnd started: the next power-on takes the committed slot.
    assert_eq!(d.reboot(), SlotId::A);
    d.cairnd_once();
    // cairnd gives the update another trial boot ([health] trial_boots): the entry the
    // first one left bad is armed again, as a trial of the next generation.
    assert_eq!(d.phase(), "installed-pending");
    assert_eq!(d.listing(), ["cairn-1-a.efi", "cairn-3-b+1-0.efi"]);
    assert_eq!(d.reboot(), SlotId::B);
    d.cairnd_once();
    assert_eq!(d.phase(), "committed");
    assert_eq!(d.listing(), ["cairn-1-a.efi", "cairn-3-b.efi"]);
}

/// The running slot's UKI is its entry, not the staged file it was written as: a delta
/// for the next UKI applies to the entry.
#[test]
fn a_uki_delta_applies_to_the_running_slots_entry() {
    let mut d = Device::new();
    d.cairn_ok(&["install", d.bundle("2.0.0", 7).to_str().unwrap()]);
    d.reboot();
    d.cairnd_once();
    assert_eq!(d.listing(), ["cairn-1-a.efi", "cairn-2-b.efi"]);
    let bundle = d.bundle_from("3.0.0", 9, Some("2.0.0"));
    let out = d.cairn(&["install", bundle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("uki: writing") && stderr.contains("block-bsdiff payload"),
        "{stderr}"
    );
    assert_eq!(d.listing(), ["cairn-2-b.efi", "cairn-3-a+1-0.efi"]);
    assert_eq!(
        fs::read(d.entries().join("cairn-3-a+1-0.efi")).unwrap(),
        uki("3.0.0")
    );
}
