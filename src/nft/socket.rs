//! The netlink socket to nf_tables: send a batch as one datagram and collect what the kernel
//! says about it; send dump requests and collect their replies.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::batch::{Batch, FinishedBatch};
use super::error::{KernelError, NftError};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Receive buffer for one `recv`: big enough for any dump message nf_tables sends.
const RECV_BUF: usize = 256 * 1024;

pub fn nft_msg_type(msg: i32) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg as u16
}

/// One netlink message of a reply.
pub struct Reply<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub raw: &'a [u8],
    pub payload: &'a [u8],
}

/// Splits a received buffer into messages.
pub fn parse_replies(buf: &[u8]) -> Result<Vec<Reply<'_>>, NftError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let u32_at = |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_ne_bytes(buf[at + o..at + o + 2].try_into().unwrap());
        let len = u32_at(0) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(NftError::Protocol(format!(
                "message of length {len} at offset {at} overruns a {}-byte datagram",
                buf.len()
            )));
        }
        out.push(Reply {
            ty: u16_at(4),
            flags: u16_at(6),
            seq: u32_at(8),
            raw: &buf[at..at + len],
            payload: &buf[at + NLMSG_HDRLEN..at + len],
        });
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

/// An NLMSG_ERROR payload: the errno (0 for an ack) and the extended ack message, if any.
pub fn parse_error(reply: &Reply<'_>) -> Result<(i32, Option<String>), NftError> {
    let p = reply.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(NftError::Protocol("short NLMSG_ERROR".into()));
    }
    let err = i32::from_ne_bytes(p[0..4].try_into().unwrap());
    let mut detail = None;
    if reply.flags & NLM_F_ACK_TLVS != 0 {
        // The TLVs follow the echoed request: only its header when capped, all of it otherwise.
        let echoed = if reply.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            u32::from_ne_bytes(p[4..8].try_into().unwrap()) as usize
        };
        let mut at = (4 + echoed).next_multiple_of(4);
        while at + 4 <= p.len() {
            let len = u16::from_ne_bytes(p[at..at + 2].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(p[at + 2..at + 4].try_into().unwrap());
            if len < 4 || at + len > p.len() {
                break;
            }
            if ty == NLMSGERR_ATTR_MSG {
                let v = &p[at + 4..at + len];
                let v = v.split(|&b| b == 0).next().unwrap_or(v);
                detail = Some(String::from_utf8_lossy(v).into_owned());
            }
            at += len.next_multiple_of(4);
        }
    }
    Ok((-err, detail))
}

/// A receive buffer aligned for `nlmsghdr`, as libmnl and libnftnl's parsers require.
struct RecvBuf(Vec<u32>);

impl RecvBuf {
    fn new() -> RecvBuf {
        RecvBuf(vec![0; RECV_BUF / 4])
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a u32 buffer viewed as its bytes; u8 has no alignment or validity needs.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 4) }
    }

    fn recv(&mut self, sock: &mnl::Socket) -> io::Result<usize> {
        // SAFETY: as in `bytes`, mutably; the slice lives only for this call.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 4) };
        sock.recv_raw(bytes)
    }
}

pub struct Socket {
    sock: mnl::Socket,
    seq: u32,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: fd is a live socket; the option value is a valid int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Socket {
    pub fn open() -> Result<Socket, NftError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Open)?;
        let fd = sock.as_raw_fd();
        // Errors come with the kernel's explanation, and acks don't echo whole requests.
        setsockopt_int(fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)
            .map_err(|e| NftError::io("enabling extended acks", e))?;
        setsockopt_int(fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)
            .map_err(|e| NftError::io("enabling capped acks", e))?;
        Ok(Socket {
            sock,
            seq: std::process::id().wrapping_mul(1 << 12),
        })
    }

    /// A new batch whose sequence numbers follow this socket's.
    pub fn batch(&mut self) -> Batch {
        Batch::new(self.seq)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sizes the socket buffers for a datagram of `send` bytes whose replies may be up to
    /// `replies` messages (an error for every message of a failing batch, in the worst case).
    fn size_buffers(&self, send: usize, replies: usize) -> Result<(), NftError> {
        let fd = self.sock.as_raw_fd();
        let snd = i32::try_from(send + (1 << 16)).unwrap_or(i32::MAX);
        let rcv = i32::try_from(replies * 128 + (4 << 20)).unwrap_or(i32::MAX);
        // The FORCE options need CAP_NET_ADMIN in the initial user namespace; inside a user
        // namespace fall back to the plain ones, capped by net.core.[rw]mem_max.
        for (force, plain, size, what) in [
            (
                libc::SO_SNDBUFFORCE,
                libc::SO_SNDBUF,
                snd,
                "sizing the send buffer",
            ),
            (
                libc::SO_RCVBUFFORCE,
                libc::SO_RCVBUF,
                rcv,
                "sizing the receive buffer",
            ),
        ] {
            if let Err(e) = setsockopt_int(fd, libc::SOL_SOCKET, force, size) {
                if e.raw_os_error() != Some(libc::EPERM) {
                    return Err(NftError::io(what, e));
                }
                setsockopt_int(fd, libc::SOL_SOCKET, plain, size)
                    .map_err(|e| NftError::io(what, e))?;
            }
        }
        Ok(())
    }

    /// Sends the batch as one datagram and waits until the kernel has answered all of it.
    /// Returns the ruleset generation after the commit.
    pub fn commit(&mut self, batch: FinishedBatch) -> Result<u32, NftError> {
        self.seq = batch.next_seq();
        self.size_buffers(batch.bytes().len(), batch.messages())?;
        self.sock
            .send(batch.bytes())
            .map_err(|e| NftError::io("sending the batch", e))?;
        // nfnetlink handles a batch inside sendmsg, so every error it has for the batch is
        // queued before the reply to a request we send afterwards: that reply marks the end.
        let (errors, generation) = self.sync_after(|seq| batch.purpose(seq).map(str::to_owned))?;
        if errors.is_empty() {
            Ok(generation)
        } else {
            Err(NftError::Rejected(errors))
        }
    }

    /// The ruleset's current generation: it moves with every commit to any table.
    pub fn generation(&mut self) -> Result<u32, NftError> {
        let (_, generation) = self.sync_after(|_| None)?;
        Ok(generation)
    }

    /// Sends NFT_MSG_GETGEN and reads until its answer, collecting errors for earlier messages.
    fn sync_after(
        &mut self,
        purpose: impl Fn(u32) -> Option<String>,
    ) -> Result<(Vec<KernelError>, u32), NftError> {
        let seq = self.next_seq();
        let mut req = Vec::with_capacity(20);
        req.extend_from_slice(&20u32.to_ne_bytes());
        req.extend_from_slice(&nft_msg_type(libc::NFT_MSG_GETGEN).to_ne_bytes());
        req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        self.sock
            .send(&req)
            .map_err(|e| NftError::io("asking for the ruleset generation", e))?;

        let mut errors: Vec<KernelError> = Vec::new();
        let mut buf = RecvBuf::new();
        loop {
            let n = buf
                .recv(&self.sock)
                .map_err(|e| NftError::io("reading the kernel's answer to the batch", e))?;
            for r in parse_replies(&buf.bytes()[..n])? {
                if r.ty == libc::NLMSG_ERROR as u16 {
                    let (errno, detail) = parse_error(&r)?;
                    if errno == 0 {
                        continue; // an ack
                    }
                    if r.seq == seq {
                        return Err(NftError::Protocol(format!(
                            "the kernel refused NFT_MSG_GETGEN: errno {errno}"
                        )));
                    }
                    // An error for a message not of this batch is a leftover of an earlier
                    // exchange that ended in an I/O error: not this batch's.
                    let Some(purpose) = purpose(r.seq) else {
                        continue;
                    };
                    let e = KernelError {
                        errno,
                        purpose,
                        detail,
                    };
                    // A batch replayed after a module load reports its errors twice.
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                } else if r.seq == seq && r.ty == nft_msg_type(libc::NFT_MSG_NEWGEN) {
                    let generation = gen_id(r.payload).unwrap_or(0);
                    return Ok((errors, generation));
                }
            }
        }
    }

    /// Sends one request (built by `build` into a scratch buffer with the given sequence
    /// number) and collects every reply message until the dump ends or the request is acked.
    pub fn request(
        &mut self,
        doing: &str,
        build: impl FnOnce(u32) -> Vec<u8>,
        mut each: impl FnMut(&Reply<'_>) -> Result<(), NftError>,
    ) -> Result<(), NftError> {
        let seq = self.next_seq();
        let req = build(seq);
        self.sock
            .send(&req)
            .map_err(|e| NftError::io(doing.to_string(), e))?;
        let mut buf = RecvBuf::new();
        loop {
            let n = buf
                .recv(&self.sock)
                .map_err(|e| NftError::io(doing.to_string(), e))?;
            for r in parse_replies(&buf.bytes()[..n])? {
                if r.seq != seq {
                    continue;
                }
                if r.ty == libc::NLMSG_DONE as u16 {
                    return Ok(());
                }
                if r.ty == libc::NLMSG_ERROR as u16 {
                    let (errno, detail) = parse_error(&r)?;
                    if errno == 0 {
                        return Ok(());
                    }
                    return Err(NftError::Rejected(vec![KernelError {
                        errno,
                        purpose: doing.to_string(),
                        detail,
                    }]));
                }
                each(&r)?;
            }
        }
    }
}

/// NFTA_GEN_ID from a NEWGEN message (after the 4-byte nfgenmsg header).
fn gen_id(payload: &[u8]) -> Option<u32> {
    let mut at = 4;
    while at + 4 <= payload.len() {
        let len = u16::from_ne_bytes(payload[at..at + 2].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(payload[at + 2..at + 4].try_into().ok()?) & 0x3fff;
        if len < 4 {
            return None;
        }
        if ty == 1 && len >= 8 {
            return Some(u32::from_be_bytes(payload[at + 4..at + 8].try_into().ok()?));
        }
        at += len.next_multiple_of(4);
    }
    None
}
