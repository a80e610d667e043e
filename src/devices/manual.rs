//! The settings to type in, for any other mail program: as text for the page and the
//! terminal, as JSON for scripts.
//!
//! Only the servers the app password may use and that are offered to clients are listed,
//! in the order a person sets them up: reading mail, sending, then filters.

use serde_json::{json, Value};

use super::{ClientSettings, DeviceAccount, Server};
use crate::names::Protocol;

const ORDER: [(Protocol, &str); 4] = [
    (Protocol::Imap, "IMAP"),
    (Protocol::Pop3, "POP3"),
    (Protocol::Smtp, "SMTP"),
    (Protocol::Sieve, "Sieve"),
];

fn servers<'s>(
    settings: &'s ClientSettings,
    account: &DeviceAccount<'_>,
) -> Vec<(Protocol, &'static str, &'s Server)> {
    ORDER
        .into_iter()
        .filter(|(p, _)| account.protocols.contains(*p))
        .filter_map(|(p, label)| settings.server(p).map(|s| (p, label, s)))
        .collect()
}

/// One line per server the account may use, then the user name and password (the
/// password line only when the account has one).
pub fn text(settings: &ClientSettings, account: &DeviceAccount<'_>) -> String {
    let servers = servers(settings, account);
    let host_width = servers
        .iter()
        .map(|(_, _, s)| s.host.len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (_, label, server) in &servers {
        let port = format!("port {}", server.port);
        text.push_str(&format!(
            "{label:<6} {:<host_width$}  {port:<10} {}\n",
            server.host, server.security
        ));
    }
    text.push_str(&format!("User name: {}\n", account.address));
    if let Some(password) = account.password {
        text.push_str(&format!("Password: {password}\n"));
    }
    text
}

/// `{"address", "username", "password" (null without one), "servers": [{"protocol",
/// "host", "port", "security"}]}`.
pub fn json(settings: &ClientSettings, account: &DeviceAccount<'_>) -> Value {
    let servers: Vec<Value> = servers(settings, account)
        .into_iter()
        .map(|(protocol, _, server)| {
            json!({
                "protocol": protocol.name(),
                "host": server.host,
                "port": server.port,
                "security": server.security.name(),
            })
        })
        .collect();
    json!({
        "address": account.address,
        "username": account.address,
        "password": account.password,
        "servers": servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures;

    #[test]
    fn text_lists_the_allowed_servers_then_the_login() {
        let account = fixtures::account("imap,smtp,sieve", Some("s3cret"));
        assert_eq!(
            text(&fixtures::settings(), &account),
            "IMAP   imap.example.org  port 993   SSL/TLS\n\
             SMTP   smtp.example.org  port 587   STARTTLS\n\
             Sieve  imap.example.org  port 4190  STARTTLS\n\
             User name: jane@example.org\n\
             Password: s3cret\n"
        );
    }

    #[test]
    fn servers_not_offered_and_a_missing_password_are_left_out() {
        let mut settings = fixtures::settings();
        settings.smtp = None;
        let account = fixtures::account("pop3,smtp", None);
        assert_eq!(
            text(&settings, &account),
            "POP3   pop.example.org  port 995   SSL/TLS\nUser name: jane@example.org\n"
        );
    }

    #[test]
    fn json_has_the_same_servers() {
        let account = fixtures::account("imap,pop3,smtp", Some("pw"));
        assert_eq!(
            json(&fixtures::settings(), &account),
            json!({
                "address": "jane@example.org",
                "username": "jane@example.org",
                "password": "pw",
                "servers": [
                    {"protocol": "imap", "host": "imap.example.org", "port": 993, "security": "tls"},
                    {"protocol": "pop3", "host": "pop.example.org", "port": 995, "security": "tls"},
                    {"protocol": "smtp", "host": "smtp.example.org", "port": 587, "security": "starttls"},
                ],
            })
        );
        let template = fixtures::account("sieve", None);
        let value = json(&fixtures::settings(), &template);
        assert_eq!(value["password"], Value::Null);
        assert_eq!(value["servers"][0]["port"], 4190);
    }
}
