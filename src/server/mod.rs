//! Sockets: per-connection drivers between the pure codecs and the decision layers.

pub mod policy_conn;
