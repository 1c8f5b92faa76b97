//! A small, explicitly specified random number generator for data order and augmentation.
//!
//! Runs must repeat exactly across machines and dependency upgrades, so the data layer does not
//! use a library RNG whose stream may change between versions. SplitMix64 (Steele, Lea and
//! Flood, OOPSLA 2014) is tiny, fast and passes BigCrush; every stream is derived from
//! `(seed, epoch, index)` so a resumed run draws the same numbers as an uninterrupted one.

/// SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for one item of one epoch of a run: streams of different `(seed, epoch,
    /// index)` triples are independent for practical purposes.
    pub fn for_item(seed: u64, epoch: u64, index: u64) -> Self {
        let mut g = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let a = g.next_u64() ^ epoch.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let mut g = SplitMix64::new(a);
        let b = g.next_u64() ^ index.wrapping_mul(0x94d0_49bb_1331_11eb);
        SplitMix64::new(b)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no valid result");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_stream() {
        // First outputs of SplitMix64 seeded with 1234567 (reference implementation by Vigna).
        let mut g = SplitMix64::new(1234567);
        assert_eq!(g.next_u64(), 6457827717110365317);
        assert_eq!(g.next_u64(), 3203168211198807973);
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|i| SplitMix64::for_item(7, 1, i).next_u64()).collect();
        let b: Vec<u64> = (0..4).map(|i| SplitMix64::for_item(7, 1, i).next_u64()).collect();
        assert_eq!(a, b);
        let c = SplitMix64::for_item(7, 2, 0).next_u64();
        assert!(!a.contains(&c));
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_is_uniform_enough() {
        let mut g = SplitMix64::new(3);
        let mut v: Vec<usize> = (0..100).collect();
        g.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[g.below(3) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}
