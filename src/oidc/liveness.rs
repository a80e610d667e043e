//! The liveness check's rules, apart from any I/O: what each answer is called, and whether a
//! pass may apply the suspensions its answers call for (the brake).
//!
//! An outage at the provider must never lock a company out of mail. So a pass suspends
//! only when every answer was a real answer about a person: one unreachable or 5xx answer,
//! or the provider refusing our client, and nobody is suspended; and even then only while
//! the new refusals are few, at most max(1, checked × percent / 100). A provider that
//! suddenly refuses many people at once (a misconfigured realm, a botched migration) holds
//! the brake too.

use serde::Serialize;

use super::refresh::RefreshAnswer;

/// What the provider said about one mailbox, as `idp check` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok,
    InvalidGrant,
    InvalidClient,
    Unreachable,
    ProviderError,
    /// Never issued one, or the stored one no longer opens (key file replaced): nothing to
    /// ask with. Never taken as a refusal.
    NoRefreshToken,
}

impl Answer {
    pub fn code(self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::InvalidGrant => "invalid_grant",
            Answer::InvalidClient => "invalid_client",
            Answer::Unreachable => "unreachable",
            Answer::ProviderError => "provider_error",
            Answer::NoRefreshToken => "no_refresh_token",
        }
    }

    pub fn of(answer: &RefreshAnswer) -> Answer {
        match answer {
            RefreshAnswer::Ok { .. } => Answer::Ok,
            RefreshAnswer::InvalidGrant { .. } => Answer::InvalidGrant,
            RefreshAnswer::InvalidClient { .. } => Answer::InvalidClient,
            RefreshAnswer::ProviderError(_) => Answer::ProviderError,
            RefreshAnswer::Unreachable(_) => Answer::Unreachable,
        }
    }

    /// The provider did not answer about the person: the pass must stop and suspend nobody.
    pub fn stops_the_pass(self) -> bool {
        matches!(
            self,
            Answer::InvalidClient | Answer::Unreachable | Answer::ProviderError
        )
    }
}

display_via!(Answer, code);

/// What a pass did to one mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    None,
    Suspended,
    StillSuspended,
    /// Would have been suspended, but the brake held, the pass stopped, or `--dry-run`.
    Withheld,
}

impl Change {
    pub fn code(self) -> &'static str {
        match self {
            Change::None => "none",
            Change::Suspended => "suspended",
            Change::StillSuspended => "still_suspended",
            Change::Withheld => "withheld",
        }
    }
}

display_via!(Change, code);

/// Whether a pass's answers may be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// An answer was no answer: unreachable, timed out, 5xx or unparsable.
    ProviderDown,
    /// The provider refused our client: a configuration problem.
    ClientRefused,
    /// More new refusals than `allowed`.
    Brake {
        refused: usize,
        allowed: usize,
    },
}

/// The most new suspensions a pass of `checked` answers may apply.
pub fn allowed_suspensions(checked: usize, max_percent: f64) -> usize {
    let share = (checked as f64 * max_percent / 100.0).floor();
    // A share that is not a number cannot happen with a checked percentage; 1 is the floor.
    let share = if share.is_finite() && share >= 0.0 {
        share as usize
    } else {
        0
    };
    share.max(1)
}

/// `answers`: each asked mailbox's answer, and whether it is suspended already.
pub fn verdict(answers: &[(Answer, bool)], max_percent: f64) -> Verdict {
    if answers
        .iter()
        .any(|(a, _)| matches!(a, Answer::Unreachable | Answer::ProviderError))
    {
        return Verdict::ProviderDown;
    }
    if answers.iter().any(|(a, _)| *a == Answer::InvalidClient) {
        return Verdict::ClientRefused;
    }
    let checked = answers
        .iter()
        .filter(|(a, _)| *a != Answer::NoRefreshToken)
        .count();
    let refused = answers
        .iter()
        .filter(|(a, suspended)| *a == Answer::InvalidGrant && !suspended)
        .count();
    let allowed = allowed_suspensions(checked, max_percent);
    if refused > allowed {
        Verdict::Brake { refused, allowed }
    } else {
        Verdict::Apply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many(ok: usize, refused: usize) -> Vec<(Answer, bool)> {
        let mut v = vec![(Answer::Ok, false); ok];
        v.extend(vec![(Answer::InvalidGrant, false); refused]);
        v
    }

    #[test]
    fn one_refusal_always_passes_and_the_share_is_rounded_down() {
        assert_eq!(allowed_suspensions(1, 10.0), 1);
        assert_eq!(allowed_suspensions(19, 10.0), 1);
        assert_eq!(allowed_suspensions(20, 10.0), 2);
        assert_eq!(allowed_suspensions(10_000, 10.0), 1000);
        assert_eq!(allowed_suspensions(100, 0.0), 1);
        assert_eq!(verdict(&many(2, 1), 10.0), Verdict::Apply);
        assert_eq!(verdict(&many(18, 2), 10.0), Verdict::Apply);
    }

    #[test]
    fn more_refusals_than_the_share_hold_the_brake() {
        assert_eq!(
            verdict(&many(1, 2), 10.0),
            Verdict::Brake {
                refused: 2,
                allowed: 1
            }
        );
        assert_eq!(
            verdict(&many(17, 3), 10.0),
            Verdict::Brake {
                refused: 3,
                allowed: 2
            }
        );
    }

    #[test]
    fn mailboxes_suspended_already_are_no_new_refusals() {
        let mut answers = many(1, 1);
        answers.push((Answer::InvalidGrant, true));
        answers.push((Answer::InvalidGrant, true));
        assert_eq!(verdict(&answers, 10.0), Verdict::Apply);
    }

    #[test]
    fn one_answer_that_is_no_answer_suspends_nobody() {
        for bad in [Answer::Unreachable, Answer::ProviderError] {
            let mut answers = many(50, 1);
            answers.push((bad, false));
            assert_eq!(verdict(&answers, 10.0), Verdict::ProviderDown);
        }
        let mut answers = many(50, 1);
        answers.push((Answer::InvalidClient, false));
        assert_eq!(verdict(&answers, 10.0), Verdict::ClientRefused);
    }

    #[test]
    fn missing_refresh_tokens_are_not_counted_as_checked() {
        let mut answers = vec![(Answer::NoRefreshToken, false); 100];
        answers.extend(many(0, 2));
        assert!(matches!(verdict(&answers, 10.0), Verdict::Brake { .. }));
    }
}
