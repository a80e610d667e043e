//! The settings to type in, for any other mail program: as text for the page and the
//! terminal, as JSON for scripts.

use super::{ClientSettings, DeviceAccount};

/// One line per server the account may use, then the user name and password.
pub fn text(settings: &ClientSettings, account: &DeviceAccount<'_>) -> String {
    let _ = (settings, account);
    todo!("manual text")
}

pub fn json(settings: &ClientSettings, account: &DeviceAccount<'_>) -> serde_json::Value {
    let _ = (settings, account);
    todo!("manual json")
}
