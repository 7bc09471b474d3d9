//! Money and identifiers.
//!
//! Every amount in hongbao is an integer number of fen (1 yuan = 100 fen) held in a `u64`.
//! No floating point touches an amount: parsing reads digits, display writes digits, and all
//! arithmetic is checked so that an overflow is an error value, never a wrap.
//!
//! Identifiers are plain `u64` newtypes chosen by the caller, so that a retried request
//! carrying the same id is recognised and applied once.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A non-negative amount of money in fen (分). `Amount::yuan(1) == Amount::fen(100)`.
///
/// # Examples
///
/// ```
/// use hongbao::Amount;
/// let a: Amount = "12.34".parse().unwrap();
/// assert_eq!(a, Amount::fen(1234));
/// assert_eq!(a.to_string(), "12.34");
/// assert_eq!(Amount::yuan(5).to_string(), "5.00");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

/// An amount travels as its decimal string (`"12.34"`), never as a float: a JSON number
/// would be read as one by most clients.
#[cfg(feature = "serde")]
impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Amount {
    /// Zero fen.
    pub const ZERO: Amount = Amount(0);

    /// An amount of `fen` fen.
    pub const fn fen(fen: u64) -> Amount {
        Amount(fen)
    }

    /// An amount of `yuan` whole yuan.
    ///
    /// # Panics
    ///
    /// Panics if `yuan * 100` does not fit in a `u64` (more than 1.8 × 10¹⁷ yuan).
    pub const fn yuan(yuan: u64) -> Amount {
        match yuan.checked_mul(100) {
            Some(fen) => Amount(fen),
            None => panic!("Amount::yuan overflows u64 fen"),
        }
    }

    /// The amount in fen.
    pub const fn as_fen(self) -> u64 {
        self.0
    }

    /// Whether the amount is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Amount) -> Option<Amount> {
        match self.0.checked_add(other.0) {
            Some(fen) => Some(Amount(fen)),
            None => None,
        }
    }

    /// `self - other`, or `None` if `other` is larger.
    pub const fn checked_sub(self, other: Amount) -> Option<Amount> {
        match self.0.checked_sub(other.0) {
            Some(fen) => Some(Amount(fen)),
            None => None,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Why a string is not an amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ParseAmountError {
    /// The string was empty.
    #[error("empty amount")]
    Empty,
    /// A character other than ASCII digits and one decimal point (signs, exponents, spaces).
    #[error("amount may contain only digits and one decimal point, as in 12.34")]
    InvalidCharacter,
    /// More than two digits after the point: fen is the smallest unit.
    #[error("amount has more than two decimal places (fen is the smallest unit)")]
    TooManyDecimals,
    /// A point with no digits before or after it (".5", "5.").
    #[error("amount needs digits on both sides of the decimal point")]
    MissingDigits,
    /// The value does not fit in a `u64` of fen.
    #[error("amount is too large")]
    Overflow,
}

impl FromStr for Amount {
    type Err = ParseAmountError;

    /// Parses `"12"`, `"12.3"` or `"12.34"` yuan. Rejects signs, exponents, white space,
    /// a third decimal place and a bare point.
    fn from_str(s: &str) -> Result<Amount, ParseAmountError> {
        if s.is_empty() {
            return Err(ParseAmountError::Empty);
        }
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (s, None),
        };
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !frac.is_none_or(digits) {
            return Err(ParseAmountError::InvalidCharacter);
        }
        if whole.is_empty() || frac.is_some_and(str::is_empty) {
            return Err(ParseAmountError::MissingDigits);
        }
        let frac = frac.unwrap_or("");
        if frac.len() > 2 {
            return Err(ParseAmountError::TooManyDecimals);
        }
        let mut fen: u64 = 0;
        // Reading yuan digits then exactly two fen digits (padded) keeps this integer-only.
        for b in whole.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', 2 - frac.len())) {
            fen = fen
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or(ParseAmountError::Overflow)?;
        }
        Ok(Amount(fen))
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            /// Parses the decimal id, as `Display` writes it.
            fn from_str(s: &str) -> Result<$name, ParseIdError> {
                // `u64::from_str` accepts a leading `+`; an id is digits only.
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseIdError);
                }
                s.parse().map($name).map_err(|_| ParseIdError)
            }
        }
    };
}

/// Why a string is not an id: ids are decimal `u64`s, digits only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("an id is a decimal number from 0 to 18446744073709551615")]
pub struct ParseIdError;

id_type!(
    /// A wallet holder and group member.
    UserId
);
id_type!(
    /// A chat group: its roster decides who may grab its packets.
    GroupId
);
id_type!(
    /// A red packet, chosen by the sender's client so that a retried send is applied once.
    PacketId
);
id_type!(
    /// A deposit or withdrawal, chosen by the caller so that a retry is applied once.
    OpId
);
id_type!(
    /// A transfer (转账), chosen by the sender's client so that a retried transfer is applied
    /// once.
    TransferId
);
id_type!(
    /// An enterprise (企业): its admins, its policy and the groups attached to it.
    OrgId
);

/// A fast hasher for the `u64` ids used as map keys on the grab path (claims, rosters).
///
/// The ids are the embedding server's own (not chosen by remote users), so a multiplicative
/// hash is enough; a per-process random key is still mixed in so that no fixed set of ids
/// collides on every run.
#[derive(Clone, Copy, Default)]
pub struct IdHasher {
    hash: u64,
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys; fold the bytes in so the hasher stays correct.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        let mixed = (self.hash ^ id ^ process_key()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // hashbrown takes its control bits from the top and its index from the bottom;
        // folding the high half down gives both well-mixed bits.
        self.hash = mixed ^ (mixed >> 32);
    }
}

fn process_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(rand::random)
}

/// Builds [`IdHasher`]s.
pub type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;

/// A map keyed by an id type, hashed with [`IdHasher`].
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;

/// A set of ids, hashed with [`IdHasher`].
pub type IdSet<K> = std::collections::HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_amounts() {
        for (text, fen) in [
            ("0", 0),
            ("12", 1200),
            ("12.3", 1230),
            ("12.34", 1234),
            ("0.01", 1),
            ("007.05", 705),
            ("184467440737095516.15", u64::MAX),
        ] {
            assert_eq!(text.parse::<Amount>(), Ok(Amount::fen(fen)), "{text}");
        }
    }

    #[test]
    fn rejects_invalid_amounts() {
        use ParseAmountError::*;
        for (text, err) in [
            ("", Empty),
            ("12.345", TooManyDecimals),
            ("-1", InvalidCharacter),
            ("+1", InvalidCharacter),
            ("1e3", InvalidCharacter),
            (" 1", InvalidCharacter),
            ("1.2.3", InvalidCharacter),
            ("１２", InvalidCharacter),
            (".5", MissingDigits),
            ("5.", MissingDigits),
            (".", MissingDigits),
            ("184467440737095516.16", Overflow),
            ("99999999999999999999", Overflow),
        ] {
            assert_eq!(text.parse::<Amount>(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn displays_two_decimals_and_round_trips() {
        assert_eq!(Amount::fen(1234).to_string(), "12.34");
        assert_eq!(Amount::fen(5).to_string(), "0.05");
        assert_eq!(Amount::fen(0).to_string(), "0.00");
        assert_eq!(Amount::yuan(200).to_string(), "200.00");
        for fen in [0, 1, 99, 100, 101, 123_456_789, u64::MAX] {
            let a = Amount::fen(fen);
            assert_eq!(a.to_string().parse::<Amount>(), Ok(a));
        }
    }

    #[test]
    fn checked_arithmetic() {
        assert_eq!(Amount::fen(5).checked_sub(Amount::fen(6)), None);
        assert_eq!(Amount::fen(u64::MAX).checked_add(Amount::fen(1)), None);
        assert_eq!(Amount::fen(5).checked_add(Amount::fen(6)), Some(Amount::fen(11)));
    }

    #[test]
    fn id_sets_hold_what_is_put_in() {
        let set: IdSet<UserId> = (0..10_000).map(UserId).collect();
        assert!((0..10_000).all(|i| set.contains(&UserId(i))));
        assert!(!set.contains(&UserId(10_000)));
    }

    #[test]
    fn ids_parse_as_they_display() {
        assert_eq!("42".parse::<PacketId>(), Ok(PacketId(42)));
        assert_eq!(UserId(u64::MAX).to_string().parse::<UserId>(), Ok(UserId(u64::MAX)));
        for bad in ["", "+1", "-1", "1.0", " 1", "18446744073709551616", "x"] {
            assert_eq!(bad.parse::<OpId>(), Err(ParseIdError), "{bad:?}");
        }
    }
}
