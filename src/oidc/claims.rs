//! Reading the configured claims out of validated ID-token and UserInfo claims.
//!
//! Pure: JSON in, [`SignInClaims`] out. Providers differ (strings for booleans, a group
//! claim that is sometimes a string, sometimes a list), so every shape we accept is named
//! here and anything else is a clear error rather than a guess.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::provision::SignInClaims;

/// Values of the template claim we look at; a provider sending thousands of groups is
/// misconfigured, and mappings only need to see some.
const MAX_TEMPLATE_VALUES: usize = 256;
const MAX_CLAIM_LEN: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("the provider sent no {0:?} claim")]
    Missing(String),
    #[error("claim {name:?} has the wrong type: expected {expected}, got {got}")]
    WrongType {
        name: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("claim {0:?} is too long")]
    TooLong(String),
}

impl ClaimError {
    pub fn person_message(&self) -> String {
        match self {
            ClaimError::Missing(name) if name == "email" => {
                "Your account has no mail address. Ask your administrator to set one.".into()
            }
            ClaimError::Missing(name) => format!(
                "Your organisation's sign-in did not say {name:?} about you. Ask the postmaster to check the provider's settings."
            ),
            ClaimError::WrongType { name, .. } | ClaimError::TooLong(name) => format!(
                "Your organisation's sign-in sent {name:?} in a form we cannot read. Ask the postmaster to check the provider's settings."
            ),
        }
    }
}

/// Which claims to read; from the `[oidc]` section.
#[derive(Clone, Debug)]
pub struct ClaimNames {
    pub address: String,
    pub template: String,
    pub name: String,
}

/// UserInfo claims win over the ID token's: the provider may keep some (mailcow's
/// `mailcow_template`) only there, and UserInfo is the fresher view.
pub fn merge(
    id_token: Map<String, Value>,
    userinfo: Option<Map<String, Value>>,
) -> Map<String, Value> {
    let mut merged = id_token;
    for (k, v) in userinfo.into_iter().flatten() {
        // A null in UserInfo means "not set", not "erase what the ID token said".
        if !v.is_null() {
            merged.insert(k, v);
        }
    }
    merged
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, ClaimError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_CLAIM_LEN => Err(ClaimError::TooLong(name.into())),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ClaimError::WrongType {
            name: name.into(),
            expected: "a string",
            got: type_name(other),
        }),
    }
}

pub fn read(
    issuer: &str,
    claims: &Map<String, Value>,
    names: &ClaimNames,
) -> Result<SignInClaims, ClaimError> {
    let subject = string_claim(claims, "sub")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ClaimError::Missing("sub".into()))?;
    let address = string_claim(claims, &names.address)?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ClaimError::Missing(names.address.clone()))?;
    let email_verified = match claims.get("email_verified") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        // Some providers send the boolean as a string.
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        Some(other) => {
            return Err(ClaimError::WrongType {
                name: "email_verified".into(),
                expected: "a boolean",
                got: type_name(other),
            })
        }
    };
    let display_name = string_claim(claims, &names.name)?;
    let template_values = match claims.get(&names.template) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.len() > MAX_CLAIM_LEN => {
            return Err(ClaimError::TooLong(names.template.clone()))
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_TEMPLATE_VALUES {
                return Err(ClaimError::TooLong(names.template.clone()));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) if s.len() <= MAX_CLAIM_LEN => Ok(s.clone()),
                    Value::String(_) => Err(ClaimError::TooLong(names.template.clone())),
                    other => Err(ClaimError::WrongType {
                        name: names.template.clone(),
                        expected: "a string or a list of strings",
                        got: type_name(other),
                    }),
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(ClaimError::WrongType {
                name: names.template.clone(),
                expected: "a string or a list of strings",
                got: type_name(other),
            })
        }
    };
    Ok(SignInClaims {
        issuer: issuer.to_string(),
        subject,
        address,
        email_verified,
        display_name,
        template_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> ClaimNames {
        ClaimNames {
            address: "email".into(),
            template: "mailcow_template".into(),
            name: "name".into(),
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn userinfo_overrides_the_id_token_but_null_does_not_erase() {
        let id = map(json!({"sub": "s", "email": "old@example.org", "name": "N"}));
        let ui =
            map(json!({"email": "new@example.org", "name": null, "mailcow_template": "staff"}));
        let m = merge(id, Some(ui));
        assert_eq!(m["email"], "new@example.org");
        assert_eq!(m["name"], "N");
        assert_eq!(m["mailcow_template"], "staff");
    }

    #[test]
    fn template_claim_may_be_a_string_or_a_list() {
        let c = read(
            "https://idp",
            &map(json!({"sub": "s", "email": "a@example.org", "mailcow_template": "staff"})),
            &names(),
        )
        .unwrap();
        assert_eq!(c.template_values, vec!["staff"]);
        assert_eq!(c.email_verified, None);
        let c = read(
            "https://idp",
            &map(json!({"sub": "s", "email": "a@example.org", "mailcow_template": ["a", "b"], "email_verified": "true"})),
            &names(),
        )
        .unwrap();
        assert_eq!(c.template_values, vec!["a", "b"]);
        assert_eq!(c.email_verified, Some(true));
        let c = read(
            "https://idp",
            &map(json!({"sub": "s", "email": "a@example.org"})),
            &names(),
        )
        .unwrap();
        assert!(c.template_values.is_empty());
    }

    #[test]
    fn wrong_types_are_named() {
        for (claims, bad) in [
            (
                json!({"sub": "s", "email": "a@example.org", "mailcow_template": 7}),
                "mailcow_template",
            ),
            (
                json!({"sub": "s", "email": "a@example.org", "mailcow_template": ["a", 1]}),
                "mailcow_template",
            ),
            (json!({"sub": "s", "email": ["a@example.org"]}), "email"),
            (
                json!({"sub": "s", "email": "a@example.org", "email_verified": 1}),
                "email_verified",
            ),
            (json!({"sub": 5, "email": "a@example.org"}), "sub"),
        ] {
            let e = read("https://idp", &map(claims), &names()).unwrap_err();
            assert!(
                matches!(&e, ClaimError::WrongType { name, .. } if name == bad),
                "{e:?}"
            );
        }
        let e = read("https://idp", &map(json!({"sub": "s"})), &names()).unwrap_err();
        assert_eq!(e, ClaimError::Missing("email".into()));
        assert!(e.person_message().contains("no mail address"));
    }

    #[test]
    fn configured_claim_names_are_used() {
        let n = ClaimNames {
            address: "mail".into(),
            template: "groups".into(),
            name: "display".into(),
        };
        let c = read(
            "https://idp",
            &map(json!({"sub": "s", "mail": "a@example.org", "groups": ["x"], "display": "A"})),
            &n,
        )
        .unwrap();
        assert_eq!(
            (c.address.as_str(), c.display_name.as_deref()),
            ("a@example.org", Some("A"))
        );
        assert_eq!(c.template_values, vec!["x"]);
    }
}
