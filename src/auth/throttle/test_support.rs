//! What the throttle's unit tests share: a fixed time and short ways to write addresses and
//! delays.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use super::Verdict;
use crate::clock::UnixMillis;

pub(super) const T0: UnixMillis = 1_800_000_000_000;
pub(super) const SEC: i64 = 1000;

pub(super) fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

pub(super) fn ms(n: u64) -> Verdict {
    Verdict::Delay(Duration::from_millis(n))
}
