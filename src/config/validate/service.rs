//! `[[service]]`: VIP, scheduling, SNAT, health checks and backends.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;

use super::super::addr::{family, parse_endpoint, parse_socket_addr, unusable};
use super::super::dto::{BackendDto, HealthDto, ServiceDto};
use super::super::duration::format_duration;
use super::super::error::Diagnostics;
use super::super::suggest::did_you_mean;
use super::{FirstSeen, check_name, duration, keyword, required};
use crate::model::{
    Backend, Health, HealthKind, MAX_WEIGHT, OnAllDown, Protocol, Scheduler, Service, Snat, Vip,
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
const DEFAULT_PATH: &str = "/";

/// Consecutive probe results needed to change state; beyond 100 a backend would take minutes to
/// react at any sensible interval, which is more likely a typo than a wish.
const MAX_RISE_FALL: i64 = 100;

/// Validates every service and the rules between services: unique names, unique VIPs.
pub(super) fn services(
    dtos: &[Spanned<ServiceDto>],
    d: &mut Diagnostics<'_>,
) -> Option<Vec<Service>> {
    let mut names = FirstSeen::new();
    let mut vips = FirstSeen::new();
    let mut out = Some(Vec::with_capacity(dtos.len()));
    for dto in dtos {
        let checked = service(dto, d);
        let label = dto
            .get_ref()
            .name
            .as_ref()
            .map_or_else(|| "(unnamed)".to_owned(), |n| n.get_ref().clone());

        if let Some(name) = &dto.get_ref().name
            && let Some((line, _)) = names.repeat(name.get_ref().clone(), &name.span(), &label, d)
        {
            d.error(
                name.span(),
                format!(
                    "duplicate service name `{label}` (first used on line {line}); give each \
                     service a unique name"
                ),
            );
            out = None;
        }
        if let Some((vip, span)) = checked.vip
            && let Some((line, first)) = vips.repeat(vip, &span, &label, d)
        {
            d.error(
                span,
                format!(
                    "{} {} is already the VIP of service `{first}` (line {line}); each address, \
                     protocol and port can belong to one service only",
                    vip.protocol.name(),
                    SocketAddr::new(vip.addr, vip.port),
                ),
            );
            out = None;
        }
        match (checked.service, &mut out) {
            (Some(s), Some(list)) => list.push(s),
            _ => out = None,
        }
    }
    out
}

/// One service, plus its VIP (with the span of `listen`) for the cross-service check even when
/// something else in the service is wrong.
struct Checked {
    service: Option<Service>,
    vip: Option<(Vip, Range<usize>)>,
}

fn service(dto: &Spanned<ServiceDto>, d: &mut Diagnostics<'_>) -> Checked {
    let header = dto.span();
    let s = dto.get_ref();
    let who = match &s.name {
        Some(n) => format!("service `{}`", n.get_ref()),
        None => "this service".to_owned(),
    };

    let name = required(
        &s.name,
        &header,
        || "service has no name; add name = \"...\" (letters, digits, `_`, `.`, `-`)".to_owned(),
        d,
    )
    .and_then(|n| check_name("service", n, d));

    let listen = required(
        &s.listen,
        &header,
        || format!("{who} has no listen address; add listen = \"IP:PORT\" (the VIP)"),
        d,
    )
    .and_then(|l| listen_addr(l, d));

    let protocol = keyword(
        &s.protocol,
        "protocol",
        &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)],
        Protocol::Tcp,
        d,
    );
    let scheduler = keyword(
        &s.scheduler,
        "scheduler",
        &[
            ("weighted", Scheduler::Weighted),
            ("round-robin", Scheduler::RoundRobin),
            ("source-hash", Scheduler::SourceHash),
            ("least-conn", Scheduler::LeastConn),
        ],
        Scheduler::Weighted,
        d,
    );
    let persistence = duration(&s.persistence, "persistence", d);
    let snat = snat(&s.snat, listen.as_ref().map(|l| l.get_ref()), d);
    let on_all_down = keyword(
        &s.on_all_down,
        "on_all_down",
        &[("reject", OnAllDown::Reject), ("drop", OnAllDown::Drop)],
        OnAllDown::Reject,
        d,
    );
    let health = health(s.health.as_ref(), d);
    let backends = backends(s, &header, &who, listen.as_ref().map(|l| l.get_ref()), d);

    let vip = match (&listen, protocol) {
        (Some(l), Some(protocol)) => Some((
            Vip {
                addr: l.get_ref().ip(),
                protocol,
                port: l.get_ref().port(),
            },
            l.span(),
        )),
        _ => None,
    };
    let service = (|| {
        Some(Service {
            name: name?,
            vip: vip.as_ref()?.0,
            scheduler: scheduler?,
            persistence: persistence?,
            snat: snat?,
            on_all_down: on_all_down?,
            health: health?,
            backends: backends?,
        })
    })();
    Checked { service, vip }
}

fn listen_addr(l: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<Spanned<SocketAddr>> {
    match parse_socket_addr(l.get_ref()) {
        Ok(addr) => match unusable(addr.ip()) {
            None => Some(Spanned::new(l.span(), addr)),
            Some(why) => {
                d.error(
                    l.span(),
                    format!(
                        "listen address {addr} is {why}; listen on the address clients connect to"
                    ),
                );
                None
            }
        },
        Err(e) => {
            d.error(l.span(), format!("listen address {e}"));
            None
        }
    }
}

fn snat(
    value: &Option<Spanned<String>>,
    vip: Option<&SocketAddr>,
    d: &mut Diagnostics<'_>,
) -> Option<Snat> {
    let Some(value) = value else {
        return Some(Snat::Masquerade);
    };
    let text = value.get_ref().as_str();
    match text {
        "masquerade" => return Some(Snat::Masquerade),
        "none" => return Some(Snat::None),
        _ => {}
    }
    let Ok(ip) = text.parse::<IpAddr>() else {
        let hint = match did_you_mean(text, &["masquerade", "none"]) {
            Some(guess) => format!("did you mean `{guess}`? "),
            None => String::new(),
        };
        d.error(
            value.span(),
            format!(
                "unknown snat `{text}`; {hint}use `masquerade`, `none` or an IP address to \
                 rewrite the client address to"
            ),
        );
        return None;
    };
    if let Some(why) = unusable(ip) {
        d.error(
            value.span(),
            format!("snat address {ip} is {why}; use an address of this gateway"),
        );
        return None;
    }
    if let Some(vip) = vip
        && family(ip) != family(vip.ip())
    {
        d.error(
            value.span(),
            format!(
                "snat address {ip} is {} but the service listens on {} {vip}; use an {} address",
                family(ip),
                family(vip.ip()),
                family(vip.ip()),
            ),
        );
        return None;
    }
    Some(Snat::Address(ip))
}

fn health(dto: Option<&HealthDto>, d: &mut Diagnostics<'_>) -> Option<Health> {
    let default = HealthDto::default();
    let h = dto.unwrap_or(&default);

    #[derive(Clone, Copy, PartialEq)]
    enum Type {
        Tcp,
        Http,
        Udp,
        Exec,
        None,
    }
    let kind = keyword(
        &h.kind,
        "health check type",
        &[
            ("tcp", Type::Tcp),
            ("http", Type::Http),
            ("udp", Type::Udp),
            ("exec", Type::Exec),
            ("none", Type::None),
        ],
        Type::Tcp,
        d,
    );

    let mut path_ok = true;
    if let Some(p) = &h.path {
        let text = p.get_ref();
        let problem = if kind.is_some_and(|k| k != Type::Http) {
            let type_name = h.kind.as_ref().map_or("tcp", |k| k.get_ref().as_str());
            Some(format!(
                "health path only applies to http checks, and this one is {type_name}; remove \
                 `path` or set type = \"http\""
            ))
        } else if !text.starts_with('/') {
            Some(format!(
                "health path \"{text}\" must start with \"/\"; write \"/{text}\""
            ))
        } else {
            text.chars()
                .find(|c| c.is_whitespace() || c.is_control())
                .map(|bad| {
                    format!(
                        "health path \"{text}\" contains {bad:?}, which cannot go in a request \
                         line; percent-encode it (a space is %20)"
                    )
                })
        };
        if let Some(problem) = problem {
            d.error(p.span(), problem);
            path_ok = false;
        }
    }

    let interval = duration(&h.interval, "health interval", d);
    let timeout = duration(&h.timeout, "health timeout", d);
    let mut timing_ok = true;
    if let (Some(interval), Some(Some(timeout)), Some(span)) =
        (interval, timeout, h.timeout.as_ref().map(|t| t.span()))
    {
        let (interval, note) = match interval {
            Some(i) => (i, ""),
            None => (DEFAULT_INTERVAL, " (the default)"),
        };
        if timeout > interval {
            d.error(
                span,
                format!(
                    "health timeout {} is longer than the interval {}{note}; a probe must end \
                     before the next starts, so use a timeout of at most {}",
                    format_duration(timeout),
                    format_duration(interval),
                    format_duration(interval),
                ),
            );
            timing_ok = false;
        }
    }

    let rise = count(
        &h.rise,
        "rise",
        "successes to mark a backend up",
        DEFAULT_RISE,
        d,
    );
    let fall = count(
        &h.fall,
        "fall",
        "failures to mark a backend down",
        DEFAULT_FALL,
        d,
    );

    let interval = interval?.unwrap_or(DEFAULT_INTERVAL);
    let kind = match kind? {
        Type::Tcp => HealthKind::Tcp,
        Type::Http => HealthKind::Http {
            path: h
                .path
                .as_ref()
                .map_or(DEFAULT_PATH.to_owned(), |p| p.get_ref().clone()),
        },
        Type::Udp => HealthKind::Udp,
        Type::Exec => HealthKind::Exec,
        Type::None => HealthKind::None,
    };
    (path_ok && timing_ok).then_some(())?;
    Some(Health {
        kind,
        interval,
        // A probe may take up to the whole interval unless told otherwise.
        timeout: timeout?.unwrap_or(interval),
        rise: rise?,
        fall: fall?,
    })
}

fn count(
    value: &Option<Spanned<i64>>,
    key: &str,
    meaning: &str,
    default: u32,
    d: &mut Diagnostics<'_>,
) -> Option<u32> {
    let Some(value) = value else {
        return Some(default);
    };
    let n = *value.get_ref();
    if (1..=MAX_RISE_FALL).contains(&n) {
        u32::try_from(n).ok()
    } else {
        d.error(
            value.span(),
            format!(
                "health {key} {n} is out of range; use 1 to {MAX_RISE_FALL} consecutive {meaning}"
            ),
        );
        None
    }
}

fn backends(
    s: &ServiceDto,
    header: &Range<usize>,
    who: &str,
    vip: Option<&SocketAddr>,
    d: &mut Diagnostics<'_>,
) -> Option<Vec<Backend>> {
    let list = s.backend.as_deref().unwrap_or_default();
    if list.is_empty() {
        let span = s.name.as_ref().map_or(header.clone(), |n| n.span());
        d.error(
            span,
            format!(
                "{who} has no backends; add at least one [[service.backend]] with address = \
                 \"IP:PORT\""
            ),
        );
        return None;
    }
    // A service's slot table holds at most MAX_SLOTS backends (see render::layout).
    let max = crate::render::layout::MAX_SLOTS as usize;
    if list.len() > max {
        let span = s.name.as_ref().map_or(header.clone(), |n| n.span());
        d.error(
            span,
            format!(
                "{who} has {} backends; natlb supports at most {max} per service, split it \
                 into several services",
                list.len()
            ),
        );
        return None;
    }
    let mut seen = FirstSeen::new();
    let mut out = Some(Vec::with_capacity(list.len()));
    for b in list {
        let backend = backend(b, vip, d);
        if let (Some(backend), Some(address)) = (&backend, &b.get_ref().address) {
            let shown = backend.address.to_string();
            if let Some((line, _)) = seen.repeat(backend.address, &address.span(), &shown, d) {
                d.error(
                    address.span(),
                    format!(
                        "backend {shown} is listed twice in {who} (first on line {line}); \
                         remove one, or change its weight instead"
                    ),
                );
                out = None;
                continue;
            }
        }
        match (backend, &mut out) {
            (Some(backend), Some(v)) => v.push(backend),
            _ => out = None,
        }
    }
    out
}

fn backend(
    dto: &Spanned<BackendDto>,
    vip: Option<&SocketAddr>,
    d: &mut Diagnostics<'_>,
) -> Option<Backend> {
    let b = dto.get_ref();
    let weight = match &b.weight {
        None => Some(1),
        Some(w) => match u32::try_from(*w.get_ref()) {
            Ok(w) if w <= MAX_WEIGHT => Some(w),
            _ => {
                d.error(
                    w.span(),
                    format!(
                        "backend weight {} is out of range; use 0 (drained) to {MAX_WEIGHT}",
                        w.get_ref()
                    ),
                );
                None
            }
        },
    };

    let a = required(
        &b.address,
        &dto.span(),
        || "backend has no address; add address = \"IP:PORT\"".to_owned(),
        d,
    )?;
    let text = a.get_ref();
    let (ip, port) = match parse_endpoint(text) {
        Ok(v) => v,
        Err(e) => {
            d.error(a.span(), format!("backend address {e}"));
            return None;
        }
    };
    if let Some(why) = unusable(ip) {
        d.error(
            a.span(),
            format!("backend address {text} is {why}; use the backend's own address"),
        );
        return None;
    }
    // Without a valid VIP there is no port to default to and no family to compare with; the
    // listen error has been reported.
    let vip = vip?;
    if family(ip) != family(vip.ip()) {
        d.error(
            a.span(),
            format!(
                "backend {text} is {} but the service listens on {} {vip}; use an {} backend \
                 address",
                family(ip),
                family(vip.ip()),
                family(vip.ip()),
            ),
        );
        return None;
    }
    let address = SocketAddr::new(ip, port.unwrap_or(vip.port()));
    if address == *vip {
        d.error(
            a.span(),
            format!(
                "backend {address} is the service's own VIP; traffic would loop, use the \
                 backend's real address"
            ),
        );
        return None;
    }
    Some(Backend {
        address,
        weight: weight?,
        backup: b.backup.unwrap_or(false),
    })
}
