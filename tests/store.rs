//! One store-conformance body, run against every backend (see tests/common).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use mailauthd::clock::ManualClock;
use mailauthd::names::{Address, Protocol, Protocols};
use mailauthd::provision::{self, MailboxChanges, NewMailbox, ProvisionError};
use mailauthd::store::*;

fn domain(name: &str) -> Domain {
    Domain {
        name: name.into(),
        active: true,
        max_mailboxes: None,
        max_quota: None,
        total_quota: None,
        created_at: 100,
    }
}

fn new_mailbox(address: &str) -> NewMailbox {
    NewMailbox {
        address: Address::parse(address).unwrap(),
        password_hash: Some("{PLAIN}secret".into()),
        auth_source: AuthSource::Local,
        display_name: "Test".into(),
        quota: None,
        protocols: None,
        state: None,
        template: None,
        oidc_identity: None,
        require_active_domain: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_behaves_the_same_on_every_backend() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        domains(&*db.store).await;
        templates_and_mappings(&*db.store).await;
        mailboxes(&*db.store).await;
        app_passwords_and_last_use(&*db.store).await;
        aliases_and_send_as(&*db.store).await;
        assert!(
            db.store.migrate().await.unwrap().is_empty(),
            "{}: migrate twice applies nothing",
            backend.name()
        );
        db.finish().await;
        eprintln!("store conformance passed on {}", backend.name());
    }
}

async fn domains(s: &dyn Store) {
    let mut d = domain("example.org");
    d.max_mailboxes = Some(5);
    s.create_domain(&d).await.unwrap();
    assert!(matches!(
        s.create_domain(&d).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_domain("example.org").await.unwrap(), Some(d.clone()));
    assert_eq!(s.get_domain("nowhere.org").await.unwrap(), None);
    d.total_quota = Some(1 << 40);
    d.active = false;
    s.update_domain(&d).await.unwrap();
    assert_eq!(s.get_domain("example.org").await.unwrap().unwrap(), d);
    d.active = true;
    s.update_domain(&d).await.unwrap();
    assert!(matches!(
        s.update_domain(&domain("nowhere.org")).await,
        Err(StoreError::NotFound(_))
    ));
    s.create_domain(&domain("b.example")).await.unwrap();
    let names: Vec<String> = s
        .list_domains()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["b.example", "example.org"]);

    let alias = AliasDomain {
        name: "alias.example".into(),
        target: "example.org".into(),
        active: true,
        created_at: 1,
    };
    s.create_alias_domain(&alias).await.unwrap();
    assert_eq!(s.list_alias_domains().await.unwrap(), vec![alias]);
    let clash = AliasDomain {
        name: "b.example".into(),
        target: "example.org".into(),
        active: true,
        created_at: 1,
    };
    assert!(matches!(
        s.create_alias_domain(&clash).await,
        Err(StoreError::Conflict(_))
    ));
    let dangling = AliasDomain {
        name: "x.example".into(),
        target: "nowhere.org".into(),
        active: true,
        created_at: 1,
    };
    assert!(s.create_alias_domain(&dangling).await.is_err());
    s.delete_alias_domain("alias.example").await.unwrap();
    assert!(matches!(
        s.delete_alias_domain("alias.example").await,
        Err(StoreError::NotFound(_))
    ));
    s.delete_domain("b.example").await.unwrap();
}

async fn templates_and_mappings(s: &dyn Store) {
    let t = Template {
        name: "staff".into(),
        quota: 5 << 30,
        protocols: Protocols::parse_list("imap,smtp").unwrap(),
        state: MailboxState::Active,
        created_at: 1,
        updated_at: 1,
    };
    s.create_template(&t).await.unwrap();
    assert!(matches!(
        s.create_template(&t).await,
        Err(StoreError::Conflict(_))
    ));
    let mut students = t.clone();
    students.name = "students".into();
    students.state = MailboxState::NoLogin;
    s.create_template(&students).await.unwrap();
    assert_eq!(
        s.get_template("students").await.unwrap(),
        Some(students.clone())
    );
    students.quota = 1 << 30;
    students.updated_at = 2;
    s.update_template(&students).await.unwrap();
    assert_eq!(
        s.get_template("students").await.unwrap().unwrap().quota,
        1 << 30
    );

    s.put_mapping(&Mapping {
        claim_value: "b".into(),
        position: 20,
        template: "staff".into(),
    })
    .await
    .unwrap();
    s.put_mapping(&Mapping {
        claim_value: "a".into(),
        position: 30,
        template: "students".into(),
    })
    .await
    .unwrap();
    s.put_mapping(&Mapping {
        claim_value: "c".into(),
        position: 10,
        template: "staff".into(),
    })
    .await
    .unwrap();
    // Re-putting replaces, it does not duplicate.
    s.put_mapping(&Mapping {
        claim_value: "c".into(),
        position: 5,
        template: "students".into(),
    })
    .await
    .unwrap();
    let order: Vec<(String, String)> = s
        .list_mappings()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.claim_value, m.template))
        .collect();
    assert_eq!(
        order,
        vec![
            ("c".into(), "students".into()),
            ("b".into(), "staff".into()),
            ("a".into(), "students".into())
        ]
    );
    let bad = Mapping {
        claim_value: "z".into(),
        position: 1,
        template: "nope".into(),
    };
    assert!(matches!(
        s.put_mapping(&bad).await,
        Err(StoreError::NotFound(_))
    ));

    assert_eq!(s.default_template().await.unwrap(), None);
    s.set_default_template(Some("staff")).await.unwrap();
    assert_eq!(
        s.default_template().await.unwrap().as_deref(),
        Some("staff")
    );
    assert!(matches!(
        s.set_default_template(Some("nope")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        matches!(
            s.delete_template("staff").await,
            Err(StoreError::Refused(_))
        ),
        "default template"
    );
    s.set_default_template(None).await.unwrap();
    assert!(
        matches!(
            s.delete_template("staff").await,
            Err(StoreError::Refused(_))
        ),
        "still mapped"
    );
    s.delete_mapping("b").await.unwrap();
    assert!(matches!(
        s.delete_mapping("b").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn mailboxes(s: &dyn Store) {
    let clock = ManualClock::at(1_000);
    let mut new = new_mailbox("alice@example.org");
    new.template = Some("staff".into());
    let alice = provision::create_mailbox(s, &clock, new.clone())
        .await
        .unwrap();
    assert_eq!(alice.quota, 5 << 30);
    assert_eq!(alice.protocols, Protocols::parse_list("imap,smtp").unwrap());
    assert_eq!(alice.template.as_deref(), Some("staff"));
    assert!(matches!(
        provision::create_mailbox(s, &clock, new).await,
        Err(ProvisionError::Exists(_))
    ));
    let stored = s.get_mailbox("alice@example.org").await.unwrap().unwrap();
    assert_eq!(stored, alice);

    let view = s.login_view("alice@example.org").await.unwrap().unwrap();
    assert_eq!(view.password_hash.as_deref(), Some("{PLAIN}secret"));
    assert!(view.domain_active && view.state == MailboxState::Active);
    assert_eq!(s.login_view("nobody@example.org").await.unwrap(), None);

    // Switching the auth source keeps the stored password.
    s.set_auth_source("alice@example.org", AuthSource::Oidc, 2_000)
        .await
        .unwrap();
    let view = s.login_view("alice@example.org").await.unwrap().unwrap();
    assert_eq!(
        (view.auth_source, view.password_hash.as_deref()),
        (AuthSource::Oidc, Some("{PLAIN}secret"))
    );
    s.set_auth_source("alice@example.org", AuthSource::Local, 2_001)
        .await
        .unwrap();

    // A rehash replaces only the hash it read.
    assert!(!s
        .replace_password_hash("alice@example.org", "{PLAIN}other", "{X}new")
        .await
        .unwrap());
    assert!(s
        .replace_password_hash("alice@example.org", "{PLAIN}secret", "{PLAIN}secret2")
        .await
        .unwrap());
    s.set_password_hash("alice@example.org", None, 2_002)
        .await
        .unwrap();
    assert_eq!(
        s.login_view("alice@example.org")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        None
    );
    s.set_password_hash("alice@example.org", Some("{PLAIN}secret"), 2_003)
        .await
        .unwrap();

    // Updates through provisioning respect the domain's limits and keep the password.
    let address = Address::parse("alice@example.org").unwrap();
    let changes = MailboxChanges {
        quota: Some(2 << 30),
        display_name: Some("Alice".into()),
        ..Default::default()
    };
    let changed = provision::update_mailbox(s, &clock, &address, changes)
        .await
        .unwrap();
    assert_eq!(changed.quota, 2 << 30);
    let reread = s.get_mailbox("alice@example.org").await.unwrap().unwrap();
    assert_eq!(
        (
            reread.display_name.as_str(),
            reread.password_hash.as_deref()
        ),
        ("Alice", Some("{PLAIN}secret"))
    );

    let mut d = s.get_domain("example.org").await.unwrap().unwrap();
    d.total_quota = Some(3 << 30);
    d.max_quota = Some(2 << 30);
    s.update_domain(&d).await.unwrap();
    let too_big = MailboxChanges {
        quota: Some(3 << 30),
        ..Default::default()
    };
    match provision::update_mailbox(s, &clock, &address, too_big).await {
        Err(ProvisionError::Refused(msg)) => assert!(msg.contains("maximum"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut bob = new_mailbox("bob@example.org");
    bob.quota = Some(2 << 30);
    match provision::create_mailbox(s, &clock, bob.clone()).await {
        Err(ProvisionError::Refused(msg)) => assert!(msg.contains("total quota"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    bob.quota = Some(1 << 30);
    provision::create_mailbox(s, &clock, bob).await.unwrap();
    let usage = s.domain_usage("example.org").await.unwrap();
    assert_eq!(
        usage,
        DomainUsage {
            mailboxes: 2,
            quota_sum: 3 << 30,
            unlimited_mailboxes: 0
        }
    );
    assert!(matches!(
        provision::create_mailbox(s, &clock, new_mailbox("carol@nowhere.org")).await,
        Err(ProvisionError::UnknownDomain(_))
    ));
    let mut carol = new_mailbox("carol@example.org");
    carol.template = Some("nope".into());
    assert!(matches!(
        provision::create_mailbox(s, &clock, carol).await,
        Err(ProvisionError::UnknownTemplate(_))
    ));

    assert!(matches!(
        s.delete_domain("example.org").await,
        Err(StoreError::Refused(_))
    ));
    s.delete_mailbox("bob@example.org").await.unwrap();
    assert!(matches!(
        s.delete_mailbox("bob@example.org").await,
        Err(StoreError::NotFound(_))
    ));
    d.total_quota = None;
    d.max_quota = None;
    s.update_domain(&d).await.unwrap();
    assert_eq!(
        s.list_mailboxes(Some("example.org")).await.unwrap().len(),
        1
    );
}

async fn app_passwords_and_last_use(s: &dyn Store) {
    let new = NewAppPassword {
        mailbox: "alice@example.org".into(),
        name: "phone".into(),
        lookup_hash: "a".repeat(64),
        protocols: Protocols::NONE.with(Protocol::Imap),
        networks: parse_networks("192.0.2.0/24,2001:db8::/32").unwrap(),
        expires_at: Some(5_000),
        created_at: 1_000,
    };
    let id = s.create_app_password(&new).await.unwrap();
    let second = NewAppPassword {
        lookup_hash: "b".repeat(64),
        name: "laptop".into(),
        networks: vec![],
        expires_at: None,
        ..new.clone()
    };
    let id2 = s.create_app_password(&second).await.unwrap();
    assert_ne!(id, id2);
    assert!(
        matches!(
            s.create_app_password(&new).await,
            Err(StoreError::Conflict(_))
        ),
        "lookup hash is unique"
    );
    let orphan = NewAppPassword {
        mailbox: "ghost@example.org".into(),
        lookup_hash: "c".repeat(64),
        ..new.clone()
    };
    assert!(s.create_app_password(&orphan).await.is_err());

    let app_of = |hash: String| async move {
        let (_, app) = s
            .login_view_with_app_password("alice@example.org", &hash)
            .await
            .unwrap()
            .unwrap();
        app
    };
    let found = app_of("a".repeat(64)).await.unwrap();
    assert_eq!(
        (found.id, found.name.as_str(), found.expires_at),
        (id, "phone", Some(5_000))
    );
    assert_eq!(found.networks, new.networks);
    assert!(found.allows(Protocol::Imap) && !found.allows(Protocol::Pop3));
    assert_eq!(app_of("f".repeat(64)).await, None);

    let uses = vec![
        LastUse {
            mailbox: "alice@example.org".into(),
            app_password_id: Some(id),
            at: 3_000,
            ip: Some("192.0.2.7".into()),
            service: "imap".into(),
        },
        LastUse {
            mailbox: "alice@example.org".into(),
            app_password_id: None,
            at: 2_000,
            ip: None,
            service: "smtp".into(),
        },
    ];
    s.record_last_use(&uses).await.unwrap();
    // An older record flushed late must not overwrite a newer one.
    let stale = LastUse {
        mailbox: "alice@example.org".into(),
        app_password_id: Some(id),
        at: 2_500,
        ip: Some("198.51.100.1".into()),
        service: "pop3".into(),
    };
    s.record_last_use(&[stale]).await.unwrap();
    let list = s.list_app_passwords("alice@example.org").await.unwrap();
    assert_eq!(list.len(), 2);
    let used = list[0].last_used.clone().unwrap();
    assert_eq!(
        (used.at, used.ip.as_deref(), used.service.as_deref()),
        (3_000, Some("192.0.2.7"), Some("imap"))
    );
    assert_eq!(list[1].last_used, None);
    let mailbox = s.get_mailbox("alice@example.org").await.unwrap().unwrap();
    assert_eq!(mailbox.last_login.unwrap().at, 3_000);

    assert!(
        matches!(
            s.delete_app_password("bob@example.org", id).await,
            Err(StoreError::NotFound(_))
        ),
        "not another mailbox's"
    );
    s.delete_app_password("alice@example.org", id)
        .await
        .unwrap();
    assert_eq!(
        app_of("a".repeat(64)).await,
        None,
        "revocation is immediate"
    );
}

async fn aliases_and_send_as(s: &dyn Store) {
    for target in ["alice@example.org", "bob@example.org"] {
        let a = Alias {
            address: "sales@example.org".into(),
            target: target.into(),
            domain: "example.org".into(),
            created_at: 1,
        };
        s.add_alias(&a).await.unwrap();
    }
    let dup = Alias {
        address: "sales@example.org".into(),
        target: "bob@example.org".into(),
        domain: "example.org".into(),
        created_at: 1,
    };
    assert!(matches!(
        s.add_alias(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.list_aliases(Some("example.org")).await.unwrap().len(), 2);
    assert_eq!(
        s.delete_alias("sales@example.org", Some("bob@example.org"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.list_aliases(None).await.unwrap().len(), 1);

    let g = SendAs {
        mailbox: "alice@example.org".into(),
        pattern: "@example.net".into(),
        created_at: 1,
    };
    s.grant_send_as(&g).await.unwrap();
    assert!(matches!(
        s.grant_send_as(&g).await,
        Err(StoreError::Conflict(_))
    ));
    let ghost = SendAs {
        mailbox: "ghost@example.org".into(),
        ..g.clone()
    };
    assert!(s.grant_send_as(&ghost).await.is_err());
    assert_eq!(
        s.list_send_as(Some("alice@example.org")).await.unwrap(),
        vec![g]
    );
    s.revoke_send_as("alice@example.org", "@example.net")
        .await
        .unwrap();
    assert!(matches!(
        s.revoke_send_as("alice@example.org", "@example.net").await,
        Err(StoreError::NotFound(_))
    ));
}

/// 50 people signing in at once into a domain with room for 10 get exactly 10 mailboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creation_respects_the_mailbox_limit() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let mut d = domain("crowd.example");
        d.max_mailboxes = Some(10);
        db.store.create_domain(&d).await.unwrap();
        let clock = Arc::new(ManualClock::at(1));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (store, clock) = (db.dyn_store(), clock.clone());
            tasks.push(tokio::spawn(async move {
                let mut new = new_mailbox(&format!("user{i}@crowd.example"));
                new.require_active_domain = true;
                provision::create_mailbox(&*store, &*clock, new).await
            }));
        }
        let (mut created, mut refused) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => created += 1,
                Err(ProvisionError::Refused(msg)) if msg.contains("mailbox limit") => refused += 1,
                Err(other) => panic!("{}: unexpected {other:?}", backend.name()),
            }
        }
        assert_eq!((created, refused), (10, 40), "{}", backend.name());
        assert_eq!(
            db.store
                .domain_usage("crowd.example")
                .await
                .unwrap()
                .mailboxes,
            10
        );
        db.finish().await;
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_wrong() {
    let mut options = common::options("postgres://mailauthd@127.0.0.1:1/none");
    options.connect_timeout = std::time::Duration::from_millis(300);
    let store = open(&options).await.unwrap();
    let err = store.login_view("alice@example.org").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

fn raw_mailbox(address: &str, template: Option<&str>) -> Mailbox {
    Mailbox {
        address: address.into(),
        domain: address.rsplit_once('@').unwrap().1.into(),
        password_hash: None,
        auth_source: AuthSource::Oidc,
        oidc_issuer: None,
        oidc_subject: None,
        display_name: String::new(),
        quota: 2 << 30,
        protocols: Protocols::parse_list("imap,smtp").unwrap(),
        state: MailboxState::Active,
        template: template.map(str::to_string),
        template_hash: None,
        overrides: Overrides::NONE,
        created_at: 1,
        updated_at: 200,
        last_login: None,
    }
}

fn template(name: &str, quota: u64, protocols: &str, state: MailboxState) -> Template {
    Template {
        name: name.into(),
        quota,
        protocols: Protocols::parse_list(protocols).unwrap(),
        state,
        created_at: 100,
        updated_at: 100,
    }
}

/// What the postmaster sets is stored as an override; `--template`/`--reset` clear it; a
/// compare-and-set write loses to any write in between; addresses are stored canonical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_compare_and_set_and_canonical_addresses_on_every_backend() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let s = &*db.store;
        let name = backend.name();
        let clock = ManualClock::at(1_000);
        s.create_domain(&domain("example.org")).await.unwrap();
        s.create_template(&template(
            "staff",
            2 << 30,
            "imap,smtp",
            MailboxState::Active,
        ))
        .await
        .unwrap();
        s.create_template(&template("students", 1 << 30, "imap", MailboxState::Active))
            .await
            .unwrap();

        // Explicit settings at creation are overrides; template values are not.
        let mut new = new_mailbox("olga@example.org");
        new.template = Some("staff".into());
        new.state = Some(MailboxState::NoLogin);
        let olga = provision::create_mailbox(s, &clock, new).await.unwrap();
        assert_eq!((olga.quota, olga.state), (2 << 30, MailboxState::NoLogin));
        let only_state = Overrides {
            state: true,
            ..Overrides::NONE
        };
        assert_eq!(olga.overrides, only_state, "{name}");
        let stored = s.get_mailbox("olga@example.org").await.unwrap().unwrap();
        assert_eq!(stored, olga, "{name}: overrides are stored");

        let address = Address::parse("olga@example.org").unwrap();
        let set = MailboxChanges {
            quota: Some(3 << 30),
            ..Default::default()
        };
        let m = provision::update_mailbox(s, &clock, &address, set)
            .await
            .unwrap();
        assert_eq!(m.overrides.to_string(), "quota,state", "{name}");
        assert_eq!(
            s.list_mailboxes(Some("example.org")).await.unwrap()[0].overrides,
            m.overrides,
            "{name}"
        );
        // --template NAME: that template's values, then explicit options are overrides again.
        let to_students = MailboxChanges {
            template: Some("students".into()),
            protocols: Some(Protocols::parse_list("imap,pop3").unwrap()),
            ..Default::default()
        };
        let m = provision::update_mailbox(s, &clock, &address, to_students)
            .await
            .unwrap();
        assert_eq!(
            (
                m.quota,
                m.state,
                m.protocols.to_string(),
                m.overrides.to_string()
            ),
            (
                1 << 30,
                MailboxState::Active,
                "imap,pop3".into(),
                "protocols".into()
            ),
            "{name}"
        );
        // --reset: the template it follows, nothing kept.
        let reset = MailboxChanges {
            reset: true,
            ..Default::default()
        };
        let m = provision::update_mailbox(s, &clock, &address, reset.clone())
            .await
            .unwrap();
        assert_eq!(
            (m.protocols.to_string(), m.overrides),
            ("imap".into(), Overrides::NONE),
            "{name}"
        );
        provision::create_mailbox(s, &clock, new_mailbox("plain@example.org"))
            .await
            .unwrap();
        let plain = Address::parse("plain@example.org").unwrap();
        match provision::update_mailbox(s, &clock, &plain, reset).await {
            Err(ProvisionError::Refused(msg)) => {
                assert!(msg.contains("follows no template"), "{name}: {msg}")
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }

        // Compare-and-set: a write based on an old read loses and writes nothing.
        let read = s.get_mailbox("olga@example.org").await.unwrap().unwrap();
        let first = Mailbox {
            display_name: "First".into(),
            ..read.clone()
        };
        assert!(s
            .update_mailbox_if(&first, &read, &|_, _| Ok(()))
            .await
            .unwrap());
        let late = Mailbox {
            oidc_issuer: Some("https://idp".into()),
            oidc_subject: Some("late".into()),
            ..read.clone()
        };
        assert!(
            !s.update_mailbox_if(&late, &read, &|_, _| Ok(()))
                .await
                .unwrap(),
            "{name}"
        );
        let now = s.get_mailbox("olga@example.org").await.unwrap().unwrap();
        assert_eq!(
            (now.display_name.as_str(), now.oidc_subject.as_deref()),
            ("First", None),
            "{name}"
        );
        // A refused limit check writes nothing either.
        assert!(matches!(
            s.update_mailbox_if(&late, &now, &|d, _| Err(LimitBreach::DomainDisabled(
                d.name.clone()
            )))
            .await,
            Err(StoreError::Limit(_))
        ));
        s.delete_mailbox("olga@example.org").await.unwrap();
        assert!(
            !s.update_mailbox_if(&first, &now, &|_, _| Ok(()))
                .await
                .unwrap(),
            "{name}"
        );

        // The store writes addresses only in canonical form.
        for (bad, why) in [
            ("\u{212A}elvin@example.org", "ASCII"),
            ("Kelvin@example.org", "canonical"),
            ("a/b@example.org", "/"),
            ("a\u{0}b@example.org", "control"),
        ] {
            match s
                .create_mailbox(&raw_mailbox(bad, None), &|_, _| Ok(()))
                .await
            {
                Err(StoreError::Refused(refusal)) => {
                    let msg = refusal.to_string();
                    assert!(msg.contains(why), "{name} {bad:?}: {msg}")
                }
                other => panic!("{name} {bad:?}: expected a refusal, got {other:?}"),
            }
            let alias = Alias {
                address: bad.into(),
                target: "plain@example.org".into(),
                domain: "example.org".into(),
                created_at: 1,
            };
            assert!(
                matches!(s.add_alias(&alias).await, Err(StoreError::Refused(_))),
                "{name} {bad:?}"
            );
        }
        assert!(s.get_mailbox("kelvin@example.org").await.unwrap().is_none());
        db.finish().await;
        eprintln!("overrides and compare-and-set passed on {name}");
    }
}

/// Sixteen writers that read the same unbound mailbox and each bind their own identity:
/// exactly one write lands, on every backend, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_lets_exactly_one_writer_win() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        db.store
            .create_domain(&domain("cas.example"))
            .await
            .unwrap();
        for round in 0..10 {
            let address = format!("box{round}@cas.example");
            let read = raw_mailbox(&address, None);
            db.store
                .create_mailbox(&read, &|_, _| Ok(()))
                .await
                .unwrap();
            let barrier = Arc::new(tokio::sync::Barrier::new(16));
            let mut tasks = Vec::new();
            for i in 0..16 {
                let (store, read, barrier) = (db.dyn_store(), read.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    let mine = Mailbox {
                        oidc_issuer: Some("https://idp".into()),
                        oidc_subject: Some(format!("sub-{round}-{i}")),
                        ..read.clone()
                    };
                    barrier.wait().await;
                    let won = store.update_mailbox_if(&mine, &read, &|_, _| Ok(())).await;
                    (i, won)
                }));
            }
            let mut winners = Vec::new();
            for t in tasks {
                let (i, won) = t.await.unwrap();
                if won.unwrap_or_else(|e| panic!("{}: {e}", backend.name())) {
                    winners.push(i);
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "{} {address}: {winners:?}",
                backend.name()
            );
            let m = db.store.get_mailbox(&address).await.unwrap().unwrap();
            assert_eq!(m.oidc_subject, Some(format!("sub-{round}-{}", winners[0])));
        }
        db.finish().await;
    }
}

/// Migration 0003 on mailboxes from before it: what the postmaster evidently set (a state
/// other than the template's, fewer protocols, another quota on an unchanged template) is
/// kept as an override; a difference a later template change explains is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0003_keeps_what_the_postmaster_set_on_every_backend() {
    sqlx::any::install_default_drivers();
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let s = &*db.store;
        let name = backend.name();
        s.create_domain(&domain("old.example")).await.unwrap();
        s.create_template(&template(
            "staff",
            2 << 30,
            "imap,smtp",
            MailboxState::Active,
        ))
        .await
        .unwrap();
        s.create_template(&template(
            "frozen",
            2 << 30,
            "imap,smtp",
            MailboxState::Disabled,
        ))
        .await
        .unwrap();
        let staff = Some("staff");
        let protocols = |p: &str| Protocols::parse_list(p).unwrap();
        let cases: Vec<(Mailbox, &str)> = vec![
            (raw_mailbox("same@old.example", staff), ""),
            (
                Mailbox {
                    state: MailboxState::Disabled,
                    ..raw_mailbox("disabled@old.example", staff)
                },
                "state",
            ),
            (
                Mailbox {
                    state: MailboxState::NoLogin,
                    ..raw_mailbox("nologin@old.example", None)
                },
                "state",
            ),
            (raw_mailbox("untemplated@old.example", None), ""),
            (
                Mailbox {
                    state: MailboxState::Disabled,
                    ..raw_mailbox("frozen@old.example", Some("frozen"))
                },
                "",
            ),
            (
                Mailbox {
                    protocols: protocols("imap"),
                    ..raw_mailbox("fewer@old.example", staff)
                },
                "protocols",
            ),
            (
                Mailbox {
                    protocols: protocols("all"),
                    ..raw_mailbox("more@old.example", staff)
                },
                "",
            ),
            (
                Mailbox {
                    quota: 1 << 30,
                    ..raw_mailbox("quota@old.example", staff)
                },
                "quota",
            ),
            (
                Mailbox {
                    quota: 1 << 30,
                    updated_at: 50,
                    ..raw_mailbox("stale@old.example", staff)
                },
                "",
            ),
            (
                Mailbox {
                    quota: 1 << 30,
                    protocols: protocols("smtp"),
                    state: MailboxState::Disabled,
                    ..raw_mailbox("all@old.example", staff)
                },
                "quota,protocols,state",
            ),
        ];
        for (m, _) in &cases {
            s.create_mailbox(m, &|_, _| Ok(())).await.unwrap();
        }
        // Back to the schema before 0003, with these rows in it.
        let upgraded = downgraded_then_upgraded(
            &db.url,
            &[
                "ALTER TABLE mailboxes DROP COLUMN overrides".into(),
                "DELETE FROM mailauthd_migrations WHERE version = 3".into(),
            ],
            "0003_overrides.sql",
            name,
        )
        .await;
        for (m, expected) in &cases {
            let got = upgraded.get_mailbox(&m.address).await.unwrap().unwrap();
            assert_eq!(got.overrides.to_string(), *expected, "{name} {}", m.address);
            assert_eq!((got.quota, got.state), (m.quota, m.state), "{name}");
        }
        upgraded.close().await;
        db.finish().await;
        eprintln!("migration 0003 passed on {name}");
    }
}

fn linked_mailbox(address: &str, subject: &str) -> NewMailbox {
    NewMailbox {
        auth_source: AuthSource::Oidc,
        password_hash: None,
        oidc_identity: Some(("https://sso.example.org".into(), subject.into())),
        ..new_mailbox(address)
    }
}

/// The identity-liveness columns and the pass lease (`IdentityStore`), on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_liveness_rows_behave_the_same_on_every_backend() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let s = &*db.store;
        let clock = ManualClock::at(1000);
        s.create_domain(&domain("example.org")).await.unwrap();
        provision::create_mailbox(s, &clock, linked_mailbox("b@example.org", "s-b"))
            .await
            .unwrap();
        provision::create_mailbox(s, &clock, linked_mailbox("a@example.org", "s-a"))
            .await
            .unwrap();
        provision::create_mailbox(s, &clock, new_mailbox("local@example.org"))
            .await
            .unwrap();

        // Only linked mailboxes, by address; one by name; none for a local one.
        let linked = s.linked_mailboxes(None).await.unwrap();
        let names: Vec<&str> = linked.iter().map(|m| m.address.as_str()).collect();
        assert_eq!(
            names,
            ["a@example.org", "b@example.org"],
            "{}",
            backend.name()
        );
        assert_eq!(linked[0].subject, "s-a");
        assert_eq!(linked[0].issuer, "https://sso.example.org");
        assert!(linked[0].sealed_refresh_token.is_none() && linked[0].suspension.is_none());
        assert_eq!(
            s.linked_mailboxes(Some("b@example.org"))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(s
            .linked_mailboxes(Some("local@example.org"))
            .await
            .unwrap()
            .is_empty());
        assert!(s
            .linked_mailboxes(Some("nobody@example.org"))
            .await
            .unwrap()
            .is_empty());

        // A sign-in records its time and token; one without a token keeps the old one.
        s.record_sign_in("a@example.org", 2000, Some("v1.sealed-1"))
            .await
            .unwrap();
        s.record_sign_in("a@example.org", 2100, None).await.unwrap();
        let a = &s.linked_mailboxes(Some("a@example.org")).await.unwrap()[0];
        assert_eq!(a.sealed_refresh_token.as_deref(), Some("v1.sealed-1"));
        let view = s.login_view("a@example.org").await.unwrap().unwrap();
        assert_eq!(view.last_sign_in_at, Some(2100));
        assert_eq!(view.identity_suspended, None);
        s.store_refresh_token("a@example.org", Some("v1.sealed-2"))
            .await
            .unwrap();
        let a = &s.linked_mailboxes(Some("a@example.org")).await.unwrap()[0];
        assert_eq!(a.sealed_refresh_token.as_deref(), Some("v1.sealed-2"));
        assert!(matches!(
            s.store_refresh_token("nobody@example.org", None).await,
            Err(StoreError::NotFound(_))
        ));

        // A suspension bumps the credential generation once, and shows on both login reads.
        let before = s.session_view("a@example.org").await.unwrap().unwrap();
        assert!(s
            .suspend_identity("a@example.org", "identity_revoked", 3000)
            .await
            .unwrap());
        assert!(!s
            .suspend_identity("a@example.org", "identity_revoked", 3001)
            .await
            .unwrap());
        let after = s.session_view("a@example.org").await.unwrap().unwrap();
        assert_eq!(
            after.credential_generation,
            before.credential_generation + 1
        );
        let view = s.login_view("a@example.org").await.unwrap().unwrap();
        assert_eq!(view.identity_suspended.as_deref(), Some("identity_revoked"));
        let (view, none) = s
            .login_view_with_app_password("a@example.org", "no-such-hash")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.identity_suspended.as_deref(), Some("identity_revoked"));
        assert!(none.is_none());
        let a = &s.linked_mailboxes(Some("a@example.org")).await.unwrap()[0];
        assert_eq!(
            a.suspension,
            Some(Suspension {
                at: 3000,
                reason: "identity_revoked".into()
            })
        );
        s.record_identity_check("a@example.org", 3000, "invalid_grant")
            .await
            .unwrap();
        let standing = s.identity_standing("a@example.org").await.unwrap().unwrap();
        assert_eq!(
            standing,
            IdentityStanding {
                has_refresh_token: true,
                suspension: a.suspension.clone(),
                checked_at: Some(3000),
                answer: Some("invalid_grant".into()),
                last_sign_in_at: Some(2100),
            }
        );
        assert!(s
            .identity_standing("nobody@example.org")
            .await
            .unwrap()
            .is_none());

        // Nothing else changed: the mailbox is still active and there.
        let m = s.get_mailbox("a@example.org").await.unwrap().unwrap();
        assert_eq!(m.state, MailboxState::Active);

        // The next sign-in lifts the suspension, and the generation stays.
        s.record_sign_in("a@example.org", 4000, None).await.unwrap();
        let view = s.login_view("a@example.org").await.unwrap().unwrap();
        assert_eq!(view.identity_suspended, None);
        assert_eq!(view.last_sign_in_at, Some(4000));
        let lifted = s.session_view("a@example.org").await.unwrap().unwrap();
        assert_eq!(lifted.credential_generation, after.credential_generation);

        // The lease: one holder at a time, renewable by its holder, free once expired or given back.
        assert!(s.take_check_lease("one", 100, 400).await.unwrap());
        assert!(!s.take_check_lease("two", 200, 500).await.unwrap());
        assert!(s.take_check_lease("one", 300, 600).await.unwrap());
        assert!(!s.take_check_lease("two", 599, 900).await.unwrap());
        assert!(s.take_check_lease("two", 601, 900).await.unwrap());
        s.release_check_lease("one").await.unwrap();
        assert!(!s.take_check_lease("one", 700, 1000).await.unwrap());
        s.release_check_lease("two").await.unwrap();
        assert!(s.take_check_lease("one", 700, 1000).await.unwrap());

        db.finish().await;
        eprintln!("identity liveness rows passed on {}", backend.name());
    }
}

/// Takes the store at `url` back to before a migration with `statements`, then opens a
/// new store on it and requires that migrating it applies `migration` and nothing else.
async fn downgraded_then_upgraded(
    url: &str,
    statements: &[String],
    migration: &str,
    name: &str,
) -> SqlStore {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    for stmt in statements {
        sqlx::query(stmt.as_str()).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    // A new store, as after an upgrade: SQLite connections that saw the old schema
    // would not notice another connection's ALTER TABLE before their next statement.
    let upgraded = open(&common::options(url)).await.unwrap();
    assert_eq!(upgraded.migrate().await.unwrap(), [migration], "{name}");
    upgraded
}

/// Migration 0006 on a store with linked mailboxes: each gets a sign-in time of the
/// upgrade (so `max_days_without_sign_in` counts from there), a local one none; the lease
/// row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0006_starts_the_sign_in_count_at_the_upgrade_on_every_backend() {
    sqlx::any::install_default_drivers();
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let s = &*db.store;
        let name = backend.name();
        let clock = ManualClock::at(1000);
        s.create_domain(&domain("example.org")).await.unwrap();
        provision::create_mailbox(s, &clock, linked_mailbox("a@example.org", "s-a"))
            .await
            .unwrap();
        provision::create_mailbox(s, &clock, new_mailbox("local@example.org"))
            .await
            .unwrap();
        let mut statements: Vec<String> = [
            "refresh_token",
            "identity_suspended_at",
            "identity_suspended_reason",
            "identity_checked_at",
            "identity_answer",
            "last_sign_in_at",
        ]
        .iter()
        .map(|column| format!("ALTER TABLE mailboxes DROP COLUMN {column}"))
        .collect();
        statements.push("DROP TABLE identity_check_lease".into());
        statements.push("DELETE FROM mailauthd_migrations WHERE version = 6".into());
        let upgraded =
            downgraded_then_upgraded(&db.url, &statements, "0006_identity_liveness.sql", name)
                .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let a = upgraded.login_view("a@example.org").await.unwrap().unwrap();
        let at = a.last_sign_in_at.expect("linked: counted from the upgrade");
        assert!((now - at).abs() < 120, "{name}: {at} vs {now}");
        let local = upgraded
            .login_view("local@example.org")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(local.last_sign_in_at, None, "{name}");
        assert!(upgraded.take_check_lease("x", now, now + 10).await.unwrap());
        upgraded.close().await;
        db.finish().await;
        eprintln!("migration 0006 passed on {name}");
    }
}
