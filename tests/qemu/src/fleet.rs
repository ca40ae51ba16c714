//! The rest of the update loop around the VM, for the end-to-end tests and `cargo xtask
//! demo`: the v2 image, the v2 bundle with deltas from v1, cairn-server where the image's
//! profile says it is (QEMU's user network maps the guest's 10.0.2.2 to the host's
//! loopback), and the operator's side of the admin API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cairn_bundle::writer::{self, BundleSpec, DeltaSource, ImageInput};
use cairn_bundle::{ImageKind, SigningKey, TrustRoot};
use cairn_image::os::disk::SlotB;
use cairn_image::os::pipeline::Build;
use cairn_image::tls::DevTls;
use cairn_server::config::TlsFiles;
use cairn_server::http::Config;
use cairn_server::local::LocalServer;
use serde_json::{json, Value};

/// The guest's view of the server: the profile's `[server] url`. The server listens on
/// the host's loopback at [`crate::host_port`] of its port.
pub const PUBLIC_URL: &str = "https://10.0.2.2:18480";
const ADMIN_TOKEN: &str = "cairn-demo-admin";

/// A release of the QEMU board, by profile file name (`qemu-arm64-v2.toml`), built once
/// per process: root tree, kernel, initramfs, slot.
pub fn image_of(profile: &str) -> Result<&'static Build> {
    static IMAGES: Mutex<BTreeMap<String, &'static Build>> = Mutex::new(BTreeMap::new());
    let mut images = IMAGES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(build) = images.get(profile) {
        return Ok(build);
    }
    let path = crate::workspace().join("image/profiles").join(profile);
    let build = Build::new(&path)?;
    crate::ensure_image(&build, SlotB::Empty).with_context(|| format!("building {profile}"))?;
    let build: &'static Build = Box::leak(Box::new(build));
    images.insert(profile.to_string(), build);
    Ok(build)
}

/// v2: v1 one security update later.
pub fn image_v2() -> Result<&'static Build> {
    image_of("qemu-arm64-v2.toml")
}

/// The container image every release of the QEMU board carries (tagged with the
/// release's version), built from the image's own arm64 busybox: the device imports it
/// into its containerd before the reboot.
pub const APP_IMAGE: &str = "cairn-app";

/// `docker.io/local/cairn-app:<version>`, the name containerd knows it by.
pub fn app_image_name(version: &str) -> String {
    format!("docker.io/local/{APP_IMAGE}:{version}")
}

/// The pod sandbox image the image's containerd names (etc/containerd/config.toml). With
/// no registry in reach, a bundle that runs pods carries a stand-in under that name (a
/// k3s release's air-gap images would carry the real one).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";

/// The pause stand-in as an OCI archive, next to `build`'s slot image.
fn pause_images(build: &Build) -> Result<PathBuf> {
    let archive = build.layout.out.join("pause-images.tar");
    cairn_testkit::oci::busybox_image_named(
        &build.layout.tree().join("bin/busybox"),
        build.profile.arch()?.debian(),
        PAUSE_IMAGE,
        &["sleep", "2147483647"],
        &archive,
    );
    Ok(archive)
}

/// Like [`bundle`], also carrying the pod sandbox image, for a release that runs pods.
pub fn bundle_with_pods(new: &Build, old: &Build, out: &Path) -> Result<PathBuf> {
    let pause = ImageInput {
        name: "pause-images".into(),
        path: pause_images(new)?,
        verity: None,
        kind: ImageKind::OciArchive,
        pcr11: None,
        pcr4: None,
        pcr7: None,
    };
    create_bundle(new, Some(old), out, None, vec![pause], None)
}

/// The release's container images as an OCI archive, next to its slot image.
fn app_images(build: &Build) -> Result<PathBuf> {
    let archive = build.layout.out.join("app-images.tar");
    let image = cairn_testkit::oci::busybox_image(
        &build.layout.tree().join("bin/busybox"),
        build.profile.arch()?.debian(),
        APP_IMAGE,
        &build.profile.version,
        &["sleep", "3600"],
        &archive,
    );
    anyhow::ensure!(image.name == app_image_name(&build.profile.version));
    Ok(archive)
}

/// The images a bundle of `build` carries: the verity-protected slot, the boot files (the
/// kernel and initrd on U-Boot's path, the signed UKI with its PCR 4, 7 and 11 on the UEFI path),
/// and the release's container images.
fn images(build: &Build) -> Result<Vec<ImageInput>> {
    let image = |name: &str, path: PathBuf| ImageInput {
        name: name.into(),
        path,
        verity: None,
        kind: ImageKind::Slot,
        pcr11: None,
        pcr4: None,
        pcr7: None,
    };
    let mut images = vec![ImageInput {
        verity: Some(build.verity()?),
        ..image("rootfs", build.layout.slot_image())
    }];
    if build.profile.efi.is_some() {
        use cairn_image::os::pinned_pcrs::{self, BootChain};
        let path = build.layout.uki();
        let chain = BootChain::read(&build.layout.systemd_boot(), Some(&build.layout.efi_vars()))?;
        let pinned = pinned_pcrs::for_image(&std::fs::read(&path)?, Some(&chain))?
            .context("the profile's uki.efi is not a unified kernel image")?;
        images.push(ImageInput {
            pcr11: Some(pinned.pcr11),
            pcr4: pinned.pcr4,
            pcr7: pinned.pcr7,
            ..image("uki", path)
        });
    } else {
        images.push(image("kernel", build.layout.kernel()));
        images.push(image("initrd", build.layout.initrd()));
    }
    images.push(ImageInput {
        kind: ImageKind::OciArchive,
        ..image("app-images", app_images(build)?)
    });
    Ok(images)
}

/// A bundle of `new`, signed with the development key, with a delta for each image from
/// `old` (what devices in the field run).
pub fn bundle(new: &Build, old: &Build, out: &Path) -> Result<PathBuf> {
    bundle_replacing(new, old, out, None)
}

/// v2's bundle with deltas from v1, which most scenarios roll out: made once per process
/// (next to v2's slot image) and copied to `out`, since making it is the costliest step
/// of a scenario's set-up.
pub fn bundle_v2_from_v1(out: &Path) -> Result<PathBuf> {
    static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    if made.is_none() {
        let v2 = image_v2()?;
        let path = v2.layout.out.join("v2-from-v1.cairn");
        bundle(v2, crate::image()?, &path)?;
        *made = Some(path);
    }
    let made = made.as_ref().context("v2's bundle was just made")?;
    std::fs::copy(made, out).with_context(|| format!("copying {}", made.display()))?;
    Ok(out.to_path_buf())
}

/// A release of `new` that differs in one image: [`Replaced`]'s file stands in for
/// `new`'s image of that name (a kernel that cannot boot, an initrd that hangs).
pub struct Replaced<'a> {
    pub version: &'a str,
    pub image: &'a str,
    pub path: &'a Path,
}

/// Like [`bundle`], with one image replaced.
pub fn bundle_replacing(
    new: &Build,
    old: &Build,
    out: &Path,
    replaced: Option<Replaced>,
) -> Result<PathBuf> {
    create_bundle(new, Some(old), out, replaced, Vec::new(), None)
}

/// A bundle of `new` as release `version`, with no delta and its images chunked: what a
/// device gets when no delta was made for the version it runs.
pub fn bundle_chunked(new: &Build, version: &str, out: &Path) -> Result<PathBuf> {
    create_bundle(new, None, out, None, Vec::new(), Some(version))
}

/// A bundle of `new`: with deltas from `old`, or else chunked; as release `version`, or
/// the replaced image's, or the profile's.
fn create_bundle(
    new: &Build,
    old: Option<&Build>,
    out: &Path,
    replaced: Option<Replaced>,
    extra: Vec<ImageInput>,
    version: Option<&str>,
) -> Result<PathBuf> {
    // The container archives are written next to each build's slot image: scenarios
    // running at once must not write them under each other's reader.
    static WRITING: Mutex<()> = Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let keys = new.layout.dev_keys();
    let key = SigningKey::from_json(&std::fs::read(keys.join("release.key.json"))?)
        .context("reading the development signing key")?;
    let delta_sources = match old {
        Some(old) => images(old)?
            .into_iter()
            .map(|i| DeltaSource {
                image: i.name,
                path: i.path,
            })
            .collect(),
        None => Vec::new(),
    };
    let mut new_images = images(new)?;
    let mut version = version.map_or_else(|| new.profile.version.clone(), str::to_string);
    if let Some(replaced) = replaced {
        version = replaced.version.to_string();
        let image = new_images
            .iter_mut()
            .find(|i| i.name == replaced.image)
            .with_context(|| format!("{} has no image {}", new.profile.name, replaced.image))?;
        image.path = replaced.path.to_path_buf();
    }
    new_images.extend(extra);
    let spec = BundleSpec {
        description: Some(format!("{} {version}", new.profile.name)),
        images: new_images,
        delta_sources,
        // Level 9: most of 19's delta size in a fraction of its time.
        level: 9,
        delta_codec: cairn_bundle::writer::DeltaCodec::default(),
        chunked: old.is_none().then(cairn_bundle::chunked::Layout::default),
        ..cairn_testkit::bundle_spec(&new.profile.compatible, &version)
    };
    writer::create(&spec, &[key], out, &mut |_| {})?;
    Ok(out.to_path_buf())
}

/// cairn-server (SQLite in `dir`) and an operator talking to its admin API.
pub struct Fleet {
    /// `None` only while [`Fleet::replace_with_restored`] swaps it.
    server: Option<LocalServer>,
    http: reqwest::blocking::Client,
    db_url: String,
    config: Config,
    /// Where it listens (`127.0.0.1:PORT`, the port resolved), to start a replacement on.
    listen: String,
    /// Between the guest and the server, once [`Fleet::behind_a_slow_link`].
    slow_link: Option<crate::slow_link::SlowLink>,
}

impl Fleet {
    /// Starts the server where this thread's guest reaches [`PUBLIC_URL`], trusting
    /// `root` for releases and serving HTTPS with `tls`, the certificate the image's
    /// pinned CA issued.
    pub fn start(root: &Path, tls: &DevTls, dir: &Path) -> Result<Fleet> {
        let listen = format!("127.0.0.1:{}", crate::host_port(crate::SERVER_PORT));
        Fleet::start_at(root, tls, dir, &listen, PUBLIC_URL)
    }

    /// Like [`Fleet::start`], on `listen`, which the guest reaches as `public_url` (a
    /// site's own server, where a server override sends a device).
    pub fn start_at(
        root: &Path,
        tls: &DevTls,
        dir: &Path,
        listen: &str,
        public_url: &str,
    ) -> Result<Fleet> {
        let db_url = format!("sqlite://{}", dir.join("cairn-server.db").display());
        let mut config = Config::new(dir.join("blobs"));
        config.root = Some(TrustRoot::from_json(&std::fs::read(root)?)?);
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.public_url = Some(public_url.into());
        config.poll_interval_secs = 3;
        config.evaluate_every = Duration::from_secs(2);
        config.tls = Some(TlsFiles {
            cert: tls.server.cert.clone(),
            key: tls.server.key.clone(),
        });
        let server = LocalServer::start(&db_url, config.clone(), listen)?;
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca)?)?;
        let http = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()?;
        Ok(Fleet {
            listen: server.addr.to_string(),
            server: Some(server),
            http,
            db_url,
            config,
            slow_link: None,
        })
    }

    /// The server's address on this machine (it always serves HTTPS).
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// The dashboard, signed in with the admin token.
    pub fn dashboard_url(&self) -> String {
        format!("{}/?token={ADMIN_TOKEN}", self.url())
    }

    /// `cairn-server backup FILE` while the server serves.
    pub fn backup(&self, file: &Path) -> Result<()> {
        cairn_server::local::backup(&self.db_url, file)
    }

    /// The server process is replaced by a restored copy: it stops, `cairn-server
    /// restore` puts `backup` in place of its database, and a server starts again at the
    /// same address over the same blob directory.
    pub fn replace_with_restored(&mut self, backup: &Path) -> Result<()> {
        self.server = None;
        cairn_server::local::restore(&self.db_url, backup)?;
        self.server = Some(LocalServer::start(
            &self.db_url,
            self.config.clone(),
            &self.listen,
        )?);
        Ok(())
    }

    /// From now on the guest reaches the server over a link that carries
    /// `bytes_per_sec` a second towards the guest: the server starts again, over the same
    /// database and blobs, on a port of its own, and a [`SlowLink`] takes the address the
    /// guest connects to. The operator's calls go to the server directly.
    ///
    /// [`SlowLink`]: crate::slow_link::SlowLink
    pub fn behind_a_slow_link(&mut self, bytes_per_sec: u64) -> Result<()> {
        self.server = None;
        let server = LocalServer::start(&self.db_url, self.config.clone(), "127.0.0.1:0")?;
        let direct = server.addr;
        self.slow_link = Some(crate::slow_link::SlowLink::start(
            &self.listen,
            direct,
            bytes_per_sec,
        )?);
        self.server = Some(server);
        self.listen = direct.to_string();
        Ok(())
    }

    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        let url = format!("{}/admin/v1{path}", self.url());
        let request = match method {
            "GET" => self.http.get(&url),
            _ => self.http.post(&url).body(body.unwrap_or_default()),
        };
        let response = request.bearer_auth(ADMIN_TOKEN).send()?;
        let status = response.status();
        let value: Value = response.json().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        self.call("POST", path, body)
    }

    /// The server's count of bundle bytes it sent to devices (`/metrics`).
    pub fn bundle_bytes_served(&self) -> Result<u64> {
        let metrics = self
            .http
            .get(format!("{}/metrics", self.url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()?
            .error_for_status()?
            .text()?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("cairn_bundle_bytes_served_total "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no cairn_bundle_bytes_served_total in /metrics"))
    }

    /// Adds a release; returns its id (`compatible@version`).
    pub fn upload(&self, bundle: &Path) -> Result<String> {
        let added = self.post("/releases", Some(std::fs::read(bundle)?))?;
        added["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("release answer without an id: {added}"))
    }

    /// Devices that enrolled and wait for approval.
    pub fn pending_devices(&self) -> Result<Vec<String>> {
        let devices = self.get("/devices")?;
        Ok(devices
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["approval"] == "pending")
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect())
    }

    pub fn approve(&self, device: &str) -> Result<()> {
        self.post(&format!("/devices/{device}/approve"), None)?;
        Ok(())
    }

    /// Creates and starts a one-wave campaign of `release` for every device of
    /// `compatible`, pausing at the first failure. A device counts as succeeded only once
    /// its TPM quote proves the release booted (the guest's swtpm).
    pub fn start_campaign(&self, id: &str, release: &str, compatible: &str) -> Result<()> {
        let body = json!({
            "id": id,
            "release_id": release,
            "policy": {
                "selector": { "compatible": compatible },
                "waves": [{ "percent": 100.0 }],
                "min_success_ratio": 1.0,
                "bake_secs": 0,
                "failure_threshold": 0.0,
                "attestation_required": true,
            },
        });
        self.post("/campaigns", Some(body.to_string().into_bytes()))?;
        self.post(&format!("/campaigns/{id}/start"), None)?;
        Ok(())
    }

    /// The campaign's state and its first wave's (succeeded, failed).
    pub fn campaign(&self, id: &str) -> Result<(String, u64, u64)> {
        let c = self.get(&format!("/campaigns/{id}"))?;
        let wave = &c["waves"][0];
        Ok((
            c["campaign"]["state"].as_str().unwrap_or("?").to_string(),
            wave["succeeded"].as_u64().unwrap_or(0),
            wave["failed"].as_u64().unwrap_or(0),
        ))
    }

    /// The device record and its history (newest first), as the admin API shows them.
    pub fn device(&self, id: &str) -> Result<Value> {
        self.get(&format!("/devices/{id}"))
    }
}
