//! A 256-bit APIC vector register (IRR, ISR, TMR) with a summary of its
//! non-empty 32-bit words, so that "anything set?" and "highest set" (asked
//! before every guest entry) are one test and one bit scan. The words are
//! private: [`Bits256::set`] and [`Bits256::clear`] are the only writers,
//! and each keeps the summary exact.

/// A 256-bit vector register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Bits256 {
    words: [u32; 8],
    /// Bit `i` set exactly when `words[i] != 0`.
    nonempty: u8,
}

impl Bits256 {
    /// Sets vector `v`.
    pub(super) fn set(&mut self, v: u8) {
        let i = usize::from(v >> 5);
        self.words[i] |= 1 << (v & 31);
        self.nonempty |= 1 << i;
    }

    /// Clears vector `v`.
    pub(super) fn clear(&mut self, v: u8) {
        let i = usize::from(v >> 5);
        self.words[i] &= !(1 << (v & 31));
        if self.words[i] == 0 {
            self.nonempty &= !(1 << i);
        }
    }

    /// Whether no vector is set.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.nonempty == 0
    }

    /// The highest vector set.
    #[inline]
    pub(super) fn highest(&self) -> Option<u8> {
        if self.nonempty == 0 {
            return None;
        }
        let i = 7 - self.nonempty.leading_zeros() as usize;
        Some((i as u32 * 32 + 31 - self.words[i].leading_zeros()) as u8)
    }

    /// 32-bit word `i` (vectors 32i..32i+31), as the register page shows it.
    pub(super) fn word(&self, i: usize) -> u32 {
        self.words[i]
    }
}

#[cfg(test)]
mod tests {
    use super::Bits256;

    /// The highest set vector by a plain scan of the words.
    fn scan(b: &Bits256) -> Option<u8> {
        (0..=255u8)
            .rev()
            .find(|&v| b.word(usize::from(v >> 5)) & (1 << (v & 31)) != 0)
    }

    #[test]
    fn summary_follows_every_set_and_clear() {
        // A fixed pseudo-random walk of sets and clears over few words, so
        // words empty and fill again often.
        let mut b = Bits256::default();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = [3u8, 31, 32, 63, 100, 127, 128, 200, 224, 255][(x % 10) as usize];
            if x & 0x100 != 0 {
                b.set(v);
            } else {
                b.clear(v);
            }
            assert_eq!(b.highest(), scan(&b));
            assert_eq!(b.is_empty(), scan(&b).is_none());
            for i in 0..8 {
                assert_eq!(b.nonempty & (1 << i) != 0, b.word(i) != 0, "word {i}");
            }
        }
    }

    #[test]
    fn highest_across_words() {
        let mut b = Bits256::default();
        assert_eq!(b.highest(), None);
        b.set(0x20);
        b.set(0x31);
        assert_eq!(b.highest(), Some(0x31));
        b.set(0xFF);
        assert_eq!(b.highest(), Some(0xFF));
        b.clear(0xFF);
        assert_eq!(b.highest(), Some(0x31));
        b.clear(0x31);
        b.clear(0x20);
        assert!(b.is_empty());
    }
}
