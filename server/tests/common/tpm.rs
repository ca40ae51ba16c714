//! TPM public areas shaped like a real TPM's, for the enrollment endpoints: an EK (a
//! restricted decryption key with AES-128-CFB) and an AK (a restricted RSASSA-SHA256
//! signing key), both with made-up moduli. The server only wraps a challenge for them,
//! which needs no private key.

fn tpm2b(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn rsa_public(attributes: u32, symmetric: &[u8], scheme: &[u8], seed: u8) -> String {
    // A 2048-bit odd modulus with its top bit set, different for every seed.
    let mut modulus: Vec<u8> = (0..256u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    modulus[0] |= 0x80;
    modulus[255] |= 1;
    let mut t = Vec::new();
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // nameAlg SHA-256
    t.extend_from_slice(&attributes.to_be_bytes());
    t.extend_from_slice(&tpm2b(&[])); // authPolicy
    t.extend_from_slice(symmetric);
    t.extend_from_slice(scheme);
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // default exponent
    t.extend_from_slice(&tpm2b(&modulus));
    hex::encode(tpm2b(&t))
}

/// TPM2B_PUBLIC of an endorsement key, hex.
pub fn ek_public(seed: u8) -> String {
    let attributes = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17);
    // AES, 128 bits, CFB; scheme NULL.
    rsa_public(
        attributes,
        &[0x00, 0x06, 0x00, 0x80, 0x00, 0x43],
        &[0x00, 0x10],
        seed,
    )
}

/// TPM2B_PUBLIC of an attestation key, hex.
pub fn ak_public(seed: u8) -> String {
    let attributes = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);
    // symmetric NULL; RSASSA with SHA-256.
    rsa_public(attributes, &[0x00, 0x10], &[0x00, 0x14, 0x00, 0x0B], seed)
}
