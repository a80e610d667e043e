//! The client's address behind reverse proxies.
//!
//! `X-Forwarded-For` is read only when the connection's peer is one of
//! `[web] trusted_proxies`; anyone else could write whatever they like into it. Each proxy
//! appends the address it received the request from, so the list is read from the right:
//! entries that are trusted proxies are hops of our own and are stepped over; the first one
//! that is not is the client. Everything to the left of it was written by the client (or by
//! proxies we do not know) and is never believed.
//!
//! An entry that is not a bare address is handled, never skipped: `ip:port` and `[v6]:port`
//! give their address; anything else (`unknown`, a name, garbage) ends the walk and the
//! client is taken to be the last trusted proxy that was reached, i.e. the one that wrote
//! the entry. Skipping it instead would let the next entry to the left — one the client
//! wrote — become the address that is throttled and logged.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address requests from `peer` are charged to.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several headers are one list, in order.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(text) => text.split(',').collect::<Vec<_>>(),
            // A header that is not text is an entry we cannot read.
            Err(_) => vec![""],
        })
        .collect();
    let mut reached = peer;
    for entry in entries.iter().rev() {
        match parse_entry(entry) {
            Some(ip) if is_trusted(&ip) => reached = ip,
            Some(ip) => return ip,
            None => return reached,
        }
    }
    // Every hop was one of our proxies (or there was no header): the farthest we reached.
    reached
}

/// `203.0.113.7`, `203.0.113.7:5123`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:443`, in canonical form (IPv4-mapped IPv6 as IPv4).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let h = headers(&["198.51.100.1"]);
        assert_eq!(
            client_ip(&h, ip("203.0.113.9"), &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &[]), ip("10.0.0.1"));
    }

    #[test]
    fn the_right_most_entry_that_is_not_a_proxy_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        // The client wrote the left-most entry itself; the proxy appended the real one.
        let h = headers(&["192.0.2.66, 198.51.100.7"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("198.51.100.7"));
        // Two proxies of ours: the second appended the first.
        let h = headers(&["192.0.2.66, 198.51.100.7, 10.0.0.2"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("198.51.100.7"));
        // Split across headers, in order.
        let h = headers(&["192.0.2.66", "198.51.100.7", "10.0.0.2"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("198.51.100.7"));
        // An IPv4-mapped peer is the IPv4 proxy.
        let h = headers(&["198.51.100.7"]);
        assert_eq!(
            client_ip(&h, ip("::ffff:10.0.0.1"), &trusted),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.0.0.1"), &trusted),
            ip("10.0.0.1")
        );
        // Only proxies: the farthest one.
        let h = headers(&["10.9.9.9, 10.0.0.2"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn entries_with_ports_give_their_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        for (entry, want) in [
            ("198.51.100.7:5123", "198.51.100.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            (" 2001:db8::7 ", "2001:db8::7"),
        ] {
            let h = headers(&[&format!("192.0.2.66, {entry}")]);
            assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip(want), "{entry}");
        }
    }

    #[test]
    fn an_unreadable_entry_is_never_stepped_over_to_a_forged_one() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The proxy could not tell: the client is charged as the proxy that said so, not
        // as the address the client wrote to the left.
        for bad in ["unknown", "", "_hidden", "not an address", "1.2.3.4.5"] {
            let h = headers(&[&format!("192.0.2.66, {bad}")]);
            assert_eq!(
                client_ip(&h, ip("10.0.0.1"), &trusted),
                ip("10.0.0.1"),
                "{bad:?}"
            );
            let h = headers(&[&format!("192.0.2.66, {bad}, 10.0.0.2")]);
            assert_eq!(
                client_ip(&h, ip("10.0.0.1"), &trusted),
                ip("10.0.0.2"),
                "{bad:?} behind a second proxy"
            );
        }
        let mut h = headers(&["192.0.2.66"]);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("10.0.0.1"));
    }
}
