//! Boot-path scenarios on the real image under QEMU: U-Boot's A/B choice, counting,
//! fallback, recovery and torn boot-state copies (boot/BOOT-STATE.md). Each test copies
//! the disk, may damage the copy, boots it, and checks the console and the boot state
//! left on disk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use qemu_tests::disk::TestDisk;
use qemu_tests::ntp::NtpServer;
use qemu_tests::vm::Vm;
use qemu_tests::{image, record_time, scenario, BOOT_TIMEOUT};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn boots_slot_a_from_a_read_only_verity_root_with_containerd_ready() -> Result<()> {
    let s = scenario()?;
    let mut vm = Vm::start("boot-slot-a", &s.disk.path, s.scratch.path())?;
    vm.wait_for("cairn: slot A chosen, A=2", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    let to_shell = vm.elapsed();

    let cmdline = vm.check("cat /proc/cmdline", COMMAND_TIMEOUT)?;
    ensure!(cmdline.contains("cairn.slot=A"), "cmdline: {cmdline}");
    ensure!(
        cmdline.contains("root=PARTLABEL=rootfs-a"),
        "cmdline: {cmdline}"
    );
    ensure!(!cmdline.contains("cairn.recovery"), "cmdline: {cmdline}");

    // The root is erofs on the dm-verity device, mounted read-only...
    let root = vm.check("grep ' / ' /proc/mounts", COMMAND_TIMEOUT)?;
    ensure!(root.contains("/dev/dm-0 / erofs ro"), "root mount: {root}");
    let dm_name = vm.check("cat /sys/block/dm-0/dm/name", COMMAND_TIMEOUT)?;
    ensure!(dm_name == "cairn-root", "dm name: {dm_name}");
    let table = vm.check("dmsetup table cairn-root", COMMAND_TIMEOUT)?;
    ensure!(
        table.contains(" verity 1 ") && table.contains("restart_on_corruption"),
        "verity table: {table}"
    );
    let root_hash = image()?.verity()?.root_hash;
    ensure!(
        table.contains(&root_hash),
        "the table does not carry the slot's root hash {root_hash}: {table}"
    );
    // ... so writing to it fails, while /data, /etc (overlay) and /var take writes.
    let (_, status) = vm.run("touch /usr/cairn-write-test", COMMAND_TIMEOUT)?;
    ensure!(status != 0, "writing to the read-only root succeeded");
    vm.check(
        "touch /data/ok /etc/ok /var/ok && grep -q ' /data ext4 rw' /proc/mounts",
        COMMAND_TIMEOUT,
    )?;
    vm.check("grep -q ' /boot vfat rw' /proc/mounts", COMMAND_TIMEOUT)?;
    vm.check("test -c /dev/tpmrm0", COMMAND_TIMEOUT)?;
    // What cairnd will read: its config and the trust root, on the verified root.
    vm.check(
        "grep -q 'backend = \"uboot-env\"' /etc/cairn/system.toml && test -s /etc/cairn/root.json",
        COMMAND_TIMEOUT,
    )?;
    let address = vm.check("ip -4 addr show eth0", COMMAND_TIMEOUT)?;
    ensure!(address.contains("10.0.2.15/24"), "eth0: {address}");

    // containerd's CRI answers RuntimeReady (and the CNI config makes the network ready).
    let cri = vm.wait_for_cri()?;
    ensure!(cri.contains("RuntimeReady=true"), "CRI status: {cri}");
    ensure!(cri.contains("NetworkReady=true"), "CRI status: {cri}");
    // init supervises it: killed, it comes back.
    vm.check("killall containerd", COMMAND_TIMEOUT)?;
    vm.wait_for("cairn: containerd exited; restarting", COMMAND_TIMEOUT)?;
    vm.wait_for_cri()?;

    let took = vm.elapsed();
    vm.stop();
    record_time("boot slot A to shell", to_shell);
    record_time("boot slot A, all checks", took);
    Ok(())
}

#[test]
fn cairn_status_reports_slot_a_committed() -> Result<()> {
    let s = scenario()?;
    let mut vm = Vm::start("cairn-status", &s.disk.path, s.scratch.path())?;
    vm.wait_for("cairn: slot A chosen, A=2", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    // cairnd is started by init right after rcS; its "started" line comes after it
    // reconciled the boot (and persisted what it changed).
    vm.wait_for_cairnd("started")?;
    let status = vm.cairn_status()?;
    ensure!(status["booted"] == "A", "cairn status: {status}");
    ensure!(status["committed"] == "A", "cairn status: {status}");
    ensure!(status["recovery"] == false, "cairn status: {status}");
    ensure!(
        status["compatible"] == "cairn-qemu-arm64",
        "cairn status: {status}"
    );
    // U-Boot took one try (3 -> 2); the booted committed slot gets its full tries back.
    ensure!(
        status["slots"]["A"]["tries_left"] == 3,
        "cairn status: {status}"
    );
    ensure!(
        status["slots"]["B"]["tries_left"] == 3 && status["slots"]["B"]["bootable"] == true,
        "slot B (a copy of A on this disk) keeps its tries: {status}"
    );
    let took = vm.elapsed();
    vm.stop();
    // ... and that is on the boot partition, where U-Boot reads it.
    let state = s.disk.boot_state()?;
    ensure!(
        state["BOOT_A_LEFT"] == "3" && state["CAIRN_COMMITTED"] == "A",
        "boot state: {state:?}"
    );
    ensure!(
        state["CAIRN_SEQ"] == "3",
        "one U-Boot write, one cairnd write: {state:?}"
    );
    record_time("cairnd refreshes slot A, cairn status", took);
    Ok(())
}

#[test]
fn network_settings_on_data_override_the_image_dhcp_works_and_ntp_sets_a_clock_from_1970(
) -> Result<()> {
    let s = scenario()?;
    // A board without a clock battery and no fleet server to give it a `Date`: only the
    // NTP server (chronyd on the host) can tell it the time.
    let _ntp = NtpServer::start(s.scratch.path())?;
    let mut vm = Vm::start_with_clock(
        "network-dhcp-ntp",
        &s.disk.path,
        s.scratch.path(),
        None,
        Some("1970-01-01T00:00:00"),
    )?;
    vm.wait_for(
        "cairn: network eth0 static up (/etc/cairn/network.conf)",
        BOOT_TIMEOUT,
    )?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    // cairnd gives the committed slot its tries back (3); wait for it so the next boot's
    // count is known.
    vm.wait_for_cairnd("started")?;
    vm.wait_for_cairnd("clock synchronised by NTP")?;
    let guest: i64 = vm.check("date -u +%s", COMMAND_TIMEOUT)?.trim().parse()?;
    let host = time::OffsetDateTime::now_utc().unix_timestamp();
    ensure!(
        (guest - host).abs() <= 10,
        "the guest's clock is {} s off the NTP server's",
        guest - host
    );
    vm.check(
        "printf 'IFACE=eth0\\nMETHOD=dhcp\\n' > /data/cairn/network.conf && sync",
        COMMAND_TIMEOUT,
    )?;
    vm.send("reboot -f")?;
    vm.wait_for("cairn: slot A chosen, A=2", BOOT_TIMEOUT)?;
    vm.wait_for(
        "cairn: network eth0 dhcp up (/data/cairn/network.conf)",
        BOOT_TIMEOUT,
    )?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    // QEMU's user network leases 10.0.2.15 with gateway 10.0.2.2 and DNS 10.0.2.3.
    let address = vm.check("ip -4 addr show eth0", COMMAND_TIMEOUT)?;
    ensure!(address.contains("10.0.2.15/24"), "eth0: {address}");
    let route = vm.check("ip route show default", COMMAND_TIMEOUT)?;
    ensure!(route.contains("via 10.0.2.2"), "route: {route}");
    let resolv = vm.check("cat /etc/resolv.conf", COMMAND_TIMEOUT)?;
    ensure!(
        resolv.contains("nameserver 10.0.2.3"),
        "resolv.conf: {resolv}"
    );
    let took = vm.elapsed();
    vm.stop();
    record_time(
        "clock from 1970 set by NTP; static then DHCP from /data (2 boots)",
        took,
    );
    Ok(())
}

#[test]
fn a_corrupt_rootfs_block_is_caught_by_verity_and_slot_b_takes_over() -> Result<()> {
    let s = scenario()?;
    // Block 0 holds the erofs superblock: the initramfs's mount must read it.
    s.disk.flip_byte("rootfs-a", 1024)?;
    let mut vm = Vm::start("verity-fallback", &s.disk.path, s.scratch.path())?;
    for left in [2, 1, 0] {
        vm.wait_for(&format!("cairn: slot A chosen, A={left}"), BOOT_TIMEOUT)?;
        vm.wait_for("is corrupted", BOOT_TIMEOUT)?;
        vm.wait_for("Restarting system", BOOT_TIMEOUT)?;
    }
    vm.wait_for("cairn: slot B chosen, A=0 B=2", BOOT_TIMEOUT)?;
    vm.wait_for("cairn: userspace up: slot=B recovery=0", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    let console = vm.console();
    ensure!(
        console.contains("is corrupted"),
        "dm-verity did not report the corrupt block"
    );
    let root = vm.check("grep ' / ' /proc/mounts", COMMAND_TIMEOUT)?;
    ensure!(root.contains("/dev/dm-0 / erofs ro"), "root mount: {root}");
    // cairnd sees the committed slot A did not boot: it runs B's health checks (the CRI)
    // and commits B, which gets its full tries and becomes what recovery would boot.
    vm.wait_for_cairnd("update committed")?;
    let took = vm.elapsed();
    vm.stop();
    let state = s.disk.boot_state()?;
    ensure!(state["BOOT_A_LEFT"] == "0", "boot state: {state:?}");
    ensure!(state["BOOT_B_LEFT"] == "3", "boot state: {state:?}");
    ensure!(state["CAIRN_COMMITTED"] == "B", "boot state: {state:?}");
    ensure!(state["BOOT_ORDER"] == "B A", "boot state: {state:?}");
    record_time(
        "verity catches a flipped byte, fallback to B (4 boots)",
        took,
    );
    Ok(())
}

#[test]
fn a_corrupt_block_read_at_run_time_restarts_the_device() -> Result<()> {
    let s = scenario()?;
    // The last data block of the slot: not read while booting, so the slot boots; reading
    // it later must restart the machine (restart_on_corruption), not return an I/O error.
    let verity = image()?.verity()?;
    let last_block = verity.data_size / 4096 - 1;
    s.disk.flip_byte("rootfs-a", last_block * 4096 + 100)?;
    let mut vm = Vm::start("verity-runtime", &s.disk.path, s.scratch.path())?;
    vm.wait_for("cairn: slot A chosen, A=2", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    // cairnd refreshes the committed slot's tries (3) first, so the count after the
    // restart is known.
    vm.wait_for_cairnd("started")?;
    vm.send(&format!(
        "dd if=/dev/dm-0 of=/dev/null bs=4096 skip={last_block} count=1"
    ))?;
    vm.wait_for(
        &format!("data block {last_block} is corrupted"),
        COMMAND_TIMEOUT,
    )?;
    vm.wait_for("Restarting system", COMMAND_TIMEOUT)?;
    vm.wait_for("cairn: slot A chosen, A=2", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    let took = vm.elapsed();
    vm.stop();
    record_time(
        "verity restart on a corrupt block read at run time (2 boots)",
        took,
    );
    Ok(())
}

#[test]
fn a_slot_whose_kernel_does_not_boot_is_abandoned_after_three_tries() -> Result<()> {
    let s = scenario()?;
    s.disk
        .put_boot_file("a/vmlinuz", &vec![0u8; 1 << 20], s.scratch.path())?;
    let mut vm = Vm::start("bad-kernel", &s.disk.path, s.scratch.path())?;
    for left in [2, 1, 0] {
        vm.wait_for(&format!("cairn: slot A chosen, A={left}"), BOOT_TIMEOUT)?;
    }
    vm.wait_for("cairn: slot B chosen, A=0 B=2", BOOT_TIMEOUT)?;
    vm.wait_for("cairn: userspace up: slot=B recovery=0", BOOT_TIMEOUT)?;
    let took = vm.elapsed();
    let console = vm.stop();
    ensure!(
        console.matches("cairn: booting slot A").count() == 3,
        "slot A was not tried exactly three times"
    );
    record_time("unbootable kernel abandoned after 3 tries (4 boots)", took);
    Ok(())
}

#[test]
fn with_no_tries_left_the_committed_slot_boots_in_recovery_instead_of_looping() -> Result<()> {
    let s = scenario()?;
    // A fresh disk with slot B empty: A has 3 tries, B none. A boot that reaches cairnd
    // gives committed A its tries back, so tries run out only when boots keep dying
    // before userspace: here, power cuts just after U-Boot persisted each try.
    let fresh = qemu_tests::disk_with_empty_slot_b(s.scratch.path())?;
    let disk = TestDisk::copy_of(&fresh, &image()?.profile, s.scratch.path())?;
    let initial = disk.boot_state()?;
    ensure!(
        initial["BOOT_A_LEFT"] == "3" && initial["BOOT_B_LEFT"] == "0",
        "fresh boot state: {initial:?}"
    );
    ensure!(disk.boot_file("b/vmlinuz").is_err(), "slot B is not empty");
    let started = Instant::now();
    for left in [2, 1, 0] {
        let mut vm = Vm::start("recovery", &disk.path, s.scratch.path())?;
        vm.wait_for(
            &format!("cairn: slot A chosen, A={left} B=0, saved"),
            BOOT_TIMEOUT,
        )?;
        vm.stop();
    }
    // Twice: the recovery boot repeats without resetting any counter (U-Boot never
    // loops through trials by itself).
    for _ in 0..2 {
        let mut vm = Vm::start("recovery", &disk.path, s.scratch.path())?;
        vm.wait_for(
            "cairn: no slot has tries left: recovery boot of committed slot A",
            BOOT_TIMEOUT,
        )?;
        vm.wait_for("cairn: slot A chosen, A=0 B=0, saved", BOOT_TIMEOUT)?;
        vm.stop();
    }
    let state = disk.boot_state()?;
    ensure!(state["BOOT_A_LEFT"] == "0", "boot state: {state:?}");
    ensure!(state["BOOT_B_LEFT"] == "0", "boot state: {state:?}");
    ensure!(state["CAIRN_RECOVERY"] == "1", "boot state: {state:?}");
    ensure!(
        state["CAIRN_SEQ"] == "6",
        "every boot persists a new copy: {state:?}"
    );
    // This time the recovery boot reaches userspace: cairnd reports it, clears it and
    // gives the committed slot its tries back.
    let mut vm = Vm::start("recovery", &disk.path, s.scratch.path())?;
    vm.wait_for("cairn: no slot has tries left", BOOT_TIMEOUT)?;
    vm.wait_for("cairn: userspace up: slot=A recovery=1", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    let cmdline = vm.check("cat /proc/cmdline", COMMAND_TIMEOUT)?;
    ensure!(cmdline.contains("cairn.recovery=1"), "cmdline: {cmdline}");
    vm.wait_for_cairnd("started")?;
    let status = vm.cairn_status()?;
    ensure!(status["recovery"] == true, "cairn status: {status}");
    ensure!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("recovery boot")),
        "cairn status: {status}"
    );
    let took = started.elapsed();
    vm.stop();
    let state = disk.boot_state()?;
    ensure!(state["BOOT_A_LEFT"] == "3", "boot state: {state:?}");
    ensure!(state["BOOT_B_LEFT"] == "0", "boot state: {state:?}");
    ensure!(
        !state.contains_key("CAIRN_RECOVERY") && state["CAIRN_SEQ"] == "8",
        "boot state: {state:?}"
    );
    record_time(
        "3 tries, 2 recovery boots (power cuts), recovery cleared by cairnd (6 boots)",
        took,
    );
    Ok(())
}

#[test]
fn a_torn_newest_boot_state_copy_falls_back_to_the_older_one() -> Result<()> {
    let s = scenario()?;
    // bootstate.0 (seq 1) says B is out of tries; bootstate.1 (seq 2) is newer but torn.
    s.disk.set_boot_state(
        &state(&[
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "0"),
            ("CAIRN_COMMITTED", "A"),
        ]),
        s.scratch.path(),
    )?;
    let mut torn = cairn_boot::env::encode(&state(&[
        ("BOOT_ORDER", "B A"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("CAIRN_COMMITTED", "B"),
        ("CAIRN_SEQ", "2"),
    ]))?;
    torn[40] ^= 0x55;
    s.disk
        .put_boot_file("bootstate.1", &torn, s.scratch.path())?;
    let mut vm = Vm::start("torn-state", &s.disk.path, s.scratch.path())?;
    vm.wait_for("bootstate.0 seq 1, bootstate.1 seq -1", BOOT_TIMEOUT)?;
    vm.wait_for(
        "cairn: slot A chosen, A=2 B=0, saved bootstate.1 seq 2",
        BOOT_TIMEOUT,
    )?;
    vm.wait_for("cairn: userspace up: slot=A", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    // cairnd reads the same newest valid copy (U-Boot's, seq 2), writes the other one
    // (bootstate.0, seq 3) and gives committed slot A its tries back.
    vm.wait_for_cairnd("started")?;
    let took = vm.elapsed();
    vm.stop();
    let state = s.disk.boot_state()?;
    ensure!(
        state["CAIRN_SEQ"] == "3" && state["BOOT_A_LEFT"] == "3" && state["BOOT_B_LEFT"] == "0",
        "{state:?}"
    );
    let copy0 = cairn_boot::env::decode(&s.disk.boot_file("bootstate.0")?).unwrap_or_default();
    ensure!(
        copy0.get("CAIRN_SEQ").map(String::as_str) == Some("3"),
        "cairnd did not write bootstate.0: {copy0:?}"
    );
    record_time("torn boot-state copy ignored", took);
    Ok(())
}

#[test]
fn rebuilding_from_the_same_packages_gives_the_same_bytes() -> Result<()> {
    // The whole chain after the download: tree assembly, cross-compiled binaries, modules,
    // initramfs, erofs and verity, into a second output directory.
    let build = image()?;
    let scratch = tempfile::tempdir()?;
    let mut layout = build.layout.clone();
    layout.out = scratch.path().join("again");
    let trust_root = build.layout.dev_keys().join("root.json");
    let server_ca = build.dev_tls()?.map(|tls| tls.ca);
    cairn_image::os::rootfs::build(&build.profile, &layout, &trust_root, server_ca.as_deref())?;
    let again = cairn_image::os::slot::build(
        &build.profile.slot,
        &layout.tree(),
        &layout.slot_image(),
        &layout.verity_json(),
    )?;
    ensure!(
        std::fs::read(build.layout.initrd())? == std::fs::read(layout.initrd())?,
        "two builds of the initramfs differ"
    );
    ensure!(
        std::fs::read(build.layout.slot_image())? == std::fs::read(layout.slot_image())?,
        "two builds of the slot image differ"
    );
    ensure!(
        std::fs::read(build.layout.verity_json())? == std::fs::read(layout.verity_json())?,
        "verity.json differs"
    );
    println!(
        "slot: {} bytes ({} erofs), root hash {}",
        again.total_size, again.verity.data_size, again.verity.root_hash
    );
    Ok(())
}
