#![allow(clippy::unwrap_used)]

use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    dead: DeadArgs,
}

fn retry(args: &[&str]) -> Result<RetrySelection, &'static str> {
    let cli = Cli::try_parse_from(std::iter::once("dead").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    match cli.dead.command {
        DeadCommand::Retry(a) => retry_selection(&a),
        other => panic!("not retry: {other:?}"),
    }
}

#[test]
fn retry_needs_an_explicit_selection() {
    assert_eq!(
        retry(&["retry", "3", "4"]),
        Ok(RetrySelection::Ids(vec![3, 4]))
    );
    assert_eq!(
        retry(&["retry", "3", "--id", "5"]),
        Ok(RetrySelection::Ids(vec![3, 5]))
    );
    assert_eq!(retry(&["retry", "--all"]), Ok(RetrySelection::All));
    let Ok(RetrySelection::Matching(f)) = retry(&["retry", "--all-matching", "--event-type", "x"])
    else {
        panic!("expected a filter")
    };
    assert_eq!(f.event_type.as_deref(), Some("x"));
    let Ok(RetrySelection::Matching(f)) = retry(&["retry", "7", "--event-type", "x"]) else {
        panic!("expected ids within a filter")
    };
    assert_eq!(f.ids, Some(vec![7]));
    assert!(retry(&["retry"]).unwrap_err().contains("nothing selected"));
    assert!(retry(&["retry", "--event-type", "x"])
        .unwrap_err()
        .contains("--all-matching"));
    assert!(retry(&["retry", "--all-matching"])
        .unwrap_err()
        .contains("--all"));
}

#[test]
fn conflicting_retry_flags_are_usage_errors() {
    for args in [
        &["dead", "retry", "--all", "--event-type", "x"][..],
        &["dead", "retry", "--all", "3"],
        &["dead", "retry", "--all-matching", "3"],
        &["dead", "list", "--limit", "0"],
        &["dead", "list", "--since", "yesterday"],
    ] {
        let err = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn table_cells_are_flattened_and_cut() {
    assert_eq!(one_line("a\nb", 10), "a b");
    assert_eq!(one_line("abcdef", 4), "abc…");
    let mut out = Vec::new();
    write_table(
        &mut out,
        ["ID", "NAME"],
        &[["1".into(), "x".into()], ["100".into(), "yy".into()]],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "ID   NAME\n1    x\n100  yy\n"
    );
}
