//! Human sizes (`10G`, `512M`, `1T`) as postmasters write quotas.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size {0:?}: use a number of bytes or a number with K, M, G or T (powers of 1024), e.g. 10G")]
pub struct SizeError(pub String);

pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let err = || SizeError(s.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift)
        .filter(|v| *v <= i64::MAX as u64)
        .ok_or_else(err)
}

/// The largest exact unit, so `10737418240` shows as `10G`.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        let unit_bytes = 1u64 << shift;
        if bytes >= unit_bytes && bytes % unit_bytes == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["10Q", "", "G", "-1G", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_exact_units() {
        assert_eq!(format_size(10 << 30), "10G");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(0), "0");
    }
}
