//! natlb's fixed table layout: the sets, maps, chains and rules that never change.
//!
//! The human-readable spec of this layout is `nft-templates/natlb.nft`; this file builds the same
//! objects as data for the netlink encoder. A test installs both and compares `nft list table`,
//! so the two can never drift apart.

use super::egress;
use super::maglev;
use super::ruleset::{
    BaseChain, ChainKind, ChainSpec, CmpOp, Expr, Family, Field, Hook, NatKind, RuleSpec, SetSpec,
};
use crate::model::{HashFields, OnAllDown, Protocol, Scheduler, Service};

/// The slot-table sizes a service can use. Each size costs one rule per family and hook, and a
/// new connection walks these rules until its service's size matches (set lookups, first packet
/// only); sizes 1..=16 give exact shares to any equal-weight group of up to 16 backends, the
/// larger ones approximate finer weights and hold up to 256 backends.
pub const SLOT_CLASSES: [u32; 20] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32, 64, 128, 256,
];

/// The largest slot table, which is also how many backends one service can have.
pub const MAX_SLOTS: u32 = 256;

pub use crate::model::{PERSISTENCE, persistence_label};

/// The most clients the sticky map remembers at once (the kernel's limit for the map). Past
/// it, new clients are not remembered until entries expire; everything else works on.
pub const STICKY_SIZE: u32 = 1 << 20;

/// The map the kernel fills: client address . VIP . protocol . port -> backend.
pub fn sticky_map_name(f: Family) -> String {
    format!("sticky{}", f.digit())
}

/// The key of the sticky map: the client's address, then the service's key.
pub fn sticky_key(f: Family) -> Vec<Field> {
    vec![
        Field::Saddr(f),
        Field::Daddr(f),
        Field::L4proto,
        Field::Dport,
    ]
}

/// Services with persistence, whatever its duration: the guard of the remember chain.
pub fn persistent_set_name(f: Family) -> String {
    format!("persistent{}", f.digit())
}

/// Services whose persistence lasts `label`.
pub fn persist_set_name(f: Family, label: &str) -> String {
    format!("persist{}_{label}", f.digit())
}

/// Every service with persistence . each backend that holds its slots: where a remembered
/// client may still be sent. The remember chain checks each new connection against it, so a
/// sticky entry natlb has not deleted yet (it reads the map to find them, which takes time at
/// scale) never keeps a client on a withdrawn backend.
pub fn eligible_set_name(f: Family) -> String {
    format!("eligible{}", f.digit())
}

/// The key of the eligible set: the service's key, then the backend's address . port.
pub fn eligible_key(f: Family) -> Vec<Field> {
    let mut key = vip_key(f);
    key.extend(endpoint_data(f));
    key
}

/// The regular chain that remembers a new connection's backend.
pub fn remember_chain_name(f: Family) -> String {
    format!("remember{}", f.digit())
}

/// Persistence is IPv4 only: nft 1.0.6 (Debian 12) cannot write a dynamic map update whose
/// key or value is longer than 16 bytes, and an IPv6 client with its VIP takes 40. natlb's
/// table must stay loadable and listable with that nft.
pub const PERSISTENCE_FAMILIES: [Family; 1] = [Family::V4];

/// The template the layout is written in; `natlb render` fills it.
pub const TEMPLATE: &str = include_str!("../../nft-templates/natlb.nft");

pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

pub fn vip_key(f: Family) -> Vec<Field> {
    vec![Field::Daddr(f), Field::L4proto, Field::Dport]
}

pub fn slot_key(f: Family) -> Vec<Field> {
    vec![
        Field::Daddr(f),
        Field::L4proto,
        Field::Dport,
        Field::Slot { modulus: MAX_SLOTS },
    ]
}

pub fn endpoint_data(f: Family) -> Vec<Field> {
    vec![Field::Daddr(f), Field::Dport]
}

/// How a service's slot is picked for a new connection. Each way has a set of the services that
/// use it, a regular chain the nat hooks `goto` for them, and slot-table sizes of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pick {
    /// `numgen random mod T`: `weighted` (and, until it has its own, `least-conn`).
    Random,
    /// `numgen inc mod T`: `round-robin`. The counter belongs to the rule, so services with the
    /// same slot count share it (see the README).
    Counter,
    /// `jhash` of the client address (and port) `mod M`, M prime: `source-hash`, whose slot
    /// tables natlb fills Maglev-style.
    Hash(HashFields),
}

/// Every way, in the order the nat chains try them.
pub const PICKS: [Pick; 4] = [
    Pick::Random,
    Pick::Counter,
    Pick::Hash(HashFields::Address),
    Pick::Hash(HashFields::AddressPort),
];

impl Pick {
    pub fn of(s: &Service) -> Pick {
        match s.scheduler {
            Scheduler::Weighted | Scheduler::LeastConn => Pick::Random,
            Scheduler::RoundRobin => Pick::Counter,
            Scheduler::SourceHash => Pick::Hash(s.hash),
        }
    }

    /// The name's part: `random`, `rr`, `hash`, `hashport`.
    pub fn tag(self) -> &'static str {
        match self {
            Pick::Random => "random",
            Pick::Counter => "rr",
            Pick::Hash(HashFields::Address) => "hash",
            Pick::Hash(HashFields::AddressPort) => "hashport",
        }
    }

    /// The slot-table sizes it offers.
    pub fn sizes(self) -> &'static [u32] {
        match self {
            Pick::Random | Pick::Counter => &SLOT_CLASSES,
            Pick::Hash(_) => &maglev::SIZES,
        }
    }

    fn picked(self) -> &'static str {
        match self {
            Pick::Random => "picked at random",
            Pick::Counter => "picked in turn",
            Pick::Hash(HashFields::Address) => "picked by a hash of the client address",
            Pick::Hash(HashFields::AddressPort) => {
                "picked by a hash of the client address and port"
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Pick::Random => "a random slot (weighted)",
            Pick::Counter => "the next slot (round-robin)",
            Pick::Hash(HashFields::Address) => "a hash of the client address (source-hash)",
            Pick::Hash(HashFields::AddressPort) => {
                "a hash of the client address and port (source-hash)"
            }
        }
    }
}

/// The services of a family whose slot is picked by `p`.
pub fn pick_set_name(f: Family, p: Pick) -> String {
    format!("by_{}{}", p.tag(), f.digit())
}

/// The regular chain the nat hooks `goto` for the services of `pick_set_name(f, p)`.
pub fn pick_chain_name(f: Family, p: Pick) -> String {
    format!("dnat_{}{}", p.tag(), f.digit())
}

/// Every service of a family, whatever its state: the one lookup that lets a packet to anything
/// else leave natlb's chains at once.
pub fn vips_set_name(f: Family) -> String {
    format!("vips{}", f.digit())
}

/// The services of a family whose slot is picked by `p` from a table of `slots` slots.
pub fn class_set_name(f: Family, p: Pick, slots: u32) -> String {
    let kind = match p {
        Pick::Random => "mod",
        other => other.tag(),
    };
    format!("svc{}_{kind}{slots}", f.digit())
}

pub fn slots_map_name(f: Family) -> String {
    format!("slots{}", f.digit())
}

pub fn snat_masq_set_name(f: Family) -> String {
    format!("snat_masq{}", f.digit())
}

pub fn snat_addr_map_name(f: Family) -> String {
    format!("snat_addr{}", f.digit())
}

/// The set of services with no backend up, whose new connections are refused or dropped.
pub fn all_down_set_name(f: Family, action: OnAllDown) -> String {
    match action {
        OnAllDown::Reject => format!("down_reject{}", f.digit()),
        OnAllDown::Drop => format!("down_drop{}", f.digit()),
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// The table's comment, which names the layout version: a hash of the template, the slot sizes
/// and the hash seed (which the source-hash rules hold). A natlb that finds its table with
/// another comment replaces the table atomically.
pub fn table_comment(seed: u32) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let classes = format!("{SLOT_CLASSES:?} {:?} {seed}", maglev::SIZES);
    for b in TEMPLATE.bytes().chain(classes.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{} layout {:012x}",
        crate::nft::COMMENT_PREFIX,
        h & 0xffff_ffff_ffff
    )
}

/// Every set and map, in the order the template declares them (nft lists them in that order).
pub fn sets() -> Vec<SetSpec> {
    let mut out = Vec::new();
    for f in FAMILIES {
        out.push(SetSpec {
            name: vips_set_name(f),
            key: vip_key(f),
            data: vec![],
            counter: false,
            dynamic: None,
            comment: format!(
                "every {} service: other packets leave natlb's chains after one lookup",
                family_name(f)
            ),
        });
    }
    for f in FAMILIES {
        for p in PICKS {
            out.push(SetSpec {
                name: pick_set_name(f, p),
                key: vip_key(f),
                data: vec![],
                counter: false,
                dynamic: None,
                comment: format!(
                    "{} services whose backend is {}",
                    family_name(f),
                    p.describe()
                ),
            });
        }
    }
    for f in FAMILIES {
        for p in PICKS {
            for &t in p.sizes() {
                out.push(SetSpec {
                    name: class_set_name(f, p, t),
                    key: vip_key(f),
                    data: vec![],
                    counter: false,
                    dynamic: None,
                    comment: format!("{} services with {t} slots, {}", family_name(f), p.picked()),
                });
            }
        }
    }
    for f in FAMILIES {
        out.push(SetSpec {
            name: slots_map_name(f),
            key: slot_key(f),
            data: endpoint_data(f),
            counter: true,
            dynamic: None,
            comment: format!(
                "{} service slot -> backend; counts new connections",
                family_name(f)
            ),
        });
    }
    for f in FAMILIES {
        out.push(SetSpec {
            name: snat_masq_set_name(f),
            key: vip_key(f),
            data: vec![],
            counter: false,
            dynamic: None,
            comment: format!(
                "{} services whose backends see the gateway's address",
                family_name(f)
            ),
        });
    }
    for f in FAMILIES {
        out.push(SetSpec {
            name: all_down_set_name(f, OnAllDown::Reject),
            key: vip_key(f),
            data: vec![],
            counter: false,
            dynamic: None,
            comment: format!(
                "{} services with no backend up: new connections are refused",
                family_name(f)
            ),
        });
    }
    for f in FAMILIES {
        out.push(SetSpec {
            name: all_down_set_name(f, OnAllDown::Drop),
            key: vip_key(f),
            data: vec![],
            counter: false,
            dynamic: None,
            comment: format!(
                "{} services with no backend up: new connections are dropped",
                family_name(f)
            ),
        });
    }
    for f in FAMILIES {
        out.push(SetSpec {
            name: snat_addr_map_name(f),
            key: vip_key(f),
            data: vec![Field::Saddr(f)],
            counter: false,
            dynamic: None,
            comment: format!(
                "{} services whose backends see a fixed source address",
                family_name(f)
            ),
        });
    }
    for f in PERSISTENCE_FAMILIES {
        out.push(SetSpec {
            name: persistent_set_name(f),
            key: vip_key(f),
            data: vec![],
            counter: false,
            dynamic: None,
            comment: format!("{} services with persistence", family_name(f)),
        });
        for (label, _) in PERSISTENCE {
            out.push(SetSpec {
                name: persist_set_name(f, label),
                key: vip_key(f),
                data: vec![],
                counter: false,
                dynamic: None,
                comment: format!(
                    "{} services whose clients keep their backend for {label} after their last new connection",
                    family_name(f)
                ),
            });
        }
        out.push(SetSpec {
            name: eligible_set_name(f),
            key: eligible_key(f),
            data: vec![],
            counter: false,
            dynamic: None,
            comment: format!(
                "{} services with persistence . backends that take their new connections",
                family_name(f)
            ),
        });
        out.push(SetSpec {
            name: sticky_map_name(f),
            key: sticky_key(f),
            data: endpoint_data(f),
            counter: false,
            dynamic: Some(STICKY_SIZE),
            // Short: the set's userdata (typeof and comment) must fit in 256 bytes.
            comment: format!(
                "{} client . service -> backend, filled by {}",
                family_name(f),
                remember_chain_name(f)
            ),
        });
    }
    out
}

/// The chains, regular ones first: a `goto` needs its chain to exist. `seed` is the jhash seed
/// of the source-hash rules, `hairpin_mark` the packet mark that flags hairpin connections.
pub fn chains(seed: u32, hairpin_mark: u32) -> Vec<ChainSpec> {
    let mut out = Vec::new();
    for f in PERSISTENCE_FAMILIES {
        out.push(ChainSpec {
            name: remember_chain_name(f),
            base: None,
            // As the template expands them: the guards, then every duration for TCP, then for
            // UDP.
            rules: [Protocol::Tcp, Protocol::Udp]
                .map(|p| not_eligible_rule(f, p))
                .into_iter()
                .chain([Protocol::Tcp, Protocol::Udp].iter().flat_map(|&p| {
                    PERSISTENCE
                        .iter()
                        .map(move |&(label, secs)| remember_rule(f, p, label, secs))
                }))
                .collect(),
        });
    }
    for f in FAMILIES {
        for p in PICKS {
            out.push(ChainSpec {
                name: pick_chain_name(f, p),
                base: None,
                rules: p
                    .sizes()
                    .iter()
                    .map(|&t| dnat_rule(f, p, t, seed))
                    .collect(),
            });
        }
    }
    // A new connection to anything but a VIP costs one lookup here; one to a VIP, one more per
    // way of picking until its own, then the rules of that way's slot sizes.
    // A client the remember chain saw recently goes back to its backend before any slot is
    // picked.
    let dnat_rules: Vec<RuleSpec> = FAMILIES
        .iter()
        .flat_map(|&f| {
            std::iter::once(not_a_vip_rule(f))
                .chain(
                    PERSISTENCE_FAMILIES
                        .contains(&f)
                        .then(|| sticky_dnat_rule(f)),
                )
                .chain(PICKS.iter().map(move |&p| goto_rule(f, p)))
        })
        .collect();
    let mut snat_rules = Vec::new();
    for f in FAMILIES {
        for masquerade in [true, false] {
            for p in [Protocol::Tcp, Protocol::Udp] {
                snat_rules.push(snat_rule(f, p, masquerade));
            }
        }
    }
    snat_rules.push(hairpin_masquerade_rule(hairpin_mark));
    // Filter chains see every packet, so the common cases leave first: a packet of a known
    // connection (one `ct` load), then a new connection to anything but a VIP (one lookup).
    // A new connection just DNATed for a service with persistence goes to the remember chain
    // (and no further here: it is no longer addressed to a VIP).
    let down_rules: Vec<RuleSpec> = std::iter::once(not_new_rule())
        .chain(
            PERSISTENCE_FAMILIES
                .iter()
                .flat_map(|&f| [Protocol::Tcp, Protocol::Udp].map(|p| to_remember_rule(f, p))),
        )
        .chain(FAMILIES.iter().map(|&f| not_a_vip_rule(f)))
        .chain(FAMILIES.iter().flat_map(|&f| all_down_rules(f)))
        .collect();
    // Only prerouting knows the interface a packet came in by.
    let mut down_prerouting = down_rules.clone();
    down_prerouting.insert(1, hairpin_mark_rule(hairpin_mark));
    let base = |name: &str, kind, hook, priority, rules| ChainSpec {
        name: name.into(),
        base: Some(BaseChain {
            kind,
            hook,
            priority,
        }),
        rules,
    };
    out.extend([
        base(
            "prerouting",
            ChainKind::Nat,
            Hook::Prerouting,
            libc::NF_IP_PRI_NAT_DST,
            dnat_rules.clone(),
        ),
        base(
            "output",
            ChainKind::Nat,
            Hook::Output,
            libc::NF_IP_PRI_NAT_DST,
            dnat_rules,
        ),
        base(
            "postrouting",
            ChainKind::Nat,
            Hook::Postrouting,
            libc::NF_IP_PRI_NAT_SRC,
            snat_rules,
        ),
        base(
            "all_down",
            ChainKind::Filter,
            Hook::Prerouting,
            FILTER_AFTER_DNAT,
            down_prerouting,
        ),
        base(
            "all_down_output",
            ChainKind::Filter,
            Hook::Output,
            FILTER_AFTER_DNAT,
            down_rules,
        ),
        base(
            egress::CHAIN,
            ChainKind::Nat,
            Hook::Postrouting,
            EGRESS_PRIORITY,
            vec![dnatted_leaves_egress_rule()],
        ),
    ]);
    out
}

/// `meta KEY VALUE` for a one-byte meta key (`nfproto`, `l4proto`).
pub(super) fn meta_is(key: libc::c_int, value: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: key as u32,
            dreg: REG1,
        },
        Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Eq,
            data: vec![value],
        },
    ]
}

/// `ip daddr . meta l4proto . th dport @set` (`!= @set` if `invert`): the test that starts most
/// of natlb's rules. The family check comes first, as nft puts it, since the table is `inet`.
fn vip_in(f: Family, set: String, invert: bool) -> Vec<Expr> {
    let mut e = meta_is(libc::NFT_META_NFPROTO, f.nfproto()).to_vec();
    load_vip_key(f, false, &mut e);
    e.push(Expr::Lookup {
        sreg: REG1,
        set,
        dreg: None,
        invert,
    });
    e
}

/// `ip daddr . meta l4proto . th dport @by_rr4 goto dnat_rr4`
fn goto_rule(f: Family, p: Pick) -> RuleSpec {
    let mut e = vip_in(f, pick_set_name(f, p), false);
    e.push(Expr::Goto(pick_chain_name(f, p)));
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `ip daddr . meta l4proto . th dport != @vips4 accept`
fn not_a_vip_rule(f: Family) -> RuleSpec {
    let mut e = vip_in(f, vips_set_name(f), true);
    e.push(Expr::Accept);
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// The egress chain runs just after the services' SNAT chain (`srcnat + 10`): the kernel stops
/// at the first nat chain that translates a connection.
const EGRESS_PRIORITY: i32 = libc::NF_IP_PRI_NAT_SRC + 10;

/// `<load> & mask <op> value` for a 32-bit host-order field (`ct status`, `meta mark`).
fn bits_are(load: Expr, mask: u32, op: CmpOp, value: u32) -> [Expr; 3] {
    [
        load,
        Expr::Bitwise {
            sreg: REG1,
            dreg: REG1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG1,
            op,
            data: value.to_ne_bytes().to_vec(),
        },
    ]
}

/// `ct status dnat`: the connection was DNATed (to a backend, by natlb or anyone).
fn dnatted() -> [Expr; 3] {
    let status = Expr::Ct {
        key: libc::NFT_CT_STATUS as u32,
        dir: None,
        dreg: REG1,
    };
    bits_are(status, IPS_DST_NAT, CmpOp::Neq, 0)
}

/// `ct status dnat accept`, first in the egress chain: a load-balanced connection keeps its
/// service's `snat` policy, whatever egress rule its client and backend would match.
fn dnatted_leaves_egress_rule() -> RuleSpec {
    let mut e = dnatted().to_vec();
    e.push(Expr::Accept);
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `NFT_FIB_RESULT_OIF` (not in the libc crate).
const FIB_RESULT_OIF: u32 = 1;

/// `NFTA_FIB_F_DADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT` (not in the libc crate).
const FIB_DADDR_IIF_PRESENT: u32 = 0x2 | 0x8 | 0x20;

/// `ct status dnat fib daddr . iif oif exists meta mark set meta mark | MARK`: a new connection
/// DNATed to a backend that is reached through the interface the client came in by: a client on
/// the backend's own network. Without SNAT the backend would answer the client directly, from
/// its own address, and the client would drop the answer; the mark asks postrouting to
/// masquerade it.
fn hairpin_mark_rule(mark: u32) -> RuleSpec {
    let mut e = dnatted().to_vec();
    e.extend([
        Expr::Fib {
            flags: FIB_DADDR_IIF_PRESENT,
            result: FIB_RESULT_OIF,
            dreg: REG1,
        },
        Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Eq,
            data: 1u32.to_ne_bytes().to_vec(),
        },
        Expr::Meta {
            key: libc::NFT_META_MARK as u32,
            dreg: REG1,
        },
        Expr::Bitwise {
            sreg: REG1,
            dreg: REG1,
            mask: (!mark).to_ne_bytes().to_vec(),
            xor: mark.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: libc::NFT_META_MARK as u32,
            sreg: REG1,
        },
    ]);
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `meta mark & MARK == MARK ct status dnat masquerade`: the hairpin connections flagged in
/// prerouting, after the services' own SNAT rules.
fn hairpin_masquerade_rule(mark: u32) -> RuleSpec {
    let load = Expr::Meta {
        key: libc::NFT_META_MARK as u32,
        dreg: REG1,
    };
    let mut e = bits_are(load, mark, CmpOp::Eq, mark).to_vec();
    e.extend(dnatted());
    e.push(Expr::Masquerade {
        proto_min_reg: None,
        proto_max_reg: None,
        flags: 0,
    });
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `ct state != new accept`
fn not_new_rule() -> RuleSpec {
    RuleSpec {
        exprs: vec![
            Expr::Ct {
                key: libc::NFT_CT_STATE as u32,
                dir: None,
                dreg: REG1,
            },
            Expr::Cmp {
                sreg: REG1,
                op: CmpOp::Neq,
                data: CT_STATE_NEW.to_ne_bytes().to_vec(),
            },
            Expr::Accept,
        ],
        comment: String::new(),
    }
}

/// `NF_CT_STATE_BIT(IP_CT_NEW)`: how `ct state` reads for the first packet of a connection.
const CT_STATE_NEW: u32 = 1 << 3;

/// Just after DNAT: a packet that still has a VIP as its destination found no backend.
const FILTER_AFTER_DNAT: i32 = libc::NF_IP_PRI_NAT_DST + 10;

/// For services with no backend up: `reject with tcp reset` for TCP, `reject` (ICMP port
/// unreachable) for the rest, or `drop`.
fn all_down_rules(f: Family) -> Vec<RuleSpec> {
    let guarded = |tcp_only: bool, set: String, verdict: Expr| {
        let mut e = Vec::new();
        if tcp_only {
            e.extend(meta_is(libc::NFT_META_L4PROTO, Protocol::Tcp.number()));
        }
        e.extend(vip_in(f, set, false));
        e.push(verdict);
        RuleSpec {
            exprs: e,
            comment: String::new(),
        }
    };
    vec![
        guarded(
            true,
            all_down_set_name(f, OnAllDown::Reject),
            Expr::Reject {
                tcp_reset: true,
                family: f,
            },
        ),
        guarded(
            false,
            all_down_set_name(f, OnAllDown::Reject),
            Expr::Reject {
                tcp_reset: false,
                family: f,
            },
        ),
        guarded(false, all_down_set_name(f, OnAllDown::Drop), Expr::Drop),
    ]
}

/// nft stores a concatenation in consecutive 4-byte registers starting at `NFT_REG_1`; it names
/// a 16-byte-aligned one by its 16-byte register (`NFT_REG_n`) and any other by its 4-byte one
/// (`NFT_REG32_xx`). `word` counts 4-byte words from the start of the register file (the verdict
/// register takes words 0..4).
fn reg_at_word(word: u32) -> u32 {
    if word.is_multiple_of(4) {
        word / 4
    } else {
        word + (libc::NFT_REG32_00 as u32 - 4)
    }
}

const REG1_WORD: u32 = 4;

/// Loads `ip daddr . meta l4proto . th dport` into consecutive registers from `NFT_REG_1`;
/// `daddr` is a packet field (`Some(family)`) or, for SNAT, the conntrack original destination.
fn load_vip_key(f: Family, from_conntrack: bool, out: &mut Vec<Expr>) -> u32 {
    load_vip_key_at(f, from_conntrack, REG1_WORD, out)
}

/// [`load_vip_key`] from register word `word`; returns the next free word.
fn load_vip_key_at(f: Family, from_conntrack: bool, mut word: u32, out: &mut Vec<Expr>) -> u32 {
    if from_conntrack {
        out.push(Expr::Ct {
            key: match f {
                Family::V4 => libc::NFT_CT_DST_IP as u32,
                Family::V6 => libc::NFT_CT_DST_IP6 as u32,
            },
            dir: Some(IP_CT_DIR_ORIGINAL),
            dreg: reg_at_word(word),
        });
    } else {
        out.push(Expr::Payload {
            base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            offset: f.daddr_offset(),
            len: f.addr_len(),
            dreg: reg_at_word(word),
        });
    }
    word += f.addr_len() / 4;
    out.push(Expr::Meta {
        key: libc::NFT_META_L4PROTO as u32,
        dreg: reg_at_word(word),
    });
    word += 1;
    if from_conntrack {
        out.push(Expr::Ct {
            key: libc::NFT_CT_PROTO_DST as u32,
            dir: Some(IP_CT_DIR_ORIGINAL),
            dreg: reg_at_word(word),
        });
    } else {
        out.push(Expr::Payload {
            base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            offset: 2,
            len: 2,
            dreg: reg_at_word(word),
        });
    }
    word + 1
}

const REG1: u32 = libc::NFT_REG_1 as u32;
/// `IPS_DST_NAT` of `enum ip_conntrack_status`: the connection was DNATed.
const IPS_DST_NAT: u32 = 1 << 5;
/// `IP_CT_DIR_ORIGINAL` of `enum ip_conntrack_dir`.
const IP_CT_DIR_ORIGINAL: u8 = 0;

/// `ip daddr . meta l4proto . th dport @svc4_modT dnat ip to ip daddr . meta l4proto . th dport
/// . numgen random mod T map @slots4`, with `numgen inc` or `jhash ip saddr [. th sport] ... seed
/// S` in place of `numgen random` for the other ways of picking.
fn dnat_rule(f: Family, p: Pick, slots: u32, seed: u32) -> RuleSpec {
    let mut e = vip_in(f, class_set_name(f, p, slots), false);
    let slot_word = load_vip_key(f, false, &mut e);
    match p {
        Pick::Random | Pick::Counter => e.push(Expr::Numgen {
            dreg: reg_at_word(slot_word),
            modulus: slots,
            inc: p == Pick::Counter,
        }),
        Pick::Hash(fields) => {
            // nft puts the hashed fields in the registers after the whole map key's, one
            // 16-byte register further on.
            let src = slot_word + 1 + 4;
            e.push(Expr::Payload {
                base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                offset: f.saddr_offset(),
                len: f.addr_len(),
                dreg: reg_at_word(src),
            });
            let mut len = f.addr_len();
            if fields == HashFields::AddressPort {
                e.push(Expr::Payload {
                    base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
                    offset: 0,
                    len: 2,
                    dreg: reg_at_word(src + f.addr_len() / 4),
                });
                len += 4;
            }
            e.push(Expr::Jhash {
                sreg: reg_at_word(src),
                len,
                dreg: reg_at_word(slot_word),
                modulus: slots,
                seed,
            });
        }
    }
    e.extend(dnat_to_map(f, slots_map_name(f)));
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `dnat ip to <key from NFT_REG_1> map @SET`: the map's value is backend address . port.
fn dnat_to_map(f: Family, set: String) -> [Expr; 2] {
    [
        Expr::Lookup {
            sreg: REG1,
            set,
            dreg: Some(REG1),
            invert: false,
        },
        Expr::Nat {
            kind: NatKind::Dnat,
            family: f,
            addr_reg: REG1,
            addr_max_reg: None,
            proto_reg: Some(reg_at_word(REG1_WORD + f.addr_len() / 4)),
            proto_max_reg: None,
            flags: 0,
        },
    ]
}

/// `meta l4proto P ct status dnat ct original ip daddr . meta l4proto . ct original proto-dst
/// @snat_masq4 masquerade`, or the `snat ip to ... map @snat_addr4` variant.
fn snat_rule(f: Family, p: Protocol, masquerade: bool) -> RuleSpec {
    let mut e = dnatted_to_vip(f, p);
    if masquerade {
        e.push(Expr::Lookup {
            sreg: REG1,
            set: snat_masq_set_name(f),
            dreg: None,
            invert: false,
        });
        e.push(Expr::Masquerade {
            proto_min_reg: None,
            proto_max_reg: None,
            flags: 0,
        });
    } else {
        e.push(Expr::Lookup {
            sreg: REG1,
            set: snat_addr_map_name(f),
            dreg: Some(REG1),
            invert: false,
        });
        e.push(Expr::Nat {
            kind: NatKind::Snat,
            family: f,
            addr_reg: REG1,
            addr_max_reg: None,
            proto_reg: None,
            proto_max_reg: None,
            flags: 0,
        });
    }
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `meta l4proto P ct status dnat ct original ip daddr . meta l4proto . ct original proto-dst`,
/// the service key of a DNATed connection loaded from `NFT_REG_1`. nft needs the protocol to
/// read `ct original proto-dst`, hence one rule per protocol.
fn dnatted_to_vip(f: Family, p: Protocol) -> Vec<Expr> {
    let mut e = meta_is(libc::NFT_META_L4PROTO, p.number()).to_vec();
    e.extend(dnatted());
    load_vip_key(f, true, &mut e);
    e
}

/// `meta l4proto P ct status dnat ct original ip daddr . meta l4proto . ct original proto-dst
/// @persistent4 goto remember4`
fn to_remember_rule(f: Family, p: Protocol) -> RuleSpec {
    let mut e = dnatted_to_vip(f, p);
    e.push(Expr::Lookup {
        sreg: REG1,
        set: persistent_set_name(f),
        dreg: None,
        invert: false,
    });
    e.push(Expr::Goto(remember_chain_name(f)));
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `meta l4proto P ct original ip daddr . meta l4proto . ct original proto-dst @persist4_D
/// update @sticky4 { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst
/// timeout D : ip daddr . th dport }`: remembers (or, for a known client, keeps remembering)
/// the backend this new connection was sent to.
fn remember_rule(f: Family, p: Protocol, label: &str, secs: u64) -> RuleSpec {
    let mut e = meta_is(libc::NFT_META_L4PROTO, p.number()).to_vec();
    load_vip_key(f, true, &mut e);
    e.push(Expr::Lookup {
        sreg: REG1,
        set: persist_set_name(f, label),
        dreg: None,
        invert: false,
    });
    e.extend(meta_is(libc::NFT_META_NFPROTO, f.nfproto()));
    e.push(saddr(f, REG1_WORD));
    let data_word = load_vip_key_at(f, true, REG1_WORD + f.addr_len() / 4, &mut e);
    e.extend(backend_at(f, data_word));
    e.push(Expr::Dynset {
        key_reg: REG1,
        data_reg: reg_at_word(data_word),
        set: sticky_map_name(f),
        timeout_ms: Some(secs * 1000),
    });
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `meta l4proto P ct original ip daddr . meta l4proto . ct original proto-dst . ip daddr . th
/// dport != @eligible4 delete @sticky4 { ip saddr . ct original ip daddr . meta l4proto . ct
/// original proto-dst : ip daddr . th dport } drop`: a new connection sent to a backend that no
/// longer takes new connections of its service came from a sticky entry natlb has not deleted
/// yet. The entry goes now, and so does the first packet: its connection was never confirmed,
/// so the client's retransmission (a TCP SYN after a second) is a new connection, and finds
/// a slot.
fn not_eligible_rule(f: Family, p: Protocol) -> RuleSpec {
    let mut e = meta_is(libc::NFT_META_L4PROTO, p.number()).to_vec();
    e.extend(meta_is(libc::NFT_META_NFPROTO, f.nfproto()));
    let backend_word = load_vip_key(f, true, &mut e);
    e.extend(backend_at(f, backend_word));
    e.push(Expr::Lookup {
        sreg: REG1,
        set: eligible_set_name(f),
        dreg: None,
        invert: true,
    });
    e.push(saddr(f, REG1_WORD));
    let data_word = load_vip_key_at(f, true, REG1_WORD + f.addr_len() / 4, &mut e);
    e.extend(backend_at(f, data_word));
    e.push(Expr::Dynset {
        key_reg: REG1,
        data_reg: reg_at_word(data_word),
        set: sticky_map_name(f),
        timeout_ms: None,
    });
    e.push(Expr::Drop);
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `ip daddr . th dport` (after DNAT: the backend) into the registers from `word`.
fn backend_at(f: Family, word: u32) -> [Expr; 2] {
    [
        Expr::Payload {
            base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            offset: f.daddr_offset(),
            len: f.addr_len(),
            dreg: reg_at_word(word),
        },
        Expr::Payload {
            base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            offset: 2,
            len: 2,
            dreg: reg_at_word(word + f.addr_len() / 4),
        },
    ]
}

/// `dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @sticky4`: a miss falls
/// through to the slot rules.
fn sticky_dnat_rule(f: Family) -> RuleSpec {
    let mut e = meta_is(libc::NFT_META_NFPROTO, f.nfproto()).to_vec();
    e.push(saddr(f, REG1_WORD));
    load_vip_key_at(f, false, REG1_WORD + f.addr_len() / 4, &mut e);
    e.extend(dnat_to_map(f, sticky_map_name(f)));
    RuleSpec {
        exprs: e,
        comment: String::new(),
    }
}

/// `ip saddr` into the register at `word`.
fn saddr(f: Family, word: u32) -> Expr {
    Expr::Payload {
        base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
        offset: f.saddr_offset(),
        len: f.addr_len(),
        dreg: reg_at_word(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_follow_nft() {
        // As `nft --debug=netlink` prints for the v4 and v6 dnat rules.
        assert_eq!(reg_at_word(4), 1);
        assert_eq!(reg_at_word(5), 9);
        assert_eq!(reg_at_word(6), 10);
        assert_eq!(reg_at_word(7), 11);
        assert_eq!(reg_at_word(8), 2);
        assert_eq!(reg_at_word(9), 13);
        assert_eq!(reg_at_word(10), 14);
    }

    #[test]
    fn every_rule_names_a_declared_set() {
        let names: Vec<String> = sets().into_iter().map(|s| s.name).collect();
        for c in chains(0, 1) {
            for r in c.rules {
                for e in r.exprs {
                    if let Expr::Lookup { set, .. } = e {
                        assert!(names.contains(&set), "{set} is not declared");
                    }
                }
            }
        }
    }

    #[test]
    fn template_declares_every_set_and_chain() {
        let text = super::super::script::expand_template("natlb", "c", 0, 1, &[]);
        for s in sets() {
            let kw = if s.is_map() { "map" } else { "set" };
            assert!(
                text.contains(&format!("\t{kw} {} {{", s.name)),
                "{} missing from the template",
                s.name
            );
        }
        for c in chains(0, 1) {
            assert!(
                text.contains(&format!("\tchain {} {{", c.name)),
                "{} missing from the template",
                c.name
            );
        }
    }
}
