//! Server side of the SASL mechanisms PLAIN (RFC 4616) and LOGIN, as pure
//! state machines: bytes in, challenges or a verdict out. Verifying the
//! password is the caller's job.
//!
//! Behaviour follows Dovecot's `mech-plain.c` and `mech-login.c`, except that
//! PLAIN refuses an authorization identity different from the authentication
//! identity (Dovecot would treat that as a master-user login, which this
//! daemon does not offer).

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_LEN: usize = 512;

/// Longest accepted password, in bytes. Generous enough for passphrases and
/// app tokens; anything longer is an attack or a misconfigured client.
pub const MAX_PASSWORD_LEN: usize = 4096;

/// The LOGIN mechanism's challenges, byte for byte what Dovecot sends.
pub const LOGIN_USERNAME_CHALLENGE: &[u8] = b"Username:";
/// See [`LOGIN_USERNAME_CHALLENGE`].
pub const LOGIN_PASSWORD_CHALLENGE: &[u8] = b"Password:";

/// A supported SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Every supported mechanism, in the order they are advertised.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// Looks a mechanism up by name, ignoring ASCII case: Postfix forwards
    /// the name exactly as the SMTP client typed it, and Dovecot upper-cases
    /// before looking it up.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    /// The canonical (upper-case) name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// Security properties advertised in the Dovecot `MECH` line; Postfix
    /// filters mechanisms on them (`smtpd_sasl_security_options`).
    pub fn security_flags(self) -> &'static [&'static str] {
        match self {
            Mechanism::Plain | Mechanism::Login => &["plaintext"],
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
    /// The exchange is over; reject the login.
    Fail(SaslError),
}

#[derive(Debug)]
enum State {
    PlainAwaitResponse,
    LoginAwaitUsername,
    LoginAwaitPassword { authcid: String },
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
        };
        (exchange, step)
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// True once [`Step::Done`] or [`Step::Fail`] has been returned.
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

    #[test]
    fn error_messages_carry_no_client_data() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"evil\0joe\0hunter2".to_vec()));
        let msg = fail(step).to_string();
        assert!(!msg.contains("hunter2") && !msg.contains("evil") && !msg.contains("joe"));
    }
}
