//! Data-parallel training: the collectives against plain sums, failure handling, rendezvous
//! between threads and processes, and N workers training to the parameters of one.

mod collectives;
mod rendezvous;
mod training;
mod two_hosts;

#[path = "../common/tempdir.rs"]
mod tempdir;

use std::net::TcpListener;

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Deterministic pseudo-random f32s in [-1, 1) (a test's own oracle must not share Kiln's RNG).
pub fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
