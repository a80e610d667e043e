//! Postfix SMTPD policy delegation (`check_policy_service`) as a pure codec.
//!
//! Postfix writes `name=value` lines ended by an empty line, then waits for a single
//! `action=...` line, also ended by an empty line; the connection is reused for the next
//! request (`SMTPD_POLICY_README`). This module only turns bytes into a [`PolicyRequest`] and
//! an [`Action`] into bytes, so the socket loop and the decision engine can be tested apart.
//!
//! Every [`PolicyError`] is fatal for the connection. The README asks a policy server in
//! trouble to log a warning, send no reply and disconnect: Postfix then applies its own
//! `default_action` and retries on a fresh connection, which is safer than guessing at a
//! reply for a request we did not understand.
//!
//! Where the README leaves room, this codec chooses:
//! - LF ends a line. One CR just before the LF is dropped, so requests typed by hand through
//!   `nc -C` or telnet behave like Postfix's; a CR anywhere else stays in the value.
//! - A repeated attribute keeps its last value; the README allows first or last.
//! - NUL bytes and invalid UTF-8 are refused rather than repaired: a lossy repair could make
//!   two different addresses compare equal in a sender-ownership check.
//! - An empty value means "unavailable" (README) and becomes `None`, except for `sender`,
//!   where an empty value is the null reverse-path `<>` used by bounces.

use std::net::IpAddr;

use thiserror::Error;

/// Bounds that stop a confused peer from making us buffer or scan without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line in bytes, counting a CR before the LF but not the LF. Postfix reads SMTP
    /// commands up to `line_length_limit` (2048) bytes, and xtext-encoded `ccert_*` values or
    /// a long `policy_context` can exceed that, hence the headroom.
    pub max_line: usize,
    /// Most `name=value` lines in one request; Postfix 3.x sends about 30.
    pub max_attributes: usize,
    /// Largest request in bytes, including its terminating empty line.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 4096,
            max_attributes: 256,
            max_request_bytes: 64 * 1024,
        }
    }
}

/// What the front of the caller's buffer holds.
// Returned once per request and destructured at once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete request. Remove `consumed` bytes from the front of the buffer before
    /// decoding again: Postfix may already have pipelined the next request behind it.
    Request {
        request: PolicyRequest,
        consumed: usize,
    },
    /// No complete request yet; read more and decode the grown buffer.
    NeedMore,
    /// Log the error, send nothing and close the connection (see the module notes).
    Invalid(PolicyError),
}

/// One delegated access-policy request.
///
/// The attributes mailauthd decides on are typed; everything else Postfix sends, including
/// names a future Postfix may add, is kept verbatim in `other` for logging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    /// Never empty after [`decode`]; Postfix sends `smtpd_access_policy`. See
    /// [`PolicyRequest::validate`].
    pub request: String,
    /// `CONNECT`, `EHLO`, `HELO`, `MAIL`, `RCPT`, `DATA`, `END-OF-MESSAGE`, `VRFY` or `ETRN`.
    pub protocol_state: Option<String>,
    /// `SMTP` or `ESMTP`.
    pub protocol_name: Option<String>,
    pub helo_name: Option<String>,
    pub queue_id: Option<String>,
    /// `Some("")` is the null reverse-path `<>`; `None` means Postfix did not send it.
    pub sender: Option<String>,
    pub recipient: Option<String>,
    /// Non-zero only in the `DATA` and `END-OF-MESSAGE` states.
    pub recipient_count: Option<u64>,
    /// `None` when absent, empty or `unknown`.
    pub client_address: Option<IpAddr>,
    /// Verbatim, so Postfix's `unknown` (no verified hostname) stays visible to policy.
    pub client_name: Option<String>,
    /// Identical across the requests for one message on one connection.
    pub instance: Option<String>,
    pub sasl_method: Option<String>,
    /// `None` means the client did not authenticate.
    pub sasl_username: Option<String>,
    pub sasl_sender: Option<String>,
    /// Declared `SIZE=` at MAIL, the actual size at `END-OF-MESSAGE`.
    pub size: Option<u64>,
    /// Postfix 3.2 and later; `None` when absent, empty or `unknown`.
    pub server_address: Option<IpAddr>,
    /// The remaining attributes in arrival order, values verbatim (empty ones included).
    pub other: Vec<(String, String)>,
}

impl PolicyRequest {
    /// The only request type Postfix's SMTP server sends to `check_policy_service`.
    pub const SMTPD_ACCESS_POLICY: &'static str = "smtpd_access_policy";

    /// Refuses what the decision engine cannot answer: a missing request type (possible for
    /// values built by hand) or one other than `smtpd_access_policy`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self.request.as_str() {
            "" => Err(PolicyError::MissingRequest),
            Self::SMTPD_ACCESS_POLICY => Ok(()),
            other => Err(PolicyError::UnsupportedRequest(snippet(other))),
        }
    }

    /// An attribute without a typed field, e.g. `policy_context` or `ccert_subject`.
    pub fn other_value(&self, name: &str) -> Option<&str> {
        self.other
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request was refused. Names and values are shown escaped and truncated, so a hostile
/// value cannot forge log lines or flood them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("Postfix policy request line {line} is longer than {limit} bytes")]
    LineTooLong { line: usize, limit: usize },
    #[error("Postfix policy request has more than {limit} attributes")]
    TooManyAttributes { limit: usize },
    #[error("Postfix policy request exceeds {limit} bytes without its terminating empty line")]
    RequestTooLarge { limit: usize },
    #[error("Postfix policy request line {line} is not name=value (no '=')")]
    MissingEquals { line: usize },
    #[error("Postfix policy request line {line} has an empty attribute name")]
    EmptyName { line: usize },
    #[error("Postfix policy request line {line} contains a NUL byte")]
    NulByte { line: usize },
    #[error("Postfix policy request line {line}: attribute {name:?} is not valid UTF-8")]
    InvalidUtf8 { line: usize, name: String },
    #[error("Postfix policy request line {line}: {name}={value:?} is not a decimal number")]
    InvalidNumber {
        line: usize,
        name: String,
        value: String,
    },
    #[error(
        "Postfix policy request line {line}: {name}={value:?} is not an IP address or \"unknown\""
    )]
    InvalidAddress {
        line: usize,
        name: String,
        value: String,
    },
    #[error(
        "Postfix policy request has no request= attribute; \
         is the peer really Postfix's check_policy_service?"
    )]
    MissingRequest,
    #[error(
        "Postfix policy request type {0:?} is not supported; \
         mailauthd only answers smtpd_access_policy (check_policy_service)"
    )]
    UnsupportedRequest(String),
}

/// Decodes the request at the front of `buf`; see [`Decoded`] for what to do next.
///
/// Errors are reported as soon as the bytes that prove them have arrived, without waiting
/// for the terminating empty line, and nothing beyond `limits.max_request_bytes` is read.
#[must_use]
pub fn decode(buf: &[u8], limits: &Limits) -> Decoded {
    match scan(buf, limits) {
        Ok(Some((request, consumed))) => Decoded::Request { request, consumed },
        Ok(None) => Decoded::NeedMore,
        Err(err) => Decoded::Invalid(err),
    }
}

fn scan(buf: &[u8], limits: &Limits) -> Result<Option<(PolicyRequest, usize)>, PolicyError> {
    // Bytes past the size limit cannot belong to an acceptable request, so one call costs
    // O(max_request_bytes) however much a peer has pushed into the buffer.
    let window = buf.get(..limits.max_request_bytes).unwrap_or(buf);
    let mut request = PolicyRequest::default();
    let mut rest = window;
    let mut line_no = 0;
    while let Some((raw, tail)) = split_line(rest) {
        line_no += 1;
        check_line_length(raw, line_no, limits)?;
        rest = tail;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            return finish(request).map(|request| Some((request, window.len() - rest.len())));
        }
        if line_no > limits.max_attributes {
            return Err(PolicyError::TooManyAttributes {
                limit: limits.max_attributes,
            });
        }
        apply_line(&mut request, line, line_no)?;
    }
    check_partial(buf.len(), rest, line_no + 1, limits)?;
    Ok(None)
}

/// The first LF-terminated line and what follows it, or `None` while the LF is still unread.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = bytes.splitn(2, |&b| b == b'\n');
    let line = parts.next()?;
    parts.next().map(|tail| (line, tail))
}

fn check_line_length(raw: &[u8], line: usize, limits: &Limits) -> Result<(), PolicyError> {
    if raw.len() > limits.max_line {
        return Err(PolicyError::LineTooLong {
            line,
            limit: limits.max_line,
        });
    }
    Ok(())
}

/// Fails early on an unfinished request that can no longer end within the limits, so a
/// peer that never sends the empty line is dropped instead of buffered forever.
fn check_partial(
    total: usize,
    tail: &[u8],
    line: usize,
    limits: &Limits,
) -> Result<(), PolicyError> {
    check_line_length(tail, line, limits)?;
    if total > 0 && total >= limits.max_request_bytes {
        return Err(PolicyError::RequestTooLarge {
            limit: limits.max_request_bytes,
        });
    }
    Ok(())
}

fn finish(request: PolicyRequest) -> Result<PolicyRequest, PolicyError> {
    // The README makes `request` mandatory; without it the peer is not speaking this protocol.
    if request.request.is_empty() {
        return Err(PolicyError::MissingRequest);
    }
    Ok(request)
}

fn apply_line(request: &mut PolicyRequest, line: &[u8], line_no: usize) -> Result<(), PolicyError> {
    if line.contains(&0) {
        return Err(PolicyError::NulByte { line: line_no });
    }
    let (name, value) = split_attribute(line, line_no)?;
    set_attribute(request, name, value, line_no)
}

fn split_attribute(line: &[u8], line_no: usize) -> Result<(&str, &str), PolicyError> {
    let mut parts = line.splitn(2, |&b| b == b'=');
    let name = parts.next().unwrap_or_default();
    let value = parts
        .next()
        .ok_or(PolicyError::MissingEquals { line: line_no })?;
    if name.is_empty() {
        return Err(PolicyError::EmptyName { line: line_no });
    }
    let invalid = || PolicyError::InvalidUtf8 {
        line: line_no,
        name: snippet(&String::from_utf8_lossy(name)),
    };
    let name = std::str::from_utf8(name).map_err(|_| invalid())?;
    let value = std::str::from_utf8(value).map_err(|_| invalid())?;
    Ok((name, value))
}

fn set_attribute(
    request: &mut PolicyRequest,
    name: &str,
    value: &str,
    line: usize,
) -> Result<(), PolicyError> {
    match name {
        "request" => request.request = value.to_owned(),
        "protocol_state" => request.protocol_state = text(value),
        "protocol_name" => request.protocol_name = text(value),
        "helo_name" => request.helo_name = text(value),
        "queue_id" => request.queue_id = text(value),
        "sender" => request.sender = Some(value.to_owned()),
        "recipient" => request.recipient = text(value),
        "recipient_count" => request.recipient_count = number(name, value, line)?,
        "client_address" => request.client_address = address(name, value, line)?,
        "client_name" => request.client_name = text(value),
        "instance" => request.instance = text(value),
        "sasl_method" => request.sasl_method = text(value),
        "sasl_username" => request.sasl_username = text(value),
        "sasl_sender" => request.sasl_sender = text(value),
        "size" => request.size = number(name, value, line)?,
        "server_address" => request.server_address = address(name, value, line)?,
        _ => set_other(&mut request.other, name, value),
    }
    Ok(())
}

fn text(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn number(name: &str, value: &str, line: usize) -> Result<Option<u64>, PolicyError> {
    if value.is_empty() {
        return Ok(None);
    }
    // `u64::from_str` would also take "+5"; Postfix only writes plain digits, so anything
    // else means the request is not what we think it is.
    let digits_only = value.bytes().all(|b| b.is_ascii_digit());
    match value.parse() {
        Ok(n) if digits_only => Ok(Some(n)),
        _ => Err(PolicyError::InvalidNumber {
            line,
            name: name.to_owned(),
            value: snippet(value),
        }),
    }
}

fn address(name: &str, value: &str, line: usize) -> Result<Option<IpAddr>, PolicyError> {
    if value.is_empty() || value == "unknown" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| PolicyError::InvalidAddress {
            line,
            name: name.to_owned(),
            value: snippet(value),
        })
}

fn set_other(other: &mut Vec<(String, String)>, name: &str, value: &str) {
    match other.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value.to_owned(),
        None => other.push((name.to_owned(), value.to_owned())),
    }
}

/// Bounds what an error message repeats from the wire.
fn snippet(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = s.chars().take(MAX_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A reply, i.e. any action a Postfix SMTPD access(5) table may return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No opinion: Postfix goes on with the next restriction.
    Dunno,
    /// Accept, skipping the remaining restrictions in this list.
    Ok,
    /// Permanent 5xx; the text, e.g. `5.7.1 Sender address not owned by user`, is shown to
    /// the SMTP client.
    Reject(String),
    /// 4xx, but only if no later restriction rejects permanently.
    DeferIfPermit(String),
    /// 4xx now.
    Defer(String),
    /// Any other access(5) action, e.g. `HOLD reason`, written after `action=` as given
    /// apart from the control-character rule below; an empty one is the caller's bug.
    Other(String),
}

impl Action {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Action::Dunno => ("DUNNO", ""),
            Action::Ok => ("OK", ""),
            Action::Reject(text) => ("REJECT", text),
            Action::DeferIfPermit(text) => ("DEFER_IF_PERMIT", text),
            Action::Defer(text) => ("DEFER", text),
            Action::Other(text) => ("", text),
        }
    }
}

/// Encodes `action=<verb> <text>` and the empty line that ends a reply.
///
/// Control characters in the text become spaces: a CR or LF would end the reply early and
/// let the rest of the text be read as a second, forged reply to the next request.
#[must_use]
pub fn encode_action(action: &Action) -> Vec<u8> {
    let (verb, text) = action.parts();
    let mut line = String::with_capacity("action=".len() + verb.len() + 1 + text.len() + 2);
    line.push_str("action=");
    line.push_str(verb);
    if !verb.is_empty() && !text.is_empty() {
        line.push(' ');
    }
    line.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
    line.push_str("\n\n");
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission-port RCPT request with every attribute Postfix 3.7 sends (3.8 adds
    /// `compatibility_level` and `mail_version`); no client certificate, so `ccert_*` are
    /// empty, and the first RCPT comes before a queue file exists, so `queue_id` is too.
    const GOLDEN_37: &str = "request=smtpd_access_policy\n\
protocol_state=RCPT\n\
protocol_name=ESMTP\n\
helo_name=[192.168.1.23]\n\
queue_id=\n\
sender=alice@example.org\n\
recipient=bob@example.net\n\
recipient_count=0\n\
client_address=2001:db8::25\n\
client_name=unknown\n\
reverse_client_name=unknown\n\
instance=3c4f.6650f1c3.8d2e4.0\n\
sasl_method=PLAIN\n\
sasl_username=alice@example.org\n\
sasl_sender=\n\
size=12345\n\
ccert_subject=\n\
ccert_issuer=\n\
ccert_fingerprint=\n\
encryption_protocol=TLSv1.3\n\
encryption_cipher=TLS_AES_256_GCM_SHA384\n\
encryption_keysize=256\n\
etrn_domain=\n\
stress=\n\
ccert_pubkey_fingerprint=\n\
client_port=52144\n\
policy_context=submission\n\
server_address=192.0.2.10\n\
server_port=587\n\
\n";

    const MINIMAL: &str = "request=smtpd_access_policy\nprotocol_state=CONNECT\n\n";

    fn golden_37() -> PolicyRequest {
        let other = [
            ("reverse_client_name", "unknown"),
            ("ccert_subject", ""),
            ("ccert_issuer", ""),
            ("ccert_fingerprint", ""),
            ("encryption_protocol", "TLSv1.3"),
            ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
            ("encryption_keysize", "256"),
            ("etrn_domain", ""),
            ("stress", ""),
            ("ccert_pubkey_fingerprint", ""),
            ("client_port", "52144"),
            ("policy_context", "submission"),
            ("server_port", "587"),
        ];
        PolicyRequest {
            request: "smtpd_access_policy".into(),
            protocol_state: Some("RCPT".into()),
            protocol_name: Some("ESMTP".into()),
            helo_name: Some("[192.168.1.23]".into()),
            queue_id: None,
            sender: Some("alice@example.org".into()),
            recipient: Some("bob@example.net".into()),
            recipient_count: Some(0),
            client_address: Some("2001:db8::25".parse().unwrap()),
            client_name: Some("unknown".into()),
            instance: Some("3c4f.6650f1c3.8d2e4.0".into()),
            sasl_method: Some("PLAIN".into()),
            sasl_username: Some("alice@example.org".into()),
            sasl_sender: None,
            size: Some(12345),
            server_address: Some("192.0.2.10".parse().unwrap()),
            other: other
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn decoded(buf: &[u8]) -> (PolicyRequest, usize) {
        decoded_with(buf, &Limits::default())
    }

    fn decoded_with(buf: &[u8], limits: &Limits) -> (PolicyRequest, usize) {
        match decode(buf, limits) {
            Decoded::Request { request, consumed } => (request, consumed),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn invalid(buf: &[u8]) -> PolicyError {
        invalid_with(buf, &Limits::default())
    }

    fn invalid_with(buf: &[u8], limits: &Limits) -> PolicyError {
        match decode(buf, limits) {
            Decoded::Invalid(err) => err,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn with_request(lines: &str) -> Vec<u8> {
        format!("request=smtpd_access_policy\n{lines}\n").into_bytes()
    }

    #[test]
    fn decodes_golden_postfix_37_request() {
        let (request, consumed) = decoded(GOLDEN_37.as_bytes());
        assert_eq!(request, golden_37());
        assert_eq!(consumed, GOLDEN_37.len());
        assert_eq!(request.validate(), Ok(()));
        assert_eq!(request.other_value("policy_context"), Some("submission"));
        assert_eq!(request.other_value("ccert_subject"), Some(""));
        assert_eq!(request.other_value("nonexistent"), None);
    }

    #[test]
    fn every_split_needs_more_until_complete() {
        let bytes = GOLDEN_37.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut], &Limits::default()),
                Decoded::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(decoded(bytes), (golden_37(), bytes.len()));
    }

    /// A request as Postfix 3.7.11 (Debian) really sent it, recorded by
    /// tests/e2e/postfix/policy.sh with UPDATE_FIXTURES=1: the `#` header, then the raw
    /// bytes of the RCPT-stage request.
    const RECORDED_37: &str = include_str!("../../tests/fixtures/postfix-3.7-policy.txt");

    /// The fixture without its `#` header lines: the request's bytes as received.
    fn recorded_37_request() -> &'static [u8] {
        let mut rest = RECORDED_37;
        while rest.starts_with('#') {
            let end = rest.find('\n').expect("a header line ends with LF");
            rest = &rest[end + 1..];
        }
        rest.as_bytes()
    }

    #[test]
    fn decodes_a_request_recorded_from_postfix_37() {
        let bytes = recorded_37_request();
        assert!(bytes.starts_with(b"request=smtpd_access_policy\n"));
        assert!(bytes.ends_with(b"\n\n"));
        let (request, consumed) = decoded(bytes);
        assert_eq!(consumed, bytes.len());
        assert_eq!(request.validate(), Ok(()));
        assert_eq!(request.request, PolicyRequest::SMTPD_ACCESS_POLICY);
        assert_eq!(request.protocol_state.as_deref(), Some("RCPT"));
        assert_eq!(request.sasl_username.as_deref(), Some("alice@example.org"));
        assert_eq!(request.sasl_method.as_deref(), Some("PLAIN"));
        assert_eq!(request.sender.as_deref(), Some("alice@example.org"));
        assert_eq!(request.recipient.as_deref(), Some("bob@example.org"));
        assert_eq!(request.instance.as_deref(), Some("50e7.6b0ba0e0.3b960.0"));
        assert_eq!(request.recipient_count, Some(0));
        assert_eq!(request.queue_id, None);
        assert_eq!(request.sasl_sender, None);
        assert_eq!(request.client_address, Some("127.0.1.19".parse().unwrap()));
        assert_eq!(request.server_address, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(request.other_value("policy_context"), Some("submissions"));
        assert_eq!(request.other_value("encryption_protocol"), Some("TLSv1.3"));

        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut], &Limits::default()),
                Decoded::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode(bytes, &Limits::default()),
            Decoded::Request {
                request,
                consumed: bytes.len()
            }
        );
    }

    #[test]
    fn keeps_postfix_38_version_attributes_in_other() {
        let input = GOLDEN_37.replace(
            "server_port=587\n",
            "server_port=587\ncompatibility_level=3.6\nmail_version=3.8.6\n",
        );
        let (request, _) = decoded(input.as_bytes());
        assert_eq!(request.other_value("compatibility_level"), Some("3.6"));
        assert_eq!(request.other_value("mail_version"), Some("3.8.6"));
    }

    #[test]
    fn decodes_pipelined_requests_one_at_a_time() {
        let second = "request=smtpd_access_policy\nprotocol_state=DATA\nrecipient_count=2\n\n";
        let third_partial = "request=smtpd_access_policy\nprotocol_state=END-OF-";
        let buf = format!("{GOLDEN_37}{second}{third_partial}");
        let (first, consumed) = decoded(buf.as_bytes());
        assert_eq!((first, consumed), (golden_37(), GOLDEN_37.len()));
        let rest = &buf.as_bytes()[consumed..];
        let (request, consumed) = decoded(rest);
        assert_eq!(consumed, second.len());
        assert_eq!(request.protocol_state.as_deref(), Some("DATA"));
        assert_eq!(request.recipient_count, Some(2));
        assert_eq!(
            decode(&rest[consumed..], &Limits::default()),
            Decoded::NeedMore
        );
    }

    #[test]
    fn tolerates_crlf_line_endings() {
        let crlf = GOLDEN_37.replace('\n', "\r\n");
        assert_eq!(decoded(crlf.as_bytes()), (golden_37(), crlf.len()));
        let mixed = "request=smtpd_access_policy\r\nsender=a@b\n\r\n";
        let (request, consumed) = decoded(mixed.as_bytes());
        assert_eq!(consumed, mixed.len());
        assert_eq!(request.sender.as_deref(), Some("a@b"));
    }

    #[test]
    fn keeps_a_cr_that_does_not_end_a_line() {
        let (request, _) = decoded(&with_request("helo_name=a\rb\r\r\n"));
        assert_eq!(request.helo_name.as_deref(), Some("a\rb\r"));
    }

    #[test]
    fn needs_more_without_the_empty_line() {
        let unterminated = GOLDEN_37.trim_end_matches('\n');
        assert_eq!(
            decode(unterminated.as_bytes(), &Limits::default()),
            Decoded::NeedMore
        );
        let one_newline = format!("{unterminated}\n");
        assert_eq!(
            decode(one_newline.as_bytes(), &Limits::default()),
            Decoded::NeedMore
        );
        assert_eq!(decode(b"", &Limits::default()), Decoded::NeedMore);
    }

    fn one_mebibyte_request() -> Vec<u8> {
        let filler = format!("filler={}\n", "a".repeat(1000));
        let mut buf = b"request=smtpd_access_policy\n".to_vec();
        while buf.len() < 1 << 20 {
            buf.extend_from_slice(filler.as_bytes());
        }
        buf.push(b'\n');
        buf
    }

    #[test]
    fn refuses_a_one_mebibyte_request() {
        let buf = one_mebibyte_request();
        // Lines of 1000 bytes stay under max_line, so only the size limit can stop this one.
        let limits = Limits {
            max_attributes: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(
            invalid_with(&buf, &limits),
            PolicyError::RequestTooLarge { limit: 64 * 1024 }
        );
    }

    #[test]
    fn refuses_an_oversized_request_while_it_streams_in() {
        let buf = one_mebibyte_request();
        let limits = Limits {
            max_attributes: usize::MAX,
            ..Limits::default()
        };
        let chunk = 4096;
        let mut calls = 0;
        let mut received = 0;
        let err = loop {
            received = (received + chunk).min(buf.len());
            calls += 1;
            match decode(&buf[..received], &limits) {
                Decoded::NeedMore => continue,
                Decoded::Invalid(err) => break err,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(err, PolicyError::RequestTooLarge { limit: 64 * 1024 });
        assert!(
            calls <= limits.max_request_bytes / chunk + 1,
            "{calls} calls"
        );
    }

    #[test]
    fn request_size_limit_is_inclusive() {
        let bytes = MINIMAL.as_bytes();
        let exact = Limits {
            max_request_bytes: bytes.len(),
            ..Limits::default()
        };
        assert_eq!(decoded_with(bytes, &exact).1, bytes.len());
        let short = Limits {
            max_request_bytes: bytes.len() - 1,
            ..Limits::default()
        };
        let limit = short.max_request_bytes;
        assert_eq!(
            invalid_with(bytes, &short),
            PolicyError::RequestTooLarge { limit }
        );
        // The terminator just past the limit must not be honoured.
        assert_eq!(
            invalid_with(&bytes[..limit], &short),
            PolicyError::RequestTooLarge { limit }
        );
    }

    #[test]
    fn refuses_a_long_line_before_it_ends() {
        let limits = Limits {
            max_line: 40,
            ..Limits::default()
        };
        let fits = with_request(&format!("sender={}\n", "x".repeat(33)));
        assert!(matches!(decode(&fits, &limits), Decoded::Request { .. }));
        let long = with_request(&format!("sender={}\n", "x".repeat(34)));
        let err = PolicyError::LineTooLong { line: 2, limit: 40 };
        assert_eq!(invalid_with(&long, &limits), err);
        let unfinished = &long[..long.len() - 2];
        assert_eq!(invalid_with(unfinished, &limits), err);
        let one_line_mib = vec![b'a'; 1 << 20];
        assert!(matches!(
            invalid(&one_line_mib),
            PolicyError::LineTooLong { line: 1, .. }
        ));
    }

    #[test]
    fn refuses_a_line_without_equals() {
        let buf = with_request("sender alice@example.org\n");
        assert_eq!(invalid(&buf), PolicyError::MissingEquals { line: 2 });
        // Reported before the empty line arrives: the connection is lost anyway.
        assert_eq!(
            invalid(&buf[..buf.len() - 1]),
            PolicyError::MissingEquals { line: 2 }
        );
    }

    #[test]
    fn refuses_an_empty_name() {
        assert_eq!(
            invalid(&with_request("=value\n")),
            PolicyError::EmptyName { line: 2 }
        );
    }

    #[test]
    fn splits_at_the_first_equals_only() {
        let (request, _) = decoded(&with_request("sasl_username=a=b==\n"));
        assert_eq!(request.sasl_username.as_deref(), Some("a=b=="));
    }

    #[test]
    fn refuses_binary_junk() {
        let junk = b"\x7fELF\x02\x01\x01\x00\x00\x00\n\n";
        assert_eq!(invalid(junk), PolicyError::NulByte { line: 1 });
        let high = b"\xff\xfe=\x80\x81\n\n";
        assert!(matches!(
            invalid(high),
            PolicyError::InvalidUtf8 { line: 1, .. }
        ));
        let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert!(matches!(
            decode(tls_hello, &Limits::default()),
            Decoded::NeedMore | Decoded::Invalid(_)
        ));
    }

    #[test]
    fn refuses_invalid_utf8_but_accepts_smtputf8_addresses() {
        let bad =
            [b"request=smtpd_access_policy\nsender=j\xf6rg@example.de\n\n".as_slice()].concat();
        assert_eq!(
            invalid(&bad),
            PolicyError::InvalidUtf8 {
                line: 2,
                name: "sender".into()
            }
        );
        let (request, _) = decoded(&with_request("sender=jörg@bücher.example\n"));
        assert_eq!(request.sender.as_deref(), Some("jörg@bücher.example"));
    }

    #[test]
    fn refuses_ten_thousand_attributes() {
        let lines: String = (0..10_000).map(|i| format!("attr{i}=v\n")).collect();
        assert_eq!(
            invalid(&with_request(&lines)),
            PolicyError::TooManyAttributes { limit: 256 }
        );
    }

    #[test]
    fn attribute_limit_is_inclusive() {
        let lines: String = (1..256).map(|i| format!("attr{i}=v\n")).collect();
        let (request, _) = decoded(&with_request(&lines));
        assert_eq!(request.other.len(), 255);
        let one_more = format!("{lines}attr256=v\n");
        assert_eq!(
            invalid(&with_request(&one_more)),
            PolicyError::TooManyAttributes { limit: 256 }
        );
    }

    #[test]
    fn refuses_a_missing_or_empty_request_type() {
        let err = PolicyError::MissingRequest;
        assert_eq!(invalid(b"protocol_state=RCPT\nsender=a@b\n\n"), err);
        assert_eq!(invalid(b"request=\n\n"), err);
        assert_eq!(invalid(b"\n"), err);
        assert_eq!(invalid(b"request=x\nrequest=\n\n"), err);
    }

    #[test]
    fn validate_accepts_only_smtpd_access_policy() {
        let (request, _) = decoded(b"request=junk_policy\n\n");
        assert_eq!(
            request.validate(),
            Err(PolicyError::UnsupportedRequest("junk_policy".into()))
        );
        assert_eq!(
            PolicyRequest::default().validate(),
            Err(PolicyError::MissingRequest)
        );
    }

    #[test]
    fn last_repeated_attribute_wins() {
        let (request, _) = decoded(&with_request(
            "sender=a@x\nfoo=1\nsender=b@x\nfoo=2\nsize=1\nsize=2\n",
        ));
        assert_eq!(request.sender.as_deref(), Some("b@x"));
        assert_eq!(request.size, Some(2));
        assert_eq!(request.other, vec![("foo".to_string(), "2".to_string())]);
    }

    #[test]
    fn empty_sender_is_the_null_reverse_path() {
        let (request, _) = decoded(&with_request("sender=\nsasl_username=\nhelo_name=\n"));
        assert_eq!(request.sender.as_deref(), Some(""));
        assert_eq!(request.sasl_username, None);
        assert_eq!(request.helo_name, None);
        let (absent, _) = decoded(MINIMAL.as_bytes());
        assert_eq!(absent.sender, None);
    }

    #[test]
    fn parses_addresses() {
        let (request, _) = decoded(&with_request(
            "client_address=unknown\nserver_address=::ffff:192.0.2.1\n",
        ));
        assert_eq!(request.client_address, None);
        assert_eq!(
            request.server_address,
            Some("::ffff:192.0.2.1".parse().unwrap())
        );
        let (request, _) = decoded(&with_request("client_address=\n"));
        assert_eq!(request.client_address, None);
        for bad in [
            "999.1.1.1",
            "[192.0.2.1]",
            "IPv6:::1",
            "fe80::1%eth0",
            " 192.0.2.1",
        ] {
            let buf = with_request(&format!("client_address={bad}\n"));
            assert_eq!(
                invalid(&buf),
                PolicyError::InvalidAddress {
                    line: 2,
                    name: "client_address".into(),
                    value: bad.into()
                }
            );
        }
    }

    #[test]
    fn parses_numbers() {
        let (request, _) = decoded(&with_request("size=\nrecipient_count=0\n"));
        assert_eq!((request.size, request.recipient_count), (None, Some(0)));
        let (request, _) = decoded(&with_request("size=18446744073709551615\n"));
        assert_eq!(request.size, Some(u64::MAX));
        for bad in ["-1", "+1", "0x10", "1 ", "18446744073709551616", "12k"] {
            let buf = with_request(&format!("size={bad}\n"));
            assert!(
                matches!(invalid(&buf), PolicyError::InvalidNumber { line: 2, .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_messages_escape_and_truncate_wire_data() {
        // A CR in mid-line reaches the value intact; a log must not honour it.
        let value = format!("1\rforged \x1b[31mline{}", "x".repeat(200));
        let buf = with_request(&format!("size={value}\n"));
        let message = invalid(&buf).to_string();
        assert!(!message.contains(['\r', '\x1b']), "{message}");
        assert!(message.contains("\\r"), "{message}");
        assert!(message.len() < 200, "{message}");
        let unsupported = PolicyError::UnsupportedRequest("x\ny".into()).to_string();
        assert!(!unsupported.contains('\n'), "{unsupported}");
    }

    #[test]
    fn encodes_golden_replies() {
        let cases: [(Action, &[u8]); 8] = [
            (Action::Dunno, b"action=DUNNO\n\n"),
            (Action::Ok, b"action=OK\n\n"),
            (
                Action::Reject("5.7.1 Sender address rejected: not owned by user alice".into()),
                b"action=REJECT 5.7.1 Sender address rejected: not owned by user alice\n\n",
            ),
            (Action::Reject(String::new()), b"action=REJECT\n\n"),
            (
                Action::DeferIfPermit("4.7.1 Service temporarily unavailable".into()),
                b"action=DEFER_IF_PERMIT 4.7.1 Service temporarily unavailable\n\n",
            ),
            (
                Action::Defer("4.3.0 Try again later".into()),
                b"action=DEFER 4.3.0 Try again later\n\n",
            ),
            (
                Action::Other("HOLD quarantined".into()),
                b"action=HOLD quarantined\n\n",
            ),
            (
                Action::Reject("5.7.1 Nachricht für jörg abgelehnt".into()),
                "action=REJECT 5.7.1 Nachricht für jörg abgelehnt\n\n".as_bytes(),
            ),
        ];
        for (action, expected) in cases {
            assert_eq!(encode_action(&action), expected, "{action:?}");
        }
    }

    #[test]
    fn encoder_cannot_be_made_to_emit_a_second_reply() {
        let texts = [
            "5.7.1 bad\n\naction=OK",
            "x\r\naction=OK\r\n\r\n",
            "a\0b\tc\u{85}d",
        ];
        for text in texts {
            for action in [
                Action::Reject(text.into()),
                Action::DeferIfPermit(text.into()),
                Action::Defer(text.into()),
                Action::Other(text.into()),
            ] {
                let bytes = encode_action(&action);
                let body = bytes.strip_suffix(b"\n\n").unwrap();
                assert!(
                    !body.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)),
                    "{action:?}"
                );
            }
        }
        assert_eq!(
            encode_action(&Action::Reject("5.7.1 bad\n\naction=OK".into())),
            b"action=REJECT 5.7.1 bad  action=OK\n\n"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut inputs: Vec<Vec<u8>> = [
            &b""[..],
            b"\n",
            b"\r\n",
            b"\r",
            b"\n\n\n\n",
            b"\r\r\r\n\n",
            b"=",
            b"=\n\n",
            b"==\n\n",
            b"request\n\n",
            b"request=smtpd_access_policy",
            b"request=smtpd_access_policy\x00\n\n",
            b"\x00\n\n",
            b"\xff\xfe\xfd=\x80\n\n",
            b"request=smtpd_access_policy\nclient_address=999.1.1.1\n\n",
            b"request=smtpd_access_policy\nserver_address=::::\n\n",
            b"request=smtpd_access_policy\nsize=99999999999999999999999\n\n",
            b"request=smtpd_access_policy\nrecipient_count=\xd9\xa3\n\n",
            b"request=smtpd_access_policy\n\xc3=\xa9\n\n",
            b"request=\xe2\x80\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"action=DUNNO\n\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        inputs.push(pseudo_random_bytes(8192));
        inputs.push(
            pseudo_random_bytes(8192)
                .into_iter()
                .map(|b| b"a=\n\r\x00\xff"[usize::from(b) % 6])
                .collect(),
        );
        inputs.push(vec![b'='; 100_000]);
        inputs.push(vec![b'\n'; 100_000]);
        let tiny = Limits {
            max_line: 3,
            max_attributes: 1,
            max_request_bytes: 8,
        };
        let zero = Limits {
            max_line: 0,
            max_attributes: 0,
            max_request_bytes: 0,
        };
        for input in &inputs {
            for limits in [Limits::default(), tiny, zero] {
                for cut in prefixes(input.len()) {
                    if let Decoded::Request { consumed, .. } = decode(&input[..cut], &limits) {
                        assert!(
                            consumed > 0 && consumed <= cut && consumed <= limits.max_request_bytes
                        );
                    }
                }
            }
        }
    }

    /// Every prefix of short inputs, a sample of long ones to keep the test fast.
    fn prefixes(len: usize) -> impl Iterator<Item = usize> {
        let step = if len > 4096 { len / 257 + 1 } else { 1 };
        (0..=len).step_by(step).chain(std::iter::once(len))
    }

    /// Deterministic, so a failure reproduces.
    fn pseudo_random_bytes(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn default_limits() {
        assert_eq!(
            Limits::default(),
            Limits {
                max_line: 4096,
                max_attributes: 256,
                max_request_bytes: 65536
            }
        );
    }
}
