//! The audit trail's verifier over whatever bytes a file may hold (hand-edited, cut,
//! damaged, crafted): it must never panic, whatever it finds. The input is up to three
//! segments and a file of exported records, separated by 0xFF bytes (which UTF-8 never
//! holds, so a separator never lands inside a record the seeds spell out). Each is verified
//! with the fixture key trusted and without a trusted key, and every line is also fed to the
//! record parser and to the writer's resume on its own.
#![no_main]

use std::sync::LazyLock;

use bulwark_audit::{AuditKey, Chain, Hash, Head, PublicKey, Segment, Verifier};
use libfuzzer_sys::fuzz_target;

/// The fixture key that signed the seeds' checkpoints (`fuzz/seeds/audit_verify`). Its
/// private half is here so that seeds can be made again; it signs nothing else.
const FIXTURE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBbLld6b5Kc15+UUCQDGwn4cACMW23I4Biz11SgrfVNh
-----END PRIVATE KEY-----
";

static TRUSTED: LazyLock<Option<PublicKey>> =
    LazyLock::new(|| AuditKey::from_pem(FIXTURE_KEY).ok().map(|key| key.public()));

const NAMES: [&str; 3] = ["audit-1.log", "audit-2.log", "audit-3.log"];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0xFF);
    let segments: Vec<Segment<'_>> = NAMES
        .iter()
        .zip(parts.by_ref())
        .map(|(name, bytes)| Segment { name, bytes })
        .collect();
    let anchor = parts.next();

    for part in segments.iter().map(|s| s.bytes).chain(anchor) {
        for line in part.split(|b| *b == b'\n') {
            if let Ok(head) = Head::parse(line) {
                assert_eq!(
                    head.prev_hash().hex(),
                    head.prev,
                    "prev reads back as written"
                );
                assert_eq!(Hash::parse(&head.prev), Some(head.prev_hash()));
                let _ = head.is_checkpoint();
            }
            let _ = Chain::resume(line, 7).next_seq();
        }
    }

    let mut verifiers = vec![Verifier::new()];
    if let Some(key) = *TRUSTED {
        verifiers.push(Verifier::new().trust(key));
    }
    for verifier in verifiers {
        let verifier = match anchor {
            Some(bytes) => verifier.anchor("exported.log", bytes.to_vec()),
            None => verifier,
        };
        let report = verifier.verify(&segments);
        let tampering = report
            .findings
            .iter()
            .any(|f| f.severity == bulwark_audit::Severity::Tampering);
        assert_eq!(report.tampered(), tampering);
        // Whatever the findings say, they print.
        for finding in &report.findings {
            let _ = finding.to_string();
            let _ = finding.kind.as_str();
        }
    }
});
