//! Which record ids a scan of the journal has (probably) met already, in two to four bytes
//! per record: a Bloom filter that adds a level twice as large whenever the last one is
//! full, so it needs no count up front. It never forgets an id. It wrongly claims an unseen
//! one with a probability of about 0.05% per full level (16 bits and 11 probes per id);
//! the levels add up, to under 0.5% for ten million records. A wrong claim
//! only costs the caller a closer look.

use uuid::Uuid;

const BITS_PER_ID: usize = 16;
const PROBES: u64 = 11;
const FIRST_LEVEL_IDS: usize = 1 << 14;

struct Level {
    bits: Vec<u64>,
    capacity: usize,
    len: usize,
}

impl Level {
    fn new(capacity: usize) -> Self {
        Self {
            bits: vec![0; (capacity * BITS_PER_ID).div_ceil(64)],
            capacity,
            len: 0,
        }
    }

    fn contains(&self, h: (u64, u64)) -> bool {
        probes(self.bits.len(), h).all(|(w, mask)| self.bits[w] & mask != 0)
    }

    fn insert(&mut self, h: (u64, u64)) {
        for (w, mask) in probes(self.bits.len(), h) {
            self.bits[w] |= mask;
        }
        self.len += 1;
    }
}

/// The word and bit of each probe into `words` 64-bit words.
fn probes(words: usize, (h1, h2): (u64, u64)) -> impl Iterator<Item = (usize, u64)> {
    let m = (words * 64) as u64;
    (0..PROBES).map(move |i| {
        let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    })
}

/// SplitMix64's finaliser: ids made by tests (or by a clock) differ in few bits, and the
/// probes need all 64 to vary.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hashes(id: Uuid) -> (u64, u64) {
    let (hi, lo) = id.as_u64_pair();
    let h1 = mix(lo ^ mix(hi));
    (h1, mix(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1)
}

pub struct SeenIds {
    levels: Vec<Level>,
}

impl SeenIds {
    pub fn new() -> Self {
        Self {
            levels: vec![Level::new(FIRST_LEVEL_IDS)],
        }
    }

    /// Records `id`; false when it was (probably) recorded before.
    pub fn insert(&mut self, id: Uuid) -> bool {
        let h = hashes(id);
        if self.levels.iter().any(|l| l.contains(h)) {
            return false;
        }
        let last = self.levels.len() - 1;
        if self.levels[last].len >= self.levels[last].capacity {
            let capacity = self.levels[last].capacity * 2;
            self.levels.push(Level::new(capacity));
        }
        if let Some(level) = self.levels.last_mut() {
            level.insert(h);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_repeat_is_caught_and_few_new_ids_are_taken_for_repeats() {
        let mut seen = SeenIds::new();
        let n = 200_000u128;
        let wrongly_claimed = (0..n).filter(|i| !seen.insert(Uuid::from_u128(*i))).count();
        assert!(
            seen.levels.len() > 1,
            "the filter grew past its first level"
        );
        assert!(
            wrongly_claimed < (n / 1000) as usize,
            "{wrongly_claimed} of {n} new ids were taken for repeats"
        );
        for i in (0..n).step_by(7) {
            assert!(!seen.insert(Uuid::from_u128(i)), "id {i} was forgotten");
        }
    }
}
