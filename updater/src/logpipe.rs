//! `cairn log-to FILE`: the image's services write their output through this, so logs on
//! `/data` stay bounded and a full disk never stops a service.
//!
//! Appends stdin to FILE; when FILE would pass `max_bytes` it is rotated (`FILE.1` …
//! `FILE.<keep>`, the oldest dropped), so a service's logs take at most
//! `(keep + 1) × max_bytes`. A write that fails (a full data partition) drops that output
//! and counts it; the pipe itself never stops before its input ends, because a service
//! whose log pipe closed would die of SIGPIPE.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// What a pipe did, for its caller and its tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PipeStats {
    pub written: u64,
    pub dropped: u64,
    pub rotations: u64,
}

pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    pub fn new(path: &Path, max_bytes: u64, keep: u32) -> RotatingLog {
        RotatingLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            return fs::remove_file(&self.path).or_else(ignore_missing);
        }
        fs::remove_file(self.rotated(self.keep)).or_else(ignore_missing)?;
        for n in (1..self.keep).rev() {
            fs::rename(self.rotated(n), self.rotated(n + 1)).or_else(ignore_missing)?;
        }
        fs::rename(&self.path, self.rotated(1)).or_else(ignore_missing)
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))
    }

    /// Writes one piece of output (a line), rotating first when it would not fit.
    pub fn write(&mut self, bytes: &[u8], stats: &mut PipeStats) {
        let result = (|| {
            self.open()?;
            if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
                self.rotate()?;
                stats.rotations += 1;
            }
            self.open()?.write_all(bytes)?;
            self.size += bytes.len() as u64;
            Ok::<(), io::Error>(())
        })();
        match result {
            Ok(()) => stats.written += bytes.len() as u64,
            Err(_) => {
                // Reopen next time: the file may have been removed or the disk freed.
                self.file = None;
                stats.dropped += bytes.len() as u64;
            }
        }
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Copies `input` into `log` line by line until it ends (a line longer than 64 KiB is
/// written in pieces).
pub fn pipe(input: impl Read, log: &mut RotatingLog) -> PipeStats {
    let mut stats = PipeStats::default();
    let mut reader = BufReader::with_capacity(64 << 10, input);
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let len = chunk
            .iter()
            .position(|&b| b == b'\n')
            .map_or(chunk.len(), |i| i + 1);
        let line = chunk[..len].to_vec();
        reader.consume(len);
        log.write(&line, &mut stats);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_at_the_cap_and_the_oldest_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut log = RotatingLog::new(&path, 100, 2);
        let input: Vec<u8> = (0..50)
            .flat_map(|i| format!("line {i:04}\n").into_bytes())
            .collect();
        let stats = pipe(&input[..], &mut log);
        assert_eq!(stats.written, input.len() as u64);
        assert_eq!(stats.dropped, 0);
        assert!(stats.rotations >= 4, "{stats:?}");
        let mut total = 0;
        for name in ["svc.log", "svc.log.1", "svc.log.2"] {
            let len = fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len <= 100, "{name} is {len} bytes");
            total += len;
        }
        assert!(!dir.path().join("svc.log.3").exists());
        // The newest lines are in the live file, whole.
        let live = fs::read_to_string(&path).unwrap();
        assert!(live.ends_with("line 0049\n"), "{live}");
        assert!(total <= 300);
    }

    #[test]
    fn a_full_disk_drops_output_but_reads_it_all() {
        // /dev/full answers every write with ENOSPC, like a data partition filled up.
        let mut log = RotatingLog::new(Path::new("/dev/full"), 1 << 20, 2);
        let input = "one\ntwo\nthree\n".repeat(100);
        let mut reader = input.as_bytes();
        let stats = pipe(&mut reader, &mut log);
        assert_eq!(stats.dropped, input.len() as u64);
        assert_eq!(stats.written, 0);
        assert!(reader.is_empty(), "the service's output was all read");
    }
}
