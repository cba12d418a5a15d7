//! One nf_tables transaction as one contiguous buffer: BATCH_BEGIN, the messages, BATCH_END.
//!
//! natlb sends the whole buffer in one `sendmsg`, so the kernel applies all of it or none of it,
//! and remembers what each sequence number was for, to say which change a kernel error belongs to.

use std::ffi::c_void;
use std::os::raw::c_char;

use nftnl::{MsgType, NlMsg};
use nftnl_sys as sys;

pub struct Batch {
    buf: Vec<u8>,
    /// Scratch space for one message, as `u32`s so that headers are aligned.
    scratch: Vec<u32>,
    next_seq: u32,
    first_seq: u32,
    /// What natlb was doing with each message: message `i` has sequence number `first_seq + i`.
    purposes: Vec<String>,
    messages: usize,
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::new(),
            scratch: vec![0; (nftnl::nft_nlmsg_maxsize() as usize).div_ceil(4)],
            next_seq: first_seq,
            first_seq,
            purposes: Vec::new(),
            messages: 0,
        };
        let seq = b.take_seq();
        // SAFETY: scratch has room for any message; begin writes a fixed-size header.
        b.copy_out(|buf| unsafe {
            sys::nftnl_batch_begin(buf.cast::<c_char>(), seq);
        });
        b.purposes.push("starting the transaction".into());
        b
    }

    fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Runs `write` on the scratch buffer and appends the message it wrote.
    fn copy_out(&mut self, write: impl FnOnce(*mut c_void)) {
        self.scratch.fill(0);
        write(self.scratch.as_mut_ptr().cast());
        let len = self.scratch[0] as usize; // nlmsg_len, host order
        // SAFETY: scratch is a live buffer of at least `len` bytes (the message just written).
        let bytes = unsafe { std::slice::from_raw_parts(self.scratch.as_ptr().cast::<u8>(), len) };
        self.buf.extend_from_slice(bytes);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    /// Appends one message; `purpose` says what it does, for error reports.
    pub fn push(&mut self, msg: &impl NlMsg, ty: MsgType, purpose: impl Into<String>) {
        let seq = self.take_seq();
        // SAFETY: scratch has room for nft_nlmsg_maxsize bytes, as NlMsg::write requires.
        self.copy_out(|buf| unsafe { msg.write(buf, seq, ty) });
        self.purposes.push(purpose.into());
        self.messages += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    pub fn purpose(&self, seq: u32) -> Option<&str> {
        self.purposes
            .get(seq.wrapping_sub(self.first_seq) as usize)
            .map(String::as_str)
    }

    /// Closes the batch: the bytes to send, and the next free sequence number.
    pub fn finish(mut self) -> FinishedBatch {
        let seq = self.take_seq();
        // SAFETY: as in `new`.
        self.copy_out(|buf| unsafe {
            sys::nftnl_batch_end(buf.cast::<c_char>(), seq);
        });
        self.purposes.push("committing the transaction".into());
        FinishedBatch { batch: self }
    }
}

pub struct FinishedBatch {
    batch: Batch,
}

impl FinishedBatch {
    pub fn bytes(&self) -> &[u8] {
        &self.batch.buf
    }

    pub fn next_seq(&self) -> u32 {
        self.batch.next_seq
    }

    pub fn purpose(&self, seq: u32) -> Option<&str> {
        self.batch.purpose(seq)
    }

    pub fn messages(&self) -> usize {
        self.batch.messages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::encode::TableMsg;

    #[test]
    fn messages_are_framed_and_named_by_sequence_number() {
        // Start just below the wrap of the sequence space: purposes must still be found.
        let first = u32::MAX - 1;
        let mut b = Batch::new(first);
        let t = TableMsg::new("natlb", Some("c"));
        b.push(&t, MsgType::Add, "creating table inet natlb");
        b.push(&t, MsgType::Del, "deleting table inet natlb");
        let f = b.finish();
        assert_eq!(f.messages(), 2);
        assert_eq!(f.purpose(first), Some("starting the transaction"));
        assert_eq!(
            f.purpose(first.wrapping_add(1)),
            Some("creating table inet natlb")
        );
        assert_eq!(f.purpose(0), Some("deleting table inet natlb"));
        assert_eq!(f.purpose(1), Some("committing the transaction"));
        assert_eq!(f.purpose(2), None);
        assert_eq!(f.next_seq(), 2);
        // Four netlink messages back to back, each 4-byte aligned, lengths adding up.
        let bytes = f.bytes();
        let mut at = 0;
        let mut seqs = vec![];
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            seqs.push(u32::from_ne_bytes(
                bytes[at + 8..at + 12].try_into().unwrap(),
            ));
            at += len.next_multiple_of(4);
        }
        assert_eq!(at, bytes.len());
        assert_eq!(seqs, vec![first, u32::MAX, 0, 1]);
    }
}
