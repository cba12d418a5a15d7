//! The ruleset description: plain data that says what natlb's table holds.
//!
//! `render` produces it, `render::script` prints it as an nft script and `nft` encodes it as
//! netlink messages. Nothing here touches the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::model::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The suffix natlb's set names carry: `slots4`, `slots6`.
    pub fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }

    /// The nft keyword of the family's header: `ip`, `ip6`.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// Where `ip saddr` / `ip6 saddr` starts in the network header.
    pub fn saddr_offset(self) -> u32 {
        match self {
            Family::V4 => 12,
            Family::V6 => 8,
        }
    }

    /// Where `ip daddr` / `ip6 daddr` starts in the network header.
    pub fn daddr_offset(self) -> u32 {
        match self {
            Family::V4 => 16,
            Family::V6 => 24,
        }
    }

    pub fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`, as `meta nfproto` loads it.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::V4 => libc::NFPROTO_IPV4 as u8,
            Family::V6 => libc::NFPROTO_IPV6 as u8,
        }
    }
}

/// One field of a set key or map value: what nft's `typeof` names and how the kernel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Daddr(Family),
    Saddr(Family),
    L4proto,
    Dport,
    /// `numgen random mod N`: a slot number.
    Slot {
        modulus: u32,
    },
}

impl Field {
    /// The expression as nft's `typeof` prints it.
    pub fn typeof_text(self) -> String {
        match self {
            Field::Daddr(f) => format!("{} daddr", f.keyword()),
            Field::Saddr(f) => format!("{} saddr", f.keyword()),
            Field::L4proto => "meta l4proto".into(),
            Field::Dport => "th dport".into(),
            Field::Slot { modulus } => format!("numgen random mod {modulus}"),
        }
    }

    /// nft's datatype id (`TYPE_IPADDR` = 7, ...), the unit of a set's `KEY_TYPE`.
    pub fn datatype(self) -> u32 {
        match self {
            Field::Daddr(Family::V4) | Field::Saddr(Family::V4) => 7,
            Field::Daddr(Family::V6) | Field::Saddr(Family::V6) => 8,
            Field::L4proto => 12,
            Field::Dport => 13,
            Field::Slot { .. } => 4,
        }
    }

    /// Bytes the field occupies in a register (concatenations pad every field to 4 bytes).
    pub fn reg_len(self) -> u32 {
        match self {
            Field::Daddr(f) | Field::Saddr(f) => f.addr_len(),
            Field::L4proto | Field::Dport | Field::Slot { .. } => 4,
        }
    }
}

/// The `KEY_TYPE`/`DATA_TYPE` of a concatenation: nft packs each field's datatype in 6 bits.
pub fn concat_datatype(fields: &[Field]) -> u32 {
    fields.iter().fold(0, |acc, f| (acc << 6) | f.datatype())
}

pub fn concat_len(fields: &[Field]) -> u32 {
    fields.iter().map(|f| f.reg_len()).sum()
}

/// A typed value of one [`Field`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Addr(IpAddr),
    Proto(Protocol),
    Port(u16),
    Int(u32),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Addr(a) => write!(f, "{a}"),
            Value::Proto(p) => f.write_str(p.name()),
            Value::Port(p) => write!(f, "{p}"),
            Value::Int(i) => write!(f, "{i}"),
        }
    }
}

impl Value {
    /// The value as the kernel stores it in a register: network order for addresses and ports,
    /// host order for `numgen` results, every field padded to a multiple of 4 bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Addr(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Value::Addr(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            Value::Proto(p) => out.extend_from_slice(&[p.number(), 0, 0, 0]),
            Value::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Value::Int(i) => out.extend_from_slice(&i.to_ne_bytes()),
        }
    }

    /// The inverse of [`Value::encode_into`] for one field; `None` if the bytes don't fit it.
    pub fn decode(field: Field, bytes: &[u8]) -> Option<Value> {
        if bytes.len() != field.reg_len() as usize {
            return None;
        }
        Some(match field {
            Field::Daddr(Family::V4) | Field::Saddr(Family::V4) => {
                Value::Addr(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?))
            }
            Field::Daddr(Family::V6) | Field::Saddr(Family::V6) => {
                Value::Addr(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?))
            }
            Field::L4proto => match bytes[0] {
                6 => Value::Proto(Protocol::Tcp),
                17 => Value::Proto(Protocol::Udp),
                _ => return None,
            },
            Field::Dport => Value::Port(u16::from_be_bytes([bytes[0], bytes[1]])),
            Field::Slot { .. } => Value::Int(u32::from_ne_bytes(bytes.try_into().ok()?)),
        })
    }
}

pub fn encode_values(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        v.encode_into(&mut out);
    }
    out
}

/// Splits `bytes` into the values of `fields`; `None` if they don't match.
pub fn decode_values(fields: &[Field], bytes: &[u8]) -> Option<Vec<Value>> {
    if bytes.len() != concat_len(fields) as usize {
        return None;
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let len = f.reg_len() as usize;
        out.push(Value::decode(*f, &bytes[at..at + len])?);
        at += len;
    }
    Some(out)
}

/// A named set (`data` empty) or map of natlb's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub key: Vec<Field>,
    pub data: Vec<Field>,
    /// Per-element counters: each element counts the connections it dispatched.
    pub counter: bool,
    /// `Some(size)`: a map the kernel fills from the packet path (`flags dynamic,timeout`,
    /// at most `size` elements). natlb never adds its elements, only deletes stale ones.
    pub dynamic: Option<u32>,
    pub comment: String,
}

impl SetSpec {
    pub fn is_map(&self) -> bool {
        !self.data.is_empty()
    }
}

/// A kernel expression, as `nft --debug=netlink` lists it. Register numbers follow nft's own
/// allocation so that what natlb installs lists exactly like what `nft -f` installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Ct {
        key: u32,
        /// `Some(IP_CT_DIR_ORIGINAL)` for `ct original ...`.
        dir: Option<u8>,
        dreg: u32,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `numgen random mod N`, or `numgen inc mod N` (a counter of this expression's own).
    Numgen {
        dreg: u32,
        modulus: u32,
        inc: bool,
    },
    /// `jhash <len bytes from sreg> mod N seed S`.
    Jhash {
        sreg: u32,
        len: u32,
        dreg: u32,
        modulus: u32,
        seed: u32,
    },
    Lookup {
        sreg: u32,
        set: String,
        dreg: Option<u32>,
        /// `!= @set`: matches when the key is NOT in the set.
        invert: bool,
    },
    /// `snat`/`dnat`: the address (and port) from registers; a range when the `_max` registers
    /// are given. `flags` are `NF_NAT_RANGE_*` (`persistent`, `fully-random`, ports given).
    Nat {
        kind: NatKind,
        family: Family,
        addr_reg: u32,
        addr_max_reg: Option<u32>,
        proto_reg: Option<u32>,
        proto_max_reg: Option<u32>,
        flags: u32,
    },
    /// `masquerade`, with a port range from registers (`to :P-Q`) and `NF_NAT_RANGE_*` flags.
    Masquerade {
        proto_min_reg: Option<u32>,
        proto_max_reg: Option<u32>,
        flags: u32,
    },
    /// Loads constant bytes into a register (the address and ports of an egress `snat`).
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    /// `fib ...`: a route lookup; `flags` are `NFTA_FIB_F_*`, `result` an `NFT_FIB_RESULT_*`.
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    /// `meta KEY set <sreg>` (`meta mark set ...`).
    MetaSet {
        key: u32,
        sreg: u32,
    },
    /// `reject with tcp reset` (`tcp_reset`) or `reject with icmp(v6) port-unreachable`.
    Reject {
        tcp_reset: bool,
        family: Family,
    },
    /// The `accept` verdict: ends this chain for the packet (later hooks still see it).
    Accept,
    /// `goto CHAIN`: continue in a regular chain and do not come back.
    Goto(String),
    /// The `drop` verdict.
    Drop,
    /// `update @set { <key from key_reg> timeout T : <data from data_reg> }`: adds the element,
    /// or restarts its timeout if it exists (its data stays). With `timeout_ms: None`,
    /// `delete @set { <key> : <data> }`: removes the element with that key, if there is one (the
    /// kernel wants a data register for a map, and ignores it).
    Dynset {
        key_reg: u32,
        data_reg: u32,
        set: String,
        timeout_ms: Option<u64>,
    },
}

impl Expr {
    /// The kernel's name for the expression, as a rule dump reports it.
    pub fn kernel_name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Ct { .. } => "ct",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Numgen { .. } => "numgen",
            Expr::Lookup { .. } => "lookup",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade { .. } => "masq",
            Expr::Immediate { .. } => "immediate",
            Expr::Fib { .. } => "fib",
            Expr::MetaSet { .. } => "meta",
            Expr::Reject { .. } => "reject",
            Expr::Jhash { .. } => "hash",
            Expr::Accept | Expr::Drop | Expr::Goto(_) => "immediate",
            Expr::Dynset { .. } => "dynset",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub exprs: Vec<Expr>,
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Nat,
    Filter,
}

/// What makes a chain a base chain: the hook it is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainKind,
    pub hook: Hook,
    /// `dstnat` = -100, `srcnat` = 100; the filter chains run just after DNAT (-90).
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    /// `None`: a regular chain, entered only by `goto` from a base chain.
    pub base: Option<BaseChain>,
    pub rules: Vec<RuleSpec>,
}

/// The value and comment of one element, under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub data: Vec<Value>,
    pub comment: String,
}

/// Elements per set name, each set's elements by key.
pub type Elements = BTreeMap<String, BTreeMap<Vec<Value>, Entry>>;

/// The whole table natlb wants installed. The sets, chains and rules are the fixed layout (see
/// `render::layout`); only `elements` depend on the config and on health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    /// The table's comment: names the layout version, so that a restarted natlb can tell whether
    /// the table it finds has the rules it would install.
    pub comment: String,
    /// The source-hash rules' jhash seed (it is in `chains`; the script template needs it too).
    pub hash_seed: u32,
    /// The packet mark of hairpin connections (it is in `chains`; the template needs it too).
    pub hairpin_mark: u32,
    pub sets: Vec<SetSpec>,
    pub chains: Vec<ChainSpec>,
    /// The `[[egress]]` rules: they follow the fixed rules of the egress chain, and unlike them
    /// depend on the config (see `render::egress`).
    pub egress: Vec<super::egress::EgressRule>,
    pub elements: Elements,
}

impl Ruleset {
    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn element_count(&self) -> usize {
        self.elements.values().map(|e| e.len()).sum()
    }
}
