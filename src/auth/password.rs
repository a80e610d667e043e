//! Stored mailbox password hashes in Dovecot's `{SCHEME}data` format.
//!
//! Verification accepts the schemes a Dovecot passdb is likely to hold, so mailboxes can
//! move here without a password reset; new hashes are always Argon2id, and
//! [`needs_rehash`] lets a successful login replace anything older. Everything here is
//! CPU-bound and synchronous: callers run it on a blocking pool.
//!
//! Errors carry at most a scheme name: stored hashes and passwords never reach a log line
//! through this module.

use std::borrow::Cow;

use argon2::password_hash::{self, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

/// Largest Argon2 memory cost (KiB) that [`verify`] attempts and [`hash_argon2id`]
/// writes: libsodium's "sensitive" limit, the most `doveadm pw` ever produces. A corrupt
/// row asking for more would otherwise make the allocator abort the whole daemon.
pub const ARGON2_MAX_MEMORY_KIB: u32 = 1024 * 1024;

/// Argon2 output length Dovecot (libsodium) writes; we match it so hashes we write read
/// the same as theirs.
const ARGON2_OUTPUT_LEN: usize = 32;

/// Salt length for new Argon2id hashes, the same as libsodium's.
const ARGON2_SALT_LEN: usize = 16;

/// Scheme tokens longer than this are not scheme names, so a `{...}` that happens to
/// start some other value is not echoed into an error.
const MAX_SCHEME_TOKEN_LEN: usize = 32;

/// Dovecot writes padded base64, but hand-edited rows often lose the padding; accepting
/// both costs nothing.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A password scheme this module can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Argon2id,
    Argon2i,
    BlfCrypt,
    Sha512Crypt,
    Sha256Crypt,
    Ssha512,
    Ssha256,
    Ssha,
    Plain,
}

impl Scheme {
    /// The spelling Dovecot uses in `{SCHEME}` prefixes, so logs and config match its docs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Argon2i => "ARGON2I",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::Ssha512 => "SSHA512",
            Scheme::Ssha256 => "SSHA256",
            Scheme::Ssha => "SSHA",
            Scheme::Plain => "PLAIN",
        }
    }

    /// Every scheme [`verify`] accepts.
    pub const ALL: [Scheme; 9] = [
        Scheme::Argon2id,
        Scheme::Argon2i,
        Scheme::BlfCrypt,
        Scheme::Sha512Crypt,
        Scheme::Sha256Crypt,
        Scheme::Ssha512,
        Scheme::Ssha256,
        Scheme::Ssha,
        Scheme::Plain,
    ];

    /// Dovecot treats scheme names case-insensitively and has two aliases for PLAIN.
    fn from_name(name: &str) -> Option<Scheme> {
        if name.eq_ignore_ascii_case("CLEAR") || name.eq_ignore_ascii_case("CLEARTEXT") {
            return Some(Scheme::Plain);
        }
        Scheme::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// How Dovecot writes the payload when the prefix names no encoding: the salted SHA
    /// schemes are binary, everything else is already text.
    fn default_encoding(self) -> Encoding {
        match self {
            Scheme::Ssha512 | Scheme::Ssha256 | Scheme::Ssha => Encoding::Base64,
            _ => Encoding::Raw,
        }
    }
}

display_via!(Scheme, name);

/// Why a stored hash could not be checked or a new one made.
///
/// Variants carry only scheme names or parameter descriptions, so these errors are safe
/// to log.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The stored value names a scheme we do not verify (empty when it names none).
    #[error("unknown password scheme {0:?}")]
    UnknownScheme(String),
    /// The scheme is known but the stored value is not a valid hash of that scheme.
    #[error("malformed {} password hash", .0.name())]
    Malformed(Scheme),
    /// Argon2 parameters that the argon2 crate, or our memory ceiling, rejects.
    #[error("invalid Argon2 parameters: {0}")]
    InvalidParams(#[from] Argon2ParamsError),
    /// The operating system could not supply random bytes for a salt.
    #[error("could not generate a password salt")]
    Salt,
}

/// The outcome of a well-formed comparison; an enum so a caller cannot mistake a
/// malformed hash or an error for a mismatch (or the reverse) by dropping a `bool`.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    Match,
    Mismatch,
}

/// Kept private so `subtle` types stay out of the public API.
fn verdict(matched: Choice) -> Verified {
    if bool::from(matched) {
        Verified::Match
    } else {
        Verified::Mismatch
    }
}

/// Which scheme a stored value uses, without checking a password against it.
pub fn scheme_of(stored: &str) -> Result<Scheme, HashError> {
    parse(stored).map(|s| s.scheme)
}

/// The memory a hash works in, kept by a hash worker from one hash to the next.
///
/// Argon2 at `doveadm pw`'s default cost fills 64 MiB; allocating that afresh for every
/// hash, and having the kernel fault in and zero its 16,384 pages, costs about a third
/// of the hash's CPU (measured: 146 ms a hash fresh, 102 ms reused; libsodium, which
/// Dovecot uses, 106 ms). The blocks need no wiping between hashes: Argon2 writes every
/// block before it reads it.
#[derive(Default)]
pub struct Scratch {
    argon2: Vec<Block>,
    crypt: Vec<u8>,
}

impl Scratch {
    pub(super) fn argon2_blocks(&mut self, count: usize) -> &mut [Block] {
        if self.argon2.len() < count {
            self.argon2.resize(count, Block::default());
        }
        &mut self.argon2[..count]
    }

    /// The bytes it holds, for the pool's memory accounting and tests.
    pub fn bytes(&self) -> usize {
        self.argon2.len() * std::mem::size_of::<Block>() + self.crypt.len()
    }
}

/// Checks `password` against a stored value in any supported scheme and encoding.
///
/// Comparisons of secret-derived bytes are constant-time; PLAIN still reveals whether
/// the lengths differ, which no comparison can avoid.
pub fn verify(stored: &str, password: &[u8]) -> Result<Verified, HashError> {
    verify_in(stored, password, &mut Scratch::default())
}

/// [`verify`], working in `scratch`'s memory (a hash worker's, reused).
pub fn verify_in(
    stored: &str,
    password: &[u8],
    scratch: &mut Scratch,
) -> Result<Verified, HashError> {
    let Stored { scheme, payload } = parse(stored)?;
    // Crypt and PHC strings are ASCII; anything else cannot be one.
    let text = std::str::from_utf8(&payload).ok();
    let outcome = match scheme {
        Scheme::Argon2id => {
            text.and_then(|t| verify_argon2(t, password, Algorithm::Argon2id, scratch))
        }
        Scheme::Argon2i => {
            text.and_then(|t| verify_argon2(t, password, Algorithm::Argon2i, scratch))
        }
        Scheme::BlfCrypt => text.and_then(|t| verify_bcrypt(t, password, scratch)),
        Scheme::Sha512Crypt => text.and_then(|t| verify_sha_crypt(t, password, ShaCrypt::Sha512)),
        Scheme::Sha256Crypt => text.and_then(|t| verify_sha_crypt(t, password, ShaCrypt::Sha256)),
        Scheme::Ssha512 => verify_ssha::<Sha512>(&payload, password),
        Scheme::Ssha256 => verify_ssha::<Sha256>(&payload, password),
        Scheme::Ssha => verify_ssha::<Sha1>(&payload, password),
        Scheme::Plain => Some(verdict(payload.as_ref().ct_eq(password))),
    };
    outcome.ok_or(HashError::Malformed(scheme))
}

/// Cost parameters for new Argon2id hashes, configurable so operators can trade login
/// latency against brute-force cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// OWASP's minimum recommendation for Argon2id: cheap enough for a busy IMAP server,
    /// still far costlier to brute-force than any legacy scheme.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Why Argon2 costs cannot be used. Carries only the costs, so it is safe to log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Argon2ParamsError {
    #[error("memory_kib {memory_kib} is above the {ARGON2_MAX_MEMORY_KIB} KiB that verification accepts")]
    MemoryAboveCeiling { memory_kib: u32 },
    #[error(
        "parallelism {parallelism} is above the maximum {}",
        Params::MAX_P_COST
    )]
    ParallelismAboveMaximum { parallelism: u32 },
    /// The argon2 crate's own checks (a zero cost, too little memory for the lanes, …).
    #[error(
        "{source} (memory_kib {}, iterations {}, parallelism {})",
        .params.memory_kib,
        .params.iterations,
        .params.parallelism
    )]
    Refused {
        source: argon2::Error,
        params: Argon2Params,
    },
    /// The hasher refused the costs when it came to use them.
    #[error("{0}")]
    Hashing(password_hash::Error),
}

impl Argon2Params {
    /// Lets config loading reject bad costs at startup instead of at the first login.
    pub fn validate(&self) -> Result<(), Argon2ParamsError> {
        self.to_argon2().map(|_| ())
    }

    fn to_argon2(self) -> Result<Params, Argon2ParamsError> {
        if self.memory_kib > ARGON2_MAX_MEMORY_KIB {
            return Err(Argon2ParamsError::MemoryAboveCeiling {
                memory_kib: self.memory_kib,
            });
        }
        // Checked before Params::new, whose `parallelism * 8` would overflow first.
        if self.parallelism > Params::MAX_P_COST {
            return Err(Argon2ParamsError::ParallelismAboveMaximum {
                parallelism: self.parallelism,
            });
        }
        Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(ARGON2_OUTPUT_LEN),
        )
        .map_err(|source| Argon2ParamsError::Refused {
            source,
            params: self,
        })
    }
}

/// Hashes a new password as `{ARGON2ID}$argon2id$v=19$...`, the form Dovecot writes and
/// reads, so the database stays usable by Dovecot itself.
pub fn hash_argon2id(password: &[u8], params: Argon2Params) -> Result<String, HashError> {
    let params = params.to_argon2()?;
    let salt = random_salt()?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let phc = hasher
        .hash_password(password, &salt)
        .map_err(Argon2ParamsError::Hashing)?;
    Ok(format!("{{{}}}{phc}", Scheme::Argon2id.name()))
}

/// True when a successful login should store a fresh Argon2id hash: any scheme other than Argon2id.
#[must_use]
pub fn needs_rehash(stored: &str) -> bool {
    !matches!(scheme_of(stored), Ok(Scheme::Argon2id))
}

fn random_salt() -> Result<SaltString, HashError> {
    let mut bytes = [0u8; ARGON2_SALT_LEN];
    getrandom::fill(&mut bytes).map_err(|_| HashError::Salt)?;
    SaltString::encode_b64(&bytes).map_err(|_| HashError::Salt)
}

/// How the payload after the `{SCHEME}` prefix is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Raw,
    Hex,
    Base64,
}

impl Encoding {
    /// Dovecot's `{SCHEME.SUFFIX}` encodings.
    fn from_suffix(suffix: &str) -> Option<Encoding> {
        if suffix.eq_ignore_ascii_case("HEX") {
            Some(Encoding::Hex)
        } else if suffix.eq_ignore_ascii_case("B64") || suffix.eq_ignore_ascii_case("BASE64") {
            Some(Encoding::Base64)
        } else {
            None
        }
    }

    fn decode(self, body: &str) -> Option<Cow<'_, [u8]>> {
        match self {
            Encoding::Raw => Some(Cow::Borrowed(body.as_bytes())),
            Encoding::Hex => decode_hex(body).map(Cow::Owned),
            Encoding::Base64 => BASE64.decode(body).ok().map(Cow::Owned),
        }
    }
}

/// A stored value reduced to its scheme and the decoded bytes that scheme works on.
struct Stored<'a> {
    scheme: Scheme,
    payload: Cow<'a, [u8]>,
}

fn parse(stored: &str) -> Result<Stored<'_>, HashError> {
    match split_prefix(stored) {
        Some((token, body)) => parse_prefixed(token, body),
        None => Ok(Stored {
            scheme: sniff(stored.as_bytes())?,
            payload: Cow::Borrowed(stored.as_bytes()),
        }),
    }
}

/// Splits `{TOKEN}body`. Only a token that could be a scheme name counts, so that a
/// value merely starting with `{` never has part of itself quoted in an error.
fn split_prefix(stored: &str) -> Option<(&str, &str)> {
    let (token, body) = stored.strip_prefix('{')?.split_once('}')?;
    is_scheme_token(token).then_some((token, body))
}

fn is_scheme_token(token: &str) -> bool {
    token.len() <= MAX_SCHEME_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_prefixed<'a>(token: &str, body: &'a str) -> Result<Stored<'a>, HashError> {
    let unknown = || HashError::UnknownScheme(token.to_owned());
    let (name, encoding) = split_encoding(token);
    if name.eq_ignore_ascii_case("CRYPT") {
        // {CRYPT} means "whatever crypt(3) understands" (doveadm's default scheme); we
        // take it when the content is one of the crypt flavours implemented here.
        let payload = encoding
            .unwrap_or(Encoding::Raw)
            .decode(body)
            .ok_or_else(unknown)?;
        let scheme = sniff(&payload).map_err(|_| unknown())?;
        return Ok(Stored { scheme, payload });
    }
    let scheme = Scheme::from_name(name).ok_or_else(unknown)?;
    let payload = encoding
        .unwrap_or(scheme.default_encoding())
        .decode(body)
        .ok_or(HashError::Malformed(scheme))?;
    Ok(Stored { scheme, payload })
}

/// `SSHA512.HEX` → (`SSHA512`, Hex). An unknown suffix stays part of the name, as in
/// Dovecot, so it is reported as an unknown scheme rather than silently ignored.
fn split_encoding(token: &str) -> (&str, Option<Encoding>) {
    token
        .rsplit_once('.')
        .and_then(|(name, suffix)| Encoding::from_suffix(suffix).map(|e| (name, Some(e))))
        .unwrap_or((token, None))
}

/// Recognises a bare crypt(3)/PHC string, as found in passdbs whose default scheme made
/// the `{SCHEME}` prefix unnecessary.
fn sniff(payload: &[u8]) -> Result<Scheme, HashError> {
    const PREFIXES: [(&[u8], Scheme); 7] = [
        (b"$argon2id$", Scheme::Argon2id),
        (b"$argon2i$", Scheme::Argon2i),
        (b"$2y$", Scheme::BlfCrypt),
        (b"$2b$", Scheme::BlfCrypt),
        (b"$2a$", Scheme::BlfCrypt),
        (b"$6$", Scheme::Sha512Crypt),
        (b"$5$", Scheme::Sha256Crypt),
    ];
    if let Some((_, scheme)) = PREFIXES.iter().find(|(p, _)| payload.starts_with(p)) {
        return Ok(*scheme);
    }
    // Dovecot itself recognises bare MD5-crypt; naming it tells the operator what to migrate.
    let name = if payload.starts_with(b"$1$") {
        "MD5-CRYPT"
    } else {
        ""
    };
    Err(HashError::UnknownScheme(name.to_owned()))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let pairs = text.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

/// `None` means malformed; the caller attaches the scheme.
fn verify_argon2(
    text: &str,
    password: &[u8],
    algorithm: Algorithm,
    scratch: &mut Scratch,
) -> Option<Verified> {
    let hash = PasswordHash::new(text).ok()?;
    // A prefix that disagrees with the PHC algorithm means a corrupt or tampered row.
    if hash.algorithm != algorithm.ident() {
        return None;
    }
    // Without these the argon2 crate reports a plain mismatch, hiding the corruption.
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return None;
    };
    if !argon2_costs_acceptable(&hash) {
        return None;
    }
    // The hash carries its own version and costs (and output length), as the argon2
    // crate's own verify_password reads them.
    let params = Params::try_from(&hash).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes).ok()?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut computed = [0u8; 64];
    let computed = computed.get_mut(..expected.len())?;
    argon2
        .hash_password_into_with_memory(password, salt, computed, scratch.argon2_blocks(blocks))
        .ok()?;
    Some(verdict(computed.ct_eq(expected.as_bytes())))
}

/// Applies our own limits before the argon2 crate sees the costs: it allocates the
/// memory cost up front (aborting on failure) and overflows on absurd parallelism.
fn argon2_costs_acceptable(hash: &PasswordHash<'_>) -> bool {
    let cost = |name| hash.params.get_decimal(name);
    match (cost("m"), cost("t"), cost("p")) {
        (Some(memory_kib), Some(iterations), Some(parallelism)) => Argon2Params {
            memory_kib,
            iterations,
            parallelism,
        }
        .validate()
        .is_ok(),
        _ => false,
    }
}

fn verify_bcrypt(text: &str, password: &[u8], scratch: &mut Scratch) -> Option<Verified> {
    if !is_bcrypt_shape(text) {
        return None;
    }
    if let Some(matched) = super::crypt::matches(text, password, &mut scratch.crypt) {
        return Some(if matched {
            Verified::Match
        } else {
            Verified::Mismatch
        });
    }
    // A password with a NUL byte, which libxcrypt cannot take. The crate compares in
    // constant time internally and returns only the result.
    match bcrypt::verify(password, text) {
        Ok(true) => Some(Verified::Match),
        Ok(false) => Some(Verified::Mismatch),
        Err(_) => None,
    }
}

/// The bcrypt crate also takes `$2x$` (the pre-2011 bug-compatible variant) and skips
/// stray `$`; we accept only the shape crypt(3) writes: `$2?$NN$` + 53 characters.
fn is_bcrypt_shape(text: &str) -> bool {
    let Some(rest) = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|prefix| text.strip_prefix(prefix))
    else {
        return false;
    };
    match rest.as_bytes() {
        [c1, c2, b'$', tail @ ..] => {
            c1.is_ascii_digit()
                && c2.is_ascii_digit()
                && tail.len() == 53
                && tail
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
                // The last character of the 16-byte salt and of the 23-byte hash carry
                // only 2 and 4 bits: crypt(3) writes them with the rest zero. libxcrypt
                // would read other values as these and answer "mismatch", hiding a
                // corrupt row.
                && tail.get(21).is_some_and(|b| b".Oeu".contains(b))
                && tail.get(52).is_some_and(|b| b".CGKOSWaeimquy26".contains(b))
        }
        _ => false,
    }
}

#[derive(Clone, Copy)]
enum ShaCrypt {
    Sha256,
    Sha512,
}

impl ShaCrypt {
    fn magic(self) -> &'static str {
        match self {
            ShaCrypt::Sha256 => "$5$",
            ShaCrypt::Sha512 => "$6$",
        }
    }

    /// Length of the crypt-base64 digest at the end of the string.
    fn encoded_len(self) -> usize {
        match self {
            ShaCrypt::Sha256 => 43,
            ShaCrypt::Sha512 => 86,
        }
    }

    fn compute(self, password: &[u8], salt: &[u8], rounds: usize) -> Option<String> {
        match self {
            ShaCrypt::Sha256 => {
                let params = sha_crypt::Sha256Params::new(rounds).ok()?;
                sha_crypt::sha256_crypt_b64(password, salt, &params).ok()
            }
            ShaCrypt::Sha512 => {
                let params = sha_crypt::Sha512Params::new(rounds).ok()?;
                sha_crypt::sha512_crypt_b64(password, salt, &params).ok()
            }
        }
    }
}

/// Longest salt crypt(3) uses; it truncates longer ones, so a longer stored salt cannot
/// have come from it.
const SHA_CRYPT_MAX_SALT: usize = 16;

/// Parses `$6$[rounds=N$]salt$digest` ourselves because sha-crypt's checker wants the
/// password as `&str`, and Dovecot passwords are bytes.
fn verify_sha_crypt(text: &str, password: &[u8], flavour: ShaCrypt) -> Option<Verified> {
    let rest = text.strip_prefix(flavour.magic())?;
    // crypt(3) leaves `rounds=` out when it is the default, as Dovecot's hashes show.
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(after) => {
            let (digits, rest) = after.split_once('$')?;
            (parse_rounds(digits)?, rest)
        }
        None => (sha_crypt::ROUNDS_DEFAULT, rest),
    };
    let (salt, digest) = rest.split_once('$')?;
    if salt.len() > SHA_CRYPT_MAX_SALT || digest.len() != flavour.encoded_len() {
        return None;
    }
    let computed = flavour.compute(password, salt.as_bytes(), rounds)?;
    Some(verdict(computed.as_bytes().ct_eq(digest.as_bytes())))
}

fn parse_rounds(digits: &str) -> Option<usize> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Dovecot's SSHA family: `digest || salt` with `digest = H(password || salt)`. Dovecot
/// refuses an empty salt, and so do we.
fn verify_ssha<D: Digest>(payload: &[u8], password: &[u8]) -> Option<Verified> {
    let digest_len = <D as Digest>::output_size();
    let (expected, salt) = payload.split_at_checked(digest_len)?;
    if salt.is_empty() {
        return None;
    }
    let mut hasher = D::new();
    hasher.update(password);
    hasher.update(salt);
    Some(verdict(hasher.finalize().as_slice().ct_eq(expected)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const FIXTURES: &str = include_str!("../../tests/fixtures/doveadm-pw.tsv");

    struct Fixture {
        /// The `-s` argument given to doveadm, e.g. `SSHA512.HEX`.
        scheme: &'static str,
        password: &'static str,
        stored: &'static str,
    }

    fn fixtures() -> Vec<Fixture> {
        let list: Vec<Fixture> = FIXTURES
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let mut cols = line.splitn(3, '\t');
                let (Some(scheme), Some(password), Some(stored)) =
                    (cols.next(), cols.next(), cols.next())
                else {
                    panic!("fixture line without three columns: {line}");
                };
                Fixture {
                    scheme,
                    password,
                    stored,
                }
            })
            .collect();
        assert!(list.len() >= 18, "fixture file looks truncated");
        list
    }

    /// The scheme a doveadm `-s` argument should map to, spelled independently of the code
    /// under test.
    fn expected_name(doveadm_scheme: &str) -> &str {
        let base = doveadm_scheme.split('.').next().unwrap();
        match base {
            "CLEAR" | "CLEARTEXT" => "PLAIN",
            other => other,
        }
    }

    fn is_argon2(f: &Fixture) -> bool {
        f.scheme.starts_with("ARGON2")
    }

    /// Passwords that must not match `f`: appended, truncated and case-changed variants.
    fn wrong_passwords(password: &str) -> Vec<String> {
        let mut wrong = vec![format!("{password}!")];
        let mut chars = password.chars();
        if chars.next_back().is_some() {
            wrong.push(chars.as_str().to_owned());
        }
        if password.to_uppercase() != password {
            wrong.push(password.to_uppercase());
        }
        wrong
    }

    #[test]
    fn every_doveadm_fixture_verifies_and_rejects_wrong_passwords() {
        for f in fixtures() {
            let scheme = scheme_of(f.stored).unwrap();
            assert_eq!(scheme.name(), expected_name(f.scheme), "{}", f.stored);
            assert_eq!(
                verify(f.stored, f.password.as_bytes()).unwrap(),
                Verified::Match,
                "{} {:?}",
                f.scheme,
                f.password
            );
            for wrong in wrong_passwords(f.password) {
                assert_eq!(
                    verify(f.stored, wrong.as_bytes()).unwrap(),
                    Verified::Mismatch,
                    "{} {:?} accepted {wrong:?}",
                    f.scheme,
                    f.password
                );
            }
        }
    }

    #[test]
    fn one_reused_scratch_gives_every_fixture_its_verdict() {
        // Argon2id at 64 MiB, Argon2i at 32 MiB, bcrypt, then the other way round: what
        // one hash left in the memory never changes the next one's answer.
        let mut scratch = Scratch::default();
        let all = fixtures();
        for f in all.iter().chain(all.iter().rev()) {
            assert_eq!(
                verify_in(f.stored, f.password.as_bytes(), &mut scratch).unwrap(),
                Verified::Match,
                "{} {:?}",
                f.scheme,
                f.password
            );
            let wrong = format!("{}!", f.password);
            assert_eq!(
                verify_in(f.stored, wrong.as_bytes(), &mut scratch).unwrap(),
                Verified::Mismatch,
                "{}",
                f.scheme
            );
        }
        assert_eq!(
            scratch.bytes(),
            64 * 1024 * 1024 + crate::auth::crypt::WORK_AREA_BYTES
        );
    }

    #[test]
    fn a_bcrypt_row_with_bits_crypt_never_writes_is_malformed_not_a_mismatch() {
        let f = fixtures()
            .into_iter()
            .find(|f| f.scheme == "BLF-CRYPT")
            .unwrap();
        let (prefix, text) = f.stored.split_once('}').unwrap();
        let (salt_end, last) = (7 + 21, text.len() - 1);
        for (at, odd) in [(salt_end, b'/'), (last, b'/')] {
            let mut bytes = text.as_bytes().to_vec();
            bytes[at] = odd;
            let stored = format!("{prefix}}}{}", String::from_utf8(bytes).unwrap());
            assert!(
                matches!(
                    verify(&stored, f.password.as_bytes()),
                    Err(HashError::Malformed(Scheme::BlfCrypt))
                ),
                "{stored}"
            );
        }
    }

    #[test]
    fn a_password_libxcrypt_cannot_take_still_gets_its_answer() {
        let stored = bcrypt::hash_with_salt("a\0b", 4, [3; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let stored = format!("{{BLF-CRYPT}}{stored}");
        assert_eq!(verify(&stored, b"a\0b").unwrap(), Verified::Match);
        assert_eq!(verify(&stored, b"a\0c").unwrap(), Verified::Mismatch);
    }

    #[test]
    fn fixtures_cover_every_scheme_with_distinct_passwords() {
        let all = fixtures();
        for scheme in Scheme::ALL {
            let mut passwords: Vec<&str> = all
                .iter()
                .filter(|f| expected_name(f.scheme) == scheme.name())
                .map(|f| f.password)
                .collect();
            passwords.sort_unstable();
            passwords.dedup();
            assert!(passwords.len() >= 2, "{scheme} has too few fixtures");
            assert!(
                passwords.iter().any(|p| !p.is_ascii()),
                "{scheme}: no UTF-8"
            );
            assert!(
                passwords.iter().any(|p| p.len() == 1),
                "{scheme}: no 1-char"
            );
        }
    }

    #[test]
    fn bare_crypt_and_phc_strings_verify_without_prefix() {
        let mut checked = 0;
        for f in fixtures().iter().filter(|f| !f.scheme.contains('.')) {
            let (_, bare) = f.stored.split_once('}').unwrap();
            if !bare.starts_with('$') {
                continue;
            }
            assert_eq!(scheme_of(bare).unwrap().name(), expected_name(f.scheme));
            assert_eq!(
                verify(bare, f.password.as_bytes()).unwrap(),
                Verified::Match
            );
            let wrong = format!("{}!", f.password);
            assert_eq!(verify(bare, wrong.as_bytes()).unwrap(), Verified::Mismatch);
            checked += 1;
        }
        assert!(checked >= 10);
    }

    #[test]
    fn crypt_prefix_is_taken_for_supported_flavours() {
        for f in fixtures().iter().filter(|f| !f.scheme.contains('.')) {
            let (_, bare) = f.stored.split_once('}').unwrap();
            if !bare.starts_with('$') || is_argon2(f) {
                continue;
            }
            let stored = format!("{{CRYPT}}{bare}");
            assert_eq!(scheme_of(&stored).unwrap().name(), expected_name(f.scheme));
            assert_eq!(
                verify(&stored, f.password.as_bytes()).unwrap(),
                Verified::Match
            );
        }
        assert_unknown("{CRYPT}abJnggxhB/yJU", "CRYPT");
        assert_unknown("{CRYPT}$1$salt$hash", "CRYPT");
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        for f in fixtures() {
            let (token, body) = f.stored[1..].split_once('}').unwrap();
            for spelled in [token.to_lowercase(), mixed_case(token)] {
                let stored = format!("{{{spelled}}}{body}");
                assert_eq!(scheme_of(&stored).unwrap().name(), expected_name(f.scheme));
                if !is_argon2(&f) {
                    assert_eq!(
                        verify(&stored, f.password.as_bytes()).unwrap(),
                        Verified::Match,
                        "{stored}"
                    );
                }
            }
        }
    }

    fn mixed_case(s: &str) -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect()
    }

    #[test]
    fn sha_crypt_default_rounds_may_be_implicit_or_explicit() {
        for f in fixtures().iter().filter(|f| {
            matches!(f.scheme, "SHA512-CRYPT" | "SHA256-CRYPT") && !f.stored.contains("rounds=")
        }) {
            let explicit = f.stored.replacen("$6$", "$6$rounds=5000$", 1);
            let explicit = explicit.replacen("$5$", "$5$rounds=5000$", 1);
            assert_ne!(explicit, f.stored);
            assert_eq!(
                verify(&explicit, f.password.as_bytes()).unwrap(),
                Verified::Match
            );
            // A different round count is a different hash.
            let other = explicit.replace("rounds=5000", "rounds=5001");
            assert_eq!(
                verify(&other, f.password.as_bytes()).unwrap(),
                Verified::Mismatch
            );
        }
    }

    fn assert_unknown(stored: &str, name: &str) {
        match scheme_of(stored) {
            Err(HashError::UnknownScheme(got)) => assert_eq!(got, name, "{stored:?}"),
            other => panic!("{stored:?}: expected UnknownScheme({name:?}), got {other:?}"),
        }
        assert!(matches!(
            verify(stored, b"pw"),
            Err(HashError::UnknownScheme(_))
        ));
    }

    #[test]
    fn unknown_schemes_report_their_name() {
        assert_unknown("{MD5}1a1dc91c907325c69271ddf0c944bc72", "MD5");
        assert_unknown("{sha1}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "sha1");
        assert_unknown("{SSHA.XYZ}abc", "SSHA.XYZ");
        assert_unknown("{FOO.HEX}00", "FOO.HEX");
        assert_unknown("{}x", "");
        assert_unknown("plaintext-without-prefix", "");
        assert_unknown("$1$saltsalt$hashhashhashhashhashha", "MD5-CRYPT");
        // Not a scheme-name token, so the would-be name is not echoed.
        assert_unknown("{my secret}x", "");
    }

    fn assert_malformed(stored: &str, scheme: Scheme) {
        match verify(stored, b"correct horse battery staple") {
            Err(HashError::Malformed(got)) => assert_eq!(got, scheme, "{stored:?}"),
            other => panic!("{stored:?}: expected Malformed({scheme}), got {other:?}"),
        }
    }

    fn fixture(scheme: &str) -> Fixture {
        fixtures().into_iter().find(|f| f.scheme == scheme).unwrap()
    }

    #[test]
    fn malformed_hashes_are_reported_not_mismatched() {
        use Scheme::*;
        assert_malformed("{SSHA}!!!", Ssha);
        assert_malformed("{SSHA}", Ssha);
        // Digest without salt.
        let no_salt = BASE64.encode([7u8; 64]);
        assert_malformed(&format!("{{SSHA512}}{no_salt}"), Ssha512);
        assert_malformed("{SSHA256}AAAA", Ssha256);
        assert_malformed("{SSHA256.HEX}abc", Ssha256);
        assert_malformed("{SSHA256.HEX}zz", Ssha256);
        assert_malformed("{PLAIN.HEX}zz", Plain);
        assert_malformed("{PLAIN.B64}%%%", Plain);
        assert_malformed("$6$", Sha512Crypt);
        assert_malformed("$6$salt", Sha512Crypt);
        assert_malformed("$6$rounds=abc$salt$hash", Sha512Crypt);
        assert_malformed("$5$rounds=$salt$hash", Sha256Crypt);
        let digest86 = "a".repeat(86);
        assert_malformed(&format!("$6$rounds=999$salt${digest86}"), Sha512Crypt);
        assert_malformed(&format!("$6$saltsaltsaltsalts${digest86}"), Sha512Crypt);
        assert_malformed(&format!("{{SHA256-CRYPT}}$6$salt${digest86}"), Sha256Crypt);
        let tail53 = "a".repeat(53);
        assert_malformed("{BLF-CRYPT}$2y$05$short", BlfCrypt);
        assert_malformed(&format!("{{BLF-CRYPT}}$2x$05${tail53}"), BlfCrypt);
        assert_malformed(&format!("$2y$99${tail53}"), BlfCrypt);
        assert_malformed(&format!("$2y$5$${tail53}"), BlfCrypt);
        assert_malformed("{ARGON2ID}", Argon2id);
        assert_malformed(
            "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0",
            Argon2id,
        );
        assert_malformed(
            "$argon2id$v=19$m=65536,t=1,p=4294967295$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            Argon2id,
        );
        assert_malformed("{ARGON2ID.HEX}2461", Argon2id);
    }

    #[test]
    fn truncated_or_mislabelled_fixtures_are_malformed() {
        let argon2id = fixture("ARGON2ID");
        let half = &argon2id.stored[..argon2id.stored.len() / 2];
        assert_malformed(half, Scheme::Argon2id);
        // Memory cost beyond our ceiling is refused before anything is allocated.
        assert_malformed(
            &argon2id.stored.replace("m=65536", "m=4194304"),
            Scheme::Argon2id,
        );
        let argon2i = fixture("ARGON2I");
        let relabelled = argon2i.stored.replace("{ARGON2I}", "{ARGON2ID}");
        assert_malformed(&relabelled, Scheme::Argon2id);
        let sha = fixture("SHA512-CRYPT");
        assert_malformed(&sha.stored[..sha.stored.len() - 1], Scheme::Sha512Crypt);
        let blf = fixture("BLF-CRYPT");
        assert_malformed(&blf.stored[..blf.stored.len() - 1], Scheme::BlfCrypt);
    }

    /// Text that must not leak: the stored value, its digest tail and the password.
    fn assert_leak_free(err: &HashError, secrets: &[&str]) {
        for shown in [err.to_string(), format!("{err:?}")] {
            for secret in secrets.iter().filter(|s| s.len() >= 4) {
                assert!(!shown.contains(secret), "{shown:?} leaks {secret:?}");
            }
        }
    }

    #[test]
    fn errors_never_contain_hash_or_password_text() {
        let mut errors = 0;
        for f in fixtures() {
            let (_, body) = f.stored.split_once('}').unwrap();
            let tail_start = body.char_indices().rev().nth(11).map_or(0, |(i, _)| i);
            let tail = &body[tail_start..];
            let corrupted = format!("{}\u{1}", f.stored);
            match verify(&corrupted, f.password.as_bytes()) {
                Err(err) => {
                    assert!(matches!(err, HashError::Malformed(_)), "{err:?}");
                    assert_leak_free(&err, &[f.stored, body, tail, f.password]);
                    errors += 1;
                }
                // Any byte is valid plaintext, so only PLAIN may still parse.
                Ok(v) => {
                    assert_eq!(expected_name(f.scheme), "PLAIN", "{}", f.stored);
                    assert_eq!(v, Verified::Mismatch);
                }
            }
        }
        assert!(
            errors >= 30,
            "only {errors} corrupted fixtures produced errors"
        );

        let err = verify("{NOPE}hunter2hunter2", b"hunter2hunter2").unwrap_err();
        assert_leak_free(&err, &["hunter2"]);
        let err = verify("hunter2hunter2", b"hunter2hunter2").unwrap_err();
        assert_leak_free(&err, &["hunter2"]);
        let err = verify("{my hunter2}x", b"x").unwrap_err();
        assert_leak_free(&err, &["hunter2"]);
    }

    #[test]
    fn argon2id_round_trip() {
        let stored = hash_argon2id("Pässwörd 🔑".as_bytes(), Argon2Params::default()).unwrap();
        assert!(
            stored.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        // 16-byte salt and 32-byte output, unpadded base64, as Dovecot writes them.
        let parts: Vec<&str> = stored.split('$').collect();
        assert_eq!(parts.len(), 6);
        assert_eq!(parts[4].len(), 22);
        assert_eq!(parts[5].len(), 43);
        assert_eq!(scheme_of(&stored).unwrap(), Scheme::Argon2id);
        assert!(!needs_rehash(&stored));
        assert_eq!(
            verify(&stored, "Pässwörd 🔑".as_bytes()).unwrap(),
            Verified::Match
        );
        assert_eq!(verify(&stored, b"Passwort").unwrap(), Verified::Mismatch);
        let again = hash_argon2id("Pässwörd 🔑".as_bytes(), Argon2Params::default()).unwrap();
        assert_ne!(stored, again, "salt must be fresh per hash");
    }

    #[test]
    fn argon2id_honours_custom_params() {
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 2,
        };
        let stored = hash_argon2id(b"", params).unwrap();
        assert!(stored.starts_with("{ARGON2ID}$argon2id$v=19$m=64,t=1,p=2$"));
        assert_eq!(verify(&stored, b"").unwrap(), Verified::Match);
        assert_eq!(verify(&stored, b" ").unwrap(), Verified::Mismatch);
    }

    #[test]
    fn argon2_params_validation() {
        assert_eq!(Argon2Params::default().validate(), Ok(()));
        let base = Argon2Params::default();
        for bad in [
            Argon2Params {
                memory_kib: 0,
                ..base
            },
            Argon2Params {
                memory_kib: 8,
                parallelism: 2,
                ..base
            },
            Argon2Params {
                iterations: 0,
                ..base
            },
            Argon2Params {
                parallelism: 0,
                ..base
            },
            Argon2Params {
                parallelism: u32::MAX,
                ..base
            },
            Argon2Params {
                memory_kib: ARGON2_MAX_MEMORY_KIB + 1,
                ..base
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(matches!(
                hash_argon2id(b"pw", bad),
                Err(HashError::InvalidParams(_))
            ));
        }
        let edge = Argon2Params {
            memory_kib: ARGON2_MAX_MEMORY_KIB,
            ..base
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn needs_rehash_for_everything_but_argon2id() {
        for f in fixtures() {
            let is_argon2id = expected_name(f.scheme) == "ARGON2ID";
            assert_eq!(needs_rehash(f.stored), !is_argon2id, "{}", f.stored);
        }
        assert!(!needs_rehash(
            "$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA"
        ));
        assert!(needs_rehash("{MD5}whatever"));
        assert!(needs_rehash(""));
    }

    #[test]
    fn scheme_names_use_dovecot_spelling() {
        assert_eq!(Scheme::BlfCrypt.name(), "BLF-CRYPT");
        assert_eq!(Scheme::Sha512Crypt.to_string(), "SHA512-CRYPT");
        for alias in ["PLAIN", "clear", "ClearText"] {
            assert_eq!(Scheme::from_name(alias), Some(Scheme::Plain));
        }
        assert_eq!(Scheme::from_name("SSHA1"), None);
    }

    fn nasty_inputs() -> Vec<String> {
        let mut inputs: Vec<String> = [
            "",
            "{",
            "}",
            "{}",
            "{{}}",
            "{SSHA}",
            "{SSHA}!!!",
            "{SSHA}=",
            "{SSHA.HEX}",
            "{SSHA.}",
            "{.HEX}",
            "{CRYPT}",
            "{CRYPT.HEX}zz",
            "{PLAIN}",
            "{PLAIN.B64}=",
            "$",
            "$$",
            "$6$",
            "$6$$",
            "$6$rounds=$",
            "$6$rounds=99999999999999999999$s$h",
            "$5$rounds=-1$s$h",
            "$2y$99$x",
            "$2y$",
            "$2y$$$",
            "$2b$05$€€€€€€€€€€€€€€€€€€",
            "$argon2id$",
            "$argon2id$v=19$m=1,t=1,p=1$$",
            "$argon2id$v=99$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "$argon2id$v=19$m=64,t=1,p=0$c2FsdHNhbHQ$aGFzaGhhc2g",
            "$argon2i$v=19$m=64,t=1,p=16777216$c2FsdHNhbHQ$aGFzaGhhc2g",
            "{ARGON2I}$argon2d$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "\0",
            "{SSHA\0}abc",
            "{PLAIN}\0\0",
            "$6$\0$\0",
            "{\0}",
            "{ÄÖÜ}x",
            "{SSHA}ÄÖÜ",
            "{SSHA.HEX}ÄÖ",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        inputs.push("x".repeat(1 << 20));
        inputs.push(format!("{{SSHA512}}{}", "A".repeat(1 << 20)));
        inputs.push(format!("{{SSHA512.HEX}}{}", "ab".repeat(1 << 19)));
        inputs.push(format!("{{{}}}x", "A".repeat(100_000)));
        inputs.push(format!("$6${}", "$".repeat(10_000)));
        inputs.push(format!("$2y$05${}", "/".repeat(1 << 16)));
        inputs.push(format!("$argon2id${}", "$".repeat(10_000)));
        inputs
    }

    #[test]
    fn garbage_never_panics_or_matches() {
        for input in nasty_inputs() {
            let _ = scheme_of(&input);
            let _ = needs_rehash(&input);
            for password in [&b""[..], b"pw", b"\0", &[0xff, 0xfe]] {
                // An empty PLAIN value rightly matches the empty password.
                if verify(&input, password).ok() == Some(Verified::Match) {
                    assert_eq!(scheme_of(&input).ok(), Some(Scheme::Plain), "{input:.40?}");
                    assert!(password.is_empty(), "{input:.40?}");
                }
            }
        }
    }

    #[test]
    fn every_prefix_of_a_fixture_is_handled() {
        let small_argon = hash_argon2id(
            b"pw",
            Argon2Params {
                memory_kib: 8,
                iterations: 1,
                parallelism: 1,
            },
        )
        .unwrap();
        let mut stored: Vec<String> = fixtures()
            .iter()
            .filter(|f| !is_argon2(f))
            .map(|f| f.stored.to_owned())
            .collect();
        stored.push(small_argon);
        for full in &stored {
            for (end, _) in full.char_indices() {
                let prefix = &full[..end];
                let _ = scheme_of(prefix);
                let result = verify(prefix, b"definitely not the password");
                assert_ne!(result.ok(), Some(Verified::Match), "{prefix:?}");
            }
        }
    }
}
