//! The `[policy]` section with its `[[policy.limits]]` and `[policy.replies]`, checked
//! into [`PolicySettings`].

use std::time::Duration;

use serde::Deserialize;

use crate::policy::{check_reply_text, NullSender, PolicySettings, ReplyTexts};
use crate::proto::postfix_policy::Limits as CodecLimits;
use crate::settings_check::{one_of, problem, Problem, Within};
use crate::store::{parse_networks, parse_window, LimitWindow, SendLimits};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PolicySection {
    subaddress_delimiters: Option<String>,
    null_sender: Option<String>,
    refuse_forged_local_senders: Option<bool>,
    trusted_networks: Option<Vec<String>>,
    limits: Option<Vec<LimitEntry>>,
    idle_timeout_secs: Option<u64>,
    max_line_bytes: Option<usize>,
    max_attributes: Option<usize>,
    max_request_bytes: Option<usize>,
    replies: RepliesSection,
}

/// One `[[policy.limits]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LimitEntry {
    window: Option<String>,
    messages: Option<u64>,
    recipients: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RepliesSection {
    not_owned: Option<String>,
    null_sender: Option<String>,
    no_access: Option<String>,
    forged_sender: Option<String>,
    over_limit: Option<String>,
}

const NULL_SENDER: [(&str, NullSender); 2] =
    [("allow", NullSender::Allow), ("refuse", NullSender::Refuse)];

pub fn check(section: PolicySection, problems: &mut Vec<Problem>) -> PolicySettings {
    let defaults = PolicySettings::default();
    let subaddress_delimiters = section
        .subaddress_delimiters
        .unwrap_or(defaults.subaddress_delimiters);
    if subaddress_delimiters.chars().count() > 8
        || subaddress_delimiters
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control() || c.is_alphanumeric())
    {
        problem(
            problems,
            "policy.subaddress_delimiters",
            "use up to 8 punctuation characters such as \"+\" or \"+-\" (\"\" turns sub-addressing off)",
        );
    }
    let null_sender = one_of(
        problems,
        "policy.null_sender",
        section.null_sender.as_deref(),
        &NULL_SENDER,
    )
    .unwrap_or(NullSender::Allow);
    let mut trusted_networks = Vec::new();
    for (i, n) in section
        .trusted_networks
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match parse_networks(n) {
            Ok(nets) if nets.len() == 1 => trusted_networks.extend(nets),
            Ok(_) => problem(
                problems,
                &format!("policy.trusted_networks[{i}]"),
                "one address or network per entry, e.g. \"192.0.2.0/24\"",
            ),
            Err(e) => problem(problems, &format!("policy.trusted_networks[{i}]"), e),
        }
    }
    let default_limits = limits(section.limits.unwrap_or_default(), problems);
    let idle_secs = section
        .idle_timeout_secs
        .unwrap_or(defaults.idle_timeout.as_secs());
    problems.within("policy.idle_timeout_secs", idle_secs, 1..=3600);
    let codec = CodecLimits {
        max_line: section.max_line_bytes.unwrap_or(defaults.codec.max_line),
        max_attributes: section
            .max_attributes
            .unwrap_or(defaults.codec.max_attributes),
        max_request_bytes: section
            .max_request_bytes
            .unwrap_or(defaults.codec.max_request_bytes),
    };
    problems.within("policy.max_line_bytes", codec.max_line, 512..=65_536);
    problems.within("policy.max_attributes", codec.max_attributes, 32..=4096);
    if !(4096..=1 << 20).contains(&codec.max_request_bytes)
        || codec.max_request_bytes < codec.max_line
    {
        problem(
            problems,
            "policy.max_request_bytes",
            "must be between 4096 and 1048576, and at least policy.max_line_bytes",
        );
    }
    let texts = replies(section.replies, problems);
    PolicySettings {
        subaddress_delimiters,
        null_sender,
        refuse_forged_local_senders: section.refuse_forged_local_senders.unwrap_or(false),
        trusted_networks,
        default_limits,
        texts,
        idle_timeout: Duration::from_secs(idle_secs.clamp(1, 3600)),
        codec,
    }
}

fn limits(entries: Vec<LimitEntry>, problems: &mut Vec<Problem>) -> SendLimits {
    let mut windows = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let key = format!("policy.limits[{i}]");
        let seconds = match entry.window.as_deref().map(parse_window) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                problem(problems, &format!("{key}.window"), e.to_string());
                continue;
            }
            None => {
                problem(
                    problems,
                    &format!("{key}.window"),
                    "missing; e.g. window = \"1h\"",
                );
                continue;
            }
        };
        windows.push(LimitWindow {
            seconds,
            messages: entry.messages,
            recipients: entry.recipients,
        });
    }
    SendLimits::new(windows).unwrap_or_else(|e| {
        problem(problems, "policy.limits", e.to_string());
        SendLimits::none()
    })
}

fn replies(section: RepliesSection, problems: &mut Vec<Problem>) -> ReplyTexts {
    let defaults = ReplyTexts::default();
    let mut pick = |value: Option<String>, default: String, key: &str, class, names| {
        let text = value.unwrap_or(default);
        if let Err(e) = check_reply_text(&text, class, names) {
            problem(problems, &format!("policy.replies.{key}"), e.to_string());
        }
        text
    };
    ReplyTexts {
        not_owned: pick(
            section.not_owned,
            defaults.not_owned,
            "not_owned",
            '5',
            ReplyTexts::NOT_OWNED_PLACEHOLDERS,
        ),
        null_sender: pick(
            section.null_sender,
            defaults.null_sender,
            "null_sender",
            '5',
            ReplyTexts::NULL_SENDER_PLACEHOLDERS,
        ),
        no_access: pick(
            section.no_access,
            defaults.no_access,
            "no_access",
            '5',
            ReplyTexts::NO_ACCESS_PLACEHOLDERS,
        ),
        forged_sender: pick(
            section.forged_sender,
            defaults.forged_sender,
            "forged_sender",
            '5',
            ReplyTexts::FORGED_SENDER_PLACEHOLDERS,
        ),
        over_limit: pick(
            section.over_limit,
            defaults.over_limit,
            "over_limit",
            '4',
            ReplyTexts::OVER_LIMIT_PLACEHOLDERS,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::parse;
    use crate::config::tests::{assert_reported, problem_keys};
    use crate::policy::NullSender;

    #[test]
    fn policy_defaults_and_settings() {
        let c = parse("").unwrap();
        assert_eq!(c.policy.subaddress_delimiters, "+");
        assert_eq!(c.policy.null_sender, NullSender::Allow);
        assert!(c.policy.default_limits.is_none());
        assert_eq!(c.policy.idle_timeout, Duration::from_secs(330));
        let text = r#"
            [policy]
            subaddress_delimiters = "+-"
            null_sender = "refuse"
            refuse_forged_local_senders = true
            trusted_networks = ["127.0.0.1", "2001:db8::/32"]
            idle_timeout_secs = 60
            [[policy.limits]]
            window = "1d"
            messages = 500
            [[policy.limits]]
            window = "1h"
            messages = 100
            recipients = 1000
            [policy.replies]
            not_owned = "5.7.1 {sender} is not yours, {user}"
        "#;
        let p = parse(text).unwrap().policy;
        assert_eq!(p.null_sender, NullSender::Refuse);
        assert!(p.refuse_forged_local_senders);
        assert_eq!(p.trusted_networks.len(), 2);
        assert_eq!(p.default_limits.to_string(), "1h:100:1000,1d:500:-");
        assert_eq!(p.texts.not_owned, "5.7.1 {sender} is not yours, {user}");
        assert_eq!(p.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn policy_problems_name_their_keys() {
        let text = r#"
            [policy]
            subaddress_delimiters = "@"
            null_sender = "maybe"
            trusted_networks = ["300.1.1.1"]
            idle_timeout_secs = 0
            max_line_bytes = 10
            [[policy.limits]]
            window = "1w"
            messages = 1
            [[policy.limits]]
            messages = 1
            [policy.replies]
            not_owned = "4.7.1 <{sender}>"
            over_limit = "4.7.1 {who}"
        "#;
        assert_reported(
            text,
            &[
                "policy.subaddress_delimiters",
                "policy.null_sender",
                "policy.trusted_networks[0]",
                "policy.idle_timeout_secs",
                "policy.max_line_bytes",
                "policy.limits[0].window",
                "policy.limits[1].window",
                "policy.replies.not_owned",
                "policy.replies.over_limit",
            ],
        );
        let dup = "[[policy.limits]]\nwindow = \"1h\"\nmessages = 1\n[[policy.limits]]\nwindow = \"60m\"\nrecipients = 1\n";
        assert_eq!(problem_keys(dup), vec!["policy.limits".to_string()]);
    }
}
