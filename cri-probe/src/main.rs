//! `cairn-cri-probe [SOCKET]`: one CRI `RuntimeService/Status` call over the runtime's unix
//! socket; prints each condition (`RuntimeReady=true`, ...) and exits 0 only when
//! RuntimeReady is true, 1 when it is not, 2 when there was no answer.
//!
//! `cairn-cri-probe run-pod NAME IMAGE [CMD...]`: starts a one-container pod (`pod.rs`)
//! on the default socket, waiting up to a minute for the runtime to be ready; prints the
//! container's id. A kubelet stand-in where no Kubernetes runs (the QEMU tests).
//!
//! It ships in the image for operators and the QEMU tests; the calls are the
//! `cairn_cri_probe` lib.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_cri_probe::pod::{self, PodSpec};
use cairn_cri_probe::{Client, DEFAULT_SOCKET};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("run-pod") {
        return run_pod(&args[1..]);
    }
    let socket = args
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    match cairn_cri_probe::status(Path::new(&socket), Duration::from_secs(10)) {
        Ok(conditions) => {
            let mut ready = false;
            for c in &conditions {
                println!("{}={} {} {}", c.kind, c.status, c.reason, c.message);
                if c.kind == "RuntimeReady" && c.status {
                    ready = true;
                }
            }
            if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("cairn-cri-probe: {socket}: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_pod(args: &[String]) -> ExitCode {
    let [name, image, cmd @ ..] = args else {
        eprintln!("usage: cairn-cri-probe run-pod NAME IMAGE [CMD...]");
        return ExitCode::from(2);
    };
    let socket = Path::new(DEFAULT_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        let ready = Client::connect(socket, Duration::from_secs(10)).and_then(|c| {
            let up = c
                .status()?
                .iter()
                .any(|c| c.kind == "RuntimeReady" && c.status);
            Ok((c, up))
        });
        match ready {
            Ok((client, true)) => break client,
            Ok((_, false)) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok((_, false)) => {
                eprintln!("cairn-cri-probe: the runtime did not become ready within a minute");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("cairn-cri-probe: {}: {e}", socket.display());
                return ExitCode::from(2);
            }
        }
    };
    let log_dir = Path::new("/var/log/pods").join(name);
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        eprintln!("cairn-cri-probe: {}: {e}", log_dir.display());
        return ExitCode::from(1);
    }
    let spec = PodSpec {
        name,
        image,
        cmd,
        log_dir: &log_dir,
    };
    match pod::run(&client, &spec) {
        Ok(started) => {
            println!("{}", started.container_id);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn-cri-probe: pod {name}: {e}");
            ExitCode::from(1)
        }
    }
}
