//! Pure protocol codecs: bytes in, values out, values in, bytes out. No I/O
//! here; the connection drivers own sockets, buffers and per-connection
//! state.

pub mod dovecot_auth;
pub mod dovecot_master;
pub mod line;
pub mod postfix_policy;
pub mod sasl;
pub mod tabescape;
