//! A device in a temp dir: slots as files, a directory standing for the mounted boot
//! partition, the real `cairn`/`cairnd` binaries, and `boot()` playing U-Boot's part of
//! boot/BOOT-STATE.md so reboots can be simulated.
#![allow(dead_code)] // each test binary uses a different part

pub mod http;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use cairn_boot::{images, ImageRecord};
use cairn_bundle::writer::BundleSpec;
use cairn_bundle::SigningKey;
use cairn_testkit::{
    bundle_spec, copy_key, delta_sources, image_inputs, in_days, new_key, sign_bundle,
    slot_image_bytes, DeviceDir, SlotImages,
};
use cairn_updater::bootstate::{BootState, BootStateStore, SlotId, UbootEnvStore};

pub const SLOT_SIZE: u64 = 16 << 20;

pub struct Device {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    layout: DeviceDir,
    boots: u32,
}

pub struct Release {
    pub version: String,
    pub security_version: u64,
    pub rootfs: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
}

impl Release {
    pub fn new(version: &str, seed: u8) -> Release {
        let mut rootfs = slot_image_bytes(6 << 20, 1);
        // A "security update": a few regions change, most stay.
        for region in 0..seed as usize {
            let at = region * (1 << 20) + 4096;
            rootfs[at..at + 20_000]
                .copy_from_slice(&slot_image_bytes(20_000, seed.wrapping_add(region as u8)));
        }
        Release {
            version: version.into(),
            security_version: 1,
            rootfs,
            kernel: slot_image_bytes(512 << 10, 50 + seed),
            initrd: slot_image_bytes(256 << 10, 80 + seed),
        }
    }
}

impl Device {
    /// A freshly flashed device running `release` from slot A; slot B empty.
    pub fn new(release: &Release) -> Device {
        Device::with_key(release, new_key())
    }

    /// [`Device::new`] with the release key `key` (devices of one fleet share it).
    pub fn with_key(release: &Release, key: SigningKey) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let layout = DeviceDir::create(dir.path(), &key, &release.version);
        let d = Device {
            dir,
            key,
            layout,
            boots: 0,
        };
        for slot in ["a", "b"] {
            let f = fs::File::create(d.path(&format!("dev/rootfs-{slot}"))).unwrap();
            f.set_len(SLOT_SIZE).unwrap();
        }
        d.write_slot_a(release);
        fs::write(d.config(), d.config_text()).unwrap();
        let mut store = UbootEnvStore::new(d.path("boot"));
        store.store(&BootState::factory()).unwrap();
        d.set_booted(SlotId::A, false);
        d
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.layout.path(rel)
    }

    fn write_slot_a(&self, r: &Release) {
        let mut bytes = fs::read(self.path("dev/rootfs-a")).unwrap();
        bytes[..r.rootfs.len()].copy_from_slice(&r.rootfs);
        fs::write(self.path("dev/rootfs-a"), bytes).unwrap();
        fs::write(self.path("boot/a/vmlinuz"), &r.kernel).unwrap();
        fs::write(self.path("boot/a/initrd.img"), &r.initrd).unwrap();
        // What cairn-image leaves next to a factory slot's slot.env.
        let images: cairn_boot::SlotImages = [
            ("rootfs", &r.rootfs),
            ("kernel", &r.kernel),
            ("initrd", &r.initrd),
        ]
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), ImageRecord::of(&mut &bytes[..]).unwrap()))
        .collect();
        fs::write(self.path("boot/a/images.json"), images::to_json(&images)).unwrap();
    }

    fn config_text(&self) -> String {
        self.layout
            .system_toml("cairn-test", SlotImages::RootfsKernelInitrd)
    }

    pub fn config(&self) -> PathBuf {
        self.layout.config()
    }

    /// Declares a health check for the image (the running one, in this stand-in).
    pub fn health_check(&self, name: &str, toml: &str) {
        fs::write(self.path(&format!("etc/cairn/health.d/{name}.toml")), toml).unwrap();
    }

    /// A signed bundle for `release`, optionally with deltas from `from`.
    pub fn bundle(&self, release: &Release, from: Option<&Release>) -> PathBuf {
        self.bundle_with(
            release,
            from,
            &release.version.clone(),
            &[copy_key(&self.key)],
            |_| {},
        )
    }

    /// A bundle named `name`, signed by `keys`, with `edit` applied to its spec first
    /// (for bundles a device must refuse).
    pub fn bundle_with(
        &self,
        release: &Release,
        from: Option<&Release>,
        name: &str,
        keys: &[SigningKey],
        edit: impl FnOnce(&mut BundleSpec),
    ) -> PathBuf {
        let build = self.path(&format!("build/{}", release.version));
        fs::create_dir_all(&build).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = build.join(name);
            fs::write(&p, bytes).unwrap();
            p
        };
        let images = [
            ("rootfs", write("rootfs", &release.rootfs)),
            ("kernel", write("kernel", &release.kernel)),
            ("initrd", write("initrd", &release.initrd)),
        ];
        let mut old_images = Vec::new();
        if let Some(old) = from {
            for (name, bytes) in [
                ("rootfs", &old.rootfs),
                ("kernel", &old.kernel),
                ("initrd", &old.initrd),
            ] {
                old_images.push((name, write(&format!("old-{name}"), bytes)));
            }
        }
        fn refs<'a>(files: &'a [(&'a str, PathBuf)]) -> Vec<(&'a str, &'a Path)> {
            files.iter().map(|(n, p)| (*n, p.as_path())).collect()
        }
        let mut spec = BundleSpec {
            security_version: release.security_version,
            expires: in_days(10),
            images: image_inputs(&refs(&images)),
            delta_sources: delta_sources(&refs(&old_images)),
            ..bundle_spec("cairn-test", &release.version)
        };
        edit(&mut spec);
        let out = self.path(&format!("build/{name}.cairn"));
        let keys: Vec<&SigningKey> = keys.iter().collect();
        sign_bundle(&spec, &keys, &out);
        out
    }

    pub fn set_booted(&self, slot: SlotId, recovery: bool) {
        self.layout.write_cmdline(&slot.to_string(), recovery);
        self.layout.write_boot_id(self.boots);
    }

    /// A reboot: does what the U-Boot script does (BOOT-STATE.md), then "boots" the chosen
    /// slot by writing the kernel command line and a new boot id.
    pub fn reboot(&mut self) -> SlotId {
        let mut store = UbootEnvStore::new(self.path("boot"));
        let mut s = store.load().unwrap();
        let choice = s.take_try();
        store.store(&s).unwrap();
        self.boots += 1;
        self.set_booted(choice.slot, choice.recovery);
        choice.slot
    }

    pub fn boot_state(&self) -> BootState {
        UbootEnvStore::new(self.path("boot")).load().unwrap()
    }

    pub fn cairn(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn cairn_err(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(!out.status.success(), "cairn {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    /// `cairnd --once`: what the daemon decides at boot.
    pub fn cairnd_once(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairnd"))
            .arg("--config")
            .arg(self.config())
            .arg("--once")
            .env("CAIRN_LOG", "info")
            .output()
            .unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cairn_ok(&["status", "--json"])).unwrap()
    }

    pub fn slot_bytes(&self, slot: &str, len: usize) -> Vec<u8> {
        fs::read(self.path(&format!("dev/rootfs-{slot}"))).unwrap()[..len].to_vec()
    }

    pub fn holds(&self, slot: SlotId, r: &Release) -> bool {
        let s = slot.lower();
        self.slot_bytes(s, r.rootfs.len()) == r.rootfs
            && fs::read(self.path(&format!("boot/{s}/vmlinuz"))).is_ok_and(|k| k == r.kernel)
            && fs::read(self.path(&format!("boot/{s}/initrd.img"))).is_ok_and(|i| i == r.initrd)
    }
}

pub fn phase(status: &serde_json::Value) -> String {
    status["phase"]["phase"].as_str().unwrap().to_string()
}

pub fn file_bytes(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

impl Device {
    /// Points cairnd at a fleet server whose certificate chains to the CA at `ca`, with
    /// reboots as soon as an update is installed.
    pub fn use_server(&self, url: &str, ca: &Path, device_id: &str) {
        let text = self.config_text().replace(
            "[reboot]\npolicy = \"on-request\"",
            "[reboot]\npolicy = \"now\"",
        ) + &format!(
            "[server]\nurl = \"{url}\"\nca = \"{}\"\npoll_secs = 1\ndevice_id = \"{device_id}\"\n",
            ca.display()
        );
        fs::write(self.config(), text).unwrap();
    }

    /// Serves `bundle` (and the files beside it) from a loopback HTTP server that
    /// misbehaves as `faults` say, and lets the device fetch from it; returns the server
    /// and the bundle's URL.
    pub fn serve_bundle(&self, bundle: &Path, faults: Arc<http::Faults>) -> (http::Server, String) {
        let server = http::serve(bundle.parent().unwrap().to_path_buf(), faults);
        self.allow_plain_http_from(&server.base());
        let url = server.url(bundle.file_name().unwrap().to_str().unwrap());
        (server, url)
    }

    /// Lets `cairn install` fetch plain `http://` URLs from the test file server at
    /// `base` (a device refuses plain HTTP unless its config says otherwise).
    pub fn allow_plain_http_from(&self, base: &str) {
        let text =
            self.config_text() + &format!("[server]\nurl = \"{base}\"\ninsecure_http = true\n");
        fs::write(self.config(), text).unwrap();
    }

    /// The daemon, running until the returned child is killed.
    pub fn spawn_cairnd(&self) -> std::process::Child {
        let log = fs::File::create(self.path(&format!("cairnd-{}.log", self.boots))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_cairnd"))
            .arg("--config")
            .arg(self.config())
            .env("CAIRN_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn cairnd_log(&self) -> String {
        let mut all = String::new();
        for boot in 0..=self.boots {
            if let Ok(text) = fs::read_to_string(self.path(&format!("cairnd-{boot}.log"))) {
                all.push_str(&text);
            }
        }
        all
    }
}

/// Polls `done` every 100 ms for up to `secs` seconds; panics with `what` on timeout.
pub fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl Device {
    /// Rewrites system.toml through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = fs::read_to_string(self.config()).unwrap();
        fs::write(self.config(), edit(text)).unwrap();
    }

    /// `cairn install URL` running in the background; its output goes to `install.log`
    /// (a file, not a pipe nobody reads, which would stall its progress output).
    pub fn spawn_install(&self, location: &str) -> std::process::Child {
        let log = fs::File::create(self.path("install.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--config")
            .arg(self.config())
            .args(["install", location])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// cairnd's state file, raw.
    pub fn state_json(&self) -> serde_json::Value {
        fs::read(self.path("data/cairn/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}
