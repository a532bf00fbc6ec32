//! A bounded reader over untrusted bytes. Every read checks what remains, so
//! decoding never panics and never allocates more than the input could fill.

use crate::error::InvalidMessage;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], InvalidMessage> {
        if n > self.buf.len() {
            return Err(InvalidMessage::Truncated {
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], InvalidMessage> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, InvalidMessage> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, InvalidMessage> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A `u32` count of items of `item_size` bytes each, checked against
    /// `max` and against the bytes actually present before anyone allocates.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        item_size: usize,
        max: usize,
    ) -> Result<usize, InvalidMessage> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(InvalidMessage::TooLong {
                what,
                len: n as u64,
                max: max as u64,
            });
        }
        let needed = n.saturating_mul(item_size);
        if needed > self.buf.len() {
            return Err(InvalidMessage::Truncated {
                needed,
                remaining: self.buf.len(),
            });
        }
        Ok(n)
    }

    pub(crate) fn expect_empty(&self, what: &'static str) -> Result<(), InvalidMessage> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(InvalidMessage::TrailingBytes {
                what,
                count: self.buf.len(),
            })
        }
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_count(out: &mut Vec<u8>, n: usize) {
    put_u32(
        out,
        u32::try_from(n).expect("list lengths are bounded by MAX_PARTIES"),
    );
}
