//! `[daemon]`, `[conntrack]` and `[sysctl]`: the gateway-wide settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;

use super::super::addr::parse_socket_addr;
use super::super::dto::{ConntrackDto, DaemonDto};
use super::super::error::Diagnostics;
use crate::model::{CONNTRACK_KNOBS, Conntrack, Daemon};

const DEFAULT_TABLE: &str = "natlb";
pub(in crate::config) const DEFAULT_CONTROL_SOCKET: &str = "/run/natlb/control.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/natlb";
const DEFAULT_LEAST_CONN_INTERVAL: Duration = Duration::from_secs(1);
const MIN_LEAST_CONN_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_STICKY_READ_WAIT: Duration = Duration::from_millis(3);
const MAX_STICKY_READ_WAIT: Duration = Duration::from_secs(10);

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The mark bit natlb sets on a hairpin connection's first packet, unless configured otherwise.
pub const DEFAULT_HAIRPIN_MARK: u32 = 0x0010_0000;

pub(super) fn daemon(dto: &DaemonDto, d: &mut Diagnostics<'_>) -> Option<Daemon> {
    let table = match &dto.table {
        None => Some(DEFAULT_TABLE.to_owned()),
        Some(t) => table_name(t, d),
    };

    let control_socket = match &dto.control_socket {
        None => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        Some(p) => socket_path(p, d),
    };

    let control_group = match &dto.control_group {
        None => Some(None),
        Some(g) => group_name(g, d).map(Some),
    };

    let state_dir = match &dto.state_dir {
        None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        Some(p) => absolute_path("state_dir", p, DEFAULT_STATE_DIR, d),
    };

    let metrics = match &dto.metrics {
        None => Some(None),
        Some(m) => match parse_socket_addr(m.get_ref()) {
            Ok(addr) => Some(Some(addr)),
            Err(e) => {
                d.error(
                    m.span(),
                    format!("metrics address {e}; e.g. \"127.0.0.1:9469\""),
                );
                None
            }
        },
    };

    let hash_seed = match &dto.hash_seed {
        None => Some(0),
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(seed) => Some(seed),
            Err(_) => {
                d.error(
                    v.span(),
                    format!(
                        "hash_seed {} is out of range; use an integer from 0 to {} (the \
                         kernel's jhash takes a 32-bit seed)",
                        v.get_ref(),
                        u32::MAX
                    ),
                );
                None
            }
        },
    };

    let hairpin_mark = match &dto.hairpin_mark {
        None => Some(DEFAULT_HAIRPIN_MARK),
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(mark) if mark != 0 => Some(mark),
            _ => {
                d.error(
                    v.span(),
                    format!(
                        "hairpin_mark {} is not a usable packet mark; use a nonzero 32-bit mask, \
                         one bit your routing and firewall leave alone, e.g. 0x{DEFAULT_HAIRPIN_MARK:08x}",
                        v.get_ref()
                    ),
                );
                None
            }
        },
    };

    let least_conn_interval =
        match super::duration(&dto.least_conn_interval, "least_conn_interval", d) {
            Some(Some(v)) if v < MIN_LEAST_CONN_INTERVAL => {
                if let Some(span) = dto.least_conn_interval.as_ref().map(|v| v.span()) {
                    d.error(
                        span,
                        format!(
                            "least_conn_interval {v:?} is too short; use 100ms or more (each one \
                         dumps the conntrack table)"
                        ),
                    );
                }
                None
            }
            Some(v) => Some(v.unwrap_or(DEFAULT_LEAST_CONN_INTERVAL)),
            None => None,
        };

    // Zero is allowed: never wait, always delete the entries in a batch of their own.
    let sticky_read_wait = match super::duration_with(
        &dto.sticky_read_wait,
        "sticky_read_wait",
        d,
        super::super::duration::parse_duration_or_zero,
    ) {
        Some(Some(v)) if v > MAX_STICKY_READ_WAIT => {
            if let Some(span) = dto.sticky_read_wait.as_ref().map(|v| v.span()) {
                d.error(
                    span,
                    format!(
                        "sticky_read_wait {v:?} is too long; use 10s or less (a withdrawal \
                         waits this long before it is committed)"
                    ),
                );
            }
            None
        }
        Some(v) => Some(v.unwrap_or(DEFAULT_STICKY_READ_WAIT)),
        None => None,
    };

    Some(Daemon {
        table: table?,
        control_socket: control_socket?,
        control_group: control_group?,
        state_dir: state_dir?,
        metrics: metrics?,
        keep_rules_on_exit: dto.keep_rules_on_exit.unwrap_or(true),
        hash_seed: hash_seed?,
        hairpin_mark: hairpin_mark?,
        least_conn_interval: least_conn_interval?,
        sticky_read_wait: sticky_read_wait?,
    })
}

/// nft identifiers: a letter, then letters, digits, `_` and `-`. Kept to this portable subset
/// (nft itself also allows `.`, `/` and `\`) so the name needs no quoting in scripts.
fn table_name(t: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<String> {
    let name = t.get_ref();
    let valid = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Some(name.clone())
    } else {
        d.error(
            t.span(),
            format!(
                "table name \"{name}\" is not a valid nftables identifier; start with a letter \
                 and use only letters, digits, `_` and `-`, at most 64 characters"
            ),
        );
        None
    }
}

/// A group name as `useradd`/`groupadd` accept them. Whether the group exists is checked when
/// the daemon creates the socket: a config may be checked on another machine.
fn group_name(g: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<String> {
    let name = g.get_ref();
    let valid = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Some(name.clone())
    } else {
        d.error(
            g.span(),
            format!(
                "control_group \"{name}\" is not a group name; use the name of an existing \
                 group (letters, digits, `_`, `-`, `.`), e.g. \"natlb\""
            ),
        );
        None
    }
}

fn socket_path(p: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<PathBuf> {
    let path = absolute_path("control_socket", p, DEFAULT_CONTROL_SOCKET, d)?;
    let len = p.get_ref().len();
    if len > MAX_SOCKET_PATH {
        d.error(
            p.span(),
            format!(
                "control_socket \"{}\" is {len} bytes long; a unix socket path can be at most \
                 {MAX_SOCKET_PATH}, so choose a shorter one",
                p.get_ref()
            ),
        );
        return None;
    }
    Some(path)
}

fn absolute_path(
    what: &str,
    p: &Spanned<String>,
    example: &str,
    d: &mut Diagnostics<'_>,
) -> Option<PathBuf> {
    let text = p.get_ref();
    if text.starts_with('/') && text.len() > 1 && !text.contains('\0') {
        Some(PathBuf::from(text))
    } else {
        d.error(
            p.span(),
            format!("{what} \"{text}\" is not an absolute path; write e.g. \"{example}\""),
        );
        None
    }
}

/// The integer `[conntrack]` keys with their values, in `CONNTRACK_KNOBS` order.
fn conntrack_ints(dto: &ConntrackDto) -> [(&'static str, &Option<Spanned<i64>>); 9] {
    [
        ("max", &dto.max),
        ("buckets", &dto.buckets),
        ("tcp_timeout_established", &dto.tcp_timeout_established),
        ("tcp_timeout_time_wait", &dto.tcp_timeout_time_wait),
        ("tcp_timeout_close_wait", &dto.tcp_timeout_close_wait),
        ("udp_timeout", &dto.udp_timeout),
        ("udp_timeout_stream", &dto.udp_timeout_stream),
        ("icmp_timeout", &dto.icmp_timeout),
        ("generic_timeout", &dto.generic_timeout),
    ]
}

fn conntrack_bools(dto: &ConntrackDto) -> [(&'static str, Option<bool>); 2] {
    [
        ("tcp_loose", dto.tcp_loose),
        ("tcp_be_liberal", dto.tcp_be_liberal),
    ]
}

/// Whether `[conntrack]` sets the knob under `key`.
fn conntrack_sets(dto: &ConntrackDto, key: &str) -> bool {
    conntrack_ints(dto)
        .iter()
        .any(|(k, v)| *k == key && v.is_some())
        || conntrack_bools(dto)
            .iter()
            .any(|(k, v)| *k == key && v.is_some())
}

pub(super) fn conntrack(dto: &ConntrackDto, d: &mut Diagnostics<'_>) -> Option<Conntrack> {
    let mut ok = true;
    let mut out = Conntrack::default();
    for (key, value) in conntrack_ints(dto) {
        let Some(value) = value else { continue };
        match u64::try_from(*value.get_ref()) {
            Ok(v) if v > 0 => {
                out.knobs.insert(key, v);
            }
            _ => {
                d.error(
                    value.span(),
                    format!(
                        "conntrack {key} must be a positive integer, not {}; remove it to keep \
                         the kernel's value",
                        value.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    for (key, value) in conntrack_bools(dto) {
        if let Some(v) = value {
            out.knobs.insert(key, u64::from(v));
        }
    }
    if let Some(p) = &dto.warn_percent {
        match u8::try_from(*p.get_ref()) {
            Ok(v) if (1..=100).contains(&v) => out.warn_percent = v,
            _ => {
                d.error(
                    p.span(),
                    format!(
                        "conntrack warn_percent must be from 1 to 100 (a percentage of \
                         nf_conntrack_max), not {}",
                        p.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    match super::duration(&dto.check_interval, "check_interval", d) {
        Some(Some(v)) => out.check_interval = v,
        Some(None) => {}
        None => ok = false,
    }
    ok.then_some(out)
}

pub(super) fn sysctl(
    dto: &BTreeMap<Spanned<String>, Spanned<i64>>,
    conntrack: &ConntrackDto,
    d: &mut Diagnostics<'_>,
) -> Option<BTreeMap<String, i64>> {
    let mut ok = true;
    let mut out = BTreeMap::new();
    for (name, value) in dto {
        let text = name.get_ref();
        if let Some(problem) = sysctl_name_problem(text) {
            d.error(name.span(), format!("sysctl \"{text}\" {problem}"));
            ok = false;
            continue;
        }
        // Two places setting one knob would race at startup; make the operator pick one.
        let set_by_conntrack = CONNTRACK_KNOBS
            .iter()
            .find(|(key, sysctl, _)| sysctl == text && conntrack_sets(conntrack, key));
        if let Some((key, _, _)) = set_by_conntrack {
            d.error(
                name.span(),
                format!(
                    "sysctl \"{text}\" is also set by `{key}` in [conntrack]; set it in one \
                     place only"
                ),
            );
            ok = false;
            continue;
        }
        out.insert(text.clone(), *value.get_ref());
    }
    ok.then_some(out)
}

/// Sysctl names become paths under /proc/sys (dots are separators, `/` stands for a dot inside
/// one component, as in `net.ipv4.conf.eth0/100.rp_filter`), so they must stay inside net/ and
/// must not be able to climb out of it.
fn sysctl_name_problem(name: &str) -> Option<String> {
    if !name.starts_with("net.") {
        return Some(
            "is not a network sysctl; natlb only sets names under net. (e.g. \
             \"net.ipv4.ip_forward\")"
                .to_owned(),
        );
    }
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '*'))
    {
        return Some(format!("contains {bad:?}, which no sysctl name has"));
    }
    if name.split('.').any(|part| part.chars().all(|c| c == '/')) {
        return Some(
            "has an empty component; write names as dot-separated words, e.g. \
             \"net.ipv4.ip_forward\""
                .to_owned(),
        );
    }
    None
}
