//! Request ids (`x-request-id`): the caller's is kept when it is usable, else a fresh one is
//! made. The server and the tower layer of `keyauth-client` follow the same rules.

/// The header that carries a request id, both ways.
pub const HEADER: &str = "x-request-id";

/// The longest request id kept.
pub const MAX_LEN: usize = 128;

/// Characters of a fresh request id.
pub const FRESH_LEN: usize = 20;
/// Of which the process's random prefix (62^9 ≈ 2^53.6).
const FRESH_PREFIX: usize = 9;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether a presented request id is kept: 1 to [`MAX_LEN`] visible ASCII characters.
pub fn is_usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(u8::is_ascii_graphic)
}

/// The request id of a call: `presented` when it is usable, else a fresh one.
pub fn or_fresh(presented: Option<&str>) -> String {
    presented
        .filter(|v| is_usable(v.as_bytes()))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&fresh()).into_owned())
}

/// A fresh request id: [`FRESH_LEN`] base62 characters, unique, not secret (ids correlate log
/// lines, audit records and answers). Nine characters are drawn at random once per process, so
/// that ids of different processes do not collide; the other eleven are this process's call
/// counter passed through a bijection of 64-bit integers (a random key, an odd multiplier), so
/// that they are unique within the process without looking sequential. No system call, no
/// lock, no allocation.
pub fn fresh() -> [u8; FRESH_LEN] {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Seed {
        prefix: [u8; FRESH_PREFIX],
        key: u64,
    }
    static SEED: OnceLock<Seed> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let random = keyauth_contract::unique_base62(FRESH_PREFIX + 11);
        let bytes = random.as_bytes();
        let mut prefix = [0u8; FRESH_PREFIX];
        prefix.copy_from_slice(&bytes[..FRESH_PREFIX]);
        let key = bytes[FRESH_PREFIX..]
            .iter()
            .fold(0u64, |k, &b| k.wrapping_mul(62).wrapping_add(u64::from(b)));
        Seed { prefix, key }
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Both steps are bijections of u64: distinct counters give distinct values.
    let mut x = (n ^ seed.key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut id = [0u8; FRESH_LEN];
    id[..FRESH_PREFIX].copy_from_slice(&seed.prefix);
    // 62^11 > 2^64: eleven digits hold any u64.
    for slot in id[FRESH_PREFIX..].iter_mut().rev() {
        *slot = BASE62[(x % 62) as usize];
        x /= 62;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fresh_ids_are_unique_base62_with_one_prefix_per_process() {
        let ids: HashSet<[u8; FRESH_LEN]> = (0..100_000).map(|_| fresh()).collect();
        assert_eq!(ids.len(), 100_000);
        for id in ids.iter().take(100) {
            assert!(id.iter().all(u8::is_ascii_alphanumeric), "{id:?}");
            assert_eq!(id[..FRESH_PREFIX], fresh()[..FRESH_PREFIX]);
        }
    }

    #[test]
    fn a_usable_id_is_kept_and_another_replaced() {
        assert_eq!(or_fresh(Some("req-1")), "req-1");
        assert_eq!(or_fresh(None).len(), FRESH_LEN);
        for unusable in ["", "two words", "é", &"x".repeat(MAX_LEN + 1)] {
            assert_eq!(or_fresh(Some(unusable)).len(), FRESH_LEN, "{unusable:?}");
        }
        assert_eq!(or_fresh(Some(&"x".repeat(MAX_LEN))).len(), MAX_LEN);
    }
}
