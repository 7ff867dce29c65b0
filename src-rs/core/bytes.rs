//! Bytes to send that may lie in memory another agent can change.

/// Bytes to send. Only the kernel reads them (`sendmsg` copies them out), or one copy
/// when the send has to wait, so they may lie in memory another agent can change: a
/// JavaScript view, which may alias a region, is passed this way without ever forming a
/// `&[u8]` over it.
#[derive(Debug, Clone, Copy)]
pub struct Bytes<'a> {
    ptr: *const u8,
    len: usize,
    _borrow: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Bytes<'a> {
    /// Bytes that no Rust reference covers.
    ///
    /// # Safety
    /// - `ptr` must be valid for reads of `len` bytes for as long as the returned value
    ///   is used (the call it is passed to).
    /// - Other agents may write the bytes meanwhile; the receiver then gets some mix of
    ///   old and new bytes, as with any memory shared between processes.
    pub unsafe fn from_raw(ptr: *const u8, len: usize) -> Bytes<'a> {
        Bytes {
            ptr,
            len,
            _borrow: std::marker::PhantomData,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    pub(crate) fn to_vec(self) -> Vec<u8> {
        let mut copy = vec![0u8; self.len];
        // SAFETY: `ptr` is valid for `len` reads (the constructor's contract) and `copy`
        // is a separate allocation of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, copy.as_mut_ptr(), self.len) };
        copy
    }
}

impl<'a> From<&'a [u8]> for Bytes<'a> {
    fn from(slice: &'a [u8]) -> Self {
        // SAFETY: a slice is valid for reads of its length while it is borrowed.
        unsafe { Bytes::from_raw(slice.as_ptr(), slice.len()) }
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Bytes<'a> {
    fn from(array: &'a [u8; N]) -> Self {
        Bytes::from(&array[..])
    }
}

impl<'a> From<&'a crate::payload::Payload> for Bytes<'a> {
    fn from(payload: &'a crate::payload::Payload) -> Bytes<'a> {
        Bytes::from(&payload[..])
    }
}

impl<'a> From<&'a Vec<u8>> for Bytes<'a> {
    fn from(vec: &'a Vec<u8>) -> Self {
        Bytes::from(vec.as_slice())
    }
}
