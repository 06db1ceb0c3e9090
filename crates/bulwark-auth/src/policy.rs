//! Password policy for new passwords (`bulwark user add`, `bulwark user passwd`).
//!
//! Checks length in characters, resemblance to the user name and guessability (zxcvbn).
//! Error messages say which rule failed and how to fix it; they never repeat the password.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest password accepted, in characters: bounds the work of checking and hashing it.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// User names this many characters or longer must not appear inside the password.
const MIN_CONTAINED_NAME_CHARS: usize = 4;

/// What a new password must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Fewest characters (Unicode scalar values, not bytes). Default 12.
    pub min_length: usize,
    /// Lowest zxcvbn score accepted, 0 to 4 (4 is the best). Default 3.
    pub min_zxcvbn_score: u8,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 12,
            min_zxcvbn_score: 3,
        }
    }
}

impl PasswordPolicy {
    /// Checks a new `password` for `username`, giving the first rule it breaks, in this order:
    /// control characters (NUL included), at most [`MAX_PASSWORD_CHARS`], at least
    /// `min_length` characters, not the user name (ignoring case), not containing the user name
    /// (ignoring case) when that is 4 or more characters long, and a zxcvbn score of at least
    /// `min_zxcvbn_score` with the user name given to zxcvbn as a known user input.
    pub fn check(&self, username: &str, password: &str) -> Result<(), PolicyError> {
        if password.chars().any(char::is_control) {
            return Err(PolicyError::ControlCharacter);
        }
        let length = password.chars().count();
        if length > MAX_PASSWORD_CHARS {
            return Err(PolicyError::TooLong {
                length,
                max: MAX_PASSWORD_CHARS,
            });
        }
        if length < self.min_length {
            return Err(PolicyError::TooShort {
                length,
                min: self.min_length,
            });
        }
        if !username.is_empty() {
            let name = username.to_lowercase();
            let lowered = password.to_lowercase();
            if lowered == name {
                return Err(PolicyError::EqualsUsername);
            }
            if username.chars().count() >= MIN_CONTAINED_NAME_CHARS && lowered.contains(&name) {
                return Err(PolicyError::ContainsUsername);
            }
        }
        let user_inputs: &[&str] = if username.is_empty() {
            &[]
        } else {
            &[username]
        };
        let entropy = zxcvbn::zxcvbn(password, user_inputs);
        let score = u8::from(entropy.score());
        if score < self.min_zxcvbn_score {
            let feedback = entropy.feedback();
            return Err(PolicyError::TooGuessable {
                score,
                min: self.min_zxcvbn_score,
                warning: feedback.and_then(|f| f.warning()).map(|w| w.to_string()),
                suggestions: feedback
                    .map(|f| f.suggestions().iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// The rule a password broke. `Display` says how to fix it and never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A control character or NUL.
    ControlCharacter,
    /// Fewer characters than the policy's minimum.
    TooShort {
        /// Characters given.
        length: usize,
        /// Characters required.
        min: usize,
    },
    /// More than [`MAX_PASSWORD_CHARS`] characters.
    TooLong {
        /// Characters given.
        length: usize,
        /// Most accepted.
        max: usize,
    },
    /// The user name itself, in any case.
    EqualsUsername,
    /// Contains the user name, in any case.
    ContainsUsername,
    /// zxcvbn estimates it too easy to guess.
    TooGuessable {
        /// zxcvbn's score, 0 to 4.
        score: u8,
        /// The lowest score accepted.
        min: u8,
        /// zxcvbn's warning, e.g. "This is a very common password.".
        warning: Option<String>,
        /// zxcvbn's suggestions.
        suggestions: Vec<String>,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ControlCharacter => f.write_str(
                "password contains a control character or NUL: use printable characters only",
            ),
            Self::TooShort { length, min } => write!(
                f,
                "password too short: {length} characters, at least {min}; a passphrase of \
                 several unrelated words is long and easy to remember"
            ),
            Self::TooLong { length, max } => {
                write!(f, "password too long: {length} characters, at most {max}")
            }
            Self::EqualsUsername => f.write_str(
                "password is the user name: choose one that has nothing to do with the name",
            ),
            Self::ContainsUsername => f.write_str(
                "password contains the user name: choose one that has nothing to do with the \
                 name",
            ),
            Self::TooGuessable {
                score,
                min,
                warning,
                suggestions,
            } => {
                write!(
                    f,
                    "password too easy to guess: strength {score} of 4, at least {min} required"
                )?;
                if let Some(warning) = warning {
                    write!(f, "; {warning}")?;
                }
                for suggestion in suggestions {
                    write!(f, " {suggestion}")?;
                }
                if warning.is_none() && suggestions.is_empty() {
                    f.write_str("; add more unrelated words or characters")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PolicyError {}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use super::*;

    fn check(username: &str, password: &str) -> Result<(), PolicyError> {
        PasswordPolicy::default().check(username, password)
    }

    #[test]
    fn defaults() {
        assert_eq!(
            PasswordPolicy::default(),
            PasswordPolicy {
                min_length: 12,
                min_zxcvbn_score: 3
            }
        );
    }

    #[test]
    fn too_short() {
        let err = check("alice", "Xq7#vB2!").unwrap_err();
        assert_eq!(err, PolicyError::TooShort { length: 8, min: 12 });
        let message = err.to_string();
        assert!(message.starts_with("password too short: 8 characters, at least 12"));
        assert!(!message.contains("Xq7#vB2!"));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // 12 characters, 24 bytes.
        let twelve = "ÿéüñøåßçðþæœ";
        assert_eq!(twelve.chars().count(), 12);
        assert!(twelve.len() > 12);
        let lenient = PasswordPolicy {
            min_zxcvbn_score: 0,
            ..PasswordPolicy::default()
        };
        assert_eq!(lenient.check("alice", twelve), Ok(()));
        // 11 characters but 22 bytes: too short.
        let eleven: String = twelve.chars().take(11).collect();
        assert_eq!(
            lenient.check("alice", &eleven),
            Err(PolicyError::TooShort {
                length: 11,
                min: 12
            })
        );
    }

    #[test]
    fn equal_to_or_containing_the_username() {
        assert_eq!(
            check("Bartholomew_1", "bartholomew_1"),
            Err(PolicyError::EqualsUsername)
        );
        assert_eq!(
            check("alice", "my-ALICE-tractor-oyster"),
            Err(PolicyError::ContainsUsername)
        );
        // Names under 4 characters may appear inside, but are still not the whole password.
        let lenient = PasswordPolicy {
            min_length: 3,
            ..PasswordPolicy::default()
        };
        assert_eq!(
            lenient.check("bob", "BOB"),
            Err(PolicyError::EqualsUsername)
        );
        assert_eq!(check("bob", "violet-bob-tractor-oyster-lantern"), Ok(()));
        let message = PolicyError::ContainsUsername.to_string();
        assert!(message.contains("user name"), "{message}");
    }

    #[test]
    fn guessable_passwords_refused() {
        for password in ["password123456", "qwertyuiop123"] {
            let err = check("alice", password).unwrap_err();
            let PolicyError::TooGuessable {
                score,
                min,
                suggestions,
                warning,
            } = &err
            else {
                panic!("{password}: {err:?}");
            };
            assert!(*score < 3 && *min == 3);
            assert!(warning.is_some() || !suggestions.is_empty(), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("at least 3"), "{message}");
            assert!(!message.contains(password), "{message}");
        }
    }

    #[test]
    fn username_counts_as_known_input() {
        // Long and random-looking, but built from the (short, < 4 chars) user name: zxcvbn is
        // told the name, so repeating it scores low.
        let lenient = PasswordPolicy {
            min_zxcvbn_score: 4,
            ..PasswordPolicy::default()
        };
        assert!(matches!(
            lenient.check("zqx", "zqxzqxzqxzqxzqx"),
            Err(PolicyError::TooGuessable { .. })
        ));
    }

    #[test]
    fn strong_passphrase_accepted() {
        assert_eq!(check("alice", "violet tractor oyster lantern 91"), Ok(()));
        assert_eq!(check("alice", "Gr3en-Kettle-Mountain-Sparrow"), Ok(()));
    }

    #[test]
    fn control_characters_and_length_limit() {
        for password in [
            "violet tractor\0oyster",
            "violet\ttractor oyster",
            "a\u{1b}[2J long pw",
        ] {
            let err = check("alice", password).unwrap_err();
            assert_eq!(err, PolicyError::ControlCharacter);
        }
        let long = "ab".repeat(MAX_PASSWORD_CHARS);
        assert!(matches!(
            check("alice", &long),
            Err(PolicyError::TooLong { .. })
        ));
    }
}
