//! The networks an account's owner logged in from lately, in memory. A login from one of
//! them is not held up by its account's block, so strangers cannot lock the owner out.

use ipnet::IpNet;

use crate::clock::UnixMillis;

/// Networks remembered per account as its owner's (see `known_network_for`).
pub(crate) const KNOWN_NETWORKS: usize = 4;

/// Networks an account's owner logged in from, newest kept; a few cover home, office
/// and phone.
#[derive(Default)]
pub(super) struct KnownNetworks {
    slots: [Option<(IpNet, UnixMillis)>; KNOWN_NETWORKS],
}

impl KnownNetworks {
    pub(super) fn contains(&self, net: IpNet, now: UnixMillis, ttl: i64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|(n, at)| *n == net && now.saturating_sub(*at) < ttl)
    }

    pub(super) fn remember(&mut self, net: IpNet, now: UnixMillis) {
        let slot = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|(n, _)| n == net))
            .or_else(|| self.slots.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                // Full: the network seen longest ago makes room.
                self.slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.map_or(i64::MIN, |(_, at)| at))
                    .map_or(0, |(i, _)| i)
            });
        self.slots[slot] = Some((net, now));
    }

    pub(super) fn newest(&self) -> UnixMillis {
        self.slots
            .iter()
            .flatten()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(0)
    }
}
