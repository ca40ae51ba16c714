//! A guest's own network namespace, so that two guests can run at once.
//!
//! QEMU's user network hands a guest's connection to 10.0.2.2:PORT to 127.0.0.1:PORT in
//! QEMU's own network namespace, and the image names fixed ports (the fleet server at
//! 18480, a site's server at 18481, NTP at 18123). A guest in VM slot 0 reaches the
//! host's loopback directly. A guest in any other slot runs QEMU in a private namespace
//! whose loopback relays each of those ports to the slot's own port on the host's loopback
//! ([`crate::host_port`]), where that scenario's servers listen. Nothing else of the
//! host's network is reachable from there, which no scenario needs.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The ports the image's guests connect to on 10.0.2.2.
pub const TCP_PORTS: [u16; 2] = [crate::SERVER_PORT, crate::SITE_SERVER_PORT];
pub const UDP_PORTS: [u16; 1] = [crate::NTP_PORT];

/// A network namespace with its loopback up and the relays running; they stop on drop.
pub struct GuestNet {
    namespace: File,
    stop: Arc<AtomicBool>,
}

impl GuestNet {
    /// Whether this machine lets the harness make network namespaces (root, not denied by
    /// a sandbox). Without them guests run one at a time.
    pub fn available() -> bool {
        thread::spawn(|| unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0)
            .join()
            .unwrap_or(false)
    }

    /// A fresh namespace whose loopback relays the image's ports to `host_port(port)` on
    /// the host's loopback.
    pub fn new(host_port: impl Fn(u16) -> u16) -> Result<GuestNet> {
        let (namespace, (tcp, udp)) = in_new_namespace(|| {
            // A child inherits the namespace of the thread that starts it.
            let status = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .context("running ip (iproute2) to bring the namespace's loopback up")?;
            if !status.success() {
                bail!("ip link set lo up: {status}");
            }
            let tcp = TCP_PORTS
                .iter()
                .map(|&port| Ok((TcpListener::bind(("127.0.0.1", port))?, port)))
                .collect::<Result<Vec<_>>>()?;
            let udp = UDP_PORTS
                .iter()
                .map(|&port| Ok((UdpSocket::bind(("127.0.0.1", port))?, port)))
                .collect::<Result<Vec<_>>>()?;
            Ok((tcp, udp))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        // Back in the host's namespace: what these threads connect to is the host's.
        for (listener, port) in tcp {
            let to = SocketAddr::from(([127, 0, 0, 1], host_port(port)));
            let stop = Arc::clone(&stop);
            thread::spawn(move || relay_tcp(listener, to, &stop, None));
        }
        for (socket, port) in udp {
            let to = SocketAddr::from(([127, 0, 0, 1], host_port(port)));
            let stop = Arc::clone(&stop);
            thread::spawn(move || relay_udp(socket, to, stop));
        }
        Ok(GuestNet { namespace, stop })
    }

    /// Makes `command` start in this namespace.
    pub fn enter(&self, command: &mut Command) {
        let fd = self.namespace.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe, and the closure touches no memory but `fd`,
        // which stays open in the parent until the child has exec'd.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
}

impl Drop for GuestNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `inside` on this thread in a new network namespace, then returns the thread to
/// the namespace it came from (sockets made inside stay in the new one).
fn in_new_namespace<T>(inside: impl FnOnce() -> Result<T>) -> Result<(File, T)> {
    let host = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    let result = File::open("/proc/thread-self/ns/net")
        .context("opening the new netns")
        .and_then(|namespace| Ok((namespace, inside()?)));
    if unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // The thread would go on in the wrong namespace: nothing after this could be trusted.
        panic!(
            "could not return to the host's network namespace: {}",
            io::Error::last_os_error()
        );
    }
    result
}

const POLL: Duration = Duration::from_millis(20);

/// Relays each connection to `listener` to `to` until `stop`; with `downstream`, the
/// bytes from `to` flow at that many bytes a second at most, per connection.
pub(crate) fn relay_tcp(
    listener: TcpListener,
    to: SocketAddr,
    stop: &AtomicBool,
    downstream: Option<u64>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((guest, _)) => {
                thread::spawn(move || {
                    // Nothing listening on the host's side: the guest sees its connection
                    // closed, as it would with no relay.
                    if let (Ok(()), Ok(host)) =
                        (guest.set_nonblocking(false), TcpStream::connect(to))
                    {
                        pipe(guest, host, downstream);
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Copies both ways until each side has said all it will; ends when both have. What `b`
/// says flows at `b_rate` bytes a second at most.
fn pipe(a: TcpStream, b: TcpStream, b_rate: Option<u64>) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let back = thread::spawn(move || copy_then_close(b2, a2, b_rate));
    copy_then_close(a, b, None);
    let _ = back.join();
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>) {
    // Throttled, in pieces of a tenth of a second's worth. Time a connection spent idle
    // earns no burst afterwards: each piece is due a piece's time after the later of the
    // last one's due time and now.
    let piece = rate.map_or(64 * 1024, |r| (r / 10).clamp(1, 64 * 1024) as usize);
    let mut buf = vec![0u8; piece];
    let mut due = std::time::Instant::now();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if let Some(rate) = rate {
                    let now = std::time::Instant::now();
                    due = due.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
                    thread::sleep(due - now);
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Datagrams from the guest go to `to`; answers go back to whoever asked last (one
/// client: the guest).
fn relay_udp(guest_side: UdpSocket, to: SocketAddr, stop: Arc<AtomicBool>) {
    let Ok(host_side) = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.connect(to).map(|()| s))
    else {
        return;
    };
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (Ok(guest_answers), Ok(host_reader)) = (guest_side.try_clone(), host_side.try_clone())
    else {
        return;
    };
    for socket in [&guest_side, &host_reader] {
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    }
    let answers = {
        let client = Arc::clone(&client);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = host_reader.recv(&mut buf) {
                    if let Some(addr) = *client.lock().unwrap_or_else(|p| p.into_inner()) {
                        let _ = guest_answers.send_to(&buf[..n], addr);
                    }
                }
            }
        })
    };
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = guest_side.recv_from(&mut buf) {
            *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
            let _ = host_side.send(&buf[..n]);
        }
    }
    let _ = answers.join();
}
