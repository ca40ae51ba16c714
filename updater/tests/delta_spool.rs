//! A delta fetched over HTTP is downloaded to the spool on the data partition before it
//! is applied (`updater/src/install/spool.rs`): an install killed part-way through the
//! download resumes it without fetching again what it had, and a spool damaged before
//! the resume is fetched again from the start, never taken for a bad bundle.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_bundle::BundleFile;
use cairn_testkit::slot_image_bytes;
use cairn_updater::bootstate::SlotId;
use common::http::{Faults, Server};
use common::*;

/// v1, and a v2 whose rootfs shares nothing with it: its delta is megabytes long.
fn releases() -> (Release, Release) {
    releases_with_kernel(512 << 10)
}

/// [`releases`] with v2's kernel `kernel_len` bytes long, sharing nothing with v1's.
fn releases_with_kernel(kernel_len: usize) -> (Release, Release) {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release {
        version: "2.0.0".into(),
        security_version: 1,
        rootfs: slot_image_bytes(6 << 20, 97),
        kernel: slot_image_bytes(kernel_len, 98),
        initrd: slot_image_bytes(256 << 10, 99),
    };
    (v1, v2)
}

/// The bytes of the deltas in `bundle`, all images together.
fn delta_bytes(bundle: &Path) -> u64 {
    let file = BundleFile::open(bundle).unwrap();
    let images = &file.bundle.manifest.images;
    assert!(
        images.iter().all(|i| i.deltas.len() == 1),
        "a delta per image"
    );
    images.iter().map(|i| i.deltas[0].size).sum()
}

fn spooled(d: &Device) -> u64 {
    fs::read_dir(d.path("data/cairn/spool"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Starts installing v2's delta bundle from a slow server and kills the install once a
/// third of the rootfs delta is in the spool.
fn killed_part_way(d: &Device, v2: &Release, v1: &Release) -> (Server, String, u64) {
    let (server, url, deltas, _) =
        killed_when(d, v2, v1, "a third of the delta spooled", |_, deltas| {
            spooled(d) * 3 >= deltas
        });
    (server, url, deltas)
}

/// Starts installing v2's delta bundle from a slow server and kills the install once
/// `now(bundle, delta bytes)` holds; returns the server, the bundle's URL and file, and
/// its delta bytes.
fn killed_when(
    d: &Device,
    v2: &Release,
    v1: &Release,
    what: &str,
    now: impl Fn(&Path, u64) -> bool,
) -> (Server, String, u64, PathBuf) {
    let bundle = d.bundle(v2, Some(v1));
    let deltas = delta_bytes(&bundle);
    let faults = Arc::new(Faults {
        trickle: Duration::from_millis(40),
        ..Faults::default()
    });
    let (server, url) = d.serve_bundle(&bundle, faults);
    let mut child = d.spawn_install(&url);
    wait_for(60, what, || now(&bundle, deltas));
    child.kill().unwrap(); // SIGKILL, mid-download
    child.wait().unwrap();
    let out = d.cairnd_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.holds(SlotId::B, v2), "killed before the end");
    // The server may still push a trickled block into the dead connection: let it stop
    // before the bytes of the next install are counted.
    loop {
        let sent = server.body_bytes.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        if server.body_bytes.load(Ordering::SeqCst) == sent {
            break;
        }
    }
    (server, url, deltas, bundle)
}

/// Runs `cairn install URL` again, which must succeed; returns its stderr and the body
/// bytes the server sent it (counted from zero).
fn install_again(d: &Device, server: &Server, url: &str) -> (String, u64) {
    server.body_bytes.store(0, Ordering::SeqCst);
    server.requests.store(0, Ordering::SeqCst);
    let out = d.cairn(&["install", url]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (stderr, server.body_bytes.load(Ordering::SeqCst))
}

#[test]
fn a_delta_download_killed_part_way_resumes_where_it_stopped() {
    let (v1, v2) = releases();
    let d = Device::new(&v1);
    let (server, url, deltas) = killed_part_way(&d, &v2, &v1);
    let kept = spooled(&d);
    assert!(
        kept < deltas,
        "the kill came before the end of the download"
    );

    let (_, served) = install_again(&d, &server, &url);
    assert!(d.holds(SlotId::B, &v2), "byte-identical after the resume");
    println!("killed with {kept} of {deltas} delta bytes spooled; the resumed install fetched {served} bytes in {} requests", server.requests.load(Ordering::SeqCst));
    // The rest of the deltas, plus the bundle's metadata (one 64 KiB request).
    assert!(
        served <= deltas - kept + (64 << 10),
        "fetched {served} bytes: the {kept} spooled were fetched again"
    );
    assert!(
        !d.path("data/cairn/spool").exists(),
        "the spool is emptied once the slot is written"
    );
}

/// The spool file of `image`'s delta in `bundle`, and that delta's size.
fn spool_of(d: &Device, bundle: &Path, image: &str) -> (PathBuf, u64) {
    let file = BundleFile::open(bundle).unwrap();
    let delta = &file.bundle.manifest.image(image).unwrap().deltas[0];
    let (algorithm, digest) = delta.checked_digest();
    let name = format!("{}-{digest}", algorithm.name());
    (d.path("data/cairn/spool").join(name), delta.size)
}

/// Each try writes every image again, the rootfs first: the rootfs delta spooled anew
/// must not take the place of the kernel delta's partial download.
#[test]
fn a_download_killed_in_a_later_images_delta_resumes_that_delta() {
    let (v1, v2) = releases_with_kernel(2 << 20);
    let d = Device::new(&v1);
    let in_kernel = |bundle: &Path, _| {
        let (path, size) = spool_of(&d, bundle, "kernel");
        fs::metadata(path).is_ok_and(|m| m.len() * 3 >= size)
    };
    let (server, url, deltas, bundle) = killed_when(
        &d,
        &v2,
        &v1,
        "a third of the kernel's delta spooled",
        in_kernel,
    );
    let (kernel_spool, kernel_delta) = spool_of(&d, &bundle, "kernel");
    let kept = fs::metadata(&kernel_spool).unwrap().len();
    assert!(
        kept < kernel_delta,
        "killed before the kernel's delta was whole"
    );

    let (_, served) = install_again(&d, &server, &url);
    assert!(d.holds(SlotId::B, &v2), "byte-identical after the resume");
    println!(
        "killed with {kept} of the kernel delta's {kernel_delta} bytes spooled; the resumed \
         install fetched {served} of {deltas} delta bytes"
    );
    // Every delta again but the kernel's spooled part (the rootfs was written, then its
    // spool removed, before the kill), plus the bundle's metadata.
    assert!(
        served <= deltas - kept + (64 << 10),
        "fetched {served} bytes: the kernel's {kept} spooled were fetched again"
    );
}

#[test]
fn a_damaged_spool_is_fetched_again_and_the_bundle_still_installs() {
    let (v1, v2) = releases();
    let d = Device::new(&v1);
    let (server, url, deltas) = killed_part_way(&d, &v2, &v1);
    // What a power cut can leave: writes that never reached the disk read back as zeros.
    let spool = fs::read_dir(d.path("data/cairn/spool"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&spool).unwrap();
    bytes[4096..8192].fill(0);
    fs::write(&spool, bytes).unwrap();

    let (stderr, served) = install_again(&d, &server, &url);
    assert!(d.holds(SlotId::B, &v2));
    assert!(
        stderr.contains("does not match its digest; downloading it again"),
        "{stderr}"
    );
    assert!(
        served >= deltas,
        "all of the deltas fetched again ({served})"
    );
    assert_eq!(phase(&d.status()), "installed-pending");
}
