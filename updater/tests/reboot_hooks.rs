//! The node's drain and uncordon hooks (`[reboot] before` / `after_commit`) as real
//! shell scripts around real `cairn`/`cairnd` runs: a drain that fails postpones the
//! reboot until it succeeds, one past its timeout dies with its children, and an owed
//! uncordon survives cairnd being killed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_updater::bootstate::SlotId;
use common::*;
use serde_json::Value;

/// cairnd running until dropped (then killed like a power cut would).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An executable shell script `name` in the device's dir; `$ROOT` in `body` is that dir.
fn script(d: &Device, name: &str, body: &str) -> PathBuf {
    let path = d.path(name);
    let root = d.path("").display().to_string();
    let text = format!("#!/bin/sh\nROOT={root}\n{body}\n");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A hook that logs what it was told to `<name>.log` and succeeds once `<name>-ok`
/// exists, failing with `complaint` on stderr until then.
fn hook(d: &Device, name: &str, complaint: &str) -> PathBuf {
    script(
        d,
        name,
        &format!(
            "echo \"$CAIRN_HOOK $CAIRN_VERSION $CAIRN_SLOT $CAIRN_ATTEMPT $CAIRN_OUTCOME\" \
             >> $ROOT/{name}.log\n\
             [ -e $ROOT/{name}-ok ] && exit 0\necho '{complaint}' >&2\nexit 1"
        ),
    )
}

/// `[reboot]` with `policy` and the hooks given as TOML inline tables.
fn set_reboot(d: &Device, policy: &str, hooks: &str) {
    d.edit_config(|text| {
        text.replace(
            "[reboot]\npolicy = \"on-request\"\n",
            &format!("[reboot]\npolicy = \"{policy}\"\n{hooks}"),
        )
    });
}

fn hook_table(key: &str, path: &std::path::Path, timeout_secs: u64) -> String {
    format!(
        "{key} = {{ command = [\"{}\"], timeout_secs = {timeout_secs} }}\n",
        path.display()
    )
}

fn log_lines(d: &Device, name: &str) -> Vec<String> {
    fs::read_to_string(d.path(&format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect()
}

fn hook_status(d: &Device) -> Value {
    fs::read(d.path("data/cairn/reboot-hooks.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn install_no_reboot(d: &Device, release: &Release) {
    let bundle = d.bundle(release, None);
    d.cairn_ok(&["install", "--no-reboot", bundle.to_str().unwrap()]);
}

#[test]
fn cairn_install_runs_the_drain_hook_then_reboots_and_owes_the_uncordon() {
    let d = Device::new(&Release::new("1.0.0", 0));
    let drain = hook(&d, "drain", "never");
    fs::write(d.path("drain-ok"), "").unwrap();
    let uncordon = hook(&d, "uncordon", "never");
    set_reboot(
        &d,
        "now",
        &(hook_table("before", &drain, 10) + &hook_table("after_commit", &uncordon, 10)),
    );
    let bundle = d.bundle(&Release::new("2.0.0", 2), None);
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    assert!(d.path("rebooted").exists());
    assert_eq!(log_lines(&d, "drain"), ["before 2.0.0 B 1"]);
    assert!(
        log_lines(&d, "uncordon").is_empty(),
        "not before the reboot"
    );
    let hooks = hook_status(&d);
    assert_eq!(hooks["after_commit"]["version"], "2.0.0", "{hooks:#}");
    assert_eq!(hooks["before"], Value::Null, "{hooks:#}");
    assert_eq!(d.status()["reboot_hooks"], Value::Null);
}

#[test]
fn a_failing_drain_postpones_cairnds_reboot_until_it_succeeds() {
    let d = Device::new(&Release::new("1.0.0", 0));
    install_no_reboot(&d, &Release::new("2.0.0", 2));
    let drain = hook(&d, "drain", "pods still running");
    set_reboot(&d, "now", &hook_table("before", &drain, 10));
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(10, "the drain hook's failure", || {
        d.cairn_ok(&["status"]).contains("waiting for drain")
    });
    let text = d.cairn_ok(&["status"]);
    let expected = format!(
        "waiting for drain: hook {} exited with 1: pods still running (attempt 1, next try in ",
        drain.display()
    );
    assert!(text.contains(&expected), "{text}");
    let waiting = &d.status()["reboot_hooks"];
    assert_eq!(
        (&waiting["hook"], &waiting["attempts"]),
        (&Value::from("before"), &Value::from(1)),
        "{waiting:#}"
    );
    assert!(!d.path("rebooted").exists(), "rebooted without the drain");

    // The node drains now; ten seconds pass (the backoff's next try moved to the past).
    fs::write(d.path("drain-ok"), "").unwrap();
    let mut hooks = hook_status(&d);
    hooks["before"]["next_try"] = 0.into();
    cairn_atomic::write(
        d.path("data/cairn/reboot-hooks.json"),
        &serde_json::to_vec(&hooks).unwrap(),
    )
    .unwrap();
    wait_for(10, "the reboot after the drain", || {
        d.path("rebooted").exists()
    });
    assert_eq!(
        log_lines(&d, "drain")[..2],
        ["before 2.0.0 B 1", "before 2.0.0 B 2"]
    );
    assert_eq!(d.status()["reboot_hooks"], Value::Null);
    assert!(d.cairnd_log().contains("pods still running"));
}

#[test]
fn a_drain_past_its_timeout_is_killed_with_its_children_and_nothing_reboots() {
    let d = Device::new(&Release::new("1.0.0", 0));
    install_no_reboot(&d, &Release::new("2.0.0", 2));
    let drain = script(
        &d,
        "drain",
        "sleep 300 &\necho $! > $ROOT/child.pid\necho 'evicting pods'\nwait",
    );
    set_reboot(&d, "on-request", &hook_table("before", &drain, 1));
    let started = Instant::now();
    let err = d.cairn_err(&["reboot"]);
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let expected = format!(
        "hook {} timed out after 1 s and was killed: evicting pods",
        drain.display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!d.path("rebooted").exists());
    let child: u32 = fs::read_to_string(d.path("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Gone, or a zombie left for an init that does not reap (in a container).
    wait_for(5, "the hook's child to die", || {
        fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |stat| {
            stat.rsplit(')').next().unwrap().trim().starts_with('Z')
        })
    });
    // On request, cairnd does not retry by itself: no next try is promised.
    let reason = d.status()["reboot_hooks"]["reason"].clone();
    assert_eq!(
        reason,
        Value::from(format!("waiting for drain: {expected} (attempt 1)"))
    );
}

#[test]
fn an_owed_uncordon_survives_cairnd_being_killed_and_runs_at_its_next_start() {
    let mut d = Device::new(&Release::new("1.0.0", 0));
    install_no_reboot(&d, &Release::new("2.0.0", 2));
    let drain = hook(&d, "drain", "never");
    fs::write(d.path("drain-ok"), "").unwrap();
    let uncordon = hook(&d, "uncordon", "api server unreachable");
    set_reboot(
        &d,
        "on-request",
        &(hook_table("before", &drain, 10) + &hook_table("after_commit", &uncordon, 10)),
    );
    d.cairn_ok(&["reboot"]);
    assert_eq!(log_lines(&d, "drain"), ["before 2.0.0 B 1"]);
    assert_eq!(d.reboot(), SlotId::B);

    let daemon = Daemon(d.spawn_cairnd());
    // The uncordon is owed ("not run yet") before its first try fails: wait for the failure.
    wait_for(10, "the commit and the uncordon's failure", || {
        let text = d.cairn_ok(&["status"]);
        text.contains("waiting for uncordon") && text.contains("api server unreachable")
    });
    assert_eq!(phase(&d.status()), "committed");
    let text = d.cairn_ok(&["status"]);
    assert!(
        text.contains("exited with 1: api server unreachable (attempt 1, next try in "),
        "{text}"
    );
    drop(daemon); // SIGKILL

    fs::write(d.path("uncordon-ok"), "").unwrap();
    let _daemon = Daemon(d.spawn_cairnd());
    wait_for(10, "the uncordon at cairnd's next start", || {
        log_lines(&d, "uncordon").len() == 2
    });
    assert_eq!(
        log_lines(&d, "uncordon"),
        [
            "after_commit 2.0.0 B 1 committed",
            "after_commit 2.0.0 B 2 committed"
        ]
    );
    wait_for(5, "the debt cleared", || {
        hook_status(&d)["after_commit"].is_null()
    });
    assert_eq!(d.status()["reboot_hooks"], Value::Null);
    assert_eq!(log_lines(&d, "drain").len(), 1, "a commit does not drain");
}

#[test]
fn a_rejected_trial_reboots_without_draining_and_uncordons_back_on_the_committed_slot() {
    let mut d = Device::new(&Release::new("1.0.0", 0));
    install_no_reboot(&d, &Release::new("2.0.0", 2));
    d.health_check(
        "app",
        "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    );
    let drain = hook(&d, "drain", "never");
    fs::write(d.path("drain-ok"), "").unwrap();
    let uncordon = hook(&d, "uncordon", "never");
    fs::write(d.path("uncordon-ok"), "").unwrap();
    set_reboot(
        &d,
        "on-request",
        &(hook_table("before", &drain, 10) + &hook_table("after_commit", &uncordon, 10)),
    );
    d.cairn_ok(&["reboot"]);
    fs::remove_file(d.path("rebooted")).unwrap();
    assert_eq!(d.reboot(), SlotId::B);
    // The trial fails: cairnd reboots at once, no drain, and no uncordon on the way out.
    d.cairnd_once();
    assert!(d.path("rebooted").exists());
    assert_eq!(phase(&d.status()), "rolled-back");
    assert_eq!(log_lines(&d, "drain").len(), 1);
    assert!(log_lines(&d, "uncordon").is_empty());
    // Back on the committed slot, the node rejoins.
    assert_eq!(d.reboot(), SlotId::A);
    d.cairnd_once();
    assert_eq!(
        log_lines(&d, "uncordon"),
        ["after_commit 2.0.0 A 1 rolled-back"]
    );
    assert!(hook_status(&d)["after_commit"].is_null());
}

#[test]
fn the_uncordon_is_owed_on_disk_before_the_trial_is_committed() {
    let mut d = Device::new(&Release::new("1.0.0", 0));
    install_no_reboot(&d, &Release::new("2.0.0", 2));
    let uncordon = hook(&d, "uncordon", "never");
    fs::write(d.path("uncordon-ok"), "").unwrap();
    set_reboot(&d, "on-request", &hook_table("after_commit", &uncordon, 10));
    // The trial's health check passes only if the debt is already on disk: a crash right
    // after the commit cannot lose it.
    let owed = d.path("data/cairn/reboot-hooks.json");
    d.health_check(
        "owed",
        &format!(
            "kind = \"command\"\ncommand = [\"grep\", \"-q\", \"2.0.0\", \"{}\"]\n",
            owed.display()
        ),
    );
    // Rebooted by other tooling: no drain ran, cairnd's trial boot records the debt.
    assert_eq!(d.reboot(), SlotId::B);
    d.cairnd_once();
    assert_eq!(phase(&d.status()), "committed", "{}", d.cairnd_log());
    assert_eq!(
        log_lines(&d, "uncordon"),
        ["after_commit 2.0.0 B 1 committed"]
    );
    assert!(hook_status(&d)["after_commit"].is_null());
}
