//! The NV security floor on a real swtpm.

mod common;

use cairn_tpm::swtpm::Swtpm;
use cairn_tpm::{Tpm, TpmError, MAX_FLOOR_STEP};
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
fn a_deleted_counter_is_reported_not_read_as_zero() {
    let t = TestTpm::start();
    assert_eq!(t.open().raise_security_floor(4).expect("raise"), 4);
    // With owner authorisation (empty on swtpm) the counter can be deleted; the written
    // base still shows the floor was provisioned, so reads fail instead of returning 0.
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
