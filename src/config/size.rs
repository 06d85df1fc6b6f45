// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Byte sizes as users type them: `4096`, `64K`, `4M`, `1G`, `8GiB`.
//!
//! Suffixes are binary (K = 1024) and case-insensitive; an optional `B` or
//! `iB` may follow. Arithmetic is checked, so `99999999999G` is an error and
//! never a wrapped-around small number.

use thiserror::Error;

/// Why a size string was refused. The text is what the user reads.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("size is empty; give a number with an optional K/M/G/T suffix, e.g. 4M")]
    Empty,
    #[error("size '{0}' is not a number with an optional K/M/G/T suffix (e.g. 4M, 1G)")]
    Malformed(String),
    #[error("size '{0}' is too large to represent; use a smaller size")]
    Overflow(String),
    #[error("size '{0}' is zero; give a positive size such as 4M")]
    Zero(String),
    #[error("size '{0}' ({1} bytes) is not a power of two; use e.g. {2}")]
    NotPowerOfTwo(String, u64, String),
    #[error("size '{0}' is below the minimum of {1}; use at least {1}")]
    TooSmall(String, String),
}

/// Parses `text` into a number of bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(SizeError::Malformed(text.to_string())),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

/// Parses a size that must be a power of two and at least `min` bytes.
pub fn parse_pow2_size(text: &str, min: u64) -> Result<u64, SizeError> {
    let size = parse_size(text)?;
    if size == 0 {
        return Err(SizeError::Zero(text.to_string()));
    }
    if !size.is_power_of_two() {
        let up = size.checked_next_power_of_two().unwrap_or(1 << 63);
        return Err(SizeError::NotPowerOfTwo(
            text.to_string(),
            size,
            format_size(up),
        ));
    }
    if size < min {
        return Err(SizeError::TooSmall(text.to_string(), format_size(min)));
    }
    Ok(size)
}

/// Formats `bytes` with the largest binary suffix that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{}", bytes >> shift, unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12b"), Ok(12));
    }

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("8gb"), Ok(8 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 16M "), Ok(16 << 20));
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for bad in ["M", "4X", "4 M", "-4M", "4.5M", "0x10", "4MM", "abc"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(parse_size(""), Err(SizeError::Empty));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(parse_size("16777215T"), Ok(16777215u64 << 40));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn power_of_two_rules() {
        assert_eq!(parse_pow2_size("4M", 4096), Ok(4 << 20));
        assert_eq!(parse_pow2_size("8G", 4096), Ok(8 << 30));
        assert!(matches!(
            parse_pow2_size("0", 4096),
            Err(SizeError::Zero(_))
        ));
        let e = parse_pow2_size("6M", 4096).unwrap_err();
        assert!(matches!(e, SizeError::NotPowerOfTwo(_, _, _)));
        assert!(e.to_string().contains("8M"), "{e}");
        assert!(matches!(
            parse_pow2_size("2K", 4096),
            Err(SizeError::TooSmall(_, _))
        ));
    }

    #[test]
    fn formats_with_exact_suffix() {
        assert_eq!(format_size(4096), "4K");
        assert_eq!(format_size(4 << 20), "4M");
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }
}
