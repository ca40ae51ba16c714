//! Factory to field, as an integrator runs it: flash the image onto a card, boot it once in
//! factory mode, import the provisioning record it printed on a real cairn-server, and
//! the device is approved from its first check-in with its TPM bound, no operator step.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_image::bmap::Bmap;
use cairn_image::os::pipeline::Build;
use cairn_image::provision::settings::DeviceSettings;
use cairn_server_api::ProvisioningRecord;
use qemu_tests::disk::TestDisk;
use qemu_tests::fleet::Fleet;
use qemu_tests::vm::Vm;
use qemu_tests::{host_port, image, record_time, vm_slot, BOOT_TIMEOUT, SITE_SERVER_PORT};

#[test]
fn a_flashed_device_in_factory_mode_is_imported_and_enrolls_approved_with_its_ek() -> Result<()> {
    let build = image()?;
    let _slot = vm_slot();
    let scratch = tempfile::tempdir()?;
    let started = Instant::now();

    // The bench: `cairn-image flash` onto a 2 GiB card, and the factory-mode marker on
    // its boot partition.
    let image_path = build.layout.disk();
    let bmap = Bmap::parse(&std::fs::read_to_string(format!(
        "{}.bmap",
        image_path.display()
    ))?)?;
    let card = scratch.path().join("card.img");
    std::fs::File::create(&card)?.set_len(2 << 30)?;
    cairn_image::flash::flash(&image_path, &bmap, &card, &mut |_, _, _| {})?;
    let disk = TestDisk::at(&card, &build.profile)?;
    disk.put_boot_file("cairn-factory", b"", scratch.path())?;

    let fleet = fleet_for(build, scratch.path())?;
    let mut vm = Vm::start("factory", &card, scratch.path())?;
    vm.wait_for("cairn-provisioning: {", BOOT_TIMEOUT * 2)?;
    let record = whole_record(&vm)?;
    ensure!(record.ek_public.is_some(), "no EK in {record:?}");
    ensure!(
        record.image_version.as_deref() == Some(build.profile.version.as_str()),
        "{record:?}"
    );

    // The operator imports the record; nobody approves anything.
    let summary = fleet.post("/devices/import", Some(serde_json::to_vec(&[&record])?))?;
    ensure!(summary["imported"] == 1, "{summary}");
    let device = wait_for_device(
        &fleet,
        &record.device_id,
        "its AK trusted under the imported EK",
        |d| d["ak_trusted_at"].is_i64(),
    )?;
    ensure!(device["approval"] == "approved", "{device}");
    vm.stop();

    // The same record is on the boot partition, for a line without network.
    let written: ProvisioningRecord = serde_json::from_slice(
        &disk.boot_file(&format!("provisioning/{}.json", record.device_id))?,
    )?;
    ensure!(written == record, "{written:?} != {record:?}");
    record_time(
        "factory: flash, factory-mode record, import, approved with its EK",
        started.elapsed(),
    );
    Ok(())
}

/// How the guest reaches the site's own server: not where the image points
/// ([`qemu_tests::fleet::PUBLIC_URL`]), so only the override can lead there. It listens
/// on the host at [`qemu_tests::host_port`] of that port.
const SITE_URL: &str = "https://10.0.2.2:18481";

#[test]
fn an_identity_provisioned_offline_with_site_settings_is_approved_at_its_site_server() -> Result<()>
{
    let build = image()?;
    let _slot = vm_slot();
    let scratch = tempfile::tempdir()?;
    let started = Instant::now();
    let card = scratch.path().join("card.img");
    std::fs::copy(build.layout.disk(), &card)?;
    // At a bench without network: the identity and the site's settings (hostname,
    // network, and a server override signed with the release key) go into the flashed
    // card, the record into the site's server before the device ever runs.
    let tls = build
        .dev_tls()?
        .context("the QEMU profile names a fleet server")?;
    let config = scratch.path().join("site.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"press-{{device_id}}\"\ntags = [\"site-3\"]\n\
             [network]\niface = \"eth0\"\nmethod = \"static\"\naddress = \"10.0.2.15/24\"\n\
             gateway = \"10.0.2.2\"\ndns = \"10.0.2.3\"\n\
             [server]\nurl = \"{SITE_URL}\"\nca = \"{}\"\n",
            tls.ca.display()
        ),
    )?;
    let release_key = cairn_bundle::SigningKey::from_json(&std::fs::read(
        build.layout.dev_keys().join("release.key.json"),
    )?)?;
    let root = cairn_bundle::TrustRoot::from_json(&std::fs::read(
        build.layout.dev_keys().join("root.json"),
    )?)?;
    let settings = DeviceSettings::load(&config, vec![release_key], Some(&root))?;
    let record = cairn_image::provision::into_target(
        &card,
        scratch.path(),
        &cairn_image::provision::Batch {
            compatible: &build.profile.compatible,
            tags: &["offline".to_string()],
            image_version: Some(&build.profile.version),
            settings: Some(&settings),
        },
    )?;
    ensure!(record.tags == ["offline", "site-3"], "{record:?}");
    let fleet = Fleet::start_at(
        &build.layout.dev_keys().join("root.json"),
        &tls,
        scratch.path(),
        &format!("127.0.0.1:{}", host_port(SITE_SERVER_PORT)),
        SITE_URL,
    )?;
    let summary = fleet.post("/devices/import", Some(serde_json::to_vec(&[&record])?))?;
    ensure!(summary["imported"] == 1, "{summary}");

    let mut vm = Vm::start("factory-offline", &card, scratch.path())?;
    vm.wait_for("cairn: system up", BOOT_TIMEOUT)?;
    let console = vm.console();
    for line in [
        format!(
            "cairn: hostname press-{} (/data/cairn/hostname)",
            record.device_id
        ),
        "cairn: network eth0 static up (/data/cairn/network.conf)".to_string(),
    ] {
        ensure!(console.contains(&line), "no {line:?} on the console");
    }
    let device = wait_for_device(&fleet, &record.device_id, "a check-in", |d| {
        d["last_checkin"].is_i64()
    })?;
    ensure!(device["approval"] == "approved", "{device}");
    ensure!(
        device["public_key"] == record.public_key.as_str(),
        "{device}"
    );
    ensure!(
        fleet.pending_devices()?.is_empty(),
        "the device enrolled under another identity"
    );
    vm.stop();
    record_time(
        "factory offline: identity and site settings in the flashed card, approved at the site's server",
        started.elapsed(),
    );
    Ok(())
}

/// A cairn-server with the image's trust root, serving the TLS certificate its pinned
/// CA issued.
fn fleet_for(build: &Build, dir: &Path) -> Result<Fleet> {
    let tls = build
        .dev_tls()?
        .context("the QEMU profile names a fleet server")?;
    Fleet::start(&build.layout.dev_keys().join("root.json"), &tls, dir)
}

/// Polls the server's record of `device` until `done` holds for it (two boot timeouts).
fn wait_for_device(
    fleet: &Fleet,
    device: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + BOOT_TIMEOUT * 2;
    loop {
        let record = fleet.device(device)?["device"].clone();
        if done(&record) {
            return Ok(record);
        }
        ensure!(
            Instant::now() < deadline,
            "{device} never showed {what}: {record}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The provisioning record the device printed on its console. The serial console is slow:
/// the line's start can be there before its end, so it is read again until it parses
/// (for at most 20 s).
fn whole_record(vm: &Vm) -> Result<ProvisioningRecord> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let console = vm.console();
        let line = console
            .lines()
            .find_map(|l| l.split_once("cairn-provisioning: ").map(|(_, json)| json))
            .context("no provisioning record on the console")?
            .trim()
            .to_string();
        match serde_json::from_str(&line) {
            Ok(record) => return Ok(record),
            Err(e) if e.is_eof() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("provisioning record {line:?}")),
        }
    }
}
