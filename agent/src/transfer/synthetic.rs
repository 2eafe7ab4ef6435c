//! Synthetic checkpoints for benchmarks: the CRI-O layout with one dominant
//! `checkpoint/pages-1.img` made of alternating 64 KiB random and 64 KiB zero blocks
//! (zstd ratio ≈ 0.5, like a real heap), seeded from the clock so two runs never
//! deduplicate in a registry.

use std::io::{self, Write};
use std::path::Path;

const BLOCK: usize = 64 * 1024;

/// SplitMix64: fast enough (several GB/s) that generating is never the bottleneck.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Writes `size` bytes of alternating random / zero 64 KiB blocks.
pub fn write_pages(w: &mut impl Write, size: u64, seed: u64) -> io::Result<()> {
    let mut rng = SplitMix(seed);
    let mut block = vec![0u8; BLOCK];
    let zeros = vec![0u8; BLOCK];
    let mut left = size;
    let mut random = true;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        if random {
            rng.fill(&mut block[..n]);
            w.write_all(&block[..n])?;
        } else {
            w.write_all(&zeros[..n])?;
        }
        random = !random;
        left -= n as u64;
    }
    Ok(())
}

/// Creates a checkpoint directory at `dir` whose memory image is `size` bytes.
pub fn write_checkpoint(dir: &Path, container: &str, size: u64) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("checkpoint"))?;
    let config = serde_json::json!({
        "id": format!("{container}-0123456789abcdef"),
        "name": container,
        "rootfsImage": "docker.io/library/busybox:latest",
        "rootfsImageName": "docker.io/library/busybox:latest",
        "runtime": "runc",
        "createdTime": "2026-11-28T00:00:00Z",
    });
    std::fs::write(dir.join("config.dump"), config.to_string())?;
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": {
            "io.container.manager": "cri-o",
            "io.kubernetes.cri.container-name": container,
            "io.kubernetes.pod.name": format!("{container}-pod"),
            "io.kubernetes.pod.namespace": "default",
        },
    });
    std::fs::write(dir.join("spec.dump"), spec.to_string())?;
    std::fs::write(dir.join("dump.log"), "Version: 4.2.1\n")?;
    let seed = nonce();
    let mut small = Vec::new();
    write_pages(&mut small, 96 * 1024, seed ^ 0xC0FE)?;
    std::fs::write(dir.join("checkpoint/pages-2.img"), &small)?;
    std::fs::write(dir.join("checkpoint/core-1.img"), &small[..8192])?;
    std::fs::write(
        dir.join("checkpoint/inventory.img"),
        b"ms2m synthetic inventory",
    )?;
    let f = std::fs::File::create(dir.join("checkpoint/pages-1.img"))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    write_pages(&mut w, size, seed)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_alternate_random_and_zero_blocks_and_differ_per_seed() {
        let mut a = Vec::new();
        write_pages(&mut a, (BLOCK * 3 + 10) as u64, 1).unwrap();
        assert_eq!(a.len(), BLOCK * 3 + 10);
        assert!(a[BLOCK..2 * BLOCK].iter().all(|b| *b == 0));
        assert!(a[..BLOCK].iter().filter(|b| **b == 0).count() < BLOCK / 64);
        let mut b = Vec::new();
        write_pages(&mut b, (BLOCK * 3 + 10) as u64, 2).unwrap();
        assert_ne!(a, b);
    }
}
