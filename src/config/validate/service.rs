//! `[[service]]`: VIP, scheduling, SNAT, health checks and backends.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;

use super::super::addr::{family, parse_endpoint, parse_socket_addr, unusable};
use super::super::dto::{Argv, BackendDto, HealthDto, ServiceDto};
use super::super::duration::format_duration;
use super::super::error::Diagnostics;
use super::super::suggest::did_you_mean;
use super::{FirstSeen, check_name, duration, keyword, required};
use crate::model::{
    Backend, HashFields, Health, HealthKind, MAX_WEIGHT, OnAllDown, OnBackendDown, Protocol,
    Scheduler, Service, Snat, Vip,
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
const DEFAULT_PATH: &str = "/";
const DEFAULT_EXPECT_STATUS: [(u16, u16); 1] = [(200, 399)];
/// The floor of the default `fast_interval` (a quarter of the interval).
const MIN_DEFAULT_FAST_INTERVAL: Duration = Duration::from_millis(100);
/// A UDP probe payload must fit in one datagram without fragmentation on any usual path: 1400
/// bytes leaves room for IPv6, UDP and tunnel headers within a 1500-byte MTU.
const MAX_PAYLOAD: usize = 1400;

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
    let hash = keyword(
        &s.hash,
        "hash",
        &[
            ("address", HashFields::Address),
            ("address-port", HashFields::AddressPort),
        ],
        HashFields::Address,
        d,
    );
    if let (Some(h), Some(sched)) = (&s.hash, scheduler)
        && sched != Scheduler::SourceHash
    {
        d.error(
            h.span(),
            format!(
                "hash applies only to scheduler = \"source-hash\" (this service uses \
                     \"{}\"); remove it or change the scheduler",
                sched.name()
            ),
        );
    }

    let persistence = persistence(&s.persistence, listen.as_ref().map(|l| l.get_ref()), d);
    let snat = snat(&s.snat, listen.as_ref().map(|l| l.get_ref()), d);
    let on_all_down = keyword(
        &s.on_all_down,
        "on_all_down",
        &[("reject", OnAllDown::Reject), ("drop", OnAllDown::Drop)],
        OnAllDown::Reject,
        d,
    );
    let on_backend_down = keyword(
        &s.on_backend_down,
        "on_backend_down",
        &[
            ("keep", OnBackendDown::Keep),
            ("reset", OnBackendDown::Reset),
        ],
        OnBackendDown::Keep,
        d,
    );
    let probe = probe(s.health.as_ref(), protocol, d);
    let health = health(s.health.as_ref(), probe, d);
    let backends = backends(
        s,
        &header,
        &who,
        listen.as_ref().map(|l| l.get_ref()),
        probe,
        d,
    );

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
            hash: hash?,
            persistence: persistence?,
            snat: snat?,
            on_all_down: on_all_down?,
            on_backend_down: on_backend_down?,
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

/// The probe types; resolved before the rest of `[service.health]` because backends need it too
/// (`health_port` means nothing without a probe).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Tcp,
    Http,
    Udp,
    Exec,
    None,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http => "http",
            Probe::Udp => "udp",
            Probe::Exec => "exec",
            Probe::None => "none",
        }
    }
}

/// The health check type; `None` when it is not a known type (reported).
/// The probe type. Without a `[service.health]` table, a TCP service gets a TCP connect probe; a
/// UDP service gets none (always up): a connect to a UDP port proves nothing, and a UDP probe
/// needs a payload the backends answer, which only the operator knows.
fn probe(
    dto: Option<&HealthDto>,
    protocol: Option<Protocol>,
    d: &mut Diagnostics<'_>,
) -> Option<Probe> {
    let Some(h) = dto else {
        return Some(match protocol {
            Some(Protocol::Udp) => Probe::None,
            _ => Probe::Tcp,
        });
    };
    keyword(
        &h.kind,
        "health check type",
        &[
            ("tcp", Probe::Tcp),
            ("http", Probe::Http),
            ("udp", Probe::Udp),
            ("exec", Probe::Exec),
            ("none", Probe::None),
        ],
        Probe::Tcp,
        d,
    )
}

/// Reports a key that only one probe type uses when the check is of another type. A type that
/// is not known at all has been reported already and says nothing about the key.
fn only_for<T>(
    value: &Option<Spanned<T>>,
    key: &str,
    wanted: Probe,
    probe: Option<Probe>,
    d: &mut Diagnostics<'_>,
) -> bool {
    match (value, probe) {
        (Some(v), Some(actual)) if actual != wanted => {
            let wanted = wanted.name();
            d.error(
                v.span(),
                format!(
                    "health {key} only applies to {wanted} checks, and this one is {}; remove \
                     `{key}` or set type = \"{wanted}\"",
                    actual.name()
                ),
            );
            false
        }
        _ => true,
    }
}

/// Reports `problem` at `value` if there is one; true when there is none.
fn check<T>(value: &Spanned<T>, problem: Option<String>, d: &mut Diagnostics<'_>) -> bool {
    match problem {
        Some(problem) => {
            d.error(value.span(), problem);
            false
        }
        None => true,
    }
}

fn health(
    dto: Option<&HealthDto>,
    probe: Option<Probe>,
    d: &mut Diagnostics<'_>,
) -> Option<Health> {
    let default = HealthDto::default();
    let h = dto.unwrap_or(&default);

    // Each key is checked on its own, so that one misplaced key does not hide a bad value in
    // another; a key of one probe type set for another is reported as such and not checked
    // further.
    let path_ok = only_for(&h.path, "path", Probe::Http, probe, d)
        && h.path
            .as_ref()
            .is_none_or(|p| check(p, path_problem(p.get_ref()), d));
    let host_ok = only_for(&h.host, "host", Probe::Http, probe, d)
        && h.host
            .as_ref()
            .is_none_or(|host| check(host, host_problem(host.get_ref()), d));
    let mut expect_status = None;
    let status_ok = only_for(&h.expect_status, "expect_status", Probe::Http, probe, d)
        && h.expect_status
            .as_ref()
            .is_none_or(|e| match parse_status(&e.get_ref().0) {
                Ok(ranges) => {
                    expect_status = Some(ranges);
                    true
                }
                Err(problem) => check(e, Some(problem), d),
            });
    let payload_ok = only_for(&h.payload, "payload", Probe::Udp, probe, d)
        && h.payload.as_ref().is_none_or(|p| {
            let len = p.get_ref().len();
            let problem = (len > MAX_PAYLOAD).then(|| {
                format!(
                    "health payload is {len} bytes long; a UDP probe carries at most \
                     {MAX_PAYLOAD} bytes (to fit in one unfragmented datagram), so shorten it"
                )
            });
            check(p, problem, d)
        });
    let argv_ok = only_for(&h.command, "command", Probe::Exec, probe, d)
        && h.command.as_ref().is_none_or(|c| command_ok(c, d));
    let mut keys_ok = path_ok && host_ok && status_ok && payload_ok && argv_ok;
    if probe == Some(Probe::Exec)
        && h.command.is_none()
        && let Some(kind) = &h.kind
    {
        d.error(
            kind.span(),
            "health type \"exec\" needs command = [\"/path/to/check\", ...]",
        );
        keys_ok = false;
    }

    let interval = duration(&h.interval, "health interval", d);
    let fast_interval = duration(&h.fast_interval, "health fast_interval", d);
    let timeout = duration(&h.timeout, "health timeout", d);
    let mut timing_ok = true;
    if let Some(interval) = interval {
        let (interval, note) = match interval {
            Some(i) => (i, ""),
            None => (DEFAULT_INTERVAL, " (the default)"),
        };
        if let (Some(Some(timeout)), Some(span)) = (timeout, h.timeout.as_ref().map(|t| t.span()))
            && timeout > interval
        {
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
        if let (Some(Some(fast)), Some(span)) =
            (fast_interval, h.fast_interval.as_ref().map(|f| f.span()))
            && fast > interval
        {
            d.error(
                span,
                format!(
                    "health fast_interval {} is longer than the interval {}{note}; it is the \
                     interval while a backend changes state, meant to decide sooner, so use a \
                     fast_interval of at most {}",
                    format_duration(fast),
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
    let kind = match probe? {
        Probe::Tcp => HealthKind::Tcp,
        Probe::Http => HealthKind::Http {
            path: h
                .path
                .as_ref()
                .map_or(DEFAULT_PATH.to_owned(), |p| p.get_ref().clone()),
            host: h.host.as_ref().map(|host| host.get_ref().clone()),
            expect_status: expect_status.unwrap_or_else(|| DEFAULT_EXPECT_STATUS.to_vec()),
        },
        Probe::Udp => HealthKind::Udp {
            payload: h
                .payload
                .as_ref()
                .map_or_else(Vec::new, |p| p.get_ref().as_bytes().to_vec()),
        },
        Probe::Exec => HealthKind::Exec {
            command: h
                .command
                .as_ref()
                .map(|c| c.get_ref().0.iter().map(|a| a.get_ref().clone()).collect())?,
        },
        Probe::None => HealthKind::None,
    };
    (keys_ok && timing_ok).then_some(())?;
    Some(Health {
        kind,
        interval,
        fast_interval: fast_interval?.unwrap_or_else(|| default_fast_interval(interval)),
        // A probe may take up to the whole interval unless told otherwise.
        timeout: timeout?.unwrap_or(interval),
        rise: rise?,
        fall: fall?,
    })
}

/// A quarter of the interval, so a state change is decided about four times sooner, but no
/// more often than every 100ms (and never slower than the interval itself).
fn default_fast_interval(interval: Duration) -> Duration {
    (interval / 4).max(MIN_DEFAULT_FAST_INTERVAL).min(interval)
}

/// Operator text for quoting in a message, escaped like a TOML basic string, so that a control
/// character shows as `\r` instead of breaking the `FILE:LINE:COL: message` line.
fn esc(text: &str) -> String {
    text.escape_debug().to_string()
}

fn path_problem(text: &str) -> Option<String> {
    if !text.starts_with('/') {
        let text = esc(text);
        return Some(format!(
            "health path \"{text}\" must start with \"/\"; write \"/{text}\""
        ));
    }
    text.chars()
        .find(|c| c.is_whitespace() || c.is_control())
        .map(|bad| {
            format!(
                "health path \"{}\" contains {bad:?}, which cannot go in a request line; \
                 percent-encode it (a space is %20)",
                esc(text)
            )
        })
}

fn host_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some(
            "health host is empty; write the Host header to send, e.g. \"www.example.com\", or \
             remove `host` to send the backend's IP:PORT"
                .to_owned(),
        );
    }
    let shown = esc(text);
    if let Some(bad) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "health host \"{shown}\" contains {bad:?}, which cannot go in a Host header; write \
             only the host name and an optional :PORT, e.g. \"www.example.com\""
        ));
    }
    // `http://example.com/x` is the commonest slip: a URL where only its host belongs.
    text.contains('/').then(|| {
        format!(
            "health host \"{shown}\" contains '/'; write only the host name and an optional \
             :PORT, e.g. \"www.example.com\" (the request path goes in `path`)"
        )
    })
}

/// `expect_status`: comma-separated codes and inclusive `lo-hi` ranges, as written (in order).
fn parse_status(text: &str) -> Result<Vec<(u16, u16)>, String> {
    const EXAMPLE: &str = "e.g. \"200-399\" or \"200,204,301-302\"";
    if text.trim().is_empty() {
        return Err(format!(
            "health expect_status is empty; list the accepted status codes and ranges, {EXAMPLE}"
        ));
    }
    let shown = esc(text);
    let code = |part: &str| -> Result<u16, String> {
        let part = part.trim();
        if !part.chars().all(|c| c.is_ascii_digit()) {
            // `2xx` is how status classes are usually written; say how to write it here.
            let class = part.len() == 3
                && part.starts_with(|c: char| ('1'..='5').contains(&c))
                && part[1..].eq_ignore_ascii_case("xx");
            return Err(if class {
                let first = &part[..1];
                format!(
                    "health expect_status \"{shown}\": \"{part}\" is not a status code; write a \
                     class of codes as a range, \"{first}00-{first}99\""
                )
            } else {
                format!(
                    "health expect_status \"{shown}\": \"{}\" is not a status code; write codes \
                     and lo-hi ranges separated by commas, {EXAMPLE}",
                    esc(part)
                )
            });
        }
        match part.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(format!(
                "health expect_status \"{shown}\": {part} is not an HTTP status code; use codes \
                 from 100 to 599"
            )),
        }
    };
    text.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!(
                    "health expect_status \"{shown}\" has an empty entry; separate codes and \
                     ranges with single commas, {EXAMPLE}"
                ));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) if lo.trim().is_empty() || hi.trim().is_empty() => {
                    return Err(format!(
                        "health expect_status range \"{}\" is missing a code; write both ends, \
                         e.g. \"200-299\"",
                        esc(item)
                    ));
                }
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(item)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!(
                    "health expect_status range \"{}\" runs backwards; write the lower code \
                     first: \"{hi}-{lo}\"",
                    esc(item)
                ));
            }
            Ok((lo, hi))
        })
        .collect()
}

/// `command`: argv for execve, so no shell — the program must be an absolute path.
fn command_ok(c: &Spanned<Argv>, d: &mut Diagnostics<'_>) -> bool {
    let Some((program, args)) = c.get_ref().0.split_first() else {
        d.error(
            c.span(),
            "health command is empty; write the program and its arguments, e.g. \
             command = [\"/usr/local/bin/check\", \"--quick\"]",
        );
        return false;
    };
    let text = program.get_ref();
    let problem = if text.is_empty() {
        Some(
            "health command program is empty; the first element is the program to run, write \
             its absolute path, e.g. \"/usr/local/bin/check\""
                .to_owned(),
        )
    } else if !text.starts_with('/') {
        let base = text.rsplit('/').next().filter(|b| !b.is_empty());
        Some(format!(
            "health command program \"{}\" is not an absolute path; write its full path, e.g. \
             \"/usr/local/bin/{}\" (the command runs without a shell, so PATH is not searched)",
            esc(text),
            esc(base.unwrap_or("check"))
        ))
    } else {
        None
    };
    let mut ok = check(program, problem, d);
    // execve takes C strings: a NUL would silently cut the argument short.
    for arg in std::iter::once(program).chain(args) {
        if arg.get_ref().contains('\0') {
            d.error(
                arg.span(),
                "health command argument contains a NUL character, which a program argument \
                 cannot hold; remove it",
            );
            ok = false;
        }
    }
    ok
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
    probe: Option<Probe>,
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
        let backend = backend(b, vip, probe, d);
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
    probe: Option<Probe>,
    d: &mut Diagnostics<'_>,
) -> Option<Backend> {
    let b = dto.get_ref();
    let health_port = match &b.health_port {
        None => Some(None),
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(port) if port != 0 => {
                if probe == Some(Probe::None) {
                    d.error(
                        p.span(),
                        "health_port has no effect without a probe (this service's health type \
                         is none); remove health_port, or set a probe type in [service.health]",
                    );
                    None
                } else {
                    Some(Some(port))
                }
            }
            _ => {
                d.error(
                    p.span(),
                    format!(
                        "backend health_port {} is out of range; use a port from 1 to 65535, or \
                         remove it to probe the backend's own port",
                        p.get_ref()
                    ),
                );
                None
            }
        },
    };
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
        health_port: health_port?,
    })
}

/// `persistence`: one of the durations the table has a rule for, on an IPv4 service.
fn persistence(
    value: &Option<Spanned<super::super::dto::DurationText>>,
    listen: Option<&std::net::SocketAddr>,
    d: &mut Diagnostics<'_>,
) -> Option<Option<Duration>> {
    let parsed = duration(value, "persistence", d)?;
    let (Some(value), Some(dur)) = (value, parsed) else {
        return Some(parsed);
    };
    if crate::model::persistence_label(dur).is_none() {
        let offered: Vec<&str> = crate::model::PERSISTENCE.iter().map(|(l, _)| *l).collect();
        let nearest = crate::model::PERSISTENCE
            .iter()
            .min_by_key(|(_, secs)| dur.as_secs().abs_diff(*secs))
            .map(|(l, _)| *l)
            .unwrap_or("30m");
        d.error(
            value.span(),
            format!(
                "persistence = \"{}\" is not one of the durations natlb offers: {} (the nearest \
                 is \"{nearest}\"). Each is a fixed rule of natlb's table, so that changing a \
                 service's persistence is an element change like any other",
                value.get_ref().0,
                offered.join(", ")
            ),
        );
        return None;
    }
    if listen.is_some_and(|l| l.is_ipv6()) {
        d.error(
            value.span(),
            "persistence works on IPv4 services only for now: nft 1.0.6 cannot write the \
             dynamic map an IPv6 client needs (its key would exceed 16 bytes); remove it, or use \
             scheduler = \"source-hash\", which keeps a client on its backend without state",
        );
        return None;
    }
    Some(parsed)
}
