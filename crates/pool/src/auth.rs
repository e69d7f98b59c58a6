//! Data-plane authentication: a shared secret proven by answering a challenge.
//!
//! The server opens every connection with a `Hello` frame carrying a fresh 32-byte nonce. The
//! client answers with `Auth` whose body is `HMAC-SHA256(secret, "kvtier-pool-auth-v1" ‖ nonce)`
//! followed by a fresh nonce of its own; the server's `Auth` reply carries
//! `HMAC-SHA256(secret, "kvtier-pool-auth-server-v1" ‖ client nonce)`, so the client knows it
//! reached a server holding the secret, not an impostor on its address (authentication both
//! ways). The secret never crosses the wire, and a recorded answer is useless on another
//! connection. Until the answer checks out the server reads nothing else from the peer and sends
//! it nothing but the `Hello`. (For encryption in flight, put the pool on a private network or a mesh with
//! mutual TLS; the proof here is authentication only.)

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof.
pub const PROOF_LEN: usize = 32;
const CONTEXT: &[u8] = b"kvtier-pool-auth-v1";
const SERVER_CONTEXT: &[u8] = b"kvtier-pool-auth-server-v1";

/// A fresh random nonce from the operating system.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the operating system's random source failed");
    n
}

/// The proof of `secret` for `nonce`.
pub fn proof(secret: &[u8], nonce: &[u8]) -> [u8; PROOF_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(CONTEXT);
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// The server's proof of `secret` for the client's `nonce` (another context than the client's,
/// so neither side's proof can be replayed as the other's).
pub fn server_proof(secret: &[u8], nonce: &[u8]) -> [u8; PROOF_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(SERVER_CONTEXT);
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Checks a server's proof in constant time.
pub fn verify_server(secret: &[u8], nonce: &[u8], answer: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(SERVER_CONTEXT);
    mac.update(nonce);
    mac.verify_slice(answer).is_ok()
}

/// Checks a proof in constant time.
pub fn verify(secret: &[u8], nonce: &[u8], answer: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(CONTEXT);
    mac.update(nonce);
    mac.verify_slice(answer).is_ok()
}

/// Reads a secret from a file (surrounding whitespace trimmed); it must not be empty.
pub fn read_secret(path: &std::path::Path) -> kvtier_core::Result<Vec<u8>> {
    let s = std::fs::read(path).map_err(|e| {
        kvtier_core::Error::io("reading the pool secret", e).with_context("path", path.display())
    })?;
    let trimmed = s.trim_ascii().to_vec();
    if trimmed.len() < 16 {
        return Err(kvtier_core::Error::invalid(
            "the pool secret must be at least 16 bytes (e.g. `head -c 32 /dev/urandom | base64`)",
        )
        .with_context("path", path.display()));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_only_with_the_right_secret_and_nonce() {
        let n = nonce();
        let p = proof(b"0123456789abcdef", &n);
        assert!(verify(b"0123456789abcdef", &n, &p));
        assert!(!verify(b"0123456789abcdeX", &n, &p));
        assert!(!verify(b"0123456789abcdef", &nonce(), &p));
        assert!(!verify(b"0123456789abcdef", &n, &p[..31]));
        // The two directions do not stand for each other.
        let back = server_proof(b"0123456789abcdef", &n);
        assert!(verify_server(b"0123456789abcdef", &n, &back));
        assert!(!verify(b"0123456789abcdef", &n, &back));
        assert!(!verify_server(b"0123456789abcdef", &n, &p));
    }
}
