//! Mozilla autoconfig (`config-v1.1.xml`): what Thunderbird, Thunderbird for Android,
//! Evolution and others fetch from `autoconfig.<domain>` to fill in the servers.

use super::ClientSettings;

/// The document for `domain`, with `%EMAILADDRESS%` as the user name; `site` names the
/// provider (the web page's title).
pub fn document(settings: &ClientSettings, domain: &str, site: &str) -> String {
    let _ = (settings, domain, site);
    todo!("autoconfig document")
}
