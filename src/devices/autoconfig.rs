//! Mozilla autoconfig (`config-v1.1.xml`): what Thunderbird, Thunderbird for Android,
//! Evolution and others fetch from `autoconfig.<domain>` to fill in the servers.
//!
//! One `incomingServer` per configured IMAP and POP3 server (IMAP first, so clients that
//! take the first one pick it), one `outgoingServer` for submission. ManageSieve has no
//! element in this format and is left out. The user name is the `%EMAILADDRESS%`
//! placeholder: the answer never depends on whether a mailbox exists. Every value is
//! XML-escaped, the site title included, since an operator may put `&` or `<` in it.

use std::fmt::Write;

use quick_xml::escape::escape;

use super::{ClientSettings, Security, Server};

/// The document for `domain`, with `%EMAILADDRESS%` as the user name; `site` names the
/// provider (the web page's title).
pub fn document(settings: &ClientSettings, domain: &str, site: &str) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str("<clientConfig version=\"1.1\">\n");
    let _ = writeln!(xml, "  <emailProvider id=\"{}\">", escape(domain));
    let _ = writeln!(xml, "    <domain>{}</domain>", escape(domain));
    let _ = writeln!(xml, "    <displayName>{}</displayName>", escape(site));
    let _ = writeln!(
        xml,
        "    <displayShortName>{}</displayShortName>",
        escape(site)
    );
    let servers = [
        ("incomingServer", "imap", &settings.imap),
        ("incomingServer", "pop3", &settings.pop3),
        ("outgoingServer", "smtp", &settings.smtp),
    ];
    for (element, kind, server) in servers {
        if let Some(server) = server {
            server_element(&mut xml, element, kind, server);
        }
    }
    xml.push_str("  </emailProvider>\n</clientConfig>\n");
    xml
}

fn server_element(xml: &mut String, element: &str, kind: &str, server: &Server) {
    let socket = match server.security {
        Security::Tls => "SSL",
        Security::StartTls => "STARTTLS",
    };
    let _ = writeln!(xml, "    <{element} type=\"{kind}\">");
    let _ = writeln!(xml, "      <hostname>{}</hostname>", escape(&server.host));
    let _ = writeln!(xml, "      <port>{}</port>", server.port);
    let _ = writeln!(xml, "      <socketType>{socket}</socketType>");
    xml.push_str("      <authentication>password-cleartext</authentication>\n");
    xml.push_str("      <username>%EMAILADDRESS%</username>\n");
    let _ = writeln!(xml, "    </{element}>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures;
    use crate::devices::fixtures::{values, xml_leaves};

    #[test]
    fn every_configured_server_is_listed_with_its_security() {
        let xml = document(&fixtures::settings(), "example.org", "Example Mail");
        let leaves = xml_leaves(&xml);
        let provider = "clientConfig/emailProvider";
        assert_eq!(values(&leaves, "clientConfig/@version"), ["1.1"]);
        assert_eq!(values(&leaves, &format!("{provider}/@id")), ["example.org"]);
        assert_eq!(
            values(&leaves, &format!("{provider}/domain")),
            ["example.org"]
        );
        assert_eq!(
            values(&leaves, &format!("{provider}/displayName")),
            ["Example Mail"]
        );
        let incoming = format!("{provider}/incomingServer");
        assert_eq!(
            values(&leaves, &format!("{incoming}/@type")),
            ["imap", "pop3"]
        );
        assert_eq!(
            values(&leaves, &format!("{incoming}/hostname")),
            ["imap.example.org", "pop.example.org"]
        );
        assert_eq!(values(&leaves, &format!("{incoming}/port")), ["993", "995"]);
        assert_eq!(
            values(&leaves, &format!("{incoming}/socketType")),
            ["SSL", "SSL"]
        );
        let outgoing = format!("{provider}/outgoingServer");
        assert_eq!(values(&leaves, &format!("{outgoing}/@type")), ["smtp"]);
        assert_eq!(
            values(&leaves, &format!("{outgoing}/hostname")),
            ["smtp.example.org"]
        );
        assert_eq!(values(&leaves, &format!("{outgoing}/port")), ["587"]);
        assert_eq!(
            values(&leaves, &format!("{outgoing}/socketType")),
            ["STARTTLS"]
        );
        for server in [incoming, outgoing] {
            for v in values(&leaves, &format!("{server}/authentication")) {
                assert_eq!(v, "password-cleartext");
            }
            for v in values(&leaves, &format!("{server}/username")) {
                assert_eq!(v, "%EMAILADDRESS%");
            }
        }
        assert!(!xml.contains("4190"), "ManageSieve has no place here");
    }

    #[test]
    fn servers_switched_off_are_left_out() {
        let mut settings = fixtures::settings();
        settings.pop3 = None;
        settings.smtp = None;
        let leaves = xml_leaves(&document(&settings, "example.org", "Mail"));
        assert_eq!(
            values(&leaves, "clientConfig/emailProvider/incomingServer/@type"),
            ["imap"]
        );
        assert!(values(&leaves, "clientConfig/emailProvider/outgoingServer/@type").is_empty());
    }

    #[test]
    fn a_hostile_site_title_is_escaped() {
        let site = "</displayName><script>x</script> & \"Co\"";
        let xml = document(&fixtures::settings(), "example.org", site);
        assert!(!xml.contains("<script>"));
        let leaves = xml_leaves(&xml);
        assert_eq!(
            values(&leaves, "clientConfig/emailProvider/displayName"),
            [site]
        );
        assert_eq!(
            values(&leaves, "clientConfig/emailProvider/displayShortName"),
            [site]
        );
    }
}
