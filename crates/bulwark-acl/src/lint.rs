//! `bulwark acl lint`: findings about a rule set that is valid but probably not what its
//! author meant.
//!
//! Every check is meant to be sound: a finding says something that holds for every client
//! the rules can meet, given what [`Known`] tells about users and listeners. Where that is
//! not known, the checks that need it are skipped rather than guessed.

use std::fmt;

use super::{AclRules, Action, Clients, Origin, Permission, Rule, Template, Var, Who};

/// What lint knows beyond the file (each `None` when not available).
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Every user that can log in, with their groups (name, groups): the password store, when
    /// it is the only source of usernames. Leave it `None` when client certificates or JWTs
    /// also name users, or give groups the store does not list.
    pub users: Option<Vec<(String, Vec<String>)>>,
    /// The listener names of the broker's configuration.
    pub listeners: Option<Vec<String>>,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// An allow rule grants every (non-`$`) topic to clients outside the admin groups.
    WideGrant,
    /// A rule, or part of it, can never match any client.
    NeverMatches,
    /// An allow rule that a deny rule overrides for every client and topic it speaks of.
    Shadowed,
    /// A rule that repeats an earlier one.
    Duplicate,
}

impl FindingKind {
    /// The name used in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WideGrant => "wide-grant",
            Self::NeverMatches => "never-matches",
            Self::Shadowed => "shadowed",
            Self::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule it is about.
    pub origin: Origin,
    /// What kind of mistake it looks like.
    pub kind: FindingKind,
    /// What is wrong and why, starting with the rule's `file:line`.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks a rule set; the findings come in rule order.
///
/// - [`FindingKind::WideGrant`]: an allow rule with a topic that matches every non-`$` topic
///   (`#`, `+/#`), unless it applies to admins only: it names groups, all of them admin
///   groups ([`AclRules::admin_groups`]), or (when users are known) it names users, each of
///   them in an admin group.
/// - [`FindingKind::NeverMatches`]: an allow rule covering publish whose every topic is under
///   `$SYS` (the broker refuses client publishes there); a listener, user or group that no
///   client can have (listeners and users only when known); a `{username}` or `{cert_cn}`
///   topic of a rule for anonymous clients, who have neither.
/// - [`FindingKind::Shadowed`]: an allow rule and a deny rule that applies to every client
///   the allow applies to, for its action, and contains each of its topics whatever values
///   the templates take: a deny level with a template must be the allow's very level, and a
///   deny's literal level must face a literal one.
/// - [`FindingKind::Duplicate`]: a rule with the permission, action, clients, topics,
///   `max_qos` and `retain` of an earlier one.
pub fn lint(rules: &AclRules, known: &Known) -> Vec<Finding> {
    let all = rules.rules();
    let mut out = Vec::new();
    for (i, rule) in all.iter().enumerate() {
        wide_grant(rule, rules.admin_groups(), known, &mut out);
        never_matches(rule, known, &mut out);
        if let Some(deny) = all.iter().find(|deny| shadows(deny, rule)) {
            out.push(finding(
                rule,
                FindingKind::Shadowed,
                format!(
                    "{rule} is shadowed by the deny at {} (a deny beats any allow)",
                    deny.origin
                ),
            ));
        }
        if let Some(first) = all.iter().take(i).find(|earlier| duplicates(earlier, rule)) {
            out.push(finding(
                rule,
                FindingKind::Duplicate,
                format!("{rule} repeats the rule at {}", first.origin),
            ));
        }
    }
    out
}

fn finding(rule: &Rule, kind: FindingKind, what: String) -> Finding {
    Finding {
        origin: rule.origin.clone(),
        kind,
        message: format!("{}: {what}", rule.origin),
    }
}

fn wide_grant(rule: &Rule, admin_groups: &[String], known: &Known, out: &mut Vec<Finding>) {
    if rule.permission != Permission::Allow {
        return;
    }
    let Some(topic) = rule.topics.iter().find(|t| t.matches_everything()) else {
        return;
    };
    if admins_only(&rule.who, admin_groups, known) {
        return;
    }
    let through = if rule.topics.len() > 1 {
        format!(" (through {})", topic.as_str())
    } else {
        String::new()
    };
    let admins = if admin_groups.is_empty() {
        "none: admin_groups is empty".to_owned()
    } else {
        admin_groups.join(", ")
    };
    out.push(finding(
        rule,
        FindingKind::WideGrant,
        format!(
            "{rule} grants every topic{through} to clients outside the admin groups ({admins})"
        ),
    ));
}

/// Whether only members of an admin group can be clients of `who`. A group condition
/// restricts every client, whatever else the rule says; a user condition does so only when
/// the store shows each named user in an admin group.
fn admins_only(who: &Who, admin_groups: &[String], known: &Known) -> bool {
    let is_admin_group = |g: &String| admin_groups.contains(g);
    if !who.groups.is_empty() && who.groups.iter().all(is_admin_group) {
        return true;
    }
    let Some(users) = &known.users else {
        return false;
    };
    !who.users.is_empty()
        && who.users.iter().all(|name| {
            users
                .iter()
                .any(|(user, groups)| user == name && groups.iter().any(is_admin_group))
        })
}

fn never_matches(rule: &Rule, known: &Known, out: &mut Vec<Finding>) {
    let mut push = |what: String| out.push(finding(rule, FindingKind::NeverMatches, what));
    if rule.permission == Permission::Allow
        && rule.action.covers_publish()
        && rule.topics.iter().all(is_sys)
    {
        push(if rule.action == Action::Publish {
            format!("{rule} never matches: the broker refuses every client publish to $SYS")
        } else {
            format!(
                "{rule}: its publish half never matches (the broker refuses every client \
                 publish to $SYS); action = \"subscribe\" says what it grants"
            )
        });
    }
    let who = &rule.who;
    if let Some(listeners) = &known.listeners {
        let unknown: Vec<&String> = who
            .listeners
            .iter()
            .filter(|l| !listeners.contains(l))
            .collect();
        if !unknown.is_empty() {
            let defined = if listeners.is_empty() {
                "none".to_owned()
            } else {
                listeners.join(", ")
            };
            push(if unknown.len() == who.listeners.len() {
                format!(
                    "{rule} never matches: the configuration has no listener {} (its listeners: {defined})",
                    names(&unknown)
                )
            } else {
                format!(
                    "{rule}: the configuration has no listener {} (its listeners: {defined})",
                    names(&unknown)
                )
            });
        }
    }
    if let Some(users) = &known.users {
        let unknown: Vec<&String> = who
            .users
            .iter()
            .filter(|name| !users.iter().any(|(user, _)| user == *name))
            .collect();
        if !unknown.is_empty() {
            push(if unknown.len() == who.users.len() {
                format!(
                    "{rule} never matches: no user {} in the password store",
                    names(&unknown)
                )
            } else {
                format!("{rule}: no user {} in the password store", names(&unknown))
            });
        }
        let unheld: Vec<&String> = who
            .groups
            .iter()
            .filter(|group| !users.iter().any(|(_, groups)| groups.contains(group)))
            .collect();
        if !unheld.is_empty() {
            push(if unheld.len() == who.groups.len() {
                format!(
                    "{rule} never matches: no user of the password store is in the group {}",
                    names(&unheld)
                )
            } else {
                format!(
                    "{rule}: no user of the password store is in the group {}",
                    names(&unheld)
                )
            });
        }
        let some_user_fits = users.iter().any(|(user, groups)| {
            who.users.contains(user) && groups.iter().any(|g| who.groups.contains(g))
        });
        if unknown.is_empty()
            && unheld.is_empty()
            && !who.users.is_empty()
            && !who.groups.is_empty()
            && !some_user_fits
        {
            push(format!(
                "{rule} never matches: none of its users is in one of its groups"
            ));
        }
    }
    if who.clients == Clients::Anonymous {
        let dead: Vec<&Template> = rule
            .topics
            .iter()
            .filter(|t| t.vars().any(|v| matches!(v, Var::Username | Var::CertCn)))
            .collect();
        if !dead.is_empty() {
            let topics: Vec<&str> = dead.iter().map(|t| t.as_str()).collect();
            let why = "anonymous clients have no username and no certificate";
            push(if dead.len() == rule.topics.len() {
                format!("{rule} never matches: {why}")
            } else {
                format!("{rule}: {} never matches: {why}", topics.join(", "))
            });
        }
    }
}

/// `"a"`, or `"a", "b"`: names as written, quoted so that odd characters show.
fn names(list: &[&String]) -> String {
    list.iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the topic is `$SYS` or under it, where clients may not publish.
fn is_sys(template: &Template) -> bool {
    template
        .sample()
        .is_some_and(|p| p.as_str().split('/').next() == Some("$SYS"))
}

fn shadows(deny: &Rule, allow: &Rule) -> bool {
    deny.permission == Permission::Deny
        && allow.permission == Permission::Allow
        && (deny.action == Action::All || deny.action == allow.action)
        && allow.who.within(&deny.who)
        && allow
            .topics
            .iter()
            .all(|a| deny.topics.iter().any(|d| contains_for_every_client(d, a)))
}

/// Whether `outer` contains `inner` once both are resolved for any one client.
///
/// The samples (every variable standing for `v`) must contain each other, and each level
/// where that could hold for `v` alone must not decide: a level of `outer` with a variable
/// must be the very same text in `inner` (then both take the same value, and both match
/// nothing when the value is unusable), and a literal level of `outer` must face a literal
/// level of `inner` (the samples then compare the real texts). `+` and `#` accept any value.
fn contains_for_every_client(outer: &Template, inner: &Template) -> bool {
    let (Some(o), Some(i)) = (outer.sample(), inner.sample()) else {
        return false;
    };
    if !o.contains(&i) {
        return false;
    }
    let inner_levels: Vec<&str> = inner.as_str().split('/').collect();
    for (n, level) in outer.as_str().split('/').enumerate() {
        if level == "#" {
            break;
        }
        let facing = inner_levels.get(n).copied();
        let holds = if level == "+" {
            true
        } else if level.contains('{') {
            facing == Some(level)
        } else {
            facing.is_none_or(|f| !f.contains('{'))
        };
        if !holds {
            return false;
        }
    }
    true
}

fn duplicates(a: &Rule, b: &Rule) -> bool {
    fn texts(rule: &Rule) -> Vec<&str> {
        let mut t: Vec<&str> = rule.topics.iter().map(Template::as_str).collect();
        t.sort_unstable();
        t.dedup();
        t
    }
    a.permission == b.permission
        && a.action == b.action
        && a.max_qos == b.max_qos
        && a.retain == b.retain
        && a.who.within(&b.who)
        && b.who.within(&a.who)
        && texts(a) == texts(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = r##"
[[rule]]
permission = "allow"
action = "all"
topic = "devices/{client_id}/#"

[[rule]]
permission = "allow"
action = "subscribe"
group = "readers"
topic = "sensor/#"

[[rule]]
permission = "allow"
action = "publish"
group = "controllers"
topic = "actuator/#"
max_qos = 1
retain = false

[[rule]]
permission = "allow"
action = "all"
group = "admins"
topics = ["admin/#", "#", "$SYS/#"]

[[rule]]
permission = "allow"
action = "all"
user = ["east1", "east2"]
listener = "tls-0"
topic = "region/us-east/#"

[[rule]]
permission = "deny"
action = "all"
topic = "sensor/secret/#"

[[rule]]
permission = "allow"
action = "subscribe"
clients = "anonymous"
topic = "public/{client_id}/#"
"##;

    fn known() -> Known {
        let user = |name: &str, groups: &[&str]| {
            (
                name.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            )
        };
        Known {
            users: Some(vec![
                user("east1", &[]),
                user("east2", &["readers"]),
                user("root", &["admins"]),
                user("bob", &["controllers"]),
            ]),
            listeners: Some(vec!["tcp-0".to_owned(), "tls-0".to_owned()]),
        }
    }

    /// A file of one `[[rule]]` per body, and the line of each rule's header.
    fn file(bodies: &[&str]) -> (String, Vec<u32>) {
        let mut text = String::new();
        let mut lines = Vec::new();
        for body in bodies {
            lines.push(u32::try_from(text.lines().count() + 1).unwrap());
            text.push_str(&format!("[[rule]]\n{body}\n\n"));
        }
        (text, lines)
    }

    fn run(text: &str, known: &Known) -> Vec<Finding> {
        lint(&AclRules::parse(text, "acl.toml").unwrap(), known)
    }

    /// The findings of one kind: the index of the rule each is about, and its message.
    fn of_kind(
        text: &str,
        lines: &[u32],
        known: &Known,
        kind: FindingKind,
    ) -> Vec<(usize, String)> {
        run(text, known)
            .into_iter()
            .filter(|f| f.kind == kind)
            .map(|f| {
                let index = lines.iter().position(|l| *l == f.origin.line).unwrap();
                (index, f.message)
            })
            .collect()
    }

    #[test]
    fn a_clean_file_has_no_findings() {
        assert_eq!(run(CLEAN, &known()), []);
        assert_eq!(run(CLEAN, &Known::default()), []);
    }

    #[test]
    fn wide_grants_outside_the_admins_are_found() {
        let (text, lines) = file(&[
            r##"permission = "allow"
action = "subscribe"
topic = "#""##,
            r##"permission = "allow"
action = "all"
group = ["admins", "ops"]
topics = ["a", "+/#"]"##,
            r##"permission = "allow"
action = "all"
user = "root"
topic = "#""##,
            r##"permission = "allow"
action = "all"
user = ["root", "bob"]
topic = "#""##,
            r##"permission = "deny"
action = "all"
topic = "#""##,
            r##"permission = "allow"
action = "all"
group = "admins"
client_id = "x"
topic = "#""##,
            r##"permission = "allow"
action = "all"
clients = "anonymous"
topic = "+/#""##,
        ]);
        let wide = of_kind(&text, &lines, &known(), FindingKind::WideGrant);
        let rules: Vec<usize> = wide.iter().map(|(i, _)| *i).collect();
        assert_eq!(rules, [0, 1, 3, 6], "{wide:#?}");
        assert_eq!(
            wide[0].1,
            "acl.toml:1: allow subscribe # grants every topic to clients outside the admin \
             groups (admin, admins)"
        );
        assert!(wide[1].1.contains("(through +/#)"), "{}", wide[1].1);
        // Without the store, a user's groups are unknown.
        let rules: Vec<usize> = of_kind(&text, &lines, &Known::default(), FindingKind::WideGrant)
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(rules, [0, 1, 2, 3, 6]);
        // A file's own admin groups replace the defaults.
        let (own, _) = file(&[r##"permission = "allow"
action = "all"
group = "admins"
topic = "#""##]);
        let found = run(
            &format!("admin_groups = [\"ops\"]\n{own}"),
            &Known::default(),
        );
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.ends_with("outside the admin groups (ops)"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn rules_that_cannot_match_are_found() {
        let (text, lines) = file(&[
            r##"permission = "allow"
action = "publish"
topics = ["$SYS/x", "$SYS"]"##,
            r##"permission = "allow"
action = "all"
group = "admins"
topic = "$SYS/#""##,
            r##"permission = "allow"
action = "all"
listener = "tls-9"
topic = "a""##,
            r##"permission = "allow"
action = "all"
listener = ["tls-0", "ws-1"]
topic = "a""##,
            r##"permission = "deny"
action = "all"
user = ["mallory", "eve"]
topic = "a""##,
            r##"permission = "allow"
action = "all"
group = "nobody"
topic = "a""##,
            r##"permission = "allow"
action = "all"
user = "east1"
group = "readers"
topic = "a""##,
            r##"permission = "allow"
action = "all"
clients = "anonymous"
topics = ["u/{username}", "c/{cert_cn}"]"##,
            r##"permission = "allow"
action = "all"
clients = "anonymous"
topics = ["u/{username}", "id/{client_id}"]"##,
            // Fine: subscribing to $SYS, publishing near it, mixing users and groups.
            r##"permission = "allow"
action = "subscribe"
group = "admins"
topic = "$SYS/#""##,
            r##"permission = "allow"
action = "publish"
topics = ["$SYSTEM/x", "$SYS/x"]"##,
            r##"permission = "allow"
action = "all"
user = ["east1", "east2"]
group = "readers"
topic = "a""##,
            r##"permission = "allow"
action = "all"
clients = "any"
topic = "u/{username}""##,
        ]);
        let never = of_kind(&text, &lines, &known(), FindingKind::NeverMatches);
        let expect = [
            (
                0,
                "acl.toml:1: allow publish $SYS/x $SYS never matches: the broker refuses every \
                 client publish to $SYS",
            ),
            (1, "its publish half never matches"),
            (
                2,
                "never matches: the configuration has no listener \"tls-9\" (its listeners: \
                 tcp-0, tls-0)",
            ),
            (
                3,
                "listener=tls-0,ws-1: the configuration has no listener \"ws-1\"",
            ),
            (
                4,
                "never matches: no user \"mallory\", \"eve\" in the password store",
            ),
            (
                5,
                "never matches: no user of the password store is in the group \"nobody\"",
            ),
            (
                6,
                "never matches: none of its users is in one of its groups",
            ),
            (
                7,
                "clients=anonymous never matches: anonymous clients have no username",
            ),
            (8, "clients=anonymous: u/{username} never matches"),
        ];
        assert_eq!(never.len(), expect.len(), "{never:#?}");
        for ((index, message), (want_index, want)) in never.iter().zip(expect) {
            assert_eq!(*index, want_index, "{message}");
            assert!(message.contains(want), "{message} lacks {want}");
        }
        // Listeners and users are checked only when known.
        let rules: Vec<usize> =
            of_kind(&text, &lines, &Known::default(), FindingKind::NeverMatches)
                .iter()
                .map(|(i, _)| *i)
                .collect();
        assert_eq!(rules, [0, 1, 7, 8]);
    }

    #[test]
    fn allows_under_a_broader_deny_are_shadowed() {
        let (text, lines) = file(&[
            r##"permission = "deny"
action = "all"
clients = "any"
topics = ["sensor/secret/#", "devices/{client_id}/#"]"##,
            r##"permission = "allow"
action = "publish"
group = "readers"
topic = "sensor/secret/x""##,
            r##"permission = "allow"
action = "all"
topics = ["sensor/secret", "devices/{client_id}/cfg"]"##,
            // A topic outside the deny.
            r##"permission = "allow"
action = "all"
topics = ["sensor/secret/x", "sensor/open"]"##,
            r##"permission = "allow"
action = "subscribe"
topic = "sensor/#""##,
            // Another variable, or a literal level the value may differ from.
            r##"permission = "deny"
action = "all"
topic = "home/{username}/#""##,
            r##"permission = "allow"
action = "all"
topic = "home/{client_id}/x""##,
            r##"permission = "deny"
action = "all"
topic = "cars/v/#""##,
            r##"permission = "allow"
action = "all"
topic = "cars/{client_id}/x""##,
            // The same variable in the same level: shadowed.
            r##"permission = "allow"
action = "all"
topic = "home/{username}/x""##,
            // A deny for fewer clients, or for publish only.
            r##"permission = "deny"
action = "publish"
group = "readers"
topic = "plant/#""##,
            r##"permission = "allow"
action = "all"
group = "readers"
topic = "plant/a""##,
            r##"permission = "allow"
action = "publish"
topic = "plant/b""##,
            r##"permission = "allow"
action = "publish"
user = "east2"
group = "readers"
topic = "plant/+/c""##,
        ]);
        let shadowed = of_kind(&text, &lines, &known(), FindingKind::Shadowed);
        let by = |rule: usize, deny: usize, what: &str| {
            (
                rule,
                format!(
                    "acl.toml:{}: {what} is shadowed by the deny at acl.toml:{} (a deny beats \
                     any allow)",
                    lines[rule], lines[deny]
                ),
            )
        };
        assert_eq!(
            shadowed,
            [
                by(1, 0, "allow publish sensor/secret/x group=readers"),
                by(2, 0, "allow all sensor/secret devices/{client_id}/cfg"),
                by(9, 5, "allow all home/{username}/x"),
                by(13, 10, "allow publish plant/+/c user=east2 group=readers"),
            ]
        );
    }

    #[test]
    fn containment_holds_for_every_value() {
        let t = |text: &str| Template::parse(text).unwrap();
        let cases = [
            ("a/#", "a/{username}", true),
            ("a/+", "a/{username}", true),
            ("a/{username}/#", "a/{username}/b", true),
            ("a/x{username}/#", "a/x{username}/b", true),
            ("a/{username}/#", "a/x{username}/b", false),
            ("a/{username}/#", "a/{client_id}/b", false),
            ("a/v", "a/{username}", false),
            ("a/v/#", "a/{username}/b", false),
            ("{username}/#", "{username}", true),
            ("#", "{username}/x", true),
            ("#", "$SYS/x", false),
            ("a/+/c", "a/{cert_cn}/c", true),
            ("a/b", "a/{cert_cn}", false),
        ];
        for (outer, inner, expected) in cases {
            assert_eq!(
                contains_for_every_client(&t(outer), &t(inner)),
                expected,
                "{outer} ⊇ {inner}"
            );
        }
    }

    #[test]
    fn repeated_rules_are_duplicates() {
        let (text, lines) = file(&[
            r##"permission = "allow"
action = "all"
user = ["east1", "east2"]
topics = ["a", "b"]"##,
            r##"permission = "allow"
action = "all"
user = ["east2", "east1"]
topics = ["b", "a"]"##,
            r##"permission = "allow"
action = "all"
user = ["east2", "east1"]
topics = ["b", "a"]
max_qos = 1"##,
            r##"permission = "allow"
action = "publish"
user = ["east2", "east1"]
topics = ["b", "a"]"##,
            r##"permission = "allow"
action = "all"
user = "east1"
topics = ["b", "a"]"##,
        ]);
        let found = run(&text, &known());
        assert_eq!(
            found,
            [Finding {
                origin: Origin {
                    source: "acl.toml".into(),
                    line: lines[1],
                },
                kind: FindingKind::Duplicate,
                message: format!(
                    "acl.toml:{}: allow all b a user=east2,east1 repeats the rule at acl.toml:{}",
                    lines[1], lines[0]
                ),
            }]
        );
        assert_eq!(found[0].to_string(), found[0].message);
        assert_eq!(FindingKind::Duplicate.to_string(), "duplicate");
    }
}
