//! `[[egress]]`: source NAT for traffic leaving the gateway.

use std::ops::Range;

use serde_spanned::Spanned;

use super::super::addr::{family, parse_net, parse_snat_target, unusable};
use super::super::dto::{EgressDto, EgressSnatDto};
use super::super::error::Diagnostics;
use super::super::suggest::did_you_mean;
use super::{FirstSeen, check_name, required};
use crate::model::{AddrRange, Egress, EgressSnat, IpNet};

/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
const MAX_IFNAME: usize = 15;

pub(super) fn egress_rules(
    dtos: &[Spanned<EgressDto>],
    d: &mut Diagnostics<'_>,
) -> Option<Vec<Egress>> {
    let mut names = FirstSeen::new();
    let mut out = Some(Vec::with_capacity(dtos.len()));
    for dto in dtos {
        let egress = egress(dto, d);
        if let Some(name) = &dto.get_ref().name {
            let text = name.get_ref();
            if let Some((line, _)) = names.repeat(text.clone(), &name.span(), text, d) {
                d.error(
                    name.span(),
                    format!(
                        "duplicate egress name `{text}` (first used on line {line}); give each \
                         egress rule a unique name"
                    ),
                );
                out = None;
            }
        }
        match (egress, &mut out) {
            (Some(e), Some(list)) => list.push(e),
            _ => out = None,
        }
    }
    out
}

fn egress(dto: &Spanned<EgressDto>, d: &mut Diagnostics<'_>) -> Option<Egress> {
    let header = dto.span();
    let e = dto.get_ref();
    let who = match &e.name {
        Some(n) => format!("egress `{}`", n.get_ref()),
        None => "this egress rule".to_owned(),
    };

    let name = required(
        &e.name,
        &header,
        || "egress rule has no name; add name = \"...\" (letters, digits, `_`, `.`, `-`)".into(),
        d,
    )
    .and_then(|n| check_name("egress", n, d));

    let source = required(
        &e.source,
        &header,
        || {
            format!(
                "{who} has no source; add source = [\"10.0.0.0/16\"] listing the prefixes whose \
                 traffic to NAT"
            )
        },
        d,
    )
    .and_then(|s| prefixes(s, "source", &who, d));
    let destination = match &e.destination {
        None => Some(vec![]),
        Some(list) => prefixes(list, "destination", &who, d)
            .and_then(|v| destination_families(v, list, source.as_deref(), &who, d)),
    };
    let exclude_destination = match &e.exclude_destination {
        None => Some(vec![]),
        Some(list) => prefixes(list, "exclude_destination", &who, d)
            .and_then(|v| exclusion_families(v, list, source.as_deref(), &who, d)),
    };

    let out_interface = required(
        &e.out_interface,
        &header,
        || format!("{who} has no out_interface; add out_interface = \"eth0\" (the uplink)"),
        d,
    )
    .and_then(|i| interface(i, d));

    let snat = match &e.snat {
        None => Some(EgressSnat::Masquerade),
        Some(s) => snat(s, source.as_deref(), &who, d),
    };
    let ports = match &e.ports {
        None => Some(None),
        Some(p) => port_range(p, d).map(Some),
    };
    let persistent = e.persistent.as_ref().is_some_and(|p| *p.get_ref());
    if let (Some(p), Some(EgressSnat::Masquerade)) = (&e.persistent, &snat)
        && *p.get_ref()
    {
        d.error(
            p.span(),
            format!(
                "{who} masquerades, which has one address, so `persistent` (keep a client on one \
                 address of a range) means nothing; remove it, or list addresses in snat"
            ),
        );
        return None;
    }

    Some(Egress {
        name: name?,
        source: source?,
        destination: destination?,
        exclude_destination: exclude_destination?,
        out_interface: out_interface?,
        snat: snat?,
        ports: ports?,
        persistent,
        fully_random: e.fully_random.unwrap_or(false),
    })
}

/// A list of prefixes under `key` (`source`, `destination`, `exclude_destination`).
fn prefixes(
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    who: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Vec<IpNet>> {
    if list.get_ref().is_empty() {
        let what = match key {
            "source" => "the prefixes whose traffic to NAT, e.g. [\"10.0.0.0/16\"]",
            "destination" => "the prefixes to NAT traffic to, or remove the key for all",
            _ => "the prefixes to leave untranslated, or remove the key",
        };
        d.error(
            list.span(),
            format!("{who} has an empty {key} list; list {what}"),
        );
        return None;
    }
    let mut out = Some(Vec::new());
    for item in list.get_ref() {
        match (parse_net(item.get_ref()), &mut out) {
            (Ok(net), Some(v)) => v.push(net),
            (Ok(_), None) => {}
            (Err(e), _) => {
                d.error(item.span(), format!("{key} {e}"));
                out = None;
            }
        }
    }
    out
}

/// A `destination` list limits each source family to its own prefixes, so a source family
/// with no destination of its family would never be translated: most likely a mistake.
fn destination_families(
    list: Vec<IpNet>,
    at: &Spanned<Vec<Spanned<String>>>,
    sources: Option<&[IpNet]>,
    who: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Vec<IpNet>> {
    for net in sources.unwrap_or_default() {
        let fam = family(net.addr);
        if !list.iter().any(|n| family(n.addr) == fam) {
            d.error(
                at.span(),
                format!(
                    "{who} has {fam} source {net} but no {fam} destination, so its {fam} traffic \
                     would never be translated; add an {fam} destination (e.g. \"{}\") or \
                     remove the source",
                    if fam == "IPv4" { "0.0.0.0/0" } else { "::/0" }
                ),
            );
            return None;
        }
    }
    Some(list)
}

/// An exclusion of a family no source has excludes nothing.
fn exclusion_families(
    list: Vec<IpNet>,
    at: &Spanned<Vec<Spanned<String>>>,
    sources: Option<&[IpNet]>,
    who: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Vec<IpNet>> {
    let Some(sources) = sources else {
        return Some(list);
    };
    for (net, item) in list.iter().zip(at.get_ref()) {
        let fam = family(net.addr);
        if !sources.iter().any(|s| family(s.addr) == fam) {
            d.error(
                item.span(),
                format!(
                    "exclude_destination {net} is {fam} but {who} has no {fam} source; it would \
                     exclude nothing, remove it"
                ),
            );
            return None;
        }
    }
    Some(list)
}

/// `ports = "1024-65535"` or `"40000"`: the source ports TCP and UDP may be given.
fn port_range(p: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<(u16, u16)> {
    let text = p.get_ref();
    let port = |s: &str| {
        let s = s.trim();
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u16>().ok())
            .flatten()
            .filter(|&n| n > 0)
    };
    let parsed = match text.split_once('-') {
        None => port(text).map(|n| (n, n)),
        Some((a, b)) => port(a).zip(port(b)),
    };
    let problem = match parsed {
        None => format!(
            "ports \"{text}\" is not a port range; write first-last with ports from 1 to 65535, \
             e.g. \"1024-65535\""
        ),
        Some((a, b)) if a > b => {
            format!("ports \"{text}\" runs backwards; write the lower port first: \"{b}-{a}\"")
        }
        Some(range) => return Some(range),
    };
    d.error(p.span(), problem);
    None
}

/// What Linux accepts as an interface name (`dev_valid_name`), minus `"` so the name can be
/// written into an nft script unescaped. `*` is allowed: nft matches `eth*` as a wildcard.
fn interface(i: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<String> {
    let name = i.get_ref();
    let problem = if name.is_empty() {
        Some("out_interface is empty; name the interface traffic leaves by, e.g. \"eth0\"".into())
    } else if name.len() > MAX_IFNAME {
        Some(format!(
            "out_interface \"{name}\" is {} bytes long; Linux interface names are at most \
             {MAX_IFNAME}",
            name.len()
        ))
    } else if name.find('*').is_some_and(|at| at + 1 != name.len()) {
        Some(format!(
            "out_interface \"{name}\" has a `*` before its end; `*` may only end a name, \
             matching every interface whose name starts with what comes before it"
        ))
    } else if name == "." || name == ".." {
        Some(format!(
            "out_interface \"{name}\" is not a valid interface name"
        ))
    } else {
        name.chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | ':' | '"'))
            .map(|bad| {
                format!("out_interface \"{name}\" contains {bad:?}, which interface names cannot")
            })
    };
    match problem {
        Some(p) => {
            d.error(i.span(), p);
            None
        }
        None => Some(name.clone()),
    }
}

fn snat(
    value: &Spanned<EgressSnatDto>,
    sources: Option<&[IpNet]>,
    who: &str,
    d: &mut Diagnostics<'_>,
) -> Option<EgressSnat> {
    let span = value.span();
    let items: Vec<(&str, Range<usize>)> = match value.get_ref() {
        EgressSnatDto::One(text) if text == "masquerade" => return Some(EgressSnat::Masquerade),
        // A single address or range needs no list brackets.
        EgressSnatDto::One(text) => {
            if parse_snat_target(text).is_err() && !text.contains(['.', ':']) {
                let hint = match did_you_mean(text, &["masquerade"]) {
                    Some(guess) => format!("did you mean `{guess}`? "),
                    None => String::new(),
                };
                d.error(
                    span,
                    format!(
                        "unknown snat `{text}`; {hint}use \"masquerade\" or a list of addresses \
                         and ranges, e.g. [\"203.0.113.5\", \"203.0.113.10-203.0.113.20\"]"
                    ),
                );
                return None;
            }
            vec![(text.as_str(), span.clone())]
        }
        EgressSnatDto::List(list) => list
            .iter()
            .map(|item| (item.get_ref().as_str(), item.span()))
            .collect(),
    };
    if items.is_empty() {
        d.error(
            span,
            format!(
                "{who} has an empty snat list; list addresses or ranges to NAT to, or write \
                 snat = \"masquerade\""
            ),
        );
        return None;
    }

    let source_families: Vec<&str> = sources
        .unwrap_or_default()
        .iter()
        .map(|n| family(n.addr))
        .collect();
    let mut ok = true;
    let mut targets = Vec::new();
    let mut target_families = Vec::new();
    for (text, item_span) in items {
        let (first, last) = match parse_snat_target(text) {
            Ok(v) => v,
            Err(e) => {
                d.error(item_span, format!("snat {e}"));
                ok = false;
                continue;
            }
        };
        if let Some(why) = unusable(first).or(unusable(last)) {
            d.error(
                item_span,
                format!("snat \"{text}\" includes {why}; use addresses of this gateway"),
            );
            ok = false;
            continue;
        }
        // An address of a family no source has would never be used: most likely a mistake.
        if sources.is_some() && !source_families.contains(&family(first)) {
            d.error(
                item_span,
                format!(
                    "snat \"{text}\" is {} but {who} has no {} source; remove it or add an {} \
                     source prefix",
                    family(first),
                    family(first),
                    family(first),
                ),
            );
            ok = false;
            continue;
        }
        target_families.push(family(first));
        targets.push(AddrRange { first, last });
    }
    if !ok {
        return None;
    }
    // Each source family needs an address of its own family to be translated to.
    for net in sources.unwrap_or_default() {
        let fam = family(net.addr);
        if !target_families.contains(&fam) {
            d.error(
                span,
                format!(
                    "{who} has {fam} source {}/{} but no {fam} snat address; add one, or use \
                     snat = \"masquerade\"",
                    net.addr, net.prefix
                ),
            );
            return None;
        }
    }
    Some(EgressSnat::To(targets))
}
