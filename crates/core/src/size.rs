//! Sizes in bytes as people write them: `4096`, `256KiB`, `2MiB`, `1GiB`, `1.5GB`.

use crate::error::{Error, Result};

/// Parses a size: an integer number of bytes, or a number with a unit (KiB, MiB, GiB, TiB in
/// powers of two; KB, MB, GB, TB in powers of ten). The error shows examples.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(Error::invalid(format!(
            "`{s}` is negative; a size is 0 or more"
        )));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        Error::invalid(format!(
            "`{s}` is not a size (examples: 4096, 256KiB, 2MiB, 1GiB)"
        ))
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(Error::invalid(format!(
                "unknown size unit `{u}` in `{s}` (use KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            )))
        }
    };
    let v = n * mult as f64;
    if !(v.is_finite() && v < u64::MAX as f64) {
        return Err(Error::invalid(format!("`{s}` is too large")));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_size("-1").is_err() && parse_size("2 parsecs").is_err());
    }
}
