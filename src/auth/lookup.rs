//! Whether an address has a mailbox that receives mail: the rule behind the userdb
//! socket, where Dovecot's LMTP and chasquid ask before they accept a message.
//!
//! The rule, on the store's login view of the normalised address:
//!
//! 1. a name that is not a valid address has no mailbox;
//! 2. no mailbox, no recipient;
//! 3. the mailbox's domain must be active;
//! 4. the mailbox must not be `Disabled`: `Active` and `NoLogin` both receive mail
//!    (`NoLogin` only may not log in).
//!
//! No password, protocol or throttle is involved: this is not a login. The quota comes
//! along so the door can pass it on.

use crate::names::Address;
use crate::store::{LoginView, MailboxState, Store, StoreError};

/// A mailbox that receives mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The canonical address, as stored.
    pub address: String,
    /// Bytes; 0 when the mailbox has no quota.
    pub quota: u64,
}

/// Rules 3 and 4 on what the store holds for an address.
pub fn recipient(view: LoginView) -> Option<Recipient> {
    let receives = view.domain_active && view.state != MailboxState::Disabled;
    receives.then_some(Recipient {
        address: view.address,
        quota: view.quota,
    })
}

/// The recipient `user` names, if any. An error is the store's, and means "try again
/// later", never "no such mailbox".
pub async fn find_recipient(
    store: &dyn Store,
    user: &str,
) -> Result<Option<Recipient>, StoreError> {
    let Ok(address) = Address::parse(user) else {
        return Ok(None);
    };
    Ok(store
        .login_view(address.as_str())
        .await?
        .and_then(recipient))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::names::Protocols;
    use crate::store::AuthSource;

    fn view(state: MailboxState, domain_active: bool) -> LoginView {
        LoginView {
            address: "alice@example.org".into(),
            password_hash: None,
            auth_source: AuthSource::Local,
            protocols: Protocols::ALL,
            state,
            domain_active,
            quota: 2 << 30,
            identity_suspended: None,
            last_sign_in_at: None,
        }
    }

    #[test]
    fn active_and_no_login_mailboxes_in_an_active_domain_receive_mail() {
        for state in [MailboxState::Active, MailboxState::NoLogin] {
            assert_eq!(
                recipient(view(state, true)),
                Some(Recipient {
                    address: "alice@example.org".into(),
                    quota: 2 << 30,
                }),
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_disabled_mailbox_does_not() {
        assert_eq!(recipient(view(MailboxState::Disabled, true)), None);
    }

    #[test]
    fn no_mailbox_of_an_inactive_domain_does() {
        for state in [
            MailboxState::Active,
            MailboxState::NoLogin,
            MailboxState::Disabled,
        ] {
            assert_eq!(recipient(view(state, false)), None, "{state:?}");
        }
    }

    #[test]
    fn a_mailbox_without_a_quota_says_zero() {
        let mut v = view(MailboxState::Active, true);
        v.quota = 0;
        assert_eq!(recipient(v).map(|r| r.quota), Some(0));
    }
}
