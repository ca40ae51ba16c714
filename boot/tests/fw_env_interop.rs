//! The boot-state copies against Debian's tools: files cairnd writes read correctly with
//! `fw_printenv` (libubootenv), files `fw_setenv` and U-Boot's `mkenvimage` write read
//! correctly with ours, and our encoder writes the same bytes as `mkenvimage`. Each copy
//! is a plain (non-redundant) 0x4000-byte env, as in boot/BOOT-STATE.md.

use std::path::Path;
use std::process::Command;

use std::collections::BTreeMap;

use cairn_boot::{env, BootState, BootStateStore, SlotId, UbootEnvStore};

fn fw_config(dir: &Path, copy: usize) -> std::path::PathBuf {
    let cfg = dir.join(format!("fw_env.{copy}.config"));
    std::fs::write(
        &cfg,
        format!(
            "{} 0x0 0x4000\n",
            dir.join(format!("bootstate.{copy}")).display()
        ),
    )
    .unwrap();
    cfg
}

fn fw(tool: &str, cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(tool)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (libubootenv-tool, `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn printenv(cfg: &Path) -> Vec<String> {
    fw("fw_printenv", cfg, &[])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn fw_printenv_reads_both_copies_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = UbootEnvStore::new(dir.path());
    let first = store.store(&BootState::factory()).unwrap();
    let mut next = first.clone();
    next.prepare_install(SlotId::B);
    next.arm_trial(SlotId::B);
    let second = store.store(&next).unwrap();

    let copy0 = printenv(&fw_config(dir.path(), 0));
    for line in ["BOOT_ORDER=A B", "BOOT_A_LEFT=3", "BOOT_B_LEFT=0"] {
        assert!(copy0.contains(&line.to_string()), "{line} not in {copy0:?}");
    }
    assert!(
        copy0.contains(&format!("CAIRN_SEQ={}", first.seq)),
        "{copy0:?}"
    );
    let copy1 = printenv(&fw_config(dir.path(), 1));
    for line in ["BOOT_ORDER=B A", "BOOT_B_LEFT=1", "CAIRN_COMMITTED=A"] {
        assert!(copy1.contains(&line.to_string()), "{line} not in {copy1:?}");
    }
    assert!(
        copy1.contains(&format!("CAIRN_SEQ={}", second.seq)),
        "{copy1:?}"
    );
}

#[test]
fn what_fw_setenv_writes_reads_back_and_survives_our_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = UbootEnvStore::new(dir.path());
    store.store(&BootState::factory()).unwrap();
    let cfg = fw_config(dir.path(), 0);
    // An operator (or a factory script) edits the newest copy with Debian's tool.
    fw("fw_setenv", &cfg, &["BOOT_ORDER", "B A"]);
    fw("fw_setenv", &cfg, &["BOOT_B_LEFT", "2"]);
    fw("fw_setenv", &cfg, &["serial_baud", "115200"]);
    let read = store.load().unwrap();
    assert_eq!((read.order[0], read.tries_b), (SlotId::B, 2));

    // Our next write goes to the other copy and keeps variables we do not own.
    let mut changed = read.clone();
    changed.commit(SlotId::B);
    store.store(&changed).unwrap();
    let copy1 = printenv(&fw_config(dir.path(), 1));
    assert!(
        copy1.contains(&"serial_baud=115200".to_string()),
        "{copy1:?}"
    );
    assert!(
        copy1.contains(&"CAIRN_COMMITTED=B".to_string()),
        "{copy1:?}"
    );
}

#[test]
fn an_env_image_made_by_mkenvimage_reads_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("env.txt");
    std::fs::write(
        &text,
        "BOOT_ORDER=B A\nBOOT_A_LEFT=3\nBOOT_B_LEFT=1\nCAIRN_SEQ=7\nCAIRN_COMMITTED=A\n",
    )
    .unwrap();
    let out = Command::new("mkenvimage")
        .args(["-s", "0x4000", "-o"])
        .arg(dir.path().join("bootstate.1"))
        .arg(&text)
        .output()
        .expect("mkenvimage (u-boot-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = UbootEnvStore::new(dir.path()).load().unwrap();
    assert_eq!(
        (
            state.order[0],
            state.tries_a,
            state.tries_b,
            state.seq,
            state.committed
        ),
        (SlotId::B, 3, 1, 7, SlotId::A)
    );
}

#[test]
fn our_encoder_writes_what_mkenvimage_writes() {
    let vars: BTreeMap<String, String> = [
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("CAIRN_SEQ", "4"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let blob = env::encode(&vars).unwrap();
    assert_eq!(env::decode(&blob).unwrap(), vars);
    // mkenvimage (u-boot-tools) is the reference encoder (zero padding, as U-Boot exports).
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("env.txt");
    std::fs::write(&text, "BOOT_A_LEFT=3\nBOOT_ORDER=A B\nCAIRN_SEQ=4\n").unwrap();
    let out = dir.path().join("env.bin");
    let status = Command::new("mkenvimage")
        .args(["-s", "0x4000", "-p", "0", "-o"])
        .arg(&out)
        .arg(&text)
        .status()
        .expect("mkenvimage (u-boot-tools)");
    assert!(status.success());
    assert_eq!(std::fs::read(out).unwrap(), blob);
}
