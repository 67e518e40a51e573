//! The pgoutput fuzzer: `scripts/fuzz [--seed N] [--runs N] [--seconds N] [--corpus DIR]`.
//!
//! Runs on the stable toolchain, so it is not coverage-guided by compiler instrumentation:
//! it mutates cases with a structure-aware mutator (`mutate.rs`) from seeds made of the
//! captured fixtures, and keeps a mutant in its corpus when it produces an outcome (a
//! decoded message kind, a decoder error at a given message and field, a mapping outcome)
//! or an outcome count not seen before. Every input runs through `harness::run`, which
//! checks the decoder's and the mapping's invariants.
//!
//! The oracle: a panic (caught, minimised by dropping items, saved as a reproducer under
//! `--crashes`, then the run goes on), an input running longer than `--timeout-ms` (the
//! watchdog saves it and stops the run), and an input allocating more than a limit linear
//! in its size (the allocator refuses, the process aborts; the supervisor then replays the
//! same seed with every input written to disk first, and saves the one that kills it).
//!
//! Deterministic: a seed, the fixtures, the corpus directory and the saved reproducers fix
//! every input, whatever the speed of the machine (`--seconds` only decides where to stop).
//! Must not: run inputs on several threads, or touch anything but the corpus and crash
//! directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod mutate;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap::Cap;
use clap::Parser;

use harness::case::{fixture_cases, load_dir, Case};
use harness::run::{run, Label, Trace};
use mutate::Mutator;

#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// What one input may allocate at most: a fixed allowance plus this many bytes per input
/// byte. The decoder sizes what it allocates by the bytes that remain, so a decoded
/// message takes a small multiple of its size; more means a count was trusted.
const ALLOC_BASE: usize = 1 << 20;
const ALLOC_PER_INPUT_BYTE: usize = 64;

/// Exit codes.
const EXIT_CRASHES: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_HANG: u8 = 3;

/// The corpus keeps at most this many cases; beyond, a new one replaces a random one.
const MAX_CORPUS: usize = 8192;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "fuzz",
    about = "Fuzz the pgoutput decoder and the outbox mapping with structure-aware mutations \
             of the captured fixtures (stable Rust, deterministic per seed)."
)]
struct Args {
    /// Seed of every random choice; the same seed replays the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many inputs (default 100000 when --seconds is not given).
    #[arg(long)]
    runs: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Load the *.case files of DIR as extra seeds and save every new interesting case
    /// there.
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// Where reproducers of crashes are saved (one *.case file per distinct crash).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "tests/fixtures/fuzz/crashes"
    )]
    crashes: PathBuf,
    /// The captured pgoutput fixture sets the seeds are made from.
    #[arg(long, value_name = "DIR", default_value = "tests/fixtures/pgoutput")]
    fixtures: PathBuf,
    /// An input running longer than this is a hang.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    progress_seconds: u64,
    /// Print the histogram of outcomes at the end.
    #[arg(long)]
    histogram: bool,
    /// Internal: run the inputs in this process (the default process supervises one).
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: write every input to this file before running it (crash replay).
    #[arg(long, hide = true, value_name = "FILE")]
    trace_inputs: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.worker {
        return worker(args);
    }
    supervise(&args)
}

// ---- supervisor ---------------------------------------------------------------------------

/// Runs the worker; if it dies (an abort, an allocation over the limit, a stack
/// overflow), replays the same inputs with each one written to disk first, and saves the
/// one that kills it as a reproducer.
fn supervise(args: &Args) -> ExitCode {
    let status = match spawn_worker(None) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("fuzz: cannot start the worker: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_CRASHES));
    }
    eprintln!(
        "fuzz: the worker died ({status}); replaying the same inputs to find the one that \
         killed it"
    );
    if let Err(e) = std::fs::create_dir_all(&args.crashes) {
        eprintln!("fuzz: cannot create {}: {e}", args.crashes.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let in_flight = args.crashes.join(".in-flight");
    let replay = match spawn_worker(Some(&in_flight)) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("fuzz: cannot start the replay: {e}");
            return ExitCode::from(EXIT_CRASHES);
        }
    };
    if replay.code().is_some() {
        eprintln!("fuzz: the replay did not die ({replay}): the crash did not reproduce");
        return ExitCode::from(EXIT_CRASHES);
    }
    let saved = Case::load(&in_flight).and_then(|case| {
        let comment = format!(
            "the fuzzer process died ({replay}) on this input: an allocation over the \
             per-input limit, a stack overflow or an abort (seed {})",
            args.seed
        );
        save_case(&args.crashes, "died-", &case, &[comment])
    });
    let _ = std::fs::remove_file(&in_flight);
    match saved {
        Ok(path) => eprintln!("fuzz: reproducer saved to {}", path.display()),
        Err(e) => eprintln!("fuzz: could not save the reproducer: {e}"),
    }
    ExitCode::from(EXIT_CRASHES)
}

fn spawn_worker(trace: Option<&Path>) -> std::io::Result<std::process::ExitStatus> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).arg("--worker");
    if let Some(path) = trace {
        cmd.arg("--trace-inputs").arg(path);
    }
    cmd.status()
}

// ---- worker -------------------------------------------------------------------------------

/// The panic of the input being run: location and message, recorded by the panic hook.
#[derive(Debug, Clone, Default)]
struct PanicInfo {
    location: String,
    message: String,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<PanicInfo>> = const { std::cell::RefCell::new(None) };
}

/// Runs `case`; `Err` with the panic when it panics.
fn run_caught(case: &Case, trace: &mut Trace) -> Result<(), PanicInfo> {
    trace.labels.clear();
    let limit = ALLOCATOR.allocated()
        + ALLOC_BASE
        + ALLOC_PER_INPUT_BYTE * case.items.iter().map(|i| i.bytes().len()).sum::<usize>();
    let _ = ALLOCATOR.set_limit(limit);
    let result = catch_unwind(AssertUnwindSafe(|| run(case, trace)));
    let _ = ALLOCATOR.set_limit(usize::MAX);
    result.map_err(|_| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_default()
    })
}

fn worker(args: Args) -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(PanicInfo { location, message }));
    }));

    let fixtures = match fixture_cases(&args.fixtures) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            return usage(&format!(
                "no fixture sets under {}",
                args.fixtures.display()
            ))
        }
        Err(e) => return usage(&e),
    };
    let mut initial = mutate::seeds(&fixtures);
    for dir in args.corpus.iter().chain([&args.crashes]) {
        match load_dir(dir) {
            Ok(cases) => initial.extend(cases.into_iter().map(|(_, c)| c)),
            Err(e) => return usage(&e),
        }
    }
    if let Some(dir) = &args.corpus {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return usage(&format!("cannot create {}: {e}", dir.display()));
        }
    }
    let runs = match (args.runs, args.seconds) {
        (Some(r), _) => r,
        (None, Some(_)) => u64::MAX,
        (None, None) => 100_000,
    };
    let deadline = args.seconds.map(Duration::from_secs);

    // The watchdog: an input running past the timeout is saved and ends the run.
    let current: Arc<Mutex<Option<Case>>> = Arc::default();
    let started_ms = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    {
        let (current, started_ms) = (current.clone(), started_ms.clone());
        let (timeout, crashes, seed) = (args.timeout_ms, args.crashes.clone(), args.seed);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            let started = started_ms.load(Ordering::Acquire);
            let now = clock.elapsed().as_millis() as u64;
            if started == 0 || now.saturating_sub(started) <= timeout {
                continue;
            }
            eprintln!("fuzz: an input has run for more than {timeout} ms: a hang");
            if let Some(case) = current.lock().ok().and_then(|c| c.clone()) {
                let comment = format!("ran for more than {timeout} ms (seed {seed})");
                match save_case(&crashes, "hang-", &case, &[comment]) {
                    Ok(path) => eprintln!("fuzz: reproducer saved to {}", path.display()),
                    Err(e) => eprintln!("fuzz: could not save the reproducer: {e}"),
                }
            }
            std::process::exit(i32::from(EXIT_HANG));
        });
    }

    let trace_file = match &args.trace_inputs {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Some(file),
            Err(e) => return usage(&format!("cannot create {}: {e}", path.display())),
        },
        None => None,
    };
    let mut mutator = Mutator::new(args.seed);
    let mut corpus: Vec<Case> = Vec::new();
    let mut seen: HashSet<(Label, u8)> = HashSet::new();
    let mut histogram: HashMap<Label, u64> = HashMap::new();
    let mut crash_sites: HashMap<String, u64> = HashMap::new();
    let mut crashing_inputs = 0u64;
    let mut counts: HashMap<Label, u32> = HashMap::new();
    let mut trace = Trace::default();
    let mut next_progress = Duration::from_secs(args.progress_seconds);
    let mut done = 0u64;

    println!(
        "fuzz: seed {}, {} seed cases ({} fixture sets), runs {}, seconds {}",
        args.seed,
        initial.len(),
        fixtures.len(),
        args.runs.map_or("-".into(), |r| r.to_string()),
        args.seconds.map_or("-".into(), |s| s.to_string()),
    );
    while done < runs {
        if done % 256 == 0 {
            let elapsed = clock.elapsed();
            if deadline.is_some_and(|d| elapsed >= d) {
                break;
            }
            if elapsed >= next_progress {
                next_progress += Duration::from_secs(args.progress_seconds);
                println!(
                    "fuzz: #{done} {:.0}/s, corpus {}, outcomes {}, crashes {}",
                    done as f64 / elapsed.as_secs_f64(),
                    corpus.len(),
                    histogram.len(),
                    crash_sites.len()
                );
            }
        }
        let i = done as usize;
        let case = if i < initial.len() {
            initial[i].clone()
        } else if corpus.is_empty() {
            break;
        } else {
            let base = mutator.below(corpus.len());
            let donor = mutator.below(corpus.len());
            mutator.mutate(&corpus[base], &corpus[donor])
        };
        done += 1;
        if let Some(file) = &trace_file {
            // Rewritten in place, not re-created: the replay stays near full speed.
            let text = case.to_text(&[]);
            let _ = file.write_all_at(text.as_bytes(), 0);
            let _ = file.set_len(text.len() as u64);
        }
        *current.lock().unwrap() = Some(case.clone());
        started_ms.store(clock.elapsed().as_millis() as u64 + 1, Ordering::Release);
        let result = run_caught(&case, &mut trace);
        started_ms.store(0, Ordering::Release);
        match result {
            Ok(()) => {
                counts.clear();
                for label in &trace.labels {
                    *counts.entry(*label).or_default() += 1;
                    *histogram.entry(*label).or_default() += 1;
                }
                let mut new = false;
                for (label, n) in &counts {
                    new |= seen.insert((*label, bucket(*n)));
                }
                if new || i < initial.len() {
                    if new {
                        if let Some(dir) = &args.corpus {
                            let _ = save_case(dir, "", &case, &[]);
                        }
                    }
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(case);
                    } else {
                        let slot = mutator.below(corpus.len());
                        corpus[slot] = case;
                    }
                }
            }
            Err(panic) => {
                crashing_inputs += 1;
                let first = crash_sites.entry(panic.location.clone()).or_default();
                *first += 1;
                if *first == 1 {
                    let small = minimise(case, &panic.location, &mut trace);
                    let comment = vec![
                        format!("panicked at {}: {}", panic.location, panic.message),
                        format!("found by seed {} at input {}", args.seed, done),
                    ];
                    println!("fuzz: CRASH at {}: {}", panic.location, panic.message);
                    match save_case(&args.crashes, "", &small, &comment) {
                        Ok(path) => println!("fuzz: reproducer saved to {}", path.display()),
                        Err(e) => eprintln!("fuzz: could not save the reproducer: {e}"),
                    }
                }
            }
        }
    }
    let elapsed = clock.elapsed().as_secs_f64();

    if args.histogram {
        print_histogram(&histogram);
    }
    for (site, n) in &crash_sites {
        println!("fuzz: crash site {site}: {n} input(s)");
    }
    println!(
        "fuzz: {done} inputs in {elapsed:.1} s ({:.0}/s), seed {}, corpus {}, {} distinct \
         outcomes, {} crashes ({crashing_inputs} crashing inputs)",
        done as f64 / elapsed.max(1e-9),
        args.seed,
        corpus.len(),
        histogram.len(),
        crash_sites.len()
    );
    if crash_sites.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CRASHES)
    }
}

/// AFL-style count classes: a case that reaches an outcome more often than before is new.
fn bucket(n: u32) -> u8 {
    match n {
        0..=3 => n as u8,
        4..=7 => 4,
        8..=15 => 5,
        16..=31 => 6,
        _ => 7,
    }
}

/// Drops items one at a time while the case still panics at `location`.
fn minimise(mut case: Case, location: &str, trace: &mut Trace) -> Case {
    let mut i = case.items.len();
    while i > 0 {
        i -= 1;
        let mut smaller = case.clone();
        smaller.items.remove(i);
        if matches!(run_caught(&smaller, trace), Err(p) if p.location == location) {
            case = smaller;
        }
    }
    case
}

fn save_case(
    dir: &Path,
    prefix: &str,
    case: &Case,
    comments: &[String],
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{prefix}{}.case", case.name()));
    std::fs::write(&path, case.to_text(comments))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn print_histogram(histogram: &HashMap<Label, u64>) {
    let mut rows: Vec<_> = histogram.iter().collect();
    rows.sort();
    println!("fuzz: outcomes (label: times seen)");
    for (label, n) in rows {
        println!("  {label}: {n}");
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("fuzz: {message}");
    ExitCode::from(EXIT_USAGE)
}
