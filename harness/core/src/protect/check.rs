//! Range checks of a component's numeric settings, one line per setting ([`check`]).
//!
//! Each component crate's `tests/settings.rs` keeps a table of every component's numeric keys
//! with out-of-range values and checks that each is refused naming its key; [`setting_keys`]
//! lists a settings struct's fields, so a field the table forgot fails that test.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

use crate::{Error, Result};

/// A numeric type a setting can have: `f64`, `f32`, `usize`, `u64`, `u32`, `i64`.
pub trait Setting: Copy + PartialOrd + Display {
    /// The type's least value when it is a bound of every range (0 for unsigned integers),
    /// shown instead of `-inf` for a range without a lower bound.
    const LEAST: Option<Self>;

    /// Whether the value is NaN.
    fn is_nan(self) -> bool;

    /// Whether the value is a finite number (always, for integers).
    fn is_finite(self) -> bool;
}

macro_rules! float_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            const LEAST: Option<Self> = None;
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    )*};
}

macro_rules! int_setting {
    ($($t:ty => $least:expr),*) => {$(
        impl Setting for $t {
            const LEAST: Option<Self> = $least;
            fn is_nan(self) -> bool {
                false
            }
            fn is_finite(self) -> bool {
                true
            }
        }
    )*};
}

float_setting!(f64, f32);
int_setting!(usize => Some(0), u64 => Some(0), u32 => Some(0), i64 => None);

/// (`lo`, inf): every value above `lo` (a learning rate is `above(0.0)`).
pub fn above<T>(lo: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(lo), Bound::Unbounded)
}

/// (`lo`, `hi`): strictly between the two.
pub fn open<T>(lo: T, hi: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(lo), Bound::Excluded(hi))
}

/// (`lo`, `hi`]: above `lo`, up to and including `hi` (a non-zero fraction is
/// `left_open(0.0, 1.0)`).
pub fn left_open<T>(lo: T, hi: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(lo), Bound::Included(hi))
}

/// The range in interval notation: `[1, inf)`, `(0, 1]`, `(-inf, inf)`.
pub fn describe<T: Setting>(range: &impl RangeBounds<T>) -> String {
    let start = match range.start_bound() {
        Bound::Included(v) => format!("[{v}"),
        Bound::Excluded(v) => format!("({v}"),
        Bound::Unbounded => match T::LEAST {
            Some(least) => format!("[{least}"),
            None => "(-inf".to_string(),
        },
    };
    let end = match range.end_bound() {
        Bound::Included(v) => format!("{v}]"),
        Bound::Excluded(v) => format!("{v})"),
        Bound::Unbounded => "inf)".to_string(),
    };
    format!("{start}, {end}")
}

/// Checks the setting `key` of value `value` against `range`. A component's constructor
/// (called when the matrix is planned, so a bad value is a usage error, exit 2, before anything
/// runs) checks each numeric field of its settings struct with one line:
///
/// ```
/// use harness_core::protect::{above, check, check_opt, left_open};
/// # fn main() -> harness_core::Result<()> {
/// # let (lr, rate, steps, epochs, scale) = (0.01, 0.5, 7usize, Some(3usize), 1.0);
/// check("lr", lr, above(0.0))?; // (0, inf)
/// check("rate", rate, 0.0..1.0)?; // [0, 1)
/// check("fraction", rate, left_open(0.0, 1.0))?; // (0, 1]
/// check("steps", steps, 1..)?; // [1, inf)
/// check_opt("epochs", epochs, 1..)?; // checked when set
/// check("scale", scale, ..)?; // any finite number
/// # Ok(())
/// # }
/// ```
///
/// Ranges are std ranges (`a..b` is [a, b), `a..=b` is [a, b], `a..` is [a, inf), `..` is
/// everything) or the helpers [`above`] (a, inf), [`open`] (a, b) and [`left_open`] (a, b], for
/// the open lower bounds std syntax cannot write. The error (`Error::Config`) names the key,
/// the range in interval notation and the value: `` `lr` must be in (0, inf), got 0 ``. NaN is
/// always refused, and so is an infinite float unless the range names it as an included bound
/// (`0.0..=f64::INFINITY`).
pub fn check<T: Setting>(key: &str, value: T, range: impl RangeBounds<T>) -> Result<()> {
    let included = |b: Bound<&T>| matches!(b, Bound::Included(v) if *v == value);
    let ok = if value.is_nan() {
        false
    } else if !value.is_finite() {
        included(range.start_bound()) || included(range.end_bound())
    } else {
        range.contains(&value)
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "`{key}` must be in {}, got {value}",
            describe(&range)
        )))
    }
}

/// [`check`] for an optional setting: `None` (left out, a default applies) passes, a value is
/// checked.
pub fn check_opt<T: Setting>(
    key: &str,
    value: Option<T>,
    range: impl RangeBounds<T>,
) -> Result<()> {
    match value {
        Some(v) => check(key, v, range),
        None => Ok(()),
    }
}

/// The keys of a settings struct `C` (its field names, as its derived `Deserialize` declares
/// them), or `None` when `C` does not deserialize from a struct. Tests use it to keep a table of
/// each component's settings complete: a new field shows up here.
pub fn setting_keys<C: serde::de::DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut keys = None;
    // The derived impl hands its field list to `deserialize_struct`, which stops there.
    let _ = C::deserialize(FieldList(&mut keys));
    keys
}

/// A deserializer that records the field list of the struct asked of it and fails.
struct FieldList<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for FieldList<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        _visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom(
            "only a struct's field list is read",
        ))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(serde::de::Error::custom("field list read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<()>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn messages_name_the_key_the_range_and_the_value() {
        assert!(
            message(check("lr", 0.0, above(0.0))).contains("`lr` must be in (0, inf), got 0"),
            "{}",
            message(check("lr", 0.0, above(0.0)))
        );
        let m = message(check("gamma", 1.5, open(0.0, 1.0)));
        assert!(m.contains("`gamma` must be in (0, 1), got 1.5"), "{m}");
        let m = message(check("steps", 0usize, 1..));
        assert!(m.contains("`steps` must be in [1, inf), got 0"), "{m}");
        let m = message(check("levels", 17usize, 1..=16));
        assert!(m.contains("`levels` must be in [1, 16], got 17"), "{m}");
        let m = message(check("rate", 1.0, 0.0..1.0));
        assert!(m.contains("`rate` must be in [0, 1), got 1"), "{m}");
        let m = message(check("ratio", 0.0f32, left_open(0.0, 1.0)));
        assert!(m.contains("`ratio` must be in (0, 1], got 0"), "{m}");
        let m = message(check("scale", f64::NAN, ..));
        assert!(m.contains("`scale` must be in (-inf, inf), got NaN"), "{m}");
        let m = message(check::<u64>("n", 5, ..=4));
        assert!(m.contains("`n` must be in [0, 4], got 5"), "{m}");
    }

    #[test]
    fn bounds_are_exact() {
        assert!(check("x", 0.0, 0.0..1.0).is_ok());
        assert!(check("x", 1.0, 0.0..1.0).is_err());
        assert!(check("x", 1.0, left_open(0.0, 1.0)).is_ok());
        assert!(check("x", 0.0, left_open(0.0, 1.0)).is_err());
        assert!(check("x", 1e-300, above(0.0)).is_ok());
        assert!(check("x", -0.0, above(0.0)).is_err());
        assert!(check("x", 1usize, 1..).is_ok());
        assert!(check("x", 0usize, 1..).is_err());
        assert!(check("x", 0usize, ..).is_ok());
        assert!(check("x", -3i64, ..).is_ok());
        assert!(check("x", 255.0, left_open(0.0, 255.0)).is_ok());
    }

    #[test]
    fn nan_and_infinity_are_refused_unless_named() {
        for r in [
            check("x", f64::NAN, ..),
            check("x", f64::INFINITY, ..),
            check("x", f64::NEG_INFINITY, ..),
            check("x", f64::INFINITY, above(0.0)),
            check("x", f32::INFINITY, 0.0f32..),
            check("x", f64::NAN, 0.0..=f64::INFINITY),
        ] {
            assert!(r.is_err());
        }
        assert!(check("x", f64::INFINITY, 0.0..=f64::INFINITY).is_ok());
        assert!(check("x", f64::NEG_INFINITY, f64::NEG_INFINITY..=0.0).is_ok());
    }

    #[test]
    fn setting_keys_lists_the_fields_of_a_settings_struct() {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        #[allow(dead_code)]
        struct Cfg {
            lr: f64,
            steps: usize,
            name: String,
        }
        assert_eq!(setting_keys::<Cfg>(), Some(&["lr", "steps", "name"][..]));
        assert_eq!(setting_keys::<f64>(), None);
    }

    #[test]
    fn optional_settings_are_checked_when_set() {
        assert!(check_opt("epochs", None::<usize>, 1..).is_ok());
        assert!(check_opt("epochs", Some(1usize), 1..).is_ok());
        let m = message(check_opt("epochs", Some(0usize), 1..));
        assert!(m.contains("`epochs` must be in [1, inf), got 0"), "{m}");
    }
}
