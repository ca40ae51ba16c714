//! Reading and copying in [`COPY_BUF`] chunks: the one read loop that hashing (`digest`),
//! decoding (`codec`) and the install stream (`stream`) share. It depends on no other
//! module of this crate, so they all import it and none imports another for it.

use std::io::{self, Read, Write};

/// Buffer size for moving decoded bytes to the slot: big enough for sequential writes to
/// run at device speed, small enough for the memory budget.
pub const COPY_BUF: usize = 1 << 20;

/// Hands everything `input` yields to `f`, one [`COPY_BUF`] buffer at a time, and returns
/// how many bytes that was.
pub(crate) fn for_each_chunk(
    input: &mut impl Read,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        f(&buf[..n])?;
        total += n as u64;
    }
}

/// Copies `input` into `out` through one [`COPY_BUF`] buffer.
pub(crate) fn copy_buffered(input: &mut impl Read, out: &mut impl Write) -> io::Result<()> {
    for_each_chunk(input, |bytes| out.write_all(bytes)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields its bytes in reads of at most 1000, interrupted before every other read.
    struct Choppy<'a> {
        bytes: &'a [u8],
        interrupt: bool,
    }

    impl Read for Choppy<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = out.len().min(1000);
            self.bytes.read(&mut out[..n])
        }
    }

    #[test]
    fn copies_everything_across_chunks_and_interruptions() {
        let bytes: Vec<u8> = (0..COPY_BUF + 4321).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        copy_buffered(&mut &bytes[..], &mut out).unwrap();
        assert_eq!(out, bytes);

        let mut chunks = 0;
        let total = for_each_chunk(
            &mut Choppy {
                bytes: &bytes[..5500],
                interrupt: false,
            },
            |chunk| {
                chunks += 1;
                assert!(chunk.len() <= 1000);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((total, chunks), (5500, 6));
    }

    #[test]
    fn stops_at_the_first_error_of_the_callback() {
        let err = for_each_chunk(&mut &[1u8; 10][..], |_| Err(io::Error::other("sink full")))
            .unwrap_err();
        assert_eq!(err.to_string(), "sink full");
    }
}
