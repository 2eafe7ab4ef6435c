//! The encoder's memory does not grow with the archive: a 1 GiB (sparse) page image is
//! encoded while the process's peak RSS is watched. Its own test binary, so no other
//! test's allocations share the high-water mark.

use std::fs::{self, File};
use std::io::{self, Write};

use ms2m_image_format::{Archive, Compression, encode_layer, plan_layers};

/// Peak resident set size of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

struct Counting(u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn encoding_a_gigabyte_keeps_memory_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = tmp.path().join("checkpoint");
    fs::create_dir_all(&cp).unwrap();
    let size: u64 = 1 << 30;
    File::create(cp.join("pages-1.img"))
        .unwrap()
        .set_len(size)
        .unwrap();
    fs::write(cp.join("inventory.img"), b"inv").unwrap();
    let archive = Archive::open(tmp.path()).unwrap();
    let plan = plan_layers(&archive, 1).remove(0);

    let before = peak_rss_kib();
    for compression in [Compression::default(), Compression::None] {
        let mut sink = Counting(0);
        let d = encode_layer(&archive, &plan, &compression, &mut sink).unwrap();
        assert_eq!(d.size, sink.0);
        assert!(d.uncompressed_size > size, "{d:?}");
    }
    let grown = peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB while encoding 1 GiB twice");
    // 1 MiB copy buffer + up to 10 MiB of hash chunks + libzstd's level-1 state: tens of
    // MiB at most, against a 1 GiB input.
    assert!(
        grown < 64 * 1024,
        "peak RSS grew by {grown} KiB while encoding 1 GiB"
    );
}
