//! `bulwark store`: look into and repair the durable store (`[storage] path`, by default
//! `bulwark-data/store.redb`) while the broker is stopped.
//!
//! Exit codes: 0 the store is intact (check) or was repaired (repair), 1 damage found
//! (check), 2 the store cannot be read at all (check) or the repair failed.

use std::path::PathBuf;
use std::process::ExitCode;

use bulwark_store::{DiskStore, StoreError};

/// Where the store lives unless `--path` says otherwise.
const DEFAULT_PATH: &str = "bulwark-data/store.redb";

/// Check or repair the durable store.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StoreCommand {
    /// Read every record back and verify every page's checksum; change nothing. Lists what
    /// the store holds and every damaged record by name.
    Check {
        /// The store file.
        #[arg(long, default_value = DEFAULT_PATH)]
        path: PathBuf,
    },
    /// Keep every record that reads back: they are copied to a new file that takes the
    /// store's place; the old file is kept beside it as NAME.damaged-UNIXTIME. Lists what
    /// could not be kept. A file that cannot be opened at all is moved aside the same way
    /// and replaced with an empty store.
    Repair {
        /// The store file.
        #[arg(long, default_value = DEFAULT_PATH)]
        path: PathBuf,
    },
}

pub(crate) fn run(args: StoreArgs) -> ExitCode {
    match args.command {
        StoreCommand::Check { path } => {
            if !path.is_file() {
                eprintln!("error: {}: no store there", path.display());
                return ExitCode::from(2);
            }
            match DiskStore::check_file(&path) {
                Ok(report) => {
                    println!("{report}");
                    if report.is_clean() {
                        ExitCode::SUCCESS
                    } else {
                        println!(
                            "the broker refuses to start on this store; `bulwark store repair --path {}` keeps what reads back",
                            path.display()
                        );
                        ExitCode::from(1)
                    }
                }
                Err(StoreError::Corrupt(why)) => {
                    println!("store {}\n  cannot be opened: {why}", path.display());
                    ExitCode::from(2)
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(2)
                }
            }
        }
        StoreCommand::Repair { path } => {
            if !path.is_file() {
                eprintln!("error: {}: no store there", path.display());
                return ExitCode::from(2);
            }
            match DiskStore::repair_file(&path) {
                Ok((report, None)) => {
                    println!("{report}");
                    println!("nothing to repair");
                    ExitCode::SUCCESS
                }
                Ok((report, Some(aside))) => {
                    println!("{report}");
                    println!(
                        "repaired: kept {} sessions, {} messages, {} QoS 2 identifiers, {} retained messages; lost the damaged records listed above{}",
                        report.sessions,
                        report.messages,
                        report.qos2,
                        report.retained,
                        if report.orphans > 0 {
                            format!(" and {} orphaned records", report.orphans)
                        } else {
                            String::new()
                        }
                    );
                    println!("the old file is kept as {}", aside.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
