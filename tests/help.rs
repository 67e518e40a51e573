//! `dispatchbox run --help` lists every `DISPATCHBOX_*` variable with its default, and the
//! README's Configuration table documents the same variables with the same defaults: the
//! help is generated from the one table in `src/config/variables.rs`, and this test keeps
//! the README beside it.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use support::relay::run_to_end;

/// `name → default` from the README's Configuration table (the default cell as written,
/// e.g. `` `30s` `` or `(required)` or empty).
fn readme_variables() -> BTreeMap<String, String> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("a Configuration section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| `DISPATCHBOX_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // The first name of the cell (a family row lists its other suffixes after it).
            let name = cells[1].split('`').nth(1).unwrap_or(cells[1]);
            (name.to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// `name → default` from `dispatchbox run --help` (`[default: x]`, `[required…]`,
/// `[unset: …]`, or nothing).
fn help_variables() -> BTreeMap<String, Option<String>> {
    let (status, stdout, stderr) = run_to_end(&["run", "--help"], &[]);
    assert!(status.success(), "{stdout}{stderr}");
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("  DISPATCHBOX_"))
        .map(|rest| {
            let (name, default) = match rest.split_once(" [") {
                Some((name, default)) => (name, Some(default.trim_end_matches(']'))),
                None => (rest.trim(), None),
            };
            (format!("DISPATCHBOX_{name}"), default.map(str::to_owned))
        })
        .collect()
}

#[test]
fn run_help_and_the_readme_list_the_same_variables_and_defaults() {
    let readme = readme_variables();
    let help = help_variables();
    assert!(help.len() >= 35, "too few variables in --help: {help:?}");
    let only_readme: Vec<_> = readme.keys().filter(|k| !help.contains_key(*k)).collect();
    let only_help: Vec<_> = help.keys().filter(|k| !readme.contains_key(*k)).collect();
    assert!(
        only_readme.is_empty() && only_help.is_empty(),
        "documented in the README only: {only_readme:?}; listed by --help only: {only_help:?}"
    );
    for (name, default) in &help {
        let documented = &readme[name];
        match default.as_deref().and_then(|d| d.strip_prefix("default: ")) {
            // A value envconfig applies: the README shows exactly it.
            Some(value) => assert_eq!(documented, &format!("`{value}`"), "{name}"),
            // No value: the README must not claim one.
            None => assert!(
                !(documented.starts_with('`')
                    && documented.ends_with('`')
                    && documented.matches('`').count() == 2),
                "{name}: the README says {documented} but it has no default value"
            ),
        }
    }
}

#[test]
fn help_prints_no_values_from_the_environment() {
    let env = [(
        "DISPATCHBOX_DATABASE_URL".to_owned(),
        "postgres://relay:s3cret@db/app".to_owned(),
    )];
    let (status, stdout, stderr) = run_to_end(&["run", "--help"], &env);
    assert!(status.success(), "{stderr}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}
