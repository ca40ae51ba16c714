//! A private swtpm per test: `swtpm socket --tpm2` on two free loopback ports, killed on
//! drop. Used by this crate's tests and meant for cairnd's and the server's.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to install when a tool is missing (tests must fail, not skip).
pub const INSTALL_HINT: &str = "apt-get install swtpm swtpm-tools tpm2-tools libtss2-dev (or `cargo xtask test`, which runs the machine set-up)";

/// A running swtpm whose state lives in a caller-owned directory.
pub struct Swtpm {
    child: Child,
    port: u16,
    state_dir: PathBuf,
}

impl Swtpm {
    /// Starts swtpm on `state_dir` (created if needed; reuse it to keep the TPM's NV).
    /// Retries on another port pair if a parallel test grabbed the chosen ones.
    pub fn start(state_dir: &Path) -> io::Result<Swtpm> {
        std::fs::create_dir_all(state_dir)?;
        let mut last = None;
        for _ in 0..10 {
            let port = free_port_pair()?;
            let mut command = Command::new("swtpm");
            close_inherited_fds(&mut command);
            let mut child = command
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state_dir.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("running swtpm: {e}; install: {INSTALL_HINT}"),
                    )
                })?;
            match wait_listening(&mut child, port) {
                Ok(()) => {
                    return Ok(Swtpm {
                        child,
                        port,
                        state_dir: state_dir.to_path_buf(),
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("swtpm did not start")))
    }

    /// The TCTI string for [`crate::Tpm::open`].
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `swtpm_setup --tpm2 --create-ek-cert --create-platform-cert --lock-nvram` on an
/// empty state dir (before [`Swtpm::start`]): an EK certificate signed by swtpm-localca
/// lands in NV 0x01c00002.
pub fn setup_with_ek_cert(state_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let mut command = Command::new("swtpm_setup");
    close_inherited_fds(&mut command);
    let out = command
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(state_dir)
        .args(["--create-ek-cert", "--create-platform-cert", "--lock-nvram"])
        .arg("--overwrite")
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running swtpm_setup: {e}; install: {INSTALL_HINT}"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "swtpm_setup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Makes the child of `cmd` close, when it execs, every descriptor above stderr it
/// inherited.
///
/// The TSS opens its TCTI sockets without close-on-exec, so a child spawned while another
/// thread holds a TPM connection (tests run in parallel) keeps that connection open for
/// its whole life, and swtpm serves one connection at a time. In CI a test's swtpm held
/// the control connection of another test's swtpm that way, and both tests waited forever.
pub fn close_inherited_fds(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec, touches no memory of the
    // parent and makes only async-signal-safe system calls (close_range, fcntl).
    unsafe {
        cmd.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let first: libc::c_uint = 3;
            let marked = libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if marked != 0 {
                // Kernels before 5.11: one descriptor at a time.
                for fd in 3..4096 {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
            }
            Ok(())
        });
    }
}

/// The swtpm-localca issuer certificate path from /etc/swtpm-localca.conf
/// (`issuercert = ...`), defaulting to /var/lib/swtpm-localca/issuercert.pem.
pub fn localca_issuer_cert() -> PathBuf {
    std::fs::read_to_string("/etc/swtpm-localca.conf")
        .ok()
        .and_then(|conf| {
            conf.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                (key.trim() == "issuercert").then(|| PathBuf::from(value.trim()))
            })
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/swtpm-localca/issuercert.pem"))
}

/// A port P with P and P+1 both free on loopback at the time of asking.
fn free_port_pair() -> io::Result<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free loopback port pair"))
}

fn wait_listening(child: &mut Child, port: u16) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = io::Read::read_to_string(&mut err, &mut stderr);
            }
            return Err(io::Error::other(format!(
                "swtpm exited ({status}): {stderr}"
            )));
        }
        let both = TcpStream::connect(("127.0.0.1", port)).is_ok()
            && TcpStream::connect(("127.0.0.1", port + 1)).is_ok();
        if both {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("swtpm did not listen within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptors `ls` finds open in itself, by number.
    fn open_in_child(cmd: &mut Command) -> Vec<String> {
        let out = cmd.arg("/proc/self/fd").output().expect("run ls");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_child_does_not_keep_descriptors_it_inherited() {
        use std::os::fd::AsRawFd;
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind");
        // As the TSS opens its sockets: without close-on-exec, here at a number no child
        // opens by itself.
        const INHERITED: i32 = 200;
        // SAFETY: plain descriptor calls on a socket this test owns.
        assert_eq!(
            unsafe { libc::dup2(socket.as_raw_fd(), INHERITED) },
            INHERITED
        );
        let plain = open_in_child(&mut Command::new("ls"));
        assert!(plain.contains(&INHERITED.to_string()), "{plain:?}");
        let mut cmd = Command::new("ls");
        close_inherited_fds(&mut cmd);
        let closed = open_in_child(&mut cmd);
        // SAFETY: closes the duplicate made above.
        unsafe { libc::close(INHERITED) };
        assert!(!closed.contains(&INHERITED.to_string()), "{closed:?}");
        assert!(
            closed.contains(&"1".to_string()),
            "stdout stays: {closed:?}"
        );
    }
}
