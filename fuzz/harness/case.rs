//! A fuzz case: what one replication connection could receive, and its text file format.
//!
//! A case is the negotiated protocol (version, parallel streaming), the outbox table the
//! mapper looks for, and a sequence of items fed to one decoder and one mapper in order.
//! Reproducers (`tests/fixtures/fuzz/crashes/`) and corpus files are stored as text so they
//! can be read, diffed and edited by hand:
//!
//! ```text
//! # dispatchbox fuzz case v1
//! # free comment lines (why it was saved, the seed and input number)
//! proto 1                       protocol_version in START_REPLICATION (may be out of 1..=4)
//! parallel 0                    1: streaming 'parallel' was requested
//! table public outbox_event     the configured outbox table (namespace, name)
//! msg 42000000...               a pgoutput message, handed to the decoder as is (hex)
//! copy 77000000...              a CopyData payload of the stream ('w' XLogData, 'k', …) (hex)
//! over 70000 7700...            a CopyData payload of 70000 bytes of which only these first
//!                               bytes were kept (the oversized-message path) (hex)
//! ```
//!
//! Every item line is one item, in order; blank lines are ignored.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use dispatchbox::source::relation::OutboxTable;
use sha2::{Digest, Sha256};

/// The first line of every case file.
pub const HEADER: &str = "# dispatchbox fuzz case v1";

/// What one replication connection receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// `proto_version` of START_REPLICATION; the decoder must refuse anything but 1..=4.
    pub protocol_version: u32,
    /// `streaming 'parallel'` was requested.
    pub streaming_parallel: bool,
    /// The outbox table the mapper validates and maps.
    pub table: OutboxTable,
    /// What arrives, in order.
    pub items: Vec<Item>,
}

/// One thing the stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A pgoutput message (an XLogData payload after its header).
    Message(Bytes),
    /// A whole CopyData payload: parsed as a replication message first.
    CopyData(Bytes),
    /// A CopyData payload of `len` bytes above the maximum message size, of which only
    /// `prefix` was kept.
    Oversized { len: usize, prefix: Bytes },
}

impl Item {
    /// The bytes the item carries.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Item::Message(b) | Item::CopyData(b) => b,
            Item::Oversized { prefix, .. } => prefix,
        }
    }
}

impl Case {
    /// The case as a file: [`HEADER`], `comments` as `#` lines, then the case.
    pub fn to_text(&self, comments: &[String]) -> String {
        let mut out = format!("{HEADER}\n");
        for c in comments {
            for line in c.lines() {
                let _ = writeln!(out, "# {line}");
            }
        }
        out.push_str(&self.body());
        out
    }

    /// The case without comments: what its name is derived from.
    fn body(&self) -> String {
        let mut out = format!(
            "proto {}\nparallel {}\ntable {} {}\n",
            self.protocol_version,
            u8::from(self.streaming_parallel),
            self.table.namespace,
            self.table.name
        );
        for item in &self.items {
            match item {
                Item::Message(b) => {
                    let _ = writeln!(out, "msg {}", hex(b));
                }
                Item::CopyData(b) => {
                    let _ = writeln!(out, "copy {}", hex(b));
                }
                Item::Oversized { len, prefix } => {
                    let _ = writeln!(out, "over {len} {}", hex(prefix));
                }
            }
        }
        out
    }

    /// A stable name: the first 16 hex digits of the SHA-256 of the case (comments left
    /// out), so the same case saved twice is one file.
    pub fn name(&self) -> String {
        let digest = Sha256::digest(self.body().as_bytes());
        hex(&digest[..8])
    }

    /// Reads a case file's text.
    pub fn parse(text: &str) -> Result<Case, String> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err(format!("the first line must be {HEADER:?}")),
        }
        let mut protocol_version = None;
        let mut streaming_parallel = None;
        let mut table = None;
        let mut items = Vec::new();
        for (n, line) in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            let mut words = line.split_whitespace();
            let key = words.next().unwrap_or_default();
            let args: Vec<&str> = words.collect();
            match (key, args.as_slice()) {
                ("proto", [v]) => {
                    protocol_version = Some(v.parse().map_err(|_| err("bad version"))?)
                }
                ("parallel", [v]) => {
                    streaming_parallel = Some(match *v {
                        "0" => false,
                        "1" => true,
                        _ => return Err(err("parallel is 0 or 1")),
                    })
                }
                ("table", [ns, name]) => table = Some(OutboxTable::new(*ns, *name)),
                ("msg", [h]) => items.push(Item::Message(unhex(h).ok_or_else(|| err("bad hex"))?)),
                ("msg", []) => items.push(Item::Message(Bytes::new())),
                ("copy", [h]) => {
                    items.push(Item::CopyData(unhex(h).ok_or_else(|| err("bad hex"))?))
                }
                ("copy", []) => items.push(Item::CopyData(Bytes::new())),
                ("over", [len, rest @ ..]) if rest.len() <= 1 => items.push(Item::Oversized {
                    len: len.parse().map_err(|_| err("bad length"))?,
                    prefix: match rest {
                        [h] => unhex(h).ok_or_else(|| err("bad hex"))?,
                        _ => Bytes::new(),
                    },
                }),
                _ => return Err(err("unknown line")),
            }
        }
        Ok(Case {
            protocol_version: protocol_version.ok_or("missing `proto` line")?,
            streaming_parallel: streaming_parallel.ok_or("missing `parallel` line")?,
            table: table.ok_or("missing `table` line")?,
            items,
        })
    }

    /// Reads a case file.
    pub fn load(path: &Path) -> Result<Case, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Case::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Every `*.case` file of `dir`, sorted by name; none when the directory does not exist.
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Case)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Case::load(&p).map(|c| (name, c))
        })
        .collect()
}

/// The captured fixture sets of `tests/fixtures/pgoutput` under `root`, one case per set
/// (every message in stream order, with the protocol options of its `manifest.txt`),
/// sorted by set name.
pub fn fixture_cases(root: &Path) -> Result<Vec<(String, Case)>, String> {
    let read = |p: &Path| std::fs::read_dir(p).map_err(|e| format!("read {}: {e}", p.display()));
    let mut sets: Vec<_> = read(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    let mut out = Vec::new();
    for dir in sets {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = std::fs::read_to_string(dir.join("manifest.txt"))
            .map_err(|e| format!("read manifest of fixture set {name}: {e}"))?;
        let option = |key: &str| {
            manifest
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let protocol_version = option("proto_version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("fixture set {name}: no proto_version in its manifest"))?;
        let mut files: Vec<_> = read(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        files.sort();
        let items = files
            .iter()
            .map(|p| {
                std::fs::read(p)
                    .map(|b| Item::Message(Bytes::from(b)))
                    .map_err(|e| format!("read {}: {e}", p.display()))
            })
            .collect::<Result<_, _>>()?;
        out.push((
            name,
            Case {
                protocol_version,
                streaming_parallel: option("streaming").as_deref() == Some("parallel"),
                table: OutboxTable::new("public", "outbox_event"),
                items,
            },
        ));
    }
    Ok(out)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Bytes> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}
