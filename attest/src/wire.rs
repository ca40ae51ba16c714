//! Big-endian TPM 2.0 marshalling: a bounds-checked reader and the constants Cairn needs.
//! Every read checks the remaining length first; nothing here can panic on input.

use crate::error::{AttestError, Result};

pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_AES: u16 = 0x0006;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_SM4: u16 = 0x0013;
pub const TPM_ALG_RSASSA: u16 = 0x0014;
pub const TPM_ALG_RSAES: u16 = 0x0015;
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
pub const TPM_ALG_OAEP: u16 = 0x0017;
pub const TPM_ALG_CAMELLIA: u16 = 0x0026;
pub const TPM_ALG_CFB: u16 = 0x0043;

/// `TPM_GENERATED_VALUE`: the first field of every TPMS_ATTEST the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// A cursor over one marshalled structure. `structure` names it in error messages.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], structure: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            structure,
        }
    }

    pub fn error(&self, detail: impl Into<String>) -> AttestError {
        AttestError::malformed(self.structure, detail)
    }

    pub fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(self.error(format!(
                "truncated: {field} needs {n} bytes at offset {}, {rest} left",
                self.pos
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A TPM2B: u16 size, then that many bytes; `max` bounds the size.
    pub fn tpm2b(&mut self, field: &str, max: usize) -> Result<&'a [u8]> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(self.error(format!("{field}: size {size} exceeds {max}")));
        }
        self.bytes(size, field)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(self.error(format!(
                "{} trailing bytes after offset {}",
                self.buf.len() - self.pos,
                self.pos
            )));
        }
        Ok(())
    }
}

/// Marshals `body` as a TPM2B (u16 big-endian size, then the bytes).
pub fn tpm2b(body: &[u8]) -> Result<Vec<u8>> {
    let size = u16::try_from(body.len())
        .map_err(|_| AttestError::malformed("TPM2B", format!("{} bytes exceed u16", body.len())))?;
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Reads a whole buffer as one TPM2B and returns its body.
pub fn unwrap_tpm2b<'a>(buf: &'a [u8], structure: &'static str, max: usize) -> Result<&'a [u8]> {
    let mut r = Reader::new(buf, structure);
    let body = r.tpm2b("size", max)?;
    r.finish()?;
    Ok(body)
}
