//! Full and delta installs, then what happens across the reboot: commit, rollback,
//! fallback. Real binaries, real bundles, the uboot-env backend on a directory.

mod common;

use std::fs;

use cairn_updater::bootstate::SlotId;
use common::*;

fn installed_pending(d: &Device) {
    let s = d.status();
    assert_eq!(phase(&s), "installed-pending", "{s:#}");
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_b, boot.committed),
        (SlotId::B, 1, SlotId::A)
    );
}

#[test]
fn full_install_writes_every_image_and_arms_a_single_trial() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let bundle = d.bundle(&v2, None);
    let out = d.cairn(&["install", bundle.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rootfs: writing") && stderr.contains("zstd payload"),
        "{stderr}"
    );
    assert!(d.holds(SlotId::B, &v2));
    assert!(d.holds(SlotId::A, &v1), "the committed slot was touched");
    installed_pending(&d);
    assert_eq!(
        fs::read_to_string(d.path("boot/b/slot.env")).unwrap(),
        "slot_args=cairn.version=2.0.0\n"
    );
    // A second install is refused while this one waits for its reboot.
    let err = d.cairn_err(&["install", bundle.to_str().unwrap()]);
    assert!(err.contains("waiting for its reboot"), "{err}");
}

#[test]
fn delta_install_uses_the_running_slot_as_source() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let full_size = fs::metadata(d.bundle(&v2, None)).unwrap().len();
    let bundle = d.bundle(&v2, Some(&v1));
    let out = d.cairn(&["install", bundle.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rootfs: writing 6291456 bytes from the block-bsdiff payload"),
        "{stderr}"
    );
    assert!(d.holds(SlotId::B, &v2));
    installed_pending(&d);
    eprintln!(
        "bundle with deltas {} bytes; full-only {full_size}",
        fs::metadata(&bundle).unwrap().len()
    );
}

#[test]
fn healthy_trial_is_committed_and_success_reported_only_then() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let mut d = Device::new(&v1);
    d.health_check("ok", "kind = \"command\"\ncommand = [\"true\"]\n");
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    let reports = |d: &Device| -> Vec<String> {
        let state: serde_json::Value =
            serde_json::from_slice(&fs::read(d.path("data/cairn/state.json")).unwrap()).unwrap();
        state["outbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!reports(&d).contains(&"committed".to_string()));
    assert_eq!(d.reboot(), SlotId::B);
    assert_eq!(d.boot_state().tries_b, 0, "U-Boot spent the single try");
    let out = d.cairnd_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = d.status();
    assert_eq!(phase(&s), "committed");
    assert_eq!(s["slots"]["B"]["version"], "2.0.0");
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_b, boot.committed, boot.tries_a),
        (SlotId::B, 3, SlotId::B, 3)
    );
    assert!(reports(&d).contains(&"committed".to_string()));
    assert_eq!(s["security_floor"], 1);
    // The next reboot boots B again, as the committed slot.
    assert_eq!(d.reboot(), SlotId::B);
    d.cairnd_once();
    assert_eq!(
        d.boot_state().tries_b,
        3,
        "committed slot's tries are refreshed on each boot"
    );
}

#[test]
fn failing_health_check_rolls_back_and_the_version_is_not_retried() {
    let v1 = Release::new("1.0.0", 0);
    let v3 = Release::new("3.0.0", 5);
    let mut d = Device::new(&v1);
    d.health_check(
        "app",
        "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo app is not serving >&2; exit 3\"]\n",
    );
    let bundle = d.bundle(&v3, None);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    d.reboot();
    d.cairnd_once();
    let s = d.status();
    assert_eq!(phase(&s), "rolled-back", "{s:#}");
    let reason = s["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("'app'") && reason.contains("app is not serving"),
        "{reason}"
    );
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_b, boot.committed),
        (SlotId::A, 0, SlotId::A)
    );
    assert!(
        d.path("rebooted").exists(),
        "cairnd reboots into the committed slot"
    );
    assert_eq!(d.reboot(), SlotId::A);
    d.cairnd_once();
    assert_eq!(phase(&d.status()), "rolled-back");
    let err = d.cairn_err(&["install", bundle.to_str().unwrap()]);
    assert!(err.contains("failed its trial before"), "{err}");
    d.cairn_ok(&["install", "--force", bundle.to_str().unwrap()]);
}

#[test]
fn a_slot_that_never_boots_gets_three_trial_boots_then_is_declined() {
    let v1 = Release::new("1.0.0", 0);
    let v4 = Release::new("4.0.0", 2);
    let mut d = Device::new(&v1);
    d.cairn_ok(&["install", d.bundle(&v4, None).to_str().unwrap()]);
    for attempt in 1..=3 {
        assert_eq!(d.reboot(), SlotId::B); // the trial kernel never reaches cairnd...
        assert_eq!(d.reboot(), SlotId::A); // ...and U-Boot falls back: B has no tries left
        let out = d.cairnd_once();
        assert!(out.status.success());
        if attempt < 3 {
            // No verdict yet: B is armed again for the next reboot.
            assert_eq!(phase(&d.status()), "installed-pending", "attempt {attempt}");
            let boot = d.boot_state();
            assert_eq!((boot.order[0], boot.tries_b), (SlotId::B, 1));
        }
    }
    let s = d.status();
    assert_eq!(phase(&s), "rolled-back");
    let reason = s["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not boot") && reason.contains("3 of 3 trial boots"),
        "{s:#}"
    );
    assert_eq!(d.boot_state().order[0], SlotId::A);
}

#[test]
fn mark_good_and_mark_bad_decide_a_trial_by_hand() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let mut d = Device::new(&v1);
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    d.reboot();
    // The daemon has not decided yet (e.g. its checks are still running).
    let state_path = d.path("data/cairn/state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    let p = state["phase"].clone();
    state["phase"] = serde_json::json!({"phase": "trial-boot", "slot": "B", "version": p["version"], "security_version": 1});
    fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    assert!(d
        .cairn_ok(&["mark-good"])
        .contains("committed 2.0.0 in slot B"));
    assert_eq!(d.boot_state().committed, SlotId::B);
    // Back to A through an explicit rollback: A becomes a trial, B stays the fallback.
    d.cairn_ok(&["rollback"]);
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_a, boot.tries_b),
        (SlotId::A, 1, 3)
    );
    assert_eq!(d.reboot(), SlotId::A);
    d.cairnd_once(); // no health checks declared: passes
    assert_eq!(d.boot_state().committed, SlotId::A);
}

#[test]
fn history_lists_every_step() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let mut d = Device::new(&v1);
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    d.reboot();
    d.cairnd_once();
    let history = d.cairn_ok(&["history"]);
    for event in ["install-started", "installed", "trial-boot", "committed"] {
        assert!(history.contains(event), "{event} missing from\n{history}");
    }
    let human = d.cairn_ok(&["status"]);
    assert!(human.contains("slot B:    2.0.0"), "{human}");
}

#[test]
fn a_power_cut_during_the_trial_checks_is_reported_as_an_interruption_after_boot() {
    let v1 = Release::new("1.0.0", 0);
    let v4 = Release::new("4.0.0", 2);
    let mut d = Device::new(&v1);
    d.health_check(
        "slow",
        "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"sleep 20; exit 1\"]\n",
    );
    d.cairn_ok(&["install", d.bundle(&v4, None).to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    let mut daemon = d.spawn_cairnd();
    wait_for(20, "the trial's health checks to start", || {
        d.state_json()["phase"]["checks_started"] == true
    });
    daemon.kill().unwrap(); // the power goes during the checks
    daemon.wait().unwrap();
    assert_eq!(d.reboot(), SlotId::A, "B had its one try");
    let out = d.cairnd_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = d.state_json();
    assert_eq!(
        state["phase"]["phase"], "installed-pending",
        "retried: {state:#}"
    );
    let retry = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["event"] == "trial-retry")
        .expect("a trial-retry entry");
    let detail = retry["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "trial of slot B interrupted after boot (power cut, reset or hang during checks)"
        ),
        "{detail}"
    );
    assert!(!detail.contains("did not boot"), "{detail}");
}

#[test]
fn a_bundle_carrying_an_artifact_for_another_installer_is_refused_before_anything_is_written() {
    let (v1, v2) = (Release::new("1.0.0", 0), Release::new("2.0.0", 3));
    let d = Device::new(&v1);
    let swu = d.path("build/update.swu");
    fs::create_dir_all(swu.parent().unwrap()).unwrap();
    fs::write(&swu, b"an SWUpdate archive for a hawkBit client").unwrap();
    let bundle = d.bundle_with(
        &v2,
        Some(&v1),
        "v2-with-artifact",
        &[cairn_testkit::copy_key(&d.key)],
        |spec| {
            spec.images.push(cairn_bundle::writer::ImageInput {
                name: "update.swu".into(),
                path: swu.clone(),
                verity: None,
                kind: cairn_bundle::ImageKind::Artifact,
                pcr11: None,
                pcr4: None,
                pcr7: None,
            })
        },
    );
    let before = fs::read(d.path("dev/rootfs-b")).unwrap();
    let err = d.cairn_err(&["install", bundle.to_str().unwrap()]);
    assert!(
        err.contains("'update.swu', an artifact for a device with its own installer"),
        "{err}"
    );
    assert_eq!(
        fs::read(d.path("dev/rootfs-b")).unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(phase(&d.status()), "committed");
}
