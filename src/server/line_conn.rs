//! The connection driver the socket doors share: one buffer, lines with a length cap,
//! wiped bytes, an idle timer kept apart from a stalled client, and writes with a
//! timeout, behind one typed error.
//!
//! The auth, userdb and control sockets speak LF-terminated lines ([`LineConn::next_line`],
//! [`LineConn::read_line`]); the policy socket frames blank-line-terminated requests with
//! its own codec over the same buffer ([`LineConn::buffered`], [`LineConn::consume`]).
//! Each choice, and why:
//!
//! - **Reads go straight into the one buffer**, which starts at [`Limits::buffer`] bytes
//!   and grows by that step only when full. Thousands of idle connections each keep only
//!   that buffer, not a second one to read into. With the cap checked after every read,
//!   the buffer never holds more than the cap plus one step, whatever the client sends.
//! - **Consumed bytes are zeroed**, and so is every byte the buffer leaves behind when it
//!   grows, shifts or is dropped: auth lines carry passwords. A line handed out is a
//!   [`Line`], wiped when dropped.
//! - **Idle is not stalled.** With nothing buffered, no byte in either direction for
//!   [`Limits::idle`] is an idle connection ([`Filled::Idle`]), a normal way to end. With
//!   part of a request buffered, it is a client that stopped in mid-request
//!   ([`ConnectionError::Stalled`]). The same goes for a hang-up ([`Filled::Closed`] against
//!   [`ConnectionError::Truncated`]).
//! - **Writes are bounded by [`Limits::write_timeout`]**: a client that stops reading its
//!   replies does not hold the connection and its buffers forever.
//! - **No stop signal here.** When a stop applies is the protocol's call (the auth socket
//!   stops as soon as nothing is being decided, the policy socket only between requests),
//!   so callers select on it around [`LineConn::fill`], which is cancel-safe: a read
//!   interrupted by another branch loses no byte and keeps the idle timer.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use zeroize::{Zeroize, Zeroizing};

use crate::proto::line::{next_line, Frame};

/// One line without its terminator, zeroed when dropped.
pub type Line = Zeroizing<Vec<u8>>;

/// The bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest line, terminator included ([`next_line`]'s `max_len`).
    pub max_line: usize,
    /// Bytes reserved at the start, and the step the buffer grows by when full.
    pub buffer: usize,
    /// No byte in either direction for this long ends the connection.
    pub idle: Duration,
    /// Longest a reply may take to leave.
    pub write_timeout: Duration,
}

/// Why a connection cannot go on. Clean ends (the client hung up or went quiet between
/// requests) are not errors: see [`Filled`] and [`Next`].
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("client closed the connection in the middle of a request")]
    Truncated,
    #[error("client sent no more of its request for {0:?}")]
    Stalled(Duration),
    #[error("client did not read its replies for {0:?}")]
    WriteTimeout(Duration),
}

/// What [`LineConn::fill`] brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// More bytes are buffered.
    Data,
    /// The client hung up between requests.
    Closed,
    /// Nothing buffered and nothing moved for [`Limits::idle`].
    Idle,
}

/// What [`LineConn::read_line`] brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Line(Line),
    /// The client hung up between lines.
    Closed,
    /// Nothing buffered and nothing moved for [`Limits::idle`].
    Idle,
}

impl Limits {
    /// The usual bounds: a client gets as long to read a reply as to send a request.
    pub fn new(max_line: usize, buffer: usize, timeout: Duration) -> Self {
        Limits {
            max_line,
            buffer,
            idle: timeout,
            write_timeout: timeout,
        }
    }
}

/// One connection: the stream, its buffer and its timers.
pub struct LineConn<S> {
    stream: S,
    buf: Zeroizing<Vec<u8>>,
    limits: Limits,
    /// The last byte read or written; the idle timer runs from here.
    last_activity: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineConn<S> {
    pub fn new(stream: S, limits: Limits) -> Self {
        let limits = Limits {
            buffer: limits.buffer.max(1),
            ..limits
        };
        LineConn {
            stream,
            buf: Zeroizing::new(Vec::with_capacity(limits.buffer)),
            limits,
            last_activity: Instant::now(),
        }
    }

    /// Whether part of a request is buffered: a client that goes quiet now has stalled.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The bytes read and not consumed yet, for a codec that frames them itself.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Removes the first `n` buffered bytes and zeroes every place they and the shifted
    /// rest occupied.
    pub fn consume(&mut self, n: usize) {
        let keep = shift_out(&mut self.buf, n);
        self.buf.truncate(keep);
    }

    /// The next complete line already buffered, consumed; `None` until one is complete.
    pub fn next_line(&mut self) -> Result<Option<Line>, ConnectionError> {
        let (line, consumed) = match next_line(&self.buf, self.limits.max_line) {
            Frame::Line { line, consumed } => (Zeroizing::new(line.to_vec()), consumed),
            Frame::NeedMore => return Ok(None),
            Frame::TooLong => return Err(ConnectionError::LineTooLong(self.limits.max_line)),
        };
        self.consume(consumed);
        Ok(Some(line))
    }

    /// Whatever is buffered, as one line: for a client whose last request may end at its
    /// hang-up rather than at an LF.
    pub fn take_partial(&mut self) -> Line {
        let rest = Zeroizing::new(self.buf.to_vec());
        self.consume(self.buf.len());
        rest
    }

    /// Reads once into the buffer. With `idle_applies`, gives up when nothing has moved
    /// for the idle timeout; a caller with requests still being decided passes `false`.
    ///
    /// Cancel-safe: when another branch of a `select!` wins, no byte is lost.
    pub async fn fill(&mut self, idle_applies: bool) -> Result<Filled, ConnectionError> {
        if self.buf.len() == self.buf.capacity() {
            self.grow();
        }
        let read = self.stream.read_buf(&mut *self.buf);
        // An idle timeout too far out to count to is no timeout.
        let deadline = idle_applies
            .then(|| self.last_activity.checked_add(self.limits.idle))
            .flatten();
        let read = if let Some(deadline) = deadline {
            match tokio::time::timeout_at(deadline, read).await {
                Ok(read) => read,
                Err(_) if self.buf.is_empty() => return Ok(Filled::Idle),
                Err(_) => return Err(ConnectionError::Stalled(self.limits.idle)),
            }
        } else {
            read.await
        };
        match read? {
            0 if self.buf.is_empty() => Ok(Filled::Closed),
            0 => Err(ConnectionError::Truncated),
            _ => {
                self.last_activity = Instant::now();
                Ok(Filled::Data)
            }
        }
    }

    /// The next line, reading as needed.
    pub async fn read_line(&mut self) -> Result<Next, ConnectionError> {
        loop {
            if let Some(line) = self.next_line()? {
                return Ok(Next::Line(line));
            }
            match self.fill(true).await? {
                Filled::Data => {}
                Filled::Closed => return Ok(Next::Closed),
                Filled::Idle => return Ok(Next::Idle),
            }
        }
    }

    /// Writes all of `bytes` within the write timeout.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        let limit = self.limits.write_timeout;
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => {
                self.last_activity = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnectionError::WriteTimeout(limit)),
        }
    }

    /// One step more room, in a fresh allocation: `Vec`'s own growth would leave a copy
    /// of the old bytes in freed memory.
    fn grow(&mut self) {
        let mut bigger = Vec::with_capacity(self.buf.len() + self.limits.buffer);
        bigger.extend_from_slice(&self.buf);
        // The old buffer is zeroed as it drops.
        self.buf = Zeroizing::new(bigger);
    }
}

/// Moves what follows the first `n` bytes to the front and zeroes the rest of `buf`, so
/// neither the consumed bytes nor stale copies of the moved ones stay behind. Returns the
/// length still in use.
fn shift_out(buf: &mut [u8], n: usize) -> usize {
    let n = n.min(buf.len());
    buf.copy_within(n.., 0);
    let keep = buf.len() - n;
    if let Some(stale) = buf.get_mut(keep..) {
        stale.zeroize();
    }
    keep
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    const LIMITS: Limits = Limits {
        max_line: 16,
        buffer: 4,
        idle: Duration::from_millis(50),
        write_timeout: Duration::from_millis(50),
    };

    fn pair(pipe: usize) -> (DuplexStream, LineConn<DuplexStream>) {
        let (client, server) = tokio::io::duplex(pipe);
        (client, LineConn::new(server, LIMITS))
    }

    #[tokio::test]
    async fn lines_split_anywhere_come_out_whole() {
        let input = b"one\ntwo\r\n\nthree\n";
        for cut in 0..=input.len() {
            let (mut client, mut conn) = pair(1024);
            client.write_all(&input[..cut]).await.unwrap();
            tokio::task::yield_now().await;
            let rest = input[cut..].to_vec();
            let writer = tokio::spawn(async move {
                client.write_all(&rest).await.unwrap();
                client
            });
            let mut got = Vec::new();
            while got.len() < 4 {
                match conn.read_line().await.unwrap() {
                    Next::Line(line) => got.push(String::from_utf8(line.to_vec()).unwrap()),
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
            assert_eq!(got, ["one", "two", "", "three"], "cut at {cut}");
            drop(writer.await.unwrap());
            assert_eq!(conn.read_line().await.unwrap(), Next::Closed);
        }
    }

    #[tokio::test]
    async fn a_line_over_the_cap_is_refused_and_the_buffer_stays_bounded() {
        let (mut client, mut conn) = pair(1024);
        client.write_all(&[b'x'; 100]).await.unwrap();
        match conn.read_line().await {
            Err(ConnectionError::LineTooLong(16)) => {}
            other => panic!("{other:?}"),
        }
        // The cap plus one growth step, and what one read may add past the cap.
        assert!(conn.buf.capacity() <= LIMITS.max_line + 2 * LIMITS.buffer);
        // A line of exactly the cap, terminator included, fits.
        let (mut client, mut conn) = pair(1024);
        client.write_all(b"fifteen bytes..\n").await.unwrap();
        assert!(matches!(conn.read_line().await.unwrap(), Next::Line(l) if l.len() == 15));
    }

    #[test]
    fn consumed_bytes_and_stale_copies_are_zeroed() {
        let mut buf = *b"secret\nab";
        assert_eq!(shift_out(&mut buf, 7), 2);
        assert_eq!(&buf, b"ab\0\0\0\0\0\0\0");
        let mut buf = *b"pw\nlonger rest";
        assert_eq!(shift_out(&mut buf, 3), 11);
        assert_eq!(&buf, b"longer rest\0\0\0");
        let mut buf = *b"all";
        assert_eq!(shift_out(&mut buf, 9), 0);
        assert_eq!(&buf, b"\0\0\0");
    }

    #[tokio::test]
    async fn lines_are_consumed_and_the_rest_can_be_taken() {
        let (mut client, mut conn) = pair(1024);
        client.write_all(b"secret\nab").await.unwrap();
        while conn.buffered().len() < 9 {
            conn.fill(true).await.unwrap();
        }
        assert_eq!(&conn.next_line().unwrap().unwrap()[..], b"secret");
        assert_eq!(conn.buffered(), b"ab");
        assert!(conn.has_partial());
        assert_eq!(conn.next_line().unwrap(), None);
        assert_eq!(&conn.take_partial()[..], b"ab");
        assert!(!conn.has_partial());
    }

    #[tokio::test]
    async fn quiet_between_requests_is_idle_and_in_the_middle_is_stalled() {
        let (client, mut conn) = pair(1024);
        assert_eq!(conn.fill(true).await.unwrap(), Filled::Idle);
        drop(client);

        let (mut client, mut conn) = pair(1024);
        client.write_all(b"half").await.unwrap();
        assert_eq!(conn.fill(true).await.unwrap(), Filled::Data);
        match conn.fill(true).await {
            Err(ConnectionError::Stalled(d)) => assert_eq!(d, LIMITS.idle),
            other => panic!("{other:?}"),
        }
        drop(client);

        // Without the idle timer, only the client ends the wait.
        let (mut client, mut conn) = pair(1024);
        let waiting = tokio::spawn(async move {
            let filled = conn.fill(false).await.unwrap();
            (filled, conn)
        });
        tokio::time::sleep(LIMITS.idle * 3).await;
        client.write_all(b"x").await.unwrap();
        let (filled, _conn) = waiting.await.unwrap();
        assert_eq!(filled, Filled::Data);
    }

    #[tokio::test]
    async fn a_hang_up_between_requests_is_clean_and_in_the_middle_is_truncated() {
        let (client, mut conn) = pair(1024);
        drop(client);
        assert_eq!(conn.fill(true).await.unwrap(), Filled::Closed);

        let (mut client, mut conn) = pair(1024);
        client.write_all(b"half").await.unwrap();
        drop(client);
        assert_eq!(conn.fill(true).await.unwrap(), Filled::Data);
        assert!(matches!(
            conn.read_line().await,
            Err(ConnectionError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_read_interrupted_by_another_branch_loses_nothing() {
        let (mut client, mut conn) = pair(1024);
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = conn.fill(false) => panic!("nothing was sent"),
        }
        client.write_all(b"after\n").await.unwrap();
        assert!(matches!(conn.read_line().await.unwrap(), Next::Line(l) if &l[..] == b"after"));
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_times_the_write_out() {
        let (_client, mut conn) = pair(8);
        match conn.write_all(&[b'x'; 64]).await {
            Err(ConnectionError::WriteTimeout(d)) => assert_eq!(d, LIMITS.write_timeout),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn writes_keep_the_connection_from_idling_out() {
        let idle = Duration::from_millis(400);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = LineConn::new(server, Limits { idle, ..LIMITS });
        tokio::time::sleep(idle * 5 / 8).await;
        conn.write_all(b"reply\n").await.unwrap();
        let mut reply = [0u8; 6];
        client.read_exact(&mut reply).await.unwrap();
        // Past the idle timeout counted from the start, well within it from the write.
        tokio::time::sleep(idle * 5 / 8).await;
        let waiting = tokio::spawn(async move { conn.fill(true).await.unwrap() });
        tokio::time::sleep(idle / 8).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(waiting.await.unwrap(), Filled::Data);
    }
}
