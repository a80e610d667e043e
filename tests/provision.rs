//! Sign-in provisioning against every store backend: first sign-ins, the update-on-sign-in
//! rules, the postmaster's settings that sign-ins keep, refusals that create nothing, and
//! concurrent first sign-ins (50 into room for 10; several people racing for one address),
//! and app passwords issued at once (names stay unique, the cap holds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use mailauthd::auth::app_password::AppPasswordKey;
use mailauthd::clock::{Clock, ManualClock};
use mailauthd::names::{Address, Protocol, Protocols};
use mailauthd::provision::{
    self, AppPasswordRefusal, AppPasswordRequest, DuplicateName, IssueError, IssuedAppPassword,
    MailboxChanges, SignInClaims, SignInRefusal, SignInRules, SignedIn, MAX_APP_PASSWORDS,
};
use mailauthd::store::*;

const ISSUER: &str = "https://idp.example.org";
const ON: SignInRules = SignInRules::DEFAULT;

fn domain(name: &str, max_mailboxes: Option<u64>) -> Domain {
    Domain {
        name: name.into(),
        active: true,
        max_mailboxes,
        max_quota: Some(10 << 30),
        total_quota: None,
        created_at: 1,
    }
}

fn template(name: &str, quota: u64, protocols: &str) -> Template {
    Template {
        name: name.into(),
        quota,
        protocols: Protocols::parse_list(protocols).unwrap(),
        state: MailboxState::Active,
        created_at: 1,
        updated_at: 1,
    }
}

fn claims(subject: &str, address: &str, groups: &[&str]) -> SignInClaims {
    SignInClaims {
        issuer: ISSUER.into(),
        subject: subject.into(),
        address: address.into(),
        email_verified: Some(true),
        display_name: Some(format!("Person {subject}")),
        template_values: groups.iter().map(|g| g.to_string()).collect(),
    }
}

async fn setup(s: &dyn Store) {
    s.create_domain(&domain("example.org", Some(100)))
        .await
        .unwrap();
    s.create_template(&template("staff", 2 << 30, "imap,smtp"))
        .await
        .unwrap();
    s.create_template(&template("students", 1 << 30, "imap"))
        .await
        .unwrap();
    s.put_mapping(&Mapping {
        claim_value: "staff".into(),
        position: 1,
        template: "staff".into(),
    })
    .await
    .unwrap();
    s.put_mapping(&Mapping {
        claim_value: "students".into(),
        position: 2,
        template: "students".into(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_rules_hold_on_every_backend() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let s = &*db.store;
        setup(s).await;
        first_sign_in_creates_from_template(s).await;
        later_sign_ins_update_only_when_something_changed(s).await;
        refusals_create_nothing(s).await;
        limits_defer_updates_and_keep_old_values(s).await;
        provisioning_off_only_admits_existing(s).await;
        postmaster_settings_survive_sign_in(s).await;
        email_verified_must_be_true(s).await;
        addresses_are_not_folded_together(s).await;
        db.finish().await;
        eprintln!("sign-in provisioning passed on {}", backend.name());
    }
}

async fn first_sign_in_creates_from_template(s: &dyn Store) {
    let clock = ManualClock::at(1000);
    let c = claims("sub-alice", "Alice@EXAMPLE.org", &["students", "staff"]);
    let out = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    let SignedIn::Created(m) = out else {
        panic!("expected Created, got {out:?}")
    };
    assert_eq!(m.address, "alice@example.org");
    assert_eq!(m.auth_source, AuthSource::Oidc);
    assert_eq!(m.template.as_deref(), Some("staff"), "mapping order wins");
    assert_eq!(m.quota, 2 << 30);
    assert!(m.protocols.contains(Protocol::Smtp) && !m.protocols.contains(Protocol::Pop3));
    assert_eq!(m.oidc_subject.as_deref(), Some("sub-alice"));
    assert_eq!(m.oidc_issuer.as_deref(), Some(ISSUER));
    assert!(!m.has_password());
    assert_eq!(s.get_mailbox("alice@example.org").await.unwrap(), Some(m));
}

async fn later_sign_ins_update_only_when_something_changed(s: &dyn Store) {
    let clock = ManualClock::at(2000);
    let mut c = claims("sub-alice", "alice@example.org", &["staff"]);
    // Things a sign-in must never touch.
    s.set_password_hash("alice@example.org", Some("{PLAIN}kept"), 1500)
        .await
        .unwrap();
    let app_id = s
        .create_app_password(&NewAppPassword {
            mailbox: "alice@example.org".into(),
            name: "phone".into(),
            lookup_hash: "lookup-alice-1".into(),
            protocols: Protocols::ALL,
            networks: vec![],
            expires_at: None,
            created_at: 1500,
        })
        .await
        .unwrap();
    s.add_alias(&Alias {
        address: "sales@example.org".into(),
        target: "alice@example.org".into(),
        domain: "example.org".into(),
        created_at: 1500,
    })
    .await
    .unwrap();

    let out = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(out, SignedIn::Unchanged(_)), "{out:?}");

    // The mapped template changes.
    c.template_values = vec!["students".into()];
    let out = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    let SignedIn::Updated(m) = out else {
        panic!("expected Updated, got {out:?}")
    };
    assert_eq!(
        (m.template.as_deref(), m.quota),
        (Some("students"), 1 << 30)
    );
    assert_eq!(m.updated_at, 2000);

    // The template's content changes.
    let mut t = s.get_template("students").await.unwrap().unwrap();
    t.quota = 3 << 30;
    s.update_template(&t).await.unwrap();
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(m, SignedIn::Updated(_)), "{m:?}");
    assert_eq!(m.mailbox().quota, 3 << 30);

    // The display name changes; a postmaster's manual quota is re-set by the template then.
    s.update_mailbox(
        &Mailbox {
            quota: 5 << 30,
            ..m.mailbox().clone()
        },
        &|_, _| Ok(()),
    )
    .await
    .unwrap();
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(
        matches!(m, SignedIn::Unchanged(_)),
        "manual change kept: {m:?}"
    );
    assert_eq!(m.mailbox().quota, 5 << 30);
    c.display_name = Some("Alice Smith".into());
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(m, SignedIn::Updated(_)), "{m:?}");
    assert_eq!(m.mailbox().display_name, "Alice Smith");
    assert_eq!(m.mailbox().quota, 3 << 30);

    // A quota the postmaster set with `mailbox set` is theirs: the template re-applied at
    // the next display-name change leaves it.
    let alice = Address::parse("alice@example.org").unwrap();
    let set_quota = MailboxChanges {
        quota: Some(4 << 30),
        ..Default::default()
    };
    provision::update_mailbox(s, &clock, &alice, set_quota)
        .await
        .unwrap();
    c.display_name = Some("Alice Smith-Jones".into());
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(m, SignedIn::Updated(_)), "{m:?}");
    assert_eq!(m.mailbox().display_name, "Alice Smith-Jones");
    assert_eq!(m.mailbox().quota, 4 << 30, "the postmaster's quota stays");
    assert!(m.mailbox().overrides.quota);
    let reset = MailboxChanges {
        reset: true,
        ..Default::default()
    };
    let m = provision::update_mailbox(s, &clock, &alice, reset)
        .await
        .unwrap();
    assert_eq!((m.quota, m.overrides), (3 << 30, Overrides::NONE));

    let stored = s.get_mailbox("alice@example.org").await.unwrap().unwrap();
    assert_eq!(stored.password_hash.as_deref(), Some("{PLAIN}kept"));
    assert_eq!(stored.auth_source, AuthSource::Oidc);
    let apps = s.list_app_passwords("alice@example.org").await.unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].id, app_id);
    assert_eq!(s.list_aliases(Some("example.org")).await.unwrap().len(), 1);

    // Another account with the same address is not let in.
    let other = claims("sub-mallory", "alice@example.org", &["staff"]);
    let r = provision::sign_in(s, &clock, ON, &other).await.unwrap_err();
    assert!(matches!(r, SignInRefusal::OtherAccount { .. }), "{r:?}");
    // Nor may alice's identity claim a second mailbox.
    let moved = claims("sub-alice", "alice2@example.org", &["staff"]);
    let r = provision::sign_in(s, &clock, ON, &moved).await.unwrap_err();
    assert!(matches!(r, SignInRefusal::LinkedElsewhere { .. }), "{r:?}");
    assert!(s.get_mailbox("alice2@example.org").await.unwrap().is_none());

    // The postmaster unlinks the mailbox: the next sign-in with its address binds it, and
    // everything else about the mailbox stays.
    let address = Address::parse("alice@example.org").unwrap();
    let unlink = MailboxChanges {
        unlink_identity: true,
        ..Default::default()
    };
    let unbound = provision::update_mailbox(s, &clock, &address, unlink)
        .await
        .unwrap();
    assert_eq!((unbound.oidc_issuer, unbound.oidc_subject), (None, None));
    assert!(s
        .find_mailbox_by_oidc(ISSUER, "sub-alice")
        .await
        .unwrap()
        .is_none());
    let m = provision::sign_in(s, &clock, ON, &other).await.unwrap();
    assert_eq!(m.mailbox().address, "alice@example.org");
    assert_eq!(m.mailbox().oidc_subject.as_deref(), Some("sub-mallory"));
    assert_eq!(
        s.list_app_passwords("alice@example.org")
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn refusals_create_nothing(s: &dyn Store) {
    let clock = ManualClock::at(3000);
    let before = s.list_mailboxes(None).await.unwrap().len();

    let mut c = claims("sub-bob", "bob@example.org", &["staff"]);
    c.email_verified = Some(false);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "email_not_verified");

    let c = claims("sub-bob", "bob@example.net", &["staff"]);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.person_message(), "example.net is not served here.");

    let c = claims("sub-bob", "bob@example.org", &["guests"]);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "no_template");

    let c = claims("sub-bob", "not an address", &["staff"]);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "bad_address");

    // A local mailbox is not taken over, and stays local.
    s.create_mailbox(
        &Mailbox {
            address: "carol@example.org".into(),
            domain: "example.org".into(),
            password_hash: Some("{PLAIN}pw".into()),
            auth_source: AuthSource::Local,
            oidc_issuer: None,
            oidc_subject: None,
            display_name: String::new(),
            quota: 1 << 30,
            protocols: Protocols::ALL,
            state: MailboxState::Active,
            template: None,
            template_hash: None,
            overrides: Overrides::NONE,
            created_at: 1,
            updated_at: 1,
            last_login: None,
        },
        &|_, _| Ok(()),
    )
    .await
    .unwrap();
    let c = claims("sub-carol", "carol@example.org", &["staff"]);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "local_mailbox");
    let carol = s.get_mailbox("carol@example.org").await.unwrap().unwrap();
    assert_eq!(carol.auth_source, AuthSource::Local);
    assert_eq!(carol.oidc_subject, None);

    // A disabled domain takes no new mailboxes.
    s.create_domain(&Domain {
        active: false,
        ..domain("off.example", None)
    })
    .await
    .unwrap();
    let c = claims("sub-dave", "dave@off.example", &["staff"]);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "domain_disabled");

    assert_eq!(s.list_mailboxes(None).await.unwrap().len(), before + 1);
    assert!(s.get_mailbox("bob@example.org").await.unwrap().is_none());
}

async fn limits_defer_updates_and_keep_old_values(s: &dyn Store) {
    let clock = ManualClock::at(4000);
    s.create_domain(&Domain {
        max_quota: Some(4 << 30),
        ..domain("small.example", Some(5))
    })
    .await
    .unwrap();
    s.create_template(&template("big", 8 << 30, "all"))
        .await
        .unwrap();
    s.put_mapping(&Mapping {
        claim_value: "big".into(),
        position: 9,
        template: "big".into(),
    })
    .await
    .unwrap();
    let c = claims("sub-erin", "erin@small.example", &["students"]);
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(m, SignedIn::Created(_)));

    // Too big for the domain at creation: refused with the reason, nothing created.
    let c2 = claims("sub-frank", "frank@small.example", &["big"]);
    let r = provision::sign_in(s, &clock, ON, &c2).await.unwrap_err();
    assert_eq!(r.code(), "quota_limit", "{r}");
    assert!(s
        .get_mailbox("frank@small.example")
        .await
        .unwrap()
        .is_none());

    // Too big on update: let in with the old values, retried next time.
    let c = claims("sub-erin", "erin@small.example", &["big"]);
    let out = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    let SignedIn::UpdateDeferred { mailbox, reason } = out else {
        panic!("expected UpdateDeferred, got {out:?}")
    };
    assert!(reason.contains("maximum"), "{reason}");
    assert_eq!(mailbox.template.as_deref(), Some("students"));
    let stored = s.get_mailbox("erin@small.example").await.unwrap().unwrap();
    assert_eq!(
        (stored.quota, stored.template.as_deref()),
        (3 << 30, Some("students"))
    );
    // The postmaster raises the limit; the next sign-in applies the template.
    s.update_domain(&Domain {
        max_quota: Some(8 << 30),
        ..domain("small.example", Some(5))
    })
    .await
    .unwrap();
    let out = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(out, SignedIn::Updated(_)), "{out:?}");
    assert_eq!(out.mailbox().quota, 8 << 30);

    // A disabled state from the template refuses the sign-in after applying it.
    let mut t = template("frozen", 1 << 30, "imap");
    t.state = MailboxState::Disabled;
    s.create_template(&t).await.unwrap();
    s.put_mapping(&Mapping {
        claim_value: "frozen".into(),
        position: 10,
        template: "frozen".into(),
    })
    .await
    .unwrap();
    let c = claims("sub-erin", "erin@small.example", &["frozen"]);
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.person_message(), "Your mailbox is disabled.");
}

async fn provisioning_off_only_admits_existing(s: &dyn Store) {
    let clock = ManualClock::at(5000);
    let off = SignInRules {
        provision: false,
        ..ON
    };
    let c = claims("sub-gina", "gina@example.org", &["staff"]);
    let r = provision::sign_in(s, &clock, off, &c).await.unwrap_err();
    assert_eq!(r.code(), "no_mailbox");
    assert!(s.get_mailbox("gina@example.org").await.unwrap().is_none());

    // A postmaster-made oidc mailbox is bound by the first sign-in, template untouched.
    s.create_mailbox(
        &Mailbox {
            address: "gina@example.org".into(),
            domain: "example.org".into(),
            password_hash: None,
            auth_source: AuthSource::Oidc,
            oidc_issuer: None,
            oidc_subject: None,
            display_name: String::new(),
            quota: 1 << 30,
            protocols: Protocols::ALL,
            state: MailboxState::Active,
            template: None,
            template_hash: None,
            overrides: Overrides::NONE,
            created_at: 1,
            updated_at: 1,
            last_login: None,
        },
        &|_, _| Ok(()),
    )
    .await
    .unwrap();
    let out = provision::sign_in(s, &clock, off, &c).await.unwrap();
    assert!(matches!(out, SignedIn::Updated(_)), "{out:?}");
    assert_eq!(out.mailbox().oidc_subject.as_deref(), Some("sub-gina"));
    assert_eq!(out.mailbox().template, None);
    assert_eq!(out.mailbox().display_name, "");
    let again = provision::sign_in(s, &clock, off, &c).await.unwrap();
    assert!(matches!(again, SignedIn::Unchanged(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_first_sign_ins_into_room_for_ten() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let store: Arc<dyn Store> = db.dyn_store();
        store
            .create_domain(&domain("crowd.example", Some(10)))
            .await
            .unwrap();
        store
            .create_template(&template("staff", 1 << 30, "all"))
            .await
            .unwrap();
        store.set_default_template(Some("staff")).await.unwrap();
        let clock = Arc::new(ManualClock::at(10_000));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = store.clone();
            let clock = clock.clone();
            tasks.push(tokio::spawn(async move {
                let c = claims(&format!("sub-{i}"), &format!("user{i}@crowd.example"), &[]);
                provision::sign_in(&*store, &*clock as &dyn Clock, ON, &c).await
            }));
        }
        let (mut created, mut full, mut other) = (0, 0, Vec::new());
        for t in tasks {
            match t.await.unwrap() {
                Ok(SignedIn::Created(_)) => created += 1,
                Err(r) if r.code() == "mailbox_limit" => full += 1,
                x => other.push(format!("{x:?}")),
            }
        }
        assert!(other.is_empty(), "{}: unexpected {other:?}", backend.name());
        assert_eq!((created, full), (10, 40), "{}", backend.name());
        let stored = store.list_mailboxes(Some("crowd.example")).await.unwrap();
        assert_eq!(stored.len(), 10, "{}", backend.name());
        db.finish().await;
        eprintln!("concurrent sign-ins passed on {}", backend.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_person_signing_in_twice_at_once_gets_one_mailbox() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let store: Arc<dyn Store> = db.dyn_store();
        store
            .create_domain(&domain("twice.example", Some(10)))
            .await
            .unwrap();
        store
            .create_template(&template("staff", 1 << 30, "all"))
            .await
            .unwrap();
        store.set_default_template(Some("staff")).await.unwrap();
        let clock = Arc::new(ManualClock::at(20_000));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, clock) = (store.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                let c = claims("sub-same", "same@twice.example", &[]);
                provision::sign_in(&*store, &*clock as &dyn Clock, ON, &c).await
            }));
        }
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(SignedIn::Created(_)) => created += 1,
                Ok(SignedIn::Unchanged(_)) => {}
                other => panic!("{}: {other:?}", backend.name()),
            }
        }
        assert_eq!(created, 1, "{}", backend.name());
        assert_eq!(
            store
                .list_mailboxes(Some("twice.example"))
                .await
                .unwrap()
                .len(),
            1
        );
        db.finish().await;
    }
}

/// The postmaster's `mailbox set` (state, protocols, quota) outlives every way a sign-in
/// re-applies a template: a new display name at the provider, `template set`, a changed
/// template claim. Only `--template`/`--reset` hand the settings back.
async fn postmaster_settings_survive_sign_in(s: &dyn Store) {
    let clock = ManualClock::at(6000);
    let mut c = claims("sub-hugo", "hugo@example.org", &["staff"]);
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert!(matches!(m, SignedIn::Created(_)), "{m:?}");
    let hugo = Address::parse("hugo@example.org").unwrap();
    let stored = || async { s.get_mailbox("hugo@example.org").await.unwrap().unwrap() };

    for (state, code) in [
        (MailboxState::Disabled, "mailbox_disabled"),
        (MailboxState::NoLogin, "mailbox_no_login"),
    ] {
        let set_state = MailboxChanges {
            state: Some(state),
            ..Default::default()
        };
        provision::update_mailbox(s, &clock, &hugo, set_state)
            .await
            .unwrap();

        // The provider's display name changes (people may edit it themselves).
        c.display_name = Some(format!("Hugo {code}"));
        let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
        assert_eq!(r.code(), code, "{r}");
        assert_eq!(stored().await.state, state, "after a display-name change");
        assert_eq!(stored().await.display_name, format!("Hugo {code}"));

        // The template changes (`template set`), state included.
        let mut t = s.get_template("staff").await.unwrap().unwrap();
        t.quota += 1 << 20;
        t.state = MailboxState::Active;
        s.update_template(&t).await.unwrap();
        let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
        assert_eq!(r.code(), code, "{r}");
        let m = stored().await;
        assert_eq!(m.state, state, "after template set");
        assert_eq!(
            m.quota, t.quota,
            "what the postmaster did not set follows the template"
        );

        // The template claim now maps to another template.
        c.template_values = vec!["students".into()];
        let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
        assert_eq!(r.code(), code, "{r}");
        let m = stored().await;
        assert_eq!(m.state, state, "after a changed template claim");
        assert_eq!(m.template.as_deref(), Some("students"));
        c.template_values = vec!["staff".into()];
        assert!(provision::sign_in(s, &clock, ON, &c).await.is_err());
    }

    // Protocols and quota set by hand stay too, and the mailbox signs in with them.
    let set = MailboxChanges {
        state: Some(MailboxState::Active),
        protocols: Some(Protocols::parse_list("imap").unwrap()),
        quota: Some(1 << 29),
        ..Default::default()
    };
    provision::update_mailbox(s, &clock, &hugo, set)
        .await
        .unwrap();
    c.display_name = Some("Hugo Again".into());
    c.template_values = vec!["students".into()];
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert_eq!(m.mailbox().template.as_deref(), Some("students"));
    assert_eq!(m.mailbox().protocols.to_string(), "imap");
    assert_eq!(m.mailbox().quota, 1 << 29);
    assert_eq!(m.mailbox().state, MailboxState::Active);
    assert_eq!(
        m.mailbox().overrides,
        Overrides {
            quota: true,
            protocols: true,
            state: true
        }
    );

    // `mailbox set --template`: the template's values again, nothing kept by hand.
    let back = MailboxChanges {
        template: Some("staff".into()),
        ..Default::default()
    };
    let m = provision::update_mailbox(s, &clock, &hugo, back)
        .await
        .unwrap();
    let staff = s.get_template("staff").await.unwrap().unwrap();
    assert_eq!(
        (m.quota, m.protocols, m.state, m.overrides),
        (staff.quota, staff.protocols, staff.state, Overrides::NONE)
    );
    // ...so a template that disables its mailboxes disables this one at the next sign-in.
    let mut frozen = staff.clone();
    frozen.state = MailboxState::Disabled;
    s.update_template(&frozen).await.unwrap();
    c.template_values = vec!["staff".into()];
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "mailbox_disabled");
    s.update_template(&staff).await.unwrap();
    let m = provision::sign_in(s, &clock, ON, &c).await.unwrap();
    assert_eq!(m.mailbox().state, MailboxState::Active);
}

async fn email_verified_must_be_true(s: &dyn Store) {
    let clock = ManualClock::at(7000);
    let before = s.list_mailboxes(None).await.unwrap().len();
    let mut c = claims("sub-iris", "iris@example.org", &["staff"]);
    c.email_verified = None;
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "email_verified_missing");
    assert!(
        r.person_message()
            .contains("did not confirm that the address iris@example.org is verified"),
        "{}",
        r.person_message()
    );
    assert!(r.to_string().contains("require_verified_email"), "{r}");
    assert_eq!(s.list_mailboxes(None).await.unwrap().len(), before);

    // Nor does it bind a mailbox the postmaster made for the person.
    let jo = Address::parse("jo@example.org").unwrap();
    provision::create_mailbox(
        s,
        &clock,
        provision::NewMailbox {
            address: jo.clone(),
            password_hash: None,
            auth_source: AuthSource::Oidc,
            display_name: String::new(),
            quota: None,
            protocols: None,
            state: None,
            template: Some("staff".into()),
            oidc_identity: None,
            require_active_domain: false,
        },
    )
    .await
    .unwrap();
    let mut j = claims("sub-jo", "jo@example.org", &["staff"]);
    j.email_verified = None;
    let r = provision::sign_in(s, &clock, ON, &j).await.unwrap_err();
    assert_eq!(r.code(), "email_verified_missing");
    assert_eq!(
        s.get_mailbox("jo@example.org")
            .await
            .unwrap()
            .unwrap()
            .oidc_subject,
        None
    );

    // Switched off (a provider that never sends the claim): absent is accepted, false never.
    let lax = SignInRules {
        require_verified_email: false,
        ..ON
    };
    let m = provision::sign_in(s, &clock, lax, &c).await.unwrap();
    assert!(matches!(m, SignedIn::Created(_)), "{m:?}");
    let m = provision::sign_in(s, &clock, lax, &j).await.unwrap();
    assert_eq!(m.mailbox().oidc_subject.as_deref(), Some("sub-jo"));
    c.email_verified = Some(false);
    let r = provision::sign_in(s, &clock, lax, &c).await.unwrap_err();
    assert_eq!(r.code(), "email_not_verified");
    // And an existing, bound mailbox is not signed in to without it either.
    c.email_verified = None;
    let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
    assert_eq!(r.code(), "email_verified_missing");
    c.email_verified = Some(true);
    provision::sign_in(s, &clock, ON, &c).await.unwrap();
}

/// U+212A KELVIN SIGN lower-cases to "k" under Unicode rules; an address with it must not
/// reach kelvin@, nor create a look-alike mailbox. Nor may `/` or NUL reach the store.
async fn addresses_are_not_folded_together(s: &dyn Store) {
    let clock = ManualClock::at(8000);
    let kelvin = claims("sub-kelvin", "kelvin@example.org", &["staff"]);
    provision::sign_in(s, &clock, ON, &kelvin).await.unwrap();
    // The postmaster unlinks it (say the account was re-created): it is unbound now.
    let unlink = MailboxChanges {
        unlink_identity: true,
        ..Default::default()
    };
    let address = Address::parse("kelvin@example.org").unwrap();
    provision::update_mailbox(s, &clock, &address, unlink)
        .await
        .unwrap();
    let before = s.list_mailboxes(None).await.unwrap().len();
    for (claim, shown) in [
        (
            "\u{212A}elvin@example.org",
            "The address \u{212A}elvin@example.org cannot be used",
        ),
        (
            "\u{212A}ELVIN@EXAMPLE.ORG",
            "The address \u{212A}ELVIN@EXAMPLE.ORG cannot be used",
        ),
        ("k\u{0131}lvin@example.org", "ASCII"),
        ("a/../kelvin@example.org", "may not contain /"),
        ("kel\0vin@example.org", "usable mail address"),
    ] {
        let c = claims("sub-mallory", claim, &["staff"]);
        let r = provision::sign_in(s, &clock, ON, &c).await.unwrap_err();
        assert_eq!(r.code(), "bad_address", "{claim:?}: {r}");
        assert!(
            r.person_message().contains(shown),
            "{claim:?}: {}",
            r.person_message()
        );
    }
    let stored = s.get_mailbox("kelvin@example.org").await.unwrap().unwrap();
    assert_eq!(stored.oidc_subject, None, "not bound by a look-alike");
    assert_eq!(s.list_mailboxes(None).await.unwrap().len(), before);
}

/// People racing for one unbound address, each with their own subject: exactly one gets it
/// and is bound; every other one is refused, whether the postmaster made the mailbox
/// (provisioning on or off) or the first sign-in creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_sign_ins_of_different_people_for_one_address_bind_exactly_one() {
    const ROUNDS: usize = 6;
    const RACERS: usize = 8;
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let store: Arc<dyn Store> = db.dyn_store();
        store
            .create_domain(&domain("race.example", None))
            .await
            .unwrap();
        store
            .create_template(&template("staff", 1 << 30, "all"))
            .await
            .unwrap();
        store.set_default_template(Some("staff")).await.unwrap();
        let clock = Arc::new(ManualClock::at(30_000));
        for round in 0..ROUNDS * 3 {
            let address = format!("shared{round}@race.example");
            let (prepared, rules) = match round % 3 {
                0 => (true, ON),
                1 => (
                    true,
                    SignInRules {
                        provision: false,
                        ..ON
                    },
                ),
                _ => (false, ON),
            };
            if prepared {
                provision::create_mailbox(
                    &*store,
                    &*clock,
                    provision::NewMailbox {
                        address: Address::parse(&address).unwrap(),
                        password_hash: None,
                        auth_source: AuthSource::Oidc,
                        display_name: String::new(),
                        quota: None,
                        protocols: None,
                        state: None,
                        template: Some("staff".into()),
                        oidc_identity: None,
                        require_active_domain: false,
                    },
                )
                .await
                .unwrap();
            }
            let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
            let mut tasks = Vec::new();
            for i in 0..RACERS {
                let (store, clock, barrier) = (store.clone(), clock.clone(), barrier.clone());
                let c = claims(&format!("sub-{round}-{i}"), &address, &[]);
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let out = provision::sign_in(&*store, &*clock as &dyn Clock, rules, &c).await;
                    (c.subject, out)
                }));
            }
            let (mut winners, mut other) = (Vec::new(), Vec::new());
            for t in tasks {
                match t.await.unwrap() {
                    (subject, Ok(_)) => winners.push(subject),
                    (_, Err(SignInRefusal::OtherAccount { .. })) => {}
                    (_, x) => other.push(format!("{x:?}")),
                }
            }
            let name = backend.name();
            assert!(other.is_empty(), "{name} {address}: unexpected {other:?}");
            assert_eq!(winners.len(), 1, "{name} {address}: signed in: {winners:?}");
            let m = store.get_mailbox(&address).await.unwrap().unwrap();
            assert_eq!(
                m.oidc_subject.as_ref(),
                Some(&winners[0]),
                "{name} {address}"
            );
            // The winner keeps getting in; everyone else stays out.
            let again = claims(&winners[0], &address, &[]);
            provision::sign_in(&*store, &*clock, rules, &again)
                .await
                .unwrap();
        }
        db.finish().await;
        eprintln!("racing first sign-ins passed on {}", backend.name());
    }
}

/// A mailbox at example.org that signs in with the provider, for the app-password tests.
async fn oidc_mailbox(s: &dyn Store, address: &str) {
    provision::sign_in(
        s,
        &ManualClock::at(1000),
        ON,
        &claims(&format!("sub-{address}"), address, &["staff"]),
    )
    .await
    .unwrap();
}

/// Issues `n` app passwords named `name` for `mailbox` at once.
async fn issue_at_once(
    store: &Arc<dyn Store>,
    mailbox: &'static str,
    name: &'static str,
    duplicate_name: DuplicateName,
    n: usize,
) -> Vec<Result<IssuedAppPassword, IssueError>> {
    let key = Arc::new(AppPasswordKey::new(vec![7; 32]));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let request = AppPasswordRequest {
                mailbox,
                name,
                protocols: Protocols::ALL,
                allowed: None,
                networks: Vec::new(),
                expires_at: None,
                duplicate_name,
                now: 2000,
            };
            provision::issue_app_password(store.as_ref(), &key, request).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_passwords_issued_at_once_keep_names_unique_and_the_cap() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let store: Arc<dyn Store> = db.dyn_store();
        setup(&*store).await;
        oidc_mailbox(&*store, "alice@example.org").await;
        oidc_mailbox(&*store, "bob@example.org").await;

        // A double-clicked form: numbered names, none twice.
        let numbered = issue_at_once(
            &store,
            "alice@example.org",
            "Laptop",
            DuplicateName::Number,
            12,
        )
        .await;
        assert!(numbered.iter().all(Result::is_ok), "{}", backend.name());
        let mut names: Vec<String> = store
            .list_app_passwords("alice@example.org")
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 12, "{}: {names:?}", backend.name());
        assert!(
            names.contains(&"Laptop".to_string()) && names.contains(&"Laptop (12)".to_string())
        );

        // A name typed twice at once: one stored, the other refused.
        let typed =
            issue_at_once(&store, "bob@example.org", "Phone", DuplicateName::Refuse, 6).await;
        let stored = typed.iter().filter(|r| r.is_ok()).count();
        let refused = typed
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Err(IssueError::Refused(AppPasswordRefusal::NameTaken(_)))
                )
            })
            .count();
        assert_eq!((stored, refused), (1, 5), "{}", backend.name());

        // The last places taken at once: never more than the cap.
        let room = MAX_APP_PASSWORDS - 12;
        let crowd = issue_at_once(
            &store,
            "alice@example.org",
            "Tablet",
            DuplicateName::Number,
            room + 8,
        )
        .await;
        let too_many = crowd
            .iter()
            .filter(|r| matches!(r, Err(IssueError::Refused(AppPasswordRefusal::TooMany))))
            .count();
        assert_eq!(too_many, 8, "{}", backend.name());
        let held = store.list_app_passwords("alice@example.org").await.unwrap();
        assert_eq!(held.len(), MAX_APP_PASSWORDS, "{}", backend.name());
        db.finish().await;
        eprintln!("app passwords issued at once passed on {}", backend.name());
    }
}
