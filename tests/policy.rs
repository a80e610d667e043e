//! The policy decision table, and the store lookups behind it, on every backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use mailauthd::clock::ManualClock;
use mailauthd::names::{Address, Protocols};
use mailauthd::policy::{Decision, DecisionError, NullSender, PolicyService, PolicySettings};
use mailauthd::proto::postfix_policy::PolicyRequest;
use mailauthd::provision::{self, MailboxChanges, NewMailbox};
use mailauthd::store::*;

const NOW: i64 = 1_800_000_000;

fn domain(name: &str, active: bool) -> Domain {
    Domain {
        name: name.into(),
        active,
        max_mailboxes: None,
        max_quota: None,
        total_quota: None,
        created_at: 0,
    }
}

async fn mailbox(s: &dyn Store, address: &str, state: MailboxState, protocols: &str) {
    mailbox_with(s, address, state, protocols, None).await;
}

async fn mailbox_with(
    s: &dyn Store,
    address: &str,
    state: MailboxState,
    protocols: &str,
    template: Option<&str>,
) {
    let new = NewMailbox {
        address: Address::parse(address).unwrap(),
        password_hash: None,
        auth_source: AuthSource::Local,
        display_name: String::new(),
        quota: None,
        protocols: Some(Protocols::parse_list(protocols).unwrap()),
        state: Some(state),
        template: template.map(str::to_string),
        oidc_identity: None,
        require_active_domain: false,
    };
    provision::create_mailbox(s, &ManualClock::at(NOW), new)
        .await
        .unwrap();
}

async fn template(s: &dyn Store, name: &str, limits: &str) {
    s.create_template(&Template {
        name: name.into(),
        quota: 0,
        protocols: Protocols::ALL,
        state: MailboxState::Active,
        created_at: NOW,
        updated_at: NOW,
    })
    .await
    .unwrap();
    s.set_template_send_limits(name, Some(&limits.parse().unwrap()), NOW)
        .await
        .unwrap();
}

async fn alias(s: &dyn Store, address: &str, targets: &[&str]) {
    for target in targets {
        s.add_alias(&Alias {
            address: address.into(),
            target: (*target).into(),
            domain: address.rsplit_once('@').unwrap().1.into(),
            created_at: NOW,
        })
        .await
        .unwrap();
    }
}

async fn grant(s: &dyn Store, mailbox: &str, pattern: &str) {
    s.grant_send_as(&SendAs {
        mailbox: mailbox.into(),
        pattern: pattern.into(),
        created_at: NOW,
    })
    .await
    .unwrap();
}

async fn setup(s: &dyn Store) {
    s.create_domain(&domain("example.org", true)).await.unwrap();
    s.create_domain(&domain("example.net", true)).await.unwrap();
    s.create_domain(&domain("off.example", false))
        .await
        .unwrap();
    for (name, active) in [("alias.example", true), ("old.example", false)] {
        s.create_alias_domain(&AliasDomain {
            name: name.into(),
            target: "example.org".into(),
            active,
            created_at: NOW,
        })
        .await
        .unwrap();
    }
    template(s, "limited", "1h:2:3").await;
    template(s, "unlimited", "none").await;
    use MailboxState::*;
    for address in [
        "alice@example.org",
        "bob@example.org",
        "addr@example.org",
        "dom@example.org",
        "all@example.org",
    ] {
        mailbox(s, address, Active, "all").await;
    }
    mailbox(s, "disabled@example.org", Disabled, "all").await;
    mailbox(s, "nologin@example.org", NoLogin, "all").await;
    mailbox(s, "nosmtp@example.org", Active, "imap,pop3").await;
    mailbox(s, "user@off.example", Active, "all").await;
    mailbox_with(s, "carol@example.org", Active, "all", Some("limited")).await;
    mailbox_with(s, "dave@example.org", Active, "all", Some("unlimited")).await;
    alias(
        s,
        "sales@example.org",
        &["alice@example.org", "bob@example.org"],
    )
    .await;
    alias(s, "info@example.org", &["alice@example.org"]).await;
    grant(s, "addr@example.org", "boss@example.org").await;
    grant(s, "dom@example.org", "@example.net").await;
    grant(s, "all@example.org", "*").await;
}

fn request(user: Option<&str>, sender: Option<&str>) -> PolicyRequest {
    PolicyRequest {
        request: "smtpd_access_policy".into(),
        protocol_state: Some("RCPT".into()),
        protocol_name: Some("ESMTP".into()),
        sender: sender.map(str::to_string),
        recipient: Some("friend@example.com".into()),
        recipient_count: Some(0),
        client_address: Some("198.51.100.7".parse().unwrap()),
        instance: Some("a1b2.66f0c3d1.1234.0".into()),
        sasl_method: user.map(|_| "PLAIN".into()),
        sasl_username: user.map(str::to_string),
        ..PolicyRequest::default()
    }
}

fn rcpt(user: &str, instance: &str, recipient: &str) -> PolicyRequest {
    PolicyRequest {
        instance: Some(instance.into()),
        recipient: Some(recipient.into()),
        ..request(Some(user), Some(user))
    }
}

fn service(store: Arc<dyn Store>, clock: &ManualClock, settings: PolicySettings) -> PolicyService {
    PolicyService::new(store, Arc::new(clock.clone()), settings)
}

async fn decide(p: &PolicyService, req: &PolicyRequest) -> Decision {
    p.decide(req)
        .await
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

fn expect(d: &Decision, label: &str, reason: &str, row: &str, backend: &str) {
    assert_eq!(
        (d.label(), d.reason().code()),
        (label, reason),
        "{backend}: row {row:?} gave {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decisions_on_every_backend() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let b = backend.name();
        setup(&*db.store).await;
        sender_ownership(&db, b).await;
        delimiters_never_reach_other_addresses(&db, b).await;
        access_rechecks(&db, b).await;
        null_sender_settings(&db, b).await;
        unauthenticated_sessions(&db, b).await;
        sending_limits(&db, b).await;
        store_lookups(&*db.store, b).await;
        store_trouble(&db, b).await;
        eprintln!("policy decisions passed on {b}");
        db.finish().await;
    }
}

/// row, sasl_username, sender, action, reason
type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a str, &'a str);

#[rustfmt::skip]
async fn sender_ownership(db: &common::TestDb, b: &str) {
    let p = service(db.dyn_store(), &ManualClock::at(NOW), PolicySettings::default());
    let rows: &[Row] = &[
        // row, sasl_username, sender, action, reason
        ("own address", Some("alice@example.org"), Some("alice@example.org"), "dunno", "own_address"),
        ("own address, other case", Some("alice@example.org"), Some("Alice@Example.ORG"), "dunno", "own_address"),
        ("login name in capitals", Some("ALICE@example.org"), Some("alice@example.org"), "dunno", "own_address"),
        ("sub-address", Some("alice@example.org"), Some("alice+news@example.org"), "dunno", "subaddress"),
        ("alias", Some("alice@example.org"), Some("info@example.org"), "dunno", "alias"),
        ("multi-target alias, first", Some("alice@example.org"), Some("sales@example.org"), "dunno", "alias"),
        ("multi-target alias, second", Some("bob@example.org"), Some("sales@example.org"), "dunno", "alias"),
        ("sub-address of an alias", Some("bob@example.org"), Some("sales+q3@example.org"), "dunno", "alias"),
        ("alias domain", Some("alice@example.org"), Some("alice@alias.example"), "dunno", "alias_domain"),
        ("alias domain, sub-address", Some("alice@example.org"), Some("alice+x@alias.example"), "dunno", "alias_domain"),
        ("alias in an alias domain", Some("bob@example.org"), Some("sales@alias.example"), "dunno", "alias"),
        ("inactive alias domain", Some("alice@example.org"), Some("alice@old.example"), "reject", "not_owned"),
        ("send-as address", Some("addr@example.org"), Some("boss@example.org"), "dunno", "send_as"),
        ("send-as address, sub-address", Some("addr@example.org"), Some("boss+x@example.org"), "dunno", "send_as"),
        ("send-as address, other address", Some("addr@example.org"), Some("boss2@example.org"), "reject", "not_owned"),
        ("send-as domain", Some("dom@example.org"), Some("anyone@example.net"), "dunno", "send_as"),
        ("send-as domain, other domain", Some("dom@example.org"), Some("anyone@example.com"), "reject", "not_owned"),
        ("send-as everything", Some("all@example.org"), Some("ceo@anywhere.example"), "dunno", "send_as"),
        ("send-as everything, not an address", Some("all@example.org"), Some("postmaster"), "dunno", "send_as"),
        ("someone else's address", Some("alice@example.org"), Some("bob@example.org"), "reject", "not_owned"),
        ("someone else's alias", Some("carol@example.org"), Some("sales@example.org"), "reject", "not_owned"),
        ("foreign address", Some("alice@example.org"), Some("alice@example.com"), "reject", "not_owned"),
        ("sender not an address", Some("alice@example.org"), Some("alice"), "reject", "not_owned"),
        ("delimiter first is no sub-address", Some("alice@example.org"), Some("+alice@example.org"), "reject", "not_owned"),
        ("null sender, allowed by default", Some("alice@example.org"), Some(""), "dunno", "null_sender_allowed"),
        ("before MAIL FROM", Some("alice@example.org"), None, "dunno", "no_sender"),
        ("disabled mailbox", Some("disabled@example.org"), Some("disabled@example.org"), "reject", "mailbox_disabled"),
        ("mailbox that may not log in", Some("nologin@example.org"), Some("nologin@example.org"), "reject", "mailbox_no_login"),
        ("SMTP not allowed", Some("nosmtp@example.org"), Some("nosmtp@example.org"), "reject", "smtp_not_allowed"),
        ("domain inactive", Some("user@off.example"), Some("user@off.example"), "reject", "domain_disabled"),
        ("unknown mailbox", Some("ghost@example.org"), Some("ghost@example.org"), "reject", "mailbox_unknown"),
        ("login not an address", Some("alice"), Some("alice@example.org"), "reject", "mailbox_unknown"),
        ("unauthenticated", None, Some("alice@example.org"), "dunno", "unauthenticated"),
        ("unauthenticated, foreign sender", None, Some("x@example.com"), "dunno", "unauthenticated"),
    ];
    for (row, user, sender, label, reason) in rows {
        let d = decide(&p, &request(*user, *sender)).await;
        expect(&d, label, reason, row, b);
    }

    // The reply texts Postfix passes on.
    let d = decide(&p, &request(Some("alice@example.org"), Some("bob@example.org"))).await;
    assert_eq!(d, Decision::Reject(mailauthd::policy::Reason::NotOwned, "5.7.1 <bob@example.org>: not owned by alice@example.org".into()), "{b}");
    let d = decide(&p, &request(Some("nosmtp@example.org"), Some("nosmtp@example.org"))).await;
    assert_eq!(format!("{:?}", d.action()), "Reject(\"5.7.1 <nosmtp@example.org>: this account may not send mail\")", "{b}");
}

/// With several delimiters, a cut at one of them must not land on the sender's own mailbox
/// when the whole address is another mailbox or alias: Postfix looks the whole address up
/// first, and so does the policy.
#[rustfmt::skip]
async fn delimiters_never_reach_other_addresses(db: &common::TestDb, b: &str) {
    let s = &*db.store;
    mailbox(s, "alice-bob@example.org", MailboxState::Active, "all").await;
    alias(s, "alice-team@example.org", &["bob@example.org"]).await;
    alias(s, "sales-eu@example.org", &["carol@example.org"]).await;
    for (address, exists) in [
        ("alice-bob@example.org", true),
        ("alice-team@example.org", true),
        ("alice-x@example.org", false),
        ("alice-bob@alias.example", false),
    ] {
        assert_eq!(s.address_exists(address).await.unwrap(), exists, "{b}: {address}");
    }
    let settings = PolicySettings { subaddress_delimiters: "+-".into(), ..PolicySettings::default() };
    let p = service(db.dyn_store(), &ManualClock::at(NOW), settings);
    let rows: &[Row] = &[
        ("'+' tag", Some("alice@example.org"), Some("alice+x@example.org"), "dunno", "subaddress"),
        ("'-' tag, no such address", Some("alice@example.org"), Some("alice-x@example.org"), "dunno", "subaddress"),
        ("another mailbox behind '-'", Some("alice@example.org"), Some("alice-bob@example.org"), "reject", "not_owned"),
        ("another mailbox, other case", Some("alice@example.org"), Some("Alice-Bob@example.org"), "reject", "not_owned"),
        ("an alias of someone else behind '-'", Some("alice@example.org"), Some("alice-team@example.org"), "reject", "not_owned"),
        ("the alias's own target", Some("bob@example.org"), Some("alice-team@example.org"), "dunno", "alias"),
        ("the other mailbox itself", Some("alice-bob@example.org"), Some("alice-bob@example.org"), "dunno", "own_address"),
        ("the other mailbox through an alias domain", Some("alice@example.org"), Some("alice-bob@alias.example"), "reject", "not_owned"),
        ("'-' tag through an alias domain", Some("alice@example.org"), Some("alice-x@alias.example"), "dunno", "alias_domain"),
        ("an alias of someone else, not the base alias", Some("bob@example.org"), Some("sales-eu@example.org"), "reject", "not_owned"),
        ("a tag of an alias still is the alias", Some("bob@example.org"), Some("sales-x@example.org"), "dunno", "alias"),
    ];
    for (row, user, sender, label, reason) in rows {
        let d = decide(&p, &request(*user, *sender)).await;
        expect(&d, label, reason, row, b);
    }
    // With '+' only, '-' is part of the local part and cuts nothing.
    let p = service(db.dyn_store(), &ManualClock::at(NOW), PolicySettings::default());
    let d = decide(&p, &request(Some("alice@example.org"), Some("alice-x@example.org"))).await;
    expect(&d, "reject", "not_owned", "'-' with '+' only", b);
}

/// A mailbox that loses its right to send after logging in is refused at its next request.
#[rustfmt::skip]
async fn access_rechecks(db: &common::TestDb, b: &str) {
    let s = &*db.store;
    let clock = ManualClock::at(NOW);
    let p = service(db.dyn_store(), &clock, PolicySettings::default());
    let alice = Address::parse("alice@example.org").unwrap();
    let req = request(Some("alice@example.org"), Some("alice@example.org"));
    let change = |c: MailboxChanges| provision::update_mailbox(s, &clock, &alice, c);
    expect(&decide(&p, &req).await, "dunno", "own_address", "before", b);

    change(MailboxChanges { state: Some(MailboxState::Disabled), ..Default::default() }).await.unwrap();
    expect(&decide(&p, &req).await, "reject", "mailbox_disabled", "disabled after login", b);
    change(MailboxChanges { state: Some(MailboxState::Active), ..Default::default() }).await.unwrap();
    expect(&decide(&p, &req).await, "dunno", "own_address", "enabled again", b);

    change(MailboxChanges { protocols: Some(Protocols::parse_list("imap").unwrap()), ..Default::default() }).await.unwrap();
    expect(&decide(&p, &req).await, "reject", "smtp_not_allowed", "SMTP removed after login", b);
    change(MailboxChanges { protocols: Some(Protocols::ALL), ..Default::default() }).await.unwrap();

    s.update_domain(&domain("example.org", false)).await.unwrap();
    expect(&decide(&p, &req).await, "reject", "domain_disabled", "domain disabled after login", b);
    s.update_domain(&domain("example.org", true)).await.unwrap();

    s.delete_alias("info@example.org", None).await.unwrap();
    let info = request(Some("alice@example.org"), Some("info@example.org"));
    expect(&decide(&p, &info).await, "reject", "not_owned", "alias removed after login", b);
    alias(s, "info@example.org", &["alice@example.org"]).await;
    expect(&decide(&p, &info).await, "dunno", "alias", "alias back", b);
    expect(&decide(&p, &req).await, "dunno", "own_address", "after", b);
}

#[rustfmt::skip]
async fn null_sender_settings(db: &common::TestDb, b: &str) {
    let refuse = PolicySettings { null_sender: NullSender::Refuse, ..PolicySettings::default() };
    let p = service(db.dyn_store(), &ManualClock::at(NOW), refuse);
    let d = decide(&p, &request(Some("alice@example.org"), Some(""))).await;
    expect(&d, "reject", "null_sender_refused", "null sender refused", b);
    assert_eq!(format!("{:?}", d.action()), "Reject(\"5.7.1 <>: the null sender is not allowed for alice@example.org\")");
    // Unauthenticated bounces are none of this rule's business.
    expect(&decide(&p, &request(None, Some(""))).await, "dunno", "unauthenticated", "unauthenticated bounce", b);
    // The access re-check still comes first.
    expect(&decide(&p, &request(Some("disabled@example.org"), Some(""))).await, "reject", "mailbox_disabled", "disabled, null sender", b);
}

#[rustfmt::skip]
async fn unauthenticated_sessions(db: &common::TestDb, b: &str) {
    let settings = PolicySettings {
        refuse_forged_local_senders: true,
        trusted_networks: vec!["192.0.2.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
        ..PolicySettings::default()
    };
    let p = service(db.dyn_store(), &ManualClock::at(NOW), settings);
    let from = |sender: &str, rip: &str| PolicyRequest {
        client_address: Some(rip.parse::<IpAddr>().unwrap()),
        ..request(None, Some(sender))
    };
    let outside = "198.51.100.7";
    let rows: &[(&str, PolicyRequest, &str, &str)] = &[
        ("forged local sender", from("alice@example.org", outside), "reject", "forged_local_sender"),
        ("forged, unknown local part", from("nobody@example.org", outside), "reject", "forged_local_sender"),
        ("forged, alias domain", from("alice@alias.example", outside), "reject", "forged_local_sender"),
        ("forged, inactive domain", from("x@off.example", outside), "reject", "forged_local_sender"),
        ("foreign sender", from("x@example.com", outside), "dunno", "unauthenticated"),
        ("null sender", from("", outside), "dunno", "unauthenticated"),
        ("not an address", from("alice", outside), "dunno", "unauthenticated"),
        ("trusted network", from("alice@example.org", "192.0.2.25"), "dunno", "trusted_network"),
        ("trusted network, mapped IPv4", from("alice@example.org", "::ffff:192.0.2.25"), "dunno", "trusted_network"),
        ("trusted network, IPv6", from("alice@example.org", "2001:db8::25"), "dunno", "trusted_network"),
        ("no client address", PolicyRequest { client_address: None, ..from("alice@example.org", outside) }, "reject", "forged_local_sender"),
    ];
    for (row, req, label, reason) in rows {
        expect(&decide(&p, req).await, label, reason, row, b);
    }
    let d = decide(&p, &from("alice@example.org", outside)).await;
    assert_eq!(format!("{:?}", d.action()), "Reject(\"5.7.1 <alice@example.org>: authentication required to send as this address\")");
    // Authenticated sessions are judged by ownership instead.
    let own = request(Some("alice@example.org"), Some("alice@example.org"));
    expect(&decide(&p, &own).await, "dunno", "own_address", "authenticated with the option on", b);
}

#[rustfmt::skip]
async fn sending_limits(db: &common::TestDb, b: &str) {
    let clock = ManualClock::at(NOW);
    let settings = PolicySettings {
        default_limits: "1h:2:-".parse().unwrap(),
        trusted_networks: vec!["192.0.2.0/24".parse().unwrap()],
        ..PolicySettings::default()
    };
    let p = service(db.dyn_store(), &clock, settings);
    let alice = "alice@example.org";

    // Messages, from the global default: two per hour, each counted once however many
    // requests it causes (two recipients, asked twice each, then END-OF-MESSAGE).
    for recipient in ["a@example.com", "a@example.com", "b@example.com", "b@example.com"] {
        expect(&decide(&p, &rcpt(alice, "m1", recipient)).await, "dunno", "own_address", "message 1", b);
    }
    let eom = PolicyRequest { protocol_state: Some("END-OF-MESSAGE".into()), recipient: None, recipient_count: Some(2), ..rcpt(alice, "m1", "") };
    expect(&decide(&p, &eom).await, "dunno", "own_address", "message 1 end", b);
    expect(&decide(&p, &rcpt(alice, "m2", "a@example.com")).await, "dunno", "own_address", "message 2", b);
    let over = decide(&p, &rcpt(alice, "m3", "a@example.com")).await;
    expect(&over, "defer_if_permit", "message_limit", "message 3", b);
    assert_eq!(format!("{:?}", over.action()), "DeferIfPermit(\"4.7.1 <alice@example.org>: sending limit of 2 messages per 1h reached, try again later\")");
    let mail = PolicyRequest { protocol_state: Some("MAIL".into()), recipient: None, ..rcpt(alice, "m3", "") };
    expect(&decide(&p, &mail).await, "defer_if_permit", "message_limit", "MAIL while over", b);
    // A further recipient of a message already counted is no new message.
    expect(&decide(&p, &rcpt(alice, "m2", "c@example.com")).await, "dunno", "own_address", "message 2, more recipients", b);
    // Trusted networks are exempt; other users have their own counters.
    let trusted = PolicyRequest { client_address: Some("192.0.2.9".parse().unwrap()), ..rcpt(alice, "m4", "a@example.com") };
    expect(&decide(&p, &trusted).await, "dunno", "own_address", "trusted network", b);
    expect(&decide(&p, &rcpt("bob@example.org", "m5", "a@example.com")).await, "dunno", "own_address", "another user", b);
    // Ownership is decided before limits: a refused sender is refused, not deferred.
    let foreign = PolicyRequest { sender: Some("bob@example.org".into()), ..rcpt(alice, "m6", "a@example.com") };
    expect(&decide(&p, &foreign).await, "reject", "not_owned", "not owned while over the limit", b);
    clock.advance(3600);
    expect(&decide(&p, &rcpt(alice, "m3", "a@example.com")).await, "dunno", "own_address", "an hour later", b);

    // Recipients, from carol's template (1h:2:3), each counted once per message.
    let carol = "carol@example.org";
    for (instance, recipient) in [("c1", "a@example.com"), ("c1", "b@example.com"), ("c1", "a@example.com"), ("c2", "c@example.com")] {
        expect(&decide(&p, &rcpt(carol, instance, recipient)).await, "dunno", "own_address", "carol within limits", b);
    }
    let over = decide(&p, &rcpt(carol, "c2", "d@example.com")).await;
    expect(&over, "defer_if_permit", "recipient_limit", "carol's fourth recipient", b);
    assert_eq!(format!("{:?}", over.action()), "DeferIfPermit(\"4.7.1 <carol@example.org>: sending limit of 3 recipients per 1h reached, try again later\")");
    expect(&decide(&p, &rcpt(carol, "c2", "c@example.com")).await, "dunno", "own_address", "carol's counted recipient again", b);

    // dave's template says "none": no limits, whatever the default.
    for i in 0..10 {
        expect(&decide(&p, &rcpt("dave@example.org", &format!("d{i}"), "a@example.com")).await, "dunno", "own_address", "dave unlimited", b);
    }
    // A template's limits apply from its next request on.
    db.store.set_template_send_limits("unlimited", Some(&"1d:1:-".parse().unwrap()), NOW).await.unwrap();
    expect(&decide(&p, &rcpt("dave@example.org", "d10", "a@example.com")).await, "dunno", "own_address", "dave's first limited message", b);
    expect(&decide(&p, &rcpt("dave@example.org", "d11", "a@example.com")).await, "defer_if_permit", "message_limit", "dave limited now", b);
    db.store.set_template_send_limits("unlimited", Some(&SendLimits::none()), NOW).await.unwrap();
    assert!(p.counted_users() >= 3);
}

async fn store_lookups(s: &dyn Store, b: &str) {
    let view = s
        .sender_account("carol@example.org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.domain, "example.org", "{b}");
    assert_eq!(view.send_limits.unwrap().to_string(), "1h:2:3", "{b}");
    let alice = s
        .sender_account("alice@example.org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.send_limits, None, "{b}: no template, default limits");
    assert_eq!(s.sender_account("ghost@example.org").await.unwrap(), None);

    assert_eq!(
        s.served_domain("example.org").await.unwrap(),
        Some(ServedDomain::Domain { active: true }),
        "{b}"
    );
    assert_eq!(
        s.served_domain("off.example").await.unwrap(),
        Some(ServedDomain::Domain { active: false }),
        "{b}"
    );
    assert_eq!(
        s.served_domain("old.example").await.unwrap(),
        Some(ServedDomain::Alias {
            target: "example.org".into(),
            active: false
        }),
        "{b}"
    );
    assert_eq!(s.served_domain("example.com").await.unwrap(), None, "{b}");

    let addresses = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    grant(s, "bob@example.org", "*").await;
    grant(s, "bob@example.org", "@example.org").await;
    // An alias names the more specific rule even when a grant also matches.
    assert_eq!(
        s.send_permission("bob@example.org", &addresses(&["sales@example.org"]))
            .await
            .unwrap(),
        Some(SendPermission::Alias {
            address: "sales@example.org".into()
        }),
        "{b}"
    );
    assert_eq!(
        s.send_permission("bob@example.org", &addresses(&["info@example.org"]))
            .await
            .unwrap(),
        Some(SendPermission::SendAs {
            pattern: "@example.org".into()
        }),
        "{b}"
    );
    assert_eq!(
        s.send_permission("bob@example.org", &[]).await.unwrap(),
        Some(SendPermission::SendAs {
            pattern: "*".into()
        }),
        "{b}"
    );
    s.revoke_send_as("bob@example.org", "*").await.unwrap();
    s.revoke_send_as("bob@example.org", "@example.org")
        .await
        .unwrap();
    assert_eq!(
        s.send_permission("bob@example.org", &addresses(&["info@example.org"]))
            .await
            .unwrap(),
        None,
        "{b}"
    );

    // Template limits: set, replace, back to the default, and gone with the template.
    assert_eq!(
        s.template_send_limits("limited")
            .await
            .unwrap()
            .map(|l| l.to_string()),
        Some("1h:2:3".into()),
        "{b}"
    );
    template(s, "temp", "1m:1:1").await;
    s.set_template_send_limits("temp", Some(&"1d:5:-".parse().unwrap()), NOW)
        .await
        .unwrap();
    assert_eq!(
        s.template_send_limits("temp")
            .await
            .unwrap()
            .map(|l| l.to_string()),
        Some("1d:5:-".into())
    );
    s.set_template_send_limits("temp", None, NOW).await.unwrap();
    assert_eq!(s.template_send_limits("temp").await.unwrap(), None, "{b}");
    s.set_template_send_limits("temp", Some(&SendLimits::none()), NOW)
        .await
        .unwrap();
    s.delete_template("temp").await.unwrap();
    assert_eq!(s.template_send_limits("temp").await.unwrap(), None, "{b}");
    assert!(
        matches!(
            s.set_template_send_limits("ghost", Some(&SendLimits::none()), NOW)
                .await,
            Err(StoreError::NotFound(_))
        ),
        "{b}"
    );
}

/// With the store gone there is no answer: an error, never a guess.
async fn store_trouble(db: &common::TestDb, b: &str) {
    let p = service(
        db.dyn_store(),
        &ManualClock::at(NOW),
        PolicySettings {
            refuse_forged_local_senders: true,
            ..PolicySettings::default()
        },
    );
    db.store.close().await;
    for req in [
        request(Some("alice@example.org"), Some("alice@example.org")),
        request(Some("alice@example.org"), Some("sales@example.org")),
        request(None, Some("alice@example.org")),
    ] {
        match p.decide(&req).await {
            Err(DecisionError::Store(e)) => assert!(e.is_unavailable(), "{b}: {e:?}"),
            other => panic!("{b}: expected a store error, got {other:?}"),
        }
    }
    // A request that needs no lookup is still answered.
    let settings = PolicySettings::default();
    let p = service(db.dyn_store(), &ManualClock::at(NOW), settings);
    expect(
        &decide(&p, &request(None, Some("alice@example.org"))).await,
        "dunno",
        "unauthenticated",
        "unauthenticated without lookups",
        b,
    );
}
