//! Parsing and printing byte sizes (`10K`, `1M`, `1500`, `10kB`).
//!
//! `K`, `M`, `G` (also `KiB`, `MiB`, `GiB`) are powers of 1024, as in the KTCP
//! paper's file sizes (its "10 KB" file is 10240 bytes); `kB`, `MB`, `GB`
//! (with a `B`) are powers of 1000. A plain number is bytes.

/// A size string that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad size {0:?}: use bytes or a number with K, M, G (x1024) or kB, MB, GB (x1000), e.g. 10K, 1M")]
pub struct SizeError(pub String);

/// Parse a size like `10K` (10240), `1M` (1048576), `10kB` (10000) or `1500`.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(SizeError(s.to_string())),
    };
    let n: f64 = num.parse().map_err(|_| SizeError(s.to_string()))?;
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes <= (1u64 << 40) as f64) || bytes.fract() != 0.0
    {
        return Err(SizeError(s.to_string()));
    }
    Ok(bytes as u64)
}

/// A short human label: `10K`, `1M`, `1.5M`, `1000` (binary units, as parsed).
pub fn size_label(bytes: u64) -> String {
    for (unit, m) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if bytes >= m {
            let v = bytes as f64 / m as f64;
            return if bytes.checked_rem(m) == Some(0) {
                format!("{}{unit}", bytes / m)
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{bytes}")
}

/// A duration in milliseconds for tables: `548.1` or `3312`.
pub fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse_size("10K"), Ok(10240));
        assert_eq!(parse_size("10KiB"), Ok(10240));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10kB"), Ok(10_000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size(" 1.5M "), Ok(1_572_864));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "K", "10X", "-1", "0", "1.3", "1e9", "10 K"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_round_trip() {
        for s in ["10K", "100K", "1M", "10M", "1000", "1.5M"] {
            assert_eq!(size_label(parse_size(s).unwrap()), s);
        }
    }
}
