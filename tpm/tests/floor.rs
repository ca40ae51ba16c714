//! The NV security floor on a real swtpm.

mod common;

use cairn_tpm::swtpm::Swtpm;
use cairn_tpm::{FloorProtection, Tpm, TpmError, MAX_FLOOR_STEP};
use common::TestTpm;

#[test]
fn floor_only_moves_up_and_lives_in_the_tpm() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    assert_eq!(tpm.security_floor().expect("read"), 0);
    assert_eq!(tpm.raise_security_floor(3).expect("raise"), 3);
    assert_eq!(tpm.raise_security_floor(2).expect("no-op"), 3);
    assert_eq!(tpm.security_floor().expect("read"), 3);
    assert_eq!(tpm.raise_security_floor(3).expect("no-op"), 3);
    assert!(matches!(
        tpm.raise_security_floor(3 + MAX_FLOOR_STEP + 1),
        Err(TpmError::FloorStepTooLarge { from: 3, .. })
    ));
    drop(tpm);

    // A new connection reads the same floor.
    assert_eq!(t.open().security_floor().expect("read"), 3);

    // So does the same TPM after a restart (swtpm state persisted on "power off").
    let TestTpm { swtpm, dir } = t;
    drop(swtpm);
    let restarted = Swtpm::start(&dir.path().join("state")).expect("restart swtpm");
    let mut tpm = Tpm::open(&restarted.tcti()).expect("open");
    assert_eq!(tpm.security_floor().expect("read"), 3);
    assert_eq!(tpm.raise_security_floor(5).expect("raise"), 5);
    drop(tpm);

    // Another TPM has its own floor.
    let other = TestTpm::start();
    assert_eq!(other.open().security_floor().expect("read"), 0);
    other.assert_no_leftover_handles();
}

#[test]
fn the_base_index_is_write_once() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    assert_eq!(tpm.raise_security_floor(1).expect("raise"), 1);
    drop(tpm);
    // Overwriting the base (to lower the floor) is refused by the TPM: its only write
    // authorisation is PolicyNvWritten(NO). Even the owner cannot write it.
    let index = format!("{:#x}", cairn_tpm::FLOOR_BASE_NV_INDEX);
    let data = common::write(t.dir.path(), "base", &u64::MAX.to_be_bytes());
    for auth in [["-C", "o"], ["-C", index.as_str()]] {
        let out = t.tool(
            "tpm2_nvwrite",
            &[index.as_str(), auth[0], auth[1], "-i", &data],
        );
        assert!(
            !out.status.success(),
            "base overwritten with {auth:?}: {out:?}"
        );
    }
    assert_eq!(t.open().security_floor().expect("read"), 1);
    t.assert_no_leftover_handles();
}

#[test]
fn provisioning_resumes_after_a_power_cut() {
    let t = TestTpm::start();
    // A cut right after the counter was defined (never incremented): defined the way
    // cairn-tpm defines it, with tpm2-tools.
    let counter = format!("{:#x}", cairn_tpm::FLOOR_COUNTER_NV_INDEX);
    let out = t.tool(
        "tpm2_nvdefine",
        &[
            &counter,
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "nt=counter|ownerwrite|authread|no_da",
        ],
    );
    assert!(out.status.success(), "tpm2_nvdefine: {out:?}");
    let mut tpm = t.open();
    assert_eq!(tpm.security_floor().expect("read"), 0);
    assert_eq!(tpm.raise_security_floor(2).expect("raise"), 2);
    drop(tpm);
    t.assert_no_leftover_handles();
}

#[test]
fn owner_or_platform_undefine_cannot_lower_the_floor() {
    let t = TestTpm::start();
    let mut tpm = t.open();
    assert_eq!(tpm.raise_security_floor(4).expect("raise"), 4);
    assert_eq!(
        tpm.floor_protection().expect("protection"),
        FloorProtection::Undeletable
    );
    drop(tpm);
    for index in [
        cairn_tpm::FLOOR_COUNTER_NV_INDEX,
        cairn_tpm::FLOOR_BASE_NV_INDEX,
    ] {
        let index = format!("{index:#x}");
        // TPM2_NV_UndefineSpace with owner or platform authorisation (both empty here).
        for hierarchy in ["o", "p"] {
            let out = t.tool("tpm2_nvundefine", &[&index, "-C", hierarchy]);
            assert!(
                !out.status.success(),
                "{index} undefined with -C {hierarchy}: {out:?}"
            );
        }
        // TPM2_NV_UndefineSpaceSpecial with the index's own policy, PolicyNvWritten(NO).
        let session = t.dir.path().join("session.ctx");
        let session = session.to_str().expect("utf-8 path");
        let out = t.tool(
            "tpm2_startauthsession",
            &["--policy-session", "-S", session],
        );
        assert!(out.status.success(), "start session: {out:?}");
        let out = t.tool("tpm2_policynvwritten", &["-S", session, "c"]);
        assert!(out.status.success(), "PolicyNvWritten: {out:?}");
        let out = t.tool("tpm2_nvundefine", &[&index, "-C", "p", "-S", session]);
        assert!(
            !out.status.success(),
            "{index} undefined by policy: {out:?}"
        );
        let _ = t.tool("tpm2_flushcontext", &[session]);
    }
    // TPM2_Clear removes everything the owner made, but not the floor.
    let out = t.tool("tpm2_clear", &["-c", "p"]);
    assert!(out.status.success(), "tpm2_clear: {out:?}");
    let mut tpm = t.open();
    assert_eq!(tpm.security_floor().expect("read"), 4);
    assert_eq!(tpm.raise_security_floor(5).expect("raise"), 5);
    drop(tpm);
    t.assert_no_leftover_handles();
}

#[test]
fn a_hidden_platform_floor_is_not_read_as_zero() {
    let t = TestTpm::start();
    assert_eq!(t.open().raise_security_floor(2).expect("raise"), 2);
    // Platform authorisation can hide platform-created indices until the next reset.
    let out = t.tool("tpm2_hierarchycontrol", &["-C", "p", "phEnableNV", "clear"]);
    assert!(out.status.success(), "hierarchycontrol: {out:?}");
    let mut tpm = t.open();
    assert!(matches!(
        tpm.security_floor(),
        Err(TpmError::FloorUnavailable(_))
    ));
    assert!(matches!(
        tpm.raise_security_floor(3),
        Err(TpmError::FloorUnavailable(_))
    ));
}

#[test]
fn a_closed_platform_hierarchy_gives_an_owner_deletable_floor() {
    let t = TestTpm::start();
    // What UEFI firmware does before the OS runs.
    let out = t.tool("tpm2_hierarchycontrol", &["-C", "p", "phEnable", "clear"]);
    assert!(out.status.success(), "hierarchycontrol: {out:?}");
    let mut tpm = t.open();
    assert_eq!(tpm.raise_security_floor(3).expect("raise"), 3);
    assert_eq!(
        tpm.floor_protection().expect("protection"),
        FloorProtection::OwnerDeletable
    );
    assert_eq!(tpm.raise_security_floor(4).expect("raise"), 4);
    drop(tpm);
    t.assert_no_leftover_handles();

    // With owner authorisation (empty on a fresh TPM) the counter can be deleted; the
    // written base still shows the floor was provisioned, so reads fail instead of
    // returning 0.
    let counter = format!("{:#x}", cairn_tpm::FLOOR_COUNTER_NV_INDEX);
    let out = t.tool("tpm2_nvundefine", &[&counter, "-C", "o"]);
    assert!(out.status.success(), "tpm2_nvundefine: {out:?}");
    let mut tpm = t.open();
    assert!(matches!(
        tpm.security_floor(),
        Err(TpmError::FloorTampered(_))
    ));
    assert!(matches!(
        tpm.raise_security_floor(5),
        Err(TpmError::FloorTampered(_))
    ));
}
