# Cairn A/B boot script for U-Boot (hush). Implements boot/BOOT-STATE.md:
# two boot-state copies (bootstate.0/.1, 16 KiB U-Boot env format with CRC), the valid copy
# with the higher CAIRN_SEQ wins, decrement-and-persist into the OTHER copy before loading
# the kernel, and a recovery boot of CAIRN_COMMITTED instead of a counter-reset loop.
# Compiled with: mkimage -A arm64 -O linux -T script -C none -d boot.cmd boot.scr
echo "cairn: boot.scr on ${devtype} ${devnum}:${distro_bootpart}"
test -n "${devtype}" || setenv devtype virtio
test -n "${devnum}" || setenv devnum 0
test -n "${distro_bootpart}" || setenv distro_bootpart 1
setenv cairn_part ${devnum}:${distro_bootpart}
# Scratch RAM for env blobs, clear of the kernel (0x40400000), initrd (0x44000000) and
# the script itself (scriptaddr).
setenv cairn_envaddr 0x4fe00000
setenv cairn_vars "BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT CAIRN_SEQ CAIRN_COMMITTED CAIRN_RECOVERY"

# --- read: which copies are valid (right size, right CRC), and their sequence numbers.
# A copy only counts when both the size and the CRC (env import -c) are right.
setenv cairn_seq0 -1
setenv cairn_seq1 -1
for cairn_copy in 0 1; do
  setenv CAIRN_SEQ
  if fatload ${devtype} ${cairn_part} ${cairn_envaddr} bootstate.${cairn_copy}; then
    if test "${filesize}" = "4000"; then
      if env import -c ${cairn_envaddr} 0x4000 CAIRN_SEQ; then
        if test -n "${CAIRN_SEQ}"; then
          setenv cairn_seq${cairn_copy} ${CAIRN_SEQ}
        fi
      fi
    fi
  fi
done
echo "cairn: bootstate.0 seq ${cairn_seq0}, bootstate.1 seq ${cairn_seq1} (-1 = invalid)"

setenv cairn_newest
if test ${cairn_seq0} -ge 0; then
  setenv cairn_newest 0
fi
if test ${cairn_seq1} -ge 0; then
  if test -z "${cairn_newest}"; then
    setenv cairn_newest 1
  elif test ${cairn_seq1} -gt ${cairn_seq0}; then
    setenv cairn_newest 1
  fi
fi

for cairn_var in ${cairn_vars}; do
  setenv ${cairn_var}
done
if test -n "${cairn_newest}"; then
  fatload ${devtype} ${cairn_part} ${cairn_envaddr} bootstate.${cairn_newest}
  env import -c ${cairn_envaddr} 0x4000 ${cairn_vars}
  if test "${cairn_newest}" = "0"; then
    setenv cairn_other 1
  else
    setenv cairn_other 0
  fi
else
  echo "cairn: no valid boot state, using defaults"
  setenv cairn_other 0
  setenv CAIRN_SEQ 0
fi
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 0
test -n "${CAIRN_COMMITTED}" || setenv CAIRN_COMMITTED A
echo "cairn: state ORDER=${BOOT_ORDER} A=${BOOT_A_LEFT} B=${BOOT_B_LEFT} committed=${CAIRN_COMMITTED} seq=${CAIRN_SEQ}"

# --- choose: the first slot in BOOT_ORDER with tries left; take one try.
setenv cairn_slot
for cairn_try in ${BOOT_ORDER}; do
  if test -z "${cairn_slot}"; then
    if test "${cairn_try}" = "A"; then
      if test ${BOOT_A_LEFT} -gt 0; then
        setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
        setenv cairn_slot A
      fi
    elif test "${cairn_try}" = "B"; then
      if test ${BOOT_B_LEFT} -gt 0; then
        setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
        setenv cairn_slot B
      fi
    fi
  fi
done

# --- no slot has tries left: boot the committed slot in recovery mode. No counter is
# reset, so a broken system cannot loop through trials forever; cairnd reports it.
setenv cairn_recovery_args
if test -z "${cairn_slot}"; then
  setenv cairn_slot ${CAIRN_COMMITTED}
  setenv CAIRN_RECOVERY 1
  setenv cairn_recovery_args cairn.recovery=1
  echo "cairn: no slot has tries left: recovery boot of committed slot ${cairn_slot}"
fi
if test "${cairn_slot}" = "B"; then
  setenv cairn_dir b
else
  setenv cairn_slot A
  setenv cairn_dir a
fi

# --- persist BEFORE loading the kernel: the other copy, sequence number + 1.
setexpr CAIRN_SEQ ${CAIRN_SEQ} + 1
env export -c -s 0x4000 ${cairn_envaddr} ${cairn_vars}
if fatwrite ${devtype} ${cairn_part} ${cairn_envaddr} bootstate.${cairn_other} 0x4000; then
  echo "cairn: slot ${cairn_slot} chosen, A=${BOOT_A_LEFT} B=${BOOT_B_LEFT}, saved bootstate.${cairn_other} seq ${CAIRN_SEQ}"
else
  echo "cairn: cannot write bootstate.${cairn_other}; not booting without a persisted try"
  reset
fi

# --- load and boot. Any failure resets: the persisted decrement makes this finite.
setenv slot_args
fatload ${devtype} ${cairn_part} ${cairn_envaddr} ${cairn_dir}/slot.env || reset
env import -t ${cairn_envaddr} ${filesize} slot_args || reset
test -n "${slot_args}" || reset
fatload ${devtype} ${cairn_part} ${kernel_addr_r} ${cairn_dir}/vmlinuz || reset
fatload ${devtype} ${cairn_part} ${ramdisk_addr_r} ${cairn_dir}/initrd.img || reset
setenv cairn_initrd_size ${filesize}
setenv bootargs "console=ttyAMA0 root=PARTLABEL=rootfs-${cairn_dir} cairn.slot=${cairn_slot} ${slot_args} panic=5 ${cairn_recovery_args}"
echo "cairn: booting slot ${cairn_slot}: ${bootargs}"
booti ${kernel_addr_r} ${ramdisk_addr_r}:${cairn_initrd_size} ${fdtcontroladdr}
echo "cairn: booti failed"
reset
