//! The policy connection driver over in-memory streams: what Postfix sees on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailauthd::clock::ManualClock;
use mailauthd::names::{Address, Protocols};
use mailauthd::policy::{DecisionError, PolicyService, PolicySettings};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::server::connections::Activity;
use mailauthd::server::line_conn::ConnectionError as LineError;
use mailauthd::server::policy_conn::{serve_connection, ConnectionError};
use mailauthd::store::{AuthSource, MailboxState};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Only a guard against a hung test, never a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

/// A RCPT request as Postfix 3.7 sends it from the submission service.
fn postfix_request(user: &str, sender: &str) -> String {
    format!(
        "request=smtpd_access_policy\n\
protocol_state=RCPT\n\
protocol_name=ESMTP\n\
helo_name=[192.168.1.23]\n\
queue_id=\n\
sender={sender}\n\
recipient=friend@example.net\n\
recipient_count=0\n\
client_address=2001:db8::25\n\
client_name=unknown\n\
reverse_client_name=unknown\n\
instance=3c4f.6650f1c3.8d2e4.0\n\
sasl_method=PLAIN\n\
sasl_username={user}\n\
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
\n"
    )
}

const DUNNO: &str = "action=DUNNO\n\n";
const NOT_OWNED: &str = "action=REJECT 5.7.1 <bob@example.org>: not owned by alice@example.org\n\n";

struct Fixture {
    db: common::TestDb,
    service: Arc<PolicyService>,
    /// Every test runs under a subscriber that wants every event. Tests run on parallel
    /// threads of one process, and tracing caches per call site whether anyone listens:
    /// a thread without a subscriber could otherwise have the audit line switched off
    /// for the test that captures it.
    _listening: tracing::subscriber::DefaultGuard,
}

async fn fixture(settings: PolicySettings) -> Fixture {
    let listening = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::TRACE)
            .finish(),
    );
    let db = common::fresh(&common::Backend::Sqlite).await;
    let s = &*db.store;
    common::create_example_org(s).await;
    for address in ["alice@example.org", "bob@example.org"] {
        let new = NewMailbox {
            address: Address::parse(address).unwrap(),
            password_hash: None,
            auth_source: AuthSource::Local,
            display_name: String::new(),
            quota: None,
            protocols: Some(Protocols::ALL),
            state: Some(MailboxState::Active),
            template: None,
            oidc_identity: None,
            require_active_domain: false,
        };
        provision::create_mailbox(s, &ManualClock::at(1), new)
            .await
            .unwrap();
    }
    let service = Arc::new(PolicyService::new(
        db.dyn_store(),
        Arc::new(ManualClock::at(1_800_000_000)),
        settings,
    ));
    Fixture {
        db,
        service,
        _listening: listening,
    }
}

type Served = JoinHandle<Result<(), ConnectionError>>;

fn connect(f: &Fixture, pipe: usize, shutdown: &CancellationToken) -> (DuplexStream, Served) {
    let (client, server) = tokio::io::duplex(pipe);
    let served = tokio::spawn(serve_connection(
        server,
        f.service.clone(),
        Activity::detached(shutdown.clone()),
    ));
    (client, served)
}

async fn read_reply(client: &mut DuplexStream) -> String {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n\n") {
        let n = tokio::time::timeout(PATIENCE, client.read(&mut byte))
            .await
            .expect("no reply")
            .unwrap();
        assert_ne!(
            n,
            0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&reply)
        );
        reply.push(byte[0]);
    }
    String::from_utf8(reply).unwrap()
}

/// Everything the server still sends before it closes.
async fn read_rest(client: &mut DuplexStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest))
        .await
        .expect("connection not closed")
        .unwrap();
    rest
}

async fn finished(served: Served) -> Result<(), ConnectionError> {
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("connection driver still running")
        .unwrap()
}

#[tokio::test]
async fn answers_golden_requests_on_a_persistent_connection() {
    let f = fixture(PolicySettings::default()).await;
    let token = CancellationToken::new();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    for (sender, reply) in [
        ("bob@example.org", NOT_OWNED),
        ("alice@example.org", DUNNO),
        ("alice+lists@example.org", DUNNO),
        ("", DUNNO),
        ("bob@example.org", NOT_OWNED),
    ] {
        client
            .write_all(postfix_request("alice@example.org", sender).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_reply(&mut client).await, reply, "sender {sender:?}");
    }
    drop(client);
    finished(served).await.unwrap();
    f.db.finish().await;
}

#[tokio::test]
async fn answers_pipelined_requests_in_order() {
    let f = fixture(PolicySettings::default()).await;
    let token = CancellationToken::new();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    let batch = [
        postfix_request("alice@example.org", "alice@example.org"),
        postfix_request("alice@example.org", "bob@example.org"),
        "request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=192.0.2.1\n\n".into(),
        postfix_request("bob@example.org", "bob@example.org"),
        postfix_request("alice@example.org", "bob@example.org").replace('\n', "\r\n"),
    ]
    .concat();
    client.write_all(batch.as_bytes()).await.unwrap();
    client.shutdown().await.unwrap();
    let replies = read_rest(&mut client).await;
    assert_eq!(
        String::from_utf8(replies).unwrap(),
        [DUNNO, NOT_OWNED, DUNNO, DUNNO, NOT_OWNED].concat()
    );
    finished(served).await.unwrap();
    f.db.finish().await;
}

/// A one-byte pipe hands the driver one byte per read: every request is split at every
/// byte, and replies are written while the next request is still arriving.
#[tokio::test]
async fn requests_arriving_one_byte_at_a_time() {
    let f = fixture(PolicySettings::default()).await;
    let token = CancellationToken::new();
    let (client, served) = connect(&f, 1, &token);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let requests = [
        postfix_request("alice@example.org", "bob@example.org"),
        postfix_request("alice@example.org", "alice@example.org"),
    ]
    .concat();
    let writer = tokio::spawn(async move {
        to_server.write_all(requests.as_bytes()).await.unwrap();
        to_server.shutdown().await.unwrap();
    });
    let mut replies = Vec::new();
    tokio::time::timeout(PATIENCE, from_server.read_to_end(&mut replies))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(
        String::from_utf8(replies).unwrap(),
        [NOT_OWNED, DUNNO].concat()
    );
    finished(served).await.unwrap();
    f.db.finish().await;
}

/// The same request cut in two at every position, each half in its own write.
#[tokio::test]
async fn requests_split_at_every_position() {
    let f = fixture(PolicySettings::default()).await;
    let token = CancellationToken::new();
    let request = postfix_request("alice@example.org", "bob@example.org");
    let bytes = request.as_bytes();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    for cut in 0..=bytes.len() {
        client.write_all(&bytes[..cut]).await.unwrap();
        // On this single-threaded runtime, yielding lets the driver read the first part
        // on its own before the second arrives.
        tokio::task::yield_now().await;
        client.write_all(&bytes[cut..]).await.unwrap();
        assert_eq!(read_reply(&mut client).await, NOT_OWNED, "cut at {cut}");
    }
    drop(client);
    finished(served).await.unwrap();
    f.db.finish().await;
}

/// Log lines written while `body` runs on this thread (the tests' runtime is
/// single-threaded, so the driver's tasks run here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

#[tokio::test]
async fn bad_input_closes_the_connection_without_a_reply_and_with_a_log_line() {
    let f = fixture(PolicySettings::default()).await;
    let logs = Captured::default();
    let _guard = logs.install();
    let mut huge = b"request=smtpd_access_policy\n".to_vec();
    while huge.len() < 1 << 20 {
        huge.extend_from_slice(format!("filler={}\n", "a".repeat(1000)).as_bytes());
    }
    huge.push(b'\n');
    let many: String = (0..10_000).map(|i| format!("attr{i}=v\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "binary junk",
            b"\x7fELF\x02\x01\x01\x00\x00\x00\n\n".to_vec(),
            "NUL byte",
        ),
        (
            "invalid UTF-8",
            b"request=smtpd_access_policy\nsender=j\xf6rg@example.org\n\n".to_vec(),
            "not valid UTF-8",
        ),
        (
            "line without =",
            b"request=smtpd_access_policy\nsender alice@example.org\n\n".to_vec(),
            "no '='",
        ),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "no '='",
        ),
        (
            "no request=",
            b"protocol_state=RCPT\nsender=alice@example.org\n\n".to_vec(),
            "no request= attribute",
        ),
        ("1 MiB request", huge, "exceeds 65536 bytes"),
        (
            "ten thousand attributes",
            format!("request=smtpd_access_policy\n{many}\n").into_bytes(),
            "more than 256 attributes",
        ),
        (
            "one endless line",
            vec![b'x'; 1 << 20],
            "longer than 4096 bytes",
        ),
    ];
    for (name, bytes, logged) in cases {
        let token = CancellationToken::new();
        let (client, served) = connect(&f, 64 * 1024, &token);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        // The driver may hang up before all of it is written; that is the point.
        let writer = tokio::spawn(async move {
            let _ = to_server.write_all(&bytes).await;
            to_server
        });
        let mut reply = Vec::new();
        tokio::time::timeout(PATIENCE, from_server.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&reply), "", "{name}: no reply");
        match finished(served).await {
            Err(ConnectionError::Invalid(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
        drop(writer.await.unwrap());
        let log = logs.take();
        assert!(log.contains("invalid policy request"), "{name}: {log}");
        assert!(log.contains(logged), "{name}: {log}");
    }

    // A request type other than smtpd_access_policy ends the connection too.
    let token = CancellationToken::new();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client
        .write_all(b"request=junk_policy\nsender=alice@example.org\n\n")
        .await
        .unwrap();
    assert!(read_rest(&mut client).await.is_empty());
    assert!(matches!(
        finished(served).await,
        Err(ConnectionError::Decision(DecisionError::Request(_)))
    ));
    assert!(logs.take().contains("junk_policy"));

    // Meanwhile the service answers everyone else as before.
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client
        .write_all(postfix_request("alice@example.org", "bob@example.org").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut client).await, NOT_OWNED);
    drop(client);
    finished(served).await.unwrap();
    let audit = logs.take();
    for field in [
        "service=\"policy\"",
        "user=\"alice@example.org\"",
        "sender=\"bob@example.org\"",
        "rip=\"2001:db8::25\"",
        "action=\"reject\"",
        "reason=\"not_owned\"",
    ] {
        assert!(audit.contains(field), "{field} missing from {audit}");
    }
    f.db.finish().await;
}

#[tokio::test]
async fn a_request_cut_short_closes_without_a_reply() {
    let f = fixture(PolicySettings {
        idle_timeout: Duration::from_millis(50),
        ..PolicySettings::default()
    })
    .await;
    let token = CancellationToken::new();
    let request = postfix_request("alice@example.org", "alice@example.org");
    let half = &request.as_bytes()[..request.len() / 2];

    // The client hangs up in mid-request.
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client.write_all(half).await.unwrap();
    client.shutdown().await.unwrap();
    assert!(read_rest(&mut client).await.is_empty());
    assert!(matches!(
        finished(served).await,
        Err(ConnectionError::Connection(LineError::Truncated))
    ));

    // The client never sends the empty line.
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client
        .write_all(request.trim_end_matches('\n').as_bytes())
        .await
        .unwrap();
    assert!(read_rest(&mut client).await.is_empty());
    assert!(matches!(
        finished(served).await,
        Err(ConnectionError::Connection(LineError::Stalled(_)))
    ));
    f.db.finish().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let f = fixture(PolicySettings {
        idle_timeout: Duration::from_millis(50),
        ..PolicySettings::default()
    })
    .await;
    let token = CancellationToken::new();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client
        .write_all(postfix_request("alice@example.org", "alice@example.org").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut client).await, DUNNO);
    // Then nothing more: the driver closes the connection on its own.
    assert!(read_rest(&mut client).await.is_empty());
    finished(served).await.unwrap();

    // Also when nothing ever arrived.
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    assert!(read_rest(&mut client).await.is_empty());
    finished(served).await.unwrap();
    f.db.finish().await;
}

#[tokio::test]
async fn store_trouble_closes_without_a_reply() {
    let f = fixture(PolicySettings::default()).await;
    let token = CancellationToken::new();
    f.db.store.close().await;

    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client
        .write_all(postfix_request("alice@example.org", "alice@example.org").as_bytes())
        .await
        .unwrap();
    assert!(
        read_rest(&mut client).await.is_empty(),
        "no invented answer"
    );
    match finished(served).await {
        Err(ConnectionError::Decision(DecisionError::Store(e))) => assert!(e.is_unavailable()),
        other => panic!("{other:?}"),
    }

    // Answers given before the trouble stand; nothing comes after it.
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    let batch = [
        "request=smtpd_access_policy\nprotocol_state=CONNECT\n\n".to_string(),
        postfix_request("alice@example.org", "alice@example.org"),
        "request=smtpd_access_policy\nprotocol_state=CONNECT\n\n".to_string(),
    ]
    .concat();
    client.write_all(batch.as_bytes()).await.unwrap();
    assert_eq!(
        String::from_utf8(read_rest(&mut client).await).unwrap(),
        DUNNO
    );
    assert!(matches!(
        finished(served).await,
        Err(ConnectionError::Decision(_))
    ));
    f.db.finish().await;
}

#[tokio::test]
async fn shutdown_stops_between_requests() {
    let f = fixture(PolicySettings::default()).await;
    let request = postfix_request("alice@example.org", "bob@example.org");

    // Idle connections end at once.
    let token = CancellationToken::new();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    client.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_reply(&mut client).await, NOT_OWNED);
    token.cancel();
    assert!(read_rest(&mut client).await.is_empty());
    finished(served).await.unwrap();

    // A request already under way is answered first.
    let token = CancellationToken::new();
    let (mut client, served) = connect(&f, 64 * 1024, &token);
    let (first, second) = request.as_bytes().split_at(100);
    client.write_all(first).await.unwrap();
    tokio::task::yield_now().await;
    token.cancel();
    tokio::task::yield_now().await;
    client.write_all(second).await.unwrap();
    assert_eq!(read_reply(&mut client).await, NOT_OWNED);
    assert!(read_rest(&mut client).await.is_empty());
    finished(served).await.unwrap();
    f.db.finish().await;
}
