//! The ban list: client identifiers, usernames and source networks refused for a while (or
//! for good), with why. Kept as TOML text (the server persists it in its data directory, and
//! `bulwark ban` edits the same file):
//!
//! ```toml
//! [[ban]]
//! address = "203.0.113.0/24"     # or: username = "..." or client_id = "...", or both of
//!                                # these: that client id used by that user only
//!                                # (username = "" for anonymous clients)
//! expires = 1764744000           # Unix time in seconds; left out: never
//! reason = "credential stuffing"
//! created = 1764657600
//! by = "operator"                # or "auto" for bans the broker made itself
//! ```
//!
//! Time is an argument (Unix seconds); nothing here reads a clock or a file.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use bulwark_acl::Cidr;

/// Entries a ban list holds at most: a bigger file is refused (auto bans stop adding).
pub const MAX_BANS: usize = 100_000;

/// What a ban applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanTarget {
    /// A source address or network.
    Address(Cidr),
    /// An authenticated username.
    Username(String),
    /// A client identifier, whoever uses it.
    ClientId(String),
    /// A client identifier used by one user (`None`: by anonymous clients): the broker's own
    /// bans for flapping take this form, so that one user's behaviour never locks another
    /// user, the identifier's rightful owner say, out of it.
    UserClientId {
        /// The user; `None` for anonymous clients.
        username: Option<String>,
        /// The client identifier.
        client_id: String,
    },
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(c) => write!(f, "address {c}"),
            Self::Username(u) => write!(f, "username {u:?}"),
            Self::ClientId(c) => write!(f, "client id {c:?}"),
            Self::UserClientId {
                username: Some(u),
                client_id,
            } => write!(f, "client id {client_id:?} of user {u:?}"),
            Self::UserClientId {
                username: None,
                client_id,
            } => write!(f, "client id {client_id:?} of anonymous clients"),
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub target: BanTarget,
    /// Until when (Unix seconds); `None`: until removed.
    pub expires: Option<u64>,
    /// Why, in words.
    pub reason: String,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// Who made it: `operator`, or `auto` for the broker's own.
    pub by: String,
}

impl Ban {
    /// Whether it is in force at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Why a ban file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct BanError {
    /// One line per problem.
    pub problems: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    ban: Vec<toml::Spanned<RawBan>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBan {
    address: Option<String>,
    username: Option<String>,
    client_id: Option<String>,
    expires: Option<u64>,
    reason: Option<String>,
    created: Option<u64>,
    by: Option<String>,
}

/// A list of bans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanList {
    bans: Vec<Ban>,
}

impl BanList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a ban file; every problem is reported, with its line.
    pub fn parse(text: &str, source: &str) -> Result<Self, BanError> {
        let raw: RawFile = toml::from_str(text).map_err(|err| BanError {
            problems: vec![format!("{source}: {}", err.to_string().trim_end())],
        })?;
        if raw.ban.len() > MAX_BANS {
            return Err(BanError {
                problems: vec![format!("{source}: more than {MAX_BANS} bans")],
            });
        }
        let mut problems = Vec::new();
        let mut bans = Vec::with_capacity(raw.ban.len());
        for spanned in raw.ban {
            let upto = text.get(..spanned.span().start).unwrap_or(text);
            let line = upto.bytes().filter(|b| *b == b'\n').count() + 1;
            let raw = spanned.into_inner();
            let target = match (raw.address, raw.username, raw.client_id) {
                (Some(a), None, None) => match Cidr::parse(&a) {
                    Ok(c) => Some(BanTarget::Address(c)),
                    Err(why) => {
                        problems.push(format!("{source}:{line}: {why}"));
                        None
                    }
                },
                (None, Some(u), None) if !u.is_empty() => Some(BanTarget::Username(u)),
                (None, None, Some(c)) if !c.is_empty() => Some(BanTarget::ClientId(c)),
                (None, Some(u), Some(c)) if !c.is_empty() => Some(BanTarget::UserClientId {
                    username: (!u.is_empty()).then_some(u),
                    client_id: c,
                }),
                _ => {
                    problems.push(format!(
                        "{source}:{line}: a ban names one of address, username, client_id (not empty), or a username and a client_id"
                    ));
                    None
                }
            };
            if let Some(target) = target {
                bans.push(Ban {
                    target,
                    expires: raw.expires,
                    reason: raw.reason.unwrap_or_default(),
                    created: raw.created.unwrap_or(0),
                    by: raw.by.unwrap_or_else(|| "operator".to_owned()),
                });
            }
        }
        if problems.is_empty() {
            Ok(Self { bans })
        } else {
            Err(BanError { problems })
        }
    }

    /// The list as TOML text, in the format [`BanList::parse`] reads.
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut out =
            String::from("# Bulwark ban list (docs/config.md, [bans]); edit with `bulwark ban`.\n");
        for ban in &self.bans {
            out.push_str("\n[[ban]]\n");
            match &ban.target {
                BanTarget::Address(c) => {
                    out.push_str(&format!("address = {}\n", quote(&c.to_string())))
                }
                BanTarget::Username(u) => out.push_str(&format!("username = {}\n", quote(u))),
                BanTarget::ClientId(c) => out.push_str(&format!("client_id = {}\n", quote(c))),
                BanTarget::UserClientId {
                    username,
                    client_id,
                } => {
                    let user = username.as_deref().unwrap_or("");
                    out.push_str(&format!("username = {}\n", quote(user)));
                    out.push_str(&format!("client_id = {}\n", quote(client_id)));
                }
            }
            if let Some(e) = ban.expires {
                out.push_str(&format!("expires = {e}\n"));
            }
            out.push_str(&format!("reason = {}\n", quote(&ban.reason)));
            out.push_str(&format!("created = {}\n", ban.created));
            out.push_str(&format!("by = {}\n", quote(&ban.by)));
        }
        out
    }

    /// Every ban, in force or not.
    pub fn bans(&self) -> &[Ban] {
        &self.bans
    }

    /// Adds a ban, replacing one with the same target. Refused when the list is full.
    pub fn add(&mut self, ban: Ban) -> Result<(), BanError> {
        self.bans.retain(|b| b.target != ban.target);
        if self.bans.len() >= MAX_BANS {
            return Err(BanError {
                problems: vec![format!("the ban list holds {MAX_BANS} bans already")],
            });
        }
        self.bans.push(ban);
        Ok(())
    }

    /// Removes the ban on `target`; whether there was one.
    pub fn remove(&mut self, target: &BanTarget) -> bool {
        let before = self.bans.len();
        self.bans.retain(|b| &b.target != target);
        before != self.bans.len()
    }

    /// Forgets bans that ended before `now`; whether any did.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.bans.len();
        self.bans.retain(|b| b.active(now));
        before != self.bans.len()
    }

    /// The ban in force at `now` on the address `ip`, if any.
    pub fn address_ban(&self, ip: IpAddr, now: u64) -> Option<&Ban> {
        self.bans
            .iter()
            .find(|b| b.active(now) && matches!(&b.target, BanTarget::Address(c) if c.contains(ip)))
    }

    /// The ban in force at `now` on a client with this address, username and client id.
    pub fn client_ban(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        client_id: &str,
        now: u64,
    ) -> Option<&Ban> {
        self.bans.iter().find(|b| {
            b.active(now)
                && match &b.target {
                    BanTarget::Address(c) => c.contains(ip),
                    BanTarget::Username(u) => username == Some(u.as_str()),
                    BanTarget::ClientId(c) => !client_id.is_empty() && client_id == c,
                    BanTarget::UserClientId {
                        username: u,
                        client_id: c,
                    } => !client_id.is_empty() && client_id == c && username == u.as_deref(),
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: BanTarget, expires: Option<u64>) -> Ban {
        Ban {
            target,
            expires,
            reason: "test".into(),
            created: 10,
            by: "operator".into(),
        }
    }

    #[test]
    fn bans_match_their_target_while_in_force() {
        let mut list = BanList::new();
        list.add(ban(
            BanTarget::Address(Cidr::parse("10.0.0.0/8").unwrap()),
            Some(100),
        ))
        .unwrap();
        list.add(ban(BanTarget::Username("mallory".into()), None))
            .unwrap();
        list.add(ban(BanTarget::ClientId("bad-device".into()), Some(50)))
            .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(list.address_ban(ip("10.1.2.3"), 99).is_some());
        assert!(list.address_ban(ip("10.1.2.3"), 100).is_none(), "expired");
        assert!(list.address_ban(ip("11.0.0.1"), 0).is_none());
        assert!(
            list.client_ban(ip("11.0.0.1"), Some("mallory"), "x", 1_000_000)
                .is_some()
        );
        assert!(
            list.client_ban(ip("11.0.0.1"), Some("alice"), "bad-device", 49)
                .is_some()
        );
        assert!(
            list.client_ban(ip("11.0.0.1"), Some("alice"), "bad-device", 50)
                .is_none()
        );
        assert!(list.client_ban(ip("11.0.0.1"), None, "", 0).is_none());
        // A client id banned for one user leaves it to everyone else.
        list.add(ban(
            BanTarget::UserClientId {
                username: Some("bob".into()),
                client_id: "shared".into(),
            },
            None,
        ))
        .unwrap();
        list.add(ban(
            BanTarget::UserClientId {
                username: None,
                client_id: "anon".into(),
            },
            None,
        ))
        .unwrap();
        assert!(
            list.client_ban(ip("11.0.0.1"), Some("bob"), "shared", 0)
                .is_some()
        );
        assert!(
            list.client_ban(ip("11.0.0.1"), Some("alice"), "shared", 0)
                .is_none()
        );
        assert!(list.client_ban(ip("11.0.0.1"), None, "shared", 0).is_none());
        assert!(list.client_ban(ip("11.0.0.1"), None, "anon", 0).is_some());
        assert!(
            list.client_ban(ip("11.0.0.1"), Some("bob"), "anon", 0)
                .is_none()
        );
        assert!(list.prune(100));
        assert_eq!(list.bans().len(), 3);
        assert!(list.remove(&BanTarget::Username("mallory".into())));
        assert!(!list.remove(&BanTarget::Username("mallory".into())));
    }

    #[test]
    fn the_file_round_trips_and_mistakes_are_reported() {
        let mut list = BanList::new();
        list.add(ban(
            BanTarget::Address(Cidr::parse("2001:db8::/32").unwrap()),
            Some(5),
        ))
        .unwrap();
        list.add(Ban {
            reason: "quote \" and \\ and\nnewline".into(),
            ..ban(BanTarget::ClientId("odd \"id\"".into()), None)
        })
        .unwrap();
        for username in [Some("bob".to_owned()), None] {
            list.add(ban(
                BanTarget::UserClientId {
                    username,
                    client_id: "dev-1".into(),
                },
                Some(7),
            ))
            .unwrap();
        }
        let text = list.to_toml();
        assert_eq!(BanList::parse(&text, "bans.toml").unwrap(), list);
        let bad = "[[ban]]\naddress = \"10.0.0.1\"\nclient_id = \"b\"\n\n[[ban]]\naddress = \"10.0.0.0/99\"\n";
        let err = BanList::parse(bad, "bans.toml").unwrap_err().to_string();
        assert!(err.contains("bans.toml:1: a ban names one of"), "{err}");
        assert!(err.contains("bans.toml:5:"), "{err}");
        assert!(BanList::parse("[[ban]]\nwho = 1\n", "b").is_err());
    }
}
