//! Store conformance for web page sessions and seen logout tokens, on every backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use mailauthd::store::*;

const NOW: i64 = 1_800_000_000;

fn anonymous(csrf: &str, expires_at: i64) -> WebSession {
    WebSession {
        csrf: csrf.into(),
        created_at: NOW,
        expires_at,
        user: None,
        pending: None,
        notice: None,
    }
}

fn provider_session(mailbox: &str, subject: &str, sid: Option<&str>) -> WebSession {
    WebSession {
        user: Some(SessionUser {
            mailbox: mailbox.into(),
            generation: 3,
            via: SignedInWith::Provider {
                id_token: "eyJ.id.token".repeat(200),
                issuer: "https://idp.example".into(),
                subject: subject.into(),
                sid: sid.map(str::to_string),
            },
        }),
        ..anonymous("csrf", NOW + 3600)
    }
}

fn digest(n: u32) -> String {
    format!("{n:064x}")
}

fn pending(state: &str) -> PendingSignInRecord {
    PendingSignInRecord {
        state: state.into(),
        nonce: format!("nonce-{state}"),
        pkce_verifier: format!("verifier-{state}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_behave_the_same_on_every_backend() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let s: &dyn Store = &*db.store;
        let name = backend.name();

        // Round trip, anonymous and signed in, and what expiry hides.
        let a = anonymous("csrf-a", NOW + 900);
        s.create_web_session(&digest(1), &a).await.unwrap();
        assert_eq!(
            s.web_session(&digest(1), NOW).await.unwrap(),
            Some(a.clone()),
            "{name}"
        );
        assert_eq!(
            s.web_session(&digest(1), NOW + 900).await.unwrap(),
            None,
            "{name}: expired"
        );
        assert_eq!(s.web_session(&digest(99), NOW).await.unwrap(), None);
        assert!(matches!(
            s.create_web_session(&digest(1), &a).await,
            Err(StoreError::Conflict(_))
        ));
        let p = provider_session("alice@example.org", "alice", Some("sid-1"));
        s.create_web_session(&digest(2), &p).await.unwrap();
        assert_eq!(
            s.web_session(&digest(2), NOW).await.unwrap(),
            Some(p.clone()),
            "{name}"
        );
        let pw = WebSession {
            user: Some(SessionUser {
                mailbox: "bob@example.org".into(),
                generation: 0,
                via: SignedInWith::Password,
            }),
            ..anonymous("csrf-b", NOW + 3600)
        };
        s.create_web_session(&digest(3), &pw).await.unwrap();
        assert_eq!(
            s.web_session(&digest(3), NOW).await.unwrap(),
            Some(pw),
            "{name}"
        );

        // A pending sign-in is taken once; not set on an expired or missing session.
        assert!(s
            .set_session_pending(&digest(1), &pending("st"), NOW)
            .await
            .unwrap());
        assert!(!s
            .set_session_pending(&digest(1), &pending("st"), NOW + 900)
            .await
            .unwrap());
        assert!(!s
            .set_session_pending(&digest(99), &pending("st"), NOW)
            .await
            .unwrap());
        assert_eq!(
            s.web_session(&digest(1), NOW)
                .await
                .unwrap()
                .unwrap()
                .pending,
            Some(pending("st"))
        );
        assert_eq!(
            s.take_session_pending(&digest(1), NOW).await.unwrap(),
            Some(pending("st"))
        );
        assert_eq!(
            s.take_session_pending(&digest(1), NOW).await.unwrap(),
            None,
            "{name}: once"
        );
        // Two takers at once: exactly one gets it.
        s.set_session_pending(&digest(1), &pending("race"), NOW)
            .await
            .unwrap();
        let store: Arc<dyn Store> = db.dyn_store();
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let st = store.clone();
                tokio::spawn(async move { st.take_session_pending(&digest(1), NOW).await.unwrap() })
            })
            .collect();
        let mut got = 0;
        for t in takers {
            got += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(got, 1, "{name}: one taker wins");

        // A notice, once.
        assert!(s
            .set_session_notice(&digest(1), "revoked", NOW)
            .await
            .unwrap());
        assert_eq!(
            s.take_session_notice(&digest(1)).await.unwrap().as_deref(),
            Some("revoked")
        );
        assert_eq!(s.take_session_notice(&digest(1)).await.unwrap(), None);

        // Delete, idempotent.
        s.delete_web_session(&digest(3)).await.unwrap();
        s.delete_web_session(&digest(3)).await.unwrap();
        assert_eq!(s.web_session(&digest(3), NOW).await.unwrap(), None);

        // Logout by sid ends that provider session only; by subject every one of the account.
        let other_sid = provider_session("alice@example.org", "alice", Some("sid-2"));
        s.create_web_session(&digest(4), &other_sid).await.unwrap();
        let other_person = provider_session("carol@example.org", "carol", Some("sid-1x"));
        s.create_web_session(&digest(5), &other_person)
            .await
            .unwrap();
        let ended = s
            .end_provider_sessions(ProviderSessions::Sid {
                issuer: "https://idp.example",
                sid: "sid-1",
            })
            .await
            .unwrap();
        assert_eq!(ended, 1, "{name}");
        assert!(s.web_session(&digest(2), NOW).await.unwrap().is_none());
        assert!(s.web_session(&digest(4), NOW).await.unwrap().is_some());
        // Another issuer's sid of the same text ends nothing.
        let ended = s
            .end_provider_sessions(ProviderSessions::Sid {
                issuer: "https://other.example",
                sid: "sid-2",
            })
            .await
            .unwrap();
        assert_eq!(ended, 0);
        s.create_web_session(&digest(2), &p).await.unwrap();
        let ended = s
            .end_provider_sessions(ProviderSessions::Subject {
                issuer: "https://idp.example",
                subject: "alice",
            })
            .await
            .unwrap();
        assert_eq!(ended, 2, "{name}: both of alice's sessions");
        assert!(
            s.web_session(&digest(5), NOW).await.unwrap().is_some(),
            "carol's stays"
        );

        // A logout once per jti: the second time nothing is ended.
        s.create_web_session(&digest(2), &p).await.unwrap();
        let which = ProviderSessions::Sid {
            issuer: "https://idp.example",
            sid: "sid-1",
        };
        assert_eq!(
            s.logout_once("jti-1", NOW + 660, which).await.unwrap(),
            Some(1),
            "{name}"
        );
        s.create_web_session(&digest(2), &p).await.unwrap();
        assert_eq!(
            s.logout_once("jti-1", NOW + 660, which).await.unwrap(),
            None,
            "{name}: replay"
        );
        assert!(
            s.web_session(&digest(2), NOW).await.unwrap().is_some(),
            "a replay ends nothing"
        );
        let carol = ProviderSessions::Subject {
            issuer: "https://idp.example",
            subject: "carol",
        };
        assert_eq!(
            s.logout_once("jti-2", NOW + 660, carol).await.unwrap(),
            Some(1)
        );
        assert!(s
            .record_logout_token("https://idp.example", "jti-3", NOW + 660)
            .await
            .unwrap());
        assert!(!s
            .record_logout_token("https://idp.example", "jti-3", NOW + 660)
            .await
            .unwrap());
        assert!(!s
            .record_logout_token("https://idp.example", "jti-1", NOW + 660)
            .await
            .unwrap());
        assert!(s
            .record_logout_token("https://other.example", "jti-1", NOW + 660)
            .await
            .unwrap());

        // Trimming keeps the newest; signed-in sessions are never trimmed as anonymous.
        for n in 100..110 {
            s.create_web_session(&digest(n), &anonymous("c", NOW + i64::from(n)))
                .await
                .unwrap();
        }
        // digest(1) (NOW+900) and 100..109: 11 anonymous rows.
        let went = s
            .trim_web_sessions(SessionScope::Anonymous, 4)
            .await
            .unwrap();
        assert_eq!(went, 7, "{name}");
        for n in 100..106 {
            assert!(
                s.web_session(&digest(n), NOW).await.unwrap().is_none(),
                "{name}: {n} trimmed"
            );
        }
        for n in 107..110 {
            assert!(
                s.web_session(&digest(n), NOW).await.unwrap().is_some(),
                "{name}: {n} kept"
            );
        }
        assert!(s.web_session(&digest(1), NOW).await.unwrap().is_some());
        assert!(
            s.web_session(&digest(2), NOW).await.unwrap().is_some(),
            "signed in: kept"
        );
        assert_eq!(
            s.trim_web_sessions(SessionScope::Anonymous, 4)
                .await
                .unwrap(),
            0
        );
        for n in 200..203 {
            s.create_web_session(
                &digest(n),
                &provider_session("dave@example.org", "dave", None),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            s.trim_web_sessions(SessionScope::Mailbox("dave@example.org"), 1)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            s.trim_web_sessions(SessionScope::Mailbox("alice@example.org"), 1)
                .await
                .unwrap(),
            0
        );

        // The sweep removes expired rows in bounded batches, nothing live.
        for n in 300..310 {
            s.create_web_session(&digest(n), &anonymous("c", NOW - 1))
                .await
                .unwrap();
        }
        s.record_logout_token("https://idp.example", "old", NOW - 1)
            .await
            .unwrap();
        let swept = s.sweep_expired(NOW, 4).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                sessions: 4,
                logout_tokens: 1
            },
            "{name}"
        );
        let swept = s.sweep_expired(NOW, 100).await.unwrap();
        assert_eq!(swept.sessions, 6);
        assert_eq!(s.sweep_expired(NOW, 100).await.unwrap(), Swept::default());
        assert!(s.web_session(&digest(1), NOW).await.unwrap().is_some());
        // A swept jti may come again (its token is too old by then anyway).
        assert!(s
            .record_logout_token("https://idp.example", "old", NOW + 60)
            .await
            .unwrap());

        db.finish().await;
        eprintln!("session store conformance passed on {name}");
    }
}

/// Through the guarded store the daemon uses, a database that is gone is `Unavailable`,
/// never "no session".
#[tokio::test]
async fn a_database_that_is_gone_is_unavailable_not_signed_out() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let guarded = GuardedStore::new((*db.store).clone(), std::time::Duration::from_secs(2));
        guarded
            .create_web_session(&digest(1), &anonymous("c", NOW + 60))
            .await
            .unwrap();
        db.store.close().await;
        let got = guarded.web_session(&digest(1), NOW).await;
        assert!(
            matches!(&got, Err(e) if e.is_unavailable()),
            "{}: {got:?}",
            backend.name()
        );
        let got = guarded
            .logout_once(
                "j",
                NOW,
                ProviderSessions::Sid {
                    issuer: "i",
                    sid: "s",
                },
            )
            .await;
        assert!(matches!(&got, Err(e) if e.is_unavailable()), "{got:?}");
        db.finish().await;
    }
}
