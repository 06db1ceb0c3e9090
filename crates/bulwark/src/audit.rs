//! `bulwark audit`: checks a trail (`verify`), prints its records (`show`), and prints the
//! public half of the broker's checkpoint key (`key`). The format is in `docs/audit.md`.
//!
//! Exit codes of `verify`: 0 nothing shows tampering, 1 something does (or, with --strict, a
//! warning), 2 bad input (a file or key that cannot be read). `show` and `key`: 0, or 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bulwark_audit::{PublicKey, Segment, Severity, Verifier};

/// Where the broker keeps the key unless configured otherwise.
const DEFAULT_KEY: &str = "bulwark-data/audit-signing.key";

/// Largest file read, in bytes.
const MAX_FILE: u64 = 4 << 30;

/// The audit trail: verify it, show its records, print the checkpoint key.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check the hash chain and every checkpoint signature of a trail's segments (given in any
    /// order), and say precisely what was changed, deleted, inserted, reordered or cut.
    Verify {
        /// The trusted public key (the broker's audit-signing.pub, PEM, or the base64 that
        /// `bulwark audit key --base64` prints); without it, checkpoints are checked against
        /// the key they name, which proves less (docs/audit.md).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Checkpoints (or records) exported elsewhere (`[audit] export_file`, a syslog
        /// archive): proves the trail was not cut short after them (repeatable).
        #[arg(long, value_name = "FILE")]
        anchor: Vec<PathBuf>,
        /// Warnings count as failure (exit 1) too.
        #[arg(long)]
        strict: bool,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        /// The segments: the active file and the rotated ones (e.g. bulwark-data/audit*.jsonl).
        #[arg(required = true, value_name = "FILES")]
        files: Vec<PathBuf>,
    },
    /// Print records, oldest first, filtered.
    Show {
        /// From this time on: RFC 3339 (2026-12-08T10:00:00Z), a date (2026-12-08), or an age
        /// (90s, 10m, 2h, 7d ago).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Before this time (same forms as --since).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only these kinds (repeatable), e.g. auth_failure, admin_action, checkpoint.
        #[arg(long, value_name = "KIND")]
        kind: Vec<String>,
        /// Only records of this username.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Only records of this client identifier.
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        /// Only records whose remote address starts with this (an IP, or IP:port).
        #[arg(long, value_name = "ADDR")]
        remote: Option<String>,
        /// The records as they are written (JSON lines).
        #[arg(long)]
        json: bool,
        /// The segments, in any order.
        #[arg(required = true, value_name = "FILES")]
        files: Vec<PathBuf>,
    },
    /// Print the public half of the checkpoint key (to keep elsewhere and verify with).
    Key {
        /// The private key file (the broker's `[audit] key_file`).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_KEY)]
        key_file: PathBuf,
        /// The base64 of the key's 32 bytes, as checkpoints carry it, instead of PEM.
        #[arg(long)]
        base64: bool,
    },
}

pub(crate) fn run(args: AuditArgs) -> ExitCode {
    let result = match args.command {
        AuditCommand::Verify {
            key,
            anchor,
            strict,
            json,
            files,
        } => verify(key.as_deref(), &anchor, strict, json, &files),
        AuditCommand::Show {
            since,
            until,
            kind,
            user,
            client_id,
            remote,
            json,
            files,
        } => show(
            &Filter {
                since: since.as_deref().map(time_bound).transpose(),
                until: until.as_deref().map(time_bound).transpose(),
                kinds: kind,
                user,
                client_id,
                remote,
            },
            json,
            &files,
        ),
        AuditCommand::Key { key_file, base64 } => key(&key_file, base64),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bulwark audit: {err}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if meta.is_dir() {
        return Err(format!(
            "{} is a directory: name the files (e.g. {}/audit*.jsonl)",
            path.display(),
            path.display()
        ));
    }
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{} is larger than {MAX_FILE} bytes: not a segment (segments rotate at [audit] segment_size)",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))
}

fn verify(
    key: Option<&Path>,
    anchors: &[PathBuf],
    strict: bool,
    json: bool,
    files: &[PathBuf],
) -> Result<ExitCode, String> {
    let mut verifier = Verifier::new();
    if let Some(key) = key {
        let text = String::from_utf8(read(key)?)
            .map_err(|_| format!("{}: not a key (not text)", key.display()))?;
        let public = PublicKey::parse(&text).map_err(|err| format!("{}: {err}", key.display()))?;
        verifier = verifier.trust(public);
    }
    for anchor in anchors {
        verifier = verifier.anchor(&anchor.display().to_string(), read(anchor)?);
    }
    let contents = files
        .iter()
        .map(|f| read(f).map(|bytes| (f.display().to_string(), bytes)))
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<Segment<'_>> = contents
        .iter()
        .map(|(name, bytes)| Segment { name, bytes })
        .collect();
    let report = verifier.verify(&segments);
    let warned = report
        .findings
        .iter()
        .any(|f| f.severity == Severity::Warning);
    let failed = report.tampered() || (strict && warned);
    if json {
        let findings: Vec<serde_json::Value> = report
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "severity": match f.severity {
                        Severity::Note => "note",
                        Severity::Warning => "warning",
                        Severity::Tampering => "tampering",
                    },
                    "kind": f.kind.as_str(),
                    "file": f.file,
                    "line": f.line,
                    "seq": f.seq,
                    "message": f.message,
                })
            })
            .collect();
        let out = serde_json::json!({
            "intact": !report.tampered(),
            "files": files.len(),
            "records": report.records,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "checkpoints": report.checkpoints,
            "signed_to": report.signed_to,
            "anchored": report.anchored,
            "keys": report.keys,
            "trusted_key": key.is_some(),
            "findings": findings,
        });
        println!("{out}");
    } else {
        for finding in &report.findings {
            println!("{finding}");
        }
        let range = match (report.first_seq, report.last_seq) {
            (Some(a), Some(b)) => format!(" (seq {a} to {b})"),
            _ => String::new(),
        };
        let signed = report
            .signed_to
            .map_or(String::new(), |s| format!(", signed to seq {s}"));
        let anchored = if anchors.is_empty() {
            String::new()
        } else {
            format!(", {} matched in the exported copies", report.anchored)
        };
        let by = if key.is_some() {
            "the trusted key"
        } else {
            "the key each names"
        };
        println!(
            "{} file(s), {} record(s){range}; {} checkpoint(s) verified with {by}{signed}{anchored}",
            files.len(),
            report.records,
            report.checkpoints,
        );
        let tampering = report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Tampering)
            .count();
        if report.tampered() {
            println!("result: TAMPERED ({tampering} finding(s) show the trail was changed)");
        } else if failed {
            println!("result: warnings (--strict)");
        } else {
            println!("result: intact (nothing shows the trail was changed)");
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `show` keeps.
struct Filter {
    since: Result<Option<String>, String>,
    until: Result<Option<String>, String>,
    kinds: Vec<String>,
    user: Option<String>,
    client_id: Option<String>,
    remote: Option<String>,
}

/// A time bound as the records write time (RFC 3339 UTC, compared as text).
fn time_bound(text: &str) -> Result<String, String> {
    let text = text.trim();
    if let Some(age) = age(text) {
        let at = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(bulwark_acl::event::rfc3339(at));
    }
    if !utc_time(text) {
        return Err(format!(
            "{text}: not a time (use a UTC time such as 2026-12-08T10:00:00Z, a date such as 2026-12-08, or an age such as 2h; records are in UTC, so offsets like +02:00 are refused)"
        ));
    }
    // Records write `...Z` in UTC with milliseconds; a bound without them compares in place.
    Ok(text.trim_end_matches('Z').to_owned())
}

/// Whether `text` is `YYYY-MM-DD`, optionally followed by `THH:MM`, `:SS`, `.fraction` and
/// `Z`: the forms that compare correctly, as text, with the records' UTC times.
fn utc_time(text: &str) -> bool {
    let pattern = |s: &str, shape: &str| {
        s.len() == shape.len()
            && s.bytes().zip(shape.bytes()).all(|(c, p)| match p {
                b'9' => c.is_ascii_digit(),
                other => c == other,
            })
    };
    let (date, rest) = text.split_at_checked(10).unwrap_or((text, ""));
    if !pattern(date, "9999-99-99") {
        return false;
    }
    let rest = rest.strip_suffix('Z').unwrap_or(rest);
    if rest.is_empty() {
        return true;
    }
    let (clock, fraction) = match rest.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (rest, None),
    };
    let clock_ok = pattern(clock, "T99:99") || pattern(clock, "T99:99:99");
    let fraction_ok = fraction
        .is_none_or(|f| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) && clock.len() == 9);
    clock_ok && fraction_ok
}

fn age(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let n: u64 = text.get(..text.len() - 1)?.parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn show(filter: &Filter, json: bool, files: &[PathBuf]) -> Result<ExitCode, String> {
    let since = filter.since.clone()?;
    let until = filter.until.clone()?;
    let mut records: Vec<(
        u64,
        usize,
        serde_json::Map<String, serde_json::Value>,
        String,
    )> = Vec::new();
    let mut unreadable = 0usize;
    for file in files {
        let bytes = read(file)?;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let text = String::from_utf8_lossy(line).into_owned();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(map)) => {
                    let seq = map
                        .get("seq")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    let order = records.len();
                    records.push((seq, order, map, text));
                }
                _ => unreadable += 1,
            }
        }
    }
    // Chained records by seq; plain ones (seq 0) as the files give them.
    records.sort_by_key(|(seq, order, _, _)| (*seq, *order));
    let field = |map: &serde_json::Map<String, serde_json::Value>, key: &str| {
        map.get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let mut shown = 0usize;
    for (_, _, map, text) in &records {
        let time = field(map, "time").unwrap_or_default();
        let kind = field(map, "kind").unwrap_or_default();
        if since.as_deref().is_some_and(|s| time.as_str() < s)
            || until.as_deref().is_some_and(|u| time.as_str() >= u)
            || (!filter.kinds.is_empty() && !filter.kinds.contains(&kind))
            || filter
                .user
                .as_ref()
                .is_some_and(|u| field(map, "username").as_ref() != Some(u))
            || filter
                .client_id
                .as_ref()
                .is_some_and(|c| field(map, "client_id").as_ref() != Some(c))
            || filter.remote.as_ref().is_some_and(|r| {
                !field(map, "remote").is_some_and(|remote| remote.starts_with(r.as_str()))
            })
        {
            continue;
        }
        shown += 1;
        if json {
            println!("{text}");
            continue;
        }
        let mut out = match map.get("seq") {
            Some(seq) => format!("{seq} {time} {kind}"),
            None => format!("{time} {kind}"),
        };
        for (k, v) in map {
            if matches!(k.as_str(), "seq" | "time" | "kind" | "prev" | "sig") {
                continue;
            }
            match v {
                serde_json::Value::String(s) => out.push_str(&format!(" {k}={s:?}")),
                other => out.push_str(&format!(" {k}={other}")),
            }
        }
        println!("{out}");
    }
    if unreadable > 0 {
        eprintln!(
            "bulwark audit: {unreadable} line(s) are not JSON records and were skipped (bulwark audit verify says why)"
        );
    }
    if !json {
        eprintln!("{shown} of {} record(s)", records.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn key(path: &Path, base64: bool) -> Result<ExitCode, String> {
    let text = String::from_utf8(read(path)?)
        .map_err(|_| format!("{}: not a key (not text)", path.display()))?;
    let public = match bulwark_audit::AuditKey::from_pem(&text) {
        Ok(key) => key.public(),
        // The public file works as well.
        Err(_) => PublicKey::parse(&text).map_err(|err| format!("{}: {err}", path.display()))?,
    };
    if base64 {
        println!("{}", public.base64());
    } else {
        print!("{}", public.to_pem().map_err(|err| err.to_string())?);
    }
    Ok(ExitCode::SUCCESS)
}
