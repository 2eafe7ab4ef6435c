//! Emulated large state: memory that is really written, so CRIU dumps every page.

/// `mib` MiB of pseudo-random bytes (xorshift; incompressible like real state).
pub struct Ballast {
    bytes: Vec<u8>,
}

impl Ballast {
    pub fn new(mib: u64) -> Self {
        let len = (mib as usize) << 20;
        let mut bytes = vec![0u8; len];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in bytes.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        Self { bytes }
    }

    /// FNV-1a over one byte per 4 KiB page plus the last byte: cheap, and it reads
    /// every page, so a restore that lost pages shows up as a different checksum.
    pub fn checksum(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |b: u8| {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        };
        self.bytes.iter().step_by(4096).for_each(|b| feed(*b));
        if let Some(b) = self.bytes.last() {
            feed(*b);
        }
        h
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballast_is_written_and_deterministic() {
        let a = Ballast::new(2);
        assert_eq!(a.len(), 2 << 20);
        assert!(
            a.bytes
                .chunks(4096)
                .all(|page| page.iter().any(|b| *b != 0))
        );
        assert_eq!(a.checksum(), Ballast::new(2).checksum());
        assert!(Ballast::new(0).is_empty());
    }
}
