//! Quorum arithmetic (DESIGN §2, §3.1): every quorum is counted out of all N
//! replicas; learners never count.

/// The smallest majority of `n`: promises and leader liveness need this many.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Default write quorum NW for `n` replicas (a majority).
pub fn default_write_quorum(n: usize) -> usize {
    majority(n)
}

/// Default read quorum NR for `n` replicas and write quorum `nw`: the smallest
/// NR with NR + NW > N.
pub fn default_read_quorum(n: usize, nw: usize) -> usize {
    n - nw + 1
}

/// True when `nw` and `nr` are a safe pair for `n` replicas: NW is a majority
/// (two write quorums always meet) and every read quorum meets every write quorum.
pub fn is_valid(n: usize, nw: usize, nr: usize) -> bool {
    nw * 2 > n && nr + nw > n && nw <= n && nr <= n && nr >= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_quorums_always_intersect() {
        // (n, majority, nw, nr)
        let cases =
            [(1, 1, 1, 1), (2, 2, 2, 1), (3, 2, 2, 2), (4, 3, 3, 2), (5, 3, 3, 3), (7, 4, 4, 4)];
        for (n, maj, nw, nr) in cases {
            assert_eq!(majority(n), maj, "majority({n})");
            assert_eq!(default_write_quorum(n), nw, "nw({n})");
            assert_eq!(default_read_quorum(n, nw), nr, "nr({n})");
            assert!(is_valid(n, nw, nr));
        }
    }

    #[test]
    fn unsafe_quorum_pairs_are_rejected() {
        assert!(!is_valid(3, 1, 3), "NW must be a majority");
        assert!(!is_valid(3, 2, 1), "NR+NW must exceed N");
        assert!(!is_valid(4, 2, 3), "NW=2 of 4 is not a majority");
        assert!(!is_valid(3, 4, 1), "NW above N");
        assert!(is_valid(5, 4, 2));
    }
}
