//! The Direct transfer's framing (docs/transfer.md): the body of
//! `PUT /v1/direct/receive/{id}` is a sequence of frames, each a 7-byte header
//! (kind `u8`, layer `u16` big-endian, payload length `u32` big-endian) and its payload:
//!
//! - `DATA` (1): a piece of the layer's compressed blob, at most [`MAX_DATA`] bytes;
//! - `END` (2): the layer's descriptor as JSON, after its last `DATA`;
//! - `DONE` (3, layer 0): `{"layers": n}`, the last frame.
//!
//! Layers interleave. [`Decoder`] takes the body in whatever pieces it arrives and hands
//! `DATA` payloads on as slices of those pieces (no copy).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// `Content-Type` of the stream.
pub const CONTENT_TYPE: &str = "application/vnd.ms2m.direct.v1";
/// Path prefix of the receive route; the checkpoint id follows.
pub const ROUTE_PREFIX: &str = "/v1/direct/receive/";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 7;
/// Largest `END` / `DONE` payload (small JSON documents).
pub const MAX_META: u32 = 64 * 1024;
/// Largest `DATA` payload: a sender cuts its chunks below this; anything much larger is
/// not our sender.
pub const MAX_DATA: u32 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Data = 1,
    End = 2,
    Done = 3,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::End),
            3 => Some(FrameKind::Done),
            _ => None,
        }
    }
}

/// The `DONE` frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub layers: usize,
}

/// A frame header.
pub fn header(kind: FrameKind, layer: u16, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind as u8;
    h[1..3].copy_from_slice(&layer.to_be_bytes());
    h[3..7].copy_from_slice(&len.to_be_bytes());
    h
}

/// A whole frame. Panics on a payload over `u32::MAX` bytes, which no caller makes.
pub fn frame(kind: FrameKind, layer: u16, payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).expect("frame payloads are below 4 GiB");
    let mut b = BytesMut::with_capacity(HEADER_LEN + payload.len());
    b.put_slice(&header(kind, layer, len));
    b.extend_from_slice(payload);
    b.freeze()
}

/// The `END` frame of `layer` carrying `descriptor`.
pub fn end_frame<T: Serialize>(layer: u16, descriptor: &T) -> Bytes {
    frame(
        FrameKind::End,
        layer,
        &serde_json::to_vec(descriptor).expect("descriptors serialize"),
    )
}

/// The `DONE` frame of a stream of `layers` layers.
pub fn done_frame(layers: usize) -> Bytes {
    frame(
        FrameKind::Done,
        0,
        &serde_json::to_vec(&Done { layers }).expect("DONE serializes"),
    )
}

/// A stream that breaks the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds {limit}")]
    TooLong { len: u32, limit: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("data after DONE")]
    AfterDone,
    #[error("DONE: {0}")]
    BadDone(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream ended without DONE")]
    NoDone,
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A piece of `layer`'s blob (a frame's payload may come in several pieces; a
    /// zero-length `DATA` frame gives one empty piece).
    Data { layer: u16, piece: Bytes },
    /// `layer`'s `END` payload (its descriptor, JSON).
    End { layer: u16, payload: Bytes },
    /// The stream's `DONE`.
    Done(Done),
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Data {
        layer: u16,
        left: usize,
    },
    Meta {
        kind: FrameKind,
        layer: u16,
        len: usize,
    },
}

/// Incremental decoder: feed it the body's pieces with [`Decoder::next`], and call
/// [`Decoder::finish`] when the body ends.
#[derive(Debug)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    header_len: usize,
    meta: BytesMut,
    state: State,
    done: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            header: [0; HEADER_LEN],
            header_len: 0,
            meta: BytesMut::new(),
            state: State::Header,
            done: false,
        }
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next event from `data`, consuming what it used; `Ok(None)` when `data` is
    /// used up without completing one (feed the next piece).
    pub fn next(&mut self, data: &mut Bytes) -> Result<Option<Event>, WireError> {
        loop {
            match self.state {
                State::Header => {
                    if data.is_empty() {
                        return Ok(None);
                    }
                    let n = (HEADER_LEN - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                    data.advance(n);
                    self.header_len += n;
                    if self.header_len < HEADER_LEN {
                        return Ok(None);
                    }
                    self.header_len = 0;
                    let h = self.header;
                    let layer = u16::from_be_bytes([h[1], h[2]]);
                    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
                    let kind = FrameKind::from_u8(h[0]);
                    let limit = if kind == Some(FrameKind::Data) {
                        MAX_DATA
                    } else {
                        MAX_META
                    };
                    if len > limit {
                        return Err(WireError::TooLong { len, limit });
                    }
                    if self.done {
                        return Err(WireError::AfterDone);
                    }
                    let len = len as usize;
                    match kind {
                        Some(FrameKind::Data) if len == 0 => {
                            return Ok(Some(Event::Data {
                                layer,
                                piece: Bytes::new(),
                            }));
                        }
                        Some(FrameKind::Data) => self.state = State::Data { layer, left: len },
                        Some(kind) => self.state = State::Meta { kind, layer, len },
                        None => return Err(WireError::UnknownKind(h[0])),
                    }
                }
                State::Data { layer, left } => {
                    if data.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(data.len());
                    let piece = data.split_to(n);
                    self.state = if n == left {
                        State::Header
                    } else {
                        State::Data {
                            layer,
                            left: left - n,
                        }
                    };
                    return Ok(Some(Event::Data { layer, piece }));
                }
                State::Meta { kind, layer, len } => {
                    let n = (len - self.meta.len()).min(data.len());
                    self.meta.extend_from_slice(&data[..n]);
                    data.advance(n);
                    if self.meta.len() < len {
                        return Ok(None);
                    }
                    let payload = self.meta.split().freeze();
                    self.state = State::Header;
                    if kind == FrameKind::Done {
                        let d: Done = serde_json::from_slice(&payload)
                            .map_err(|e| WireError::BadDone(e.to_string()))?;
                        self.done = true;
                        return Ok(Some(Event::Done(d)));
                    }
                    return Ok(Some(Event::End { layer, payload }));
                }
            }
        }
    }

    /// The body ended: fine only between frames and after `DONE`.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.header_len != 0 || !matches!(self.state, State::Header) {
            return Err(WireError::Truncated);
        }
        if !self.done {
            return Err(WireError::NoDone);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&frame(FrameKind::Data, 1, b"hello "));
        s.extend_from_slice(&frame(FrameKind::Data, 0, b"abc"));
        s.extend_from_slice(&frame(FrameKind::Data, 1, b"world"));
        s.extend_from_slice(&frame(FrameKind::Data, 0, b""));
        s.extend_from_slice(&end_frame(0, &serde_json::json!({"d": 0})));
        s.extend_from_slice(&end_frame(1, &serde_json::json!({"d": 1})));
        s.extend_from_slice(&done_frame(2));
        s
    }

    fn decode(pieces: impl Iterator<Item = Vec<u8>>) -> Result<(Vec<Vec<u8>>, usize), WireError> {
        let mut d = Decoder::new();
        let mut layers = vec![Vec::new(); 2];
        let mut ends = 0;
        let mut done = None;
        for p in pieces {
            let mut p = Bytes::from(p);
            while let Some(e) = d.next(&mut p)? {
                match e {
                    Event::Data { layer, piece } => {
                        layers[layer as usize].extend_from_slice(&piece)
                    }
                    Event::End { .. } => ends += 1,
                    Event::Done(x) => done = Some(x),
                }
            }
        }
        d.finish()?;
        assert_eq!(done, Some(Done { layers: 2 }));
        Ok((layers, ends))
    }

    #[test]
    fn any_cut_of_the_stream_decodes_the_same() {
        let s = stream();
        for size in [1, 2, 6, 7, 8, 13, s.len()] {
            let (layers, ends) = decode(s.chunks(size).map(<[u8]>::to_vec)).unwrap();
            assert_eq!(
                layers,
                vec![b"abc".to_vec(), b"hello world".to_vec()],
                "{size}"
            );
            assert_eq!(ends, 2);
        }
    }

    #[test]
    fn the_header_is_kind_layer_length_big_endian() {
        assert_eq!(
            header(FrameKind::End, 0x0102, 0x0304_0506),
            [2, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            &frame(FrameKind::Data, 3, b"xy")[..],
            &[1, 0, 3, 0, 0, 0, 2, b'x', b'y']
        );
    }

    #[test]
    fn broken_streams_say_why() {
        let s = stream();
        let cut = s[..s.len() - 3].to_vec();
        assert_eq!(
            decode(std::iter::once(cut)).unwrap_err(),
            WireError::Truncated
        );
        let no_done = s[..s.len() - done_frame(2).len()].to_vec();
        let mut d = Decoder::new();
        let mut b = Bytes::from(no_done);
        while d.next(&mut b).unwrap().is_some() {}
        assert_eq!(d.finish().unwrap_err(), WireError::NoDone);
        let mut after = s.clone();
        after.extend_from_slice(&frame(FrameKind::Data, 0, b"x"));
        assert_eq!(
            decode(std::iter::once(after)).unwrap_err(),
            WireError::AfterDone
        );
        let mut bad = Bytes::from(vec![9, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Decoder::new().next(&mut bad).unwrap_err(),
            WireError::UnknownKind(9)
        );
        let mut big = Bytes::copy_from_slice(&header(FrameKind::End, 0, MAX_META + 1));
        assert!(matches!(
            Decoder::new().next(&mut big),
            Err(WireError::TooLong { .. })
        ));
    }
}
