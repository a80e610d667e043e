//! Dovecot's TAB-escaping for field values (`str_tabescape` /
//! `str_tabunescape` in Dovecot's `src/lib/strescape.c`).
//!
//! Fields of the auth protocols are separated by TAB and lines end at LF, so
//! a value carrying those bytes must be escaped. Dovecot uses 0x01 as the
//! escape byte:
//!
//! | byte | escaped |
//! |------|---------|
//! | 0x00 | `\x01` `0` |
//! | 0x01 | `\x01` `1` |
//! | TAB  | `\x01` `t` |
//! | CR   | `\x01` `r` |
//! | LF   | `\x01` `n` |
//!
//! Dovecot's unescaper is lenient (an unknown escape yields the byte after
//! 0x01, a trailing 0x01 is dropped). Neither Dovecot nor Postfix ever emits
//! such sequences, so here they are rejected: a peer producing them is
//! broken, and silently repairing input on an authentication socket only
//! hides that.

use std::borrow::Cow;

/// The escape byte.
const ESC: u8 = 0x01;

/// Why a field could not be unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnescapeError {
    /// 0x01 followed by a byte that is not one of `0 1 t r n`.
    #[error("invalid escape sequence (0x01 followed by byte 0x{byte:02x})")]
    UnknownEscape { byte: u8 },
    /// The field ended right after the escape byte.
    #[error("escape byte 0x01 at the end of a field")]
    Truncated,
    /// The unescaped value is not UTF-8 (only from [`unescape_str`]).
    #[error("field is not valid UTF-8")]
    NotUtf8,
}

fn escape_code(b: u8) -> Option<u8> {
    match b {
        0x00 => Some(b'0'),
        ESC => Some(b'1'),
        b'\t' => Some(b't'),
        b'\r' => Some(b'r'),
        b'\n' => Some(b'n'),
        _ => None,
    }
}

/// Escapes a value for use inside a TAB-separated line.
///
/// Borrows when nothing needs escaping, which is the common case for
/// usernames and reasons.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| escape_code(b).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        // Every byte that needs escaping is ASCII, so working per char keeps
        // multi-byte sequences intact.
        match u8::try_from(c).ok().and_then(escape_code) {
            Some(code) => {
                out.push(char::from(ESC));
                out.push(char::from(code));
            }
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Appends the escaped form of `value` to `out`.
pub fn escape_into(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        match escape_code(b) {
            Some(code) => {
                out.push(ESC);
                out.push(code);
            }
            None => out.push(b),
        }
    }
}

/// Reverses [`escape`] for one field (the caller has already split the line
/// at TABs, as Dovecot's `t_strsplit_tabescaped` does).
///
/// The result can contain NUL (from `\x01 0`); callers that need C-like
/// strings must reject it themselves.
pub fn unescape(field: &[u8]) -> Result<Cow<'_, [u8]>, UnescapeError> {
    if !field.contains(&ESC) {
        return Ok(Cow::Borrowed(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied();
    while let Some(b) = bytes.next() {
        if b != ESC {
            out.push(b);
            continue;
        }
        let decoded = match bytes.next() {
            None => return Err(UnescapeError::Truncated),
            Some(b'0') => 0x00,
            Some(b'1') => ESC,
            Some(b't') => b'\t',
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(other) => return Err(UnescapeError::UnknownEscape { byte: other }),
        };
        out.push(decoded);
    }
    Ok(Cow::Owned(out))
}

/// [`unescape`] followed by a UTF-8 check.
pub fn unescape_str(field: &[u8]) -> Result<String, UnescapeError> {
    let raw = unescape(field)?.into_owned();
    String::from_utf8(raw).map_err(|_| UnescapeError::NotUtf8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape("joe@example.org"), Cow::Borrowed(_)));
        assert!(matches!(
            unescape(b"joe@example.org").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn golden_escapes() {
        assert_eq!(escape("a\tb"), "a\x01tb");
        assert_eq!(escape("a\nb"), "a\x01nb");
        assert_eq!(escape("a\rb"), "a\x01rb");
        assert_eq!(escape("a\x01b"), "a\x011b");
        assert_eq!(escape("a\0b"), "a\x010b");
        assert_eq!(escape("\t\x01\n"), "\x01t\x011\x01n");
        assert_eq!(escape("grüße\tß"), "grüße\x01tß");
    }

    #[test]
    fn escape_into_matches_escape() {
        let s = "x\x01y\tz\r\n\0é";
        let mut out = Vec::new();
        escape_into(&mut out, s.as_bytes());
        assert_eq!(out, escape(s).as_bytes());
    }

    #[test]
    fn round_trips() {
        let cases = [
            "",
            "plain",
            "\x01",
            "\x01\x01",
            "\t",
            "\n",
            "\r\n",
            "\0",
            "\x011",
            "a\x01tb",
            "mixed \x01 \t \n \r \0 end",
            "ünïcödé\t✓",
        ];
        for case in cases {
            let escaped = escape(case);
            assert!(!escaped.contains(['\t', '\n', '\r', '\0']), "{case:?}");
            assert_eq!(unescape_str(escaped.as_bytes()).unwrap(), case, "{case:?}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut escaped = Vec::new();
        escape_into(&mut escaped, &all);
        assert!(!escaped.contains(&b'\t') && !escaped.contains(&b'\n'));
        assert_eq!(unescape(&escaped).unwrap().as_ref(), all.as_slice());
    }

    #[test]
    fn bad_escapes_are_rejected() {
        assert_eq!(unescape(b"abc\x01"), Err(UnescapeError::Truncated));
        assert_eq!(
            unescape(b"a\x01xb"),
            Err(UnescapeError::UnknownEscape { byte: b'x' })
        );
        assert_eq!(unescape_str(b"\xff"), Err(UnescapeError::NotUtf8));
    }
}
