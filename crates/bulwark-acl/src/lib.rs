//! `bulwark-acl`: authorization as pure evaluation over data, and the vocabulary every
//! security layer shares. ACL rules (a TOML file, or a JWT's ACL claim), compiled once,
//! resolved once per connection into a [`ClientAcl`] that answers "may this client publish
//! here / subscribe to this filter / receive this message"; [`Principal`], what is known of a
//! client; [`Cidr`] address ranges; [`event`], the one record of a security event.
//!
//! The engine (`bulwark-core`) and the store depend on this crate alone of the security
//! crates: it must never depend on credential crypto (argon2, JWT, SCRAM live in
//! `bulwark-auth`), on tokio, or on any I/O.
//!
//! Authorization: ACL rules (a TOML file, or a JWT's ACL claim), compiled once, resolved once
//! per connection into a [`ClientAcl`] that answers "may this client publish here / subscribe
//! to this filter / receive this message".
//!
//! The decisions:
//! - default deny: nothing is allowed unless a rule allows it;
//! - an explicit deny beats any allow, whatever their order;
//! - `$` topics (`$SYS/#`, ...) only through rules whose pattern names them: `#` and `+` never
//!   match them (the MQTT matching rule);
//! - template values (`{username}`, `{client_id}`, `{cert_cn}`) are substituted as literal
//!   text; a value that is empty, contains `+`, `#`, `/` or NUL, or would make a pattern start
//!   with `$`, makes that pattern of the rule match nothing for this client;
//! - SUBSCRIBE: a filter is granted only if one allow rule's pattern contains every topic the
//!   filter can match, and no deny rule's pattern shares a topic with it; the granted QoS is
//!   at most the allow rule's `max_qos`;
//! - PUBLISH: allowed if an allow rule matches the topic with a `max_qos` at least the
//!   message's and `retain = true` for a retained message, and no deny rule matches it.

#![forbid(unsafe_code)]

pub mod event;
pub mod lint;
mod pattern;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use pattern::{Pattern, union_contains};

/// Rules this long at most are read from a file (a guard against a runaway file).
pub const MAX_RULES: usize = 100_000;
/// Topics of one rule at most.
pub const MAX_TOPICS_PER_RULE: usize = 1024;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// The rule grants.
    Allow,
    /// The rule refuses, whatever any allow says.
    Deny,
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH (and will messages).
    Publish,
    /// SUBSCRIBE (and receiving messages: retained ones, after a reload).
    Subscribe,
    /// Both.
    All,
}

impl Action {
    fn covers_publish(self) -> bool {
        matches!(self, Self::Publish | Self::All)
    }

    fn covers_subscribe(self) -> bool {
        matches!(self, Self::Subscribe | Self::All)
    }

    /// The name used in files and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::All => "all",
        }
    }
}

/// Which clients a rule speaks of, by how they logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Clients that presented credentials (the default).
    Authenticated,
    /// Clients let in without credentials (`dangerous_allow_anonymous` listeners).
    Anonymous,
    /// Both.
    Any,
}

/// A template variable of a topic pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `{username}`
    Username,
    /// `{client_id}`
    ClientId,
    /// `{cert_cn}`: the common name of the client's verified certificate.
    CertCn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A topic pattern as written, templates unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    text: String,
    /// Set when the pattern has no variables: compiled once for everybody.
    fixed: Option<Arc<Pattern>>,
}

impl Template {
    /// Parses `text`, checking its templates and the grammar of the pattern they make.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                let before = &rest[..open];
                if before.contains('}') {
                    return Err(format!("{text:?}: `}}` without `{{`"));
                }
                parts.push(Part::Text(before.to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("{text:?}: `{{` without `}}`"));
            };
            let var = match &after[..close] {
                "username" => Var::Username,
                "client_id" => Var::ClientId,
                "cert_cn" => Var::CertCn,
                other => {
                    return Err(format!(
                        "{text:?}: unknown template {{{other}}} (use {{username}}, {{client_id}} or {{cert_cn}})"
                    ));
                }
            };
            parts.push(Part::Var(var));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        // The grammar, with every variable standing for one ordinary name.
        let sample: String = parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Var(_) => "v",
            })
            .collect();
        let compiled = Pattern::parse(&sample).map_err(|why| format!("{text:?}: {why}"))?;
        let fixed = parts
            .iter()
            .all(|p| matches!(p, Part::Text(_)))
            .then(|| Arc::new(compiled));
        Ok(Self {
            parts,
            text: text.to_owned(),
            fixed,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The variables the pattern uses.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            Part::Text(_) => None,
        })
    }

    /// Whether the pattern (templates aside) matches every non-`$` topic (`#`, `+/#`).
    pub fn matches_everything(&self) -> bool {
        self.fixed.as_ref().is_some_and(|p| p.matches_everything())
    }

    /// Whether the pattern names a `$` topic (`$SYS/...`).
    pub fn is_dollar(&self) -> bool {
        matches!(self.parts.first(), Some(Part::Text(t)) if t.starts_with('$'))
    }

    /// The pattern for one client, or `None` when a value it needs is missing or unsafe.
    fn resolve(&self, values: &Values<'_>) -> Option<Arc<Pattern>> {
        if let Some(fixed) = &self.fixed {
            // Shared by every client: no copy.
            return Some(fixed.clone());
        }
        let mut out = String::with_capacity(self.text.len() + 32);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(var) => {
                    let value = values.get(*var)?;
                    if !safe_value(value) || (out.is_empty() && value.starts_with('$')) {
                        return None;
                    }
                    out.push_str(value);
                }
            }
        }
        Pattern::parse(&out).ok().map(Arc::new)
    }

    /// For lint: the compiled pattern with every variable standing for `v`.
    fn sample(&self) -> Option<Pattern> {
        let text: String = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Var(_) => "v",
            })
            .collect();
        Pattern::parse(&text).ok()
    }
}

/// A template value may be substituted only if it is one ordinary topic level.
fn safe_value(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/', '\0'])
}

/// The values templates take for one client.
struct Values<'a> {
    username: Option<&'a str>,
    client_id: &'a str,
    cert_cn: Option<&'a str>,
}

impl Values<'_> {
    fn get(&self, var: Var) -> Option<&str> {
        match var {
            Var::Username => self.username,
            Var::ClientId => Some(self.client_id),
            Var::CertCn => self.cert_cn,
        }
    }
}

/// An IPv4 or IPv6 network, `addr/len`: the one address-range type of every configuration
/// list (ACL `source`, the `exempt` lists, bans, trusted proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (`192.168.1.7`, `::1`).
    /// Surrounding whitespace is ignored. A network written with bits set beyond its prefix
    /// (`10.1.2.3/8`) is refused as a likely mistake (one host meant, or the prefix wrong), with
    /// the network it would be.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!(
                "{text:?}: {addr:?} is not an IPv4 or IPv6 address (expected e.g. 10.0.0.0/8, \
                 192.168.1.7 or fd00::/8)"
            )
        })?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!(
                    "{text:?}: prefix length {l:?} is not a number from 0 to {max}"
                ));
            }
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                format!(
                    "{text:?}: prefix length {l} is over {max}, the most for this address family"
                )
            })?,
        };
        let net = IpNet::new(addr, len).map_err(|_| {
            format!("{text:?}: prefix length {len} is over {max}, the most for this address family")
        })?;
        if net.addr() != net.network() {
            return Err(format!(
                "{text:?}: the address has bits set beyond the /{len} prefix (the network is {}; \
                 one host is {addr})",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }

    /// Whether the two networks share an address (one holds the other's first address).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.0.network()) || other.contains(self.0.network())
    }

    /// The network of one address.
    pub fn host(ip: IpAddr) -> Self {
        Self(IpNet::from(ip))
    }

    /// Whether `ip` is in the network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a
    /// dual-stack socket reports IPv4 peers) is also looked up as its IPv4 address, and an
    /// IPv4 address as its mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.0.contains(&ip)
            || self.0.contains(&canonical)
            || matches!(canonical, IpAddr::V4(v4) if self.0.contains(&IpAddr::V6(v4.to_ipv6_mapped())))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

/// The loopback networks (`127.0.0.0/8`, `::1`): what admission control, automatic bans and
/// the login backoff exempt by default.
pub fn loopback() -> Vec<Cidr> {
    ["127.0.0.0/8", "::1/128"]
        .into_iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .collect()
}

/// Who a rule applies to: every condition given must hold (each list: any of its values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// Usernames.
    pub users: Vec<String>,
    /// Groups (of the password store, or a JWT's groups).
    pub groups: Vec<String>,
    /// Client identifiers, compared exactly.
    pub client_ids: Vec<String>,
    /// Common names of the client certificate.
    pub cert_cns: Vec<String>,
    /// Listener names.
    pub listeners: Vec<String>,
    /// Source networks.
    pub sources: Vec<Cidr>,
    /// Authenticated, anonymous or both.
    pub clients: Clients,
}

impl Who {
    fn applies(&self, p: &Principal, client_id: &str) -> bool {
        let clients = match self.clients {
            Clients::Authenticated => p.authenticated,
            Clients::Anonymous => !p.authenticated,
            Clients::Any => true,
        };
        let any = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        };
        clients
            && any(&self.users, p.username.as_deref())
            && (self.groups.is_empty()
                || p.groups
                    .iter()
                    .any(|g| self.groups.iter().any(|x| **x == **g)))
            && any(&self.client_ids, Some(client_id))
            && any(&self.cert_cns, p.cert_cn.as_deref())
            && any(&self.listeners, p.listener.as_deref())
            && (self.sources.is_empty()
                || p.address
                    .is_some_and(|a| self.sources.iter().any(|c| c.contains(a))))
    }

    /// Whether every client this `Who` applies to is also one `other` applies to.
    pub fn within(&self, other: &Who) -> bool {
        let sub = |mine: &[String], theirs: &[String]| {
            theirs.is_empty() || (!mine.is_empty() && mine.iter().all(|m| theirs.contains(m)))
        };
        let clients = match (other.clients, self.clients) {
            (Clients::Any, _) => true,
            (a, b) => a == b,
        };
        clients
            && sub(&self.users, &other.users)
            && sub(&self.groups, &other.groups)
            && sub(&self.client_ids, &other.client_ids)
            && sub(&self.cert_cns, &other.cert_cns)
            && sub(&self.listeners, &other.listeners)
            && (other.sources.is_empty()
                || (!self.sources.is_empty()
                    && self.sources.iter().all(|s| other.sources.contains(s))))
    }

    fn is_everyone(&self) -> bool {
        self.users.is_empty()
            && self.groups.is_empty()
            && self.client_ids.is_empty()
            && self.cert_cns.is_empty()
            && self.listeners.is_empty()
            && self.sources.is_empty()
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or both.
    pub action: Action,
    /// Who it applies to.
    pub who: Who,
    /// The topic patterns.
    pub topics: Vec<Template>,
    /// Allow rules: whether a retained PUBLISH (or will) is allowed.
    pub retain: bool,
    /// Allow rules: the highest QoS allowed.
    pub max_qos: u8,
    /// Where the rule is written.
    pub origin: Origin,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let permission = match self.permission {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        };
        let topics: Vec<&str> = self.topics.iter().map(Template::as_str).collect();
        write!(
            f,
            "{permission} {} {}",
            self.action.as_str(),
            topics.join(" ")
        )?;
        let w = &self.who;
        for (name, list) in [
            ("user", &w.users),
            ("group", &w.groups),
            ("client_id", &w.client_ids),
            ("cert_cn", &w.cert_cns),
            ("listener", &w.listeners),
        ] {
            if !list.is_empty() {
                write!(f, " {name}={}", list.join(","))?;
            }
        }
        if !w.sources.is_empty() {
            let sources: Vec<String> = w.sources.iter().map(ToString::to_string).collect();
            write!(f, " source={}", sources.join(","))?;
        }
        match w.clients {
            Clients::Authenticated => {}
            Clients::Anonymous => f.write_str(" clients=anonymous")?,
            Clients::Any => f.write_str(" clients=any")?,
        }
        if self.permission == Permission::Allow {
            if self.max_qos < 2 {
                write!(f, " max_qos={}", self.max_qos)?;
            }
            if !self.retain && self.action.covers_publish() {
                f.write_str(" retain=false")?;
            }
        }
        Ok(())
    }
}

/// Where a rule is written: a file's line, or the position in a token's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file name, or `jwt claim`.
    pub source: Arc<str>,
    /// The 1-based line in the file, or the rule's position in the claim.
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// A compiled set of rules: an ACL file, or one token's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRules {
    rules: Vec<Rule>,
    admin_groups: Vec<String>,
}

/// The groups `bulwark acl lint` lets grant `#` when a file does not name its own.
pub const DEFAULT_ADMIN_GROUPS: [&str; 2] = ["admin", "admins"];

/// Why an ACL file or claim was refused: every problem, each with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct AclError {
    /// One line per problem, `source:line: what`.
    pub problems: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    admin_groups: Option<Vec<String>>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    permission: Option<String>,
    action: Option<String>,
    topic: Option<OneOrMany>,
    topics: Option<Vec<String>>,
    user: Option<OneOrMany>,
    group: Option<OneOrMany>,
    client_id: Option<OneOrMany>,
    cert_cn: Option<OneOrMany>,
    listener: Option<OneOrMany>,
    source: Option<OneOrMany>,
    clients: Option<String>,
    retain: Option<bool>,
    max_qos: Option<i64>,
}

impl AclRules {
    /// The first rule whose effect depends on the client identifier (a `client_id` list or a
    /// `{client_id}` template), if any: explaining a decision needs the identifier then.
    pub fn rule_using_client_id(&self) -> Option<&Rule> {
        self.rules().iter().find(|rule| {
            !rule.who.client_ids.is_empty()
                || rule
                    .topics
                    .iter()
                    .any(|topic| topic.as_str().contains("{client_id}"))
        })
    }

    /// No rules: everything is denied.
    pub fn empty() -> Self {
        Self {
            rules: Vec::new(),
            admin_groups: DEFAULT_ADMIN_GROUPS
                .iter()
                .map(|g| (*g).to_owned())
                .collect(),
        }
    }

    /// Parses an ACL file's text; `source` names it in errors and decisions.
    pub fn parse(text: &str, source: &str) -> Result<Self, AclError> {
        let raw: RawFile = toml::from_str(text).map_err(|err| AclError {
            problems: vec![format!("{source}: {}", err.to_string().trim_end())],
        })?;
        if raw.rule.len() > MAX_RULES {
            return Err(AclError {
                problems: vec![format!(
                    "{source}: {} rules, more than the {MAX_RULES} allowed",
                    raw.rule.len()
                )],
            });
        }
        let name: Arc<str> = Arc::from(source);
        let mut problems = Vec::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for spanned in raw.rule {
            let line = line_of(text, spanned.span().start);
            let origin = Origin {
                source: name.clone(),
                line,
            };
            match compile(spanned.into_inner(), origin, true) {
                Ok(rule) => rules.push(rule),
                Err(errs) => {
                    problems.extend(errs.into_iter().map(|e| format!("{source}:{line}: {e}")))
                }
            }
        }
        if !problems.is_empty() {
            return Err(AclError { problems });
        }
        Ok(Self {
            rules,
            admin_groups: raw.admin_groups.unwrap_or_else(|| {
                DEFAULT_ADMIN_GROUPS
                    .iter()
                    .map(|g| (*g).to_owned())
                    .collect()
            }),
        })
    }

    /// The rules of a JWT's ACL claim: either `{"publish": [..], "subscribe": [..], "all":
    /// [..]}` (allow rules), or an array of rule objects with the file's keys `permission`,
    /// `action`, `topic`/`topics`, `max_qos`, `retain` (no "who" keys: the token is the who).
    pub fn from_claim(claim: &serde_json::Value) -> Result<Self, AclError> {
        let source: Arc<str> = Arc::from("jwt claim");
        let fail = |why: String| AclError {
            problems: vec![format!("jwt claim: {why}")],
        };
        let mut raws: Vec<RawRule> = Vec::new();
        match claim {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let action = match key.as_str() {
                        "publish" | "pub" => "publish",
                        "subscribe" | "sub" => "subscribe",
                        "all" => "all",
                        other => {
                            return Err(fail(format!(
                                "unknown key {other:?} (use publish, subscribe or all)"
                            )));
                        }
                    };
                    let topics: Vec<String> = serde_json::from_value(value.clone())
                        .map_err(|_| fail(format!("{key:?} must be a list of topic patterns")))?;
                    raws.push(RawRule {
                        permission: Some("allow".to_owned()),
                        action: Some(action.to_owned()),
                        topic: None,
                        topics: Some(topics),
                        ..RawRule::blank()
                    });
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    #[derive(Deserialize)]
                    #[serde(deny_unknown_fields)]
                    struct ClaimRule {
                        permission: Option<String>,
                        action: Option<String>,
                        topic: Option<String>,
                        topics: Option<Vec<String>>,
                        retain: Option<bool>,
                        max_qos: Option<i64>,
                    }
                    let c: ClaimRule = serde_json::from_value(item.clone())
                        .map_err(|err| fail(format!("rule {}: {err}", raws.len() + 1)))?;
                    raws.push(RawRule {
                        permission: c.permission,
                        action: c.action,
                        topic: c.topic.map(OneOrMany::One),
                        topics: c.topics,
                        retain: c.retain,
                        max_qos: c.max_qos,
                        ..RawRule::blank()
                    });
                }
            }
            _ => return Err(fail("must be an object or an array".to_owned())),
        }
        if raws.len() > MAX_RULES {
            return Err(fail("too many rules".to_owned()));
        }
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            let origin = Origin {
                source: source.clone(),
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            };
            match compile(raw, origin, false) {
                Ok(mut rule) => {
                    // A token speaks for its bearer, whoever authenticated with it.
                    rule.who.clients = Clients::Any;
                    rules.push(rule);
                }
                Err(errs) => problems.extend(
                    errs.into_iter()
                        .map(|e| format!("jwt claim: rule {}: {e}", i + 1)),
                ),
            }
        }
        if !problems.is_empty() {
            return Err(AclError { problems });
        }
        Ok(Self {
            rules,
            admin_groups: Vec::new(),
        })
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The groups whose rules may grant `#` without a lint warning.
    pub fn admin_groups(&self) -> &[String] {
        &self.admin_groups
    }

    /// The rules that apply to one client, templates filled in: done once per connection
    /// (and again after a reload). `claim` adds a token's rules.
    pub fn resolve(&self, who: &Principal, client_id: &str) -> ClientAcl {
        let values = Values {
            username: who.username.as_deref(),
            client_id,
            cert_cn: who.cert_cn.as_deref(),
        };
        let mut entries = Vec::new();
        let claim = match &who.quarantine {
            Some(_) => &[][..],
            None => who.claim.as_deref().map_or(&[][..], |c| &c.rules[..]),
        };
        for rule in self.rules.iter().chain(claim) {
            if let Some(group) = &who.quarantine
                && !rule.who.groups.iter().any(|g| **g == **group)
            {
                continue;
            }
            if !rule.who.applies(who, client_id) {
                continue;
            }
            for template in &rule.topics {
                let Some(pattern) = template.resolve(&values) else {
                    continue;
                };
                entries.push(Entry {
                    pattern,
                    allow: rule.permission == Permission::Allow,
                    max_qos: rule.max_qos,
                    retain: rule.retain,
                    publish: rule.action.covers_publish(),
                    subscribe: rule.action.covers_subscribe(),
                    origin: rule.origin.clone(),
                });
            }
        }
        // Denies first: they are all consulted, and the first allow that fits decides. The
        // sort is stable: allows keep the files' order.
        entries.sort_by_key(|e| e.allow);
        ClientAcl {
            entries: entries.into_boxed_slice(),
        }
    }
}

impl RawRule {
    fn blank() -> Self {
        Self {
            permission: None,
            action: None,
            topic: None,
            topics: None,
            user: None,
            group: None,
            client_id: None,
            cert_cn: None,
            listener: None,
            source: None,
            clients: None,
            retain: None,
            max_qos: None,
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> u32 {
    let upto = text.get(..offset).unwrap_or(text);
    u32::try_from(upto.bytes().filter(|b| *b == b'\n').count() + 1).unwrap_or(u32::MAX)
}

/// Checks one rule; every problem is returned.
fn compile(raw: RawRule, origin: Origin, who_allowed: bool) -> Result<Rule, Vec<String>> {
    let mut problems = Vec::new();
    let permission = match raw.permission.as_deref() {
        Some("allow") => Permission::Allow,
        Some("deny") => Permission::Deny,
        Some(other) => {
            problems.push(format!("permission {other:?}: use \"allow\" or \"deny\""));
            Permission::Deny
        }
        None => {
            problems.push("permission missing (\"allow\" or \"deny\")".to_owned());
            Permission::Deny
        }
    };
    let action = match raw.action.as_deref() {
        Some("publish") => Action::Publish,
        Some("subscribe") => Action::Subscribe,
        Some("all") => Action::All,
        Some(other) => {
            problems.push(format!(
                "action {other:?}: use \"publish\", \"subscribe\" or \"all\""
            ));
            Action::All
        }
        None => {
            problems.push("action missing (\"publish\", \"subscribe\" or \"all\")".to_owned());
            Action::All
        }
    };
    let texts: Vec<String> = match (raw.topic, raw.topics) {
        (Some(_), Some(_)) => {
            problems.push("give `topic` or `topics`, not both".to_owned());
            Vec::new()
        }
        (Some(t), None) => t.into_vec(),
        (None, Some(t)) => t,
        (None, None) => {
            problems.push("topic missing".to_owned());
            Vec::new()
        }
    };
    if texts.len() > MAX_TOPICS_PER_RULE {
        problems.push(format!("more than {MAX_TOPICS_PER_RULE} topics"));
    }
    let mut topics = Vec::with_capacity(texts.len());
    for text in &texts {
        match Template::parse(text) {
            Ok(t) => topics.push(t),
            Err(why) => problems.push(why),
        }
    }
    if texts.is_empty() && !problems.iter().any(|p| p.starts_with("topic")) {
        problems.push("the topic list is empty".to_owned());
    }
    let clients = match raw.clients.as_deref() {
        None | Some("authenticated") => Clients::Authenticated,
        Some("anonymous") => Clients::Anonymous,
        Some("any") => Clients::Any,
        Some(other) => {
            problems.push(format!(
                "clients {other:?}: use \"authenticated\", \"anonymous\" or \"any\""
            ));
            Clients::Authenticated
        }
    };
    let list = |value: Option<OneOrMany>, name: &str, problems: &mut Vec<String>| {
        let values = value.map(OneOrMany::into_vec).unwrap_or_default();
        if values.iter().any(String::is_empty) {
            problems.push(format!("{name}: empty value"));
        }
        values
    };
    let users = list(raw.user, "user", &mut problems);
    let groups = list(raw.group, "group", &mut problems);
    let client_ids = list(raw.client_id, "client_id", &mut problems);
    let cert_cns = list(raw.cert_cn, "cert_cn", &mut problems);
    let listeners = list(raw.listener, "listener", &mut problems);
    let mut sources = Vec::new();
    for text in raw.source.map(OneOrMany::into_vec).unwrap_or_default() {
        match Cidr::parse(&text) {
            Ok(c) => sources.push(c),
            Err(why) => problems.push(format!("source {why}")),
        }
    }
    if clients == Clients::Anonymous
        && !(users.is_empty() && groups.is_empty() && cert_cns.is_empty())
    {
        problems.push(
            "clients = \"anonymous\" cannot be combined with user, group or cert_cn (anonymous clients have none)"
                .to_owned(),
        );
    }
    let who = Who {
        users,
        groups,
        client_ids,
        cert_cns,
        listeners,
        sources,
        clients,
    };
    if !who_allowed && !who.is_everyone() {
        problems.push("a claim's rules cannot say who they apply to".to_owned());
    }
    let max_qos = match raw.max_qos {
        None => 2,
        Some(q @ 0..=2) => u8::try_from(q).unwrap_or(2),
        Some(other) => {
            problems.push(format!("max_qos {other}: use 0, 1 or 2"));
            2
        }
    };
    if permission == Permission::Deny && (raw.max_qos.is_some() || raw.retain.is_some()) {
        problems.push(
            "max_qos and retain limit what an allow rule grants; a deny rule denies at every QoS"
                .to_owned(),
        );
    }
    if raw.retain.is_some() && action == Action::Subscribe {
        problems.push("retain applies to publishing; this rule is subscribe-only".to_owned());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Rule {
        permission,
        action,
        who,
        topics,
        retain: raw.retain.unwrap_or(true),
        max_qos,
        origin,
    })
}

/// What the rules know of a client, beyond its client identifier (which the engine settles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The authenticated username; `None` for anonymous clients.
    pub username: Option<Arc<str>>,
    /// The user's groups.
    pub groups: Vec<Arc<str>>,
    /// The common name of the verified client certificate.
    pub cert_cn: Option<Arc<str>>,
    /// The listener it connected to.
    pub listener: Option<Arc<str>>,
    /// Its source address.
    pub address: Option<IpAddr>,
    /// Whether it presented credentials (false: let in anonymously).
    pub authenticated: bool,
    /// Rules from its token's ACL claim.
    pub claim: Option<Arc<AclRules>>,
    /// Restricted to the rules of this group alone (a detection rule's quarantine): every
    /// other rule, and a token's claim, is left out.
    pub quarantine: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct Entry {
    pattern: Arc<Pattern>,
    allow: bool,
    max_qos: u8,
    retain: bool,
    /// The actions it covers: a rule for both is kept once per client, not twice.
    publish: bool,
    subscribe: bool,
    origin: Origin,
}

/// The rules of one client, resolved: checks allocate nothing. One list for both actions,
/// denies first (every connection holds one while it lives).
#[derive(Debug, Clone, Default)]
pub struct ClientAcl {
    entries: Box<[Entry]>,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An allow rule grants it.
    Allowed,
    /// A deny rule matches.
    DeniedByRule,
    /// No rule allows it (the default).
    NoRule,
    /// An allow rule matches the topic but not at this QoS.
    QosAbove(u8),
    /// An allow rule matches the topic but not with the retain flag.
    RetainNotAllowed,
}

/// An answer, with the rule that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// For an allowed SUBSCRIBE: the QoS granted (the request, capped by the rule).
    pub qos: u8,
    /// The rule that decided (`None`: no rule matched, the default deny).
    pub origin: Option<Origin>,
    /// Why.
    pub reason: Reason,
    /// For an allowed SUBSCRIBE: the deny rules that keep some of the filter's topics out
    /// (carve-outs). Messages reach such a subscription only after a check of their topic
    /// ([`ClientAcl::may_receive`]); without carve-outs none is needed.
    pub carve_outs: Vec<Origin>,
    /// For a SUBSCRIBE that no one allow rule covers but several do together: the allow
    /// rules besides `origin` that cover the filter with it.
    pub together: Vec<Origin>,
}

impl Decision {
    fn deny(origin: Option<Origin>, reason: Reason) -> Self {
        Self {
            allowed: false,
            qos: 0,
            origin,
            reason,
            carve_outs: Vec::new(),
            together: Vec::new(),
        }
    }

    fn allow(qos: u8, origin: &Origin) -> Self {
        Self {
            allowed: true,
            qos,
            origin: Some(origin.clone()),
            reason: Reason::Allowed,
            carve_outs: Vec::new(),
            together: Vec::new(),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with: String = self.together.iter().map(|o| format!(" with {o}")).collect();
        let at = self
            .origin
            .as_ref()
            .map_or_else(String::new, |o| format!(" ({o}{with})"));
        match &self.reason {
            Reason::Allowed if self.carve_outs.is_empty() => write!(f, "allowed{at}"),
            Reason::Allowed => {
                write!(f, "allowed{at} except the topics denied by ")?;
                for (i, origin) in self.carve_outs.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{origin}")?;
                }
                f.write_str(" (each message checked at delivery)")
            }
            Reason::DeniedByRule => write!(f, "denied by a deny rule{at}"),
            Reason::NoRule => f.write_str("no rule allows it"),
            Reason::QosAbove(max) => write!(f, "the allowing rule{at} allows at most QoS {max}"),
            Reason::RetainNotAllowed => write!(f, "the allowing rule{at} does not allow retain"),
        }
    }
}

impl ClientAcl {
    /// Whether no rule applies to this client at all (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries about publishing, denies first.
    fn publish(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.publish)
    }

    /// The entries about subscribing (and receiving), denies first.
    fn subscribe(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.subscribe)
    }

    /// May the client publish to `topic` (a topic name) at `qos`, with `retain`?
    pub fn check_publish(&self, topic: &str, qos: u8, retain: bool) -> Decision {
        let mut near: Option<Decision> = None;
        for entry in self.publish() {
            if !entry.pattern.matches_topic(topic) {
                continue;
            }
            if !entry.allow {
                return Decision::deny(Some(entry.origin.clone()), Reason::DeniedByRule);
            }
            if qos > entry.max_qos {
                near.get_or_insert(Decision::deny(
                    Some(entry.origin.clone()),
                    Reason::QosAbove(entry.max_qos),
                ));
            } else if retain && !entry.retain {
                near.get_or_insert(Decision::deny(
                    Some(entry.origin.clone()),
                    Reason::RetainNotAllowed,
                ));
            } else {
                return Decision::allow(qos, &entry.origin);
            }
        }
        near.unwrap_or_else(|| Decision::deny(None, Reason::NoRule))
    }

    /// Whether `check_publish` allows it, without building the explanation.
    pub fn may_publish(&self, topic: &str, qos: u8, retain: bool) -> bool {
        for entry in self.publish() {
            if entry.pattern.matches_topic(topic) {
                if !entry.allow {
                    return false;
                }
                if qos <= entry.max_qos && (!retain || entry.retain) {
                    // Denies come first: none matched.
                    return true;
                }
            }
        }
        false
    }

    /// May the client subscribe to `filter` (the topic filter, without any `$share/{name}/`)
    /// at `qos`? The granted QoS is in the decision.
    ///
    /// An allow rule must cover every topic the filter can match, or several together where
    /// no one does ([`Decision::together`]). A deny rule that covers
    /// them all refuses it; one that covers only some of them ("everything under X but Y")
    /// does not: the filter is granted with that rule as a carve-out, and its topics are kept
    /// from the subscription at delivery ([`Decision::carve_outs`]).
    pub fn check_subscribe(&self, filter: &str, qos: u8) -> Decision {
        let Ok(filter) = Pattern::parse(filter) else {
            return Decision::deny(None, Reason::NoRule);
        };
        let mut best: Option<&Entry> = None;
        let mut carve_outs = Vec::new();
        for entry in self.subscribe() {
            if !entry.allow {
                if entry.pattern.contains(&filter) {
                    return Decision::deny(Some(entry.origin.clone()), Reason::DeniedByRule);
                }
                if entry.pattern.overlaps(&filter) {
                    carve_outs.push(entry.origin.clone());
                }
            } else if entry.pattern.contains(&filter)
                && best.is_none_or(|b| entry.max_qos > b.max_qos)
            {
                best = Some(entry);
            }
        }
        if let Some(entry) = best {
            return Decision {
                carve_outs,
                ..Decision::allow(qos.min(entry.max_qos), &entry.origin)
            };
        }
        // No one rule covers the filter: several may, together. The QoS granted is the
        // lowest any of them allows.
        let overlapping: Vec<&Entry> = self
            .subscribe()
            .filter(|e| e.allow && e.pattern.overlaps(&filter))
            .collect();
        let patterns: Vec<&Pattern> = overlapping.iter().map(|e| &*e.pattern).collect();
        match overlapping.split_first() {
            Some((first, rest)) if !rest.is_empty() && union_contains(&patterns, &filter) => {
                let max_qos = overlapping.iter().map(|e| e.max_qos).min().unwrap_or(0);
                Decision {
                    carve_outs,
                    together: rest.iter().map(|e| e.origin.clone()).collect(),
                    ..Decision::allow(qos.min(max_qos), &first.origin)
                }
            }
            _ => Decision::deny(None, Reason::NoRule),
        }
    }

    /// May the client receive a message published to `topic` (retained messages, and
    /// everything after a reload)?
    pub fn may_receive(&self, topic: &str) -> bool {
        let mut allowed = false;
        for entry in self.subscribe() {
            if entry.pattern.matches_topic(topic) {
                if !entry.allow {
                    return false;
                }
                allowed = true;
                break;
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests;
