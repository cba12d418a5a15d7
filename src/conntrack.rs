//! Conntrack, through ctnetlink by hand (no crate covers it with deletes):
//!
//! - deleting the connections NATed to a withdrawn backend, for `on_backend_down = "reset"`: dump
//!   the entries of the VIP's family, keep those whose original destination is the VIP and whose
//!   reply source is the backend, and delete each by its original tuple, copied verbatim from
//!   the dump. A deleted UDP flow's next datagram is a new connection and goes to a backend that
//!   is up; a TCP client whose entry is gone gets a reset and reconnects;
//! - counting each backend's live connections, for `least-conn`: one dump per family.

use std::net::{IpAddr, SocketAddr};

use crate::model::Vip;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_ZONE: u16 = 18;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `TCP_CONNTRACK_ESTABLISHED`: the states up to it (SYN_SENT, SYN_RECV, ESTABLISHED) are
/// connections a backend serves; from FIN_WAIT on they are on their way out.
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink I/O failed while {doing}: {source}")]
    Io {
        doing: &'static str,
        source: std::io::Error,
    },
    #[error("the kernel refused to {doing}: errno {errno}")]
    Kernel { doing: &'static str, errno: i32 },
}

/// Netlink attributes of a buffer: (type without flags, value, the whole attribute).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        let item = (ty, &buf[at + 4..at + len], &buf[at..at + len]);
        at += len.next_multiple_of(4);
        Some(item)
    })
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _, _)| *t == ty).map(|(_, v, _)| v)
}

/// (source, destination, protocol) of a tuple attribute's value.
fn tuple(value: &[u8]) -> Option<(SocketAddr, SocketAddr, u8)> {
    let ip = find(value, CTA_TUPLE_IP)?;
    let proto = find(value, CTA_TUPLE_PROTO)?;
    let addr = |v4: u16, v6: u16| -> Option<IpAddr> {
        if let Some(a) = find(ip, v4) {
            return Some(IpAddr::from(<[u8; 4]>::try_from(a).ok()?));
        }
        Some(IpAddr::from(<[u8; 16]>::try_from(find(ip, v6)?).ok()?))
    };
    let port =
        |t: u16| -> Option<u16> { Some(u16::from_be_bytes(find(proto, t)?.try_into().ok()?)) };
    let num = *find(proto, CTA_PROTO_NUM)?.first()?;
    Some((
        SocketAddr::new(
            addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            port(CTA_PROTO_SRC_PORT)?,
        ),
        SocketAddr::new(
            addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            port(CTA_PROTO_DST_PORT)?,
        ),
        num,
    ))
}

fn request(ty: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id
    m.extend_from_slice(attrs);
    m
}

fn family_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn open() -> Result<mnl::Socket, ConntrackError> {
    mnl::Socket::new(mnl::Bus::Netfilter).map_err(|source| ConntrackError::Io {
        doing: "opening a ctnetlink socket",
        source,
    })
}

/// Dumps the conntrack table of `family`, calling `each` with every entry's attributes.
fn dump(
    sock: &mnl::Socket,
    family: u8,
    buf: &mut [u32],
    mut each: impl FnMut(&[u8]),
) -> Result<(), ConntrackError> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    sock.send(&request(IPCTNL_MSG_CT_GET, flags, 1, family, &[]))
        .map_err(|source| ConntrackError::Io {
            doing: "asking for the conntrack table",
            source,
        })?;
    'dump: loop {
        // SAFETY: a u32 buffer viewed as bytes (alignment for nlmsghdr, as mnl requires).
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 4) };
        let n = sock.recv_raw(bytes).map_err(|source| ConntrackError::Io {
            doing: "reading the conntrack table",
            source,
        })?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            if len < 16 || at + len > n {
                break;
            }
            let payload = &bytes[at + 16..at + len];
            if ty == libc::NLMSG_DONE as u16 {
                break 'dump;
            }
            if ty == libc::NLMSG_ERROR as u16 {
                let errno = -i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                if errno != 0 {
                    return Err(ConntrackError::Kernel {
                        doing: "dump the conntrack table",
                        errno,
                    });
                }
                break 'dump;
            }
            if payload.len() > 4 {
                each(&payload[4..]);
            }
            at += len.next_multiple_of(4);
        }
    }
    Ok(())
}

/// The TCP state of an entry, if it is a TCP entry.
fn tcp_state(a: &[u8]) -> Option<u8> {
    let info = find(a, CTA_PROTOINFO)?;
    let tcp = find(info, CTA_PROTOINFO_TCP)?;
    find(tcp, CTA_PROTOINFO_TCP_STATE)?.first().copied()
}

/// Live connections per service and backend: entries whose original destination is `vip`
/// (address, protocol, port) and whose reply source is a backend, counted by that backend.
/// TCP entries count from SYN_SENT to ESTABLISHED; UDP entries count while conntrack keeps them.
pub type Counts =
    std::collections::HashMap<(SocketAddr, u8), std::collections::HashMap<SocketAddr, u64>>;

/// Counts the live connections of every VIP of the families in `families` (see [`Counts`]).
pub fn count_connections(families: &[IpAddr]) -> Result<Counts, ConntrackError> {
    let sock = open()?;
    let mut buf = vec![0u32; 64 * 1024];
    let mut out = Counts::new();
    let mut seen = Vec::new();
    for &f in families {
        let family = family_of(f);
        if seen.contains(&family) {
            continue;
        }
        seen.push(family);
        dump(&sock, family, &mut buf, |a| {
            let orig = find(a, CTA_TUPLE_ORIG).and_then(tuple);
            let reply = find(a, CTA_TUPLE_REPLY).and_then(tuple);
            if let (Some((_, vip, proto)), Some((backend, _, _))) = (orig, reply)
                && vip != backend
                && tcp_state(a).is_none_or(|s| s <= TCP_CONNTRACK_ESTABLISHED)
            {
                *out.entry((vip, proto))
                    .or_default()
                    .entry(backend)
                    .or_insert(0) += 1;
            }
        })?;
    }
    Ok(out)
}

/// Deletes every conntrack entry of `vip` NATed to `backend`; returns how many it deleted.
pub fn flush_backend(vip: &Vip, backend: SocketAddr) -> Result<usize, ConntrackError> {
    let family = family_of(vip.addr);
    let sock = open()?;
    // The original tuple (and zone) of every matching entry, as raw attributes.
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u32; 64 * 1024];
    dump(&sock, family, &mut buf, |a| {
        let orig = attrs(a).find(|(t, _, _)| *t == CTA_TUPLE_ORIG);
        let reply = find(a, CTA_TUPLE_REPLY).and_then(tuple);
        if let (Some((_, orig_value, orig_raw)), Some((reply_src, _, _))) = (orig, reply)
            && let Some((_, orig_dst, proto)) = tuple(orig_value)
            && orig_dst == SocketAddr::new(vip.addr, vip.port)
            && proto == vip.protocol.number()
            && reply_src == backend
        {
            let mut key = orig_raw.to_vec();
            key.resize(key.len().next_multiple_of(4), 0);
            if let Some((_, _, zone)) = attrs(a).find(|(t, _, _)| *t == CTA_ZONE) {
                key.extend_from_slice(zone);
                key.resize(key.len().next_multiple_of(4), 0);
            }
            doomed.push(key);
        }
    })?;
    let mut deleted = 0;
    for (i, key) in doomed.iter().enumerate() {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let seq = 2 + i as u32;
        sock.send(&request(IPCTNL_MSG_CT_DELETE, flags, seq, family, key))
            .map_err(|source| ConntrackError::Io {
                doing: "deleting a conntrack entry",
                source,
            })?;
        // SAFETY: as above.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 4) };
        let n = sock.recv_raw(bytes).map_err(|source| ConntrackError::Io {
            doing: "deleting a conntrack entry",
            source,
        })?;
        if n >= 20
            && u16::from_ne_bytes(bytes[4..6].try_into().unwrap()) == libc::NLMSG_ERROR as u16
        {
            match -i32::from_ne_bytes(bytes[16..20].try_into().unwrap()) {
                0 => deleted += 1,
                libc::ENOENT => {} // gone by itself meanwhile
                errno => {
                    return Err(ConntrackError::Kernel {
                        doing: "delete a conntrack entry",
                        errno,
                    });
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn parses_a_tuple() {
        let ip = [
            nla(CTA_IP_V4_SRC, &[198, 51, 100, 2]),
            nla(CTA_IP_V4_DST, &[203, 0, 113, 10]),
        ]
        .concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[17]),
            nla(CTA_PROTO_SRC_PORT, &40000u16.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &53u16.to_be_bytes()),
        ]
        .concat();
        let t = [
            nla(CTA_TUPLE_IP | 0x8000, &ip),
            nla(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat();
        let (src, dst, p) = tuple(&t).unwrap();
        assert_eq!(src, "198.51.100.2:40000".parse().unwrap());
        assert_eq!(dst, "203.0.113.10:53".parse().unwrap());
        assert_eq!(p, 17);
    }
}
