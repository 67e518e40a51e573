//! Replays what the fuzzer (`scripts/fuzz`, `fuzz/main.rs`) checks, without randomness:
//! every saved crash reproducer in `tests/fixtures/fuzz/crashes/` and every captured
//! fixture set of `tests/fixtures/pgoutput/` runs through the fuzz harness
//! (`fuzz/harness/`: stateful decoder, relation cache and outbox mapping, the
//! oversized-message path) with all its invariants, and must not panic. A reproducer is
//! kept here after its bug is fixed, so the bug stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The harness is shared with the fuzz command; not all of it is used here.
#[allow(dead_code)]
#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::Path;

use harness::case::{fixture_cases, load_dir, Case};
use harness::run::{run, Trace};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn saved_crash_reproducers_no_longer_panic() {
    let cases = load_dir(&root().join("tests/fixtures/fuzz/crashes")).unwrap();
    for (name, case) in &cases {
        let mut trace = Trace::default();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(case, &mut trace)));
        assert!(result.is_ok(), "reproducer {name} panics again");
        // A saved case reads back as itself.
        assert_eq!(Case::parse(&case.to_text(&[])).as_ref(), Ok(case), "{name}");
    }
}

#[test]
fn fixture_sets_hold_every_invariant() {
    let sets = fixture_cases(&root().join("tests/fixtures/pgoutput")).unwrap();
    assert_eq!(sets.len(), 5, "every fixture set is replayed");
    for (name, case) in &sets {
        let mut trace = Trace::default();
        run(case, &mut trace);
        let decoded = trace.labels.iter().filter(|l| l.0 == "decode").count();
        assert_eq!(decoded, case.items.len(), "{name}: every message decodes");
        assert!(
            !trace.labels.iter().any(|l| l.0.ends_with("-err")),
            "{name}: {:?}",
            trace.labels
        );
    }
}

#[test]
fn case_files_round_trip() {
    let sets = fixture_cases(&root().join("tests/fixtures/pgoutput")).unwrap();
    let (_, case) = &sets[0];
    let text = case.to_text(&["a comment".into()]);
    assert!(text.starts_with(harness::case::HEADER));
    assert_eq!(Case::parse(&text).as_ref(), Ok(case));
    assert!(Case::parse("proto 1").is_err());
}
