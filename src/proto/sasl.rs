//! Server side of the SASL mechanisms PLAIN (RFC 4616), LOGIN, OAUTHBEARER
//! (RFC 7628) and XOAUTH2, as pure state machines: bytes in, challenges or a
//! verdict out. Verifying the password or the token is the caller's job.
//!
//! Behaviour follows Dovecot's `mech-plain.c`, `mech-login.c` and
//! `mech-oauth2.c`, except where noted:
//! - PLAIN refuses an authorization identity different from the
//!   authentication identity (Dovecot would treat that as a master-user
//!   login, which this daemon does not offer).
//! - OAUTHBEARER's authorization identity (`a=`) is optional: the token says
//!   whose it is, and a name, when given, must match it (the decision core's
//!   rule). Channel binding (`p=`) and the non-standard GS2 flag (`F,`) are
//!   refused, as Dovecot does.
//! - The client messages are parsed to their grammar (RFC 7628 section 3.1;
//!   Google's XOAUTH2 description): the `\x01\x01` terminator is required,
//!   `auth=` must appear exactly once, and the token must be an RFC 6750
//!   `b64token`. Unknown keys (`host=`, `port=`) are ignored, as in Dovecot.
//!   A message that breaks the grammar fails at once; only a well-formed
//!   token that the verifier refuses gets RFC 7628's error challenge
//!   ([`token_error_challenge`], [`Exchange::after_refused_token`]), after
//!   which the client's (dummy) response ends the exchange in failure.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_LEN: usize = 512;

/// Longest accepted password, in bytes. Generous enough for passphrases and
/// app tokens; anything longer is an attack or a misconfigured client.
pub const MAX_PASSWORD_LEN: usize = 4096;

/// Longest accepted bearer token, in bytes: the validator's own limit
/// (`oidc::jwt::MAX_TOKEN_BYTES`), so the codec never hands on a token that
/// could only be refused. Provider access tokens are 1 to 3 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The LOGIN mechanism's challenges, byte for byte what Dovecot sends.
pub const LOGIN_USERNAME_CHALLENGE: &[u8] = b"Username:";
/// See [`LOGIN_USERNAME_CHALLENGE`].
pub const LOGIN_PASSWORD_CHALLENGE: &[u8] = b"Password:";

/// A supported SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
    /// RFC 7628: a bearer token behind a GS2 header.
    OAuthBearer,
    /// Google's predecessor of OAUTHBEARER, still what many clients send.
    XOAuth2,
}

impl Mechanism {
    /// Every supported mechanism, in the order they are advertised.
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
    ];

    /// The mechanisms that carry a password, advertised when no bearer token
    /// is accepted.
    pub const PASSWORD: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// Whether the mechanism carries a bearer token rather than a password.
    pub fn carries_token(self) -> bool {
        matches!(self, Mechanism::OAuthBearer | Mechanism::XOAuth2)
    }

    /// Looks a mechanism up by name, ignoring ASCII case: Postfix forwards
    /// the name exactly as the SMTP client typed it, and Dovecot upper-cases
    /// before looking it up.
    pub fn from_name(name: &str) -> Option<Self> {
        Mechanism::ALL
            .into_iter()
            .find(|m| name.eq_ignore_ascii_case(m.name()))
    }

    /// The canonical (upper-case) name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// Security properties advertised in the Dovecot `MECH` line; Postfix
    /// filters mechanisms on them (`smtpd_sasl_security_options`). The token
    /// mechanisms are `plaintext` too, as Dovecot marks them: a bearer token
    /// is as good as a password to whoever reads it off an unencrypted link.
    pub fn security_flags(self) -> &'static [&'static str] {
        match self {
            Mechanism::Plain | Mechanism::Login | Mechanism::OAuthBearer | Mechanism::XOAuth2 => {
                &["plaintext"]
            }
        }
    }
}

/// A password received from the client. Wiped from memory when dropped and
/// never printed by `Debug`, so it cannot leak through logs by accident.
pub struct SaslPassword(Vec<u8>);

impl SaslPassword {
    /// Wraps bytes that are already a password (mainly for tests and for
    /// verifiers that want a uniform type).
    pub fn new(bytes: Vec<u8>) -> Self {
        SaslPassword(bytes)
    }

    /// The password bytes, for handing to the verifier.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Moves the bytes out without copying, e.g. into `crate::secret::Secret`;
    /// wiping them becomes the new owner's job.
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for SaslPassword {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SaslPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why an exchange failed. Messages never contain client data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("malformed PLAIN response (expected authzid NUL authcid NUL password)")]
    MalformedPlain,
    #[error("PLAIN authorization identity differs from the login name; acting as another user is not supported")]
    AuthzidMismatch,
    #[error("empty username")]
    EmptyUsername,
    #[error("username longer than {max} bytes")]
    UsernameTooLong { max: usize },
    #[error("username contains control character 0x{byte:02x}")]
    UsernameControlChar { byte: u8 },
    #[error("username is not valid UTF-8")]
    UsernameNotUtf8,
    #[error("password longer than {max} bytes")]
    PasswordTooLong { max: usize },
    #[error("password contains a NUL byte")]
    PasswordNul,
    #[error("client sent more data after the authentication exchange had ended")]
    AlreadyFinished,
    #[error("empty {mechanism} message")]
    EmptyTokenMessage { mechanism: &'static str },
    #[error("OAUTHBEARER message does not start with a GS2 header (n, or y, then an optional a=, then a comma)")]
    MalformedGs2Header,
    #[error("OAUTHBEARER channel binding (p=) is not supported")]
    ChannelBinding,
    #[error("OAUTHBEARER non-standard GS2 flag (F,) is not supported")]
    NonStandardGs2,
    #[error("OAUTHBEARER authorization identity has an escape other than =2C or =3D")]
    BadAuthzidEscape,
    #[error("{mechanism} message does not end with ^A^A")]
    MissingTerminator { mechanism: &'static str },
    #[error("{mechanism} message has a malformed key=value pair")]
    MalformedKeyValue { mechanism: &'static str },
    #[error("{mechanism} message has no auth= (expected auth=Bearer <token>)")]
    MissingAuth { mechanism: &'static str },
    #[error("{mechanism} message has auth= more than once")]
    DuplicateAuth { mechanism: &'static str },
    #[error("{mechanism} auth= is not \"Bearer <token>\"")]
    NotBearer { mechanism: &'static str },
    #[error("XOAUTH2 message has no user=")]
    MissingUser,
    #[error("bearer token is empty or has characters a bearer token cannot have")]
    BadTokenSyntax,
    #[error("bearer token longer than {max} bytes")]
    TokenTooLong { max: usize },
    #[error("bearer token refused; client acknowledged the error")]
    TokenRefused,
}

impl SaslError {
    /// The reason the audit line gives for an exchange that ended here, before any
    /// credential could be checked.
    pub fn code(&self) -> &'static str {
        match self {
            SaslError::AuthzidMismatch => "authzid_mismatch",
            SaslError::ChannelBinding => "channel_binding",
            SaslError::TokenTooLong { .. } => "token_too_long",
            SaslError::BadTokenSyntax => "token_malformed",
            SaslError::TokenRefused => "token_refused",
            SaslError::AlreadyFinished => "protocol_error",
            SaslError::MalformedPlain
            | SaslError::EmptyUsername
            | SaslError::UsernameTooLong { .. }
            | SaslError::UsernameControlChar { .. }
            | SaslError::UsernameNotUtf8
            | SaslError::PasswordTooLong { .. }
            | SaslError::PasswordNul
            | SaslError::EmptyTokenMessage { .. }
            | SaslError::MalformedGs2Header
            | SaslError::NonStandardGs2
            | SaslError::BadAuthzidEscape
            | SaslError::MissingTerminator { .. }
            | SaslError::MalformedKeyValue { .. }
            | SaslError::MissingAuth { .. }
            | SaslError::DuplicateAuth { .. }
            | SaslError::NotBearer { .. }
            | SaslError::MissingUser => "malformed_request",
        }
    }
}

/// What the server does next.
#[derive(Debug)]
pub enum Step {
    /// Send this (raw, not yet base64) challenge and wait for a response.
    Challenge(Vec<u8>),
    /// The client supplied credentials; verify them.
    Done {
        authcid: String,
        password: SaslPassword,
    },
    /// The client supplied a bearer token (OAUTHBEARER, XOAUTH2); verify it.
    /// `authzid` is the name the client gave (`a=`, `user=`), if any. When
    /// the token is refused, continue with [`Exchange::after_refused_token`].
    Token {
        authzid: Option<String>,
        token: SaslPassword,
    },
    /// The exchange is over; reject the login.
    Fail(SaslError),
}

#[derive(Debug)]
enum State {
    PlainAwaitResponse,
    LoginAwaitUsername,
    LoginAwaitPassword {
        authcid: String,
    },
    TokenAwaitResponse,
    /// The error challenge went out; whatever the client answers, it fails.
    TokenErrorSent,
    Finished,
}

/// One SASL exchange for one AUTH request.
#[derive(Debug)]
pub struct Exchange {
    mechanism: Mechanism,
    state: State,
}

impl Exchange {
    /// Begins an exchange. `initial_response` is the decoded `resp=` of the
    /// AUTH line: `None` when absent, `Some(empty)` for an explicitly empty
    /// one (the two differ for PLAIN, as in Dovecot).
    pub fn start(mechanism: Mechanism, initial_response: Option<Vec<u8>>) -> (Exchange, Step) {
        let initial_response = initial_response.map(Zeroizing::new);
        let mut exchange = Exchange {
            mechanism,
            state: State::Finished,
        };
        let step = match (mechanism, initial_response) {
            (Mechanism::Plain, None) => {
                exchange.state = State::PlainAwaitResponse;
                Step::Challenge(Vec::new())
            }
            (Mechanism::Plain, Some(data)) => finish(parse_plain(&data)),
            // Dovecot treats an empty initial response for LOGIN like an
            // absent one; a non-empty one is the username.
            (Mechanism::Login, None) => {
                exchange.state = State::LoginAwaitUsername;
                Step::Challenge(LOGIN_USERNAME_CHALLENGE.to_vec())
            }
            (Mechanism::Login, Some(data)) if data.is_empty() => {
                exchange.state = State::LoginAwaitUsername;
                Step::Challenge(LOGIN_USERNAME_CHALLENGE.to_vec())
            }
            (Mechanism::Login, Some(data)) => exchange.login_username(&data),
            // RFC 7628 section 3.1: no (or an empty) initial response gets an
            // empty challenge, answered by the client's message.
            (Mechanism::OAuthBearer | Mechanism::XOAuth2, None) => {
                exchange.state = State::TokenAwaitResponse;
                Step::Challenge(Vec::new())
            }
            (Mechanism::OAuthBearer | Mechanism::XOAuth2, Some(data)) if data.is_empty() => {
                exchange.state = State::TokenAwaitResponse;
                Step::Challenge(Vec::new())
            }
            (Mechanism::OAuthBearer | Mechanism::XOAuth2, Some(data)) => {
                token_step(parse_token_message(mechanism, &data))
            }
        };
        (exchange, step)
    }

    /// Continues an exchange whose [`Step::Token`] the verifier refused: the
    /// returned step is the error challenge (RFC 7628 section 3.2.2, JSON from
    /// [`token_error_challenge`]), and the client's next response, whatever
    /// it is (normally `\x01`), ends the exchange with
    /// [`SaslError::TokenRefused`].
    pub fn after_refused_token(mechanism: Mechanism, challenge: Vec<u8>) -> (Exchange, Step) {
        (
            Exchange {
                mechanism,
                state: State::TokenErrorSent,
            },
            Step::Challenge(challenge),
        )
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// True once [`Step::Done`], [`Step::Token`] or [`Step::Fail`] has been
    /// returned.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Feeds the client's decoded response to the last challenge.
    pub fn step(&mut self, data: Vec<u8>) -> Step {
        let data = Zeroizing::new(data);
        match std::mem::replace(&mut self.state, State::Finished) {
            State::PlainAwaitResponse => finish(parse_plain(&data)),
            State::LoginAwaitUsername => self.login_username(&data),
            State::LoginAwaitPassword { authcid } => {
                finish(check_password(&data).map(|password| (authcid, password)))
            }
            State::TokenAwaitResponse => token_step(parse_token_message(self.mechanism, &data)),
            State::TokenErrorSent => Step::Fail(SaslError::TokenRefused),
            State::Finished => Step::Fail(SaslError::AlreadyFinished),
        }
    }

    fn login_username(&mut self, data: &[u8]) -> Step {
        match check_username(data) {
            Ok(authcid) => {
                self.state = State::LoginAwaitPassword { authcid };
                Step::Challenge(LOGIN_PASSWORD_CHALLENGE.to_vec())
            }
            Err(e) => Step::Fail(e),
        }
    }
}

fn finish(result: Result<(String, SaslPassword), SaslError>) -> Step {
    match result {
        Ok((authcid, password)) => Step::Done { authcid, password },
        Err(e) => Step::Fail(e),
    }
}

fn parse_plain(data: &[u8]) -> Result<(String, SaslPassword), SaslError> {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedPlain);
    };
    // A third NUL would make the password ambiguous; Dovecot rejects it too.
    if password.contains(&0) {
        return Err(SaslError::MalformedPlain);
    }
    let authcid_str = check_username(authcid)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    let password = check_password(password)?;
    Ok((authcid_str, password))
}

fn token_step(result: Result<(Option<String>, SaslPassword), SaslError>) -> Step {
    match result {
        Ok((authzid, token)) => Step::Token { authzid, token },
        Err(e) => Step::Fail(e),
    }
}

/// Separates the key/value pairs of both token mechanisms (RFC 7628 `kvsep`).
const KVSEP: u8 = 0x01;

/// Parses an OAUTHBEARER or XOAUTH2 client message into the name the client
/// gave and its token.
fn parse_token_message(
    mechanism: Mechanism,
    data: &[u8],
) -> Result<(Option<String>, SaslPassword), SaslError> {
    let name = mechanism.name();
    if data.is_empty() {
        return Err(SaslError::EmptyTokenMessage { mechanism: name });
    }
    let (authzid, pairs) = match mechanism {
        Mechanism::OAuthBearer => {
            // gs2-header kvsep *kvpair kvsep: the header ends at the first ^A.
            let Some(end) = data.iter().position(|&b| b == KVSEP) else {
                return Err(SaslError::MalformedGs2Header);
            };
            (parse_gs2_header(&data[..end])?, &data[end + 1..])
        }
        _ => (None, data),
    };
    // Every pair ends with ^A, and one more ^A ends the message.
    let Some(pairs) = pairs.strip_suffix(&[KVSEP]) else {
        return Err(SaslError::MissingTerminator { mechanism: name });
    };
    let mut user = None;
    let mut auth = None;
    if !pairs.is_empty() {
        let Some(pairs) = pairs.strip_suffix(&[KVSEP]) else {
            return Err(SaslError::MissingTerminator { mechanism: name });
        };
        for pair in pairs.split(|&b| b == KVSEP) {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                return Err(SaslError::MalformedKeyValue { mechanism: name });
            };
            let (key, value) = (&pair[..eq], &pair[eq + 1..]);
            // RFC 7628: key = 1*(ALPHA); value = *(VCHAR / SP / HTAB / CR / LF).
            if key.is_empty()
                || !key.iter().all(u8::is_ascii_alphabetic)
                || !all_in(value, &KV_VALUE_BYTES)
            {
                return Err(SaslError::MalformedKeyValue { mechanism: name });
            }
            match key {
                b"auth" if auth.is_some() => {
                    return Err(SaslError::DuplicateAuth { mechanism: name })
                }
                b"auth" => auth = Some(value),
                b"user" if mechanism == Mechanism::XOAuth2 => {
                    if user.is_some() {
                        return Err(SaslError::MalformedKeyValue { mechanism: name });
                    }
                    user = Some(check_username(value)?);
                }
                _ => {}
            }
        }
    }
    let Some(auth) = auth else {
        return Err(SaslError::MissingAuth { mechanism: name });
    };
    let token = bearer_token(auth, name)?;
    match mechanism {
        Mechanism::XOAuth2 => match user {
            Some(user) => Ok((Some(user), token)),
            None => Err(SaslError::MissingUser),
        },
        _ => Ok((authzid, token)),
    }
}

/// RFC 5801's `gs2-header` without its final comma's successor: `n,` or
/// `y,` (or `p=…,`, refused), then an optional `a=<saslname>`, then `,`.
fn parse_gs2_header(header: &[u8]) -> Result<Option<String>, SaslError> {
    if header.starts_with(b"F,") {
        return Err(SaslError::NonStandardGs2);
    }
    if header.starts_with(b"p=") {
        return Err(SaslError::ChannelBinding);
    }
    let rest = header
        .strip_prefix(b"n,")
        .or_else(|| header.strip_prefix(b"y,"))
        .ok_or(SaslError::MalformedGs2Header)?;
    let Some(authzid) = rest.strip_suffix(b",") else {
        return Err(SaslError::MalformedGs2Header);
    };
    if authzid.is_empty() {
        return Ok(None);
    }
    let Some(saslname) = authzid.strip_prefix(b"a=") else {
        return Err(SaslError::MalformedGs2Header);
    };
    // A comma can only be written =2C; a bare one means the header is broken.
    if saslname.contains(&b',') {
        return Err(SaslError::MalformedGs2Header);
    }
    let mut name = Vec::with_capacity(saslname.len());
    let mut rest = saslname;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'=' {
            match tail {
                [b'2', b'C', more @ ..] => {
                    name.push(b',');
                    rest = more;
                }
                [b'3', b'D', more @ ..] => {
                    name.push(b'=');
                    rest = more;
                }
                _ => return Err(SaslError::BadAuthzidEscape),
            }
        } else {
            name.push(b);
            rest = tail;
        }
    }
    check_username(&name).map(Some)
}

/// Which bytes may stand in a set, one flag per byte value: a token is checked byte by
/// byte on every login, and a table look-up is what keeps that cheap.
type ByteSet = [bool; 256];

/// A [`ByteSet`] built at compile time from a test on `b: u8`.
macro_rules! byte_set {
    (|$b:ident| $accepts:expr) => {{
        let mut set = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $b = i as u8;
            set[i] = $accepts;
            i += 1;
        }
        set
    }};
}

/// RFC 7628 `value`: VCHAR, SP, HTAB, CR, LF.
const KV_VALUE_BYTES: ByteSet =
    byte_set!(|b| matches!(b, 0x21..=0x7e | b' ' | b'\t' | b'\r' | b'\n'));

/// RFC 6750 `b64token` without its trailing `=`s: ALPHA, DIGIT, `-._~+/`.
const B64TOKEN_BYTES: ByteSet = byte_set!(
    |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
);

/// Whether every byte of `bytes` is in `set`; no early exit, so the loop has no branch
/// per byte.
fn all_in(bytes: &[u8], set: &ByteSet) -> bool {
    bytes.iter().fold(true, |ok, &b| ok & set[usize::from(b)])
}

/// The token of `auth=Bearer <token>`; the scheme is case-insensitive (RFC
/// 7235), the token an RFC 6750 `b64token`.
fn bearer_token(auth: &[u8], mechanism: &'static str) -> Result<SaslPassword, SaslError> {
    const SCHEME: &[u8] = b"bearer ";
    if auth.len() < SCHEME.len() || !auth[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Err(SaslError::NotBearer { mechanism });
    }
    let token = &auth[SCHEME.len()..];
    if token.len() > MAX_TOKEN_LEN {
        return Err(SaslError::TokenTooLong { max: MAX_TOKEN_LEN });
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body_len = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    if body_len == 0 || !all_in(&token[..body_len], &B64TOKEN_BYTES) {
        return Err(SaslError::BadTokenSyntax);
    }
    Ok(SaslPassword(token.to_vec()))
}

/// RFC 7628 section 3.2.2's error message, sent as the challenge after a
/// refused token: where the client can learn how to get a new one. XOAUTH2
/// clients expect Google's form, whose status is an HTTP code. `scope`
/// falls back to `openid` when empty, so the field is never blank.
pub fn token_error_challenge(
    mechanism: Mechanism,
    scope: &str,
    openid_configuration: &str,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorMessage<'a> {
        status: &'a str,
        schemes: &'a str,
        scope: &'a str,
        #[serde(rename = "openid-configuration")]
        openid_configuration: &'a str,
    }
    let message = ErrorMessage {
        status: match mechanism {
            Mechanism::XOAuth2 => "401",
            _ => "invalid_token",
        },
        schemes: "bearer",
        scope: if scope.is_empty() { "openid" } else { scope },
        openid_configuration,
    };
    // Serialising a struct of strings cannot fail; an empty object would
    // still be a valid (if unhelpful) error message.
    serde_json::to_vec(&message).unwrap_or_else(|_| b"{}".to_vec())
}

/// Validates a login name. Control characters are refused outright: TAB and
/// LF would break the line protocols the name is later echoed into (Postfix
/// does not unescape `user=`), and none belongs in a real mailbox name.
pub fn check_username(raw: &[u8]) -> Result<String, SaslError> {
    if raw.is_empty() {
        return Err(SaslError::EmptyUsername);
    }
    if raw.len() > MAX_USERNAME_LEN {
        return Err(SaslError::UsernameTooLong {
            max: MAX_USERNAME_LEN,
        });
    }
    if let Some(&byte) = raw.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(SaslError::UsernameControlChar { byte });
    }
    String::from_utf8(raw.to_vec()).map_err(|_| SaslError::UsernameNotUtf8)
}

fn check_password(raw: &[u8]) -> Result<SaslPassword, SaslError> {
    if raw.len() > MAX_PASSWORD_LEN {
        return Err(SaslError::PasswordTooLong {
            max: MAX_PASSWORD_LEN,
        });
    }
    // Dovecot hands passwords around as C strings; a NUL would silently
    // truncate there, so refuse instead of verifying a different password.
    if raw.contains(&0) {
        return Err(SaslError::PasswordNul);
    }
    Ok(SaslPassword(raw.to_vec()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Each message is refused by `mechanism`'s parser with its error.
    fn assert_refused(mechanism: Mechanism, bad: &[(&[u8], SaslError)]) {
        for (message, want) in bad {
            assert_eq!(parse_token(mechanism, message), Err(*want), "{message:?}");
        }
    }

    #[test]
    fn the_byte_tables_hold_exactly_the_grammar_s_bytes() {
        for b in 0..=255u8 {
            let value = b == b' ' || b == b'\t' || b == b'\r' || b == b'\n' || b.is_ascii_graphic();
            assert_eq!(
                KV_VALUE_BYTES[usize::from(b)],
                value,
                "kv value byte {b:#04x}"
            );
            let b64 = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(
                B64TOKEN_BYTES[usize::from(b)],
                b64,
                "b64token byte {b:#04x}"
            );
        }
        assert!(all_in(b"abc", &B64TOKEN_BYTES) && all_in(b"", &B64TOKEN_BYTES));
        assert!(!all_in(b"ab=c", &B64TOKEN_BYTES) && !all_in(b"a\x01", &KV_VALUE_BYTES));
    }

    fn done(step: Step) -> (String, Vec<u8>) {
        match step {
            Step::Done { authcid, password } => (authcid, password.as_bytes().to_vec()),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn fail(step: Step) -> SaslError {
        match step {
            Step::Fail(e) => e,
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    fn challenge(step: Step) -> Vec<u8> {
        match step {
            Step::Challenge(c) => c,
            other => panic!("expected Challenge, got {other:?}"),
        }
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::from_name("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("LOGIN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::from_name("Login"), Some(Mechanism::Login));
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
        assert_eq!(Mechanism::Plain.name(), "PLAIN");
        assert_eq!(Mechanism::Login.security_flags(), &["plaintext"]);
    }

    #[test]
    fn plain_with_initial_response() {
        let (ex, step) = Exchange::start(Mechanism::Plain, Some(b"\0joe\0secret".to_vec()));
        assert_eq!(done(step), ("joe".into(), b"secret".to_vec()));
        assert!(ex.is_finished());
    }

    #[test]
    fn plain_authzid_equal_to_authcid_is_accepted() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"joe\0joe\0pw".to_vec()));
        assert_eq!(done(step), ("joe".into(), b"pw".to_vec()));
    }

    #[test]
    fn plain_authzid_mismatch_fails() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"admin\0joe\0pw".to_vec()));
        assert_eq!(fail(step), SaslError::AuthzidMismatch);
    }

    #[test]
    fn plain_without_initial_response_sends_empty_challenge() {
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(challenge(step), b"");
        assert!(!ex.is_finished());
        assert_eq!(
            done(ex.step(b"\0joe@example.org\0p\xc3\xa4ss".to_vec())),
            ("joe@example.org".into(), "päss".as_bytes().to_vec())
        );
        assert_eq!(
            fail(ex.step(b"\0joe\0x".to_vec())),
            SaslError::AlreadyFinished
        );
    }

    #[test]
    fn plain_empty_initial_response_fails() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(Vec::new()));
        assert_eq!(fail(step), SaslError::MalformedPlain);
    }

    #[test]
    fn plain_malformed() {
        for bad in [&b"joe"[..], b"\0joe", b"\0joe\0pw\0extra", b"\0\0pw"] {
            let (_, step) = Exchange::start(Mechanism::Plain, Some(bad.to_vec()));
            assert!(
                matches!(
                    fail(step),
                    SaslError::MalformedPlain | SaslError::EmptyUsername
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_empty_password_is_passed_on() {
        // Rejecting it is the verifier's call, as in Dovecot.
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"\0joe\0".to_vec()));
        assert_eq!(done(step), ("joe".into(), Vec::new()));
    }

    #[test]
    fn login_full_exchange() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, None);
        assert_eq!(challenge(step), b"Username:");
        assert_eq!(challenge(ex.step(b"joe".to_vec())), b"Password:");
        assert_eq!(
            done(ex.step(b"secret".to_vec())),
            ("joe".into(), b"secret".to_vec())
        );
        assert!(ex.is_finished());
        assert_eq!(fail(ex.step(Vec::new())), SaslError::AlreadyFinished);
    }

    #[test]
    fn login_empty_initial_response_asks_for_username() {
        let (_, step) = Exchange::start(Mechanism::Login, Some(Vec::new()));
        assert_eq!(challenge(step), b"Username:");
    }

    #[test]
    fn login_initial_response_is_the_username() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(b"joe".to_vec()));
        assert_eq!(challenge(step), b"Password:");
        assert_eq!(
            done(ex.step(b"pw".to_vec())),
            ("joe".into(), b"pw".to_vec())
        );
    }

    #[test]
    fn bad_usernames() {
        let long = vec![b'a'; MAX_USERNAME_LEN + 1];
        let cases: [(&[u8], SaslError); 6] = [
            (b"", SaslError::EmptyUsername),
            (b"jo\0e", SaslError::UsernameControlChar { byte: 0 }),
            (b"jo\te", SaslError::UsernameControlChar { byte: b'\t' }),
            (b"jo\ne", SaslError::UsernameControlChar { byte: b'\n' }),
            (b"jo\xffe", SaslError::UsernameNotUtf8),
            (
                &long,
                SaslError::UsernameTooLong {
                    max: MAX_USERNAME_LEN,
                },
            ),
        ];
        for (name, want) in cases {
            let (mut ex, _) = Exchange::start(Mechanism::Login, None);
            assert_eq!(fail(ex.step(name.to_vec())), want, "{name:?}");
        }
        assert!(check_username(&vec![b'a'; MAX_USERNAME_LEN]).is_ok());
        // TAB in a PLAIN authcid, too.
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"\0a\tb\0pw".to_vec()));
        assert_eq!(fail(step), SaslError::UsernameControlChar { byte: b'\t' });
    }

    #[test]
    fn bad_passwords() {
        let (mut ex, _) = Exchange::start(Mechanism::Login, Some(b"joe".to_vec()));
        assert_eq!(fail(ex.step(b"p\0w".to_vec())), SaslError::PasswordNul);
        let mut long = b"\0joe\0".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_PASSWORD_LEN + 1));
        let (_, step) = Exchange::start(Mechanism::Plain, Some(long));
        assert_eq!(
            fail(step),
            SaslError::PasswordTooLong {
                max: MAX_PASSWORD_LEN
            }
        );
    }

    #[test]
    fn password_can_be_moved_out() {
        assert_eq!(SaslPassword::new(b"pw".to_vec()).into_vec(), b"pw");
    }

    #[test]
    fn password_never_shows_in_debug() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"\0joe\0hunter2".to_vec()));
        let dbg = format!("{step:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        let (ex, _) = Exchange::start(Mechanism::Login, Some(b"joe".to_vec()));
        assert!(!format!("{ex:?}").contains("hunter2"));
    }

    fn token(step: Step) -> (Option<String>, Vec<u8>) {
        match step {
            Step::Token { authzid, token } => (authzid, token.as_bytes().to_vec()),
            other => panic!("expected Token, got {other:?}"),
        }
    }

    /// Parses `message` as the initial response, and as the answer to the
    /// empty challenge, and checks both agree; also that every proper prefix
    /// of it fails (never yields a shorter token) and that the exchange is
    /// then over.
    fn parse_token(
        mech: Mechanism,
        message: &[u8],
    ) -> Result<(Option<String>, Vec<u8>), SaslError> {
        let (ex, step) = Exchange::start(mech, Some(message.to_vec()));
        let initial = match step {
            Step::Token { authzid, token } => Ok((authzid, token.as_bytes().to_vec())),
            Step::Fail(e) => Err(e),
            other => panic!("{other:?}"),
        };
        assert!(ex.is_finished());
        let (mut ex, step) = Exchange::start(mech, None);
        assert_eq!(challenge(step), b"");
        let answered = match ex.step(message.to_vec()) {
            Step::Token { authzid, token } => Ok((authzid, token.as_bytes().to_vec())),
            Step::Fail(e) => Err(e),
            other => panic!("{other:?}"),
        };
        assert_eq!(initial, answered);
        assert_eq!(fail(ex.step(message.to_vec())), SaslError::AlreadyFinished);
        if initial.is_ok() {
            for cut in 1..message.len() {
                let (_, step) = Exchange::start(mech, Some(message[..cut].to_vec()));
                assert!(
                    matches!(step, Step::Fail(_)),
                    "prefix of {} bytes accepted: {step:?}",
                    cut
                );
            }
        }
        initial
    }

    const RFC7628_EXAMPLE: &[u8] = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01";

    #[test]
    fn token_mechanism_names() {
        assert_eq!(
            Mechanism::from_name("oauthbearer"),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(Mechanism::from_name("XOAUTH2"), Some(Mechanism::XOAuth2));
        assert_eq!(Mechanism::from_name("xoauth"), None);
        assert_eq!(Mechanism::OAuthBearer.name(), "OAUTHBEARER");
        assert_eq!(Mechanism::XOAuth2.name(), "XOAUTH2");
        // As Dovecot's mech-oauth2.c: the token counts as a password.
        assert_eq!(Mechanism::OAuthBearer.security_flags(), &["plaintext"]);
        assert_eq!(Mechanism::XOAuth2.security_flags(), &["plaintext"]);
        assert!(Mechanism::XOAuth2.carries_token() && Mechanism::OAuthBearer.carries_token());
        assert!(!Mechanism::Plain.carries_token() && !Mechanism::Login.carries_token());
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert!(Mechanism::PASSWORD.iter().all(|m| !m.carries_token()));
    }

    #[test]
    fn oauthbearer_rfc7628_example() {
        assert_eq!(
            parse_token(Mechanism::OAuthBearer, RFC7628_EXAMPLE),
            Ok((
                Some("user@example.com".into()),
                b"vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==".to_vec()
            ))
        );
    }

    #[test]
    fn oauthbearer_header_forms() {
        let ok: &[(&[u8], Option<&str>)] = &[
            (b"n,,\x01auth=Bearer abc\x01\x01", None),
            (b"y,,\x01auth=Bearer abc\x01\x01", None),
            (
                b"n,a=joe@example.org,\x01auth=Bearer abc\x01\x01",
                Some("joe@example.org"),
            ),
            (b"n,a=a=2Cb=3Dc,\x01auth=Bearer abc\x01\x01", Some("a,b=c")),
            (b"n,a==3D=2C,\x01auth=Bearer abc\x01\x01", Some("=,")),
        ];
        for (message, authzid) in ok {
            assert_eq!(
                parse_token(Mechanism::OAuthBearer, message),
                Ok((authzid.map(str::to_owned), b"abc".to_vec())),
                "{message:?}"
            );
        }
        let bad: &[(&[u8], SaslError)] = &[
            (
                b"p=tls-unique,,\x01auth=Bearer abc\x01\x01",
                SaslError::ChannelBinding,
            ),
            (
                b"F,n,,\x01auth=Bearer abc\x01\x01",
                SaslError::NonStandardGs2,
            ),
            (
                b"x,,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b",,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"N,,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n,b=joe,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n,a=joe\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n,a=jo,e,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n,a=joe,,\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedGs2Header,
            ),
            (
                b"n,a=jo=2ce,\x01auth=Bearer abc\x01\x01",
                SaslError::BadAuthzidEscape,
            ),
            (
                b"n,a=jo=41e,\x01auth=Bearer abc\x01\x01",
                SaslError::BadAuthzidEscape,
            ),
            (
                b"n,a=joe=,\x01auth=Bearer abc\x01\x01",
                SaslError::BadAuthzidEscape,
            ),
            (
                b"n,a=joe=2,\x01auth=Bearer abc\x01\x01",
                SaslError::BadAuthzidEscape,
            ),
            (
                b"n,a=,\x01auth=Bearer abc\x01\x01",
                SaslError::EmptyUsername,
            ),
            (
                b"n,a=jo\te,\x01auth=Bearer abc\x01\x01",
                SaslError::UsernameControlChar { byte: b'\t' },
            ),
            (
                b"n,a=jo\xffe,\x01auth=Bearer abc\x01\x01",
                SaslError::UsernameNotUtf8,
            ),
            (b"n,,auth=Bearer abc", SaslError::MalformedGs2Header),
        ];
        assert_refused(Mechanism::OAuthBearer, bad);
    }

    #[test]
    fn token_message_body() {
        let bad: &[(&[u8], SaslError)] = &[
            (
                b"n,,\x01\x01",
                SaslError::MissingAuth {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01host=h\x01\x01",
                SaslError::MissingAuth {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01",
                SaslError::MissingTerminator {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (b"n,,", SaslError::MalformedGs2Header),
            (
                b"n,,\x01auth=Bearer abc",
                SaslError::MissingTerminator {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Bearer abc\x01",
                SaslError::MissingTerminator {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Bearer abc\x01\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Bearer abc\x01\x01trailing",
                SaslError::MissingTerminator {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01hostname\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01=x\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01po-rt=1\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01host=a\0b\x01auth=Bearer abc\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Bearer abc\x01auth=Bearer abd\x01\x01",
                SaslError::DuplicateAuth {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Basic abc\x01\x01",
                SaslError::NotBearer {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Bearer\x01\x01",
                SaslError::NotBearer {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=Bearerabc\x01\x01",
                SaslError::NotBearer {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (
                b"n,,\x01auth=abc\x01\x01",
                SaslError::NotBearer {
                    mechanism: "OAUTHBEARER",
                },
            ),
            (b"n,,\x01auth=Bearer \x01\x01", SaslError::BadTokenSyntax),
            (b"n,,\x01auth=Bearer ==\x01\x01", SaslError::BadTokenSyntax),
            (b"n,,\x01auth=Bearer a b\x01\x01", SaslError::BadTokenSyntax),
            (
                b"n,,\x01auth=Bearer  abc\x01\x01",
                SaslError::BadTokenSyntax,
            ),
            (b"n,,\x01auth=Bearer a=b\x01\x01", SaslError::BadTokenSyntax),
            (
                b"n,,\x01auth=Bearer a\tb\x01\x01",
                SaslError::BadTokenSyntax,
            ),
            (
                b"n,,\x01auth=Bearer abc\r\n\x01\x01",
                SaslError::BadTokenSyntax,
            ),
            (
                b"n,,\x01auth=Bearer \"abc\"\x01\x01",
                SaslError::BadTokenSyntax,
            ),
        ];
        assert_refused(Mechanism::OAuthBearer, bad);
        // The scheme is case-insensitive; unknown keys are ignored; every
        // b64token character and trailing "=" padding is kept.
        for message in [
            &b"n,,\x01auth=bearer a-b.c_d~e+f/g0==\x01\x01"[..],
            b"n,,\x01auth=BEARER a-b.c_d~e+f/g0==\x01\x01",
            b"n,,\x01auth=bEaReR a-b.c_d~e+f/g0==\x01\x01",
            b"n,,\x01host=mail.example.org\x01port=993\x01mthd=POST\x01auth=Bearer a-b.c_d~e+f/g0==\x01qs=a b\x01\x01",
        ] {
            assert_eq!(
                parse_token(Mechanism::OAuthBearer, message),
                Ok((None, b"a-b.c_d~e+f/g0==".to_vec())),
                "{message:?}"
            );
        }
    }

    #[test]
    fn xoauth2_messages() {
        assert_eq!(
            parse_token(
                Mechanism::XOAuth2,
                b"user=someuser@example.com\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
            ),
            Ok((
                Some("someuser@example.com".into()),
                b"vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==".to_vec()
            ))
        );
        // Order does not matter; the scheme's case neither.
        assert_eq!(
            parse_token(Mechanism::XOAuth2, b"auth=bearer tok\x01user=joe\x01\x01"),
            Ok((Some("joe".into()), b"tok".to_vec()))
        );
        let bad: &[(&[u8], SaslError)] = &[
            (b"auth=Bearer tok\x01\x01", SaslError::MissingUser),
            (
                b"user=joe\x01\x01",
                SaslError::MissingAuth {
                    mechanism: "XOAUTH2",
                },
            ),
            (
                b"user=joe\x01auth=Bearer tok\x01",
                SaslError::MissingTerminator {
                    mechanism: "XOAUTH2",
                },
            ),
            (
                b"user=joe\x01auth=Bearer tok",
                SaslError::MissingTerminator {
                    mechanism: "XOAUTH2",
                },
            ),
            (
                b"user=\x01auth=Bearer tok\x01\x01",
                SaslError::EmptyUsername,
            ),
            (
                b"user=a\x01user=b\x01auth=Bearer tok\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "XOAUTH2",
                },
            ),
            (
                b"user=joe\x01auth=Token tok\x01\x01",
                SaslError::NotBearer {
                    mechanism: "XOAUTH2",
                },
            ),
            // An OAUTHBEARER message is not an XOAUTH2 one.
            (
                b"n,,\x01auth=Bearer tok\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "XOAUTH2",
                },
            ),
            (
                b"\x01\x01",
                SaslError::MalformedKeyValue {
                    mechanism: "XOAUTH2",
                },
            ),
        ];
        assert_refused(Mechanism::XOAuth2, bad);
    }

    #[test]
    fn empty_initial_response_gets_an_empty_challenge() {
        for mech in [Mechanism::OAuthBearer, Mechanism::XOAuth2] {
            for initial in [None, Some(Vec::new())] {
                let (mut ex, step) = Exchange::start(mech, initial);
                assert_eq!(challenge(step), b"");
                assert!(!ex.is_finished());
                assert_eq!(
                    fail(ex.step(Vec::new())),
                    SaslError::EmptyTokenMessage {
                        mechanism: mech.name()
                    }
                );
                assert!(ex.is_finished());
            }
        }
    }

    #[test]
    fn token_length_limit() {
        let message = |len: usize| {
            let mut m = b"n,,\x01auth=Bearer ".to_vec();
            m.extend(std::iter::repeat_n(b'a', len));
            m.extend_from_slice(b"\x01\x01");
            m
        };
        let (_, step) = Exchange::start(Mechanism::OAuthBearer, Some(message(MAX_TOKEN_LEN)));
        assert_eq!(token(step).1.len(), MAX_TOKEN_LEN);
        for len in [MAX_TOKEN_LEN + 1, 16 * 1024] {
            let (_, step) = Exchange::start(Mechanism::OAuthBearer, Some(message(len)));
            let err = fail(step);
            assert_eq!(err, SaslError::TokenTooLong { max: MAX_TOKEN_LEN });
            assert_eq!(err.to_string(), "bearer token longer than 8192 bytes");
        }
        let mut x = b"user=joe\x01auth=Bearer ".to_vec();
        x.extend(std::iter::repeat_n(b'a', 16 * 1024));
        x.extend_from_slice(b"\x01\x01");
        let (_, step) = Exchange::start(Mechanism::XOAuth2, Some(x));
        assert_eq!(fail(step), SaslError::TokenTooLong { max: MAX_TOKEN_LEN });
        // Codec and validator agree on the limit: the codec hands on nothing
        // the validator could only refuse for its length.
        assert_eq!(MAX_TOKEN_LEN, crate::oidc::jwt::MAX_TOKEN_BYTES);
    }

    #[test]
    fn refused_token_error_continuation() {
        let json = token_error_challenge(
            Mechanism::OAuthBearer,
            "email",
            "https://id.example.org/.well-known/openid-configuration",
        );
        let (mut ex, step) = Exchange::after_refused_token(Mechanism::OAuthBearer, json.clone());
        assert_eq!(challenge(step), json);
        assert!(!ex.is_finished());
        assert_eq!(ex.mechanism(), Mechanism::OAuthBearer);
        // The client's dummy response, whatever it is, ends it in failure.
        assert_eq!(fail(ex.step(b"\x01".to_vec())), SaslError::TokenRefused);
        assert!(ex.is_finished());
        assert_eq!(fail(ex.step(b"\x01".to_vec())), SaslError::AlreadyFinished);
        for answer in [&b""[..], b"n,,\x01auth=Bearer abc\x01\x01", b"\xff"] {
            let (mut ex, _) = Exchange::after_refused_token(Mechanism::XOAuth2, Vec::new());
            assert_eq!(fail(ex.step(answer.to_vec())), SaslError::TokenRefused);
        }
    }

    #[test]
    fn error_challenge_json() {
        let oidc = "https://id.example.org/.well-known/openid-configuration";
        assert_eq!(
            String::from_utf8(token_error_challenge(Mechanism::OAuthBearer, "email", oidc))
                .unwrap(),
            r#"{"status":"invalid_token","schemes":"bearer","scope":"email","openid-configuration":"https://id.example.org/.well-known/openid-configuration"}"#
        );
        assert_eq!(
            String::from_utf8(token_error_challenge(Mechanism::XOAuth2, "", oidc)).unwrap(),
            r#"{"status":"401","schemes":"bearer","scope":"openid","openid-configuration":"https://id.example.org/.well-known/openid-configuration"}"#
        );
        // Whatever the settings hold, the result is JSON that says it.
        let odd = token_error_challenge(Mechanism::OAuthBearer, "a \"b\"\\", "x\ny");
        let v: serde_json::Value = serde_json::from_slice(&odd).unwrap();
        assert_eq!(v["scope"], "a \"b\"\\");
        assert_eq!(v["openid-configuration"], "x\ny");
    }

    #[test]
    fn token_never_shows_in_debug_or_errors() {
        let (_, step) = Exchange::start(
            Mechanism::OAuthBearer,
            Some(b"n,a=joe,\x01auth=Bearer sekrit.token\x01\x01".to_vec()),
        );
        let dbg = format!("{step:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        let (_, step) = Exchange::start(
            Mechanism::OAuthBearer,
            Some(b"n,a=evil,\x01auth=Bearer sekrit token\x01\x01".to_vec()),
        );
        let msg = fail(step).to_string();
        assert!(!msg.contains("sekrit") && !msg.contains("evil"), "{msg}");
    }

    /// Random bytes, and random mutations of valid messages, never panic and
    /// never end in anything but a token, a failure or the empty challenge.
    #[test]
    fn random_bytes_never_panic() {
        // xorshift64*: deterministic, so a failure can be replayed.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let seeds: [&[u8]; 3] = [
            RFC7628_EXAMPLE,
            b"user=joe@example.org\x01auth=Bearer abc\x01\x01",
            b"n,a=a=2Cb,\x01auth=Bearer abc\x01\x01",
        ];
        // Bytes the grammar cares about come up often.
        let alphabet = b"\x01,=naypFB2C3D \tBearer\0\xff";
        for round in 0..20_000u32 {
            let r = next();
            let mut data = if round % 2 == 0 {
                let len = (r % 64) as usize;
                (0..len)
                    .map(|_| {
                        let x = next();
                        if x % 3 == 0 {
                            (x >> 8) as u8
                        } else {
                            alphabet[(x >> 8) as usize % alphabet.len()]
                        }
                    })
                    .collect::<Vec<u8>>()
            } else {
                seeds[(r % 3) as usize].to_vec()
            };
            for _ in 0..(r >> 40) % 4 {
                let x = next();
                let at = (x % (data.len() as u64 + 1)) as usize;
                match (x >> 32) % 3 {
                    0 if at < data.len() => {
                        data[at] = alphabet[(x >> 40) as usize % alphabet.len()]
                    }
                    1 => data.insert(at, (x >> 48) as u8),
                    _ if at < data.len() => {
                        data.remove(at);
                    }
                    _ => {}
                }
            }
            for mech in Mechanism::ALL {
                let (mut ex, step) = Exchange::start(mech, Some(data.clone()));
                if let Step::Token { token, .. } = &step {
                    assert!(
                        !token.as_bytes().is_empty() && token.as_bytes().len() <= MAX_TOKEN_LEN
                    );
                    assert!(token.as_bytes().is_ascii());
                }
                let _ = ex.step(data.clone());
                let (mut ex, _) = Exchange::start(mech, None);
                let _ = ex.step(data.clone());
            }
        }
    }

    #[test]
    fn error_messages_carry_no_client_data() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"evil\0joe\0hunter2".to_vec()));
        let msg = fail(step).to_string();
        assert!(!msg.contains("hunter2") && !msg.contains("evil") && !msg.contains("joe"));
    }
}
