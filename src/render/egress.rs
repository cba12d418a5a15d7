//! Egress SNAT: the rules of the `egress` chain, from `[[egress]]`.
//!
//! Unlike the services' fixed layout, egress rules hold their prefixes, addresses and ports as
//! constants, one rule per source . destination . address (and protocol, when ports are given).
//! An operator has a handful of egress rules, not thousands, and a change rewrites only this
//! chain: a base chain with no jumps, so the kernel's commit does not revalidate the rest of the
//! table and a service change still costs what it changes.
//!
//! Each rule is described once ([`EgressRule`]) and written two ways: as kernel expressions
//! (what natlb installs) and as nft text (what `natlb render` prints); the render-equivalence
//! test checks that nft lists both the same.

use std::net::IpAddr;

use super::layout::meta_is;
use super::ruleset::{CmpOp, Expr, Family, NatKind, RuleSpec, Value, encode_values};
use crate::model::{AddrRange, Egress, EgressSnat, IpNet, Protocol};

/// The egress chain: a nat chain at postrouting, just after the services' SNAT chain, so a
/// connection a service already translated never gets here.
pub const CHAIN: &str = "egress";

/// `NF_NAT_RANGE_PROTO_SPECIFIED`, `NF_NAT_RANGE_PERSISTENT`, `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
const RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
const RANGE_PERSISTENT: u32 = 1 << 3;
const RANGE_PROTO_RANDOM_FULLY: u32 = 1 << 4;

const REG1: u32 = libc::NFT_REG_1 as u32;
const REG2: u32 = libc::NFT_REG_2 as u32;

/// What a matching connection's source becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translation {
    To(AddrRange),
    Masquerade,
}

/// One rule of the egress chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    pub family: Family,
    pub out_interface: String,
    /// `None`: any source of the family (a `/0` prefix).
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    pub excluded: Vec<IpNet>,
    /// Set when the rule gives ports: nft needs the protocol to translate them.
    pub protocol: Option<Protocol>,
    /// `(n, i)`: the rule takes the clients whose address hashes to `i` of `n` (one share per
    /// address or range of the `snat` list).
    pub share: Option<(u32, u32)>,
    pub seed: u32,
    pub translation: Translation,
    pub ports: Option<(u16, u16)>,
    pub persistent: bool,
    pub fully_random: bool,
    pub comment: String,
}

/// Every egress rule, in config order: the first rule that matches a new connection translates
/// it. `seed` is the table's hash seed (it spreads clients over an `snat` list).
pub fn rules(egress: &[Egress], seed: u32) -> Vec<EgressRule> {
    let mut out = Vec::new();
    for e in egress {
        for family in [Family::V4, Family::V6] {
            family_rules(e, family, seed, &mut out);
        }
    }
    out
}

pub fn rule_specs(egress: &[Egress], seed: u32) -> Vec<RuleSpec> {
    rules(egress, seed).iter().map(EgressRule::spec).collect()
}

fn of_family(nets: &[IpNet], f: Family) -> Vec<IpNet> {
    nets.iter()
        .copied()
        .filter(|n| Family::of(&n.addr) == f)
        .collect()
}

/// A `/0` prefix matches everything: nft needs no comparison for it.
fn narrowing(net: IpNet) -> Option<IpNet> {
    (net.prefix > 0).then_some(net)
}

fn family_rules(e: &Egress, family: Family, seed: u32, out: &mut Vec<EgressRule>) {
    let sources = of_family(&e.source, family);
    if sources.is_empty() {
        return;
    }
    let destinations: Vec<Option<IpNet>> = if e.destination.is_empty() {
        vec![None]
    } else {
        of_family(&e.destination, family)
            .into_iter()
            .map(narrowing)
            .collect()
    };
    let excluded = of_family(&e.exclude_destination, family);
    let targets: Vec<Translation> = match &e.snat {
        EgressSnat::Masquerade => vec![Translation::Masquerade],
        EgressSnat::To(list) => list
            .iter()
            .filter(|r| Family::of(&r.first) == family)
            .map(|r| Translation::To(*r))
            .collect(),
    };
    let n = targets.len() as u32;
    // With ports, TCP and UDP get them and every other protocol (ICMP...) is translated
    // without: nft gives ports only after a protocol match.
    let protocols: &[Option<Protocol>] = if e.ports.is_some() {
        &[Some(Protocol::Tcp), Some(Protocol::Udp), None]
    } else {
        &[None]
    };
    for &source in &sources {
        for &destination in &destinations {
            for &protocol in protocols {
                for (i, translation) in targets.iter().enumerate() {
                    out.push(EgressRule {
                        family,
                        out_interface: e.out_interface.clone(),
                        source: narrowing(source),
                        destination,
                        excluded: excluded.clone(),
                        protocol,
                        share: (n > 1).then_some((n, i as u32)),
                        seed,
                        translation: translation.clone(),
                        ports: e.ports.filter(|_| protocol.is_some()),
                        persistent: e.persistent,
                        fully_random: e.fully_random,
                        comment: format!("egress {}", e.name),
                    });
                }
            }
        }
    }
}

impl EgressRule {
    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.ports.is_some() {
            f |= RANGE_PROTO_SPECIFIED;
        }
        if self.persistent {
            f |= RANGE_PERSISTENT;
        }
        if self.fully_random {
            f |= RANGE_PROTO_RANDOM_FULLY;
        }
        f
    }

    /// Whether the rule compares an address: nft then checks the family itself; otherwise the
    /// rule says `meta nfproto` (the table is `inet`).
    fn matches_an_address(&self) -> bool {
        self.source.is_some()
            || self.destination.is_some()
            || !self.excluded.is_empty()
            || self.share.is_some()
    }

    /// The kernel expressions, as nft 1.0.6 generates them for [`EgressRule::text`].
    pub fn spec(&self) -> RuleSpec {
        let f = self.family;
        let mut e = vec![
            Expr::Meta {
                key: libc::NFT_META_OIFNAME as u32,
                dreg: REG1,
            },
            Expr::Cmp {
                sreg: REG1,
                op: CmpOp::Eq,
                data: ifname_bytes(&self.out_interface),
            },
        ];
        e.extend(meta_is(libc::NFT_META_NFPROTO, f.nfproto()));
        if let Some(net) = self.source {
            prefix_match(f, f.saddr_offset(), net, CmpOp::Eq, &mut e);
        }
        if let Some(net) = self.destination {
            prefix_match(f, f.daddr_offset(), net, CmpOp::Eq, &mut e);
        }
        for &net in &self.excluded {
            prefix_match(f, f.daddr_offset(), net, CmpOp::Neq, &mut e);
        }
        if let Some(p) = self.protocol {
            e.extend(meta_is(libc::NFT_META_L4PROTO, p.number()));
        }
        if let Some((n, i)) = self.share {
            // nft hashes from the register after the result's.
            e.push(Expr::Payload {
                base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                offset: f.saddr_offset(),
                len: f.addr_len(),
                dreg: REG2,
            });
            e.push(Expr::Jhash {
                sreg: REG2,
                len: f.addr_len(),
                dreg: REG1,
                modulus: n,
                seed: self.seed,
            });
            e.push(Expr::Cmp {
                sreg: REG1,
                op: CmpOp::Eq,
                data: i.to_ne_bytes().to_vec(),
            });
        }
        // nft loads the constants into consecutive 16-byte registers from NFT_REG_1.
        let mut next = REG1;
        let mut load = |data: Vec<u8>, e: &mut Vec<Expr>| {
            let reg = next;
            next += 1;
            e.push(Expr::Immediate { dreg: reg, data });
            reg
        };
        match &self.translation {
            Translation::To(range) => {
                let addr_reg = load(addr_bytes(range.first), &mut e);
                let addr_max_reg =
                    (range.last != range.first).then(|| load(addr_bytes(range.last), &mut e));
                let (proto_reg, proto_max_reg) = self.port_regs(&mut load, &mut e);
                e.push(Expr::Nat {
                    kind: NatKind::Snat,
                    family: f,
                    addr_reg,
                    addr_max_reg,
                    proto_reg,
                    proto_max_reg,
                    flags: self.flags(),
                });
            }
            Translation::Masquerade => {
                let (proto_min_reg, proto_max_reg) = self.port_regs(&mut load, &mut e);
                e.push(Expr::Masquerade {
                    proto_min_reg,
                    proto_max_reg,
                    flags: self.flags(),
                });
            }
        }
        RuleSpec {
            exprs: e,
            comment: self.comment.clone(),
        }
    }

    fn port_regs(
        &self,
        load: &mut impl FnMut(Vec<u8>, &mut Vec<Expr>) -> u32,
        e: &mut Vec<Expr>,
    ) -> (Option<u32>, Option<u32>) {
        match self.ports {
            None => (None, None),
            Some((lo, hi)) => {
                let min = load(lo.to_be_bytes().to_vec(), e);
                let max = (hi != lo).then(|| load(hi.to_be_bytes().to_vec(), e));
                (Some(min), max)
            }
        }
    }

    /// The rule in nft's syntax, as `nft list` prints it.
    pub fn text(&self) -> String {
        let f = self.family;
        let ip = f.keyword();
        let mut parts = vec![format!("oifname \"{}\"", self.out_interface)];
        if !self.matches_an_address() {
            parts.push(format!(
                "meta nfproto {}",
                match f {
                    Family::V4 => "ipv4",
                    Family::V6 => "ipv6",
                }
            ));
        }
        if let Some(net) = self.source {
            parts.push(format!("{ip} saddr {net}"));
        }
        if let Some(net) = self.destination {
            parts.push(format!("{ip} daddr {net}"));
        }
        for net in &self.excluded {
            parts.push(format!("{ip} daddr != {net}"));
        }
        if let Some(p) = self.protocol {
            parts.push(format!("meta l4proto {}", p.name()));
        }
        if let Some((n, i)) = self.share {
            parts.push(format!(
                "jhash {ip} saddr mod {n} seed {:#x} {i}",
                self.seed
            ));
        }
        let ports = match self.ports {
            None => String::new(),
            Some((lo, hi)) if lo == hi => format!(":{lo}"),
            Some((lo, hi)) => format!(":{lo}-{hi}"),
        };
        parts.push(match &self.translation {
            Translation::To(r) => {
                let addr = |a: IpAddr| match (a, self.ports) {
                    (IpAddr::V6(a), Some(_)) => format!("[{a}]"),
                    _ => a.to_string(),
                };
                let to = if r.first == r.last {
                    addr(r.first)
                } else {
                    format!("{}-{}", addr(r.first), addr(r.last))
                };
                format!("snat {ip} to {to}{ports}")
            }
            Translation::Masquerade if ports.is_empty() => "masquerade".into(),
            Translation::Masquerade => format!("masquerade to {ports}"),
        });
        let flags: Vec<&str> = [
            (self.fully_random, "fully-random"),
            (self.persistent, "persistent"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if !flags.is_empty() {
            parts.push(flags.join(","));
        }
        parts.push(format!("comment \"{}\"", self.comment));
        parts.join(" ")
    }
}

/// `oifname "eth0"` compares the whole 16-byte name; `oifname "eth*"` only what precedes `*`.
fn ifname_bytes(name: &str) -> Vec<u8> {
    match name.strip_suffix('*') {
        Some(prefix) => prefix.as_bytes().to_vec(),
        None => {
            let mut b = name.as_bytes().to_vec();
            b.resize(libc::IFNAMSIZ, 0);
            b
        }
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    encode_values(&[Value::Addr(a)])
}

/// `ip saddr 10.0.0.0/16` as nft writes it: a whole-byte prefix loads and compares only its
/// bytes; any other loads the address and masks it first.
fn prefix_match(f: Family, offset: u32, net: IpNet, op: CmpOp, e: &mut Vec<Expr>) {
    let bytes = addr_bytes(net.addr);
    if net.prefix.is_multiple_of(8) {
        let len = u32::from(net.prefix / 8);
        e.push(Expr::Payload {
            base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            offset,
            len,
            dreg: REG1,
        });
        e.push(Expr::Cmp {
            sreg: REG1,
            op,
            data: bytes[..len as usize].to_vec(),
        });
    } else {
        let len = f.addr_len();
        let mask: Vec<u8> = (0..len as usize)
            .map(|i| {
                let bits = usize::from(net.prefix).saturating_sub(i * 8).min(8);
                (0xffu16 << (8 - bits)) as u8
            })
            .collect();
        e.push(Expr::Payload {
            base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            offset,
            len,
            dreg: REG1,
        });
        e.push(Expr::Bitwise {
            sreg: REG1,
            dreg: REG1,
            mask,
            xor: vec![0; len as usize],
        });
        e.push(Expr::Cmp {
            sreg: REG1,
            op,
            data: bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        let (a, p) = s.split_once('/').unwrap();
        IpNet {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn range(a: &str, b: &str) -> AddrRange {
        AddrRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    fn lan() -> Egress {
        Egress {
            name: "lan".into(),
            source: vec![net("10.0.0.0/16"), net("fd00::/64")],
            destination: vec![],
            exclude_destination: vec![net("10.0.0.0/8")],
            out_interface: "eth0".into(),
            snat: EgressSnat::Masquerade,
            ports: None,
            persistent: false,
            fully_random: false,
        }
    }

    fn texts(e: &[Egress]) -> Vec<String> {
        rules(e, 5).iter().map(EgressRule::text).collect()
    }

    #[test]
    fn masquerade_per_family_with_exclusions_of_that_family() {
        assert_eq!(
            texts(&[lan()]),
            [
                "oifname \"eth0\" ip saddr 10.0.0.0/16 ip daddr != 10.0.0.0/8 masquerade \
                 comment \"egress lan\"",
                "oifname \"eth0\" ip6 saddr fd00::/64 masquerade comment \"egress lan\"",
            ]
        );
    }

    #[test]
    fn a_list_is_shared_by_hash_and_ports_go_to_tcp_and_udp() {
        let e = Egress {
            source: vec![net("0.0.0.0/0")],
            destination: vec![net("198.51.100.0/24")],
            exclude_destination: vec![],
            snat: EgressSnat::To(vec![
                range("203.0.113.5", "203.0.113.5"),
                range("203.0.113.10", "203.0.113.20"),
            ]),
            ports: Some((1024, 65535)),
            persistent: true,
            fully_random: true,
            ..lan()
        };
        let t = texts(&[e]);
        assert_eq!(t.len(), 6);
        assert_eq!(
            t[0],
            "oifname \"eth0\" ip daddr 198.51.100.0/24 meta l4proto tcp jhash ip saddr mod 2 \
             seed 0x5 0 snat ip to 203.0.113.5:1024-65535 fully-random,persistent comment \
             \"egress lan\""
        );
        assert_eq!(
            t[5],
            "oifname \"eth0\" ip daddr 198.51.100.0/24 jhash ip saddr mod 2 seed 0x5 1 snat ip \
             to 203.0.113.10-203.0.113.20 fully-random,persistent comment \"egress lan\""
        );
        let spec = rules(
            &[Egress {
                source: vec![net("0.0.0.0/0")],
                exclude_destination: vec![],
                ..lan()
            }],
            5,
        )[0]
        .text();
        assert_eq!(
            spec,
            "oifname \"eth0\" meta nfproto ipv4 masquerade comment \"egress lan\""
        );
    }

    #[test]
    fn expressions_follow_nft() {
        // `nft --debug=netlink` for: oifname "eth*" ip saddr 10.0.0.0/20 meta l4proto tcp
        // snat ip to 203.0.113.7:1024-65535
        let e = Egress {
            source: vec![net("10.0.0.0/20")],
            exclude_destination: vec![],
            out_interface: "eth*".into(),
            snat: EgressSnat::To(vec![range("203.0.113.7", "203.0.113.7")]),
            ports: Some((1024, 65535)),
            ..lan()
        };
        let r = &rules(&[e], 5)[0];
        let x = r.spec().exprs;
        assert_eq!(
            x[1],
            Expr::Cmp {
                sreg: REG1,
                op: CmpOp::Eq,
                data: b"eth".to_vec()
            }
        );
        assert_eq!(
            x[5],
            Expr::Bitwise {
                sreg: REG1,
                dreg: REG1,
                mask: vec![0xff, 0xff, 0xf0, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(
            x.last(),
            Some(&Expr::Nat {
                kind: NatKind::Snat,
                family: Family::V4,
                addr_reg: REG1,
                addr_max_reg: None,
                proto_reg: Some(REG2),
                proto_max_reg: Some(REG2 + 1),
                flags: RANGE_PROTO_SPECIFIED,
            })
        );
    }
}
