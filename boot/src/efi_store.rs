//! [`EfiEntryStore`]: the UEFI path's [`BootStateStore`]. The state is the set of Cairn
//! entries in `<esp>/EFI/Linux` ([`crate::efi_entries`]); storing a [`BootState`] renames
//! and removes entries, one at a time, each followed by a sync of the directory, so that
//! after a power cut the ESP holds the entries as they were before or after each step.

use std::fs;
use std::path::{Path, PathBuf};

use crate::copies::BootStateStore;
use crate::efi_entries::{self, retired_name, staged_name, EntryOp, EntrySet, ENTRY_DIR};
use crate::state::{BootState, BootStateError, SlotId};

/// The entries of one EFI system partition, mounted at `esp`.
pub struct EfiEntryStore {
    esp: PathBuf,
}

impl EfiEntryStore {
    pub fn new(esp: impl Into<PathBuf>) -> EfiEntryStore {
        EfiEntryStore { esp: esp.into() }
    }

    pub fn entry_dir(&self) -> PathBuf {
        self.esp.join(ENTRY_DIR)
    }

    /// Where the installer writes `slot`'s new UKI (and syncs it) before it stores the
    /// state that arms the slot's trial; storing renames it into an entry.
    pub fn staged_path(&self, slot: SlotId) -> PathBuf {
        self.entry_dir().join(staged_name(slot))
    }

    /// The file `slot` boots from now: its entry (a live one before a bad one), if any.
    /// What a delta for the slot's next UKI applies to, since the staged file is gone once
    /// it became the entry.
    pub fn entry_path(&self, slot: SlotId) -> Result<Option<PathBuf>, BootStateError> {
        let (set, _) = self.read()?;
        let mut entries: Vec<_> = set.of_slot(slot).copied().collect();
        entries.sort_by_key(|e| e.is_bad());
        Ok(entries
            .first()
            .map(|e| self.entry_dir().join(e.file_name())))
    }

    /// The entries, and the slots with a staged UKI.
    fn read(&self) -> Result<(EntrySet, Vec<SlotId>), BootStateError> {
        let dir = self.entry_dir();
        let listing = fs::read_dir(&dir).map_err(|source| io_error(&dir, source))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|source| io_error(&dir, source))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        let staged = [SlotId::A, SlotId::B]
            .into_iter()
            .filter(|slot| names.iter().any(|n| *n == staged_name(*slot)))
            .collect();
        Ok((EntrySet::from_file_names(&names), staged))
    }

    /// A torn promotion (a power cut inside the rename of the staged UKI to its entry)
    /// leaves the staged name beside the entry, one file under both. Cairn never stages a
    /// slot that still has an entry, so a staged file equal to an entry of its slot is that
    /// twin: it is retired like any torn name (unlinking it, or the next install's write
    /// over it, would free the entry's clusters). Returns whether it was.
    fn retire_staged_twin(&self, set: &EntrySet, slot: SlotId) -> Result<bool, BootStateError> {
        let staged = self.staged_path(slot);
        let staged_bytes = fs::read(&staged).map_err(|source| io_error(&staged, source))?;
        for entry in set.of_slot(slot) {
            let path = self.entry_dir().join(entry.file_name());
            if fs::read(&path).map_err(|source| io_error(&path, source))? == staged_bytes {
                self.retire(&staged)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Renames `path` to the first free retired name, and syncs the directory.
    fn retire(&self, path: &Path) -> Result<(), BootStateError> {
        let dir = self.entry_dir();
        // A fresh name: renaming over an earlier retired name would unlink it.
        let free = (0..=u32::MAX)
            .map(|n| dir.join(retired_name(n)))
            .find(|p| !p.exists())
            .ok_or_else(|| BootStateError::Invalid("no free name to retire an entry to".into()))?;
        fs::rename(path, &free).map_err(|source| io_error(path, source))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), BootStateError> {
        let dir = self.entry_dir();
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error(&dir, source))
    }

    fn apply(&self, op: &EntryOp) -> Result<(), BootStateError> {
        let dir = self.entry_dir();
        match op {
            EntryOp::Remove(entry) => {
                let path = dir.join(entry.file_name());
                fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
            }
            EntryOp::Retire(entry) => return self.retire(&dir.join(entry.file_name())),
            EntryOp::Rename { from, to } => {
                let path = dir.join(from.file_name());
                let new = dir.join(to.file_name());
                fs::rename(&path, &new).map_err(|source| io_error(&path, source))?;
                sync_renamed(&new)?;
            }
            EntryOp::Promote { slot, to } => {
                let path = self.staged_path(*slot);
                let new = dir.join(to.file_name());
                fs::rename(&path, &new).map_err(|source| io_error(&path, source))?;
                sync_renamed(&new)?;
            }
        }
        self.sync_dir()
    }
}

/// Writes a renamed file's own metadata. Linux's vfat writes the new directory entry of a
/// rename with size 0 and no first cluster, and fills them in only when the file's inode
/// is written back: syncing the directory alone leaves, after a power cut, an entry of
/// the right name and no contents (found by the UEFI power-cut test, docs/UEFI.md). So
/// the file is synced first, then the directory.
fn sync_renamed(path: &Path) -> Result<(), BootStateError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_error(path, source))
}

impl BootStateStore for EfiEntryStore {
    fn load(&self) -> Result<BootState, BootStateError> {
        let (set, _) = self.read()?;
        Ok(efi_entries::state_of(&set))
    }

    /// Makes the entries say what `state` says ([`efi_entries::plan`]) and returns the
    /// state they now amount to. When the plan is refused, nothing is changed but the
    /// retiring of a staged twin a torn promotion left (a repair, whatever the plan).
    fn store(&mut self, state: &BootState) -> Result<BootState, BootStateError> {
        let (set, read_staged) = self.read()?;
        let mut staged = Vec::new();
        for slot in read_staged {
            if !self.retire_staged_twin(&set, slot)? {
                staged.push(slot);
            }
        }
        let ops = efi_entries::plan(&set, &staged, state)?;
        for op in &ops {
            self.apply(op)?;
        }
        Ok(efi_entries::state_of(&set.apply(&ops)))
    }
}

fn io_error(path: &Path, source: std::io::Error) -> BootStateError {
    BootStateError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efi_entries::Entry;

    fn esp_with(names: &[&str]) -> (tempfile::TempDir, EfiEntryStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EfiEntryStore::new(dir.path());
        fs::create_dir_all(store.entry_dir()).unwrap();
        for name in names {
            fs::write(store.entry_dir().join(name), format!("UKI {name}")).unwrap();
        }
        (dir, store)
    }

    fn listing(store: &EfiEntryStore) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.entry_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// What systemd-boot does at power-on: renames the first entry one try down.
    fn firmware_boots(store: &EfiEntryStore) -> SlotId {
        let (set, _) = store.read().unwrap();
        let next = set.next_boot().unwrap();
        if next.counter.is_some() {
            store
                .apply(&EntryOp::Rename {
                    from: next,
                    to: next.after_one_try(),
                })
                .unwrap();
        }
        next.slot
    }

    #[test]
    fn an_update_cycle_through_boot_state_transitions() {
        let (_dir, mut store) = esp_with(&["cairn-1-a.efi", "other-os.efi"]);
        let mut state = store.load().unwrap();
        assert_eq!((state.committed, state.tries_b), (SlotId::A, 0));

        state.prepare_install(SlotId::B);
        store.store(&state).unwrap();
        fs::write(store.staged_path(SlotId::B), "UKI v2").unwrap();
        assert_eq!(
            listing(&store),
            ["cairn-1-a.efi", "cairn-b.staged", "other-os.efi"]
        );
        state.arm_trial(SlotId::B);
        store.store(&state).unwrap();
        assert_eq!(
            listing(&store),
            ["cairn-1-a.efi", "cairn-2-b+1-0.efi", "other-os.efi"]
        );

        assert_eq!(firmware_boots(&store), SlotId::B);
        let mut state = store.load().unwrap();
        state.commit(SlotId::B);
        store.store(&state).unwrap();
        assert_eq!(
            listing(&store),
            ["cairn-1-a.efi", "cairn-2-b.efi", "other-os.efi"]
        );
        assert_eq!(
            fs::read_to_string(store.entry_dir().join("cairn-2-b.efi")).unwrap(),
            "UKI v2"
        );
        assert_eq!(firmware_boots(&store), SlotId::B);
        assert_eq!(store.load().unwrap().committed, SlotId::B);
    }

    #[test]
    fn a_trial_that_never_reaches_cairnd_falls_back_and_is_removed_at_the_next_store() {
        let (_dir, mut store) = esp_with(&["cairn-1-a.efi", "cairn-2-b+1-0.efi"]);
        assert_eq!(firmware_boots(&store), SlotId::B);
        // The kernel hung; the watchdog or a power cycle restarts the machine.
        assert_eq!(firmware_boots(&store), SlotId::A);
        let mut state = store.load().unwrap();
        assert_eq!((state.committed, state.tries_b), (SlotId::A, 0));
        state.refresh_committed();
        store.store(&state).unwrap();
        assert_eq!(listing(&store), ["cairn-1-a.efi"]);
    }

    #[test]
    fn the_entry_path_is_the_slots_live_entry() {
        let (_dir, store) = esp_with(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        assert_eq!(
            store.entry_path(SlotId::A).unwrap(),
            Some(store.entry_dir().join("cairn-1-a.efi"))
        );
        assert_eq!(
            store.entry_path(SlotId::B).unwrap(),
            Some(store.entry_dir().join("cairn-2-b+0-1.efi"))
        );
        let (_dir, store) = esp_with(&["cairn-1-a.efi"]);
        assert_eq!(store.entry_path(SlotId::B).unwrap(), None);
    }

    /// What a power cut inside systemd-bless-boot's rename leaves on FAT: two names for
    /// the committed UKI. The stale one is moved aside, never unlinked, so the file's
    /// clusters stay allocated; a second one gets a name of its own.
    #[test]
    fn a_torn_rename_is_retired_not_removed() {
        let (_dir, mut store) = esp_with(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        fs::copy(
            store.entry_dir().join("cairn-2-b+0-1.efi"),
            store.entry_dir().join("cairn-2-b.efi"),
        )
        .unwrap();
        let state = store.load().unwrap();
        assert_eq!((state.committed, state.order[0]), (SlotId::B, SlotId::B));
        store.store(&state).unwrap();
        assert_eq!(
            listing(&store),
            ["cairn-1-a.efi", "cairn-2-b.efi", "cairn-retired-0"]
        );
        fs::write(store.entry_dir().join("cairn-1-a+0-1.efi"), "twin").unwrap();
        store.store(&store.load().unwrap()).unwrap();
        assert_eq!(
            listing(&store),
            [
                "cairn-1-a.efi",
                "cairn-2-b.efi",
                "cairn-retired-0",
                "cairn-retired-1"
            ]
        );
    }

    #[test]
    fn a_torn_promotion_retires_the_staged_twin_and_a_real_staged_image_is_promoted() {
        let (_dir, mut store) = esp_with(&["cairn-1-a.efi", "cairn-2-b+1-0.efi"]);
        // The cut left the staged name beside the entry it became.
        fs::copy(
            store.entry_dir().join("cairn-2-b+1-0.efi"),
            store.staged_path(SlotId::B),
        )
        .unwrap();
        let mut state = store.load().unwrap();
        state.arm_trial(SlotId::B);
        store.store(&state).unwrap();
        assert_eq!(
            listing(&store),
            ["cairn-1-a.efi", "cairn-2-b+1-0.efi", "cairn-retired-0"]
        );

        // A staged image that differs from the slot's bad entry is a new one: promoted.
        let (_dir, mut store) = esp_with(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        fs::write(store.staged_path(SlotId::B), "UKI v3").unwrap();
        let mut state = store.load().unwrap();
        state.arm_trial(SlotId::B);
        store.store(&state).unwrap();
        assert_eq!(listing(&store), ["cairn-1-a.efi", "cairn-3-b+1-0.efi"]);
        assert_eq!(
            fs::read_to_string(store.entry_dir().join("cairn-3-b+1-0.efi")).unwrap(),
            "UKI v3"
        );
    }

    #[test]
    fn a_refused_plan_changes_nothing() {
        let (_dir, mut store) = esp_with(&["cairn-1-a.efi"]);
        let mut state = store.load().unwrap();
        state.arm_trial(SlotId::B);
        let err = store.store(&state).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither an entry nor a staged image"),
            "{err}"
        );
        assert_eq!(listing(&store), ["cairn-1-a.efi"]);
        assert_eq!(
            Entry::parse("cairn-1-a.efi").map(|e| e.slot),
            Some(SlotId::A)
        );
    }
}
