//! What every section of the configuration file shares: [`Field`], the value of one key as the
//! file gave it, and [`Problems`], which checks fields and collects every problem found.

use std::path::{Path, PathBuf};

pub(super) use bulwark_auth::lenient::{Field, describe};
use toml::{Table, Value};

/// Declares a section of the file: a struct whose every key is an `Option<Field<T>>`, the keys
/// the file gave that it does not know, and [`Section::KEYS`], from the one list. A key that
/// is a Rust keyword is written `field = "key"`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$field_meta:meta])* $field:ident $(= $key:literal)?: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default)]
        pub(in crate::config) struct $name {
            $(
                $(#[$field_meta])*
                $(#[serde(rename = $key)])?
                pub(in crate::config) $field: Option<$crate::config::fields::Field<$ty>>,
            )*
            /// Keys the section does not know.
            #[serde(flatten)]
            unknown: toml::Table,
        }

        impl $crate::config::fields::Section for $name {
            const KEYS: &'static [&'static str] = &[$(section!(@key $field $($key)?)),*];
            fn unknown(&self) -> &toml::Table {
                &self.unknown
            }
        }
    };
    (@key $field:ident $key:literal) => { $key };
    (@key $field:ident) => { stringify!($field) };
}

pub(super) use section;

/// A section struct: the keys it knows, for unknown-key reports and suggestions.
pub(super) trait Section {
    /// Every key the section may hold.
    const KEYS: &'static [&'static str];
    /// The keys the file gave that the section does not know.
    fn unknown(&self) -> &Table;
}

/// Every problem found in the file, in the order found.
#[derive(Default)]
pub(super) struct Problems {
    pub(super) list: Vec<String>,
}

impl Problems {
    pub(super) fn push(&mut self, problem: String) {
        self.list.push(problem);
    }

    /// An integer in `min..=max`.
    pub(super) fn integer(
        &mut self,
        field: &Option<Field<u64>>,
        section: &str,
        key: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match field.as_ref()? {
            Field::Given(v) if (min..=max).contains(v) => Some(*v),
            Field::Given(v) => {
                self.push(format!(
                    "{section}.{key} = {v}: must be between {min} and {max}"
                ));
                None
            }
            Field::Wrong(value) => {
                self.push(format!(
                    "{section}.{key}: expected a non-negative integer, found {}",
                    describe(value)
                ));
                None
            }
        }
    }

    pub(super) fn boolean(
        &mut self,
        field: &Option<Field<bool>>,
        section: &str,
        key: &str,
    ) -> Option<bool> {
        match field.as_ref()? {
            Field::Given(v) => Some(*v),
            Field::Wrong(value) => {
                self.push(format!(
                    "{section}.{key}: expected true or false, found {}",
                    describe(value)
                ));
                None
            }
        }
    }

    pub(super) fn string<'a>(
        &mut self,
        field: &'a Option<Field<String>>,
        section: &str,
        key: &str,
    ) -> Option<&'a str> {
        match field.as_ref()? {
            Field::Given(v) => Some(v),
            Field::Wrong(value) => {
                self.push(format!(
                    "{section}.{key}: expected a string, found {}",
                    describe(value)
                ));
                None
            }
        }
    }

    /// A string naming one of a fixed set of choices (a serde enum); `expected` says which, as
    /// in `{section}.{key} = "{given}": {expected}`.
    pub(super) fn choice<T: Copy>(
        &mut self,
        field: &Option<Field<T>>,
        section: &str,
        key: &str,
        expected: &str,
    ) -> Option<T> {
        match field.as_ref()? {
            Field::Given(v) => Some(*v),
            Field::Wrong(Value::String(given)) => {
                self.push(format!("{section}.{key} = \"{given}\": {expected}"));
                None
            }
            Field::Wrong(value) => {
                self.push(format!(
                    "{section}.{key}: expected a string, found {}",
                    describe(value)
                ));
                None
            }
        }
    }

    /// A path, relative to the configuration file's directory.
    pub(super) fn path(
        &mut self,
        field: &Option<Field<String>>,
        section: &str,
        key: &str,
        base: &Path,
    ) -> Option<PathBuf> {
        self.string(field, section, key).map(|p| base.join(p))
    }

    /// A list of strings; a single string is taken as a list of one.
    pub(super) fn string_list(
        &mut self,
        field: &Option<Field<Vec<String>>>,
        section: &str,
        key: &str,
    ) -> Vec<String> {
        match field {
            None => Vec::new(),
            Some(Field::Given(items)) => items.clone(),
            Some(Field::Wrong(Value::String(s))) => vec![s.clone()],
            Some(Field::Wrong(Value::Array(items))) => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => out.push(s.to_owned()),
                        None => self.push(format!(
                            "{section}.{key}: expected strings, found {}",
                            describe(item)
                        )),
                    }
                }
                out
            }
            Some(Field::Wrong(other)) => {
                self.push(format!(
                    "{section}.{key}: expected a list of strings, found {}",
                    describe(other)
                ));
                Vec::new()
            }
        }
    }

    /// Reports the keys of `section` that it does not know, naming them under `shown` (e.g.
    /// `listener[0].tls`).
    pub(super) fn unknown_keys<S: Section>(&mut self, section: &S, shown: &str) {
        for key in section.unknown().keys() {
            self.push(format!(
                "{shown}.{key}: unknown key{}",
                did_you_mean(key, S::KEYS.iter().copied())
            ));
        }
    }

    /// A `[name]` table: its unknown keys are reported; a value that is not a table is a
    /// problem and gives `None`.
    pub(super) fn section<'a, S: Section>(
        &mut self,
        field: &'a Option<Field<S>>,
        name: &str,
    ) -> Option<&'a S> {
        match field.as_ref()? {
            Field::Given(section) => {
                self.unknown_keys(section, name);
                Some(section)
            }
            Field::Wrong(value) => {
                self.push(format!(
                    "[{name}]: expected a table, found {}",
                    describe(value)
                ));
                None
            }
        }
    }
}

/// The TOML syntax error `err` in `text`, with its line and column, and the key for a
/// duplicate.
pub(super) fn toml_error(text: &str, source: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return format!("{source}: not valid TOML: {message}");
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    let mut detail = message.to_owned();
    if message.starts_with("duplicate key") {
        let key: String = text
            .get(span.start..)
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '"' | '.'))
            .collect();
        let key = key.trim_matches('"');
        if !key.is_empty() && !message.contains(key) {
            detail = format!("duplicate key `{key}` (a key may be set once per table)");
        }
    }
    let shown = text.lines().nth(line - 1).unwrap_or("").trim_end();
    format!("{source}:{line}:{column}: not valid TOML: {detail}\n      {line} | {shown}")
}

/// `; did you mean "x"?` for the known name closest to `unknown` (at most two edits apart, or
/// one of them contains the other), or nothing.
pub(super) fn did_you_mean<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> String {
    let unknown_lower = unknown.to_ascii_lowercase();
    let best = known
        .map(|name| (edit_distance(&unknown_lower, name), name))
        .filter(|(distance, name)| {
            *distance <= 2.max(unknown.len() / 4)
                || (unknown.len() >= 4
                    && (name.contains(&unknown_lower) || unknown_lower.contains(name)))
        })
        .min_by_key(|(distance, _)| *distance);
    match best {
        Some((_, name)) => format!("; did you mean \"{name}\"?"),
        None => String::new(),
    }
}

/// Levenshtein distance (insertions, deletions, substitutions), over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let delete = previous.get(j + 1).copied().unwrap_or(0) + 1;
            let insert = current.get(j).copied().unwrap_or(0) + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

pub(super) fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

pub(super) fn to_u16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

pub(super) fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}
