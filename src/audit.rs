//! How values from the network go into audit lines, logs and reply texts.
//!
//! Logins, senders and addresses arrive from clients, and the one writing them down must
//! not let a client start a new log line, split a `key=value` field, or fill the disk. The
//! decision core, the policy service, the web page and the socket doors all write these
//! lines, so the rules live here once.

use std::net::IpAddr;

/// Text from the network as one field of a line: control characters and spaces become
/// `?`, so the field stays one token on one line; at most `max` characters, and a `…`
/// marks that the text went on.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() || c == ' ' { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// The address as IPv4 when it is an IPv4-mapped IPv6 one (`::ffff:192.0.2.1`), as a
/// dual-stack socket and Postfix report IPv4 clients, so networks written as IPv4 match.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_printable_and_bounded() {
        assert_eq!(printable("a b\r\nc", 256), "a?b??c");
        let long = printable(&"x".repeat(1000), 256);
        assert_eq!(long.chars().count(), 257);
        assert!(long.ends_with('…'));
        assert_eq!(printable(&"é".repeat(128), 128), "é".repeat(128), "not cut");
        assert_eq!(printable("", 8), "");
    }

    #[test]
    fn ipv4_mapped_addresses_become_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical_ip(mapped), IpAddr::from([192, 0, 2, 7]));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
        let v4 = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(canonical_ip(v4), v4);
    }
}
