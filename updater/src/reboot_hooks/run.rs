//! Running one hook: in a process group of its own, stdout and stderr into one pipe of
//! which the tail is kept, killed as a group at its timeout.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Output kept of a hook (its last bytes) for the log and the error message.
const TAIL_BYTES: usize = 4096;
/// How long the output is waited for after the hook exited: a child it left running in
/// the background may hold the pipe open, and must not hold up cairnd.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {program} could not start: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {program} exited with {status}{}", last_line(output))]
    Failed {
        program: String,
        status: String,
        output: String,
    },
    #[error(
        "hook {program} timed out after {secs} s and was killed{}",
        last_line(output)
    )]
    TimedOut {
        program: String,
        secs: u64,
        output: String,
    },
    #[error("hook {program}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl HookError {
    /// The tail of what the hook printed (stdout and stderr), for the log.
    pub fn output(&self) -> &str {
        match self {
            HookError::Failed { output, .. } | HookError::TimedOut { output, .. } => output,
            HookError::Spawn { .. } | HookError::Io { .. } => "",
        }
    }
}

/// `": <last non-empty line>"`, at most 200 characters, or nothing.
fn last_line(output: &str) -> String {
    match output.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!(": {}", line.chars().take(200).collect::<String>()),
        None => String::new(),
    }
}

/// Runs `argv` with `env` added, stdin from /dev/null. Past `timeout` the hook's whole
/// process group (a shell hook's children too) is killed with SIGKILL.
pub fn run(argv: &[String], timeout: Duration, env: &[(&str, String)]) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty command"),
        });
    };
    let io = |source| HookError::Io {
        program: program.clone(),
        source,
    };
    let (mut reader, writer) = std::io::pipe().map_err(io)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(io)?)
        .stderr(writer)
        .process_group(0);
    let spawned = command.spawn();
    // The command holds our copies of the pipe's write end: without dropping it the
    // reader would never see the end of the output.
    drop(command);
    let mut child = spawned.map_err(|source| HookError::Spawn {
        program: program.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > TAIL_BYTES {
                tail.drain(..tail.len() - TAIL_BYTES);
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&tail).into_owned());
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => break None,
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                kill_group(child.id());
                let _ = child.wait();
                return Err(io(e));
            }
        }
    };
    let Some(status) = status else {
        kill_group(child.id());
        let _ = child.wait();
        return Err(HookError::TimedOut {
            program: program.clone(),
            secs: timeout.as_secs(),
            output: rx.recv_timeout(OUTPUT_GRACE).unwrap_or_default(),
        });
    };
    if status.success() {
        return Ok(());
    }
    Err(HookError::Failed {
        program: program.clone(),
        status: describe(status),
        output: rx.recv_timeout(OUTPUT_GRACE).unwrap_or_default(),
    })
}

/// SIGKILL to the process group the hook leads (its pid is the group's id).
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: a plain syscall; a negative pid names the process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn a_failure_names_the_hook_its_exit_code_and_its_last_line() {
        let err = run(
            &sh("echo starting; echo 'node busy' >&2; exit 3"),
            Duration::from_secs(5),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "hook sh exited with 3: node busy");
        assert!(err.output().contains("starting"), "{err:?}");
    }

    #[test]
    fn the_hook_sees_its_environment_and_only_the_tail_of_its_output_is_kept() {
        let err = run(
            &sh("head -c 100000 /dev/zero | tr '\\0' x; echo; echo \"v=$CAIRN_VERSION\"; exit 1"),
            Duration::from_secs(5),
            &[("CAIRN_VERSION", "2.0".into())],
        )
        .unwrap_err();
        assert!(err.to_string().ends_with(": v=2.0"), "{err}");
        assert!(err.output().len() <= TAIL_BYTES);
        assert!(run(&sh("exit 0"), Duration::from_secs(5), &[]).is_ok());
    }

    #[test]
    fn a_program_that_does_not_exist_is_a_start_failure() {
        let err = run(&["/nonexistent/hook".into()], Duration::from_secs(5), &[]).unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err}");
    }
}
