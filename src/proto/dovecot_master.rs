//! Server side of Dovecot's "auth-master" (userdb) protocol: the socket
//! Dovecot's `doveadm`, LDA/LMTP and our Lua adapter use for `USER` and
//! `PASS` lookups.
//!
//! Modelled on Dovecot's `src/auth/auth-master-connection.c` (server) and
//! `src/lib-auth/auth-master.c` / `src/lib-auth-client/auth-master.c`
//! (client), 2.3.19 and 2.4.1.
//!
//! Wire summary (fields TAB-separated and TAB-escaped, lines end in LF):
//!
//! ```text
//! S: VERSION 1 <minor>          S: SPID <pid>        (sent on connect)
//! C: VERSION 1 <minor>
//! C: USER <id> <user> [key=value...]
//! S: USER <id> <user> [key=value...] | NOTFOUND <id> | FAIL <id> [reason=...]
//! C: PASS <id> <user> [key=value...]
//! S: PASS <id> user=<user> [key=value...] | NOTFOUND <id> | FAIL <id> [reason=...]
//! C: LIST <id> [user=<mask>] [key=value...]
//! S: LIST <id> <user> ...  then  DONE <id> [fail]
//! ```
//!
//! Note the asymmetry Dovecot has: a `USER` reply carries the user name as
//! a bare field, a `PASS` reply as `user=`.

use super::dovecot_auth::{
    command_and_fields, field_bytes, find_param, parse_number, parse_version, split_key_value,
    unknown_command, value_string, ClientFields, ProtoError, MAX_NAME_LEN,
};
use super::sasl::{check_username, SaslError};
use super::tabescape;

/// Longest line, terminator included, accepted from a client. Dovecot's own
/// server allows only 1024 bytes here; a larger limit costs nothing and
/// leaves room for adapters that forward many fields.
pub const MAX_LINE_LENGTH: usize = 16 * 1024;

/// Major protocol version.
pub const PROTOCOL_MAJOR: u32 = 1;

/// Minor version Dovecot 2.3 announces on this socket (2.4 announces the
/// auth-client version, 3; clients check only the major).
pub const PROTOCOL_MINOR: u32 = 1;

/// Most parameters accepted on one request line.
pub const MAX_PARAMS: usize = 64;

/// One line from an auth-master client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterLine {
    /// `VERSION <major> <minor>`; the driver checks the major.
    Version { major: u32, minor: u32 },
    /// `USER <id> <user> ...`: userdb lookup.
    User(LookupLine),
    /// `PASS <id> <user> ...`: passdb lookup without a password.
    Pass(LookupLine),
    /// `LIST <id> ...`: user iteration. Not offered by this daemon; answer
    /// with [`encode_list_done`]`(id, true)` as Dovecot does when no userdb
    /// can iterate.
    List {
        id: u32,
        /// `user=` mask, if given.
        user_mask: Option<String>,
        params: Vec<(String, String)>,
    },
}

/// A parsed `USER` or `PASS` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupLine {
    /// Client-chosen id (0 is allowed here, as in Dovecot).
    pub id: u32,
    /// Validated user name.
    pub user: String,
    /// `service=`, `lip=`, `rip=`.
    pub client: ClientFields,
    /// Every other parameter in order; flags have an empty value.
    pub params: Vec<(String, String)>,
}

impl LookupLine {
    /// The value of a parameter kept in [`LookupLine::params`].
    pub fn param(&self, key: &str) -> Option<&str> {
        find_param(&self.params, key)
    }
}

/// Parses one client line (without its LF).
///
/// An unusable user name yields [`ProtoError::InvalidUsername`], which is
/// recoverable: Dovecot answers `NOTFOUND <id>` and keeps the connection.
pub fn parse_master_line(line: &[u8]) -> Result<MasterLine, ProtoError> {
    let (command, fields) = command_and_fields(line, MAX_LINE_LENGTH)?;
    match command {
        b"VERSION" => parse_version(fields, "VERSION")
            .map(|(major, minor)| MasterLine::Version { major, minor }),
        b"USER" => parse_lookup(fields, "USER").map(MasterLine::User),
        b"PASS" => parse_lookup(fields, "PASS").map(MasterLine::Pass),
        b"LIST" => parse_list(fields),
        b"" if line.is_empty() => Err(ProtoError::EmptyLine),
        other => Err(unknown_command(other)),
    }
}

struct Params {
    client: ClientFields,
    user: Option<String>,
    rest: Vec<(String, String)>,
}

fn parse_params<'a>(
    fields: impl Iterator<Item = &'a [u8]>,
    command: &'static str,
    list_mode: bool,
) -> Result<Params, ProtoError> {
    let mut p = Params {
        client: ClientFields::default(),
        user: None,
        rest: Vec::new(),
    };
    for (count, field) in fields.enumerate() {
        if count >= MAX_PARAMS {
            return Err(ProtoError::TooManyParams {
                command,
                max: MAX_PARAMS,
            });
        }
        let field = field_bytes(field, command, "a parameter")?;
        let (key, value) = split_key_value(&field);
        if key.len() > MAX_NAME_LEN {
            return Err(ProtoError::FieldTooLong {
                command,
                field: "a parameter name",
                max: MAX_NAME_LEN,
            });
        }
        match key {
            b"user" if list_mode => {
                p.user = Some(value_string(value, command, "user mask", MAX_LINE_LENGTH)?);
            }
            // LIST carries these only as context; pass them through as-is.
            _ if list_mode => p.rest.push((
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )),
            _ if p.client.take(key, value, command)? => {}
            _ => p.rest.push((
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )),
        }
    }
    Ok(p)
}

fn username_problem(e: SaslError) -> &'static str {
    match e {
        SaslError::EmptyUsername => "empty",
        SaslError::UsernameTooLong { .. } => "too long",
        SaslError::UsernameControlChar { .. } => "contains a control character",
        SaslError::UsernameNotUtf8 => "not valid UTF-8",
        _ => "rejected",
    }
}

fn parse_lookup<'a>(
    mut fields: impl Iterator<Item = &'a [u8]>,
    command: &'static str,
) -> Result<LookupLine, ProtoError> {
    let (Some(id), Some(user)) = (fields.next(), fields.next()) else {
        return Err(ProtoError::Malformed {
            command,
            problem: "expected a request id and a user name",
        });
    };
    let id = parse_number(id, command, "request id")?;
    // Parameters first: a broken line must close the connection even if
    // the user name is also bad.
    let params = parse_params(fields, command, false)?;
    let invalid = |problem| ProtoError::InvalidUsername { id, problem };
    let user = tabescape::unescape(user).map_err(|_| invalid("bad escaping"))?;
    let user = check_username(&user).map_err(|e| invalid(username_problem(e)))?;
    Ok(LookupLine {
        id,
        user,
        client: params.client,
        params: params.rest,
    })
}

fn parse_list<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Result<MasterLine, ProtoError> {
    let Some(id) = fields.next() else {
        return Err(ProtoError::Malformed {
            command: "LIST",
            problem: "expected a request id",
        });
    };
    let id = parse_number(id, "LIST", "request id")?;
    let params = parse_params(fields, "LIST", true)?;
    Ok(MasterLine::List {
        id,
        user_mask: params.user,
        params: params.rest,
    })
}

// ---------------------------------------------------------------------------
// Server → client
// ---------------------------------------------------------------------------

/// `VERSION\t1\t<minor>\nSPID\t<pid>\n`, sent as soon as a client connects.
/// Postfix recognises this exact shape (no `MECH`) as "wrong socket".
pub fn encode_handshake(minor: u32, spid: u32) -> Vec<u8> {
    format!("VERSION\t{PROTOCOL_MAJOR}\t{minor}\nSPID\t{spid}\n").into_bytes()
}

fn push_fields(out: &mut Vec<u8>, fields: &[(&str, &str)]) {
    for (k, v) in fields {
        out.push(b'\t');
        tabescape::escape_into(out, k.as_bytes());
        out.push(b'=');
        tabescape::escape_into(out, v.as_bytes());
    }
}

/// `USER\t<id>\t<user>[\t<key>=<value>...]\n` (user name as a bare field).
pub fn encode_user(id: u32, user: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    encode_lookup(format!("USER\t{id}\t"), user, fields)
}

/// `PASS\t<id>\tuser=<user>[\t<key>=<value>...]\n`.
pub fn encode_pass(id: u32, user: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    encode_lookup(format!("PASS\t{id}\tuser="), user, fields)
}

/// `head` (command, id and whatever precedes the user name), then the escaped user name
/// and the fields.
fn encode_lookup(head: String, user: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = head.into_bytes();
    tabescape::escape_into(&mut out, user.as_bytes());
    push_fields(&mut out, fields);
    out.push(b'\n');
    out
}

/// `NOTFOUND\t<id>\n`: the user does not exist (or the name was unusable).
pub fn encode_notfound(id: u32) -> Vec<u8> {
    format!("NOTFOUND\t{id}\n").into_bytes()
}

/// `FAIL\t<id>[\treason=<reason>]\n`: lookup failed (temporary error).
/// Dovecot's client passes the reason on to its caller's log.
pub fn encode_fail(id: u32, reason: Option<&str>) -> Vec<u8> {
    let mut out = format!("FAIL\t{id}").into_bytes();
    if let Some(reason) = reason {
        push_fields(&mut out, &[("reason", reason)]);
    }
    out.push(b'\n');
    out
}

/// `DONE\t<id>\t[fail]\n`: ends a `LIST` answer. The second field is
/// present but empty on success, exactly as Dovecot writes it.
pub fn encode_list_done(id: u32, failed: bool) -> Vec<u8> {
    format!("DONE\t{id}\t{}\n", if failed { "fail" } else { "" }).into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::line::{next_line, Frame};
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// Every two-read split of `wire` gives NeedMore first and the same
    /// parse result once complete.
    fn parse_every_split(wire: &[u8]) -> Result<MasterLine, ProtoError> {
        let mut results = Vec::new();
        for split in 0..=wire.len() {
            let mut buf = Vec::new();
            for (i, &b) in wire.iter().enumerate() {
                buf.push(b);
                if i + 1 == split || i + 1 == wire.len() {
                    match next_line(&buf, MAX_LINE_LENGTH) {
                        Frame::NeedMore => assert!(i + 1 < wire.len()),
                        Frame::Line { line, consumed } => {
                            assert_eq!(i + 1, wire.len(), "early line at {split}");
                            assert_eq!(consumed, wire.len());
                            results.push(parse_master_line(line));
                        }
                        Frame::TooLong => panic!("too long"),
                    }
                }
            }
        }
        let first = results[0].clone();
        assert!(results.iter().all(|r| *r == first));
        first
    }

    #[test]
    fn handshake_golden() {
        assert_eq!(encode_handshake(1, 777), b"VERSION\t1\t1\nSPID\t777\n");
    }

    #[test]
    fn replies_golden() {
        assert_eq!(
            encode_user(
                3,
                "joe@example.org",
                &[("uid", "5000"), ("home", "/var/mail/joe")]
            ),
            b"USER\t3\tjoe@example.org\tuid=5000\thome=/var/mail/joe\n"
        );
        assert_eq!(encode_user(3, "joe", &[]), b"USER\t3\tjoe\n");
        assert_eq!(
            encode_user(3, "a\tb", &[("quota_rule", "*:bytes=1\n")]),
            b"USER\t3\ta\x01tb\tquota_rule=*:bytes=1\x01n\n"
        );
        assert_eq!(
            encode_pass(4, "joe", &[("nopassword", "y")]),
            b"PASS\t4\tuser=joe\tnopassword=y\n"
        );
        assert_eq!(encode_pass(4, "joe", &[]), b"PASS\t4\tuser=joe\n");
        assert_eq!(encode_notfound(5), b"NOTFOUND\t5\n");
        assert_eq!(encode_fail(6, None), b"FAIL\t6\n");
        assert_eq!(
            encode_fail(6, Some("database\tdown")),
            b"FAIL\t6\treason=database\x01tdown\n"
        );
        assert_eq!(encode_list_done(7, true), b"DONE\t7\tfail\n");
        assert_eq!(encode_list_done(7, false), b"DONE\t7\t\n");
    }

    #[test]
    fn version() {
        assert_eq!(
            parse_every_split(b"VERSION\t1\t0\n"),
            Ok(MasterLine::Version { major: 1, minor: 0 })
        );
        assert!(parse_master_line(b"VERSION\t1").is_err());
    }

    #[test]
    fn user_lookup_2_3() {
        // As Dovecot 2.3's lib-auth auth_master_user_lookup() writes it.
        let got = parse_every_split(
            b"USER\t1\tjoe@example.org\tservice=lmtp\tlip=192.0.2.1\trip=192.0.2.2\tlport=24\tdebug\n",
        );
        let Ok(MasterLine::User(l)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(l.id, 1);
        assert_eq!(l.user, "joe@example.org");
        assert_eq!(l.client.service.as_deref(), Some("lmtp"));
        assert_eq!(l.client.lip, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(l.client.rip, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))));
        assert_eq!(l.param("lport"), Some("24"));
        assert_eq!(l.param("debug"), Some(""));
    }

    #[test]
    fn pass_lookup_2_4() {
        let got = parse_every_split(b"PASS\t9\tjoe\tprotocol=imap\n");
        let Ok(MasterLine::Pass(l)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            (l.id, l.user.as_str(), l.client.service.as_deref()),
            (9, "joe", Some("imap"))
        );
    }

    #[test]
    fn escaped_user_is_unescaped_then_validated() {
        let got = parse_master_line(b"USER\t1\tj\x011oe\tservice=x");
        assert_eq!(
            got,
            Err(ProtoError::InvalidUsername {
                id: 1,
                problem: "contains a control character"
            })
        );
    }

    #[test]
    fn bad_usernames_are_per_request() {
        let long = format!("USER\t2\t{}\tservice=x", "a".repeat(513));
        let cases: [&[u8]; 6] = [
            b"USER\t2\t\tservice=x",
            b"USER\t2\ta\x01tb\tservice=x",
            b"USER\t2\ta\x010b\tservice=x",
            b"USER\t2\ta\x01nb",
            b"PASS\t2\t\xff",
            long.as_bytes(),
        ];
        for case in cases {
            let err = parse_master_line(case).unwrap_err();
            assert_eq!(err.recoverable_request_id(), Some(2), "{case:?}: {err}");
        }
    }

    #[test]
    fn broken_lines_are_fatal() {
        let cases: [&[u8]; 9] = [
            b"USER",
            b"USER\t1",
            b"USER\tx\tjoe",
            b"PASS\t\tjoe",
            b"USER\t1\tjoe\tservice=a\x01",
            b"USER\t1\tjoe\tservice=a\x010",
            b"LIST",
            b"CPID\t1",
            b"REQUEST\t1\t2\t3",
        ];
        for case in cases {
            assert!(parse_master_line(case).unwrap_err().is_fatal(), "{case:?}");
        }
    }

    #[test]
    fn list() {
        assert_eq!(
            parse_every_split(b"LIST\t4\tuser=*@example.org\tservice=doveadm\n"),
            Ok(MasterLine::List {
                id: 4,
                user_mask: Some("*@example.org".into()),
                params: vec![("service".into(), "doveadm".into())],
            })
        );
        assert_eq!(
            parse_every_split(b"LIST\t5\n"),
            Ok(MasterLine::List {
                id: 5,
                user_mask: None,
                params: vec![],
            })
        );
    }

    #[test]
    fn too_many_params() {
        let mut line = b"USER\t1\tjoe".to_vec();
        for _ in 0..=MAX_PARAMS {
            line.extend_from_slice(b"\tk=v");
        }
        assert!(matches!(
            parse_master_line(&line),
            Err(ProtoError::TooManyParams { .. })
        ));
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(
            parse_master_line(b"CACHE-FLUSH\t1"),
            Err(ProtoError::UnknownCommand {
                command: "CACHE-FLUSH".into()
            })
        );
        assert_eq!(parse_master_line(b""), Err(ProtoError::EmptyLine));
    }
}
