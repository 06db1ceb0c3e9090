//! `bulwark ban`: the ban list the broker keeps in its data directory (`[bans] file`), edited
//! from the command line. The broker reloads the file when it changes and closes the live
//! connections a new ban covers.
//!
//! Exit codes: 0 done, 1 refused (no such ban, the list is full), 2 bad input (a file that
//! cannot be read or parsed, a bad address or duration).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulwark_acl::Cidr;
use bulwark_limits::ban::{Ban, BanList, BanTarget};
use bulwark_server::files;

/// Where the list lives unless `--file` says otherwise.
const DEFAULT_FILE: &str = "bulwark-data/bans.toml";

/// Manage the ban list.
#[derive(Debug, clap::Args)]
pub(crate) struct BanArgs {
    #[command(subcommand)]
    command: BanCommand,
}

/// Who a ban is about: an address, a username, a client id, or a username and a client id
/// together (that user's use of that client id, the form of the broker's bans for flapping).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
struct Target {
    /// A source address or network, e.g. 203.0.113.7 or 203.0.113.0/24.
    #[arg(long, value_name = "CIDR", conflicts_with_all = ["username", "client_id"])]
    address: Option<String>,
    /// A username; with --client-id, only that user's use of that client id ('' for
    /// anonymous clients).
    #[arg(long, value_name = "USER")]
    username: Option<String>,
    /// A client identifier.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
}

impl Target {
    fn parse(&self) -> Result<BanTarget, String> {
        match (&self.address, &self.username, &self.client_id) {
            (Some(a), _, _) => Cidr::parse(a).map(BanTarget::Address),
            (_, Some(u), Some(c)) if !c.is_empty() => Ok(BanTarget::UserClientId {
                username: (!u.is_empty()).then(|| u.clone()),
                client_id: c.clone(),
            }),
            (_, Some(u), None) if !u.is_empty() => Ok(BanTarget::Username(u.clone())),
            (_, _, Some(c)) if !c.is_empty() => Ok(BanTarget::ClientId(c.clone())),
            _ => Err("the username or client id is empty".to_owned()),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum BanCommand {
    /// Ban an address, network, username or client id (replacing an earlier ban on it).
    Add {
        #[command(flatten)]
        target: Target,
        /// How long: seconds, or with a unit (90s, 10m, 2h, 7d); left out: until removed.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why (kept in the list and shown in the broker's events).
        #[arg(long, default_value = "")]
        reason: String,
        /// The ban file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
    /// Lift a ban.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The ban file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
    /// Show the bans in force (with --all, also those that have ended).
    List {
        /// Also bans that have ended.
        #[arg(long)]
        all: bool,
        /// The ban file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
}

/// A duration: seconds, or a number with `s`, `m`, `h` or `d`.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 3600, 90s, 10m, 2h, 7d)"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?}: the duration must be more than 0 and fit in 64 bits"))
}

fn load(path: &Path) -> Result<BanList, (u8, String)> {
    bulwark_server::bans::load(path).map_err(|e| (2, e))
}

fn save(path: &Path, list: &BanList) -> Result<(), (u8, String)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        files::ensure_dir(dir).map_err(|e| (2, e))?;
    }
    files::write_atomic(path, list.to_toml().as_bytes()).map_err(|e| (2, e))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A time in seconds since 1970 as RFC 3339 UTC, to the second (`2026-12-07T11:20:00Z`).
pub(crate) fn utc(secs: u64) -> String {
    let time = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(secs))
        .unwrap_or(std::time::UNIX_EPOCH);
    let text = bulwark_acl::event::rfc3339(time);
    // The event format carries milliseconds; the times shown here are whole seconds.
    match text.strip_suffix(".000Z") {
        Some(seconds) => format!("{seconds}Z"),
        None => text,
    }
}

/// A duration as the largest whole units that describe it (`2h`, `1d 3h`, `90s`).
fn human_duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut left = secs;
    let mut parts = Vec::new();
    for (size, unit) in units {
        let n = left / size;
        if n > 0 {
            parts.push(format!("{n}{unit}"));
            left %= size;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Runs `bulwark ban ...`.
pub(crate) fn run(args: BanArgs) -> ExitCode {
    let result = match args.command {
        BanCommand::Add {
            target,
            duration,
            reason,
            file,
        } => add(&target, duration.as_deref(), reason, &file),
        BanCommand::Remove { target, file } => remove(&target, &file),
        BanCommand::List { all, file } => list(all, &file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn add(
    target: &Target,
    duration: Option<&str>,
    reason: String,
    file: &Path,
) -> Result<(), (u8, String)> {
    let target = target.parse().map_err(|e| (2, e))?;
    let now = now();
    let expires = match duration {
        Some(d) => Some(now.saturating_add(parse_duration(d).map_err(|e| (2, e))?)),
        None => None,
    };
    let mut list = load(file)?;
    list.prune(now);
    let shown = target.to_string();
    list.add(Ban {
        target,
        expires,
        reason,
        created: now,
        by: "operator".to_owned(),
    })
    .map_err(|e| (1, e.to_string()))?;
    save(file, &list)?;
    match expires {
        Some(e) => println!(
            "banned {shown} for {} (until {})",
            human_duration(e - now),
            utc(e)
        ),
        None => println!("banned {shown} until removed"),
    }
    Ok(())
}

fn remove(target: &Target, file: &Path) -> Result<(), (u8, String)> {
    let target = target.parse().map_err(|e| (2, e))?;
    let mut list = load(file)?;
    if !list.remove(&target) {
        return Err((1, format!("no ban on {target} in {}", file.display())));
    }
    save(file, &list)?;
    println!("lifted the ban on {target}");
    Ok(())
}

fn list(all: bool, file: &Path) -> Result<(), (u8, String)> {
    let list = load(file)?;
    let now = now();
    let shown: Vec<&Ban> = list
        .bans()
        .iter()
        .filter(|b| all || b.active(now))
        .collect();
    if shown.is_empty() {
        println!("no bans");
    }
    for ban in shown {
        let until = match ban.expires {
            None => "until removed".to_owned(),
            Some(e) if e > now => format!("until {}, {} left", utc(e), human_duration(e - now)),
            Some(_) => "ended".to_owned(),
        };
        println!("{}  ({until}, by {})  {}", ban.target, ban.by, ban.reason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_durations_read_as_units() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_642_400), "2026-12-07T11:20:00Z");
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(90_061), "1d 1h 1m 1s");
        assert_eq!(human_duration(0), "0s");
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in ["", "0", "h", "5w", "-1", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
