//! The QR code Thunderbird for Android scans to add an account: Thunderbird's "Export for
//! Mobile" payload (format version 1), drawn as SVG for the page or PNG for the CLI.

use super::{ClientSettings, DeviceAccount, SetupError};

/// The QR code's JSON payload.
pub fn payload(
    settings: &ClientSettings,
    account: &DeviceAccount<'_>,
) -> Result<String, SetupError> {
    let _ = (settings, account);
    todo!("android payload")
}

/// `payload` as a QR code in SVG, with a quiet zone, sized to scan from a screen.
pub fn svg(payload: &str) -> String {
    let _ = payload;
    todo!("svg")
}

/// `payload` as a QR code in PNG.
pub fn png(payload: &str) -> Vec<u8> {
    let _ = payload;
    todo!("png")
}
