//! Apple configuration profiles (`.mobileconfig`) with a `com.apple.mail.managed` payload
//! for iPhone, iPad and Mac, signed as CMS when a certificate is configured.
//!
//! Choices, and why:
//! - One IMAP account (POP when only POP3 is allowed: the app password could not log in to
//!   IMAP). Apple's Mail payload has one incoming and one outgoing server; the outgoing one
//!   is required, so it is always given, with a password only when the app password may
//!   send mail.
//! - `…UseSSL` is `<true/>` only for TLS from the first byte; with `<false/>` Mail upgrades
//!   the connection with STARTTLS when the server offers it, which ours always does.
//! - The `PayloadIdentifier` and both `PayloadUUID`s come from the mailbox address through
//!   SHA-256, so installing a newer profile for the same mailbox replaces the old one
//!   instead of adding a second account, and the address itself is not in them.
//! - Signing uses PKCS#7 SignedData with the content inside (not detached) and the BINARY
//!   flag, so the XML is signed byte for byte, without S/MIME line-ending conversion: iOS
//!   reads the profile out of the signature.

use std::fmt::Write;
use std::path::Path;

use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::X509;
use quick_xml::escape::escape;
use sha2::{Digest, Sha256};

use super::{ClientSettings, DeviceAccount, MailApp, Security, Server, SetupError};
use crate::names::Protocol;

/// One value of a property list dictionary.
enum Value {
    Text(String),
    Integer(u16),
    Bool(bool),
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn write_dict(xml: &mut String, indent: &str, entries: &[(&str, Value)]) {
    for (key, value) in entries {
        let _ = write!(xml, "{indent}<key>{}</key>", escape(*key));
        let _ = match value {
            Value::Text(s) => writeln!(xml, "<string>{}</string>", escape(s.as_str())),
            Value::Integer(n) => writeln!(xml, "<integer>{n}</integer>"),
            Value::Bool(true) => writeln!(xml, "<true/>"),
            Value::Bool(false) => writeln!(xml, "<false/>"),
        };
    }
}

/// A name-based UUID: SHA-256 of `parts`, with the version (8, RFC 9562) and variant bits.
fn stable_uuid(parts: &[&str]) -> String {
    let digest = digest(parts);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn digest(parts: &[&str]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in parts {
        // The length first, so ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().to_vec()
}

/// The part of the identifier that names the mailbox: stable, and not the address.
fn mailbox_id(settings: &ClientSettings, address: &str) -> String {
    digest(&["mailbox", &settings.profile_identifier, address])[..10]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn server_entries(
    entries: &mut Vec<(&'static str, Value)>,
    keys: [&'static str; 6],
    server: &Server,
    username: &str,
    password: Option<&str>,
) {
    let [host, port, ssl, user, auth, pass] = keys;
    entries.push((host, text(server.host.as_str())));
    entries.push((port, Value::Integer(server.port)));
    entries.push((ssl, Value::Bool(server.security == Security::Tls)));
    entries.push((user, text(username)));
    entries.push((auth, text("EmailAuthPassword")));
    if let Some(password) = password {
        entries.push((pass, text(password)));
    }
}

/// The profile as an XML property list, unsigned.
pub fn profile(
    settings: &ClientSettings,
    account: &DeviceAccount<'_>,
    site: &str,
) -> Result<Vec<u8>, SetupError> {
    let MailApp {
        incoming,
        incoming_server,
        outgoing_server,
        outgoing_password,
        ..
    } = MailApp::choose(settings, account)?;
    let account_type = if incoming == Protocol::Imap {
        "EmailTypeIMAP"
    } else {
        "EmailTypePOP"
    };
    let identifier = format!(
        "{}.mailauthd.{}",
        settings.profile_identifier,
        mailbox_id(settings, account.address)
    );
    let uuid =
        |purpose: &str| stable_uuid(&[purpose, &settings.profile_identifier, account.address]);
    let account_name = if account.display_name.trim().is_empty() {
        account.address
    } else {
        account.display_name
    };

    let mut mail = vec![
        ("EmailAccountType", text(account_type)),
        ("EmailAddress", text(account.address)),
        ("EmailAccountName", text(account_name)),
        (
            "EmailAccountDescription",
            text(format!("{site} ({})", account.address)),
        ),
    ];
    server_entries(
        &mut mail,
        [
            "IncomingMailServerHostName",
            "IncomingMailServerPortNumber",
            "IncomingMailServerUseSSL",
            "IncomingMailServerUsername",
            "IncomingMailServerAuthentication",
            "IncomingPassword",
        ],
        incoming_server,
        account.address,
        account.password,
    );
    server_entries(
        &mut mail,
        [
            "OutgoingMailServerHostName",
            "OutgoingMailServerPortNumber",
            "OutgoingMailServerUseSSL",
            "OutgoingMailServerUsername",
            "OutgoingMailServerAuthentication",
            "OutgoingPassword",
        ],
        outgoing_server,
        account.address,
        outgoing_password,
    );
    mail.extend([
        ("PayloadType", text("com.apple.mail.managed")),
        ("PayloadVersion", Value::Integer(1)),
        ("PayloadIdentifier", text(format!("{identifier}.mail"))),
        ("PayloadUUID", text(uuid("mail"))),
        (
            "PayloadDisplayName",
            text(format!("Mail: {}", account.address)),
        ),
    ]);
    let top = [
        ("PayloadType", text("Configuration")),
        ("PayloadVersion", Value::Integer(1)),
        ("PayloadIdentifier", text(identifier.as_str())),
        ("PayloadUUID", text(uuid("profile"))),
        (
            "PayloadDisplayName",
            text(format!("{site}: {}", account.address)),
        ),
        (
            "PayloadDescription",
            text(format!("Sets up the mail account {}.", account.address)),
        ),
        ("PayloadRemovalDisallowed", Value::Bool(false)),
    ];

    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n<dict>\n  <key>PayloadContent</key>\n  <array>\n    <dict>\n",
    );
    write_dict(&mut xml, "      ", &mail);
    xml.push_str("    </dict>\n  </array>\n");
    write_dict(&mut xml, "  ", &top);
    xml.push_str("</dict>\n</plist>\n");
    Ok(xml.into_bytes())
}

/// The certificate and key that sign profiles, loaded once.
pub struct ProfileSigner {
    certificate: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// Why profiles cannot be signed: names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignerError(pub String);

impl ProfileSigner {
    /// The signing certificate's subject common name, as a device names the signer.
    pub fn signer_name(&self) -> Option<String> {
        self.certificate
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
    }

    /// `certificate`: PEM, the signer's certificate first, then any chain certificates;
    /// `key`: the signer's private key in PEM.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, SignerError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| SignerError(format!("cannot read {}: {e}", path.display())))
        };
        let mut certificates = X509::stack_from_pem(&read(certificate)?)
            .map_err(|_| SignerError(format!("{} is not PEM", certificate.display())))?
            .into_iter();
        let Some(signer) = certificates.next() else {
            return Err(SignerError(format!(
                "{} holds no PEM certificate",
                certificate.display()
            )));
        };
        // No detail from OpenSSL here: the error could quote the key file.
        let private = PKey::private_key_from_pem(&read(key)?)
            .map_err(|_| SignerError(format!("{} is not a PEM private key", key.display())))?;
        let matches = signer
            .public_key()
            .map(|public| public.public_eq(&private))
            .unwrap_or(false);
        if !matches {
            return Err(SignerError(format!(
                "the key in {} does not belong to the first certificate in {}",
                key.display(),
                certificate.display()
            )));
        }
        Ok(ProfileSigner {
            certificate: signer,
            chain: certificates.collect(),
            key: private,
        })
    }

    /// `profile` inside a CMS SignedData structure (DER), as iOS installs it.
    pub fn sign(&self, profile: &[u8]) -> Result<Vec<u8>, SignerError> {
        let failed = |e: openssl::error::ErrorStack| SignerError(format!("signing failed: {e}"));
        let mut chain = Stack::new().map_err(failed)?;
        for certificate in &self.chain {
            chain.push(certificate.clone()).map_err(failed)?;
        }
        Pkcs7::sign(
            &self.certificate,
            &self.key,
            &chain,
            profile,
            Pkcs7Flags::BINARY,
        )
        .and_then(|signed| signed.to_der())
        .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures;
    use crate::devices::fixtures::xml_leaves;

    type Dict = Vec<(String, String)>;

    /// The plist's dictionaries as (key, value) pairs, inner payload first.
    fn read_plist(bytes: &[u8]) -> (Dict, Dict) {
        let xml = std::str::from_utf8(bytes).unwrap();
        assert!(xml.contains("<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\""));
        let leaves = xml_leaves(xml);
        let (mut inner, mut outer) = (Vec::new(), Vec::new());
        let mut key = None;
        for (path, value) in leaves {
            if path.ends_with("/key") {
                key = Some((path.trim_end_matches("/key").to_string(), value));
                continue;
            }
            let Some((dict, k)) = key.take() else {
                assert_eq!(path, "plist/@version");
                continue;
            };
            let kind = path.rsplit('/').next().unwrap();
            let value = match kind {
                "true" | "false" => kind.to_string(),
                "integer" => format!("#{value}"),
                _ => value,
            };
            match dict.as_str() {
                "plist/dict/array/dict" => inner.push((k, value)),
                "plist/dict" => outer.push((k, value)),
                other => panic!("unexpected {other}"),
            }
        }
        (inner, outer)
    }

    fn get<'a>(dict: &'a [(String, String)], key: &str) -> Option<&'a str> {
        dict.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_imap_profile_holds_both_servers_and_passwords() {
        let account = fixtures::account("imap,smtp", Some("s3cret"));
        let bytes = profile(&fixtures::settings(), &account, "Example Mail").unwrap();
        let (mail, top) = read_plist(&bytes);
        let expect = [
            ("EmailAccountType", "EmailTypeIMAP"),
            ("EmailAddress", "jane@example.org"),
            ("EmailAccountName", "Jane Doe"),
            ("EmailAccountDescription", "Example Mail (jane@example.org)"),
            ("IncomingMailServerHostName", "imap.example.org"),
            ("IncomingMailServerPortNumber", "#993"),
            ("IncomingMailServerUseSSL", "true"),
            ("IncomingMailServerUsername", "jane@example.org"),
            ("IncomingMailServerAuthentication", "EmailAuthPassword"),
            ("IncomingPassword", "s3cret"),
            ("OutgoingMailServerHostName", "smtp.example.org"),
            ("OutgoingMailServerPortNumber", "#587"),
            ("OutgoingMailServerUseSSL", "false"),
            ("OutgoingMailServerUsername", "jane@example.org"),
            ("OutgoingMailServerAuthentication", "EmailAuthPassword"),
            ("OutgoingPassword", "s3cret"),
            ("PayloadType", "com.apple.mail.managed"),
            ("PayloadVersion", "#1"),
        ];
        for (key, value) in expect {
            assert_eq!(get(&mail, key), Some(value), "{key}");
        }
        let id = get(&top, "PayloadIdentifier").unwrap();
        assert!(id.starts_with("org.example.mail.mailauthd."), "{id}");
        assert_eq!(
            get(&mail, "PayloadIdentifier"),
            Some(&*format!("{id}.mail"))
        );
        assert_eq!(get(&top, "PayloadType"), Some("Configuration"));
        assert_eq!(get(&top, "PayloadVersion"), Some("#1"));
        assert_eq!(
            get(&top, "PayloadDisplayName"),
            Some("Example Mail: jane@example.org")
        );
        for dict in [&mail, &top] {
            let uuid = get(dict, "PayloadUUID").unwrap();
            assert_eq!(uuid.len(), 36);
            assert_eq!(&uuid[14..15], "8", "version 8: {uuid}");
            assert!("89AB".contains(&uuid[19..20]), "variant: {uuid}");
        }
        assert_ne!(get(&mail, "PayloadUUID"), get(&top, "PayloadUUID"));
    }

    #[test]
    fn passwords_go_only_where_the_app_password_may_log_in() {
        let reads_only = fixtures::account("imap", Some("s3cret"));
        let (mail, _) = read_plist(&profile(&fixtures::settings(), &reads_only, "M").unwrap());
        assert_eq!(get(&mail, "IncomingPassword"), Some("s3cret"));
        assert_eq!(get(&mail, "OutgoingPassword"), None);
        assert_eq!(
            get(&mail, "OutgoingMailServerHostName"),
            Some("smtp.example.org")
        );

        let template = fixtures::account("imap,smtp", None);
        let (mail, _) = read_plist(&profile(&fixtures::settings(), &template, "M").unwrap());
        assert_eq!(get(&mail, "IncomingPassword"), None);
        assert_eq!(get(&mail, "OutgoingPassword"), None);
    }

    #[test]
    fn pop_only_accounts_get_a_pop_profile() {
        let account = fixtures::account("pop3,smtp", Some("pw"));
        let (mail, _) = read_plist(&profile(&fixtures::settings(), &account, "M").unwrap());
        assert_eq!(get(&mail, "EmailAccountType"), Some("EmailTypePOP"));
        assert_eq!(
            get(&mail, "IncomingMailServerHostName"),
            Some("pop.example.org")
        );
        assert_eq!(get(&mail, "IncomingMailServerPortNumber"), Some("#995"));
    }

    #[test]
    fn accounts_that_cannot_read_mail_or_have_no_server_are_refused() {
        let settings = fixtures::settings();
        let send_only = fixtures::account("smtp,sieve", Some("pw"));
        assert_eq!(
            profile(&settings, &send_only, "M"),
            Err(SetupError::NoIncomingServer)
        );
        let mut no_imap = fixtures::settings();
        no_imap.imap = None;
        let account = fixtures::account("imap,smtp", Some("pw"));
        assert_eq!(
            profile(&no_imap, &account, "M"),
            Err(SetupError::NotOffered(Protocol::Imap))
        );
        let mut no_smtp = fixtures::settings();
        no_smtp.smtp = None;
        assert_eq!(
            profile(&no_smtp, &account, "M"),
            Err(SetupError::NotOffered(Protocol::Smtp))
        );
    }

    #[test]
    fn identifiers_are_stable_per_mailbox() {
        let settings = fixtures::settings();
        let ids = |address: &str, password: &str| {
            let mut account = fixtures::account("imap,smtp", Some(password));
            account.address = address;
            let (mail, top) = read_plist(&profile(&settings, &account, "M").unwrap());
            [
                get(&top, "PayloadIdentifier").unwrap().to_string(),
                get(&top, "PayloadUUID").unwrap().to_string(),
                get(&mail, "PayloadUUID").unwrap().to_string(),
            ]
        };
        let first = ids("jane@example.org", "one");
        assert_eq!(first, ids("jane@example.org", "two"));
        let other = ids("john@example.org", "one");
        for (a, b) in first.iter().zip(&other) {
            assert_ne!(a, b);
        }
        assert!(
            !first[0].contains("jane"),
            "the address stays out of the identifier"
        );
    }

    #[test]
    fn names_and_passwords_are_escaped() {
        let mut account = fixtures::account("imap,smtp", Some("a<b&c]]>"));
        account.display_name = "</string><key>x</key> & co";
        let site = "Mail & <Co>";
        let bytes = profile(&fixtures::settings(), &account, site).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("<Co>"));
        let (mail, top) = read_plist(&bytes);
        assert_eq!(get(&mail, "EmailAccountName"), Some(account.display_name));
        assert_eq!(get(&mail, "IncomingPassword"), Some("a<b&c]]>"));
        assert_eq!(get(&mail, "OutgoingPassword"), Some("a<b&c]]>"));
        assert_eq!(
            get(&top, "PayloadDisplayName"),
            Some("Mail & <Co>: jane@example.org")
        );
    }

    mod signing {
        use super::*;
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::hash::MessageDigest;
        use openssl::rsa::Rsa;
        use openssl::x509::extension::BasicConstraints;
        use openssl::x509::store::X509StoreBuilder;
        use openssl::x509::X509NameBuilder;

        fn key() -> PKey<Private> {
            PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
        }

        fn certificate(
            name: &str,
            key: &PKey<Private>,
            issuer: Option<(&X509, &PKey<Private>)>,
        ) -> X509 {
            let mut subject = X509NameBuilder::new().unwrap();
            subject.append_entry_by_text("CN", name).unwrap();
            let subject = subject.build();
            let mut b = X509::builder().unwrap();
            b.set_version(2).unwrap();
            let serial = BigNum::from_u32(name.len() as u32 + 1).unwrap();
            b.set_serial_number(&serial.to_asn1_integer().unwrap())
                .unwrap();
            b.set_subject_name(&subject).unwrap();
            b.set_pubkey(key).unwrap();
            b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
                .unwrap();
            let (issuer_name, signing_key) = match issuer {
                Some((ca, ca_key)) => (ca.subject_name().to_owned().unwrap(), ca_key),
                None => {
                    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                        .unwrap();
                    (subject, key)
                }
            };
            b.set_issuer_name(&issuer_name).unwrap();
            b.sign(signing_key, MessageDigest::sha256()).unwrap();
            b.build()
        }

        struct Files {
            dir: tempfile::TempDir,
            ca: X509,
        }

        impl Files {
            fn new() -> Self {
                let dir = tempfile::tempdir().unwrap();
                let ca_key = key();
                let ca = certificate("Test CA", &ca_key, None);
                let signer_key = key();
                let signer = certificate("Profile signer", &signer_key, Some((&ca, &ca_key)));
                let mut pem = signer.to_pem().unwrap();
                pem.extend(ca.to_pem().unwrap());
                std::fs::write(dir.path().join("cert.pem"), pem).unwrap();
                std::fs::write(
                    dir.path().join("key.pem"),
                    signer_key.private_key_to_pem_pkcs8().unwrap(),
                )
                .unwrap();
                std::fs::write(
                    dir.path().join("other-key.pem"),
                    key().private_key_to_pem_pkcs8().unwrap(),
                )
                .unwrap();
                Files { dir, ca }
            }

            fn path(&self, name: &str) -> std::path::PathBuf {
                self.dir.path().join(name)
            }

            /// Why the signer of these two files cannot be loaded.
            fn load_error(&self, certificate: &str, key: &str) -> SignerError {
                ProfileSigner::load(&self.path(certificate), &self.path(key))
                    .err()
                    .unwrap()
            }
        }

        #[test]
        fn a_signed_profile_verifies_and_carries_the_profile() {
            let files = Files::new();
            let signer =
                ProfileSigner::load(&files.path("cert.pem"), &files.path("key.pem")).unwrap();
            assert_eq!(signer.chain.len(), 1);
            assert_eq!(signer.signer_name().as_deref(), Some("Profile signer"));
            let account = fixtures::account("imap,smtp", Some("pw"));
            let profile = profile(&fixtures::settings(), &account, "Example").unwrap();
            let der = signer.sign(&profile).unwrap();

            let signed = Pkcs7::from_der(&der).unwrap();
            let mut store = X509StoreBuilder::new().unwrap();
            store.add_cert(files.ca.clone()).unwrap();
            let store = store.build();
            let mut content = Vec::new();
            signed
                .verify(
                    &Stack::new().unwrap(),
                    &store,
                    None,
                    Some(&mut content),
                    Pkcs7Flags::BINARY,
                )
                .unwrap();
            assert_eq!(content, profile);

            let mut other_store = X509StoreBuilder::new().unwrap();
            let stranger_key = key();
            other_store
                .add_cert(certificate("Other CA", &stranger_key, None))
                .unwrap();
            let refused = signed.verify(
                &Stack::new().unwrap(),
                &other_store.build(),
                None,
                None,
                Pkcs7Flags::BINARY,
            );
            assert!(refused.is_err(), "verified against a CA that did not sign");
        }

        #[test]
        fn a_key_that_does_not_match_is_refused() {
            let files = Files::new();
            let err = files.load_error("cert.pem", "other-key.pem");
            assert!(err.0.contains("does not belong"), "{err}");
            assert!(err.0.contains("other-key.pem"), "{err}");
        }

        #[test]
        fn missing_and_non_pem_files_are_named() {
            let files = Files::new();
            let err = files.load_error("nope.pem", "key.pem");
            assert!(
                err.0.contains("cannot read") && err.0.contains("nope.pem"),
                "{err}"
            );
            std::fs::write(files.path("junk.pem"), "not a certificate").unwrap();
            let err = files.load_error("junk.pem", "key.pem");
            assert!(err.0.contains("junk.pem"), "{err}");
            let err = files.load_error("cert.pem", "junk.pem");
            assert!(err.0.contains("not a PEM private key"), "{err}");
        }
    }
}
