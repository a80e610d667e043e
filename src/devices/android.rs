//! The QR code Thunderbird for Android scans to add an account: Thunderbird's "Export for
//! Mobile" payload (format version 1), drawn as SVG for the page or PNG for the CLI.
//!
//! The payload is one account: the incoming server (IMAP when the app password may use
//! it, else POP3), then one outgoing server group with the identity. The format needs an
//! outgoing server, so submission is always given, with the password only when the app
//! password may send. `AccountName` is left empty, which readers take as "the address".
//! The codes use error correction level M and a 4-module quiet zone, as scanners expect;
//! the SVG is one `<path>` and nothing else (no script, no external reference), so the
//! page can inline it.

use std::fmt::Write;

use qrcode::{Color, EcLevel, QrCode};
use serde_json::{json, Value};

use super::{ClientSettings, DeviceAccount, MailApp, Security, Server, SetupError};
use crate::names::Protocol;

/// The payload is too long for a QR code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("the account's settings do not fit in a QR code")]
pub struct TooLong;

/// Modules of light margin around the code.
const QUIET_ZONE: usize = 4;
/// Pixels per module in the PNG.
const PNG_SCALE: usize = 8;
/// The SVG's displayed size in CSS pixels.
const SVG_SIZE: usize = 300;

const FORMAT_VERSION: u8 = 1;
const PASSWORD_CLEARTEXT: u8 = 1;
const SMTP: u8 = 0;

fn security(server: &Server) -> u8 {
    match server.security {
        Security::StartTls => 2,
        Security::Tls => 3,
    }
}

/// The QR code's JSON payload.
pub fn payload(
    settings: &ClientSettings,
    account: &DeviceAccount<'_>,
) -> Result<String, SetupError> {
    let app = MailApp::choose(settings, account)?;
    let code = if app.incoming == Protocol::Imap { 0 } else { 1 };
    let mut incoming_server = server_entry(code, app.incoming_server, account.address);
    if let Some(password) = app.password {
        // AccountName empty: readers then name the account after the address.
        incoming_server.extend([json!(""), json!(password)]);
    }
    let mut outgoing_server = server_entry(SMTP, app.outgoing_server, account.address);
    if let Some(password) = app.outgoing_password {
        outgoing_server.push(json!(password));
    }
    let identity = json!([account.address, account.display_name]);
    let root = json!([
        FORMAT_VERSION,
        [1, 1],
        Value::Array(incoming_server),
        [[Value::Array(outgoing_server), identity]],
    ]);
    Ok(root.to_string())
}

/// The fields an incoming and an outgoing server share, in the format's order.
fn server_entry(protocol_code: u8, server: &Server, username: &str) -> Vec<Value> {
    vec![
        json!(protocol_code),
        json!(server.host),
        json!(server.port),
        json!(security(server)),
        json!(PASSWORD_CLEARTEXT),
        json!(username),
    ]
}

fn code(payload: &str) -> Result<QrCode, TooLong> {
    QrCode::with_error_correction_level(payload, EcLevel::M).map_err(|_| TooLong)
}

/// `payload` as a QR code in SVG, with a quiet zone, sized to scan from a screen.
pub fn svg(payload: &str) -> Result<String, TooLong> {
    let code = code(payload)?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QUIET_ZONE;
    let mut path = String::new();
    for (y, row) in colors.chunks(width).enumerate() {
        let mut x = 0;
        while x < width {
            if row[x] == Color::Dark {
                let run = row[x..].iter().take_while(|c| **c == Color::Dark).count();
                let _ = write!(
                    path,
                    "M{},{}h{run}v1h-{run}z",
                    x + QUIET_ZONE,
                    y + QUIET_ZONE
                );
                x += run;
            } else {
                x += 1;
            }
        }
    }
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_SIZE}\" height=\"{SVG_SIZE}\" \
         viewBox=\"0 0 {size} {size}\" shape-rendering=\"crispEdges\">\
         <rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/>\
         <path fill=\"#000\" d=\"{path}\"/></svg>"
    ))
}

/// `payload` as a QR code in PNG: 8-bit grayscale, 8 pixels per module.
pub fn png(payload: &str) -> Result<Vec<u8>, TooLong> {
    let code = code(payload)?;
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % width + QUIET_ZONE, i / width + QUIET_ZONE);
        for dy in 0..PNG_SCALE {
            let start = (my * PNG_SCALE + dy) * side + mx * PNG_SCALE;
            pixels[start..start + PNG_SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    // The side is at most (177 + 8) * 8 pixels, well within u32.
    let side = side as u32;
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing to a Vec cannot fail for I/O; an encoder error would mean a bug here.
    let written = encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&pixels));
    written.map_err(|_| TooLong)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures;
    use crate::devices::fixtures::xml_leaves;

    #[test]
    fn the_payload_follows_format_version_1() {
        let account = fixtures::account("imap,smtp", Some("s3cret"));
        let text = payload(&fixtures::settings(), &account).unwrap();
        assert_eq!(
            text,
            "[1,[1,1],[0,\"imap.example.org\",993,3,1,\"jane@example.org\",\"\",\"s3cret\"],\
             [[[0,\"smtp.example.org\",587,2,1,\"jane@example.org\",\"s3cret\"],\
             [\"jane@example.org\",\"Jane Doe\"]]]]"
        );
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[2][7], "s3cret");
        assert_eq!(parsed[3][0][1][1], "Jane Doe");
    }

    #[test]
    fn pop3_is_used_only_without_imap_and_passwords_follow_the_protocols() {
        let settings = fixtures::settings();
        let pop = fixtures::account("pop3", Some("pw"));
        let parsed: Value = serde_json::from_str(&payload(&settings, &pop).unwrap()).unwrap();
        assert_eq!(
            parsed[2],
            json!([
                1,
                "pop.example.org",
                995,
                3,
                1,
                "jane@example.org",
                "",
                "pw"
            ])
        );
        // Not allowed to send: the outgoing server without a password.
        assert_eq!(
            parsed[3][0][0],
            json!([0, "smtp.example.org", 587, 2, 1, "jane@example.org"])
        );
        let both = fixtures::account("pop3,imap", None);
        let parsed: Value = serde_json::from_str(&payload(&settings, &both).unwrap()).unwrap();
        assert_eq!(
            parsed[2],
            json!([0, "imap.example.org", 993, 3, 1, "jane@example.org"])
        );
    }

    #[test]
    fn no_incoming_or_no_server_is_refused() {
        let settings = fixtures::settings();
        assert_eq!(
            payload(&settings, &fixtures::account("smtp", Some("pw"))),
            Err(SetupError::NoIncomingServer)
        );
        let mut no_smtp = fixtures::settings();
        no_smtp.smtp = None;
        assert_eq!(
            payload(&no_smtp, &fixtures::account("imap", Some("pw"))),
            Err(SetupError::NotOffered(Protocol::Smtp))
        );
        let mut no_pop = fixtures::settings();
        no_pop.pop3 = None;
        assert_eq!(
            payload(&no_pop, &fixtures::account("pop3,smtp", Some("pw"))),
            Err(SetupError::NotOffered(Protocol::Pop3))
        );
    }

    fn sample() -> String {
        payload(
            &fixtures::settings(),
            &fixtures::account("imap,smtp", Some("pw")),
        )
        .unwrap()
    }

    #[test]
    fn the_svg_draws_every_dark_module_inside_a_quiet_zone() {
        let text = sample();
        let code = QrCode::with_error_correction_level(&text, EcLevel::M).unwrap();
        let svg = svg(&text).unwrap();
        assert!(!svg.contains("script"));
        let leaves = xml_leaves(&svg);
        let get = |path: &str| {
            leaves
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let size = code.width() + 8;
        assert_eq!(get("svg/@viewBox"), format!("0 0 {size} {size}"));
        assert_eq!(get("svg/@width"), "300");
        let d = get("svg/path/@d");
        let mut dark = vec![false; size * size];
        for segment in d.split('z').filter(|s| !s.is_empty()) {
            let (start, run) = segment.trim_start_matches('M').split_once('h').unwrap();
            let (x, y) = start.split_once(',').unwrap();
            let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
            let run: usize = run.split_once('v').unwrap().0.parse().unwrap();
            for cell in &mut dark[y * size + x..y * size + x + run] {
                assert!(!*cell, "drawn twice");
                *cell = true;
            }
        }
        let colors = code.to_colors();
        for y in 0..size {
            for x in 0..size {
                let inside = (4..size - 4).contains(&x) && (4..size - 4).contains(&y);
                let want = inside && colors[(y - 4) * code.width() + (x - 4)] == Color::Dark;
                assert_eq!(dark[y * size + x], want, "module {x},{y}");
            }
        }
    }

    #[test]
    fn the_png_decodes_to_the_same_modules() {
        let text = sample();
        let code = QrCode::with_error_correction_level(&text, EcLevel::M).unwrap();
        let bytes = png(&text).unwrap();
        let mut reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        let side = (code.width() + 8) * 8;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        let colors = code.to_colors();
        for py in 0..side {
            for px in 0..side {
                let (mx, my) = (px / 8, py / 8);
                let inside =
                    (4..code.width() + 4).contains(&mx) && (4..code.width() + 4).contains(&my);
                let dark = inside && colors[(my - 4) * code.width() + (mx - 4)] == Color::Dark;
                assert_eq!(
                    pixels[py * side + px],
                    if dark { 0 } else { 255 },
                    "{px},{py}"
                );
            }
        }
    }

    #[test]
    fn a_payload_too_long_for_a_qr_code_is_an_error() {
        let long = "x".repeat(4000);
        assert_eq!(svg(&long), Err(TooLong));
        assert_eq!(png(&long), Err(TooLong));
    }
}
