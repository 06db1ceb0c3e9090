//! The ACL file in the server: read at start (a broker never starts with rules it cannot
//! read), watched for changes with the other files, and handed to the engine whole. A file
//! that no longer parses keeps the rules in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bulwark_acl::AclRules;
use bulwark_acl::event::SecurityEvent;
use bulwark_core::AuthzEvent;
use tracing::{info, warn};

/// Largest ACL file read, in bytes.
pub const MAX_ACL_FILE_BYTES: u64 = 64 << 20;

/// Reads and compiles the ACL file at `path`.
pub fn load(path: &Path) -> Result<AclRules, String> {
    crate::files::warn_if_open(path, "ACL file");
    let text = crate::files::read_text(path, "the ACL file", MAX_ACL_FILE_BYTES)?;
    AclRules::parse(&text, &path.display().to_string()).map_err(|err| err.to_string())
}

/// The ACL file and the modification time of the version in force.
#[derive(Debug)]
pub(crate) struct AclFile {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl AclFile {
    /// Loads the file for the first time.
    pub(crate) fn open(path: &Path) -> Result<(Self, Arc<AclRules>), String> {
        let seen = mtime(path);
        let rules = load(path)?;
        info!(file = %path.display(), rules = rules.rules().len(), "ACL loaded");
        Ok((
            Self {
                path: path.to_path_buf(),
                seen,
            },
            Arc::new(rules),
        ))
    }

    /// The new rules if the file changed (or `forced`) and still parses; `None` otherwise.
    /// A file that fails keeps the old rules, and says why once per change.
    pub(crate) fn reload(
        &mut self,
        forced: bool,
        audit: &crate::audit::Audit,
    ) -> Option<Arc<AclRules>> {
        let now = mtime(&self.path);
        if !forced && now == self.seen {
            return None;
        }
        self.seen = now;
        match load(&self.path) {
            Ok(rules) => {
                info!(file = %self.path.display(), rules = rules.rules().len(), "ACL reloaded");
                let done = format!("reloaded: {} rules", rules.rules().len());
                audit.record(crate::audit::reload_event("acl", &self.path, Ok(done)));
                Some(Arc::new(rules))
            }
            Err(err) => {
                warn!(file = %self.path.display(), %err, "ACL reload failed; the rules in force stay");
                audit.record(crate::audit::reload_event(
                    "acl",
                    &self.path,
                    Err(err.to_string()),
                ));
                None
            }
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The audit record of an engine authorization event.
pub(crate) fn to_security_event(event: AuthzEvent, at: SystemTime) -> SecurityEvent {
    let mut out = SecurityEvent::new(event.kind, at);
    out.listener = event.principal.listener.as_deref().map(str::to_owned);
    out.remote = event.principal.address.map(|a| a.to_string());
    out.client_id = Some(event.client_id.to_string());
    out.username = event.principal.username.as_deref().map(str::to_owned);
    out.action = Some(event.action.to_owned());
    out.topic = (!event.topic.is_empty()).then(|| event.topic.into_string());
    out.reason = Some(event.reason);
    out
}
