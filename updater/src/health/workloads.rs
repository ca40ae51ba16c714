//! The `workloads` health check: the pods (by label) and containers (by name) an image
//! declares are running, judged from the container runtime's CRI (`ListPodSandbox`,
//! `ListContainers`, `ContainerStatus` for exit codes), and stay running for a settle time.
//!
//! ```toml
//! # /etc/cairn/health.d/web.toml
//! kind = "workloads"
//! socket = "/run/containerd/containerd.sock"      # the default
//! pods = [{ namespace = "default", labels = { app = "web" } }]
//! containers = ["web"]
//! settle_secs = 30     # all running the whole time, from the first time all are
//! timeout_secs = 300   # for all of them to come up (the default)
//! ```
//!
//! A pod selector is met by every READY sandbox it matches (at least one) when each of
//! its containers' latest attempt is running (one that exited with code 0, such as an init
//! container, is allowed while another runs). A container name is met when its latest
//! attempt in every ready sandbox that has one (at least one) is running. Once all are
//! met, the containers then running are remembered: if any of them exits or is replaced
//! (a new container id, a higher `attempt`, which is kubelet's restart count) before
//! `settle_secs` have passed, the check fails at once, naming it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_cri_probe::{v1, Client};
use serde::Deserialize;

/// Each CRI call's own bound.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many `ContainerStatus` calls per look (exit codes of exited containers).
const MAX_STATUS_CALLS: usize = 32;

pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsSpec {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub pods: Vec<PodSelector>,
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default = "default_settle_secs")]
    pub settle_secs: u64,
}

/// Pods whose sandbox carries all of `labels` (and is in `namespace`, when given).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodSelector {
    #[serde(default)]
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
}

pub fn default_socket() -> PathBuf {
    PathBuf::from(cairn_cri_probe::DEFAULT_SOCKET)
}

fn default_settle_secs() -> u64 {
    30
}

impl WorkloadsSpec {
    /// What `deny_unknown_fields` cannot say.
    pub fn validate(&self) -> Result<(), String> {
        if self.pods.is_empty() && self.containers.is_empty() {
            return Err("declares no workloads: give `pods` or `containers`".into());
        }
        for (i, pod) in self.pods.iter().enumerate() {
            if pod.labels.is_empty() {
                return Err(format!("pods[{i}] has no labels: it would match every pod"));
            }
            if let Some((k, _)) = pod.labels.iter().find(|(k, _)| k.is_empty()) {
                return Err(format!("pods[{i}] has an empty label name {k:?}"));
            }
            if pod.namespace.as_deref() == Some("") {
                return Err(format!(
                    "pods[{i}] has an empty namespace (leave it out to match any)"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for name in &self.containers {
            if name.is_empty() {
                return Err("containers holds an empty name".into());
            }
            if !seen.insert(name) {
                return Err(format!("container {name:?} is declared twice"));
            }
        }
        Ok(())
    }

    fn workloads(&self) -> Vec<Workload<'_>> {
        self.pods
            .iter()
            .map(Workload::Pod)
            .chain(self.containers.iter().map(|c| Workload::Container(c)))
            .collect()
    }
}

/// One declared workload, as messages name it.
#[derive(Debug, Clone, Copy)]
enum Workload<'a> {
    Pod(&'a PodSelector),
    Container(&'a str),
}

impl fmt::Display for Workload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Pod(selector) => {
                let labels: Vec<String> = selector
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                write!(f, "pod {{{}}}", labels.join(","))?;
                if let Some(ns) = &selector.namespace {
                    write!(f, " in {ns}")?;
                }
                Ok(())
            }
            Workload::Container(name) => write!(f, "container {name}"),
        }
    }
}

impl PodSelector {
    fn matches(&self, sandbox: &v1::PodSandbox) -> bool {
        let namespace_ok = match (&self.namespace, &sandbox.metadata) {
            (None, _) => true,
            (Some(ns), Some(meta)) => &meta.namespace == ns,
            (Some(_), None) => false,
        };
        namespace_ok
            && self
                .labels
                .iter()
                .all(|(k, v)| sandbox.labels.get(k) == Some(v))
    }
}

/// What the runtime said at one look.
#[derive(Debug, Default)]
pub struct Observation {
    pub sandboxes: Vec<v1::PodSandbox>,
    pub containers: Vec<v1::Container>,
    /// Exit codes and reasons of exited containers that matter here, by container id.
    pub exits: HashMap<String, Exit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub reason: String,
}

impl Observation {
    /// One look through `client`: every sandbox and container, then `ContainerStatus` for
    /// the exited containers a declared workload could be (newest first, at most
    /// [`MAX_STATUS_CALLS`]).
    fn take(client: &Client, spec: &WorkloadsSpec) -> Result<Observation, String> {
        let sandboxes = client.list_pod_sandboxes(None).map_err(|e| e.to_string())?;
        let containers = client.list_containers(None).map_err(|e| e.to_string())?;
        let selected: BTreeSet<&str> = sandboxes
            .iter()
            .filter(|s| spec.pods.iter().any(|p| p.matches(s)))
            .map(|s| s.id.as_str())
            .collect();
        let mut exited: Vec<&v1::Container> = containers
            .iter()
            .filter(|c| c.state == v1::ContainerState::ContainerExited as i32)
            .filter(|c| {
                selected.contains(c.pod_sandbox_id.as_str())
                    || spec.containers.iter().any(|n| *n == name_of(c))
            })
            .collect();
        exited.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        let mut exits = HashMap::new();
        for c in exited.into_iter().take(MAX_STATUS_CALLS) {
            // A container removed since the list is no news: it is simply not there.
            if let Ok(status) = client.container_status(&c.id) {
                exits.insert(
                    c.id.clone(),
                    Exit {
                        code: status.exit_code,
                        reason: status.reason,
                    },
                );
            }
        }
        Ok(Observation {
            sandboxes,
            containers,
            exits,
        })
    }

    fn sandbox(&self, id: &str) -> Option<&v1::PodSandbox> {
        self.sandboxes.iter().find(|s| s.id == id)
    }

    fn pod_name(&self, sandbox_id: &str) -> String {
        match self.sandbox(sandbox_id).and_then(|s| s.metadata.as_ref()) {
            Some(meta) => format!("{}/{}", meta.namespace, meta.name),
            None => format!("sandbox {}", short(sandbox_id)),
        }
    }

    /// Each container name's latest attempt in sandbox `sandbox_id`.
    fn latest_in(&self, sandbox_id: &str) -> Vec<&v1::Container> {
        let mut latest: BTreeMap<&str, &v1::Container> = BTreeMap::new();
        for c in self
            .containers
            .iter()
            .filter(|c| c.pod_sandbox_id == sandbox_id)
        {
            let newer = latest.get(name_of(c)).is_none_or(|old| {
                (attempt_of(c), c.created_at) > (attempt_of(old), old.created_at)
            });
            if newer {
                latest.insert(name_of(c), c);
            }
        }
        latest.into_values().collect()
    }

    /// "container web exited with code 1 (attempt 3) in pod default/web", and the like.
    fn describe(&self, c: &v1::Container) -> String {
        let head = format!("container {}", name_of(c));
        let pod = self.pod_name(&c.pod_sandbox_id);
        let attempt = attempt_of(c);
        match v1::ContainerState::try_from(c.state) {
            Ok(v1::ContainerState::ContainerRunning) => {
                format!("{head} is running (attempt {attempt}) in pod {pod}")
            }
            Ok(v1::ContainerState::ContainerCreated) => {
                format!("{head} is created but not started (attempt {attempt}) in pod {pod}")
            }
            Ok(v1::ContainerState::ContainerExited) => match self.exits.get(&c.id) {
                Some(exit) => {
                    let reason = if exit.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", exit.reason)
                    };
                    format!(
                        "{head} exited with code {} (attempt {attempt}) in pod {pod}{reason}",
                        exit.code
                    )
                }
                None => format!("{head} exited (attempt {attempt}) in pod {pod}"),
            },
            _ => format!("{head} is in an unknown state (attempt {attempt}) in pod {pod}"),
        }
    }

    fn exited_ok(&self, c: &v1::Container) -> bool {
        c.state == v1::ContainerState::ContainerExited as i32
            && self.exits.get(&c.id).is_some_and(|e| e.code == 0)
    }
}

fn name_of(c: &v1::Container) -> &str {
    c.metadata.as_ref().map_or("", |m| m.name.as_str())
}

fn attempt_of(c: &v1::Container) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

fn is_running(c: &v1::Container) -> bool {
    c.state == v1::ContainerState::ContainerRunning as i32
}

fn is_ready(s: &v1::PodSandbox) -> bool {
    s.state == v1::PodSandboxState::SandboxReady as i32
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A running container a workload counts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    name: String,
    attempt: u32,
    sandbox: String,
}

/// One workload at one look: the containers of it that run, and why it is not (fully)
/// running, if it is not.
#[derive(Debug, Default)]
struct View {
    running: BTreeMap<String, Running>,
    problems: Vec<String>,
}

impl View {
    fn run(&mut self, c: &v1::Container) {
        self.running.insert(
            c.id.clone(),
            Running {
                name: name_of(c).to_string(),
                attempt: attempt_of(c),
                sandbox: c.pod_sandbox_id.clone(),
            },
        );
    }
}

fn judge(workload: Workload<'_>, obs: &Observation) -> View {
    let mut view = View::default();
    match workload {
        Workload::Pod(selector) => {
            let matched: Vec<&v1::PodSandbox> = obs
                .sandboxes
                .iter()
                .filter(|s| selector.matches(s))
                .collect();
            let ready: Vec<&v1::PodSandbox> =
                matched.iter().copied().filter(|s| is_ready(s)).collect();
            if ready.is_empty() {
                view.problems.push(match matched.first() {
                    None => "no pod matches".into(),
                    Some(s) => format!("pod {} is not ready", obs.pod_name(&s.id)),
                });
            }
            for sandbox in ready {
                let latest = obs.latest_in(&sandbox.id);
                let pod = obs.pod_name(&sandbox.id);
                if latest.is_empty() {
                    view.problems
                        .push(format!("pod {pod} has no containers yet"));
                    continue;
                }
                for c in &latest {
                    if is_running(c) {
                        view.run(c);
                    } else if !obs.exited_ok(c) {
                        view.problems.push(obs.describe(c));
                    }
                }
                if !latest.iter().any(|c| is_running(c)) && view.problems.is_empty() {
                    view.problems
                        .push(format!("no container is running in pod {pod}"));
                }
            }
        }
        Workload::Container(name) => {
            let named: Vec<&v1::Container> = obs
                .containers
                .iter()
                .filter(|c| name_of(c) == name)
                .collect();
            let pods: BTreeSet<&str> = named
                .iter()
                .map(|c| c.pod_sandbox_id.as_str())
                .filter(|id| obs.sandbox(id).is_some_and(is_ready))
                .collect();
            if pods.is_empty() {
                view.problems.push(if named.is_empty() {
                    "no container by that name".into()
                } else {
                    "only in pods that are not ready".into()
                });
            }
            for pod in pods {
                for c in obs
                    .latest_in(pod)
                    .into_iter()
                    .filter(|c| name_of(c) == name)
                {
                    if is_running(c) {
                        view.run(c);
                    } else {
                        view.problems.push(obs.describe(c));
                    }
                }
            }
        }
    }
    view
}

/// Where a [`Watch`] stands after a look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not decided yet; why not.
    Waiting(String),
    Passed,
    /// Failed for good: a workload did not come up in time, or did not stay up.
    Failed(String),
}

/// The check over time: waits up to `timeout` for every workload to run, then for
/// `settle` more during which none of the containers then running may stop or be
/// replaced.
pub struct Watch {
    spec: WorkloadsSpec,
    timeout: Duration,
    settle: Duration,
    started: Instant,
    settling: Option<Settling>,
    client: Option<Client>,
}

struct Settling {
    since: Instant,
    /// Per workload (in [`WorkloadsSpec::workloads`] order), what ran when all ran.
    running: Vec<BTreeMap<String, Running>>,
}

impl Watch {
    pub fn new(spec: &WorkloadsSpec, timeout: Duration) -> Watch {
        Watch::starting_at(spec, timeout, Instant::now())
    }

    fn starting_at(spec: &WorkloadsSpec, timeout: Duration, started: Instant) -> Watch {
        Watch {
            spec: spec.clone(),
            timeout,
            settle: Duration::from_secs(spec.settle_secs),
            started,
            settling: None,
            client: None,
        }
    }

    /// One look at the runtime, judged.
    pub fn poll(&mut self) -> Progress {
        let observation = self.observe();
        self.step(Instant::now(), observation)
    }

    fn observe(&mut self) -> Result<Observation, String> {
        let socket = self.spec.socket.clone();
        let cri = |e: String| format!("CRI on {}: {e}", socket.display());
        if self.client.is_none() {
            let client = Client::connect(&socket, CALL_TIMEOUT).map_err(|e| cri(e.to_string()))?;
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("connected above");
        let observation = Observation::take(client, &self.spec).map_err(cri);
        if observation.is_err() {
            // Connect afresh next time (the runtime may have restarted).
            self.client = None;
        }
        observation
    }

    /// Judges one look taken at `now` (`Err`: the runtime could not be asked, which
    /// neither passes nor fails by itself: the next look decides, within the timeouts).
    fn step(&mut self, now: Instant, observation: Result<Observation, String>) -> Progress {
        let obs = match observation {
            Ok(obs) => obs,
            Err(e) => {
                if self.settling.is_none() && now.duration_since(self.started) >= self.timeout {
                    return Progress::Failed(format!(
                        "workloads not running within {}s: {e}",
                        self.timeout.as_secs()
                    ));
                }
                return Progress::Waiting(e);
            }
        };
        let workloads = self.spec.workloads();
        let views: Vec<View> = workloads.iter().map(|w| judge(*w, &obs)).collect();
        if let Some(settling) = &self.settling {
            let into = now.duration_since(settling.since).as_secs();
            let settle = self.settle.as_secs();
            for ((workload, view), before) in workloads.iter().zip(&views).zip(&settling.running) {
                for (id, was) in before {
                    if !view.running.contains_key(id) {
                        return Progress::Failed(format!(
                            "{workload}: {}, {into}s into the {settle}s settle time",
                            lost(&obs, id, was)
                        ));
                    }
                }
                if !view.problems.is_empty() {
                    return Progress::Failed(format!(
                        "{workload}: {}, {into}s into the {settle}s settle time",
                        view.problems.join("; ")
                    ));
                }
            }
            if now.duration_since(settling.since) >= self.settle {
                return Progress::Passed;
            }
            return Progress::Waiting(format!(
                "all declared workloads running, {into}s of the {settle}s settle time"
            ));
        }
        let problems: Vec<String> = workloads
            .iter()
            .zip(&views)
            .filter(|(_, v)| !v.problems.is_empty())
            .map(|(w, v)| format!("{w}: {}", v.problems.join("; ")))
            .collect();
        if problems.is_empty() {
            tracing::info!(
                settle_secs = self.settle.as_secs(),
                "all declared workloads running; settling"
            );
            self.settling = Some(Settling {
                since: now,
                running: views.into_iter().map(|v| v.running).collect(),
            });
            if self.settle.is_zero() {
                return Progress::Passed;
            }
            return Progress::Waiting(format!(
                "all declared workloads running, 0s of the {}s settle time",
                self.settle.as_secs()
            ));
        }
        let problems = problems.join("; ");
        if now.duration_since(self.started) >= self.timeout {
            return Progress::Failed(format!(
                "workloads not running within {}s: {problems}",
                self.timeout.as_secs()
            ));
        }
        Progress::Waiting(problems)
    }
}

/// Why container `id`, running when the settle time began, runs no more.
fn lost(obs: &Observation, id: &str, was: &Running) -> String {
    let pod = obs.pod_name(&was.sandbox);
    let old = obs.containers.iter().find(|c| c.id == id);
    let newer = obs
        .latest_in(&was.sandbox)
        .into_iter()
        .find(|c| name_of(c) == was.name && c.id != id && attempt_of(c) >= was.attempt);
    if let Some(newer) = newer {
        let exit = old
            .and_then(|c| obs.exits.get(&c.id))
            .map(|e| format!(", attempt {} exited with code {}", was.attempt, e.code))
            .unwrap_or_default();
        return format!(
            "container {} restarted (attempt {} → {}{exit}) in pod {pod}",
            was.name,
            was.attempt,
            attempt_of(newer)
        );
    }
    match old {
        Some(c) => obs.describe(c),
        None => format!(
            "container {} (attempt {}) in pod {pod} is gone",
            was.name, was.attempt
        ),
    }
}

/// `cairn check-health`: are all declared workloads running right now (no settle time)?
pub fn running_now(spec: &WorkloadsSpec) -> Result<(), String> {
    let mut watch = Watch::new(spec, Duration::ZERO);
    let obs = watch.observe()?;
    let problems: Vec<String> = spec
        .workloads()
        .into_iter()
        .filter_map(|w| {
            let view = judge(w, &obs);
            (!view.problems.is_empty()).then(|| format!("{w}: {}", view.problems.join("; ")))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CheckKind, CheckSpec};
    use v1::ContainerState::{ContainerCreated, ContainerExited, ContainerRunning};

    fn parse(text: &str) -> Result<CheckSpec, String> {
        let spec: CheckSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    fn workloads(spec: &CheckSpec) -> &WorkloadsSpec {
        match &spec.kind {
            CheckKind::Workloads(w) => w,
            other => panic!("{other:?}"),
        }
    }

    fn web() -> WorkloadsSpec {
        WorkloadsSpec {
            socket: default_socket(),
            pods: vec![PodSelector {
                namespace: Some("default".into()),
                labels: BTreeMap::from([("app".into(), "web".into())]),
            }],
            containers: vec!["web".into()],
            settle_secs: 10,
        }
    }

    fn sandbox(id: &str, app: &str, ready: bool) -> v1::PodSandbox {
        v1::PodSandbox {
            id: id.into(),
            metadata: Some(v1::PodSandboxMetadata {
                name: app.into(),
                uid: format!("uid-{id}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            state: if ready {
                v1::PodSandboxState::SandboxReady
            } else {
                v1::PodSandboxState::SandboxNotready
            } as i32,
            labels: HashMap::from([("app".to_string(), app.to_string())]),
            ..Default::default()
        }
    }

    fn container(
        id: &str,
        sandbox: &str,
        name: &str,
        attempt: u32,
        state: v1::ContainerState,
    ) -> v1::Container {
        v1::Container {
            id: id.into(),
            pod_sandbox_id: sandbox.into(),
            metadata: Some(v1::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: state as i32,
            created_at: i64::from(attempt),
            ..Default::default()
        }
    }

    fn obs(
        sandboxes: Vec<v1::PodSandbox>,
        containers: Vec<v1::Container>,
        exits: &[(&str, i32)],
    ) -> Observation {
        Observation {
            sandboxes,
            containers,
            exits: exits
                .iter()
                .map(|(id, code)| {
                    (
                        id.to_string(),
                        Exit {
                            code: *code,
                            reason: if *code == 0 { "Completed" } else { "Error" }.into(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn healthy(container_id: &str, attempt: u32) -> Observation {
        obs(
            vec![sandbox("s1", "web", true)],
            vec![container(
                container_id,
                "s1",
                "web",
                attempt,
                ContainerRunning,
            )],
            &[],
        )
    }

    #[test]
    fn the_spec_parses_with_defaults_and_refuses_unknown_fields() {
        let spec = parse(
            "kind = \"workloads\"\npods = [{ namespace = \"default\", labels = { app = \"web\" } }]\n\
             containers = [\"web\"]\nsettle_secs = 5\ntimeout_secs = 60\n",
        )
        .unwrap();
        assert_eq!(spec.timeout(), Duration::from_secs(60));
        let w = workloads(&spec);
        assert_eq!(w.socket, PathBuf::from(cairn_cri_probe::DEFAULT_SOCKET));
        assert_eq!(w.settle_secs, 5);
        assert_eq!(w.pods[0].labels["app"], "web");

        let spec = parse("kind = \"workloads\"\ncontainers = [\"web\"]\n").unwrap();
        assert_eq!(spec.timeout(), Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(workloads(&spec).settle_secs, 30);

        let e = parse("kind = \"workloads\"\ncontainers = [\"web\"]\nsettle = 5\n").unwrap_err();
        assert!(e.contains("unknown field `settle`"), "{e}");
        let e = parse(
            "kind = \"workloads\"\npods = [{ labels = { app = \"web\" }, name = \"web\" }]\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `name`"), "{e}");
        // Other kinds keep their old defaults.
        let cri = parse("kind = \"cri\"\n").unwrap();
        assert_eq!(cri.timeout(), Duration::from_secs(10));
    }

    #[test]
    fn specs_that_declare_nothing_or_everything_are_refused() {
        let bad = |text: &str| parse(&format!("kind = \"workloads\"\n{text}")).unwrap_err();
        assert!(bad("").contains("declares no workloads"));
        assert!(bad("pods = [{ labels = {} }]\n").contains("pods[0] has no labels"));
        assert!(
            bad("pods = [{ namespace = \"\", labels = { a = \"b\" } }]\n")
                .contains("empty namespace")
        );
        assert!(bad("containers = [\"\"]\n").contains("empty name"));
        assert!(bad("containers = [\"a\", \"a\"]\n").contains("\"a\" is declared twice"));
        assert!(bad("containers = [\"a\"]\ntimeout_secs = 0\n").contains("above 0"));
    }

    #[test]
    fn all_running_then_settled_passes() {
        let t0 = Instant::now();
        let mut watch = Watch::starting_at(&web(), Duration::from_secs(60), t0);
        let none = obs(vec![], vec![], &[]);
        match watch.step(t0, Ok(none)) {
            Progress::Waiting(why) => {
                assert!(
                    why.contains("pod {app=web} in default: no pod matches"),
                    "{why}"
                );
                assert!(
                    why.contains("container web: no container by that name"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        let at = |s| t0 + Duration::from_secs(s);
        assert!(matches!(
            watch.step(at(2), Ok(healthy("c1", 0))),
            Progress::Waiting(_)
        ));
        match watch.step(at(7), Ok(healthy("c1", 0))) {
            Progress::Waiting(why) => assert!(why.contains("5s of the 10s settle"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A CRI hiccup while settling decides nothing.
        assert!(matches!(
            watch.step(at(9), Err("CRI on x: no reply".into())),
            Progress::Waiting(_)
        ));
        assert_eq!(watch.step(at(12), Ok(healthy("c1", 0))), Progress::Passed);
    }

    #[test]
    fn a_restart_while_settling_fails_at_once_naming_the_container() {
        let t0 = Instant::now();
        let mut watch = Watch::starting_at(&web(), Duration::from_secs(60), t0);
        assert!(matches!(
            watch.step(t0, Ok(healthy("c1", 0))),
            Progress::Waiting(_)
        ));
        let restarted = obs(
            vec![sandbox("s1", "web", true)],
            vec![
                container("c1", "s1", "web", 0, ContainerExited),
                container("c2", "s1", "web", 1, ContainerRunning),
            ],
            &[("c1", 1)],
        );
        match watch.step(t0 + Duration::from_secs(3), Ok(restarted)) {
            Progress::Failed(why) => assert_eq!(
                why,
                "pod {app=web} in default: container web restarted (attempt 0 → 1, attempt 0 \
                 exited with code 1) in pod default/web, 3s into the 10s settle time"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exit_while_settling_fails_with_its_code() {
        let t0 = Instant::now();
        let spec = WorkloadsSpec {
            pods: vec![],
            ..web()
        };
        let mut watch = Watch::starting_at(&spec, Duration::from_secs(60), t0);
        assert!(matches!(
            watch.step(t0, Ok(healthy("c1", 2))),
            Progress::Waiting(_)
        ));
        let exited = obs(
            vec![sandbox("s1", "web", true)],
            vec![container("c1", "s1", "web", 2, ContainerExited)],
            &[("c1", 137)],
        );
        match watch.step(t0 + Duration::from_secs(1), Ok(exited)) {
            Progress::Failed(why) => assert_eq!(
                why,
                "container web: container web exited with code 137 (attempt 2) in pod \
                 default/web: Error, 1s into the 10s settle time"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_crash_loop_that_never_runs_fails_at_the_timeout_with_its_state() {
        let t0 = Instant::now();
        let mut watch = Watch::starting_at(&web(), Duration::from_secs(8), t0);
        let looping = obs(
            vec![sandbox("s0", "web", false), sandbox("s1", "web", true)],
            vec![
                container("c1", "s1", "web", 2, ContainerExited),
                container("c2", "s1", "web", 3, ContainerExited),
            ],
            &[("c1", 1), ("c2", 1)],
        );
        let first = watch.step(t0, Ok(obs(looping.sandboxes.clone(), vec![], &[])));
        match first {
            Progress::Waiting(why) => {
                assert!(
                    why.contains("pod default/web has no containers yet"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        match watch.step(t0 + Duration::from_secs(8), Ok(looping)) {
            Progress::Failed(why) => {
                assert!(
                    why.starts_with("workloads not running within 8s: "),
                    "{why}"
                );
                assert!(
                    why.contains(
                        "container web: container web exited with code 1 (attempt 3) in pod \
                         default/web: Error"
                    ),
                    "{why}"
                );
                assert!(!why.contains("attempt 2"), "only the latest attempt: {why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn init_containers_that_completed_do_not_count_against_a_pod() {
        let spec = WorkloadsSpec {
            containers: vec![],
            ..web()
        };
        let pod = |app_state| {
            obs(
                vec![sandbox("s1", "web", true)],
                vec![
                    container("i1", "s1", "init", 0, ContainerExited),
                    container("c1", "s1", "app", 0, app_state),
                ],
                &[("i1", 0)],
            )
        };
        let w = spec.workloads()[0];
        assert!(judge(w, &pod(ContainerRunning)).problems.is_empty());
        let view = judge(w, &pod(ContainerCreated));
        assert_eq!(
            view.problems,
            ["container app is created but not started (attempt 0) in pod default/web"]
        );
        // A not-ready sandbox (an old one from before the reboot) is no match.
        let old = obs(vec![sandbox("s0", "web", false)], vec![], &[]);
        assert_eq!(judge(w, &old).problems, ["pod default/web is not ready"]);
        // Labels and namespace must all match.
        let mut other_ns = sandbox("s2", "web", true);
        other_ns.metadata.as_mut().unwrap().namespace = "kube-system".into();
        assert_eq!(
            judge(w, &obs(vec![other_ns], vec![], &[])).problems,
            ["no pod matches"]
        );
    }
}
