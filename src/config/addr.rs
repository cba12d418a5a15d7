//! Address syntax: `IP[:PORT]` endpoints, CIDR prefixes and SNAT ranges.
//!
//! Errors are phrases that begin with the quoted input (`"10.0.1.11:0" has port 0; …`) so each
//! caller can prefix what the value was (`backend address `, `listen address `).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::IpNet;

pub(super) fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or bare `2001:db8::1`;
/// the port is `None` when not given. Port 0 is refused: it cannot be matched or connected to.
pub(super) fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    endpoint(s, false)
}

/// Parses `1.2.3.4:80` or `[2001:db8::1]:80`: an endpoint whose port is required.
pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    match endpoint(s, true)? {
        (ip, Some(port)) => Ok(SocketAddr::new(ip, port)),
        (ip, None) => {
            let example = match ip {
                IpAddr::V4(_) => format!("{ip}:PORT"),
                IpAddr::V6(_) => format!("[{ip}]:PORT"),
            };
            Err(format!("\"{s}\" has no port; write it as \"{example}\""))
        }
    }
}

fn endpoint(s: &str, port_required: bool) -> Result<(IpAddr, Option<u16>), String> {
    let syntax = || {
        if port_required {
            format!(
                "\"{s}\" is not IP:PORT (write IPv6 as [addr]:port; host names are not \
                 supported)"
            )
        } else {
            format!(
                "\"{s}\" is not an IP address or IP:PORT (write IPv6 as [addr]:port; host \
                 names are not supported)"
            )
        }
    };
    if s.contains('%') {
        return Err(format!(
            "\"{s}\" has an IPv6 scope id; link-local scoped addresses are not supported, use a \
             global or unique-local address"
        ));
    }

    let (ip, port_text) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(syntax)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| syntax())?;
        let port_text = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(syntax)?),
        };
        (IpAddr::V6(ip), port_text)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        // Bare address; for IPv6 this also takes `2001:db8::1:80` as an address, which is why
        // IPv6 endpoints with a port must use brackets.
        (ip, None)
    } else {
        let (host, port_text) = s.rsplit_once(':').ok_or_else(syntax)?;
        let ip: Ipv4Addr = host.parse().map_err(|_| syntax())?;
        (IpAddr::V4(ip), Some(port_text))
    };

    match port_text {
        None => Ok((ip, None)),
        Some(text) => Ok((ip, Some(parse_port(s, text)?))),
    }
}

fn parse_port(s: &str, text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{s}\" has an invalid port \"{text}\"; use a number from 1 to 65535"
        ));
    }
    match text.parse::<u16>() {
        Ok(0) => Err(format!("\"{s}\" has port 0; use a port from 1 to 65535")),
        Ok(port) => Ok(port),
        Err(_) => Err(format!(
            "\"{s}\" has port {text}, out of range; use a port from 1 to 65535"
        )),
    }
}

/// Why an address cannot be a VIP, backend or SNAT address, if it cannot.
pub(super) fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// Parses a prefix `10.0.0.0/16` or a single address `10.0.0.1` (taken as `/32`, `/128`).
/// A prefix with host bits set is refused rather than silently truncated: `10.0.0.1/16` may be a
/// typo for `10.0.0.1/32` as easily as for `10.0.0.0/16`.
pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!("\"{s}\" is not an address prefix; write e.g. \"10.0.0.0/16\" or \"fd00::/8\"")
    })?;
    let max = max_prefix(addr);
    let prefix = match prefix_text {
        None => max,
        // Digits only: `u8::from_str` would also take a leading `+`.
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "\"{s}\" has an invalid prefix length \"{p}\"; use 0 to {max} for an {} \
                     prefix",
                    family(addr)
                ));
            }
        },
    };
    let network = mask(addr, prefix);
    if network != addr {
        return Err(format!(
            "\"{s}\" has host bits set; did you mean \"{network}/{prefix}\"?"
        ));
    }
    Ok(IpNet { addr, prefix })
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with all bits after the first `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// One egress SNAT target: an address (`203.0.113.5`) or an inclusive range
/// (`203.0.113.5-203.0.113.9`). Returns the first and last address.
pub(super) fn parse_snat_target(s: &str) -> Result<(IpAddr, IpAddr), String> {
    let parse = |part: &str| {
        part.trim().parse::<IpAddr>().map_err(|_| {
            if part.contains('/') {
                format!(
                    "\"{s}\" is a prefix; write an address range as first-last, e.g. \
                     \"203.0.113.0-203.0.113.255\""
                )
            } else {
                format!(
                    "\"{s}\" is not an address or range; write e.g. \"203.0.113.5\" or \
                     \"203.0.113.5-203.0.113.9\""
                )
            }
        })
    };
    let (first, last) = match s.split_once('-') {
        None => {
            let ip = parse(s)?;
            (ip, ip)
        }
        Some((a, b)) => (parse(a)?, parse(b)?),
    };
    if family(first) != family(last) {
        return Err(format!(
            "range \"{s}\" mixes an {} and an {} address; both ends must be of one family",
            family(first),
            family(last)
        ));
    }
    if first > last {
        return Err(format!(
            "range \"{s}\" runs backwards; write the lower address first: \"{last}-{first}\""
        ));
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("10.0.1.11:8080"),
            Ok((ip("10.0.1.11"), Some(8080)))
        );
        assert_eq!(parse_endpoint("10.0.1.11"), Ok((ip("10.0.1.11"), None)));
        assert_eq!(
            parse_socket_addr("[2001:db8::1]:80"),
            Ok("[2001:db8::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint("[2001:db8::1]"),
            Ok((ip("2001:db8::1"), None))
        );
        assert_eq!(parse_endpoint("2001:db8::1"), Ok((ip("2001:db8::1"), None)));
    }

    #[test]
    fn endpoint_errors() {
        let err = |s| parse_endpoint(s).unwrap_err();
        let sock_err = |s| parse_socket_addr(s).unwrap_err();
        assert_eq!(
            sock_err("10.0.1.11"),
            "\"10.0.1.11\" has no port; write it as \"10.0.1.11:PORT\""
        );
        assert_eq!(
            sock_err("2001:db8::1"),
            "\"2001:db8::1\" has no port; write it as \"[2001:db8::1]:PORT\""
        );
        assert!(sock_err("").contains("is not IP:PORT"));
        assert_eq!(
            err("10.0.1.11:0"),
            "\"10.0.1.11:0\" has port 0; use a port from 1 to 65535"
        );
        assert!(err("10.0.1.11:65536").contains("out of range"));
        assert!(err("10.0.1.11:+80").contains("invalid port \"+80\""));
        assert!(err("10.0.1.11:").contains("invalid port \"\""));
        assert!(err("web1:80").contains("host names are not supported"));
        assert!(err("[2001:db8::1]80").contains("is not an IP address"));
        assert!(err("[10.0.0.1]:80").contains("is not an IP address"));
        assert!(err("[fe80::1%eth0]:80").contains("scope id"));
    }

    #[test]
    fn nets() {
        assert_eq!(
            parse_net("10.0.0.0/16"),
            Ok(IpNet {
                addr: ip("10.0.0.0"),
                prefix: 16
            })
        );
        assert_eq!(
            parse_net("fd00::/8"),
            Ok(IpNet {
                addr: ip("fd00::"),
                prefix: 8
            })
        );
        assert_eq!(
            parse_net("10.0.0.7"),
            Ok(IpNet {
                addr: ip("10.0.0.7"),
                prefix: 32
            })
        );
        assert_eq!(
            parse_net("0.0.0.0/0"),
            Ok(IpNet {
                addr: ip("0.0.0.0"),
                prefix: 0
            })
        );
        assert_eq!(
            parse_net("10.0.0.1/16").unwrap_err(),
            "\"10.0.0.1/16\" has host bits set; did you mean \"10.0.0.0/16\"?"
        );
        assert!(
            parse_net("10.0.0.0/33")
                .unwrap_err()
                .contains("use 0 to 32")
        );
        assert!(
            parse_net("fd00::/129")
                .unwrap_err()
                .contains("use 0 to 128")
        );
        assert!(
            parse_net("10.0.0.0/+8")
                .unwrap_err()
                .contains("invalid prefix")
        );
        assert!(
            parse_net("lan")
                .unwrap_err()
                .contains("not an address prefix")
        );
    }

    #[test]
    fn snat_targets() {
        assert_eq!(
            parse_snat_target("203.0.113.5"),
            Ok((ip("203.0.113.5"), ip("203.0.113.5")))
        );
        assert_eq!(
            parse_snat_target("203.0.113.5-203.0.113.9"),
            Ok((ip("203.0.113.5"), ip("203.0.113.9")))
        );
        assert_eq!(
            parse_snat_target("2001:db8::1 - 2001:db8::5"),
            Ok((ip("2001:db8::1"), ip("2001:db8::5")))
        );
        assert!(
            parse_snat_target("203.0.113.9-203.0.113.5")
                .unwrap_err()
                .contains("\"203.0.113.5-203.0.113.9\"")
        );
        assert!(
            parse_snat_target("203.0.113.9-2001:db8::1")
                .unwrap_err()
                .contains("mixes an IPv4 and an IPv6")
        );
        assert!(
            parse_snat_target("203.0.113.0/24")
                .unwrap_err()
                .contains("prefix")
        );
        assert!(
            parse_snat_target("x")
                .unwrap_err()
                .contains("not an address")
        );
    }
}
