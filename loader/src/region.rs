//! Physical regions, and their textual form `BASE:SIZE` as users type it.
//!
//! A [`Region`] is the physical memory reserved for one kernel instance. The loader treats it as
//! the instance's whole world: every byte it writes, and every page the plan asks the instance's
//! page tables to map, lies inside it.
//!
//! # Invariants
//! A region accepted by [`crate::plan`] has `base + size` representable in a `u64` and both
//! `base` and `size` page-aligned, so rounding a segment inside it out to whole pages never
//! reaches memory that belongs to someone else.
//!
//! # Text form
//! `BASE:SIZE`, each number in decimal (`2097152`) or hexadecimal (`0x200000`), optionally with
//! `_` separators (`0x1000_0000`) and a binary suffix `K`, `M` or `G` (×2¹⁰, ×2²⁰, ×2³⁰; case
//! does not matter): `0x200000:64M`, `256M:1G`.

use core::fmt;
use core::str::FromStr;

/// Granule of the instance's page tables and of the region's alignment (the project's one
/// page size, `bootproto::PAGE_SIZE`: SDM Vol. 3A, "Paging Modes and Control Bits").
pub const PAGE_SIZE: u64 = bootproto::PAGE_SIZE;

/// A physical address range `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// First physical byte of the region.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// A region of `size` bytes starting at physical address `base`.
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte, or `None` when `base + size` does not fit in a `u64`.
    pub const fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }

    /// Whether `[start, start + len)` lies entirely inside the region (false on overflow).
    pub fn contains_range(&self, start: u64, len: u64) -> bool {
        match (self.end(), start.checked_add(len)) {
            (Some(end), Some(range_end)) => start >= self.base && range_end <= end,
            _ => false,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end() {
            Some(end) => write!(f, "[{:#x}, {:#x})", self.base, end),
            None => write!(f, "[{:#x}, +{:#x} overflows)", self.base, self.size),
        }
    }
}

/// Why a number could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseNumberError {
    /// Nothing (or only a prefix or suffix) was given.
    Empty,
    /// A character that is not a digit of the number's base.
    InvalidDigit(char),
    /// The value does not fit in 64 bits (after applying the suffix).
    Overflow,
}

impl fmt::Display for ParseNumberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty number (expected e.g. 0x200000, 2097152 or 64M)"),
            Self::InvalidDigit(c) => write!(
                f,
                "invalid character {c:?} (numbers are decimal or 0x-prefixed hex, with an \
                 optional K, M or G suffix)"
            ),
            Self::Overflow => write!(f, "number does not fit in 64 bits"),
        }
    }
}

/// Why a `BASE:SIZE` region could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseRegionError {
    /// There is no `:` between base and size.
    MissingColon,
    /// The base is not a number.
    Base(ParseNumberError),
    /// The size is not a number.
    Size(ParseNumberError),
    /// `base + size` does not fit in 64 bits.
    EndOverflows {
        /// The parsed base.
        base: u64,
        /// The parsed size.
        size: u64,
    },
}

impl fmt::Display for ParseRegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingColon => write!(f, "expected BASE:SIZE, e.g. 0x10000000:64M"),
            Self::Base(e) => write!(f, "region base: {e}"),
            Self::Size(e) => write!(f, "region size: {e}"),
            Self::EndOverflows { base, size } => {
                write!(f, "region base {base:#x} + size {size:#x} overflows 64 bits")
            }
        }
    }
}

impl core::error::Error for ParseNumberError {}
impl core::error::Error for ParseRegionError {}

/// Parses `0x200000`, `2097152`, `0x1000_0000`, `64M`, `0x10K`: decimal or `0x` hex, optional
/// `_` separators, optional binary suffix `K`/`M`/`G` (any case).
pub fn parse_number(text: &str) -> Result<u64, ParseNumberError> {
    let text = text.trim();
    let (digits, multiplier) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (text.get(..at).unwrap_or(""), 1u64 << 10),
        Some((at, 'm' | 'M')) => (text.get(..at).unwrap_or(""), 1u64 << 20),
        Some((at, 'g' | 'G')) => (text.get(..at).unwrap_or(""), 1u64 << 30),
        _ => (text, 1),
    };
    let (digits, radix) = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (digits, 10),
    };
    let mut value: u64 = 0;
    let mut seen_digit = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let digit = c.to_digit(radix).ok_or(ParseNumberError::InvalidDigit(c))?;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(ParseNumberError::Overflow)?;
        seen_digit = true;
    }
    if !seen_digit {
        return Err(ParseNumberError::Empty);
    }
    value.checked_mul(multiplier).ok_or(ParseNumberError::Overflow)
}

impl FromStr for Region {
    type Err = ParseRegionError;

    /// Parses `BASE:SIZE` (see the module docs). Alignment is checked later, by
    /// [`crate::plan`], so that the message can say what the region is for.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (base, size) = text.split_once(':').ok_or(ParseRegionError::MissingColon)?;
        let base = parse_number(base).map_err(ParseRegionError::Base)?;
        let size = parse_number(size).map_err(ParseRegionError::Size)?;
        let region = Region { base, size };
        match region.end() {
            Some(_) => Ok(region),
            None => Err(ParseRegionError::EndOverflows { base, size }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_every_accepted_form() {
        assert_eq!(parse_number("0x200000"), Ok(0x20_0000));
        assert_eq!(parse_number("0X200000"), Ok(0x20_0000));
        assert_eq!(parse_number("2097152"), Ok(0x20_0000));
        assert_eq!(parse_number("0x1000_0000"), Ok(0x1000_0000));
        assert_eq!(parse_number("4K"), Ok(4096));
        assert_eq!(parse_number("64M"), Ok(64 << 20));
        assert_eq!(parse_number("64m"), Ok(64 << 20));
        assert_eq!(parse_number("2G"), Ok(2 << 30));
        assert_eq!(parse_number("0x10k"), Ok(0x10 << 10));
        assert_eq!(parse_number(" 12 "), Ok(12));
        assert_eq!(parse_number("0"), Ok(0));
    }

    #[test]
    fn bad_numbers_are_refused_with_a_reason() {
        assert_eq!(parse_number(""), Err(ParseNumberError::Empty));
        assert_eq!(parse_number("0x"), Err(ParseNumberError::Empty));
        assert_eq!(parse_number("M"), Err(ParseNumberError::Empty));
        assert_eq!(parse_number("_"), Err(ParseNumberError::Empty));
        assert_eq!(parse_number("12T"), Err(ParseNumberError::InvalidDigit('T')));
        assert_eq!(parse_number("0x12g4"), Err(ParseNumberError::InvalidDigit('g')));
        assert_eq!(parse_number("ff"), Err(ParseNumberError::InvalidDigit('f')));
        assert_eq!(parse_number("-1"), Err(ParseNumberError::InvalidDigit('-')));
        assert_eq!(parse_number("0x1_0000_0000_0000_0000"), Err(ParseNumberError::Overflow));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_number("18446744073709551616"), Err(ParseNumberError::Overflow));
        assert_eq!(parse_number("0xff_ffff_ffff_ffffK"), Err(ParseNumberError::Overflow));
    }

    #[test]
    fn regions() {
        assert_eq!("0x200000:64M".parse(), Ok(Region::new(0x20_0000, 64 << 20)));
        assert_eq!("256M:1G".parse(), Ok(Region::new(256 << 20, 1 << 30)));
        assert_eq!("0x200000".parse::<Region>(), Err(ParseRegionError::MissingColon));
        assert_eq!(
            "x:1".parse::<Region>(),
            Err(ParseRegionError::Base(ParseNumberError::InvalidDigit('x')))
        );
        assert_eq!("1:".parse::<Region>(), Err(ParseRegionError::Size(ParseNumberError::Empty)));
        assert_eq!(
            "0xffffffffffffffff:2".parse::<Region>(),
            Err(ParseRegionError::EndOverflows { base: u64::MAX, size: 2 })
        );
    }

    #[test]
    fn containment_never_overflows() {
        let r = Region::new(0x1000, 0x2000);
        assert!(r.contains_range(0x1000, 0x2000));
        assert!(r.contains_range(0x2000, 0));
        assert!(!r.contains_range(0xfff, 1));
        assert!(!r.contains_range(0x2fff, 2));
        assert!(!r.contains_range(u64::MAX, 2));
        assert!(!Region::new(u64::MAX, 2).contains_range(u64::MAX, 1));
    }
}
