//! Pre-loading a release's container images before its reboot, against a real containerd
//! (Debian's 1.6, as `cargo xtask setup` installs it): a bundle carries an OCI archive
//! built here from a static busybox (no registry), `cairn install` writes it into the
//! slot, and the reboot imports it first (through the real `cairn` binary and containerd's
//! `ctr`); a failed import postpones the reboot and says why; an archive changed on disk
//! after the install is never imported; a device without a container runtime refuses such
//! a bundle before writing anything. Runs as root.

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_bundle::writer::ImageInput;
use cairn_bundle::ImageKind;
use cairn_testkit::oci::{busybox_image, OciImage, HOST_BUSYBOX};
use common::{phase, Device, Release};
use containerd::{Containerd, Network};

const IMAGE: &str = "containers";

/// A device whose container runtime is at `socket`; it keeps container archives in
/// `data/containers/<slot>/`.
fn device_with_containers(v1: &Release, socket: &Path) -> Device {
    let d = Device::new(v1);
    let dir = d.path("data/containers");
    d.edit_config(|text| {
        text + &format!(
            "[containers]\nsocket = \"{}\"\ndir = \"{}\"\n",
            socket.display(),
            dir.display()
        )
    });
    d
}

/// v2 with the release's container images as an OCI archive.
fn bundle_with_images(d: &Device, v1: &Release, v2: &Release) -> (PathBuf, OciImage) {
    let archive = d.path("build/app-images.tar");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let image = busybox_image(
        Path::new(HOST_BUSYBOX),
        "amd64",
        "preloaded-app",
        &v2.version,
        &["sleep", "3600"],
        &archive,
    );
    let bundle = d.bundle_with(
        v2,
        Some(v1),
        "v2-with-images",
        &[cairn_testkit::copy_key(&d.key)],
        |spec| {
            spec.images.push(ImageInput {
                name: IMAGE.into(),
                path: archive.clone(),
                verity: None,
                kind: ImageKind::OciArchive,
                pcr11: None,
                pcr4: None,
                pcr7: None,
            })
        },
    );
    (bundle, image)
}

/// The image names containerd's CRI namespace holds.
fn images_in(containerd: &Containerd) -> Vec<String> {
    let out = Command::new("ctr")
        .args(["--address"])
        .arg(&containerd.socket)
        .args(["--namespace", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_release_images_are_in_containerd_before_the_reboot_and_not_before_it_is_asked() {
    let containerd = Containerd::start(Network::Loopback);
    let (v1, v2) = (Release::new("1.0.0", 0), Release::new("2.0.0", 3));
    let d = device_with_containers(&v1, &containerd.socket);
    let (bundle, image) = bundle_with_images(&d, &v1, &v2);

    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    assert_eq!(phase(&d.status()), "installed-pending");
    assert!(
        !images_in(&containerd).contains(&image.name),
        "nothing imported at install"
    );
    let status = d.cairn_ok(&["status"]);
    assert!(
        status.contains("waiting for container preload: 1 archive(s) not imported yet"),
        "{status}"
    );

    d.cairn_ok(&["reboot"]);
    assert!(d.path("rebooted").exists());
    assert!(
        images_in(&containerd).contains(&image.name),
        "{:?}",
        images_in(&containerd)
    );
    assert!(d.status()["container_preload"].is_null());
    // Imported once: a second reboot request does not import again.
    std::fs::remove_file(d.path("rebooted")).unwrap();
    d.cairn_ok(&["reboot"]);
    assert!(!containerd.log().contains("error"), "{}", containerd.log());
}

#[test]
fn an_import_failure_postpones_the_reboot_until_containerd_takes_the_images() {
    let (v1, v2) = (Release::new("1.0.0", 0), Release::new("2.0.0", 3));
    let nowhere = PathBuf::from("/run/cairn-test-no-containerd.sock");
    let d = device_with_containers(&v1, &nowhere);
    let (bundle, image) = bundle_with_images(&d, &v1, &v2);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);

    let err = d.cairn_err(&["reboot"]);
    assert!(
        err.contains(
            "not rebooting, the container preload failed: container import ctr exited with 1"
        ),
        "{err}"
    );
    assert!(!d.path("rebooted").exists(), "no reboot without the images");
    let status = d.status();
    let waiting = status["container_preload"].as_str().unwrap();
    assert!(
        waiting.starts_with("waiting for container preload: container import ctr exited with 1"),
        "{waiting}"
    );
    assert!(waiting.contains("(attempt 1, next try in "), "{waiting}");
    assert_eq!(
        phase(&status),
        "installed-pending",
        "the running version is untouched"
    );

    let containerd = Containerd::start(Network::Loopback);
    d.edit_config(|text| {
        text.replace(
            nowhere.to_str().unwrap(),
            containerd.socket.to_str().unwrap(),
        )
    });
    d.cairn_ok(&["reboot"]);
    assert!(d.path("rebooted").exists());
    assert!(images_in(&containerd).contains(&image.name));
}

#[test]
fn an_archive_changed_after_the_install_is_never_imported() {
    let containerd = Containerd::start(Network::Loopback);
    let (v1, v2) = (Release::new("1.0.0", 0), Release::new("2.0.0", 3));
    let d = device_with_containers(&v1, &containerd.socket);
    let (bundle, image) = bundle_with_images(&d, &v1, &v2);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    let installed = d.path(&format!("data/containers/b/{IMAGE}.tar"));
    // Someone with the SD card swaps in other images of the same name.
    let other = d.path("build/other.tar");
    busybox_image(
        Path::new(HOST_BUSYBOX),
        "amd64",
        "preloaded-app",
        "2.0.0",
        &["sh", "-c", "evil"],
        &other,
    );
    std::fs::copy(&other, &installed).unwrap();

    let err = d.cairn_err(&["reboot"]);
    assert!(err.contains("are not what was installed"), "{err}");
    assert!(err.contains("not imported"), "{err}");
    assert!(!images_in(&containerd).contains(&image.name));
    assert!(!d.path("rebooted").exists());
}

#[test]
fn a_device_without_a_container_runtime_refuses_a_bundle_with_container_images() {
    let (v1, v2) = (Release::new("1.0.0", 0), Release::new("2.0.0", 3));
    let d = Device::new(&v1);
    let (bundle, _) = bundle_with_images(&d, &v1, &v2);
    let before = std::fs::read(d.path("dev/rootfs-b")).unwrap();
    let err = d.cairn_err(&["install", bundle.to_str().unwrap()]);
    assert!(
        err.contains(
            "bundle carries container images 'containers' and this device has no container runtime"
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.path("dev/rootfs-b")).unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(phase(&d.status()), "committed");
}

/// A mounted tmpfs of `kib` KiB at `dir`, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: PathBuf, kib: u64) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn with_no_room_for_the_container_images_the_os_update_installs_without_them() {
    let (v1, v2) = (Release::new("1.0.0", 0), Release::new("2.0.0", 3));
    let d = device_with_containers(&v1, Path::new("/run/cairn-test-unused.sock"));
    // The archive (about 2 MB) does not fit: a workload filled the data partition.
    let _full = SmallDisk::mount(d.path("data/containers"), 512);
    let (bundle, _) = bundle_with_images(&d, &v1, &v2);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    let status = d.status();
    assert_eq!(phase(&status), "installed-pending", "{status}");
    assert!(d.holds(cairn_updater::bootstate::SlotId::B, &v2));
    assert!(
        status["container_preload"].is_null(),
        "nothing to import: {status}"
    );
    assert!(!d.path("data/cairn/preload.json").exists());
    // The reboot needs no container runtime then.
    d.cairn_ok(&["reboot"]);
    assert!(d.path("rebooted").exists());
}
