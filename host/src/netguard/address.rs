//! Address classes: the non-global IPv4 and IPv6 ranges, IPv4 embedded in IPv6,
//! and `localhost` names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, for messages and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Global,
    Loopback,
    Private,
    LinkLocal,
    UniqueLocal,
    /// Cloud instance metadata and similar host-local control endpoints.
    Metadata,
    Unspecified,
    /// Any other special-purpose range: multicast, broadcast, documentation,
    /// CGNAT, benchmarking, protocol assignments, unallocated IPv6 space, ….
    Reserved,
}

impl AddressClass {
    pub(super) fn description(self) -> &'static str {
        match self {
            AddressClass::Global => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::UniqueLocal => "a unique-local address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

use AddressClass::{LinkLocal, Loopback, Metadata, Private, Reserved, UniqueLocal, Unspecified};

/// Non-global IPv4 ranges, first match wins (so the metadata hosts come before
/// the link-local range that holds most of them).
const V4_RANGES: &[(Ipv4Addr, u8, AddressClass)] = &[
    (Ipv4Addr::new(169, 254, 169, 254), 32, Metadata), // AWS, GCP, Azure IMDS, …
    (Ipv4Addr::new(169, 254, 170, 2), 32, Metadata),   // AWS ECS task credentials
    (Ipv4Addr::new(100, 100, 100, 200), 32, Metadata), // Alibaba Cloud
    (Ipv4Addr::new(168, 63, 129, 16), 32, Metadata),   // Azure wireserver (a public address)
    (Ipv4Addr::new(0, 0, 0, 0), 8, Unspecified),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Loopback),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Private),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Private),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Private),
    (Ipv4Addr::new(169, 254, 0, 0), 16, LinkLocal),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Reserved), // CGNAT shared space
    (Ipv4Addr::new(192, 0, 0, 0), 24, Reserved),  // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24, Reserved),  // TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24, Reserved), // 6to4 relay anycast (deprecated)
    (Ipv4Addr::new(198, 18, 0, 0), 15, Reserved), // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24, Reserved), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24, Reserved), // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4, Reserved),   // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4, Reserved),   // future use, broadcast
];

/// Non-global IPv6 ranges inside the global-unicast block 2000::/3, plus those
/// outside it that get a class of their own; everything else outside 2000::/3
/// (site-local fec0::/10, multicast ff00::/8, discard-only 100::/64, …) is
/// [`AddressClass::Reserved`]. First match wins.
const V6_RANGES: &[(Ipv6Addr, u8, AddressClass)] = &[
    // AWS IMDS
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        Metadata,
    ),
    (Ipv6Addr::UNSPECIFIED, 128, Unspecified),
    (Ipv6Addr::LOCALHOST, 128, Loopback),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, UniqueLocal),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, Reserved), // protocol assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, Reserved), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, Reserved), // documentation (RFC 9637)
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, Reserved), // SRv6 SIDs
];

/// Whether `ip` lies in `net/prefix`, both being `width`-bit addresses.
fn in_range(ip: u128, net: u128, prefix: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix);
    ip.checked_shr(host_bits) == net.checked_shr(host_bits)
}

/// The class of an address. IPv6 forms that embed an IPv4 address (mapped,
/// compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) take the class of the
/// embedded address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let bits = u128::from(u32::from(ip));
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| in_range(bits, u128::from(u32::from(*net)), *prefix, 32))
        .map_or(AddressClass::Global, |&(_, _, class)| class)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let bits = u128::from(ip);
    if let Some(&(_, _, class)) = V6_RANGES
        .iter()
        .find(|(net, prefix, _)| in_range(bits, u128::from(*net), *prefix, 128))
    {
        return class;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if bits >> 125 == 0b001 {
        AddressClass::Global
    } else {
        AddressClass::Reserved
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible
/// (`::/96`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff | 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(Ipv4Addr::from(bits as u32))
        }
        [0x2002, ..] => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

/// `localhost` and `*.localhost` are loopback by definition (RFC 6761),
/// whatever DNS says.
pub(super) fn is_localhost_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}
