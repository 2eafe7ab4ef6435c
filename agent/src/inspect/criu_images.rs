//! A minimal decoder for the CRIU images `inspect` needs: the process tree
//! (`pstree.img`), task names (`core-<pid>.img`) and open files and inet sockets
//! (`files.img`).
//!
//! The messages below mirror the field numbers of CRIU's `images/*.proto` (proto2),
//! declared by hand with prost for only the fields used: unknown fields are skipped by
//! the decoder, so images from newer CRIU versions still decode. This avoids a
//! protoc build step and the blocking `rust-criu` crate (whose purpose is RPC, not
//! image reading); `criu crit` is not available on the nodes.
//!
//! Image file layout: a u32 magic (`IMG_COMMON_MAGIC` or `IMG_SERVICE_MAGIC` followed by
//! the image's own u32 magic, or the image magic alone in old images), then entries of
//! u32 little-endian length + protobuf message.

use prost::Message;

const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}: truncated image")]
    Truncated(String),
    #[error("{0}: {1}")]
    Decode(String, prost::DecodeError),
}

#[derive(Clone, PartialEq, Message)]
pub struct PstreeEntry {
    #[prost(uint32, optional, tag = "1")]
    pub pid: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub ppid: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub pgid: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub sid: Option<u32>,
    #[prost(uint32, repeated, tag = "5")]
    pub threads: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskCoreEntry {
    #[prost(string, optional, tag = "6")]
    pub comm: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CoreEntry {
    #[prost(message, optional, tag = "3")]
    pub tc: Option<TaskCoreEntry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RegFileEntry {
    #[prost(string, optional, tag = "6")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InetSkEntry {
    #[prost(uint32, optional, tag = "3")]
    pub family: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub sk_type: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    pub proto: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub state: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub src_port: Option<u32>,
    #[prost(uint32, optional, tag = "8")]
    pub dst_port: Option<u32>,
    #[prost(uint32, repeated, tag = "11")]
    pub src_addr: Vec<u32>,
    #[prost(uint32, repeated, tag = "12")]
    pub dst_addr: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FileEntry {
    #[prost(uint32, optional, tag = "1")]
    pub kind: Option<u32>,
    #[prost(message, optional, tag = "3")]
    pub reg: Option<RegFileEntry>,
    #[prost(message, optional, tag = "4")]
    pub isk: Option<InetSkEntry>,
}

/// Decode every entry of an image.
pub fn entries<M: Message + Default>(name: &str, data: &[u8]) -> Result<Vec<M>, ImageError> {
    let u32_at = |off: usize| -> Option<u32> {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut off = match u32_at(0) {
        Some(IMG_COMMON_MAGIC | IMG_SERVICE_MAGIC) => 8,
        Some(_) => 4,
        None => return Err(ImageError::Truncated(name.to_owned())),
    };
    let mut out = Vec::new();
    while off < data.len() {
        let len = u32_at(off).ok_or_else(|| ImageError::Truncated(name.to_owned()))? as usize;
        off += 4;
        let body = data
            .get(off..off + len)
            .ok_or_else(|| ImageError::Truncated(name.to_owned()))?;
        out.push(M::decode(body).map_err(|e| ImageError::Decode(name.to_owned(), e))?);
        off += len;
    }
    Ok(out)
}

pub fn tcp_state(s: u32) -> &'static str {
    match s {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        _ => "unknown",
    }
}

/// Addresses are stored as the kernel's `__be32` words read in host (little-endian) order.
pub fn addr(family: u32, words: &[u32], port: u32) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match (family, bytes.len()) {
        (2, n) if n >= 4 => format!(
            "{}:{port}",
            std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
        ),
        (10, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(a))
        }
        _ => format!("?:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_entries_after_both_magics() {
        let e = PstreeEntry {
            pid: Some(1),
            ppid: Some(0),
            pgid: Some(1),
            sid: Some(1),
            threads: vec![1],
        };
        let body = e.encode_to_vec();
        let mut img = Vec::new();
        img.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        img.extend_from_slice(&0x5010_7b2du32.to_le_bytes());
        img.extend_from_slice(&(body.len() as u32).to_le_bytes());
        img.extend_from_slice(&body);
        let got: Vec<PstreeEntry> = entries("pstree.img", &img).unwrap();
        assert_eq!(got, vec![e]);
        img.push(9);
        assert!(matches!(
            entries::<PstreeEntry>("pstree.img", &img),
            Err(ImageError::Truncated(_))
        ));
    }

    #[test]
    fn addresses_render() {
        // 10.0.0.1 as the kernel stores it, read as a little-endian u32.
        let w = u32::from_le_bytes([10, 0, 0, 1]);
        assert_eq!(addr(2, &[w], 5672), "10.0.0.1:5672");
    }
}
