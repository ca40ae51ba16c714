//! The bundle commands as an operator runs them: keygen, root, create, sign, inspect,
//! verify, on real erofs images.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cairn_image(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-image"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = cairn_image(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = cairn_image(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn erofs(dir: &Path, name: &str, content: &str) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/os-release"), content).unwrap();
    fs::write(tree.join("etc/big"), content.repeat(20_000)).unwrap();
    let out = dir.join(format!("{name}.erofs"));
    let st = Command::new("mkfs.erofs")
        .args([
            "-T0",
            "-U",
            "00000000-0000-0000-0000-000000000001",
            "--all-root",
        ])
        .arg(&out)
        .arg(&tree)
        .output()
        .expect("mkfs.erofs not found: `cargo xtask test` installs erofs-utils");
    assert!(st.status.success());
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn operator_flow_create_sign_inspect_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (a, b) = (d.join("a"), d.join("b"));
    ok(&["keygen", "--out", s(&a)]);
    ok(&["keygen", "--out", s(&b)]);
    assert!(fails(&["keygen", "--out", s(&a)]).contains("refusing to overwrite"));
    let root = d.join("root.json");
    let (a_pub, b_pub, a_key, b_key) = (
        format!("{}.pub.json", s(&a)),
        format!("{}.pub.json", s(&b)),
        format!("{}.key.json", s(&a)),
        format!("{}.key.json", s(&b)),
    );
    ok(&[
        "root",
        "init",
        "--key",
        &a_pub,
        "--key",
        &b_pub,
        "--threshold",
        "2",
        "--sign",
        &a_key,
        "--sign",
        &b_key,
        "--out",
        s(&root),
    ]);

    let v1 = erofs(d, "v1", "VERSION_ID=1\n");
    let v2 = erofs(d, "v2", "VERSION_ID=2\n");
    let kernel = d.join("vmlinuz");
    fs::write(&kernel, vec![7u8; 100_000]).unwrap();
    let (b1, b2) = (d.join("v1.cairn"), d.join("v2.cairn"));
    let common = [
        "--compatible",
        "cairn-qemu-arm64",
        "--security-version",
        "1",
    ];
    let mut args = vec![
        "bundle",
        "create",
        "--version",
        "1.0.0",
        "--key",
        &a_key,
        "--key",
        &b_key,
        "-o",
        s(&b1),
    ];
    args.extend(common);
    let (img1, k) = (
        format!("rootfs={}", s(&v1)),
        format!("kernel={}", s(&kernel)),
    );
    args.extend(["--image", &img1, "--image", &k]);
    ok(&args);

    // v2 signed by one key only, with a delta from the v1 bundle, and chunked.
    let img2 = format!("rootfs={}", s(&v2));
    let mut args = vec![
        "bundle",
        "create",
        "--chunked",
        "--version",
        "2.0.0",
        "--key",
        &a_key,
        "--from",
        s(&b1),
        "-o",
        s(&b2),
    ];
    args.extend(common);
    args.extend(["--image", &img2, "--image", &k]);
    let created = cairn_image(&args);
    let said = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{said}");
    assert!(
        said.contains("[bundle] image rootfs: delta 0% (0 B of "),
        "the delta's progress is shown: {said}"
    );
    assert!(
        said.contains("[bundle] image rootfs: chunks 0% (0 B of "),
        "the grouped chunks' progress is shown: {said}"
    );
    let err = fails(&["bundle", "verify", s(&b2), "--root", s(&root)]);
    assert!(err.contains("1 valid of the 2 required"), "{err}");
    ok(&["sign", "--key", &b_key, s(&b2)]);
    let out = ok(&[
        "bundle",
        "verify",
        s(&b2),
        "--root",
        s(&root),
        "--compatible",
        "cairn-qemu-arm64",
    ]);
    assert!(out.starts_with("OK: cairn-qemu-arm64 2.0.0"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", "--json", s(&b2)])).unwrap();
    let images = json["manifest"]["images"].as_array().unwrap();
    let rootfs = images.iter().find(|i| i["name"] == "rootfs").unwrap();
    assert_eq!(rootfs["deltas"][0]["method"], "block-bsdiff");
    // Grouped by the delta's source; the kernel, unchanged, has no delta and so no
    // release to group by: windowed.
    assert_eq!(rootfs["chunked"]["data"]["method"], "zstd-block-groups");
    assert_eq!(rootfs["chunked"]["index"]["method"], "chunk-index");
    let kernel = images.iter().find(|i| i["name"] == "kernel").unwrap();
    assert_eq!(kernel["chunked"]["data"]["method"], "zstd-chunks-windowed");
    // Without a window: the chunks devices that predate windowed frames read.
    let b3 = d.join("v2-unwindowed.cairn");
    let mut args = vec![
        "bundle",
        "create",
        "--chunked",
        "--chunk-window",
        "0",
        "--version",
        "2.0.0",
        "--key",
        &a_key,
        "-o",
        s(&b3),
    ];
    args.extend(common);
    args.extend(["--image", &img2]);
    ok(&args);
    let json3: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", "--json", s(&b3)])).unwrap();
    assert_eq!(
        json3["manifest"]["images"][0]["chunked"]["data"]["method"],
        "zstd-chunks"
    );
    let kernel_img = images.iter().find(|i| i["name"] == "kernel").unwrap();
    assert!(
        kernel_img.get("deltas").is_none(),
        "unchanged kernel needs no delta"
    );
    assert_eq!(json["signatures"].as_array().unwrap().len(), 2);
    let human = ok(&["bundle", "inspect", s(&b2)]);
    assert!(
        human.contains("version:     2.0.0 (security version 1)") && human.contains("zstd-chunks"),
        "{human}"
    );

    assert!(fails(&[
        "bundle",
        "verify",
        s(&b2),
        "--root",
        s(&root),
        "--floor",
        "2"
    ])
    .contains("below this device's floor"));
    assert!(fails(&[
        "bundle",
        "verify",
        s(&b2),
        "--root",
        s(&root),
        "--compatible",
        "cairn-rpi4"
    ])
    .contains("this device is 'cairn-rpi4'"));
    // A flipped byte in a payload, and one in the alignment padding, are both caught.
    let offset = |image: &serde_json::Value| {
        json["payload_area_offset"].as_u64().unwrap() + image["full"]["offset"].as_u64().unwrap()
    };
    let original = fs::read(&b2).unwrap();
    let mut bytes = original.clone();
    bytes[offset(rootfs) as usize + 10] ^= 1;
    fs::write(&b2, &bytes).unwrap();
    let err = fails(&["bundle", "verify", s(&b2), "--root", s(&root)]);
    assert!(err.contains("image rootfs"), "{err}");
    let mut bytes = original;
    bytes[offset(rootfs) as usize - 1] ^= 1;
    fs::write(&b2, &bytes).unwrap();
    let err = fails(&["bundle", "verify", s(&b2), "--root", s(&root)]);
    assert!(err.contains("non-zero padding"), "{err}");
}

#[test]
fn root_rotation_needs_old_and_new_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (a, b) = (d.join("a"), d.join("b"));
    ok(&["keygen", "--out", s(&a)]);
    ok(&["keygen", "--out", s(&b)]);
    let (a_pub, b_pub, a_key, b_key) = (
        format!("{}.pub.json", s(&a)),
        format!("{}.pub.json", s(&b)),
        format!("{}.key.json", s(&a)),
        format!("{}.key.json", s(&b)),
    );
    let (r1, r2) = (d.join("root1.json"), d.join("root2.json"));
    ok(&[
        "root",
        "init",
        "--key",
        &a_pub,
        "--sign",
        &a_key,
        "--out",
        s(&r1),
    ]);
    let err = fails(&[
        "root",
        "rotate",
        "--from",
        s(&r1),
        "--key",
        &b_pub,
        "--sign",
        &b_key,
        "--out",
        s(&r2),
    ]);
    assert!(err.contains("not signed by the current root"), "{err}");
    ok(&[
        "root",
        "rotate",
        "--from",
        s(&r1),
        "--key",
        &b_pub,
        "--sign",
        &a_key,
        "--sign",
        &b_key,
        "--out",
        s(&r2),
    ]);
}

#[test]
fn keygen_writes_the_secret_key_private_and_the_public_key_readable() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("release");
    ok(&["keygen", "--out", s(&out)]);
    let mode = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", s(&out)))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".key.json"), 0o600);
    assert_ne!(
        mode(".pub.json") & 0o044,
        0,
        "the public key is for sharing"
    );
    // Nothing else (no temporary copy of the secret) is left next to it.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

#[test]
fn a_release_for_a_hawkbit_client_carries_its_swu_as_an_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let a = d.join("a");
    ok(&["keygen", "--out", s(&a)]);
    let (a_pub, a_key) = (format!("{}.pub.json", s(&a)), format!("{}.key.json", s(&a)));
    let root = d.join("root.json");
    ok(&[
        "root",
        "init",
        "--key",
        &a_pub,
        "--threshold",
        "1",
        "--sign",
        &a_key,
        "--out",
        s(&root),
    ]);
    let swu = d.join("update.swu");
    fs::write(&swu, b"070702 stands in for a cpio archive").unwrap();
    let out = d.join("release.cairn");
    ok(&[
        "bundle",
        "create",
        "--compatible",
        "swupdate-board",
        "--version",
        "1.1.0",
        "--security-version",
        "1",
        "--artifact",
        &format!("update.swu={}", s(&swu)),
        "--key",
        &a_key,
        "-o",
        s(&out),
    ]);
    ok(&["bundle", "verify", s(&out), "--root", s(&root)]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", "--json", s(&out)])).unwrap();
    let image = &json["manifest"]["images"][0];
    assert_eq!(image["name"], "update.swu", "{json}");
    assert_eq!(image["kind"], "artifact", "{json}");
    // Neither an image nor an artifact: nothing to release.
    let err = fails(&[
        "bundle",
        "create",
        "--compatible",
        "b",
        "--version",
        "1.0.0",
        "--security-version",
        "1",
        "--key",
        &a_key,
        "-o",
        s(&d.join("empty.cairn")),
    ]);
    assert!(err.contains("--image"), "{err}");
}
