//! Recycled block buffers, shared as `Bytes` without a copy.
//!
//! The encoder hands each block it reads (and each block it compresses) to a hashing
//! thread and to its sink as reference-counted `Bytes`; when the last holder drops its
//! handle the buffer comes back here instead of to the allocator. Large allocations
//! that are freed and made again are not free on these machines: glibc maps them fresh,
//! and the first write into a fresh page stalls on the hypervisor (see
//! `docs/transfer.md`). Memory stays bounded by whoever holds the handles (bounded
//! channels), not by the pool: when none has come back, `take` allocates.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::Bytes;

pub(crate) struct BufferPool {
    home: SyncSender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    capacity: usize,
}

impl BufferPool {
    /// A pool of buffers with room for `capacity` bytes that keeps at most `keep` of
    /// them for reuse (extra returns are freed).
    pub(crate) fn new(capacity: usize, keep: usize) -> Self {
        let (home, free) = sync_channel(keep);
        BufferPool {
            home,
            free,
            capacity,
        }
    }

    /// A buffer with room for at least `capacity` bytes, holding whatever it held when
    /// it was last shared (callers `clear` or `resize` it): resizing a returned block
    /// to its old length writes nothing.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.capacity))
    }

    /// `buf` as `Bytes`; it returns to this pool when the last handle is dropped.
    pub(crate) fn share(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            home: self.home.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    home: SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A full pool (or one whose encoder is gone) just lets the buffer be freed.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_buffers_come_back_with_their_contents() {
        let pool = BufferPool::new(1024, 2);
        let mut a = pool.take();
        assert!(a.capacity() >= 1024);
        a.extend_from_slice(b"block one");
        let ptr = a.as_ptr();
        let shared = pool.share(a);
        let copy = shared.clone();
        assert_eq!(&copy[..], b"block one");
        drop(shared);
        // Still held by `copy`: a new buffer.
        let other = pool.take();
        assert_ne!(other.as_ptr(), ptr);
        drop(copy);
        let back = pool.take();
        assert_eq!(back.as_ptr(), ptr, "the same allocation is reused");
        assert_eq!(back, b"block one");
    }

    #[test]
    fn keeps_at_most_keep_buffers() {
        let pool = BufferPool::new(16, 1);
        let (a, b) = (pool.share(pool.take()), pool.share(pool.take()));
        drop(a);
        drop(b);
        pool.take();
        assert!(pool.free.try_recv().is_err());
    }
}
