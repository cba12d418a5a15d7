//! `[[egress]]`: source NAT for traffic leaving the gateway.

use std::net::IpAddr;
use std::ops::Range;

use serde_spanned::Spanned;

use super::super::addr::{family, parse_net, parse_snat_target, unusable};
use super::super::dto::{EgressDto, EgressSnatDto};
use super::super::error::Diagnostics;
use super::super::suggest::did_you_mean;
use super::{FirstSeen, check_name, required};
use crate::model::{Egress, EgressSnat, IpNet};

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
    .and_then(|s| sources(s, &who, d));

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

    Some(Egress {
        name: name?,
        source: source?,
        out_interface: out_interface?,
        snat: snat?,
    })
}

fn sources(
    list: &Spanned<Vec<Spanned<String>>>,
    who: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Vec<IpNet>> {
    if list.get_ref().is_empty() {
        d.error(
            list.span(),
            format!(
                "{who} has an empty source list; list the prefixes whose traffic to NAT, e.g. \
                 [\"10.0.0.0/16\"]"
            ),
        );
        return None;
    }
    let mut out = Some(Vec::new());
    for item in list.get_ref() {
        match (parse_net(item.get_ref()), &mut out) {
            (Ok(net), Some(v)) => v.push(net),
            (Ok(_), None) => {}
            (Err(e), _) => {
                d.error(item.span(), format!("source {e}"));
                out = None;
            }
        }
    }
    out
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
        targets.push(canonical(first, last));
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

/// The one spelling of a target handed to the model: `a` or `a-b`.
fn canonical(first: IpAddr, last: IpAddr) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}
