//! Money: integer micro-dollars inside, decimal strings outside (SPEC §2).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An amount of US dollars in micro-dollars (1 USD = 1,000,000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub u64);

pub const MICROS_PER_USD: u64 = 1_000_000;

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// Parses a non-negative decimal such as `"100"`, `"0.048"` or `"12.5"` (at most six
    /// decimals: anything finer is not money we can hold).
    pub fn parse(text: &str) -> Option<Micros> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        if !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || fraction.len() > 6
        {
            return None;
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let fraction: u64 = format!("{fraction:0<6}").parse().ok()?;
        whole
            .checked_mul(MICROS_PER_USD)?
            .checked_add(fraction)
            .map(Micros)
    }

    /// The hold for an estimate: max(1.2 × estimate, $0.01), rounded up.
    pub fn hold_for(estimate: Micros) -> Micros {
        let scaled = estimate.0.saturating_mul(6).div_ceil(5);
        Micros(scaled.max(10_000))
    }
}

/// `"0.048"`, `"100"`, `"0"`: shortest exact decimal.
impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_USD;
        let fraction = self.0 % MICROS_PER_USD;
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{fraction:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// In the API document: a decimal string of US dollars, at most six decimals.
impl utoipa::PartialSchema for Micros {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^[0-9]+(\.[0-9]{1,6})?$"))
            .description(Some("US dollars as a decimal string"))
            .examples(["0.048"])
            .into()
    }
}

impl utoipa::ToSchema for Micros {
    fn name() -> std::borrow::Cow<'static, str> {
        "Usd".into()
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Micros::parse(&text).ok_or_else(|| serde::de::Error::custom("not a decimal amount"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_decimal_strings_exactly() {
        for (text, micros, printed) in [
            ("0.048", 48_000, "0.048"),
            ("100", 100_000_000, "100"),
            ("100.00", 100_000_000, "100"),
            ("0.000001", 1, "0.000001"),
            (".5", 500_000, "0.5"),
        ] {
            let parsed = Micros::parse(text).unwrap();
            assert_eq!(parsed, Micros(micros));
            assert_eq!(parsed.to_string(), printed);
        }
        for bad in ["", ".", "-1", "1e3", "0.0000001", "1,5", "abc"] {
            assert_eq!(Micros::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hold_is_one_point_two_times_the_estimate_with_a_one_cent_floor() {
        assert_eq!(Micros::hold_for(Micros(40_000)), Micros(48_000));
        assert_eq!(Micros::hold_for(Micros(1)), Micros(10_000));
        assert_eq!(Micros::hold_for(Micros(0)), Micros(10_000));
        assert_eq!(Micros::hold_for(Micros(33_333)), Micros(40_000));
    }
}
