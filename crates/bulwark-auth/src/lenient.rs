//! Lenient reading of TOML files that report every problem at once.
//!
//! A file is read by serde into structs whose keys are `Option<`[`Field`]`<T>>`: a value of the
//! wrong type does not stop the read but is kept, so that one validation pass can then name
//! every key at fault, with what it found ([`describe`]). The password store and the broker's
//! configuration file are read this way.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use toml::{Table, Value};

/// One key's value: the type the key takes, or the value found instead.
///
/// A date is never taken as a `T`: no key of Bulwark's files takes one, and a date handed on
/// through a [`Value`] would otherwise pass for a string. Read the file with `toml::from_str`
/// into the struct holding the fields, not through a [`Table`] or [`Value`]: those hand dates on
/// as strings before a `Field` can see them.
#[derive(Debug, Clone)]
pub enum Field<T> {
    /// The value, of the expected type.
    Given(T),
    /// A value of another type.
    Wrong(Value),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = restore_dates(Value::deserialize(deserializer)?);
        if value.is_datetime() {
            // No key takes a date.
            return Ok(Self::Wrong(value));
        }
        Ok(match T::deserialize(hide_dates(value.clone())) {
            Ok(given) => Self::Given(given),
            Err(_) => Self::Wrong(value),
        })
    }
}

/// The key of the one-key table that stands for a date inside a value handed on to serde.
const DATE_KEY: &str = "$__bulwark_date";

/// `value` with every nested date replaced by a one-key table: [`Value`] hands a date on to
/// serde as a string, which a string key would then take.
fn hide_dates(value: Value) -> Value {
    match value {
        Value::Datetime(date) => {
            let mut table = Table::new();
            table.insert(DATE_KEY.to_owned(), Value::String(date.to_string()));
            Value::Table(table)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(hide_dates).collect()),
        Value::Table(table) => Value::Table(
            table
                .into_iter()
                .map(|(key, value)| (key, hide_dates(value)))
                .collect(),
        ),
        other => other,
    }
}

/// The inverse of [`hide_dates`], so that problems describe a date as a date.
fn restore_dates(value: Value) -> Value {
    match value {
        Value::Table(table) => {
            if table.len() == 1
                && let Some(Value::String(text)) = table.get(DATE_KEY)
                && let Ok(date) = text.parse()
            {
                return Value::Datetime(date);
            }
            Value::Table(
                table
                    .into_iter()
                    .map(|(key, value)| (key, restore_dates(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(restore_dates).collect()),
        other => other,
    }
}

/// A value as a problem report shows it: `the string "x"`, `the integer 5`, `an array`.
pub fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string \"{s}\""),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Names and groups are shown at most this many characters long in error messages.
pub(crate) const SHOWN_NAME_CHARS: usize = 64;

/// A name as shown in messages: at most [`SHOWN_NAME_CHARS`] characters (then `...`).
/// Messages print it with `{:?}`, which escapes control characters.
pub(crate) fn shown(name: &str) -> String {
    let mut chars = name.chars();
    let mut out: String = chars.by_ref().take(SHOWN_NAME_CHARS).collect();
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// The line (from 1) of byte `offset` in `text`, for messages about a file.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "tests"
    )]

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Outer {
        inner: Option<Field<Inner>>,
        number: Option<Field<u64>>,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        name: Option<Field<String>>,
        names: Option<Field<Vec<String>>>,
    }

    #[test]
    fn wrong_values_are_kept_and_dates_are_never_strings() {
        let text = "number = \"5\"\n[inner]\nname = 1979-05-27\nnames = [\"a\", 1979-05-27]\n";
        let outer: Outer = toml::from_str(text).unwrap();
        assert!(matches!(outer.number, Some(Field::Wrong(Value::String(_)))));
        let Some(Field::Given(inner)) = outer.inner else {
            panic!("{outer:?}");
        };
        match inner.name {
            Some(Field::Wrong(value)) => assert_eq!(describe(&value), "the date 1979-05-27"),
            other => panic!("{other:?}"),
        }
        match inner.names {
            Some(Field::Wrong(Value::Array(items))) => {
                assert_eq!(describe(&items[1]), "the date 1979-05-27");
            }
            other => panic!("{other:?}"),
        }
        let outer: Outer = toml::from_str("number = 7\ninner = 1979-05-27\n").unwrap();
        assert!(matches!(outer.number, Some(Field::Given(7))));
        assert!(matches!(
            outer.inner,
            Some(Field::Wrong(Value::Datetime(_)))
        ));
    }
}
