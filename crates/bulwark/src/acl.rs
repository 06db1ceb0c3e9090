//! `bulwark acl`: check a decision, lint a rule file, import a Mosquitto `acl_file`.
//!
//! `check` and `lint` read the rules the broker would: `--file`, else the `[acl] file` of
//! `--config`, else `bulwark-data/acl.toml`. Users' groups come from the password store:
//! `--passwords`, else the `[auth] password_file` of `--config`, else
//! `bulwark-data/passwords.toml` when it exists. `lint` takes the store's users as every user
//! there is, unless the configuration lets client certificates or JWTs name users too.
//!
//! Exit codes: `check` 0 allowed, 1 denied; `lint` 0 no findings, 1 findings;
//! `import-mosquitto` 0 converted, 1 refused (the output file exists); every command 2 on bad
//! input (a file that cannot be read or parsed, an invalid topic), with every problem printed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bulwark_acl::lint::{Known, lint};
use bulwark_acl::{AclRules, Decision, Principal, Reason, Template};
use bulwark_auth::password::PasswordStore;
use bulwark_proto::{TopicFilter, TopicName};
use bulwark_server::{ServerConfig, files};

/// The ACL file unless `--file` or `--config` says otherwise.
const DEFAULT_ACL: &str = "bulwark-data/acl.toml";
/// The password store unless `--passwords` or `--config` says otherwise.
const DEFAULT_STORE: &str = "bulwark-data/passwords.toml";
/// Largest ACL, configuration or Mosquitto file read, in bytes.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Work with ACL files.
#[derive(Debug, clap::Args)]
pub(crate) struct AclArgs {
    #[command(subcommand)]
    command: AclCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AclCommand {
    /// Explain the decision on one PUBLISH topic or SUBSCRIBE filter for one client: ALLOW or
    /// DENY, and the rule that decided.
    Check(Box<CheckArgs>),
    /// Find rules that are valid but probably wrong: `#` granted outside the admin groups,
    /// rules that can never match, allows a deny overrides, repeated rules.
    Lint {
        #[command(flatten)]
        inputs: Inputs,
    },
    /// Convert a Mosquitto acl_file to Bulwark's ACL format (to stdout, or to --out).
    ImportMosquitto {
        /// The Mosquitto acl_file.
        mosquitto_file: PathBuf,
        /// Write the rules to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Replace the --out file if it exists.
        #[arg(long, requires = "out")]
        force: bool,
        /// Leave out the rule that lets the group "admins" (where `bulwark serve`'s first run
        /// puts the user "admin") do everything; without it, the converted rules alone decide.
        #[arg(long)]
        no_admin_rule: bool,
    },
}

/// Where the rules and the users come from.
#[derive(Debug, clap::Args)]
struct Inputs {
    /// The ACL file [default: the `[acl] file` of --config, else bulwark-data/acl.toml].
    #[arg(long, value_name = "ACL", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// The broker's configuration file: its ACL file, password store and listener names.
    #[arg(long, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// The password store, for users and their groups [default: the `[auth] password_file`
    /// of --config, else bulwark-data/passwords.toml if it exists].
    #[arg(long, value_name = "STORE")]
    passwords: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Operation {
    /// A PUBLISH to a topic name.
    Publish,
    /// A SUBSCRIBE to a topic filter (`$share/{name}/{filter}` is checked on its filter).
    Subscribe,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// The client's username.
    #[arg(long, value_name = "USER", required_unless_present = "anonymous")]
    user: Option<String>,
    /// The client identifier; needed only when a rule depends on it (`{client_id}` in a topic,
    /// or `client_id = ...`).
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// The common name of the client's certificate.
    #[arg(long, value_name = "CN")]
    cert_cn: Option<String>,
    /// A group of the user, besides those of the password store (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The listener the client connected to.
    #[arg(long, value_name = "NAME")]
    listener: Option<String>,
    /// The client's address.
    #[arg(long, value_name = "IP")]
    source: Option<IpAddr>,
    /// A client let in without credentials.
    #[arg(long, conflicts_with_all = ["user", "cert_cn", "groups"])]
    anonymous: bool,
    /// The QoS of the PUBLISH, or the one the SUBSCRIBE asks for [default: 0 for publish, 2
    /// for subscribe].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: Option<u8>,
    /// A retained PUBLISH.
    #[arg(long)]
    retain: bool,
    /// What the client does.
    #[arg(value_enum)]
    operation: Operation,
    /// The topic name (publish) or topic filter (subscribe).
    topic: String,
}

/// A command that did not complete: every problem and the exit status.
#[derive(Debug)]
struct Failure {
    problems: Vec<String>,
    code: u8,
}

impl Failure {
    /// Refused: exit status 1.
    fn refused(message: impl Into<String>) -> Self {
        Self {
            problems: vec![message.into()],
            code: 1,
        }
    }

    /// Bad input: exit status 2.
    fn input(message: impl Into<String>) -> Self {
        Self::inputs(vec![message.into()])
    }

    /// Several problems with the input: exit status 2.
    fn inputs(problems: Vec<String>) -> Self {
        Self { problems, code: 2 }
    }
}

/// Runs `bulwark acl ...`.
pub(crate) fn run(args: AclArgs) -> ExitCode {
    let result = match args.command {
        AclCommand::Check(args) => check(&args),
        AclCommand::Lint { inputs } => lint_file(&inputs),
        AclCommand::ImportMosquitto {
            mosquitto_file,
            out,
            force,
            no_admin_rule,
        } => import_mosquitto(&mosquitto_file, out.as_deref(), force, !no_admin_rule),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            for problem in &failure.problems {
                eprintln!("error: {problem}");
            }
            ExitCode::from(failure.code)
        }
    }
}

/// The rules, with the configuration and the password store they came with.
struct Loaded {
    rules: AclRules,
    config: Option<ServerConfig>,
    store: Option<(PathBuf, PasswordStore)>,
}

fn load(inputs: &Inputs) -> Result<Loaded, Failure> {
    let config = match &inputs.config {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    let acl_path = match (&inputs.file, &config, &inputs.config) {
        (Some(file), _, _) => file.clone(),
        (None, Some(config), Some(path)) => config.acl.file.clone().ok_or_else(|| {
            Failure::input(format!(
                "{}: no ACL file ([acl] dangerous_allow_all = true lets every client do \
                 anything); pass --file",
                path.display()
            ))
        })?,
        _ => PathBuf::from(DEFAULT_ACL),
    };
    let source = acl_path.display().to_string();
    let text = files::read_text(&acl_path, "ACL file", MAX_FILE_BYTES).map_err(Failure::input)?;
    let rules = AclRules::parse(&text, &source).map_err(|err| Failure::inputs(err.problems))?;
    let store_path = match (&inputs.passwords, &config) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(config)) => config.auth.password_file.clone(),
        (None, None) => Some(PathBuf::from(DEFAULT_STORE)).filter(|p| p.is_file()),
    };
    let store = match store_path {
        Some(path) => {
            if path.symlink_metadata().is_err() {
                return Err(Failure::input(format!(
                    "no password store at {} (pass --passwords)",
                    path.display()
                )));
            }
            let store = files::load_store(&path, false).map_err(Failure::input)?;
            Some((path, store))
        }
        None => None,
    };
    Ok(Loaded {
        rules,
        config,
        store,
    })
}

fn read_config(path: &Path) -> Result<ServerConfig, Failure> {
    let source = path.display().to_string();
    let text =
        files::read_text(path, "configuration file", MAX_FILE_BYTES).map_err(Failure::input)?;
    crate::config::parse(&text, &source).map_err(|err| {
        Failure::inputs(
            err.problems
                .into_iter()
                .map(|p| format!("{source}: {p}"))
                .collect(),
        )
    })
}

fn check(args: &CheckArgs) -> Result<u8, Failure> {
    let checked = match args.operation {
        Operation::Publish => TopicName::new(&args.topic)
            .map(|t| t.as_str().to_owned())
            .map_err(|err| {
                Failure::input(format!(
                    "{:?} is not a topic name to publish to: {err}",
                    args.topic
                ))
            })?,
        Operation::Subscribe => {
            if args.retain {
                return Err(Failure::input("--retain applies to publish"));
            }
            TopicFilter::new(&args.topic)
                .map(|f| f.match_filter().to_owned())
                .map_err(|err| {
                    Failure::input(format!("{:?} is not a topic filter: {err}", args.topic))
                })?
        }
    };
    let loaded = load(&args.inputs)?;
    let mut groups: Vec<Arc<str>> = args.groups.iter().map(|g| Arc::from(g.as_str())).collect();
    if let (Some(user), Some((path, store))) = (&args.user, &loaded.store) {
        match store.get(user) {
            Some(record) => {
                for group in &record.groups {
                    if !groups.iter().any(|g| **g == **group) {
                        groups.push(Arc::from(group.as_str()));
                    }
                }
            }
            None => eprintln!(
                "note: no user {user:?} in the password store {}: only --group groups apply",
                path.display()
            ),
        }
    }
    let principal = Principal {
        username: args.user.as_deref().map(Arc::from),
        groups,
        cert_cn: args.cert_cn.as_deref().map(Arc::from),
        listener: args.listener.as_deref().map(Arc::from),
        address: args.source,
        authenticated: !args.anonymous,
        claim: None,
        quarantine: None,
    };
    let client_id = match (&args.client_id, loaded.rules.rule_using_client_id()) {
        (Some(id), _) => id.as_str(),
        (None, None) => "",
        (None, Some(rule)) => {
            return Err(Failure::input(format!(
                "the rule at {} depends on the client identifier ({rule}): pass --client-id ID",
                rule.origin
            )));
        }
    };
    let acl = loaded.rules.resolve(&principal, client_id);
    let decision = match args.operation {
        Operation::Publish => {
            if checked == "$SYS" || checked.starts_with("$SYS/") {
                println!(
                    "DENY  (the broker refuses every client publish to $SYS, whatever the rules)"
                );
                return Ok(1);
            }
            acl.check_publish(&checked, args.qos.unwrap_or(0), args.retain)
        }
        Operation::Subscribe => acl.check_subscribe(&checked, args.qos.unwrap_or(2)),
    };
    println!("{}", verdict_line(&loaded.rules, &decision, args.operation));
    let rule_at = |origin: &bulwark_acl::Origin| {
        loaded
            .rules
            .rules()
            .iter()
            .find(|r| r.origin == *origin)
            .map_or_else(String::new, |r| format!("  {r}"))
    };
    for origin in &decision.together {
        println!("  with  {origin}{}", rule_at(origin));
    }
    for origin in &decision.carve_outs {
        println!("  except  {origin}{}", rule_at(origin));
    }
    if !decision.carve_outs.is_empty() {
        println!("  (carve-outs: messages to the topics these deny rules cover are not delivered)");
    }
    if matches!(
        decision.reason,
        Reason::QosAbove(_) | Reason::RetainNotAllowed
    ) {
        println!("  {decision}");
    }
    Ok(if decision.allowed { 0 } else { 1 })
}

/// `ALLOW  acl.toml:14  allow publish actuator/# ...`: the verdict and the rule that gave it.
fn verdict_line(rules: &AclRules, decision: &Decision, operation: Operation) -> String {
    let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
    let Some(origin) = &decision.origin else {
        return format!("{verdict}  (no rule allows it: default deny)");
    };
    let mut line = format!("{verdict}  {origin}");
    if let Some(rule) = rules.rules().iter().find(|r| r.origin == *origin) {
        line.push_str(&format!("  {rule}"));
    }
    if decision.allowed && operation == Operation::Subscribe {
        line.push_str(&format!("  granted QoS {}", decision.qos));
    }
    line
}

fn lint_file(inputs: &Inputs) -> Result<u8, Failure> {
    let loaded = load(inputs)?;
    let mut known = Known::default();
    if let Some(config) = &loaded.config {
        known.listeners = Some(config.listeners.iter().map(|l| l.name.clone()).collect());
    }
    if let Some((path, store)) = &loaded.store {
        match loaded
            .config
            .as_ref()
            .and_then(ServerConfig::other_identity_sources)
        {
            Some(others) => eprintln!(
                "note: {others} also name users; users and groups are not checked against {}",
                path.display()
            ),
            None => {
                known.users = Some(
                    store
                        .users()
                        .map(|u| (u.name.clone(), u.groups.clone()))
                        .collect(),
                );
            }
        }
    }
    let findings = lint(&loaded.rules, &known);
    for finding in &findings {
        println!("{finding}");
    }
    match findings.len() {
        0 => println!("no findings"),
        1 => println!("1 finding"),
        n => println!("{n} findings"),
    }
    Ok(u8::from(!findings.is_empty()))
}

/// The rule of the first run's ACL for administrators, the group `bulwark serve` puts the user
/// "admin" in. An imported ACL starts with it, or the administrator would be locked out.
pub(crate) const ADMIN_RULE: &str = r##"# Administrators (the group "admins" of the password store): everything, $SYS included.
[[rule]]
permission = "allow"
action = "all"
group = "admins"
topics = ["#", "$SYS/#"]
"##;

/// Printed after a conversion: the one place where the converted rules decide otherwise.
const SUBSCRIBE_NOTE: &str = "note: Bulwark grants a SUBSCRIBE only if every topic its filter \
can match is allowed; Mosquitto grants it and filters what it delivers. A client allowed to \
read sensors/public/# may no longer subscribe to sensors/#. Review the rules, then run \
`bulwark acl lint`.";

fn import_mosquitto(
    mosquitto_file: &Path,
    out: Option<&Path>,
    force: bool,
    admin_rule: bool,
) -> Result<u8, Failure> {
    let text = files::read_text(mosquitto_file, "Mosquitto acl_file", MAX_FILE_BYTES)
        .map_err(Failure::input)?;
    let source = mosquitto_file.display().to_string();
    let converted = convert_mosquitto(&text, &source, admin_rule).map_err(Failure::inputs)?;
    for note in &converted.notes {
        eprintln!("note: {note}");
    }
    if admin_rule {
        eprintln!(
            "note: the output starts with a rule that lets the group \"admins\" do everything, \
             as the first run's ACL does (`bulwark serve` puts the user \"admin\" in that group): \
             without it, the converted rules would lock the administrator out. \
             --no-admin-rule leaves it out."
        );
    }
    match out {
        None => print!("{}", converted.toml),
        Some(path) => {
            if !force && path.symlink_metadata().is_ok() {
                return Err(Failure::refused(format!(
                    "{} exists; nothing was written (--force replaces it)",
                    path.display()
                )));
            }
            files::write_atomic(path, converted.toml.as_bytes()).map_err(Failure::input)?;
            println!(
                "converted {} rule(s) from {source} into {}",
                converted.rules,
                path.display()
            );
        }
    }
    eprintln!("{SUBSCRIBE_NOTE}");
    Ok(0)
}

/// A Mosquitto acl_file in Bulwark's format.
#[derive(Debug)]
struct Converted {
    toml: String,
    rules: usize,
    /// Lines that convert faithfully but may not say what their author meant.
    notes: Vec<String>,
}

/// Converts a Mosquitto acl_file: `user NAME` starts a user's rules, `topic [ACCESS] TOPIC`
/// is a rule of that user (of anonymous clients before any `user` line), `pattern [ACCESS]
/// TOPIC` a rule of every client with `%u` and `%c` substituted. Every problem is returned,
/// each with its line.
fn convert_mosquitto(text: &str, source: &str, admin_rule: bool) -> Result<Converted, Vec<String>> {
    let mut out = format!(
        "# Converted from the Mosquitto acl_file {} by `bulwark acl import-mosquitto`.\n",
        comment_text(source)
    );
    if admin_rule {
        out.push_str(
            "\n# Not from the Mosquitto file: what the first run's ACL grants administrators\n\
             # (`--no-admin-rule` leaves it out).\n",
        );
        out.push_str(ADMIN_RULE);
    }
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut user: Option<&str> = None;
    let mut rules = 0;
    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (directive, rest) = split_word(line);
        let pattern = match directive {
            "user" => {
                if rest.is_empty() {
                    problems.push(format!("{source}:{n}: `user` without a name"));
                }
                user = Some(rest);
                continue;
            }
            "topic" => false,
            "pattern" => true,
            other => {
                problems.push(format!(
                    "{source}:{n}: unknown directive {other:?} (expected user, topic or pattern)"
                ));
                continue;
            }
        };
        let (access, topic) = match split_word(rest) {
            (word @ ("read" | "write" | "readwrite" | "deny"), topic) => (word, topic),
            _ => ("readwrite", rest),
        };
        if topic.is_empty() {
            problems.push(format!("{source}:{n}: {directive} without a topic"));
            continue;
        }
        let topic = if pattern {
            substitute(topic)
        } else {
            if topic.contains("%u") || topic.contains("%c") {
                notes.push(format!(
                    "{source}:{n}: {topic:?} is taken literally: Mosquitto substitutes %u and \
                     %c in pattern lines only"
                ));
            }
            literal(topic)
        };
        let topic = match topic.and_then(|t| Template::parse(&t).map(|_| t)) {
            Ok(topic) => topic,
            Err(why) => {
                problems.push(format!("{source}:{n}: {why}"));
                continue;
            }
        };
        let (permission, action) = match access {
            "read" => ("allow", "subscribe"),
            "write" => ("allow", "publish"),
            "deny" => ("deny", "all"),
            _ => ("allow", "all"),
        };
        out.push_str(&format!("\n# line {n}: {}\n[[rule]]\n", comment_text(line)));
        out.push_str(&format!(
            "permission = \"{permission}\"\naction = \"{action}\"\n"
        ));
        match (pattern, user) {
            (true, _) => out.push_str("clients = \"any\"\n"),
            (false, None) => out.push_str("clients = \"anonymous\"\n"),
            (false, Some(name)) => out.push_str(&format!("user = {}\n", toml_string(name))),
        }
        out.push_str(&format!("topic = {}\n", toml_string(&topic)));
        rules += 1;
    }
    if problems.is_empty() && rules == 0 {
        problems.push(format!(
            "{source}: no topic or pattern lines, nothing to convert"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Every topic was checked line by line; this catches anything the output itself breaks.
    AclRules::parse(&out, source).map_err(|err| err.problems)?;
    Ok(Converted {
        toml: out,
        rules,
        notes,
    })
}

/// The first word of `text` and the rest, without the blanks between them.
fn split_word(text: &str) -> (&str, &str) {
    text.split_once(char::is_whitespace)
        .map_or((text, ""), |(word, rest)| (word, rest.trim_start()))
}

/// A `pattern` line's topic with `%u` and `%c` as templates; Mosquitto substitutes them
/// only where they are a whole level.
fn substitute(topic: &str) -> Result<String, String> {
    let levels: Vec<String> = topic
        .split('/')
        .map(|level| match level {
            "%u" => Ok("{username}".to_owned()),
            "%c" => Ok("{client_id}".to_owned()),
            other if other.contains('%') => Err(format!(
                "{topic:?}: level {other:?}: only %u and %c are substituted, each as a whole level"
            )),
            other => literal(other),
        })
        .collect::<Result<_, _>>()?;
    Ok(levels.join("/"))
}

/// A topic as Bulwark reads it literally: `{` and `}` would start a template.
fn literal(topic: &str) -> Result<String, String> {
    if topic.contains(['{', '}']) {
        return Err(format!(
            "{topic:?}: `{{` and `}}` cannot be written in a Bulwark topic pattern (they mark templates)"
        ));
    }
    Ok(topic.to_owned())
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Text safe in a TOML comment: control characters, which a comment may not hold, escaped.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::*;

    #[test]
    fn mosquitto_lines_convert() {
        let text = "topic read public/#\n\
                    # a comment\n\
                    \n\
                    user alice\n\
                    \x20 topic write a b/c\n\
                    topic x/#\n\
                    topic deny x/secret\n\
                    user bob smith\n\
                    topic readwrite %u/x\n\
                    pattern read devices/%c/%u/#\n";
        let converted = convert_mosquitto(text, "acl", false).unwrap();
        let rules = AclRules::parse(&converted.toml, "out").unwrap();
        let shown: Vec<String> = rules.rules().iter().map(ToString::to_string).collect();
        // With the administrators' rule, it comes first and the converted ones follow.
        let with_admin = convert_mosquitto(text, "acl", true).unwrap();
        let with_admin = AclRules::parse(&with_admin.toml, "out").unwrap();
        let first: Vec<String> = with_admin.rules().iter().map(ToString::to_string).collect();
        assert_eq!(first[0], "allow all # $SYS/# group=admins");
        assert_eq!(first[1..], shown[..]);
        assert_eq!(
            shown,
            [
                "allow subscribe public/# clients=anonymous",
                "allow publish a b/c user=alice",
                "allow all x/# user=alice",
                "deny all x/secret user=alice",
                "allow all %u/x user=bob smith",
                "allow subscribe devices/{client_id}/{username}/# clients=any",
            ]
        );
        assert_eq!(converted.rules, 6);
        assert!(
            converted.toml.contains("# line 5: topic write a b/c\n"),
            "{}",
            converted.toml
        );
        assert_eq!(converted.notes.len(), 1, "{:?}", converted.notes);
        assert!(
            converted.notes[0].starts_with("acl:9: "),
            "{:?}",
            converted.notes
        );
    }

    #[test]
    fn mosquitto_problems_name_their_lines() {
        let text = "user\ntopic read\nallow x\npattern a/%x\npattern dev-%u\ntopic a/{b}\ntopic a/#/b\npattern read ok/%u\n";
        let problems = convert_mosquitto(text, "acl", true).unwrap_err();
        let lines: Vec<&str> = problems
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                "acl:1", "acl:2", "acl:3", "acl:4", "acl:5", "acl:6", "acl:7"
            ],
            "{problems:#?}"
        );
        assert!(
            problems[2].contains("unknown directive \"allow\""),
            "{}",
            problems[2]
        );
        assert!(convert_mosquitto("# nothing\n", "acl", true).is_err());
    }

    #[test]
    fn odd_names_stay_valid_toml() {
        let converted =
            convert_mosquitto("user we\"ird\\name\u{7}\ntopic a\"b\\c\n", "acl", false).unwrap();
        let rules = AclRules::parse(&converted.toml, "out").unwrap();
        let rule = &rules.rules()[0];
        assert_eq!(rule.who.users, ["we\"ird\\name\u{7}"]);
        assert_eq!(rule.topics[0].as_str(), "a\"b\\c");
    }
}
