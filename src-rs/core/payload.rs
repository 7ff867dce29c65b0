//! Received payloads: bytes this process owns, copied out of the socket once.
//!
//! `recvmsg(2)` copies a record into a receive buffer. A small payload is then copied
//! into a vector of its own size (a few bytes cost less to copy than to keep a 64 KiB
//! buffer for). A large one keeps the receive buffer it arrived in: the endpoint takes a
//! fresh buffer for the next record, and the payload's buffer goes back to a small
//! recycling list when the payload is dropped, so a stream of large messages allocates
//! (and page-faults) nothing after the first few. A binding can hand that buffer to its
//! runtime as is (`into_parts`), so the kernel's copy is the only one.

use std::ops::{Deref, Range};
use std::sync::{Arc, Mutex};

/// Payloads at least this long keep the receive buffer they arrived in; shorter ones
/// are copied out of it. At this size the buffer is at most about twice the payload.
pub(crate) const KEEP_BUFFER_AT: usize = 32 * 1024;

/// How many spare receive buffers a connection keeps for reuse.
const SPARE_BUFFERS: usize = 4;

/// The receive buffers of one connection that are not in use, for reuse.
#[derive(Debug, Clone)]
pub(crate) struct Spares {
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
    len: usize,
}

impl Spares {
    /// Spares for receive buffers of `len` bytes.
    pub(crate) fn new(len: usize) -> Spares {
        Spares {
            buffers: Arc::default(),
            len,
        }
    }

    /// An empty receive buffer with room for `len` bytes: a spare one, or a new one.
    /// Its memory is not zeroed: the kernel writes it and the record's length says how
    /// much ([`crate::sys::recv_record`]).
    pub(crate) fn take(&self) -> Vec<u8> {
        let spare = self
            .buffers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        spare.unwrap_or_else(|| Vec::with_capacity(self.len))
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() < self.len {
            return;
        }
        buffer.clear();
        let mut spares = self
            .buffers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if spares.len() < SPARE_BUFFERS {
            spares.push(buffer);
        }
    }
}

/// The inline payload of a received message.
///
/// Dereferences to the bytes. It may lie inside the larger buffer the record was
/// received into ([`Payload::into_parts`]); [`Payload::into_vec`] gives a vector of its
/// own.
pub struct Payload {
    buffer: Vec<u8>,
    range: Range<usize>,
    spares: Option<Spares>,
}

impl Payload {
    /// The payload at `range` of the receive buffer `buffer`, which goes back to
    /// `spares` when the payload is dropped.
    pub(crate) fn within(buffer: Vec<u8>, range: Range<usize>, spares: Spares) -> Payload {
        debug_assert!(range.end <= buffer.len());
        Payload {
            buffer,
            range,
            spares: Some(spares),
        }
    }

    /// The payload at `range` of `buffer`, which it owns.
    pub(crate) fn owned(buffer: Vec<u8>, range: Range<usize>) -> Payload {
        debug_assert!(range.end <= buffer.len());
        Payload {
            buffer,
            range,
            spares: None,
        }
    }

    /// The bytes, in a vector of their own (no copy when the payload has one already).
    pub fn into_vec(mut self) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.buffer);
        if self.range.start == 0 && self.range.end == buffer.len() {
            return buffer;
        }
        if self.spares.is_some() {
            let bytes = buffer[self.range.clone()].to_vec();
            self.buffer = buffer;
            return bytes;
        }
        buffer.truncate(self.range.end);
        buffer.drain(..self.range.start);
        buffer
    }

    /// The buffer the payload lies in and where: for a binding that hands the buffer to
    /// its runtime without copying the payload.
    pub fn into_parts(mut self) -> (Vec<u8>, Range<usize>) {
        self.spares = None;
        (std::mem::take(&mut self.buffer), self.range.clone())
    }

    /// The memory the payload holds, including the rest of the buffer it lies in.
    pub fn footprint(&self) -> usize {
        self.buffer.capacity()
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if let Some(spares) = self.spares.take() {
            spares.give_back(std::mem::take(&mut self.buffer));
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(buffer: Vec<u8>) -> Payload {
        Payload {
            range: 0..buffer.len(),
            buffer,
            spares: None,
        }
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::from(Vec::new())
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buffer[self.range.clone()]
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload").field("len", &self.len()).finish()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl PartialEq<[u8]> for Payload {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for Payload {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Payload {
    fn eq(&self, other: &[u8; N]) -> bool {
        **self == other[..]
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Payload {
    fn eq(&self, other: &&[u8; N]) -> bool {
        **self == other[..]
    }
}

impl PartialEq<Vec<u8>> for Payload {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_buffer_goes_back_for_reuse_and_copies_out_on_request() {
        let spares = Spares::new(64);
        let mut buffer = spares.take();
        assert!(buffer.is_empty() && buffer.capacity() >= 64);
        buffer.extend_from_slice(b"header: hello");
        let address = buffer.as_ptr();
        let payload = Payload::within(buffer, 8..13, spares.clone());
        assert_eq!(payload, b"hello");
        assert_eq!(payload.footprint(), 64);
        drop(payload);
        let reused = spares.take();
        assert_eq!(reused.as_ptr(), address, "the buffer was reused");
        assert!(
            reused.is_empty(),
            "a reused buffer holds nothing of its last record"
        );
        let payload = Payload::within(b"header: hello".to_vec(), 8..13, spares.clone());
        assert_eq!(payload.into_vec(), b"hello");
    }

    #[test]
    fn parts_leave_the_spares_alone() {
        let spares = Spares::new(16);
        let mut buffer = spares.take();
        buffer.extend_from_slice(b"abcd");
        let payload = Payload::within(buffer, 2..4, spares.clone());
        let (buffer, range) = payload.into_parts();
        assert_eq!((&buffer[range], buffer.capacity()), (b"cd".as_slice(), 16));
        let again = spares.take();
        assert_ne!(again.as_ptr(), buffer.as_ptr());
    }

    #[test]
    fn an_owned_payload_converts_without_copying() {
        let bytes = b"abc".to_vec();
        let address = bytes.as_ptr();
        let payload = Payload::from(bytes);
        let bytes = payload.into_vec();
        assert_eq!(bytes.as_ptr(), address);
    }
}
