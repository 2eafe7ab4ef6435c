//! A raw pass over tar headers, before the `tar` crate parses the archive.
//!
//! The `tar` crate reads PAX and GNU long-name/long-link meta entries fully into memory,
//! whatever their declared size; a crafted archive could make it allocate gigabytes.
//! This pass walks the 512-byte headers with seeks, checks the declared size of every
//! meta header against the limit before anything is buffered, and applies PAX `size`
//! overrides the same way the `tar` crate does so both passes agree on where entries are.

use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, IoContext, Result};
use crate::validate::Limits;

const BLOCK: u64 = 512;

/// Walks the headers of a tar stream. Leaves the reader at an unspecified position.
pub(crate) fn prescan<R: Read + Seek>(reader: &mut R, limits: &Limits) -> Result<()> {
    let mut pos: u64 = reader.stream_position().ctx(|| "tar: position".into())?;
    let mut pax_size: Option<u64> = None;
    let mut headers: usize = 0;
    let mut block = [0u8; BLOCK as usize];
    loop {
        reader
            .seek(SeekFrom::Start(pos))
            .ctx(|| format!("tar: seek to header at offset {pos}"))?;
        let n = read_full(reader, &mut block).ctx(|| format!("tar: header at offset {pos}"))?;
        if n == 0 {
            return Ok(());
        }
        if n < block.len() {
            return Err(Error::malformed(
                format!("<header at offset {pos}>"),
                "truncated tar header",
            ));
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        headers += 1;
        // Meta headers count too: four per real entry is generous.
        if headers > limits.max_entries.saturating_mul(4) {
            return Err(Error::limit(
                format!("<header at offset {pos}>"),
                format!("more than {} headers", limits.max_entries.saturating_mul(4)),
            ));
        }
        let name = header_name(&block);
        let typeflag = block[156];
        let declared = parse_numeric(&block[124..136])
            .ok_or_else(|| Error::malformed(&name, "unparseable size field"))?;
        // The tar crate parses sparse maps before we see the entry; refuse by name here.
        if typeflag == b'S' {
            return Err(Error::hostile(name, "GNU sparse file (unsupported)"));
        }
        let recognized = is_recognized(&block);
        let is_meta = matches!(typeflag, b'x' | b'g' | b'L' | b'K');
        let size = if is_meta {
            if declared > limits.max_meta_header {
                return Err(Error::limit(
                    format!("{name} (header at offset {pos})"),
                    format!(
                        "meta header of {declared} bytes, limit {}",
                        limits.max_meta_header
                    ),
                ));
            }
            if typeflag == b'x' && recognized {
                let mut buf = vec![0u8; declared as usize];
                reader
                    .read_exact(&mut buf)
                    .ctx(|| format!("tar: PAX header at offset {pos}"))?;
                pax_size = pax_size_of(&buf);
            }
            declared
        } else {
            pax_size.take().unwrap_or(declared)
        };
        let padded = size
            .checked_add(BLOCK - 1)
            .map(|s| s & !(BLOCK - 1))
            .ok_or_else(|| Error::malformed(&name, "size overflow"))?;
        pos = pos
            .checked_add(BLOCK)
            .and_then(|p| p.checked_add(padded))
            .ok_or_else(|| Error::malformed(&name, "size overflow"))?;
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Same test as the `tar` crate's `as_ustar()` / `as_gnu()`: only such headers have
/// their meta entries interpreted.
fn is_recognized(block: &[u8; 512]) -> bool {
    let magic = &block[257..263];
    let version = &block[263..265];
    (magic == b"ustar\0" && version == b"00") || (magic == b"ustar " && version == b" \0")
}

fn header_name(block: &[u8; 512]) -> String {
    let raw = &block[..100];
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Octal (NUL/space padded) or GNU base-256 numeric field.
pub(crate) fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

fn pax_size_of(buf: &[u8]) -> Option<u64> {
    let mut found = None;
    for ext in tar::PaxExtensions::new(buf).flatten() {
        if ext.key_bytes() == b"size" {
            found = ext.value().ok().and_then(|v| v.parse::<u64>().ok());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"00000001750\0"), Some(0o1750));
        assert_eq!(parse_numeric(b"     17 \0\0\0\0"), Some(0o17));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[10] = 0x01;
        b256[11] = 0x02;
        assert_eq!(parse_numeric(&b256), Some(0x0102));
        assert_eq!(parse_numeric(b"9999"), None);
    }
}
