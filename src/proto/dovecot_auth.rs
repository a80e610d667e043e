//! Server side of Dovecot's "auth-client" protocol, the one Postfix speaks
//! with `smtpd_sasl_type = dovecot` and Dovecot's login processes use.
//!
//! Modelled on Dovecot's `src/auth/auth-client-connection.c` and
//! `src/auth/auth-request-handler.c` (2.3.19 and 2.4.1) and on Postfix's
//! `src/xsasl/xsasl_dovecot_server.c`.
//!
//! Lines are TAB-separated fields, each field TAB-escaped
//! ([`super::tabescape`]); binary SASL data travels base64-encoded.
//!
//! This module only parses and encodes single lines. The driver owns the
//! connection state: it must see `VERSION` (major 1) and then `CPID` before
//! accepting `AUTH`, must refuse an `AUTH` whose id is still in use (Dovecot
//! closes the connection with "sent a duplicate ID"), must treat `CONT` or
//! `CANCEL` for an unknown id as Dovecot does (`FAIL <id> reason=...timed
//! out` / ignore), and should wipe its line buffer after parsing, since
//! `AUTH` and `CONT` lines carry credentials.

use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::line::DOVECOT_AUTH_MAX_LINE;
use super::sasl::Mechanism;
use super::tabescape::{self, UnescapeError};

/// Longest line, terminator included, either side may send.
pub const MAX_LINE_LENGTH: usize = DOVECOT_AUTH_MAX_LINE;

/// The only major version Dovecot, Postfix and this daemon speak.
pub const PROTOCOL_MAJOR: u32 = 1;

/// Minor version Dovecot 2.3 announces. Clients announcing minor < 2 (Postfix
/// sends `VERSION 1 0`) get the old meaning of an empty `resp=`, see
/// [`AuthLine::initial_response`].
pub const MINOR_DOVECOT_2_3: u32 = 2;

/// Minor version Dovecot 2.4 announces (adds channel binding, unused here).
pub const MINOR_DOVECOT_2_4: u32 = 3;

/// Most TAB-separated parameters accepted on one `AUTH` line. Dovecot 2.4
/// login processes send about twenty.
pub const MAX_AUTH_PARAMS: usize = 64;

/// Longest parameter name, mechanism name or service name accepted.
pub const MAX_NAME_LEN: usize = 64;

// Dovecot's decoder tolerates missing padding; some SMTP clients omit it and
// Postfix forwards their base64 verbatim.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A protocol violation found while parsing a line. Messages are meant for
/// the postmaster's log and never contain credential bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("empty line")]
    EmptyLine,
    #[error("unknown command {command:?}")]
    UnknownCommand { command: String },
    #[error("malformed {command} line: {problem}")]
    Malformed {
        command: &'static str,
        problem: &'static str,
    },
    #[error("malformed {command} line: {field} is not a valid number")]
    BadNumber {
        command: &'static str,
        field: &'static str,
    },
    #[error("malformed {command} line: bad escaping in {field}: {reason}")]
    BadEscape {
        command: &'static str,
        field: &'static str,
        reason: UnescapeError,
    },
    #[error("malformed {command} line: {field} contains a NUL byte")]
    NulByte {
        command: &'static str,
        field: &'static str,
    },
    #[error("malformed {command} line: {field} is not valid UTF-8")]
    NotUtf8 {
        command: &'static str,
        field: &'static str,
    },
    #[error("malformed {command} line: {field} longer than {max} bytes")]
    FieldTooLong {
        command: &'static str,
        field: &'static str,
        max: usize,
    },
    #[error("{command} line has more than {max} parameters")]
    TooManyParams { command: &'static str, max: usize },
    #[error("AUTH request {id}: parameters after resp= (resp must be the last parameter)")]
    ParamAfterResp { id: u32 },
    #[error("request {id}: invalid base64 data in {context}")]
    InvalidBase64 { id: u32, context: &'static str },
    #[error("request {id}: invalid username: {problem}")]
    InvalidUsername { id: u32, problem: &'static str },
}

impl ProtoError {
    /// For errors that concern only one request, its id: the driver answers
    /// that request (FAIL with [`FailCode::InvalidBase64`] for the auth
    /// protocol, NOTFOUND for a master lookup, as Dovecot does) and keeps
    /// the connection. `None` means the peer is broken: close the
    /// connection, which is what Dovecot does for these.
    pub fn recoverable_request_id(&self) -> Option<u32> {
        match self {
            ProtoError::InvalidBase64 { id, .. } | ProtoError::InvalidUsername { id, .. } => {
                Some(*id)
            }
            _ => None,
        }
    }

    /// True when the connection must be closed.
    pub fn is_fatal(&self) -> bool {
        self.recoverable_request_id().is_none()
    }
}

/// One line from an auth client.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientLine {
    /// `VERSION <major> <minor>`; the driver checks `major ==` [`PROTOCOL_MAJOR`].
    Version { major: u32, minor: u32 },
    /// `CPID <pid>`: the client's process id (never 0).
    Cpid(u32),
    /// `AUTH <id> <mech> [params...]`.
    Auth(AuthLine),
    /// `CONT <id> <base64>`, data already decoded.
    Cont { id: u32, data: Vec<u8> },
    /// `CANCEL <id>`.
    Cancel { id: u32 },
}

// Hand-written so SASL payloads (which hold passwords) never reach a log.
impl fmt::Debug for ClientLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientLine::Version { major, minor } => f
                .debug_struct("Version")
                .field("major", major)
                .field("minor", minor)
                .finish(),
            ClientLine::Cpid(pid) => f.debug_tuple("Cpid").field(pid).finish(),
            ClientLine::Auth(auth) => f.debug_tuple("Auth").field(auth).finish(),
            ClientLine::Cont { id, data } => f
                .debug_struct("Cont")
                .field("id", id)
                .field("data", &Redacted(data.len()))
                .finish(),
            ClientLine::Cancel { id } => f.debug_struct("Cancel").field("id", id).finish(),
        }
    }
}

struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted, {} bytes]", self.0)
    }
}

/// What an auth or master request says of the client's connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFields {
    /// `service=` (Postfix, Dovecot 2.3) or `protocol=` (Dovecot 2.4). Dovecot
    /// refuses requests without it; whether to do so is the driver's call.
    pub service: Option<String>,
    /// `lip=`; `None` when absent or not an IP address (Postfix sends an
    /// empty value when it cannot tell), which Dovecot also ignores.
    pub lip: Option<IpAddr>,
    /// `rip=`, same rules as `lip`.
    pub rip: Option<IpAddr>,
}

impl ClientFields {
    /// Takes `key=value` if it is one of the three; `Ok(false)` for any other key.
    pub(crate) fn take(
        &mut self,
        key: &[u8],
        value: &[u8],
        command: &'static str,
    ) -> Result<bool, ProtoError> {
        match key {
            b"service" | b"protocol" => {
                self.service = Some(value_string(value, command, "service", MAX_NAME_LEN)?);
            }
            b"lip" => self.lip = parse_ip(value),
            b"rip" => self.rip = parse_ip(value),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The value of `key` among `params`.
pub(crate) fn find_param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A parsed `AUTH` line.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthLine {
    /// Client-chosen request id, never 0.
    pub id: u32,
    /// Mechanism name as sent (Postfix passes on the SMTP client's case);
    /// see [`AuthLine::mechanism_kind`].
    pub mechanism: String,
    /// `service=`, `lip=`, `rip=`.
    pub client: ClientFields,
    /// `secured` or `secured=<anything>`: the client connection is TLS or
    /// otherwise trusted.
    pub secured: bool,
    /// `no-penalty`: do not apply brute-force delays.
    pub no_penalty: bool,
    /// `nologin`: authentication only, no login will follow (Postfix).
    pub nologin: bool,
    /// Decoded `resp=`. `Some(empty)` for `resp=` or `resp==`.
    pub resp: Option<Vec<u8>>,
    /// The line had literally `resp=` with nothing after it; such a response
    /// counts as absent for clients announcing minor < 2.
    pub resp_was_bare: bool,
    /// Every other parameter, in order, unescaped; a flag without `=` has an
    /// empty value. Non-UTF-8 bytes are replaced, as these are informational.
    pub params: Vec<(String, String)>,
}

impl AuthLine {
    /// The mechanism, if it is one this daemon implements.
    pub fn mechanism_kind(&self) -> Option<Mechanism> {
        Mechanism::from_name(&self.mechanism)
    }

    /// The initial response as Dovecot interprets it for a client that
    /// announced `client_minor`: before minor 2 a bare `resp=` meant "no
    /// initial response" (some clients sent it that way), from minor 2 on
    /// it means "empty initial response".
    pub fn initial_response(&self, client_minor: u32) -> Option<&[u8]> {
        if self.resp_was_bare && client_minor < 2 {
            return None;
        }
        self.resp.as_deref()
    }

    /// Like [`AuthLine::initial_response`], but moves the bytes out so the
    /// SASL exchange can own (and wipe) them.
    pub fn take_initial_response(&mut self, client_minor: u32) -> Option<Vec<u8>> {
        let resp = self.resp.take();
        if self.resp_was_bare && client_minor < 2 {
            return None;
        }
        resp
    }

    /// The value of a parameter kept in [`AuthLine::params`].
    pub fn param(&self, key: &str) -> Option<&str> {
        find_param(&self.params, key)
    }
}

impl fmt::Debug for AuthLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLine")
            .field("id", &self.id)
            .field("mechanism", &self.mechanism)
            .field("client", &self.client)
            .field("secured", &self.secured)
            .field("no_penalty", &self.no_penalty)
            .field("nologin", &self.nologin)
            .field("resp", &self.resp.as_ref().map(|r| Redacted(r.len())))
            .field("resp_was_bare", &self.resp_was_bare)
            .field("params", &self.params)
            .finish()
    }
}

/// A line's command and the fields after it; a line of `max` bytes or more is refused.
pub(crate) fn command_and_fields(
    line: &[u8],
    max: usize,
) -> Result<(&[u8], impl Iterator<Item = &[u8]>), ProtoError> {
    if line.len() >= max {
        return Err(ProtoError::LineTooLong { max });
    }
    let mut fields = line.split(|&b| b == b'\t');
    let command = fields.next().unwrap_or_default();
    Ok((command, fields))
}

/// Parses one line from an auth client (without its LF; see
/// [`super::line::next_line`]).
pub fn parse_client_line(line: &[u8]) -> Result<ClientLine, ProtoError> {
    let (command, fields) = command_and_fields(line, MAX_LINE_LENGTH)?;
    match command {
        b"VERSION" => parse_version(fields, "VERSION")
            .map(|(major, minor)| ClientLine::Version { major, minor }),
        b"CPID" => parse_cpid(fields),
        b"AUTH" => parse_auth(fields).map(ClientLine::Auth),
        b"CONT" => parse_cont(fields),
        b"CANCEL" => parse_cancel(fields),
        b"" if line.is_empty() => Err(ProtoError::EmptyLine),
        other => Err(unknown_command(other)),
    }
}

pub(crate) fn unknown_command(command: &[u8]) -> ProtoError {
    // Echo the word only if it looks like a command, so a client that
    // mistakenly sends a bare password does not get it logged.
    let looks_like_command = !command.is_empty()
        && command.len() <= 16
        && command
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
    ProtoError::UnknownCommand {
        command: if looks_like_command {
            String::from_utf8_lossy(command).into_owned()
        } else {
            "(not a command word)".to_owned()
        },
    }
}

pub(crate) fn parse_version<'a>(
    mut fields: impl Iterator<Item = &'a [u8]>,
    command: &'static str,
) -> Result<(u32, u32), ProtoError> {
    let (Some(major), Some(minor), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(ProtoError::Malformed {
            command,
            problem: "expected exactly a major and a minor version",
        });
    };
    Ok((
        parse_number(major, command, "major version")?,
        parse_number(minor, command, "minor version")?,
    ))
}

fn parse_cpid<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Result<ClientLine, ProtoError> {
    let (Some(pid), None) = (fields.next(), fields.next()) else {
        return Err(ProtoError::Malformed {
            command: "CPID",
            problem: "expected exactly one process id",
        });
    };
    match parse_number(pid, "CPID", "process id")? {
        0 => Err(ProtoError::Malformed {
            command: "CPID",
            problem: "process id 0",
        }),
        pid => Ok(ClientLine::Cpid(pid)),
    }
}

/// The first two fields of a command that needs both, or `problem`.
fn two_fields<'a>(
    fields: &mut impl Iterator<Item = &'a [u8]>,
    command: &'static str,
    problem: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ProtoError> {
    match (fields.next(), fields.next()) {
        (Some(first), Some(second)) => Ok((first, second)),
        _ => Err(ProtoError::Malformed { command, problem }),
    }
}

fn parse_auth<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Result<AuthLine, ProtoError> {
    const CMD: &str = "AUTH";
    let (id, mech) = two_fields(&mut fields, CMD, "expected a request id and a mechanism")?;
    let id = parse_number(id, CMD, "request id")?;
    if id == 0 {
        return Err(ProtoError::Malformed {
            command: CMD,
            problem: "request id 0",
        });
    }
    let mechanism = field_string(mech, CMD, "mechanism", MAX_NAME_LEN)?;
    if mechanism.is_empty()
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProtoError::Malformed {
            command: CMD,
            problem: "mechanism name has invalid characters",
        });
    }

    let mut auth = AuthLine {
        id,
        mechanism,
        client: ClientFields::default(),
        secured: false,
        no_penalty: false,
        nologin: false,
        resp: None,
        resp_was_bare: false,
        params: Vec::new(),
    };
    let mut raw_resp: Option<Zeroizing<Vec<u8>>> = None;
    for (count, field) in fields.by_ref().enumerate() {
        if count >= MAX_AUTH_PARAMS {
            return Err(ProtoError::TooManyParams {
                command: CMD,
                max: MAX_AUTH_PARAMS,
            });
        }
        // The resp= field holds credentials; wipe this copy once done.
        let field = Zeroizing::new(field_bytes(field, CMD, "a parameter")?);
        let (key, value) = split_key_value(&field);
        if key.len() > MAX_NAME_LEN {
            return Err(ProtoError::FieldTooLong {
                command: CMD,
                field: "a parameter name",
                max: MAX_NAME_LEN,
            });
        }
        if auth.client.take(key, value, CMD)? {
            continue;
        }
        match key {
            b"secured" => auth.secured = true,
            b"no-penalty" => auth.no_penalty = true,
            b"nologin" => auth.nologin = true,
            b"resp" => {
                raw_resp = Some(Zeroizing::new(value.to_vec()));
                break;
            }
            _ => auth.params.push((
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )),
        }
    }
    // Dovecot requires resp= last: its value may be large and it is the
    // only parameter a logging client has to blank out.
    if raw_resp.is_some() && fields.next().is_some() {
        return Err(ProtoError::ParamAfterResp { id });
    }
    if let Some(raw) = raw_resp {
        auth.resp_was_bare = raw.is_empty();
        // "=" is how SASL profiles spell an empty response; Dovecot accepts
        // it here too although it is not valid base64.
        auth.resp = Some(if raw.is_empty() || raw.as_slice() == b"=" {
            Vec::new()
        } else {
            BASE64
                .decode(raw.as_slice())
                .map_err(|_| ProtoError::InvalidBase64 {
                    id,
                    context: "initial response",
                })?
        });
    }
    Ok(auth)
}

fn parse_cont<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Result<ClientLine, ProtoError> {
    const CMD: &str = "CONT";
    let (id, data) = two_fields(&mut fields, CMD, "expected a request id and data")?;
    let id = parse_number(id, CMD, "request id")?;
    // Dovecot 2.3 decodes everything after the id as base64, so an extra
    // field is a decoding error for that request, not a broken connection.
    // Dovecot 2.4 does the same for clients below minor 3.
    if fields.next().is_some() {
        return Err(ProtoError::InvalidBase64 {
            id,
            context: "continued response",
        });
    }
    let invalid = || ProtoError::InvalidBase64 {
        id,
        context: "continued response",
    };
    let data = tabescape::unescape(data).map_err(|_| invalid())?;
    let data = BASE64.decode(data.as_ref()).map_err(|_| invalid())?;
    Ok(ClientLine::Cont { id, data })
}

fn parse_cancel<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Result<ClientLine, ProtoError> {
    let (Some(id), None) = (fields.next(), fields.next()) else {
        return Err(ProtoError::Malformed {
            command: "CANCEL",
            problem: "expected exactly one request id",
        });
    };
    Ok(ClientLine::Cancel {
        id: parse_number(id, "CANCEL", "request id")?,
    })
}

/// Parses a decimal `unsigned int` the way Dovecot's `str_to_uint` does:
/// digits only, no sign, no spaces, must fit in 32 bits.
pub(crate) fn parse_number(
    field: &[u8],
    command: &'static str,
    what: &'static str,
) -> Result<u32, ProtoError> {
    let bad = || ProtoError::BadNumber {
        command,
        field: what,
    };
    if field.is_empty() || field.len() > 10 || !field.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// Unescapes one field and refuses NUL, which Dovecot (C strings) could
/// never have meant.
pub(crate) fn field_bytes(
    field: &[u8],
    command: &'static str,
    what: &'static str,
) -> Result<Vec<u8>, ProtoError> {
    let value = tabescape::unescape(field).map_err(|reason| ProtoError::BadEscape {
        command,
        field: what,
        reason,
    })?;
    if value.contains(&0) {
        return Err(ProtoError::NulByte {
            command,
            field: what,
        });
    }
    Ok(value.into_owned())
}

pub(crate) fn field_string(
    field: &[u8],
    command: &'static str,
    what: &'static str,
    max: usize,
) -> Result<String, ProtoError> {
    let bytes = field_bytes(field, command, what)?;
    value_string(&bytes, command, what, max)
}

pub(crate) fn value_string(
    value: &[u8],
    command: &'static str,
    what: &'static str,
    max: usize,
) -> Result<String, ProtoError> {
    if value.len() > max {
        return Err(ProtoError::FieldTooLong {
            command,
            field: what,
            max,
        });
    }
    String::from_utf8(value.to_vec()).map_err(|_| ProtoError::NotUtf8 {
        command,
        field: what,
    })
}

/// Splits `key=value` at the first `=`; a bare word is a flag with an empty
/// value, as in Dovecot.
pub(crate) fn split_key_value(field: &[u8]) -> (&[u8], &[u8]) {
    match field.iter().position(|&b| b == b'=') {
        Some(eq) => (&field[..eq], &field[eq + 1..]),
        None => (field, &[]),
    }
}

/// Lenient like Dovecot's `net_addr2ip`: anything unparsable (including the
/// empty string Postfix sends when it has no address) is simply unknown.
pub(crate) fn parse_ip(value: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(value).ok()?;
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

// ---------------------------------------------------------------------------
// Server → client
// ---------------------------------------------------------------------------

/// The server's greeting. Dovecot 2.3 sends all of it at once; Dovecot 2.4
/// sends [`Handshake::encode_version`] on connect and the rest only after
/// reading the client's `VERSION`. Postfix accepts either, but insists on
/// `MECH` lines before `SPID`, which both forms respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake<'a> {
    /// Minor version to announce ([`MINOR_DOVECOT_2_3`] is the safe choice).
    pub minor: u32,
    pub mechanisms: &'a [Mechanism],
    /// Server process id.
    pub spid: u32,
    /// Connection id, unique per server process.
    pub cuid: u32,
    /// Random per-connection cookie; only meaningful to Dovecot's login
    /// processes, but clients expect the line.
    pub cookie: [u8; 16],
}

impl Handshake<'_> {
    /// `VERSION\t1\t<minor>\n`.
    pub fn encode_version(&self) -> Vec<u8> {
        format!("VERSION\t{PROTOCOL_MAJOR}\t{}\n", self.minor).into_bytes()
    }

    /// `MECH` lines, `SPID`, `CUID`, `COOKIE`, `DONE`.
    pub fn encode_after_version(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        for mech in self.mechanisms {
            out.extend_from_slice(b"MECH\t");
            out.extend_from_slice(mech.name().as_bytes());
            for flag in mech.security_flags() {
                out.push(b'\t');
                out.extend_from_slice(flag.as_bytes());
            }
            out.push(b'\n');
        }
        out.extend_from_slice(
            format!("SPID\t{}\nCUID\t{}\nCOOKIE\t", self.spid, self.cuid).as_bytes(),
        );
        for b in self.cookie {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.extend_from_slice(b"\nDONE\n");
        out
    }

    /// The whole greeting at once (Dovecot 2.3 style).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_version();
        out.extend(self.encode_after_version());
        out
    }
}

/// Convenience for [`Handshake::encode`].
pub fn handshake(
    version_minor: u32,
    mechanisms: &[Mechanism],
    spid: u32,
    cuid: u32,
    cookie: [u8; 16],
) -> Vec<u8> {
    Handshake {
        minor: version_minor,
        mechanisms,
        spid,
        cuid,
        cookie,
    }
    .encode()
}

/// Failure codes Dovecot puts in `code=` (auth-client-interface.h). Postfix
/// ignores them; Dovecot's login processes act on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCode {
    /// Internal error; the client should say "try again later".
    TempFail,
    AuthzFailed,
    UserDisabled,
    PassExpired,
    InvalidBase64,
}

impl FailCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailCode::TempFail => "temp_fail",
            FailCode::AuthzFailed => "authz_fail",
            FailCode::UserDisabled => "user_disabled",
            FailCode::PassExpired => "pass_expired",
            FailCode::InvalidBase64 => "invalid_base64",
        }
    }
}

fn push_kv(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b'\t');
    // Keys are the driver's constants; escaping them anyway means no
    // caller mistake can inject a field or a line.
    tabescape::escape_into(out, key.as_bytes());
    out.push(b'=');
    tabescape::escape_into(out, value.as_bytes());
}

/// `OK\t<id>\tuser=<user>[\t<key>=<value>...]\n`. Keys must not contain `=`.
/// Postfix reads `user=` without unescaping, so usernames should already be
/// free of control characters ([`super::sasl::check_username`] ensures it).
pub fn encode_ok(id: u32, user: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("OK\t{id}").into_bytes();
    push_kv(&mut out, "user", user);
    for (k, v) in extra {
        push_kv(&mut out, k, v);
    }
    out.push(b'\n');
    out
}

/// `FAIL\t<id>[\tuser=<user>][\tcode=temp_fail][\treason=<reason>]\n`.
///
/// `temp` is how Dovecot marks an internal failure (`code=temp_fail`); its
/// login processes then tell the user to retry later. Postfix shows `reason`
/// to the SMTP client, so it must not reveal whether the user exists.
pub fn encode_fail(id: u32, user: Option<&str>, reason: Option<&str>, temp: bool) -> Vec<u8> {
    encode_fail_code(id, user, temp.then_some(FailCode::TempFail), reason)
}

/// [`encode_fail`] with any [`FailCode`], in Dovecot's field order.
pub fn encode_fail_code(
    id: u32,
    user: Option<&str>,
    code: Option<FailCode>,
    reason: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("FAIL\t{id}").into_bytes();
    if let Some(user) = user {
        push_kv(&mut out, "user", user);
    }
    if let Some(code) = code {
        push_kv(&mut out, "code", code.as_str());
    }
    if let Some(reason) = reason {
        push_kv(&mut out, "reason", reason);
    }
    out.push(b'\n');
    out
}

/// `CONT\t<id>\t<base64(challenge)>\n`; an empty challenge gives an empty
/// field, as Dovecot sends for PLAIN without initial response.
pub fn encode_cont(id: u32, challenge: &[u8]) -> Vec<u8> {
    let mut out = format!("CONT\t{id}\t").into_bytes();
    out.extend_from_slice(BASE64.encode(challenge).as_bytes());
    out.push(b'\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::line::{next_line, Frame};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Feeds `wire` (one complete line) to the framer one byte at a time,
    /// checking that nothing is produced before the final LF, and parses
    /// the line at the end.
    fn parse_bytewise(wire: &[u8]) -> Result<ClientLine, ProtoError> {
        let mut buf = Vec::new();
        for (i, &b) in wire.iter().enumerate() {
            buf.push(b);
            match next_line(&buf, MAX_LINE_LENGTH) {
                Frame::NeedMore => assert!(i + 1 < wire.len(), "no line at end of {wire:?}"),
                Frame::Line { line, consumed } => {
                    assert_eq!(i + 1, wire.len(), "line ended early in {wire:?}");
                    assert_eq!(consumed, wire.len());
                    return parse_client_line(line);
                }
                Frame::TooLong => panic!("too long: {wire:?}"),
            }
        }
        panic!("no complete line in {wire:?}")
    }

    /// Splits `wire` at every position into two reads and checks the parse
    /// result is the same every time.
    fn parse_every_split(wire: &[u8]) -> Result<ClientLine, ProtoError> {
        let whole = parse_bytewise(wire);
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            let mut buf = a.to_vec();
            if split < wire.len() {
                assert_eq!(next_line(&buf, MAX_LINE_LENGTH), Frame::NeedMore);
            }
            buf.extend_from_slice(b);
            match next_line(&buf, MAX_LINE_LENGTH) {
                Frame::Line { line, consumed } => {
                    assert_eq!(consumed, wire.len());
                    assert_eq!(parse_client_line(line), whole, "split at {split}");
                }
                other => panic!("split at {split}: {other:?}"),
            }
        }
        whole
    }

    fn auth(wire: &[u8]) -> AuthLine {
        match parse_every_split(wire) {
            Ok(ClientLine::Auth(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    const COOKIE: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];

    #[test]
    fn handshake_golden_2_3() {
        let got = handshake(2, &Mechanism::PASSWORD, 4321, 7, COOKIE);
        assert_eq!(
            got,
            b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t4321\n\
              CUID\t7\nCOOKIE\t00112233445566778899aabbccddeeff\nDONE\n"
                .to_vec()
        );
    }

    #[test]
    fn handshake_golden_with_token_mechanisms() {
        // Flags as Dovecot's mech-oauth2.c gives them (MECH_SEC_PLAINTEXT).
        let got = handshake(2, &Mechanism::ALL, 4321, 7, COOKIE);
        assert_eq!(
            got,
            b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n\
              MECH\tOAUTHBEARER\tplaintext\nMECH\tXOAUTH2\tplaintext\nSPID\t4321\n\
              CUID\t7\nCOOKIE\t00112233445566778899aabbccddeeff\nDONE\n"
                .to_vec()
        );
    }

    #[test]
    fn token_mechanisms_through_the_framer() {
        use super::super::sasl::{Exchange, Step};
        // Roundcube's XOAUTH2 through Dovecot 2.4, and an OAUTHBEARER from a
        // client that waits for the empty challenge.
        let xoauth2 =
            BASE64.encode(b"user=joe@example.org\x01auth=Bearer eyJ.abc-_.x~y+z/w==\x01\x01");
        let line = format!("AUTH\t9\txoauth2\tprotocol=imap\tsecured=tls\tresp={xoauth2}\n");
        let mut a = auth(line.as_bytes());
        assert_eq!(a.mechanism_kind(), Some(Mechanism::XOAuth2));
        let (_, step) = Exchange::start(Mechanism::XOAuth2, a.take_initial_response(3));
        match step {
            Step::Token { authzid, token } => {
                assert_eq!(authzid.as_deref(), Some("joe@example.org"));
                assert_eq!(token.as_bytes(), b"eyJ.abc-_.x~y+z/w==");
            }
            other => panic!("{other:?}"),
        }

        let a = auth(b"AUTH\t10\tOAUTHBEARER\tservice=smtp\tnologin\n");
        let (mut ex, step) = Exchange::start(a.mechanism_kind().unwrap(), None);
        let Step::Challenge(c) = step else {
            panic!("{step:?}")
        };
        assert_eq!(encode_cont(10, &c), b"CONT\t10\t\n");
        let cont = format!(
            "CONT\t10\t{}\n",
            BASE64.encode(b"n,a=joe=2Cx@example.org,\x01auth=Bearer tok\x01\x01")
        );
        let ClientLine::Cont { data, .. } = parse_every_split(cont.as_bytes()).unwrap() else {
            panic!()
        };
        match ex.step(data) {
            Step::Token { authzid, token } => {
                assert_eq!(authzid.as_deref(), Some("joe,x@example.org"));
                assert_eq!(token.as_bytes(), b"tok");
            }
            other => panic!("{other:?}"),
        }

        // The error challenge goes out as one CONT line, and the client's
        // ^A comes back as AQ==.
        let json = super::super::sasl::token_error_challenge(
            Mechanism::OAuthBearer,
            "email",
            "https://id.example.org/.well-known/openid-configuration",
        );
        let cont = encode_cont(10, &json);
        assert!(cont.starts_with(b"CONT\t10\teyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIi"));
        assert_eq!(BASE64.decode(&cont[8..cont.len() - 1]).unwrap(), json);
        assert_eq!(
            parse_every_split(b"CONT\t10\tAQ==\n"),
            Ok(ClientLine::Cont {
                id: 10,
                data: vec![1]
            })
        );
    }

    #[test]
    fn handshake_split_2_4() {
        let hs = Handshake {
            minor: MINOR_DOVECOT_2_4,
            mechanisms: &[Mechanism::Plain],
            spid: 1,
            cuid: 2,
            cookie: COOKIE,
        };
        assert_eq!(hs.encode_version(), b"VERSION\t1\t3\n");
        assert_eq!(
            hs.encode_after_version(),
            b"MECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t2\nCOOKIE\t00112233445566778899aabbccddeeff\nDONE\n"
                .to_vec()
        );
        let mut joined = hs.encode_version();
        joined.extend(hs.encode_after_version());
        assert_eq!(hs.encode(), joined);
    }

    #[test]
    fn ok_golden() {
        assert_eq!(
            encode_ok(1, "joe@example.org", &[]),
            b"OK\t1\tuser=joe@example.org\n"
        );
        assert_eq!(
            encode_ok(42, "joe", &[("original_user", "Joe"), ("x", "a\tb")]),
            b"OK\t42\tuser=joe\toriginal_user=Joe\tx=a\x01tb\n"
        );
        assert_eq!(encode_ok(3, "a\nb", &[]), b"OK\t3\tuser=a\x01nb\n");
    }

    #[test]
    fn fail_golden() {
        assert_eq!(encode_fail(1, None, None, false), b"FAIL\t1\n");
        assert_eq!(
            encode_fail(1, Some("joe"), Some("Authentication failed"), false),
            b"FAIL\t1\tuser=joe\treason=Authentication failed\n"
        );
        assert_eq!(
            encode_fail(9, Some("joe"), Some("try later"), true),
            b"FAIL\t9\tuser=joe\tcode=temp_fail\treason=try later\n"
        );
        assert_eq!(
            encode_fail(9, None, Some("x\ny"), true),
            b"FAIL\t9\tcode=temp_fail\treason=x\x01ny\n"
        );
        assert_eq!(
            encode_fail_code(
                5,
                None,
                Some(FailCode::InvalidBase64),
                Some("Invalid base64 data in initial response")
            ),
            b"FAIL\t5\tcode=invalid_base64\treason=Invalid base64 data in initial response\n"
        );
    }

    #[test]
    fn cont_golden() {
        assert_eq!(encode_cont(1, b""), b"CONT\t1\t\n");
        assert_eq!(encode_cont(2, b"Username:"), b"CONT\t2\tVXNlcm5hbWU6\n");
        assert_eq!(encode_cont(2, b"Password:"), b"CONT\t2\tUGFzc3dvcmQ6\n");
    }

    #[test]
    fn version_and_cpid() {
        assert_eq!(
            parse_every_split(b"VERSION\t1\t2\n"),
            Ok(ClientLine::Version { major: 1, minor: 2 })
        );
        // What Postfix actually sends.
        assert_eq!(
            parse_every_split(b"VERSION\t1\t0\n"),
            Ok(ClientLine::Version { major: 1, minor: 0 })
        );
        assert_eq!(
            parse_every_split(b"CPID\t12345\n"),
            Ok(ClientLine::Cpid(12345))
        );
        assert!(parse_client_line(b"CPID\t0").is_err());
        assert!(parse_client_line(b"CPID").is_err());
        assert!(parse_client_line(b"CPID\t1\t2").is_err());
        assert!(parse_client_line(b"VERSION\t1").is_err());
        assert!(parse_client_line(b"VERSION\t1\t2\t3").is_err());
        assert!(parse_client_line(b"VERSION\tx\t2").is_err());
        assert!(parse_client_line(b"VERSION\t-1\t2").is_err());
        assert!(parse_client_line(b"VERSION\t4294967296\t2").is_err());
    }

    #[test]
    fn postfix_plain_with_initial_response() {
        // Postfix 3.7: AUTH <id> <mech> service=smtp nologin lip= rip= [secured] [resp=]
        let a = auth(
            b"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=192.0.2.1\trip=198.51.100.7\tsecured\tresp=AGpvZQBzZWNyZXQ=\n",
        );
        assert_eq!(a.id, 1);
        assert_eq!(a.mechanism, "PLAIN");
        assert_eq!(a.mechanism_kind(), Some(Mechanism::Plain));
        assert_eq!(a.client.service.as_deref(), Some("smtp"));
        assert_eq!(a.client.lip, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(
            a.client.rip,
            Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)))
        );
        assert!(a.nologin && a.secured && !a.no_penalty);
        assert_eq!(a.resp.as_deref(), Some(&b"\0joe\0secret"[..]));
        assert!(!a.resp_was_bare);
        assert!(a.params.is_empty());
    }

    #[test]
    fn postfix_login_without_tls_ipv6() {
        let a =
            auth(b"AUTH\t2\tlogin\tservice=smtp\tnologin\tlip=2001:db8::25\trip=2001:db8::beef\n");
        assert_eq!(a.mechanism, "login");
        assert_eq!(a.mechanism_kind(), Some(Mechanism::Login));
        assert_eq!(
            a.client.lip,
            Some(IpAddr::V6("2001:db8::25".parse::<Ipv6Addr>().unwrap()))
        );
        assert_eq!(
            a.client.rip,
            Some(IpAddr::V6("2001:db8::beef".parse::<Ipv6Addr>().unwrap()))
        );
        assert!(!a.secured);
        assert_eq!(a.resp, None);
    }

    #[test]
    fn postfix_unknown_local_address() {
        // Postfix sends lip= empty when getsockname fails.
        let a = auth(b"AUTH\t3\tPLAIN\tservice=smtp\tnologin\tlip=\trip=unknown\n");
        assert_eq!((a.client.lip, a.client.rip), (None, None));
    }

    #[test]
    fn dovecot_2_4_login_process_line() {
        let a = auth(
            b"AUTH\t7\tPLAIN\tprotocol=imap\tsession=abcDEF\tlip=::1\trip=[::1]\tlport=143\trport=5555\
              \tsecured=tls\tno-penalty\tlocal_name=mail.example.org\tresp=AGpvZQBwdw==\n",
        );
        assert_eq!(a.client.service.as_deref(), Some("imap"));
        assert_eq!(a.client.lip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(a.client.rip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(a.secured && a.no_penalty && !a.nologin);
        assert_eq!(a.param("session"), Some("abcDEF"));
        assert_eq!(a.param("lport"), Some("143"));
        assert_eq!(a.param("local_name"), Some("mail.example.org"));
        assert_eq!(a.resp.as_deref(), Some(&b"\0joe\0pw"[..]));
    }

    #[test]
    fn escaped_params_are_unescaped() {
        let a = auth(b"AUTH\t1\tPLAIN\tservice=smtp\tclient_id=a\x01tb\x01nc\tflag\n");
        assert_eq!(a.param("client_id"), Some("a\tb\nc"));
        assert_eq!(a.param("flag"), Some(""));
    }

    #[test]
    fn empty_initial_response_forms() {
        let bare = auth(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=\n");
        assert_eq!(bare.resp.as_deref(), Some(&b""[..]));
        assert!(bare.resp_was_bare);
        // Old clients (Postfix says minor 0): bare resp= means "none".
        assert_eq!(bare.initial_response(0), None);
        assert_eq!(bare.initial_response(2), Some(&b""[..]));
        let mut bare2 = bare.clone();
        assert_eq!(bare2.take_initial_response(1), None);
        assert_eq!(bare2.resp, None);

        let eq = auth(b"AUTH\t1\tPLAIN\tservice=smtp\tresp==\n");
        assert_eq!(eq.resp.as_deref(), Some(&b""[..]));
        assert!(!eq.resp_was_bare);
        assert_eq!(eq.initial_response(0), Some(&b""[..]));
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let a = auth(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=AGpvZQBwdw\n");
        assert_eq!(a.resp.as_deref(), Some(&b"\0joe\0pw"[..]));
    }

    #[test]
    fn resp_must_be_last() {
        assert_eq!(
            parse_every_split(b"AUTH\t4\tPLAIN\tresp=AGpvZQBwdw==\tservice=smtp\n"),
            Err(ProtoError::ParamAfterResp { id: 4 })
        );
        assert!(ProtoError::ParamAfterResp { id: 4 }.is_fatal());
    }

    #[test]
    fn invalid_base64_is_per_request() {
        let err = parse_every_split(b"AUTH\t5\tPLAIN\tservice=smtp\tresp=!!!!\n").unwrap_err();
        assert_eq!(
            err,
            ProtoError::InvalidBase64 {
                id: 5,
                context: "initial response"
            }
        );
        assert_eq!(err.recoverable_request_id(), Some(5));
        let err = parse_every_split(b"CONT\t6\tnot base64\n").unwrap_err();
        assert_eq!(err.recoverable_request_id(), Some(6));
        let err = parse_client_line(b"CONT\t6\tAAAA\textra").unwrap_err();
        assert_eq!(err.recoverable_request_id(), Some(6));
    }

    #[test]
    fn broken_auth_lines_are_fatal() {
        let cases: &[&[u8]] = &[
            b"AUTH",
            b"AUTH\t1",
            b"AUTH\t0\tPLAIN\tservice=smtp",
            b"AUTH\tx\tPLAIN",
            b"AUTH\t1\t\tservice=smtp",
            b"AUTH\t1\tPL AIN",
            b"AUTH\t1\tPLAIN\tservice=sm\x010tp",
            b"AUTH\t1\tPLAIN\tservice=smtp\x01",
            b"AUTH\t1\tPLAIN\tservice=sm\xfftp",
            b"AUTH\t1\tPLAIN\tcomment=a\x01zb",
        ];
        for case in cases {
            let err = parse_client_line(case).unwrap_err();
            assert!(err.is_fatal(), "{case:?}: {err}");
        }
    }

    #[test]
    fn nul_in_values_is_rejected() {
        assert_eq!(
            parse_client_line(b"AUTH\t1\tPLAIN\tservice=sm\x010tp"),
            Err(ProtoError::NulByte {
                command: "AUTH",
                field: "a parameter"
            })
        );
        assert!(parse_client_line(b"AUTH\t1\tPLAIN\tservice=smtp\0").is_err());
    }

    #[test]
    fn caps() {
        let long_service = format!("AUTH\t1\tPLAIN\tservice={}", "s".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(
            parse_client_line(long_service.as_bytes()),
            Err(ProtoError::FieldTooLong { .. })
        ));
        let long_key = format!("AUTH\t1\tPLAIN\t{}=1", "k".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(
            parse_client_line(long_key.as_bytes()),
            Err(ProtoError::FieldTooLong { .. })
        ));
        let mut many = b"AUTH\t1\tPLAIN".to_vec();
        for _ in 0..=MAX_AUTH_PARAMS {
            many.extend_from_slice(b"\tx=1");
        }
        assert_eq!(
            parse_client_line(&many),
            Err(ProtoError::TooManyParams {
                command: "AUTH",
                max: MAX_AUTH_PARAMS
            })
        );
        let huge = vec![b'A'; MAX_LINE_LENGTH];
        assert_eq!(
            parse_client_line(&huge),
            Err(ProtoError::LineTooLong {
                max: MAX_LINE_LENGTH
            })
        );
    }

    #[test]
    fn too_long_line_through_the_framer() {
        let mut wire = b"AUTH\t1\tPLAIN\tservice=smtp\tresp=".to_vec();
        wire.resize(MAX_LINE_LENGTH + 100, b'A');
        wire.push(b'\n');
        assert_eq!(next_line(&wire, MAX_LINE_LENGTH), Frame::TooLong);
    }

    #[test]
    fn cont_and_cancel() {
        assert_eq!(
            parse_every_split(b"CONT\t3\tam9l\n"),
            Ok(ClientLine::Cont {
                id: 3,
                data: b"joe".to_vec()
            })
        );
        assert_eq!(
            parse_every_split(b"CONT\t3\t\n"),
            Ok(ClientLine::Cont {
                id: 3,
                data: Vec::new()
            })
        );
        assert_eq!(
            parse_every_split(b"CANCEL\t3\n"),
            Ok(ClientLine::Cancel { id: 3 })
        );
        assert!(parse_client_line(b"CONT\t3").unwrap_err().is_fatal());
        assert!(parse_client_line(b"CONT\tx\tam9l").unwrap_err().is_fatal());
        assert!(parse_client_line(b"CANCEL").unwrap_err().is_fatal());
        assert!(parse_client_line(b"CANCEL\t1\t2").unwrap_err().is_fatal());
    }

    #[test]
    fn crlf_client() {
        assert_eq!(
            parse_every_split(b"CANCEL\t3\r\n"),
            Ok(ClientLine::Cancel { id: 3 })
        );
    }

    #[test]
    fn unknown_commands() {
        assert_eq!(
            parse_client_line(b"REQUEST\t1\t2"),
            Err(ProtoError::UnknownCommand {
                command: "REQUEST".into()
            })
        );
        assert_eq!(
            parse_client_line(b"auth\t1\tPLAIN"),
            Err(ProtoError::UnknownCommand {
                command: "(not a command word)".into()
            })
        );
        assert_eq!(parse_client_line(b""), Err(ProtoError::EmptyLine));
        assert!(parse_client_line(b"\tAUTH").unwrap_err().is_fatal());
        // A bare password sent by mistake is not echoed into the log.
        let msg = parse_client_line(b"hunter2").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn reused_ids_are_the_drivers_business() {
        // The codec is stateless: the same id parses twice. The driver must
        // reject an AUTH whose id is still active (Dovecot drops the
        // connection: "sent a duplicate ID").
        let a = auth(b"AUTH\t1\tPLAIN\tservice=smtp\n");
        let b = auth(b"AUTH\t1\tPLAIN\tservice=smtp\n");
        assert_eq!(a, b);
    }

    #[test]
    fn debug_never_shows_credentials() {
        let a = auth(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=AGpvZQBodW50ZXIy\n");
        let dbg = format!("{:?}", ClientLine::Auth(a));
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("104, 117"),
            "{dbg}"
        );
        let c = parse_client_line(b"CONT\t1\taHVudGVyMg==").unwrap();
        assert!(!format!("{c:?}").contains("104"));
    }

    #[test]
    fn garbage_never_panics() {
        let garbage: &[&[u8]] = &[
            b"",
            b"\t",
            b"\t\t\t",
            b"\x01",
            b"\x01\t\x01",
            b"\0",
            b"\xff\xfe\xfd",
            b"AUTH\t",
            b"AUTH\t\t",
            b"AUTH\t99999999999999999999\tPLAIN",
            b"AUTH\t1\tPLAIN\tresp",
            b"AUTH\t1\tPLAIN\tresp=\t",
            b"AUTH\t1\tPLAIN\t=",
            b"AUTH\t1\tPLAIN\t==\t=\t",
            b"AUTH\t1\tPLAIN\tlip=[\trip=]",
            b"AUTH\t1\tPLAIN\tlip=[]",
            b"AUTH\t1\tPLAIN\tresp=\x01",
            b"AUTH\t1\tPLAIN\tresp=====",
            b"AUTH\t1\t\xc3\xa9",
            b"CONT",
            b"CONT\t",
            b"CONT\t\t",
            b"CONT\t1\t=",
            b"CONT\t1\t\x01",
            b"CONT\t1\t\x01n",
            b"CANCEL\t",
            b"CANCEL\t+1",
            b"VERSION\t\t",
            b"VERSION\t1\t2\t",
            b"CPID\t\xff",
            b"USER\t1\tjoe",
            b"\r",
            b"\r\n",
            b"AUTH\r1\rPLAIN",
        ];
        for g in garbage {
            let _ = parse_client_line(g);
            let _ = super::super::dovecot_master::parse_master_line(g);
            let _ = next_line(g, 8);
            let _ = tabescape::unescape(g);
            let (mut ex, _) =
                super::super::sasl::Exchange::start(Mechanism::Plain, Some(g.to_vec()));
            let _ = ex.step(g.to_vec());
            let (mut ex, _) =
                super::super::sasl::Exchange::start(Mechanism::Login, Some(g.to_vec()));
            let _ = ex.step(g.to_vec());
            for mech in [Mechanism::OAuthBearer, Mechanism::XOAuth2] {
                let (mut ex, _) = super::super::sasl::Exchange::start(mech, Some(g.to_vec()));
                let _ = ex.step(g.to_vec());
            }
        }
        // And every byte value on its own, in several positions.
        for b in 0..=255u8 {
            for template in [
                &b"AUTH\t1\tPLAIN\tservice=s?"[..],
                b"CONT\t1\t?",
                b"?",
                b"USER\t1\t?",
            ] {
                let line: Vec<u8> = template
                    .iter()
                    .map(|&t| if t == b'?' { b } else { t })
                    .collect();
                let _ = parse_client_line(&line);
                let _ = super::super::dovecot_master::parse_master_line(&line);
            }
        }
    }

    #[test]
    fn full_postfix_session_through_framer() {
        // Several lines in one read, as Postfix writes VERSION+CPID at once.
        let wire: &[u8] = b"VERSION\t1\t0\nCPID\t2345\nAUTH\t1\tLOGIN\tservice=smtp\tnologin\tlip=192.0.2.1\trip=192.0.2.9\n\
              CONT\t1\tam9lQGV4YW1wbGUub3Jn\nCONT\t1\tc2VjcmV0\n";
        let mut buf = wire;
        let mut lines = Vec::new();
        while let Frame::Line { line, consumed } = next_line(buf, MAX_LINE_LENGTH) {
            lines.push(parse_client_line(line).unwrap());
            buf = &buf[consumed..];
        }
        assert!(buf.is_empty());
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], ClientLine::Version { major: 1, minor: 0 });
        assert_eq!(lines[1], ClientLine::Cpid(2345));
        let ClientLine::Auth(a) = &lines[2] else {
            panic!("{:?}", lines[2])
        };
        let (mut ex, step) = super::super::sasl::Exchange::start(
            a.mechanism_kind().unwrap(),
            a.initial_response(0).map(<[u8]>::to_vec),
        );
        let super::super::sasl::Step::Challenge(c) = step else {
            panic!()
        };
        assert_eq!(encode_cont(a.id, &c), b"CONT\t1\tVXNlcm5hbWU6\n");
        let ClientLine::Cont { data, .. } = lines[3].clone() else {
            panic!()
        };
        assert!(matches!(
            ex.step(data),
            super::super::sasl::Step::Challenge(_)
        ));
        let ClientLine::Cont { data, .. } = lines[4].clone() else {
            panic!()
        };
        match ex.step(data) {
            super::super::sasl::Step::Done { authcid, password } => {
                assert_eq!(authcid, "joe@example.org");
                assert_eq!(password.as_bytes(), b"secret");
                assert_eq!(
                    encode_ok(a.id, &authcid, &[]),
                    b"OK\t1\tuser=joe@example.org\n"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
