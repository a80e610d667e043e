//! LF-terminated line framing over a buffer the caller owns.
//!
//! The framer never allocates and never consumes anything itself: it tells
//! the caller how many bytes the returned line occupied so the caller can
//! drain them from whatever buffer type it uses. That keeps it usable by the
//! Dovecot codecs and by the Postfix policy codec alike.

/// Dovecot's auth-client socket drops a client whose line does not fit in
/// 16 KiB (`AUTH_CLIENT_MAX_LINE_LENGTH` in Dovecot).
pub const DOVECOT_AUTH_MAX_LINE: usize = 16 * 1024;

/// Result of looking for the next line in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line.
    Line {
        /// The line without its LF, and without a CR right before the LF.
        line: &'a [u8],
        /// Bytes to remove from the front of the buffer (line + terminator).
        consumed: usize,
    },
    /// No LF yet and the buffer is still below the limit: read more.
    NeedMore,
    /// `max_len` bytes are buffered without an LF among them. The peer is
    /// broken or hostile; the connection should be closed, since there is
    /// no safe way to resynchronise inside an over-long line.
    TooLong,
}

/// Finds the next line at the start of `buf`.
///
/// `max_len` bounds a line *including* its LF (and CR, if any), mirroring
/// Dovecot, whose input buffer of that size must hold the whole line. A
/// caller therefore never needs to buffer more than `max_len` bytes before a
/// verdict. With `max_len == 0` every non-empty buffer is [`Frame::TooLong`].
pub fn next_line(buf: &[u8], max_len: usize) -> Frame<'_> {
    let window = &buf[..buf.len().min(max_len)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let mut line = &window[..lf];
            // Tolerate CRLF peers (telnet/nc testing, some scripts).
            if let Some((&b'\r', rest)) = line.split_last() {
                line = rest;
            }
            Frame::Line {
                line,
                consumed: lf + 1,
            }
        }
        None if !buf.is_empty() && buf.len() >= max_len => Frame::TooLong,
        None => Frame::NeedMore,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_buffer_needs_more() {
        assert_eq!(next_line(b"", 10), Frame::NeedMore);
    }

    #[test]
    fn partial_line_needs_more() {
        assert_eq!(next_line(b"VERSION\t1", 100), Frame::NeedMore);
    }

    #[test]
    fn complete_line() {
        assert_eq!(
            next_line(b"VERSION\t1\t2\nCPID", 100),
            Frame::Line {
                line: b"VERSION\t1\t2",
                consumed: 12
            }
        );
    }

    #[test]
    fn crlf_is_stripped_once() {
        assert_eq!(
            next_line(b"a\r\r\nb", 100),
            Frame::Line {
                line: b"a\r",
                consumed: 4
            }
        );
        assert_eq!(
            next_line(b"\r\n", 100),
            Frame::Line {
                line: b"",
                consumed: 2
            }
        );
    }

    #[test]
    fn empty_line() {
        assert_eq!(
            next_line(b"\nX", 100),
            Frame::Line {
                line: b"",
                consumed: 1
            }
        );
    }

    #[test]
    fn limit_counts_the_terminator() {
        // 4 bytes of text + LF = 5 bytes: fits in 5, not in 4.
        assert_eq!(
            next_line(b"abcd\n", 5),
            Frame::Line {
                line: b"abcd",
                consumed: 5
            }
        );
        assert_eq!(next_line(b"abcd\n", 4), Frame::TooLong);
        assert_eq!(next_line(b"abc", 4), Frame::NeedMore);
        assert_eq!(next_line(b"abcd", 4), Frame::TooLong);
    }

    #[test]
    fn too_long_auth_line() {
        let mut buf = vec![b'A'; DOVECOT_AUTH_MAX_LINE];
        assert_eq!(next_line(&buf, DOVECOT_AUTH_MAX_LINE), Frame::TooLong);
        buf.truncate(DOVECOT_AUTH_MAX_LINE - 1);
        assert_eq!(next_line(&buf, DOVECOT_AUTH_MAX_LINE), Frame::NeedMore);
        buf.push(b'\n');
        assert!(matches!(
            next_line(&buf, DOVECOT_AUTH_MAX_LINE),
            Frame::Line { consumed, .. } if consumed == DOVECOT_AUTH_MAX_LINE
        ));
    }

    #[test]
    fn lf_beyond_the_limit_does_not_count() {
        let mut buf = vec![b'A'; 20];
        buf.push(b'\n');
        assert_eq!(next_line(&buf, 10), Frame::TooLong);
    }

    #[test]
    fn zero_limit() {
        assert_eq!(next_line(b"", 0), Frame::NeedMore);
        assert_eq!(next_line(b"\n", 0), Frame::TooLong);
    }

    #[test]
    fn successive_lines() {
        let mut buf: &[u8] = b"one\ntwo\r\nthree";
        let mut got = Vec::new();
        while let Frame::Line { line, consumed } = next_line(buf, 64) {
            got.push(line.to_vec());
            buf = &buf[consumed..];
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(buf, b"three");
    }
}
