//! Shared fixtures for the integration tests: real PostgreSQL clusters (and, later, a real
//! Kafka-protocol broker and HTTP receivers).
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub mod kafka;
pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod relay;
pub mod server;
pub mod store;
pub mod webhook;

/// Event payloads of varied JSON shapes (object with non-ASCII text and nesting, array,
/// string, number) by `id`, so that a sink test's byte equality means something.
pub fn varied_payload(id: i64) -> String {
    match id % 4 {
        0 => format!(r#"{{"n": {id}, "name": "grüße 🚀", "nested": {{"list": [1, 2.5, null]}}}}"#),
        1 => format!(r#"[{id}, "x", true]"#),
        2 => format!(r#""string payload {id}""#),
        _ => id.to_string(),
    }
}

/// The Debian server binary `name` for the tests: `$variable` when set (it must be a file),
/// else the first `name` on `PATH` or in `/usr/sbin`, `/usr/bin`. Panics with the install
/// hint when there is none: tests never skip for a missing server.
pub fn find_server(variable: &str, name: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Ok(path) = std::env::var(variable) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{variable}={} is not a file; run scripts/install-test-deps",
            path.display()
        );
        return path;
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.push(PathBuf::from("/usr/sbin").join(name));
    candidates.push(PathBuf::from("/usr/bin").join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found ({variable}, PATH, /usr/sbin, /usr/bin); run \
                 scripts/install-test-deps (apt-get install {name})"
            )
        })
}
