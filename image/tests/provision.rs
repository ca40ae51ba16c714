//! `cairn-image provision` on a real GPT disk with an ext4 data partition.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use cairn_image::provision::{partition, IDENTITY_ON_DATA};
use cairn_server_api::{DeviceIdentity, ProvisioningRecord};

/// A 48 MiB GPT disk: a boot partition and an ext4 partition named `data`.
fn disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    cairn_image::os::disk::sfdisk(&disk, "label: gpt\nsize=8MiB, name=boot\nname=data\n").unwrap();
    let (offset, len) = partition(&disk, "data").unwrap();
    let fs = dir.join("data.ext4");
    std::fs::File::create(&fs).unwrap().set_len(len).unwrap();
    let ok = Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&fs)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4");
    let bytes = std::fs::read(&fs).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&bytes, offset)
        .unwrap();
    disk
}

fn debugfs(fs: &str, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn provision(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-image"))
        .arg("provision")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_batch_gets_one_identity_per_data_partition_copy_and_an_importable_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let out = dir.path().join("batch");
    let run = provision(&[
        "--image",
        disk.to_str().unwrap(),
        "--count",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--compatible",
        "cairn-x",
        "--tag",
        "line-2",
        "--image-version",
        "0.1.0",
    ]);
    assert!(run.status.success(), "{run:?}");
    let records: Vec<ProvisioningRecord> =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(records.len(), 3);
    let ids: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.device_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "distinct devices");
    for record in &records {
        assert_eq!(record.compatible, "cairn-x");
        assert_eq!(record.tags, ["line-2"]);
        assert_eq!(record.image_version.as_deref(), Some("0.1.0"));
        let copy = out.join(format!("{}.data.img", record.device_id));
        let copy = copy.to_str().unwrap();
        let identity =
            DeviceIdentity::from_json(debugfs(copy, &format!("cat {IDENTITY_ON_DATA}")).as_bytes())
                .unwrap();
        assert_eq!(identity.device_id, record.device_id);
        assert_eq!(identity.public_key_hex(), record.public_key);
        let stat = debugfs(copy, &format!("stat {IDENTITY_ON_DATA}"));
        assert!(
            stat.contains("Mode:  0600") && stat.contains("User:     0"),
            "{stat}"
        );
    }
}

#[test]
fn a_flashed_card_gets_its_identity_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let out = dir.path().join("records");
    let run = provision(&[
        "--target",
        disk.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--compatible",
        "cairn-x",
    ]);
    assert!(run.status.success(), "{run:?}");
    let (offset, _) = partition(&disk, "data").unwrap();
    let fs = format!("{}?offset={offset}", disk.display());
    let identity =
        DeviceIdentity::from_json(debugfs(&fs, &format!("cat {IDENTITY_ON_DATA}")).as_bytes())
            .unwrap();
    let record: ProvisioningRecord = serde_json::from_slice(
        &std::fs::read(out.join(format!("{}.json", identity.device_id))).unwrap(),
    )
    .unwrap();
    assert_eq!(record.public_key, identity.public_key_hex());

    // A disk without a data partition is refused by name, nothing written.
    let bare = dir.path().join("bare.img");
    std::fs::File::create(&bare)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    cairn_image::os::disk::sfdisk(&bare, "label: gpt\nname=boot\n").unwrap();
    let run = provision(&[
        "--target",
        bare.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--compatible",
        "cairn-x",
    ]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no partition named data"),
        "{run:?}"
    );
}
