//! Running an external command for cairnd (a reboot hook, containerd's image importer):
//! in a process group of its own, stdout and stderr into one pipe of which the tail is
//! kept, killed as a group at its timeout. Errors name the command by what it is for
//! (`hook /usr/lib/cairn/drain exited with 1: node busy`).

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Output kept of a command (its last bytes) for the log and the error message.
const TAIL_BYTES: usize = 4096;
/// How long the output is waited for after the command exited: a child it left running in
/// the background may hold the pipe open, and must not hold up cairnd.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{what} {program} could not start: {source}")]
    Spawn {
        what: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {program} exited with {status}{}", last_line(output))]
    Failed {
        what: &'static str,
        program: String,
        status: String,
        output: String,
    },
    #[error(
        "{what} {program} timed out after {secs} s and was killed{}",
        last_line(output)
    )]
    TimedOut {
        what: &'static str,
        program: String,
        secs: u64,
        output: String,
    },
    #[error("{what} {program}: {source}")]
    Io {
        what: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl CommandError {
    /// The tail of what the command printed (stdout and stderr), for the log.
    pub fn output(&self) -> &str {
        match self {
            CommandError::Failed { output, .. } | CommandError::TimedOut { output, .. } => output,
            CommandError::Spawn { .. } | CommandError::Io { .. } => "",
        }
    }
}

/// One command to run.
pub struct Run<'a> {
    /// What the command is for, as errors name it: "hook", "container import".
    pub what: &'static str,
    pub argv: &'a [String],
    pub timeout: Duration,
    /// Added to cairnd's environment.
    pub env: &'a [(&'a str, String)],
    /// Its standard input; `None`: /dev/null.
    pub stdin: Option<std::fs::File>,
}

/// `": <last non-empty line>"`, at most 200 characters, or nothing.
fn last_line(output: &str) -> String {
    match output.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!(": {}", line.chars().take(200).collect::<String>()),
        None => String::new(),
    }
}

/// Runs the command. Past its timeout its whole process group (a shell script's
/// children too) is killed with SIGKILL.
pub fn run(spec: Run<'_>) -> Result<(), CommandError> {
    let Run {
        what,
        argv,
        timeout,
        env,
        stdin,
    } = spec;
    let Some((program, args)) = argv.split_first() else {
        return Err(CommandError::Spawn {
            what,
            program: String::new(),
            source: std::io::Error::other("empty command"),
        });
    };
    let io = |source| CommandError::Io {
        what,
        program: program.clone(),
        source,
    };
    let (mut reader, writer) = std::io::pipe().map_err(io)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(writer.try_clone().map_err(io)?)
        .stderr(writer)
        .process_group(0);
    let spawned = command.spawn();
    // The command holds our copies of the pipe's write end: without dropping it the
    // reader would never see the end of the output.
    drop(command);
    let mut child = spawned.map_err(|source| CommandError::Spawn {
        what,
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
        return Err(CommandError::TimedOut {
            what,
            program: program.clone(),
            secs: timeout.as_secs(),
            output: rx.recv_timeout(OUTPUT_GRACE).unwrap_or_default(),
        });
    };
    if status.success() {
        return Ok(());
    }
    Err(CommandError::Failed {
        what,
        program: program.clone(),
        status: describe(status),
        output: rx.recv_timeout(OUTPUT_GRACE).unwrap_or_default(),
    })
}

/// SIGKILL to the process group the command leads (its pid is the group's id).
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

    fn hook<'a>(argv: &'a [String], env: &'a [(&'a str, String)]) -> Run<'a> {
        Run {
            what: "hook",
            argv,
            timeout: Duration::from_secs(5),
            env,
            stdin: None,
        }
    }

    #[test]
    fn a_failure_names_the_hook_its_exit_code_and_its_last_line() {
        let err = run(hook(
            &sh("echo starting; echo 'node busy' >&2; exit 3"),
            &[],
        ))
        .unwrap_err();
        assert_eq!(err.to_string(), "hook sh exited with 3: node busy");
        assert!(err.output().contains("starting"), "{err:?}");
    }

    #[test]
    fn the_hook_sees_its_environment_and_only_the_tail_of_its_output_is_kept() {
        let script =
            sh("head -c 100000 /dev/zero | tr '\\0' x; echo; echo \"v=$CAIRN_VERSION\"; exit 1");
        let env = [("CAIRN_VERSION", "2.0".to_string())];
        let err = run(hook(&script, &env)).unwrap_err();
        assert!(err.to_string().ends_with(": v=2.0"), "{err}");
        assert!(err.output().len() <= TAIL_BYTES);
        assert!(run(hook(&sh("exit 0"), &[])).is_ok());
    }

    #[test]
    fn a_program_that_does_not_exist_is_a_start_failure() {
        let err = run(hook(&["/nonexistent/hook".into()], &[])).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }

    #[test]
    fn the_command_reads_the_file_it_is_given_as_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::write(&input, "from the file\n").unwrap();
        let script = sh("read line; echo \"got: $line\"; exit 4");
        let err = run(Run {
            stdin: Some(std::fs::File::open(&input).unwrap()),
            ..hook(&script, &[])
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "hook sh exited with 4: got: from the file");
    }
}
