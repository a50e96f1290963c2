//! Benchmark harness for `driver bench` (DESIGN §9), built up in parts:
//! [`histogram`] records latencies with ~1% precision, [`json`] writes results,
//! [`floors`] measures what this machine can do at best, [`proc_stat`] reads
//! CPU time and memory from `/proc`; [`workload`] runs closed-loop clients,
//! [`pipeline`] bulk-loads keys, [`failover`] times leader kills and
//! [`memory`] measures RSS and restart time with a large store.

pub mod failover;
pub mod floors;
pub mod histogram;
pub mod json;
pub mod memory;
pub mod pipeline;
pub mod proc_stat;
pub mod workload;

/// xorshift64*: a small, fast, seedable generator for picking keys. Not for
/// anything that needs good randomness.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift must not start at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x2545_f491_4f6c_dd1d } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0; the modulo bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }
}
