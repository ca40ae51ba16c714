//! LEB128 varints, the numbers of the `block-bsdiff` operation stream.

use std::io::{self, Read, Write};

use super::invalid;

pub fn write(out: &mut impl Write, mut value: u64) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            buf[n] = byte;
            n += 1;
            break;
        }
        buf[n] = byte | 0x80;
        n += 1;
    }
    out.write_all(&buf[..n])
}

pub fn write_signed(out: &mut impl Write, value: i64) -> io::Result<()> {
    write(out, ((value << 1) ^ (value >> 63)) as u64)
}

/// Reads one varint; more than 64 bits, or a stream that ends inside one, is an error.
pub fn read<R: Read + ?Sized>(input: &mut R) -> io::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        input.read_exact(&mut byte)?;
        let bits = u64::from(byte[0] & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(invalid("varint overflows 64 bits"));
        }
        value |= bits << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(invalid("varint longer than 10 bytes"))
}

pub fn read_signed<R: Read + ?Sized>(input: &mut R) -> io::Result<i64> {
    let raw = read(input)?;
    Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
}

/// Reads a varint that must fit in `usize` and be at most `max`, naming `what` otherwise.
pub fn read_len<R: Read + ?Sized>(input: &mut R, max: u64, what: &str) -> io::Result<usize> {
    let value = read(input)?;
    if value > max {
        return Err(invalid(format!("{what} {value} exceeds {max}")));
    }
    usize::try_from(value).map_err(|_| invalid(format!("{what} {value} does not fit in memory")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_malformed_ones_are_refused() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            write(&mut buf, v).unwrap();
            assert_eq!(read(&mut &buf[..]).unwrap(), v);
        }
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            write_signed(&mut buf, v).unwrap();
            assert_eq!(read_signed(&mut &buf[..]).unwrap(), v);
        }
        assert!(read(&mut &[0xffu8; 11][..]).is_err());
        assert!(
            read(&mut &[0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]).is_err()
        );
        assert_eq!(
            read(&mut &[0x80u8][..]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(read_len(&mut &[0x05u8][..], 4, "length")
            .unwrap_err()
            .to_string()
            .contains("length 5 exceeds 4"));
    }
}
