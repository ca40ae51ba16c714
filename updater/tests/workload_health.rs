//! The `workloads` health check against a real containerd (see common/containerd.rs): the
//! test plays kubelet through the CRI, the real `cairn`/`cairnd` binaries decide a trial
//! boot of an installed update. Runs as root.

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_updater::bootstate::SlotId;
use common::{phase, Device, Release};
use containerd::{Containerd, Network};

/// A device on 1.0.0 whose update to 2.0.0 is installed and booted for its trial, with
/// `check` as its one health check (`web.toml`). cairnd is not run yet.
fn device_in_trial(check: &str) -> Device {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let mut d = Device::new(&v1);
    // The test kit's 3 s deadline is for instant checks; these watch for seconds.
    d.edit_config(|t| t.replace("deadline_secs = 3", "deadline_secs = 30"));
    d.health_check("web", check);
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    d
}

fn web_check(containerd: &Containerd, settle_secs: u64, timeout_secs: u64) -> String {
    format!(
        "kind = \"workloads\"\nsocket = \"{}\"\n\
         pods = [{{ namespace = \"default\", labels = {{ app = \"web\" }} }}]\n\
         containers = [\"web\"]\nsettle_secs = {settle_secs}\ntimeout_secs = {timeout_secs}\n",
        containerd.socket.display()
    )
}

/// cairnd's log (stdout) and errors (stderr).
fn output(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_workload_that_comes_up_and_stays_up_commits_the_trial() {
    let containerd = Containerd::start(Network::Loopback);
    let image = containerd.import_busybox("web", "1", &["sleep", "3600"]);
    let d = device_in_trial(&web_check(&containerd, 3, 15));

    let started = Instant::now();
    // cairnd starts with the boot; the pod comes up a moment later, as kubelet's would.
    let (out, pod) = std::thread::scope(|s| {
        let cairnd = s.spawn(|| d.cairnd_once());
        std::thread::sleep(Duration::from_millis(1500));
        let pod = containerd.run_pod("web", &image, &[]);
        (cairnd.join().unwrap(), pod)
    });
    let took = started.elapsed();
    assert!(out.status.success(), "{}", output(&out));
    let s = d.status();
    assert_eq!(
        phase(&s),
        "committed",
        "{s:#}\n{}\n{}",
        output(&out),
        containerd.log()
    );
    assert_eq!(s["slots"]["B"]["version"], "2.0.0");
    assert_eq!(d.boot_state().committed, SlotId::B);
    assert!(
        took >= Duration::from_millis(1500 + 3000),
        "the trial waited for the pod and then its 3 s settle time: {took:?}"
    );
    assert!(
        output(&out).contains("all declared workloads running; settling"),
        "{}",
        output(&out)
    );
    assert!(pod.is_running(), "{}", pod.log());

    // The operator's view: running right now.
    let check = d.cairn_ok(&["check-health"]);
    assert!(check.contains("ok    web"), "{check}");
    eprintln!("healthy trial decided in {took:?}");
}

#[test]
fn a_crash_looping_workload_fails_the_trial_and_the_device_rolls_back() {
    let containerd = Containerd::start(Network::Loopback);
    // Runs a moment, then fails: long enough to be seen running, as a crash loop is.
    let image = containerd.import_busybox("web", "1", &["sh", "-c", "sleep 1; exit 1"]);
    let mut d = device_in_trial(&web_check(&containerd, 10, 15));
    let mut pod = containerd.run_pod("web", &image, &[]);

    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (out, restarts) = std::thread::scope(|s| {
        // Kubelet's part: start the next attempt whenever the container has exited.
        let kubelet = s.spawn(|| {
            let mut restarts = 0;
            while !stop.load(Ordering::Relaxed) {
                if !pod.is_running() {
                    pod.restart();
                    restarts += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            restarts
        });
        let out = d.cairnd_once();
        stop.store(true, Ordering::Relaxed);
        (out, kubelet.join().unwrap())
    });
    let took = started.elapsed();
    assert!(out.status.success(), "{}", output(&out));
    let s = d.status();
    assert_eq!(phase(&s), "rolled-back", "{s:#}\n{}", output(&out));
    let reason = s["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("health check 'web' failed: ")
            && reason.contains("container web")
            && reason.contains("exited with code 1"),
        "{reason}"
    );
    assert!(
        reason.contains("into the 10s settle time"),
        "seen running, then lost while settling: {reason}"
    );
    assert!(restarts >= 1, "kubelet restarted it");
    assert!(took < Duration::from_secs(10), "failed at once: {took:?}");
    let boot = d.boot_state();
    assert_eq!((boot.order[0], boot.committed), (SlotId::A, SlotId::A));
    assert!(d.path("rebooted").exists(), "cairnd reboots into 1.0.0");
    assert_eq!(d.reboot(), SlotId::A);
    assert!(d.cairnd_once().status.success());
    assert_eq!(phase(&d.status()), "rolled-back");
    eprintln!("crash loop ({restarts} restarts) rejected in {took:?}: {reason}");
}

#[test]
fn a_workload_that_never_appears_fails_after_its_timeout_naming_it() {
    let containerd = Containerd::start(Network::Loopback);
    let image = containerd.import_busybox("web", "1", &["sleep", "3600"]);
    // Something else runs; "web" never does.
    let _other = containerd.run_pod("db", &image, &[]);
    let mut d = device_in_trial(&web_check(&containerd, 3, 4));

    let check = d.cairn(&["check-health"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL  web: pod {app=web} in default: no pod matches; container web: no container \
             by that name"
        ),
        "{stdout}"
    );

    let started = Instant::now();
    let out = d.cairnd_once();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", output(&out));
    let s = d.status();
    assert_eq!(phase(&s), "rolled-back", "{s:#}");
    let reason = s["phase"]["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "health check 'web' failed: workloads not running within 4s: pod {app=web} in \
         default: no pod matches; container web: no container by that name"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(d.boot_state().committed, SlotId::A);
    assert_eq!(d.reboot(), SlotId::A);
}
