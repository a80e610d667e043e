//! What every config section's check shares: the [`Problem`] it reports, and the few
//! value checks more than one section makes.
//!
//! Each section's schema and check live with the module that uses the section
//! (`oidc::settings`, `web::settings`, `server::settings`, the files of `config`), and
//! `config` calls them all. This module sits below every one of them and imports none, so
//! a section's owner never has to import `config` to report a problem.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;

/// One problem, naming the key it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub fn problem(problems: &mut Vec<Problem>, key: &str, message: impl Into<String>) {
    problems.push(Problem {
        key: key.into(),
        message: message.into(),
    });
}

/// Range checks on the list a section's check reports into:
/// `problems.within("web.header_timeout_seconds", seconds, 1..=300)`.
pub trait Within {
    /// Reports `key` unless `value` lies in `range`, saying which bounds.
    fn within<T>(&mut self, key: &str, value: T, range: RangeInclusive<T>)
    where
        T: PartialOrd + fmt::Display;
}

impl Within for Vec<Problem> {
    fn within<T>(&mut self, key: &str, value: T, range: RangeInclusive<T>)
    where
        T: PartialOrd + fmt::Display,
    {
        if !range.contains(&value) {
            problem(
                self,
                key,
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
    }
}

/// A text value without surrounding blanks; `None` when absent or blank, so the caller's
/// default applies.
pub fn trimmed(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// One of a few words, each standing for a value. `None` when the key is absent, and also
/// (with a problem that lists the words) when the word is not one of them: the caller's
/// default applies.
pub fn one_of<T: Copy>(
    problems: &mut Vec<Problem>,
    key: &str,
    value: Option<&str>,
    words: &[(&str, T)],
) -> Option<T> {
    let word = value?;
    if let Some((_, v)) = words.iter().find(|(w, _)| *w == word) {
        return Some(*v);
    }
    let listed: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
    problem(
        problems,
        key,
        format!("{word:?}: use {}", listed.join(" or ")),
    );
    None
}

/// Each entry one address or CIDR network; the broken ones are reported under `key`.
pub fn networks(key: &str, list: &[String], problems: &mut Vec<Problem>) -> Vec<ipnet::IpNet> {
    list.iter()
        .filter_map(|n| match crate::store::parse_networks(n) {
            Ok(mut nets) if nets.len() == 1 => nets.pop(),
            _ => {
                problem(
                    problems,
                    key,
                    format!("{n:?} is not an address or CIDR network"),
                );
                None
            }
        })
        .collect()
}

/// A value given in the file itself (`<section>.<name>`) or read from the file named by
/// `<section>.<name>_file`, trimmed; both at once is a problem, and so is a file that
/// cannot be read. Secrets take the second way, so the config file can be world-readable.
pub fn inline_or_file(
    section: &str,
    name: &str,
    inline: Option<String>,
    file: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let file_key = format!("{section}.{name}_file");
    match (inline, file) {
        (Some(_), Some(_)) => {
            problem(
                problems,
                &file_key,
                format!("set either {section}.{name} or {file_key}, not both"),
            );
            None
        }
        (Some(value), None) => Some(value.trim().to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                problem(
                    problems,
                    &file_key,
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::file_in_tempdir;

    #[test]
    fn bounds_are_named_in_the_message() {
        let mut problems = Vec::new();
        problems.within("a.b", 5u64, 1..=3);
        problems.within("a.c", 2u64, 1..=3);
        assert_eq!(
            problems,
            [Problem {
                key: "a.b".into(),
                message: "must be between 1 and 3".into()
            }]
        );
    }

    #[test]
    fn a_value_comes_from_the_file_or_the_key_never_both() {
        let (_dir, path) = file_in_tempdir("secret", " s3cret \n");
        let mut problems = Vec::new();
        let read = inline_or_file("x", "secret", None, Some(&path), &mut problems);
        assert_eq!(read.as_deref(), Some("s3cret"));
        let both = inline_or_file("x", "secret", Some("a".into()), Some(&path), &mut problems);
        assert_eq!(both, None);
        assert_eq!(problems[0].key, "x.secret_file");
        assert_eq!(
            problems[0].message,
            "set either x.secret or x.secret_file, not both"
        );
    }
}
