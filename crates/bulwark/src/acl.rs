//! `bulwark acl`: check a decision, lint a rule file, import a Mosquitto `acl_file`.

use std::process::ExitCode;

/// Work with ACL files.
#[derive(Debug, clap::Args)]
pub(crate) struct AclArgs {}

pub(crate) fn run(_args: AclArgs) -> ExitCode {
    ExitCode::FAILURE
}
