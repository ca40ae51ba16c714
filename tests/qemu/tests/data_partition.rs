//! "Nothing runs from /data": the data partition is the device's writable state, shared by
//! both slots and covered by neither dm-verity nor an update. One write to it must not give
//! code execution at the next boot, and a disk that is not the device's must not stand in
//! for it. Each test prepares its disk (or a second one) on the host, boots once, and looks.

use std::time::Duration;

use anyhow::{ensure, Result};
use qemu_tests::disk::foreign_disk;
use qemu_tests::vm::Vm;
use qemu_tests::{record_time, scenario, BOOT_TIMEOUT};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_command_in_the_device_network_conf_is_not_run() -> Result<()> {
    let s = scenario()?;
    // What one write to /data could leave there: valid settings around shell commands, a
    // command after a value, a command substitution in a value. The markers are computed
    // ($((...))), so the file's own text never matches them.
    let conf = "IFACE=eth0\n\
                METHOD=dhcp\n\
                touch /data/ran-a-line\n\
                echo cairn-conf-ran-$((6*7)) > /dev/console\n\
                DNS=10.0.2.3; touch /data/ran-after-a-value\n\
                GATEWAY=$(touch /data/ran-a-substitution)10.0.2.2\n";
    s.disk
        .put_data_file("cairn/network.conf", conf.as_bytes(), s.scratch.path())?;
    let mut vm = Vm::start("network-conf-command", &s.disk.path, s.scratch.path())?;
    vm.wait_for("cairn: userspace up", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    let ran = vm.check("ls /data", COMMAND_TIMEOUT)?;
    ensure!(
        !ran.contains("ran-"),
        "a command in /data/cairn/network.conf ran at boot: /data holds {ran:?}"
    );
    let console = vm.console();
    ensure!(
        !console.contains("cairn-conf-ran-42"),
        "a command in /data/cairn/network.conf printed to the console"
    );
    // The file is refused as a whole, said on the console, and the image's own settings
    // (static, /etc/cairn/network.conf) are used instead.
    ensure!(
        console.contains("cairn: /data/cairn/network.conf rejected"),
        "no rejection on the console"
    );
    ensure!(
        console.contains("cairn: network eth0 static up (/etc/cairn/network.conf)"),
        "the image's network settings were not used"
    );
    let address = vm.check("ip -4 addr show eth0", COMMAND_TIMEOUT)?;
    ensure!(address.contains("10.0.2.15/24"), "eth0: {address}");
    let took = vm.elapsed();
    vm.stop();
    record_time(
        "network.conf with commands rejected, image defaults used",
        took,
    );
    Ok(())
}

#[test]
fn a_data_partition_on_another_disk_is_not_mounted_as_data() -> Result<()> {
    let s = scenario()?;
    // A stick with a GPT partition named `data`, carrying a marker and a network.conf that
    // would switch the device to DHCP. On virtio-scsi the guest calls it /dev/sda, which
    // sorts before the system disk's /dev/vda: the first `data` in sysfs order is its.
    let tree = s.scratch.path().join("stick-data");
    std::fs::create_dir_all(tree.join("cairn"))?;
    std::fs::write(tree.join("stick-marker"), "not the device's data\n")?;
    std::fs::write(tree.join("cairn/network.conf"), "IFACE=eth0\nMETHOD=dhcp\n")?;
    let stick = s.scratch.path().join("stick.img");
    foreign_disk(&stick, &[("data", Some(&tree))])?;
    let mut vm =
        Vm::start_with_scsi_disk("data-on-a-stick", &s.disk.path, s.scratch.path(), &stick)?;
    vm.wait_for("cairn: userspace up", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    // The stick is there, with its partition named `data`...
    vm.check(
        "test -b /dev/sda1 && grep -qx PARTNAME=data /sys/class/block/sda1/uevent",
        COMMAND_TIMEOUT,
    )?;
    // ... and /data is the system disk's own data partition (vda4), not the stick's.
    let mount = vm.check("grep ' /data ' /proc/mounts", COMMAND_TIMEOUT)?;
    ensure!(
        mount.starts_with("/dev/vda4 /data ext4"),
        "/data is not the boot disk's data partition: {mount}"
    );
    let (_, status) = vm.run("test -e /data/stick-marker", COMMAND_TIMEOUT)?;
    ensure!(status != 0, "/data holds the stick's files");
    let console = vm.console();
    ensure!(
        console.contains("cairn: network eth0 static up (/etc/cairn/network.conf)"),
        "the stick's network.conf was used"
    );
    let took = vm.elapsed();
    vm.stop();
    record_time("a stick's data partition ignored", took);
    Ok(())
}

#[test]
fn a_slot_partition_on_another_disk_stops_the_boot_instead_of_choosing_a_disk() -> Result<()> {
    let s = scenario()?;
    // A stick carrying partitions named like the device's slot and data: which disk is the
    // device's is then ambiguous (and /dev/sda2 would be found first). The initramfs
    // refuses before mounting anything and reboots (U-Boot's counting decides).
    let tree = s.scratch.path().join("stick-data");
    std::fs::create_dir_all(tree.join("cairn"))?;
    let stick = s.scratch.path().join("stick.img");
    foreign_disk(&stick, &[("rootfs-a", None), ("data", Some(&tree))])?;
    let mut vm = Vm::start_with_scsi_disk(
        "slot-partition-on-a-stick",
        &s.disk.path,
        s.scratch.path(),
        &stick,
    )?;
    vm.wait_for("cairn: slot A chosen, A=2", BOOT_TIMEOUT)?;
    vm.wait_for(
        "cairn-initramfs: FATAL: partition name rootfs-a is not unique",
        BOOT_TIMEOUT,
    )?;
    vm.wait_for("cairn: slot A chosen, A=1", BOOT_TIMEOUT)?;
    let took = vm.elapsed();
    let console = vm.stop();
    ensure!(
        !console.contains("cairn: userspace up"),
        "the device booted with a second disk claiming its slot"
    );
    record_time("a stick's slot partition stops the boot (2 boots)", took);
    Ok(())
}

#[test]
fn nothing_on_data_or_var_can_be_executed() -> Result<()> {
    let s = scenario()?;
    let mut vm = Vm::start("data-noexec", &s.disk.path, s.scratch.path())?;
    vm.wait_for("cairn: userspace up", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    for dir in ["/data", "/var"] {
        let options = vm.check(
            &format!("awk '$2 == \"{dir}\" {{ print $4 }}' /proc/mounts"),
            COMMAND_TIMEOUT,
        )?;
        for flag in ["nosuid", "nodev", "noexec"] {
            ensure!(
                options.split(',').any(|o| o == flag),
                "{dir} is mounted without {flag}: {options}"
            );
        }
        // A program copied there does not run.
        let (output, status) = vm.run(
            &format!(
                "cp /bin/busybox {dir}/program && chmod 755 {dir}/program && {dir}/program true"
            ),
            COMMAND_TIMEOUT,
        )?;
        ensure!(
            status != 0,
            "a program on {dir} ran (exit {status}): {output}"
        );
        vm.check(&format!("rm {dir}/program"), COMMAND_TIMEOUT)?;
    }
    // containerd's state (profile: disk.data_exec) is its own mount, exec, still nosuid
    // and nodev.
    let containerd = vm.check(
        "awk '$2 == \"/data/containerd\" { print $4 }' /proc/mounts",
        COMMAND_TIMEOUT,
    )?;
    let flags: Vec<&str> = containerd.split(',').collect();
    ensure!(
        !flags.contains(&"noexec") && flags.contains(&"nosuid") && flags.contains(&"nodev"),
        "/data/containerd mount options: {containerd:?}"
    );
    let took = vm.elapsed();
    vm.stop();
    record_time("/data and /var noexec, /data/containerd exec", took);
    Ok(())
}

#[test]
fn a_bigger_medium_gets_data_grown_to_fill_it_even_through_power_cuts() -> Result<()> {
    let s = scenario()?;
    // The ~1 GiB image written to a 4 GiB card: the rest of the card is unused.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s.disk.path)?
        .set_len(4 << 30)?;
    let started = std::time::Instant::now();
    // Power cuts right after each step of the growth; every boot must still come up.
    for (cut, after) in [
        "cairn-initramfs: backup GPT at the end",
        "cairn-initramfs: data partition /dev/vda",
    ]
    .into_iter()
    .enumerate()
    {
        let mut vm = Vm::start(
            &format!("data-grow-cut-{}", cut + 1),
            &s.disk.path,
            s.scratch.path(),
        )?;
        vm.wait_for(after, BOOT_TIMEOUT)?;
        // The kernel learns the new size in the same boot (no second boot needed).
        ensure!(
            cut == 0 || !vm.console().contains("now 256 MiB"),
            "the kernel still sees the old data partition size"
        );
        vm.power_off();
    }
    let mut vm = Vm::start("data-grow", &s.disk.path, s.scratch.path())?;
    vm.wait_for("cairn: userspace up", BOOT_TIMEOUT)?;
    vm.wait_for_shell(BOOT_TIMEOUT)?;
    let total_kib: u64 = vm
        .check("df -k /data | awk 'NR==2 {print $2}'", COMMAND_TIMEOUT)?
        .trim()
        .parse()?;
    ensure!(
        total_kib > 3 << 20,
        "/data is {total_kib} KiB on a 4 GiB medium"
    );
    // The table is whole: both GPT copies valid, the backup at the end of the medium.
    let table = vm.check("sfdisk --verify /dev/vda 2>&1", COMMAND_TIMEOUT)?;
    ensure!(
        table.contains("No errors detected"),
        "sfdisk --verify: {table}"
    );
    // Once grown, a boot leaves it alone.
    ensure!(
        !vm.console()
            .contains("cairn-initramfs: growing data partition"),
        "the third boot grew the partition again"
    );
    vm.stop();
    record_time(
        "data grows to fill a 4 GiB medium through two power cuts",
        started.elapsed(),
    );
    Ok(())
}
