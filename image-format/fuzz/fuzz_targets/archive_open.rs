//! The archive parser on arbitrary bytes: only errors, never panics or runaway memory.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use ms2m_image_format::{Limits, scan_tar};

fuzz_target!(|data: &[u8]| {
    let _ = scan_tar(&mut Cursor::new(data), &Limits::default());
});
