//! The UEFI path's boot state: one unified kernel image per slot in `\EFI\Linux` on the
//! EFI system partition, a Boot Loader Specification type #2 entry that systemd-boot
//! finds, orders and counts by its file name alone (docs/UEFI.md). No other file holds
//! boot state on this path.
//!
//! An entry's file name is `cairn-<generation>-<slot>[+<left>[-<done>]].efi`:
//! - `generation` grows by one with every install, so the newest install sorts first;
//! - `slot` is `a` or `b`;
//! - the counter is systemd-boot's boot assessment: `+1-0` is a trial with one try left.
//!   Before starting a counted entry, systemd-boot renames it with one try moved from
//!   `left` to `done`; at `+0-<n>` it is "bad" and sorts after every other entry. An
//!   entry without a counter is good: it always boots when chosen.
//!
//! systemd-boot starts the first entry in its order. For Cairn's names (no sort key, as
//! the UKIs' os-release carries no `ID` or `IMAGE_ID`) that order is: bad entries last,
//! then the file name without its counter in descending version order (here: the higher
//! generation first), then more tries left first. [`EntrySet::next_boot`] is that rule; a
//! QEMU test holds it to the real systemd-boot.
//!
//! Policy stays in [`BootState`]: cairnd makes the same transitions on both boot paths.
//! [`state_of`] reads a [`BootState`] off the entries, and [`plan`] says which renames
//! and removals make the entries say what a [`BootState`] says; [`crate::EfiEntryStore`]
//! applies them one at a time, each synced. A new slot's UKI is written under a *staged*
//! name systemd-boot ignores ([`staged_name`], not ending in `.efi`) and renamed to its
//! trial entry last, so systemd-boot never sees a half-written UKI.

use std::cmp::Ordering;
use std::fmt;

use crate::state::{BootState, BootStateError, SlotId, FULL_TRIES, TRIAL_TRIES};

/// The directory of the ESP that holds the entries.
pub const ENTRY_DIR: &str = "EFI/Linux";
const PREFIX: &str = "cairn-";
const SUFFIX: &str = ".efi";

/// systemd-boot's boot-assessment counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// One entry: a slot's UKI under its counted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub generation: u64,
    pub slot: SlotId,
    pub counter: Option<Counter>,
}

impl Entry {
    /// Parses a file name in `\EFI\Linux`; `None` for anything that is not a Cairn entry
    /// (other UKIs, temp files), which the transitions leave alone.
    pub fn parse(file_name: &str) -> Option<Entry> {
        let lower = file_name.to_ascii_lowercase();
        let stem = lower.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (id, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((id, counter)) => {
                let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
                (
                    id,
                    Some(Counter {
                        left: number(left)?,
                        done: number(done)?,
                    }),
                )
            }
        };
        let (generation, slot) = id.split_once('-')?;
        let slot = match slot {
            "a" => SlotId::A,
            "b" => SlotId::B,
            _ => return None,
        };
        Some(Entry {
            generation: number(generation)?,
            slot,
            counter,
        })
    }

    pub fn file_name(&self) -> String {
        let counter = self
            .counter
            .map_or(String::new(), |c| format!("+{}-{}", c.left, c.done));
        format!(
            "{PREFIX}{}-{}{counter}{SUFFIX}",
            self.generation,
            self.slot.lower()
        )
    }

    /// No tries left: systemd-boot puts it after every other entry.
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }

    /// What systemd-boot renames the entry to when it starts it.
    pub fn after_one_try(&self) -> Entry {
        let counter = self.counter.map(|c| Counter {
            left: c.left.saturating_sub(1),
            done: c.done.saturating_add(1),
        });
        Entry { counter, ..*self }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

fn number<T: std::str::FromStr>(digits: &str) -> Option<T> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The EFI variable in which systemd-boot tells the OS which entry it started (its
/// vendor GUID is the Boot Loader Interface's), as efivarfs names it.
pub const LOADER_ENTRY_SELECTED: &str = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The slot of the entry systemd-boot started, from the contents of the efivarfs file
/// [`LOADER_ENTRY_SELECTED`]: 4 bytes of attributes, then the entry's id in UTF-16LE
/// (with or without a terminating NUL). The id is the entry's file name; it is read with
/// or without its counter and `.efi` suffix. `None` when it is not a Cairn entry.
///
/// This is how the OS learns its slot on the UEFI path, where one UKI, and so one signed
/// command line, serves both slots. The initramfs reads the same variable
/// (`boot/initramfs/init`).
pub fn selected_entry_slot(efivar: &[u8]) -> Option<SlotId> {
    let units: Vec<u16> = efivar
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    let id = String::from_utf16(&units).ok()?.to_ascii_lowercase();
    let rest = id.strip_prefix(PREFIX)?;
    let (generation, rest) = rest.split_once('-')?;
    number::<u64>(generation)?;
    let mut chars = rest.chars();
    let slot = match chars.next()? {
        'a' => SlotId::A,
        'b' => SlotId::B,
        _ => return None,
    };
    match chars.next() {
        None | Some('+') | Some('.') => Some(slot),
        Some(_) => None,
    }
}

/// The `n`th name a retired entry may take in [`ENTRY_DIR`] ([`EntryOp::Retire`]). Nothing
/// reads, renames over or removes these names: they share clusters with a live entry, or
/// with whatever reused the clusters after that entry was removed.
pub fn retired_name(n: u32) -> String {
    format!("{PREFIX}retired-{n}")
}

/// The name a slot's new UKI is written under, in [`ENTRY_DIR`], until it is complete.
pub fn staged_name(slot: SlotId) -> String {
    format!("{PREFIX}{}.staged", slot.lower())
}

/// One step of a transition, on names in [`ENTRY_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    Remove(Entry),
    /// A name a torn rename left beside its twin ([`EntrySet::stale_duplicates`]), moved
    /// out of systemd-boot's sight ([`retired_name`]) rather than removed: both names are
    /// one file on FAT, and unlinking either frees the clusters the other still uses.
    Retire(Entry),
    Rename {
        from: Entry,
        to: Entry,
    },
    /// The slot's staged UKI ([`staged_name`]) becomes entry `to`.
    Promote {
        slot: SlotId,
        to: Entry,
    },
}

/// The Cairn entries on an ESP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySet {
    entries: Vec<Entry>,
}

impl EntrySet {
    /// The entries among a directory listing's file names (others are ignored).
    pub fn from_file_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> EntrySet {
        EntrySet {
            entries: names
                .into_iter()
                .filter_map(|n| Entry::parse(n.as_ref()))
                .collect(),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// What a freshly flashed disk holds: slot A committed (`cairn-1-a.efi`), and when
    /// slot B holds a bootable copy, B good too but after A (`cairn-0-b.efi`), so it is
    /// the fallback from the first boot on.
    pub fn flashed(slot_b_bootable: bool) -> EntrySet {
        let mut entries = vec![Entry {
            generation: 1,
            slot: SlotId::A,
            counter: None,
        }];
        if slot_b_bootable {
            entries.push(Entry {
                generation: 0,
                slot: SlotId::B,
                counter: None,
            });
        }
        EntrySet { entries }
    }

    /// systemd-boot's order: bad last, then higher generation first, then more tries
    /// left, then fewer tries done.
    pub fn in_boot_order(&self) -> Vec<Entry> {
        let mut sorted = self.entries.clone();
        sorted.sort_by(boot_order);
        sorted
    }

    /// The entry systemd-boot starts next (and renames with [`Entry::after_one_try`] first).
    pub fn next_boot(&self) -> Option<Entry> {
        self.in_boot_order().into_iter().next()
    }

    /// The entries of `slot`.
    pub fn of_slot(&self, slot: SlotId) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.slot == slot)
    }

    /// The name a freshly installed slot's UKI is renamed to once it is completely written
    /// and synced: the next generation, on trial with exactly one try.
    pub fn trial_entry(&self, target: SlotId) -> Entry {
        let generation = self.entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
        Entry {
            generation,
            slot: target,
            counter: Some(Counter {
                left: TRIAL_TRIES,
                done: 0,
            }),
        }
    }

    /// Names a power cut left twice. FAT's rename writes the new name before it deletes
    /// the old one, so a cut between the two leaves one file under two entry names, and
    /// Cairn's transitions never leave a slot with two entries otherwise. Of a slot's
    /// entries the one to keep is the name the rename was making: the highest generation
    /// (a trial armed again), then the good one (a bless), then the one with fewer tries
    /// left (systemd-boot's count-down). The others are returned.
    pub fn stale_duplicates(&self) -> Vec<Entry> {
        let mut stale = Vec::new();
        for slot in [SlotId::A, SlotId::B] {
            let mut entries: Vec<Entry> = self.of_slot(slot).copied().collect();
            let left = |e: &Entry| e.counter.map_or(u32::MAX, |c| c.left);
            // Kept first: newest, then good (no counter), then fewest tries left.
            entries.sort_by(|a, b| {
                b.generation
                    .cmp(&a.generation)
                    .then(a.counter.is_some().cmp(&b.counter.is_some()))
                    .then(left(a).cmp(&left(b)))
            });
            stale.extend(entries.into_iter().skip(1));
        }
        stale
    }

    /// The set after `ops`.
    pub fn apply(&self, ops: &[EntryOp]) -> EntrySet {
        let mut entries = self.entries.clone();
        for op in ops {
            match op {
                EntryOp::Remove(gone) | EntryOp::Retire(gone) => entries.retain(|e| e != gone),
                EntryOp::Rename { from, to } => {
                    for e in entries.iter_mut().filter(|e| *e == from) {
                        *e = *to;
                    }
                }
                EntryOp::Promote { to, .. } => entries.push(*to),
            }
        }
        EntrySet { entries }
    }
}

/// The boot state the entries amount to, in [`BootState`]'s terms:
/// - a slot without an entry, or whose entry is bad, has no tries; a good entry has
///   [`FULL_TRIES`]; a counted one the tries its name has left;
/// - the order is systemd-boot's;
/// - the committed slot is the one of the newest good entry (the one that boots when no
///   trial is pending), or, with none good, slot A;
/// - there is no recovery flag (systemd-boot boots whatever sorts first, bad or not, so a
///   device with no good entry is not told apart) and no sequence number.
pub fn state_of(set: &EntrySet) -> BootState {
    let order_entries = set.in_boot_order();
    let tries = |slot: SlotId| {
        let live = order_entries
            .iter()
            .filter(|e| e.slot == slot && !e.is_bad());
        live.map(|e| e.counter.map_or(FULL_TRIES, |c| c.left))
            .max()
            .unwrap_or(0)
    };
    let mut order: Vec<SlotId> = Vec::new();
    for slot in order_entries
        .iter()
        .map(|e| e.slot)
        .chain([SlotId::A, SlotId::B])
    {
        if !order.contains(&slot) {
            order.push(slot);
        }
    }
    let committed = order_entries
        .iter()
        .find(|e| e.counter.is_none())
        .map_or(SlotId::A, |e| e.slot);
    BootState {
        order,
        tries_a: tries(SlotId::A),
        tries_b: tries(SlotId::B),
        committed,
        recovery: false,
        seq: 0,
    }
}

/// The steps that make `set` (with a staged UKI for each slot in `staged`) say what
/// `desired` says, for the transitions cairnd makes:
/// - a slot with no tries loses its entries (before an install, and after a failed
///   trial: the slot's image is not to be booted again);
/// - the committed slot's entry, if counted, is blessed (loses its counter), also when
///   it is at `+0-n`: the trial that just booted has used its one try;
/// - a slot with tries that has no live entry gets its staged UKI as a trial entry of
///   the next generation; one that has an entry (even a bad one) but is to boot next
///   although it would not (`cairn rollback` arming the kept image, another trial boot
///   after one without a verdict) has that entry renamed to one;
/// - a stale duplicate a power cut left is retired first ([`EntryOp::Retire`]).
///
/// Anything else is refused rather than approximated: a desired slot with tries but
/// neither an entry nor a staged UKI, a committed slot that is not bootable, or a
/// result whose next boot differs from `desired`'s.
pub fn plan(
    set: &EntrySet,
    staged: &[SlotId],
    desired: &BootState,
) -> Result<Vec<EntryOp>, BootStateError> {
    let mut ops: Vec<EntryOp> = set
        .stale_duplicates()
        .into_iter()
        .map(EntryOp::Retire)
        .collect();
    let mut current = set.apply(&ops);
    let refuse = |why: String| Err(BootStateError::Invalid(format!("UEFI entries: {why}")));
    for slot in [SlotId::A, SlotId::B] {
        let entries: Vec<Entry> = current.of_slot(slot).copied().collect();
        // The image to arm again when the slot must boot next: its live entry, or a bad
        // one unless a newer image is staged for the slot.
        let kept = entries.iter().find(|e| !e.is_bad()).or_else(|| {
            if staged.contains(&slot) {
                None
            } else {
                entries.first()
            }
        });
        let step: Vec<EntryOp> = if desired.tries(slot) == 0 {
            entries.iter().map(|e| EntryOp::Remove(*e)).collect()
        } else if desired.committed == slot && !entries.is_empty() {
            // The trial that booted has used its try (`+0-1`): blessing makes it good.
            entries
                .iter()
                .filter(|e| e.counter.is_some())
                .map(|e| EntryOp::Rename {
                    from: *e,
                    to: Entry {
                        counter: None,
                        ..*e
                    },
                })
                .collect()
        } else if let Some(kept) = kept {
            let first_now = current.next_boot().map(|e| e.slot) == Some(slot);
            if desired.next_boot() == Some(slot) && !first_now {
                // An image kept in the slot, armed again: `cairn rollback`, or another
                // trial boot after one that ended without a verdict (its entry is bad).
                // A trial of the next generation, so it sorts first and counts as one.
                let mut step: Vec<EntryOp> = entries
                    .iter()
                    .filter(|e| *e != kept)
                    .map(|e| EntryOp::Remove(*e))
                    .collect();
                step.push(EntryOp::Rename {
                    from: *kept,
                    to: current.trial_entry(slot),
                });
                step
            } else {
                Vec::new()
            }
        } else if staged.contains(&slot) {
            let mut step: Vec<EntryOp> =
                current.of_slot(slot).map(|e| EntryOp::Remove(*e)).collect();
            step.push(EntryOp::Promote {
                slot,
                to: current.trial_entry(slot),
            });
            step
        } else {
            return refuse(format!(
                "slot {slot} is to boot but has neither an entry nor a staged image"
            ));
        };
        current = current.apply(&step);
        ops.extend(step);
    }
    if desired.tries(desired.committed) == 0 && desired.next_boot().is_some() {
        return refuse(format!("committed slot {} has no tries", desired.committed));
    }
    let next = current.next_boot().map(|e| e.slot);
    if next != desired.next_boot() {
        return refuse(format!(
            "systemd-boot would start {:?} next, the boot state says {:?}",
            next,
            desired.next_boot()
        ));
    }
    Ok(ops)
}

fn boot_order(a: &Entry, b: &Entry) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then(b.generation.cmp(&a.generation))
        .then(b.slot.cmp(&a.slot))
        .then_with(|| match (a.counter, b.counter) {
            (Some(x), Some(y)) => y.left.cmp(&x.left).then(x.done.cmp(&y.done)),
            _ => Ordering::Equal,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> EntrySet {
        EntrySet::from_file_names(names)
    }

    fn efivar(id: &str) -> Vec<u8> {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in id.encode_utf16().chain([0]) {
            bytes.extend(unit.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn the_selected_entry_names_the_booted_slot() {
        for (id, slot) in [
            ("cairn-1-a.efi", Some(SlotId::A)),
            ("cairn-12-b+0-1.efi", Some(SlotId::B)),
            ("CAIRN-3-B+1.EFI", Some(SlotId::B)),
            ("cairn-3-a", Some(SlotId::A)),
            ("cairn-3-ab.efi", None),
            ("cairn-x-a.efi", None),
            ("debian.efi", None),
            ("", None),
        ] {
            assert_eq!(selected_entry_slot(&efivar(id)), slot, "{id}");
        }
        assert_eq!(
            selected_entry_slot(&[6, 0]),
            None,
            "shorter than its attributes"
        );
        let mut no_nul = efivar("cairn-1-b.efi");
        no_nul.truncate(no_nul.len() - 2);
        assert_eq!(selected_entry_slot(&no_nul), Some(SlotId::B));
    }

    #[test]
    fn a_flashed_disk_boots_a_committed_with_b_as_the_fallback_when_copied() {
        for slot_b_bootable in [false, true] {
            let set = EntrySet::flashed(slot_b_bootable);
            let state = state_of(&set);
            assert_eq!(state.committed, SlotId::A);
            assert_eq!(state.next_boot(), Some(SlotId::A));
            assert_eq!(state.tries(SlotId::B) > 0, slot_b_bootable);
            assert_eq!(set.next_boot().unwrap().file_name(), "cairn-1-a.efi");
        }
        let names: Vec<String> = EntrySet::flashed(true)
            .in_boot_order()
            .iter()
            .map(Entry::file_name)
            .collect();
        assert_eq!(names, ["cairn-1-a.efi", "cairn-0-b.efi"]);
    }

    #[test]
    fn names_round_trip_and_foreign_files_are_ignored() {
        for name in ["cairn-1-a.efi", "cairn-12-b+1-0.efi", "cairn-3-a+0-2.efi"] {
            assert_eq!(Entry::parse(name).unwrap().file_name(), name);
        }
        assert_eq!(
            Entry::parse("cairn-2-b+3.efi").unwrap().counter,
            Some(Counter { left: 3, done: 0 })
        );
        assert_eq!(Entry::parse("CAIRN-2-B.EFI").unwrap().slot, SlotId::B);
        for other in [
            "debian.efi",
            "cairn-1-c.efi",
            "cairn-x-a.efi",
            "cairn-1-a.efi.tmp",
            "cairn-1-a+-0.efi",
            "cairn--a.efi",
        ] {
            assert_eq!(Entry::parse(other), None, "{other}");
        }
        assert_eq!(set(&["cairn-1-a.efi", "ubuntu.efi"]).entries().len(), 1);
    }

    #[test]
    fn the_newest_generation_boots_first_unless_it_is_bad() {
        let s = set(&["cairn-9-a.efi", "cairn-10-b+1-0.efi"]);
        assert_eq!(
            s.next_boot().unwrap().file_name(),
            "cairn-10-b+1-0.efi",
            "10 > 9 as numbers"
        );
        let s = set(&["cairn-9-a.efi", "cairn-10-b+0-1.efi"]);
        assert_eq!(s.next_boot().unwrap().file_name(), "cairn-9-a.efi");
        assert_eq!(set(&[]).next_boot(), None);
    }

    /// Applies a planned transition of `state` to `set` as the store would.
    fn transition(set: &EntrySet, staged: &[SlotId], state: &BootState) -> EntrySet {
        set.apply(&plan(set, staged, state).unwrap())
    }

    #[test]
    fn an_install_trial_and_commit_go_through_the_states_systemd_boot_sees() {
        let committed = set(&["cairn-1-a.efi", "cairn-1-b+0-1.efi"]);
        let mut state = state_of(&committed);
        assert_eq!(
            (state.committed, state.tries_a, state.tries_b),
            (SlotId::A, FULL_TRIES, 0)
        );

        state.prepare_install(SlotId::B);
        let prepared = transition(&committed, &[], &state);
        assert_eq!(prepared, set(&["cairn-1-a.efi"]));

        state.arm_trial(SlotId::B);
        assert!(
            plan(&prepared, &[], &state).is_err(),
            "no staged image: refused"
        );
        let armed = transition(&prepared, &[SlotId::B], &state);
        assert_eq!(armed, set(&["cairn-1-a.efi", "cairn-2-b+1-0.efi"]));
        let trial = armed.next_boot().unwrap();
        assert_eq!(trial.file_name(), "cairn-2-b+1-0.efi");

        // systemd-boot renames before starting; then cairnd commits.
        let booted = armed.apply(&[EntryOp::Rename {
            from: trial,
            to: trial.after_one_try(),
        }]);
        assert_eq!(booted, set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]));
        state.commit(SlotId::B);
        let committed = transition(&booted, &[], &state);
        assert_eq!(committed, set(&["cairn-1-a.efi", "cairn-2-b.efi"]));
        assert_eq!(committed.next_boot().unwrap().slot, SlotId::B);
        let read = state_of(&committed);
        assert_eq!(
            (read.committed, read.order[0], read.tries_a, read.tries_b),
            (SlotId::B, SlotId::B, FULL_TRIES, FULL_TRIES)
        );
    }

    #[test]
    fn an_unblessed_or_rejected_trial_falls_back_and_is_never_retried() {
        let booted = set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        assert_eq!(booted.next_boot().unwrap().slot, SlotId::A);
        let mut state = state_of(&booted);
        assert_eq!((state.tries_b, state.next_boot()), (0, Some(SlotId::A)));
        // A trial that booted but failed its checks is rejected before its first try is used up.
        let armed = set(&["cairn-1-a.efi", "cairn-2-b+1-0.efi"]);
        state = state_of(&armed);
        state.reject(SlotId::B);
        assert_eq!(transition(&armed, &[], &state), set(&["cairn-1-a.efi"]));
    }

    #[test]
    fn rollback_arms_the_kept_image_as_a_trial_of_the_next_generation() {
        let committed = set(&["cairn-1-a.efi", "cairn-2-b.efi"]);
        let mut state = state_of(&committed);
        state.arm_trial(SlotId::A);
        let armed = transition(&committed, &[], &state);
        assert_eq!(armed, set(&["cairn-3-a+1-0.efi", "cairn-2-b.efi"]));
        assert_eq!(armed.next_boot().unwrap().slot, SlotId::A);
    }

    #[test]
    fn a_staged_image_wins_over_a_bad_entry_of_its_slot() {
        let failed = set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        let mut state = state_of(&failed);
        state.arm_trial(SlotId::B);
        let armed = transition(&failed, &[SlotId::B], &state);
        assert_eq!(armed, set(&["cairn-1-a.efi", "cairn-3-b+1-0.efi"]));
        let ops = plan(&failed, &[SlotId::B], &state).unwrap();
        assert!(
            ops.iter().any(|op| matches!(op, EntryOp::Promote { .. })),
            "{ops:?}"
        );
    }

    /// A power cut after any step of any transition leaves entries whose next boot is the
    /// one before the transition or the one after it (invariants 2, 3 and 5 between any
    /// two writes), and a cut inside a rename (both names on FAT) is resolved by the next
    /// plan without booting anything else.
    #[test]
    fn every_prefix_of_every_transition_boots_the_old_or_the_new_choice() {
        type Transition = fn(&mut BootState);
        let transitions: [(&str, &[&str], &[SlotId], Transition); 5] = [
            (
                "prepare",
                &["cairn-1-a.efi", "cairn-1-b+0-1.efi"],
                &[],
                |s| s.prepare_install(SlotId::B),
            ),
            ("arm", &["cairn-1-a.efi"], &[SlotId::B], |s| {
                s.arm_trial(SlotId::B)
            }),
            (
                "commit",
                &["cairn-1-a.efi", "cairn-2-b+0-1.efi"],
                &[],
                |s| s.commit(SlotId::B),
            ),
            (
                "reject",
                &["cairn-1-a.efi", "cairn-2-b+1-0.efi"],
                &[],
                |s| s.reject(SlotId::B),
            ),
            ("rollback", &["cairn-1-a.efi", "cairn-2-b.efi"], &[], |s| {
                s.arm_trial(SlotId::A)
            }),
        ];
        for (name, names, staged, transition) in transitions {
            let before = set(names);
            let mut desired = state_of(&before);
            transition(&mut desired);
            let ops = plan(&before, staged, &desired).unwrap();
            let choices = [before.next_boot().map(|e| e.slot), desired.next_boot()];
            for cut in 0..=ops.len() {
                let partial = before.apply(&ops[..cut]);
                let next = partial.next_boot().map(|e| e.slot);
                assert!(choices.contains(&next), "{name}, cut after {cut}: {next:?}");
                // A cut inside the next rename leaves both names.
                if let Some(EntryOp::Rename { from, to }) = ops.get(cut) {
                    let torn = EntrySet {
                        entries: [partial.entries.clone(), vec![*to]].concat(),
                    };
                    assert!(torn.entries().contains(from));
                    let replan = plan(&torn, staged, &desired).unwrap();
                    let next = torn.apply(&replan).next_boot().map(|e| e.slot);
                    assert_eq!(
                        next,
                        desired.next_boot(),
                        "{name}, torn rename {from} -> {to}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_trial_without_a_verdict_can_be_armed_again() {
        let booted = set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        let mut state = state_of(&booted);
        state.arm_trial(SlotId::B);
        assert_eq!(
            transition(&booted, &[], &state),
            set(&["cairn-1-a.efi", "cairn-3-b+1-0.efi"])
        );
    }

    #[test]
    fn a_torn_rearm_keeps_the_new_trial_name() {
        let torn = set(&["cairn-1-a.efi", "cairn-3-a+1-0.efi", "cairn-2-b.efi"]);
        assert_eq!(
            torn.stale_duplicates(),
            [Entry::parse("cairn-1-a.efi").unwrap()]
        );
    }

    #[test]
    fn power_cut_duplicates_are_resolved_toward_the_rename_under_way() {
        let bless = set(&["cairn-2-b+0-1.efi", "cairn-2-b.efi", "cairn-1-a.efi"]);
        assert_eq!(
            bless.stale_duplicates(),
            [Entry::parse("cairn-2-b+0-1.efi").unwrap()]
        );
        let count_down = set(&["cairn-2-b+1-0.efi", "cairn-2-b+0-1.efi"]);
        assert_eq!(
            count_down.stale_duplicates(),
            [Entry::parse("cairn-2-b+1-0.efi").unwrap()]
        );
        let state = state_of(&bless.apply(&[EntryOp::Retire(bless.stale_duplicates()[0])]));
        let planned = plan(&bless, &[], &state).unwrap();
        assert_eq!(
            planned[0],
            EntryOp::Retire(Entry::parse("cairn-2-b+0-1.efi").unwrap())
        );
    }

    #[test]
    fn a_state_the_entries_cannot_express_is_refused() {
        let set = set(&["cairn-1-a.efi"]);
        let mut state = state_of(&set);
        state.tries_b = FULL_TRIES;
        assert!(plan(&set, &[], &state).is_err(), "B has nothing to boot");
        let mut state = state_of(&set);
        state.order = vec![SlotId::B, SlotId::A];
        state.tries_b = 0;
        assert!(
            plan(&set, &[], &state).is_ok(),
            "B has no tries: A still boots first"
        );
    }
}
