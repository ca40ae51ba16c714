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

#[test]
fn a_config_gives_each_device_its_settings_and_a_bad_one_writes_nothing() {
    use cairn_bundle::{SignedRoot, SignedServerOverride, SigningKey, TrustRoot};
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let key = SigningKey::generate().unwrap();
    let key_file = dir.path().join("release.key");
    std::fs::write(&key_file, key.to_json()).unwrap();
    let mut signed_root = SignedRoot::new(
        1,
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
        1,
        vec![key.public()],
    );
    signed_root.sign(&key).unwrap();
    let root_file = dir.path().join("root.json");
    std::fs::write(&root_file, signed_root.to_json()).unwrap();
    // cairn-image checks only that it is PEM; the device parses it.
    let ca_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.path().join("site-ca.pem"), ca_pem).unwrap();
    let config = dir.path().join("site.toml");
    std::fs::write(
        &config,
        "hostname = \"press-{device_id}\"\ntags = [\"site-3\"]\n\
         [network]\niface = \"eth0\"\nmethod = \"static\"\naddress = \"10.1.2.3/24\"\n\
         gateway = \"10.1.2.1\"\n\
         [server]\nurl = \"https://site-3.example:8443\"\nca = \"site-ca.pem\"\n",
    )
    .unwrap();
    let out = dir.path().join("batch");
    let args = |config: &Path| {
        vec![
            "--image".to_string(),
            disk.display().to_string(),
            "--count".into(),
            "2".into(),
            "--out".into(),
            out.display().to_string(),
            "--compatible".into(),
            "cairn-x".into(),
            "--config".into(),
            config.display().to_string(),
            "--key".into(),
            key_file.display().to_string(),
            "--root".into(),
            root_file.display().to_string(),
        ]
    };
    let run = provision(&args(&config).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.status.success(), "{run:?}");
    let records: Vec<ProvisioningRecord> =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let root = TrustRoot::anchor(signed_root.clone()).unwrap();
    for record in &records {
        assert_eq!(record.tags, ["site-3"]);
        let copy = out.join(format!("{}.data.img", record.device_id));
        let copy = copy.to_str().unwrap();
        assert_eq!(
            debugfs(copy, "cat cairn/hostname"),
            format!("press-{}\n", record.device_id)
        );
        assert_eq!(
            debugfs(copy, "cat cairn/network.conf"),
            "IFACE=eth0\nMETHOD=static\nADDRESS=10.1.2.3/24\nGATEWAY=10.1.2.1\n"
        );
        let stat = debugfs(copy, "stat cairn/network.conf");
        assert!(stat.contains("Mode:  0644"), "{stat}");
        let signed =
            SignedServerOverride::parse(debugfs(copy, "cat cairn/server-override.json").as_bytes())
                .unwrap();
        let body = signed.verify(&root, &record.device_id).unwrap();
        assert_eq!(body.url, "https://site-3.example:8443");
        assert_eq!(body.ca_pem.as_deref(), Some(ca_pem));
        let other = records
            .iter()
            .find(|r| r.device_id != record.device_id)
            .unwrap();
        assert!(
            signed.verify(&root, &other.device_id).is_err(),
            "copied to another device"
        );
    }

    // A mistake in the config is named, and no device is written.
    std::fs::remove_dir_all(&out).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "hostname = \"press_{device_id}\"\n").unwrap();
    let mut bad_args = args(&bad);
    bad_args.truncate(bad_args.len() - 4);
    let run = provision(&bad_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("hostname"),
        "{stderr}"
    );
    assert!(!out.exists(), "something was written for a bad config");
}
