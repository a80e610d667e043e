//! Sending-limit counters: [`SendCounters`], the rules, and [`Counters`], the counters in
//! this process.
//!
//! Each user has one counter per window length. A window opens with the first message
//! counted in it and closes `seconds` later; the next counted message opens a new one. So
//! `1h:100:1000` means: at most 100 messages and 1000 recipients within an hour of the
//! first of them.
//!
//! A message is counted once per Postfix `instance`, however many policy requests it
//! causes (one per recipient, again at DATA or END-OF-MESSAGE, and twice per recipient when
//! the policy is listed in both sender and recipient restrictions); a recipient is counted
//! once per message.
//!
//! [`Counters`] persist nothing: a restart starts every counter at zero, and daemons
//! sharing one database count separately. With Redis configured the counters live there
//! instead (`shared_state::RedisCounters`, the same rules in one script), so daemons
//! count as one, and [`Counters`] is what they fall back to while Redis does not answer.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::clock::UnixTime;
use crate::store::{LimitWindow, SendLimits};

/// Enough to spread two cores' worth of lock traffic; a shard is locked for microseconds.
const SHARDS: usize = 16;
/// Messages per user whose recipients are remembered (concurrent SMTP sessions); a
/// request for an older, forgotten one counts as a new message, so a flood of open
/// messages can only make the limits stricter.
pub const MESSAGES_PER_USER: usize = 32;
/// Postfix's default `smtpd_recipient_limit`; past it every recipient counts, remembered or not.
pub const RECIPIENTS_PER_MESSAGE: usize = 1000;
/// How often a shard drops users whose windows have all closed.
const SWEEP_INTERVAL: i64 = 60;

/// What a policy request asks of the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage<'a> {
    /// `MAIL`: would one more message fit? Counts nothing.
    Peek,
    /// `RCPT`: one recipient of the message `instance`.
    Recipient {
        instance: Option<&'a str>,
        recipient: Option<&'a str>,
    },
    /// `DATA` or `END-OF-MESSAGE`: the message with its final recipient count. Recipients
    /// already counted at `RCPT` are not counted again.
    Message {
        instance: Option<&'a str>,
        recipients: u64,
    },
}

/// What ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Messages,
    Recipients,
}

impl Counted {
    pub fn noun(self) -> &'static str {
        match self {
            Counted::Messages => "messages",
            Counted::Recipients => "recipients",
        }
    }
}

/// The window whose cap the request would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub window: LimitWindow,
    pub counted: Counted,
    pub limit: u64,
}

/// Where a daemon counts what its users send. Every implementation keeps the rules of
/// [`Counters`] (the module doc); `tests/send_limits.rs` runs the same sequences against
/// each and compares the answers.
#[async_trait]
pub trait SendCounters: Send + Sync {
    /// Checks `usage` against every window of `limits` and, if all have room, counts it.
    /// Never fails: counters that cannot be reached answer from this daemon's memory.
    async fn check_and_count(
        &self,
        user: &str,
        limits: &SendLimits,
        usage: Usage<'_>,
        now: UnixTime,
    ) -> Result<(), Exceeded>;

    /// Users with counters in this daemon's memory.
    fn tracked_users(&self) -> usize;
}

#[async_trait]
impl SendCounters for Counters {
    async fn check_and_count(
        &self,
        user: &str,
        limits: &SendLimits,
        usage: Usage<'_>,
        now: UnixTime,
    ) -> Result<(), Exceeded> {
        Counters::check_and_count(self, user, limits, usage, now)
    }

    fn tracked_users(&self) -> usize {
        Counters::tracked_users(self)
    }
}

pub struct Counters {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    users: HashMap<String, UserState>,
    next_sweep: UnixTime,
}

#[derive(Default)]
struct UserState {
    windows: Vec<WindowState>,
    messages: VecDeque<MessageState>,
}

struct WindowState {
    seconds: u64,
    opened: UnixTime,
    messages: u64,
    recipients: u64,
}

impl WindowState {
    fn closes(&self) -> UnixTime {
        self.opened
            .saturating_add(i64::try_from(self.seconds).unwrap_or(i64::MAX))
    }
}

struct MessageState {
    instance: String,
    /// Hashes of the recipients counted so far; keyed hashes keep memory flat.
    recipients: HashSet<u64>,
    counted: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Counters {
    /// Checks `usage` against every window of `limits` and, if all have room, counts it.
    pub fn check_and_count(
        &self,
        user: &str,
        limits: &SendLimits,
        usage: Usage<'_>,
        now: UnixTime,
    ) -> Result<(), Exceeded> {
        if limits.is_none() {
            return Ok(());
        }
        let index = usize::try_from(self.hasher.hash_one(user) % SHARDS as u64).unwrap_or(0);
        let Some(shard) = self.shards.get(index) else {
            return Ok(());
        };
        // A poisoned lock only means another request panicked mid-update; the counts are
        // still numbers, so keep counting rather than failing every request after it.
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        shard.sweep(now);
        let state = shard.users.entry(user.to_owned()).or_default();
        state.align(limits, now);
        let rcpt_hash = match usage {
            Usage::Recipient {
                recipient: Some(r), ..
            } => Some(self.hasher.hash_one(r)),
            _ => None,
        };
        let (new_messages, new_recipients) = state.new_counts(usage, rcpt_hash);
        for (window, limit) in limits.windows().iter().zip(&state.windows) {
            let counts = [
                (
                    Counted::Messages,
                    window.messages,
                    limit.messages,
                    new_messages,
                ),
                (
                    Counted::Recipients,
                    window.recipients,
                    limit.recipients,
                    new_recipients,
                ),
            ];
            for (counted, cap, used, new) in counts {
                if let Some(cap) = cap {
                    if new > 0 && used.saturating_add(new) > cap {
                        return Err(Exceeded {
                            window: *window,
                            counted,
                            limit: cap,
                        });
                    }
                }
            }
        }
        if usage != Usage::Peek {
            state.commit(usage, rcpt_hash, new_messages, new_recipients);
        }
        Ok(())
    }

    /// Users with counters in memory.
    pub fn tracked_users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).users.len())
            .sum()
    }
}

impl Shard {
    fn sweep(&mut self, now: UnixTime) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(SWEEP_INTERVAL);
        self.users
            .retain(|_, u| u.windows.iter().any(|w| now < w.closes()));
    }
}

impl UserState {
    /// One state per configured window, in the same order; a limits change (template
    /// edited) keeps the counts of windows that stayed.
    fn align(&mut self, limits: &SendLimits, now: UnixTime) {
        let same = self.windows.len() == limits.windows().len()
            && self
                .windows
                .iter()
                .zip(limits.windows())
                .all(|(s, w)| s.seconds == w.seconds);
        if !same {
            let mut old = std::mem::take(&mut self.windows);
            self.windows = limits
                .windows()
                .iter()
                .map(|w| match old.iter().position(|s| s.seconds == w.seconds) {
                    Some(i) => old.swap_remove(i),
                    None => WindowState {
                        seconds: w.seconds,
                        opened: now,
                        messages: 0,
                        recipients: 0,
                    },
                })
                .collect();
        }
        for w in &mut self.windows {
            if now >= w.closes() || (w.messages == 0 && w.recipients == 0) {
                *w = WindowState {
                    seconds: w.seconds,
                    opened: now,
                    messages: 0,
                    recipients: 0,
                };
            }
        }
    }

    fn message(&self, instance: Option<&str>) -> Option<&MessageState> {
        let instance = instance?;
        self.messages.iter().find(|m| m.instance == instance)
    }

    fn new_counts(&self, usage: Usage<'_>, rcpt_hash: Option<u64>) -> (u64, u64) {
        match usage {
            Usage::Peek => (1, 0),
            Usage::Recipient { instance, .. } => match self.message(instance) {
                None => (1, 1),
                Some(m) => {
                    let known = rcpt_hash.is_some_and(|h| m.recipients.contains(&h));
                    (0, u64::from(!known))
                }
            },
            Usage::Message {
                instance,
                recipients,
            } => match self.message(instance) {
                None => (1, recipients),
                Some(m) => (0, recipients.saturating_sub(m.counted)),
            },
        }
    }

    fn commit(
        &mut self,
        usage: Usage<'_>,
        rcpt_hash: Option<u64>,
        new_messages: u64,
        new_recipients: u64,
    ) {
        for w in &mut self.windows {
            w.messages = w.messages.saturating_add(new_messages);
            w.recipients = w.recipients.saturating_add(new_recipients);
        }
        let instance = match usage {
            Usage::Recipient { instance, .. } | Usage::Message { instance, .. } => instance,
            Usage::Peek => None,
        };
        // Without an instance there is nothing to recognise the message by next time.
        let Some(instance) = instance else { return };
        if !self.messages.iter().any(|m| m.instance == instance) {
            if self.messages.len() >= MESSAGES_PER_USER {
                self.messages.pop_front();
            }
            self.messages.push_back(MessageState {
                instance: instance.to_owned(),
                recipients: HashSet::new(),
                counted: 0,
            });
        }
        let Some(message) = self.messages.iter_mut().find(|m| m.instance == instance) else {
            return;
        };
        message.counted = message.counted.saturating_add(new_recipients);
        if let Some(h) = rcpt_hash {
            if message.recipients.len() < RECIPIENTS_PER_MESSAGE {
                message.recipients.insert(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(text: &str) -> SendLimits {
        text.parse().unwrap()
    }

    fn rcpt<'a>(instance: &'a str, recipient: &'a str) -> Usage<'a> {
        Usage::Recipient {
            instance: Some(instance),
            recipient: Some(recipient),
        }
    }

    #[test]
    fn messages_count_once_per_instance() {
        let c = Counters::default();
        let l = limits("1h:2:-");
        for r in ["a@x", "b@x", "c@x"] {
            assert_eq!(c.check_and_count("u", &l, rcpt("m1", r), 0), Ok(()));
        }
        assert_eq!(c.check_and_count("u", &l, rcpt("m2", "a@x"), 1), Ok(()));
        let over = c
            .check_and_count("u", &l, rcpt("m3", "a@x"), 2)
            .unwrap_err();
        assert_eq!((over.counted, over.limit), (Counted::Messages, 2));
        // A further recipient of a message already counted still passes.
        assert_eq!(c.check_and_count("u", &l, rcpt("m2", "d@x"), 3), Ok(()));
        // So does the same message at END-OF-MESSAGE.
        let eom = Usage::Message {
            instance: Some("m2"),
            recipients: 2,
        };
        assert_eq!(c.check_and_count("u", &l, eom, 4), Ok(()));
        assert!(c.check_and_count("u", &l, Usage::Peek, 5).is_err());
    }

    #[test]
    fn recipients_count_once_per_message() {
        let c = Counters::default();
        let l = limits("1h:-:3");
        for r in ["a@x", "b@x", "a@x", "b@x", "c@x"] {
            assert_eq!(c.check_and_count("u", &l, rcpt("m1", r), 0), Ok(()), "{r}");
        }
        let over = c
            .check_and_count("u", &l, rcpt("m1", "d@x"), 0)
            .unwrap_err();
        assert_eq!((over.counted, over.limit), (Counted::Recipients, 3));
        // Counted at RCPT already, so END-OF-MESSAGE adds nothing.
        let eom = Usage::Message {
            instance: Some("m1"),
            recipients: 3,
        };
        assert_eq!(c.check_and_count("u", &l, eom, 0), Ok(()));
        // A message seen only at END-OF-MESSAGE counts all its recipients.
        let other = Usage::Message {
            instance: Some("m2"),
            recipients: 1,
        };
        assert!(c.check_and_count("u", &l, other, 0).is_err());
    }

    #[test]
    fn a_refused_request_is_not_counted() {
        let c = Counters::default();
        let l = limits("1h:1:-");
        assert_eq!(c.check_and_count("u", &l, rcpt("m1", "a@x"), 0), Ok(()));
        for _ in 0..3 {
            assert!(c.check_and_count("u", &l, rcpt("m2", "a@x"), 0).is_err());
        }
        // Once the window closes, exactly one new message fits again.
        assert_eq!(c.check_and_count("u", &l, rcpt("m2", "a@x"), 3600), Ok(()));
        assert!(c.check_and_count("u", &l, rcpt("m3", "a@x"), 3601).is_err());
    }

    #[test]
    fn several_windows_and_users_are_independent() {
        let c = Counters::default();
        let l = limits("1m:2:-,1h:3:-");
        let mut t = 0;
        let send = |user: &str, n: &str, t: i64| c.check_and_count(user, &l, rcpt(n, "r@x"), t);
        assert_eq!(send("u", "1", t), Ok(()));
        assert_eq!(send("u", "2", t), Ok(()));
        let over = send("u", "3", t).unwrap_err();
        assert_eq!(over.window.seconds, 60);
        assert_eq!(send("v", "1", t), Ok(()));
        t += 60;
        assert_eq!(send("u", "3", t), Ok(()));
        let over = send("u", "4", t).unwrap_err();
        assert_eq!(over.window.seconds, 3600);
    }

    #[test]
    fn without_instance_every_request_is_a_message() {
        let c = Counters::default();
        let l = limits("1h:2:-");
        let anon = Usage::Recipient {
            instance: None,
            recipient: Some("a@x"),
        };
        assert_eq!(c.check_and_count("u", &l, anon, 0), Ok(()));
        assert_eq!(c.check_and_count("u", &l, anon, 0), Ok(()));
        assert!(c.check_and_count("u", &l, anon, 0).is_err());
    }

    #[test]
    fn no_limits_keep_no_state_and_closed_windows_are_swept() {
        let c = Counters::default();
        assert_eq!(
            c.check_and_count("u", &SendLimits::none(), rcpt("m", "a@x"), 0),
            Ok(())
        );
        assert_eq!(c.tracked_users(), 0);
        let l = limits("1m:10:-");
        for i in 0..50 {
            let user = format!("user{i}");
            assert_eq!(c.check_and_count(&user, &l, rcpt("m", "a@x"), 0), Ok(()));
        }
        assert_eq!(c.tracked_users(), 50);
        for shard in &c.shards {
            shard.lock().unwrap().sweep(59);
        }
        assert_eq!(c.tracked_users(), 50, "windows still open");
        for shard in &c.shards {
            shard.lock().unwrap().next_sweep = 0;
            shard.lock().unwrap().sweep(60);
        }
        assert_eq!(c.tracked_users(), 0);
    }

    #[test]
    fn forgotten_messages_count_again() {
        let c = Counters::default();
        let l = limits("1h:100:-");
        for i in 0..=MESSAGES_PER_USER {
            let instance = format!("m{i}");
            assert_eq!(
                c.check_and_count("u", &l, rcpt(&instance, "a@x"), 0),
                Ok(())
            );
        }
        let limit = limits("1h:34:-");
        // m0 was forgotten when the 33rd message arrived; m32 is still known.
        assert_eq!(
            c.check_and_count("u", &limit, rcpt("m32", "b@x"), 0),
            Ok(())
        );
        assert_eq!(c.check_and_count("u", &limit, rcpt("m0", "a@x"), 0), Ok(()));
        assert!(c
            .check_and_count("u", &limit, rcpt("m1", "a@x"), 0)
            .is_err());
    }

    #[test]
    fn a_changed_limit_keeps_the_counts_of_windows_that_stayed() {
        let c = Counters::default();
        assert_eq!(
            c.check_and_count("u", &limits("1h:2:-"), rcpt("m1", "a@x"), 0),
            Ok(())
        );
        let wider = limits("1m:5:-,1h:2:-");
        assert_eq!(c.check_and_count("u", &wider, rcpt("m2", "a@x"), 1), Ok(()));
        let over = c
            .check_and_count("u", &wider, rcpt("m3", "a@x"), 2)
            .unwrap_err();
        assert_eq!(over.window.seconds, 3600);
    }
}
