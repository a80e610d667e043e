//! Microsoft Autodiscover, the plain-old-XML (POX) kind Outlook and many phones post to
//! `/autodiscover/autodiscover.xml`: the request's `EMailAddress` in, IMAP and SMTP
//! settings out.
//!
//! The request comes from anyone on the internet, so reading it is strict and bounded:
//! - at most [`MAX_REQUEST`] bytes are looked at; a bigger body is refused unread;
//! - a DOCTYPE is refused outright: a request has no use for one, and a DTD is how entity
//!   expansion attacks (billion laughs, external entities) get in;
//! - entities are never expanded: only the five predefined ones and character references
//!   are read, anything else (`&xxe;`) makes the request malformed;
//! - the root must be `Autodiscover`, every element closed; namespaces are not checked,
//!   since clients differ in the request schema they name.
//!
//! The answer is the Outlook 2006a response schema with one `Protocol` per configured IMAP,
//! POP3 and submission server. `SSL` is `on` for TLS from the first byte; `Encryption`
//! (which overrides `SSL` in clients that know it) says `SSL` or `TLS` (STARTTLS). The
//! address is echoed only as the login name, escaped, and the answer is the same whether
//! or not a mailbox exists.

use std::fmt::Write;

use quick_xml::escape::escape;
use quick_xml::events::Event;

use super::{ClientSettings, Security, Server};

/// The largest request body read: a real request is a few hundred bytes.
pub const MAX_REQUEST: usize = 16 * 1024;

/// The request could not be read as an Autodiscover request.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("not an Autodiscover request: {0}")]
pub struct Malformed(pub String);

fn malformed(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

/// The `EMailAddress` of a request body, `None` when it names none.
pub fn requested_address(body: &[u8]) -> Result<Option<String>, Malformed> {
    if body.len() > MAX_REQUEST {
        return Err(malformed(format!("the body is over {MAX_REQUEST} bytes")));
    }
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut buf = Vec::new();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut seen_root = false;
    let mut address: Option<String> = None;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        match event {
            Event::DocType(_) => return Err(malformed("a DOCTYPE is not accepted")),
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                if path.is_empty() {
                    if seen_root || name != b"Autodiscover" {
                        return Err(malformed("the root element is not Autodiscover"));
                    }
                    seen_root = true;
                }
                path.push(name);
            }
            Event::Empty(_) if path.is_empty() => {
                return Err(malformed("the root element is not Autodiscover"));
            }
            Event::Empty(_) => {}
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| malformed(format!("an entity that is not read: {e}")))?;
                if in_address(&path) {
                    address.get_or_insert_with(String::new).push_str(&text);
                } else if path.is_empty() && !text.trim().is_empty() {
                    return Err(malformed("text outside the Autodiscover element"));
                }
            }
            Event::CData(c) => {
                if in_address(&path) {
                    let text = std::str::from_utf8(&c)
                        .map_err(|_| malformed("the address is not UTF-8"))?;
                    address.get_or_insert_with(String::new).push_str(text);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
        buf.clear();
    }
    if !seen_root || !path.is_empty() {
        return Err(malformed("no complete Autodiscover element"));
    }
    Ok(address
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty()))
}

fn in_address(path: &[Vec<u8>]) -> bool {
    matches!(path, [_, request, address] if request == b"Request" && address == b"EMailAddress")
}

const RESPONSE_SCHEMA: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
const OUTLOOK_SCHEMA: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";

/// The settings answer for `address` as given.
pub fn response(settings: &ClientSettings, address: &str) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    let _ = writeln!(xml, "<Autodiscover xmlns=\"{RESPONSE_SCHEMA}\">");
    let _ = writeln!(xml, "  <Response xmlns=\"{OUTLOOK_SCHEMA}\">");
    xml.push_str("    <Account>\n");
    xml.push_str("      <AccountType>email</AccountType>\n");
    xml.push_str("      <Action>settings</Action>\n");
    let servers = [
        ("IMAP", &settings.imap),
        ("POP3", &settings.pop3),
        ("SMTP", &settings.smtp),
    ];
    for (kind, server) in servers {
        if let Some(server) = server {
            protocol(&mut xml, kind, server, address);
        }
    }
    xml.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    xml
}

fn protocol(xml: &mut String, kind: &str, server: &Server, address: &str) {
    let (ssl, encryption) = match server.security {
        Security::Tls => ("on", "SSL"),
        Security::StartTls => ("off", "TLS"),
    };
    xml.push_str("      <Protocol>\n");
    let _ = writeln!(xml, "        <Type>{kind}</Type>");
    let _ = writeln!(xml, "        <Server>{}</Server>", escape(&server.host));
    let _ = writeln!(xml, "        <Port>{}</Port>", server.port);
    let _ = writeln!(xml, "        <LoginName>{}</LoginName>", escape(address));
    xml.push_str("        <DomainRequired>off</DomainRequired>\n");
    xml.push_str("        <SPA>off</SPA>\n");
    let _ = writeln!(xml, "        <SSL>{ssl}</SSL>");
    let _ = writeln!(xml, "        <Encryption>{encryption}</Encryption>");
    xml.push_str("        <AuthRequired>on</AuthRequired>\n");
    xml.push_str("      </Protocol>\n");
}

/// The answer to a request without a usable address: Autodiscover's error 600.
pub fn invalid_request() -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Autodiscover xmlns=\"{RESPONSE_SCHEMA}\">\n  \
         <Response>\n    \
         <Error>\n      \
         <ErrorCode>600</ErrorCode>\n      \
         <Message>Invalid Request</Message>\n      \
         <DebugData />\n    \
         </Error>\n  \
         </Response>\n\
         </Autodiscover>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures;
    use crate::devices::fixtures::{values, xml_leaves};

    fn request(address: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.\
             microsoft.com/exchange/autodiscover/outlook/requestschema/2006\">\n<Request>\n\
             <EMailAddress>{address}</EMailAddress>\n<AcceptableResponseSchema>http://schemas.\
             microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\
             </AcceptableResponseSchema>\n</Request>\n</Autodiscover>\n"
        )
    }

    fn refused(body: &[u8]) -> String {
        match requested_address(body) {
            Err(Malformed(why)) => why,
            Ok(found) => panic!("accepted {found:?}"),
        }
    }

    #[test]
    fn the_address_of_a_good_request_is_read_and_trimmed() {
        let body = request("  jane@example.org\n");
        assert_eq!(
            requested_address(body.as_bytes()),
            Ok(Some("jane@example.org".to_string()))
        );
        let escaped = request("a&amp;b@example.org");
        assert_eq!(
            requested_address(escaped.as_bytes()),
            Ok(Some("a&b@example.org".to_string()))
        );
    }

    #[test]
    fn a_request_without_an_address_names_none() {
        let body = "<Autodiscover><Request><AcceptableResponseSchema>x\
                    </AcceptableResponseSchema></Request></Autodiscover>";
        assert_eq!(requested_address(body.as_bytes()), Ok(None));
        assert_eq!(requested_address(request(" ").as_bytes()), Ok(None));
        // An EMailAddress somewhere else is not the request's.
        let elsewhere = "<Autodiscover><EMailAddress>x@example.org</EMailAddress></Autodiscover>";
        assert_eq!(requested_address(elsewhere.as_bytes()), Ok(None));
    }

    #[test]
    fn a_doctype_is_refused_before_any_entity_is_read() {
        let laughs = "<?xml version=\"1.0\"?>\n<!DOCTYPE Autodiscover [\n\
                      <!ENTITY lol \"lol\">\n<!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;\">\n]>\n"
            .to_string()
            + &request("&lol2;");
        assert!(refused(laughs.as_bytes()).contains("DOCTYPE"));
        let xxe = "<!DOCTYPE a [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>".to_string()
            + &request("&xxe;");
        assert!(refused(xxe.as_bytes()).contains("DOCTYPE"));
    }

    #[test]
    fn an_unknown_entity_is_refused_not_expanded() {
        assert!(refused(request("&xxe;").as_bytes()).contains("entity"));
    }

    #[test]
    fn a_huge_body_is_refused_unread() {
        let mut body = request("jane@example.org").into_bytes();
        body.resize(MAX_REQUEST + 1, b' ');
        assert!(refused(&body).contains("bytes"));
        let mut fits = request("jane@example.org").into_bytes();
        fits.resize(MAX_REQUEST, b' ');
        assert_eq!(
            requested_address(&fits),
            Ok(Some("jane@example.org".to_string()))
        );
    }

    #[test]
    fn garbage_is_refused() {
        for body in [
            &b""[..],
            b"hello",
            b"{\"EMailAddress\": \"x\"}",
            b"<Other><Request><EMailAddress>x</EMailAddress></Request></Other>",
            b"<Autodiscover><Request><EMailAddress>x</Request></Autodiscover>",
            b"<Autodiscover><Request>",
            b"<Autodiscover/>",
            b"<Autodiscover></Autodiscover><Autodiscover></Autodiscover>",
            b"\xff\xfe<\x00",
        ] {
            refused(body);
        }
    }

    #[test]
    fn the_response_lists_each_server_field_by_field() {
        let xml = response(&fixtures::settings(), "jane@example.org");
        let leaves = xml_leaves(&xml);
        assert_eq!(values(&leaves, "Autodiscover/@xmlns"), [RESPONSE_SCHEMA]);
        assert_eq!(
            values(&leaves, "Autodiscover/Response/@xmlns"),
            [OUTLOOK_SCHEMA]
        );
        let account = "Autodiscover/Response/Account";
        assert_eq!(
            values(&leaves, &format!("{account}/AccountType")),
            ["email"]
        );
        assert_eq!(values(&leaves, &format!("{account}/Action")), ["settings"]);
        let p = |field: &str| values(&leaves, &format!("{account}/Protocol/{field}"));
        assert_eq!(p("Type"), ["IMAP", "POP3", "SMTP"]);
        assert_eq!(
            p("Server"),
            ["imap.example.org", "pop.example.org", "smtp.example.org"]
        );
        assert_eq!(p("Port"), ["993", "995", "587"]);
        assert_eq!(p("LoginName"), ["jane@example.org"; 3]);
        assert_eq!(p("DomainRequired"), ["off"; 3]);
        assert_eq!(p("SPA"), ["off"; 3]);
        assert_eq!(p("SSL"), ["on", "on", "off"]);
        assert_eq!(p("Encryption"), ["SSL", "SSL", "TLS"]);
        assert_eq!(p("AuthRequired"), ["on"; 3]);
    }

    #[test]
    fn the_address_is_escaped_in_the_response() {
        let address = "</LoginName><x>&\"@example.org";
        let xml = response(&fixtures::settings(), address);
        assert!(!xml.contains("<x>"));
        let leaves = xml_leaves(&xml);
        assert_eq!(
            values(&leaves, "Autodiscover/Response/Account/Protocol/LoginName"),
            [address; 3]
        );
    }

    #[test]
    fn invalid_request_is_error_600() {
        let leaves = xml_leaves(&invalid_request());
        assert_eq!(values(&leaves, "Autodiscover/@xmlns"), [RESPONSE_SCHEMA]);
        assert_eq!(
            values(&leaves, "Autodiscover/Response/Error/ErrorCode"),
            ["600"]
        );
        assert_eq!(
            values(&leaves, "Autodiscover/Response/Error/Message"),
            ["Invalid Request"]
        );
    }
}
