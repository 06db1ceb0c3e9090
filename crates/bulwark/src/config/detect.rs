//! `[detect]` and its `[[detect.rule]]` tables: detection rules (`docs/detection.md`).

use std::time::Duration;

use bulwark_limits::detect::{DetectSettings, Per, Response, Rule, RuleKind};

use super::fields::{Field, Problems, describe, section, to_usize};

section! {
    /// `[detect]`.
    DetectSection {
        builtin: bool,
        max_tracked: u64,
        rules = "rule": Vec<Field<RuleSection>>,
    }
}

section! {
    /// One `[[detect.rule]]` table.
    RuleSection {
        name: String,
        kind: String,
        per: String,
        window: u64,
        threshold: u64,
        factor: u64,
        warmup: u64,
        max_depth: u64,
        respond: Vec<String>,
        duration: u64,
        throttle_messages_per_second: u64,
        quarantine_group: String,
    }
}

/// The `[detect]` section: the built-in rules (unless `builtin = false`), each replaced by a
/// rule of the same name, then the others.
pub(super) fn check_detect(p: &mut Problems, d: Option<&DetectSection>) -> DetectSettings {
    let mut settings = DetectSettings::default();
    let Some(d) = d else {
        return settings;
    };
    let s = "detect";
    if p.boolean(&d.builtin, s, "builtin") == Some(false) {
        settings.rules.clear();
    }
    if let Some(v) = p.integer(&d.max_tracked, s, "max_tracked", 1, 10_000_000) {
        settings.max_tracked = to_usize(v);
    }
    match &d.rules {
        None => {}
        Some(Field::Given(items)) => {
            // The names the file's own rules took: a second rule of one name is a mistake
            // (it would replace the first, which then never runs), not a replacement.
            let mut given = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let section = format!("detect.rule[{i}]");
                let Field::Given(r) = item else {
                    p.push(format!("{section}: expected a table"));
                    continue;
                };
                p.unknown_keys(r, &section);
                if let Some(rule) = check_rule(p, r, &section) {
                    if !given.insert(rule.name.clone()) {
                        p.push(format!(
                            "{section}.name = \"{}\": two rules have this name",
                            rule.name
                        ));
                        continue;
                    }
                    match settings.rules.iter_mut().find(|x| x.name == rule.name) {
                        Some(slot) => *slot = rule,
                        None => settings.rules.push(rule),
                    }
                }
            }
        }
        Some(Field::Wrong(other)) => p.push(format!(
            "detect.rule: expected [[detect.rule]] tables, found {}",
            describe(other)
        )),
    }
    // The rules as a whole are checked with the rest of the configuration
    // (`ServerConfig::validate`).
    settings
}

fn check_rule(p: &mut Problems, r: &RuleSection, s: &str) -> Option<Rule> {
    let Some(name) = p.string(&r.name, s, "name").map(str::to_owned) else {
        if r.name.is_none() {
            p.push(format!("{s}.name: every rule needs a name"));
        }
        return None;
    };
    let kinds = RuleKind::ALL.map(RuleKind::as_str).join(", ");
    let kind = match p.string(&r.kind, s, "kind") {
        Some(k) => match RuleKind::ALL.iter().find(|x| x.as_str() == k) {
            Some(kind) => *kind,
            None => {
                p.push(format!("{s}.kind = \"{k}\": one of {kinds}"));
                return None;
            }
        },
        None => {
            if r.kind.is_none() {
                p.push(format!("{s}.kind: needed (one of {kinds})"));
            }
            return None;
        }
    };
    let per = match p.string(&r.per, s, "per") {
        None if r.per.is_none() => match kind {
            RuleKind::FailedLogins | RuleKind::ProtocolViolations => Per::Network,
            RuleKind::MessageRate | RuleKind::MessageSize | RuleKind::ClientIdFlapping => {
                Per::ClientId
            }
            _ => Per::User,
        },
        None => return None,
        Some(text) => match [Per::User, Per::ClientId, Per::Certificate, Per::Network]
            .into_iter()
            .find(|x| x.as_str() == text)
        {
            Some(per) => per,
            None => {
                p.push(format!(
                    "{s}.per = \"{text}\": one of user, client_id, certificate, network"
                ));
                return None;
            }
        },
    };
    let mut rule = Rule::new(&name, kind, per);
    // Drivers hand in what a client published every 5 s: a shorter period would see most
    // periods empty and its baseline decay to nothing.
    let min_window = match kind {
        RuleKind::MessageRate | RuleKind::MessageSize => 10,
        _ => 1,
    };
    if let Some(v) = p.integer(&r.window, s, "window", min_window, 7 * 86_400) {
        rule.window = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&r.threshold, s, "threshold", 1, 1_000_000_000) {
        rule.threshold = v;
    }
    if let Some(v) = p.integer(&r.factor, s, "factor", 1, 1_000_000) {
        rule.factor = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = p.integer(&r.warmup, s, "warmup", 1, 10_000) {
        rule.warmup = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = p.integer(&r.max_depth, s, "max_depth", 1, 64) {
        rule.max_depth = to_usize(v);
    }
    if r.respond.is_some() {
        let mut responses = vec![Response::Event];
        for word in p.string_list(&r.respond, s, "respond") {
            let all = [
                Response::Event,
                Response::Metric,
                Response::Throttle,
                Response::Quarantine,
                Response::Disconnect,
                Response::Ban,
            ];
            match all.into_iter().find(|x| x.as_str() == word) {
                Some(x) if !responses.contains(&x) => responses.push(x),
                Some(_) => {}
                None => p.push(format!(
                    "{s}.respond: \"{word}\" is not one of event, metric, throttle, quarantine, disconnect, ban"
                )),
            }
        }
        rule.responses = responses;
    }
    if let Some(v) = p.integer(&r.duration, s, "duration", 1, 100 * 366 * 86_400) {
        rule.duration = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(
        &r.throttle_messages_per_second,
        s,
        "throttle_messages_per_second",
        1,
        1_000_000,
    ) {
        rule.throttle_messages_per_second = u32::try_from(v).unwrap_or(u32::MAX);
    }
    rule.quarantine_group = p
        .string(&r.quarantine_group, s, "quarantine_group")
        .map(str::to_owned);
    Some(rule)
}
