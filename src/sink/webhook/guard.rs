//! The SSRF guard: which addresses a webhook may connect to, and a DNS resolver that only
//! hands out those.
//!
//! Refused by default: loopback, unspecified and "this network", private (RFC 1918, IPv6
//! unique local and site-local), shared address space (CGNAT), link-local (where cloud
//! metadata services live: 169.254.169.254, fd00:ec2::254), multicast, broadcast and the
//! other reserved, benchmarking and documentation ranges. IPv6 forms that embed an IPv4
//! address (IPv4-mapped, IPv4-translated, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged
//! by the IPv4 address they carry; deprecated IPv4-compatible addresses and Teredo are
//! refused outright.
//!
//! Applied to the address of every connection: [`GuardedResolver`] is the HTTP client's
//! resolver, so a host name that resolves (or re-resolves, DNS rebinding) to a refused
//! address never gets a connection. The client skips the resolver for IP-literal URLs; the
//! webhook config refuses those at startup instead ([`refusal`]).
//!
//! Pure classification plus one `getaddrinfo` per new connection; must not log (the sink's
//! errors carry the refusal to the caller).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A refused IPv4 range: network, prefix length, what it is.
type V4Range = ([u8; 4], u8, &'static str);
/// A refused IPv6 range: network, prefix length, what it is.
type V6Range = ([u16; 8], u8, &'static str);

/// IPv4 ranges no webhook may reach by default (IANA special-purpose registry, minus the
/// globally reachable ones).
const V4_REFUSED: &[V4Range] = &[
    ([0, 0, 0, 0], 8, "\"this network\""),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "shared (carrier-grade NAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "IETF protocol assignment"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 88, 99, 0], 24, "reserved (6to4 relay anycast)"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([255, 255, 255, 255], 32, "broadcast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

/// IPv6 ranges refused outright (the ones embedding an IPv4 address are in [`embedded_v4`]).
const V6_REFUSED: &[V6Range] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    ([0, 0, 0, 0, 0, 0, 0, 0], 96, "reserved (IPv4-compatible)"),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "private (local-use NAT64)",
    ),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "reserved (discard-only)"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "reserved (Teredo)"),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "private (unique local)"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "private (site-local)"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

/// Why an address is refused: the range it falls in, and how an IPv6 address carried the
/// IPv4 one when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// What the range is, e.g. `loopback`.
    pub kind: &'static str,
    /// The range, e.g. `127.0.0.0/8`.
    pub range: Range,
    /// `Some("IPv4-mapped")` when an IPv6 address was judged by the IPv4 address it embeds.
    pub via: Option<&'static str>,
}

/// A network and prefix length, printed in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub network: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `loopback address (127.0.0.0/8)`, `IPv4-mapped loopback address (127.0.0.0/8)`.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(via) = self.via {
            write!(f, "{via} ")?;
        }
        write!(f, "{} address ({})", self.kind, self.range)
    }
}

/// Why `ip` may not receive webhooks, or `None` when it may (a globally routable address).
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some((via, v4)) = embedded_v4(v6) {
                return refusal_v4(v4).map(|refusal| Refusal {
                    via: Some(via),
                    ..refusal
                });
            }
            let bits = u128::from(v6);
            V6_REFUSED
                .iter()
                .find(|(network, prefix, _)| {
                    in_range(bits, u128::from(Ipv6Addr::from(*network)), *prefix, 128)
                })
                .map(|&(network, prefix, kind)| Refusal {
                    kind,
                    range: Range {
                        network: IpAddr::V6(Ipv6Addr::from(network)),
                        prefix,
                    },
                    via: None,
                })
        }
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let bits = u128::from(u32::from(ip));
    V4_REFUSED
        .iter()
        .find(|(network, prefix, _)| {
            in_range(
                bits,
                u128::from(u32::from(Ipv4Addr::from(*network))),
                *prefix,
                32,
            )
        })
        .map(|&(network, prefix, kind)| Refusal {
            kind,
            range: Range {
                network: IpAddr::V4(Ipv4Addr::from(network)),
                prefix,
            },
            via: None,
        })
}

/// Whether the `width`-bit address `bits` lies in `network/prefix`.
fn in_range(bits: u128, network: u128, prefix: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix);
    host_bits >= width || (bits >> host_bits) == (network >> host_bits)
}

/// The IPv4 address an IPv6 address stands for, with the name of the form: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`)
/// and 6to4 (`2002:aabb:ccdd::/48`). A connection to one of these can reach the IPv4
/// address (the kernel maps the first, gateways the others).
fn embedded_v4(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let s = ip.segments();
    let o = ip.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(("IPv4-mapped", low)),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(("IPv4-translated", low)),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(("NAT64", low)),
        [0x2002, ..] => Some(("6to4", Ipv4Addr::new(o[2], o[3], o[4], o[5]))),
        _ => None,
    }
}

/// A host name resolved only to refused addresses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("host {host:?} resolves to {ip}, a {refusal}")]
pub struct AddressRefused {
    pub host: String,
    /// The first refused address (the one named).
    pub ip: IpAddr,
    pub refusal: Refusal,
}

/// Resolves with the system resolver (`getaddrinfo`, as the HTTP client does by default)
/// and keeps only the addresses [`refusal`] allows. A name with none left fails with
/// [`AddressRefused`], which the sink finds in the error chain and reports as permanent.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl GuardedResolver {
    /// The allowed addresses of `host` (with port `port`). Errors: the lookup failed, or
    /// every address is refused.
    pub async fn lookup(
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolved = tokio::net::lookup_host((host, port)).await?;
        let mut allowed = Vec::new();
        let mut refused = None;
        for address in resolved {
            match refusal(address.ip()) {
                None => allowed.push(address),
                Some(why) => {
                    refused.get_or_insert((address.ip(), why));
                }
            }
        }
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some((ip, refusal))) => Err(Box::new(AddressRefused {
                host: host.to_owned(),
                ip,
                refusal,
            })),
            (true, None) => Err(format!("host {host:?} resolved to no addresses").into()),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts in the URL's port.
            let allowed = Self::lookup(&host, 0).await?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> Option<String> {
        refusal(ip.parse().unwrap()).map(|r| r.to_string())
    }

    #[test]
    fn ipv4_special_ranges_are_refused_with_their_name() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback address (127.0.0.0/8)"),
            ("127.255.255.254", "loopback address (127.0.0.0/8)"),
            ("0.0.0.0", "\"this network\" address (0.0.0.0/8)"),
            ("10.1.2.3", "private address (10.0.0.0/8)"),
            ("172.16.0.1", "private address (172.16.0.0/12)"),
            ("172.31.255.255", "private address (172.16.0.0/12)"),
            ("192.168.1.1", "private address (192.168.0.0/16)"),
            (
                "100.64.0.1",
                "shared (carrier-grade NAT) address (100.64.0.0/10)",
            ),
            (
                "100.127.255.255",
                "shared (carrier-grade NAT) address (100.64.0.0/10)",
            ),
            (
                "169.254.169.254",
                "link-local (cloud metadata) address (169.254.0.0/16)",
            ),
            (
                "192.0.0.170",
                "IETF protocol assignment address (192.0.0.0/24)",
            ),
            ("192.0.2.1", "documentation address (192.0.2.0/24)"),
            ("198.18.0.1", "benchmarking address (198.18.0.0/15)"),
            ("203.0.113.9", "documentation address (203.0.113.0/24)"),
            ("224.0.0.1", "multicast address (224.0.0.0/4)"),
            ("239.255.255.250", "multicast address (224.0.0.0/4)"),
            ("255.255.255.255", "broadcast address (255.255.255.255/32)"),
            ("240.0.0.1", "reserved address (240.0.0.0/4)"),
        ] {
            assert_eq!(refused(ip).as_deref(), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "192.169.0.1",
            "11.0.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_refused_with_their_name() {
        for (ip, expected) in [
            ("::", "unspecified address (::/128)"),
            ("::1", "loopback address (::1/128)"),
            ("fe80::1", "link-local address (fe80::/10)"),
            ("febf::1", "link-local address (fe80::/10)"),
            ("fc00::1", "private (unique local) address (fc00::/7)"),
            ("fd00:ec2::254", "private (unique local) address (fc00::/7)"),
            ("fec0::1", "private (site-local) address (fec0::/10)"),
            ("ff02::1", "multicast address (ff00::/8)"),
            ("2001:db8::1", "documentation address (2001:db8::/32)"),
            (
                "2001:0:4136:e378::1",
                "reserved (Teredo) address (2001::/32)",
            ),
            ("::7f00:1", "reserved (IPv4-compatible) address (::/96)"),
            (
                "64:ff9b:1::1",
                "private (local-use NAT64) address (64:ff9b:1::/48)",
            ),
            ("100::1", "reserved (discard-only) address (100::/64)"),
        ] {
            assert_eq!(refused(ip).as_deref(), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_refused_ipv4_addresses_are_refused() {
        for (ip, expected) in [
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped loopback address (127.0.0.0/8)",
            ),
            (
                "::ffff:7f00:1",
                "IPv4-mapped loopback address (127.0.0.0/8)",
            ),
            (
                "::ffff:169.254.169.254",
                "IPv4-mapped link-local (cloud metadata) address (169.254.0.0/16)",
            ),
            (
                "::ffff:10.0.0.1",
                "IPv4-mapped private address (10.0.0.0/8)",
            ),
            (
                "::ffff:0.0.0.0",
                "IPv4-mapped \"this network\" address (0.0.0.0/8)",
            ),
            (
                "::ffff:0:192.168.0.1",
                "IPv4-translated private address (192.168.0.0/16)",
            ),
            ("64:ff9b::127.0.0.1", "NAT64 loopback address (127.0.0.0/8)"),
            (
                "64:ff9b::a9fe:a9fe",
                "NAT64 link-local (cloud metadata) address (169.254.0.0/16)",
            ),
            ("2002:7f00:1::", "6to4 loopback address (127.0.0.0/8)"),
            ("2002:c0a8:101::1", "6to4 private address (192.168.0.0/16)"),
        ] {
            assert_eq!(refused(ip).as_deref(), Some(expected), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        let error = GuardedResolver::lookup("localhost", 80).await.unwrap_err();
        let refused = error
            .downcast_ref::<AddressRefused>()
            .unwrap_or_else(|| panic!("not a refusal: {error}"));
        assert_eq!(refused.host, "localhost");
        assert!(refused.ip.is_loopback(), "{refused}");
        assert!(
            refused
                .to_string()
                .starts_with("host \"localhost\" resolves to "),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("loopback address"),
            "{refused}"
        );
    }
}
