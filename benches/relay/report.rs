//! The summary: every number beside its floor from the same run, and the goals of issue 8
//! checked against them (the goals are printed, never asserted).
//!
//! With `--repeat N` every measurement ran N times, interleaved; a ratio is computed within
//! each repetition (relay and floor measured minutes apart, not hours) and the summary shows
//! its median with the spread `[min–max]`. Goals are checked against medians.

use crate::poller::Commit;
use crate::{Args, ConsumerKind, Drain, SinkKind, SteadyRun};

const RSS_GOAL_MIB: f64 = 64.0;
const DRAIN_GOAL_KAFKA: f64 = 0.70;
const DRAIN_GOAL_STDOUT: f64 = 0.85;
const COST_GOAL_FLOOR: f64 = 1.5;
const COST_GOAL_POLLING: f64 = 0.5;
const WEBHOOK_P99_GOAL_MS: f64 = 5.0;
const KAFKA_ACK_P99_GOAL_MS: f64 = 25.0;

/// Goals met and missed, in the order they were checked.
#[derive(Default)]
struct Goals(Vec<(String, bool)>);

impl Goals {
    fn check(&mut self, what: String, met: bool) -> &'static str {
        self.0.push((what, met));
        if met {
            "ok"
        } else {
            "MISSED"
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn per_event_us(seconds: f64, events: usize) -> f64 {
    seconds * 1e6 / events.max(1) as f64
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median, minimum and maximum of `values` (NaN when empty).
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// `1.23 [1.10–1.40]` (just the value for a single measurement).
    fn show(&self, decimals: usize) -> String {
        if self.n <= 1 {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} [{:.*}–{:.*}]",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model})")
}

pub fn print(args: &Args, drains: &[Drain], runs: &[SteadyRun], tansu: &str) {
    let mut goals = Goals::default();
    let rule = "=".repeat(100);
    let overrides = if args.relay_env.is_empty() {
        "none".to_owned()
    } else {
        args.relay_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!();
    println!("{rule}");
    println!("dispatchbox relay benchmark");
    println!("{rule}");
    println!("machine   {}", machine());
    println!(
        "setup     PostgreSQL 15 (fsync=off, synchronous_commit=on, full_page_writes=on), {tansu} \
         (in memory),"
    );
    println!(
        "          3 topics x 3 partitions; database, broker, relay and bench share the machine"
    );
    println!(
        "relay     release build, defaults except DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT=60s; \
         overrides: {overrides}"
    );
    println!(
        "CPU       server processes by pid from /proc/<pid>/schedstat; 'DB' counts only the \
         consumer's own walsender and backends"
    );
    println!(
        "repeats   {} (medians shown; [min–max] over the repetitions)",
        args.repeat.max(1)
    );

    if !drains.is_empty() {
        print_drains(args, drains, &mut goals);
    }
    if !runs.is_empty() {
        print_steady(args, runs, &mut goals);
        print_latency(args, runs, &mut goals);
        print_memory(args, runs, &mut goals);
    }

    println!();
    let missed: Vec<&(String, bool)> = goals.0.iter().filter(|(_, met)| !met).collect();
    println!(
        "GOALS   {} of {} met{}",
        goals.0.len() - missed.len(),
        goals.0.len(),
        if missed.is_empty() { "" } else { "; missed:" }
    );
    for (what, _) in missed {
        println!("        - {what}");
    }
    println!("{rule}");
}

fn print_drains(args: &Args, drains: &[Drain], goals: &mut Goals) {
    println!();
    println!(
        "DRAIN  {} events queued in {}-row transactions ({} aggregates), then read from the \
         same WAL",
        args.drain_events, args.drain_tx_rows, args.drain_aggregates
    );
    println!(
        "       floor = pg_recvlogical, start → last event received; relay = start → every \
         row's status written"
    );
    println!(
        "  {:<8} {:>10} {:>10} {:>20}  {:<10} {:>10} {:>16} {:>10}",
        "sink",
        "floor ev/s",
        "relay ev/s",
        "ratio",
        "goal",
        "relay CPU",
        "DB µs/ev flr|rly",
        "peak RSS"
    );
    let mut sinks: Vec<SinkKind> = drains.iter().map(|d| d.sink).collect();
    sinks.dedup();
    sinks.sort_by_key(|s| s.name());
    sinks.dedup();
    for sink in sinks {
        let of: Vec<&Drain> = drains.iter().filter(|d| d.sink == sink).collect();
        let rate = |events: u32, seconds: f64| f64::from(events) / seconds;
        let floor = Spread::of(of.iter().map(|d| rate(d.events, d.floor_seconds)));
        let relay = Spread::of(of.iter().map(|d| rate(d.events, d.relay_seconds)));
        let ratio = Spread::of(
            of.iter()
                .map(|d| rate(d.events, d.relay_seconds) / rate(d.events, d.floor_seconds)),
        );
        let goal = match sink {
            SinkKind::Kafka => DRAIN_GOAL_KAFKA,
            _ => DRAIN_GOAL_STDOUT,
        };
        let verdict = goals.check(
            format!(
                "drain with {} ≥ {goal:.2} × floor ({})",
                sink.name(),
                ratio.show(2)
            ),
            ratio.median >= goal,
        );
        let peak = of.iter().map(|d| d.peak_rss_kib).max().unwrap_or(0);
        println!(
            "  {:<8} {:>10.0} {:>10.0} {:>20}  {:<10} {:>9.2}c {:>7.1} |{:>7.1} {:>6.1} MiB",
            sink.name(),
            floor.median,
            relay.median,
            ratio.show(2),
            format!("≥ {goal:.2} {verdict}"),
            Spread::of(of.iter().map(|d| d.relay_cpu / d.relay_seconds)).median,
            Spread::of(
                of.iter()
                    .map(|d| per_event_us(d.floor_server.consumer(), d.events as usize))
            )
            .median,
            Spread::of(
                of.iter()
                    .map(|d| per_event_us(d.relay_server.consumer(), d.events as usize))
            )
            .median,
            mib(peak),
        );
        goals.check(
            format!(
                "peak RSS in the {} drain ≤ {RSS_GOAL_MIB} MiB ({:.1})",
                sink.name(),
                mib(peak)
            ),
            mib(peak) <= RSS_GOAL_MIB,
        );
        let n = |d: &Drain| d.events as usize;
        println!(
            "           per event: relay {} µs CPU; its walsender {} + backends {} µs \
             (floor's walsender {}); broker {} µs; bench {} µs",
            Spread::of(of.iter().map(|d| per_event_us(d.relay_cpu, n(d)))).show(1),
            Spread::of(
                of.iter()
                    .map(|d| per_event_us(d.relay_server.walsender, n(d)))
            )
            .show(1),
            Spread::of(
                of.iter()
                    .map(|d| per_event_us(d.relay_server.backends, n(d)))
            )
            .show(1),
            Spread::of(
                of.iter()
                    .map(|d| per_event_us(d.floor_server.walsender, n(d)))
            )
            .show(1),
            Spread::of(of.iter().map(|d| per_event_us(d.broker_cpu, n(d)))).show(1),
            Spread::of(of.iter().map(|d| per_event_us(d.bench_cpu, n(d)))).show(1),
        );
        println!(
            "           the relay's statements: {} calls, {} WAL B/event",
            Spread::of(of.iter().map(|d| d.statements.calls as f64)).show(0),
            Spread::of(
                of.iter()
                    .map(|d| d.statements.wal_bytes as f64 / f64::from(d.events))
            )
            .show(0),
        );
        if args.statements {
            if let Some(last) = of.last() {
                for (query, calls, ms, rows, wal) in &last.statements.top {
                    println!(
                        "    {calls:>7} calls {ms:>9.1} ms {rows:>8} rows {wal:>10} WAL B  {query}"
                    );
                }
            }
        }
    }
}

/// `runs` grouped by consumer, in the order the consumers first ran.
fn by_consumer<'a>(runs: &[&'a SteadyRun]) -> Vec<(ConsumerKind, Vec<&'a SteadyRun>)> {
    let mut groups: Vec<(ConsumerKind, Vec<&SteadyRun>)> = Vec::new();
    for &run in runs {
        match groups.iter_mut().find(|(kind, _)| *kind == run.consumer) {
            Some((_, of)) => of.push(run),
            None => groups.push((run.consumer, vec![run])),
        }
    }
    groups
}

fn print_steady(args: &Args, runs: &[SteadyRun], goals: &mut Goals) {
    println!();
    println!(
        "STEADY  {}-row transactions, {} aggregates, {} s of load per run; each run its own \
         fresh database; per event",
        args.tx_rows, args.aggregates, args.seconds
    );
    println!(
        "        DB = consumer's walsender + backends (µs); WAL = all WAL written in the \
         window (B), + over inserts only; own = the consumer's statements"
    );
    println!(
        "  {:>5}  {:<15} {:>7} {:>20} {:>12} {:>9} {:>13} {:>6} {:>6} {:>5}",
        "rate",
        "consumer",
        "events",
        "DB µs",
        "(wals+bknd)",
        "relay µs",
        "WAL B (+base)",
        "own B",
        "stmts",
        "bg µs"
    );
    let mut rates: Vec<u32> = runs.iter().map(|r| r.rate).collect();
    rates.sort_unstable();
    rates.dedup();
    for rate in rates {
        let at_rate: Vec<&SteadyRun> = runs.iter().filter(|r| r.rate == rate).collect();
        let wal_per_event = |r: &SteadyRun| r.wal_bytes as f64 / r.events as f64;
        let baseline_wal = Spread::of(
            at_rate
                .iter()
                .filter(|r| r.consumer == ConsumerKind::Baseline)
                .map(|r| wal_per_event(r)),
        );
        for (kind, of) in by_consumer(&at_rate) {
            let db = Spread::of(
                of.iter()
                    .map(|r| per_event_us(r.server.consumer(), r.events)),
            );
            let med = |f: &dyn Fn(&SteadyRun) -> f64| Spread::of(of.iter().map(|r| f(r))).median;
            let wal = med(&wal_per_event);
            let extra = if kind == ConsumerKind::Baseline || !baseline_wal.median.is_finite() {
                String::new()
            } else {
                format!("({:+.0})", wal - baseline_wal.median)
            };
            let (db, split) = if kind == ConsumerKind::Baseline {
                ("-".to_owned(), String::new())
            } else {
                (
                    db.show(0),
                    format!(
                        "({:.0}+{:.0})",
                        med(&|r| per_event_us(r.server.walsender, r.events)),
                        med(&|r| per_event_us(r.server.backends, r.events))
                    ),
                )
            };
            let relay_cpu = Spread::of(
                of.iter()
                    .filter_map(|r| Some(per_event_us(r.relay_cpu?, r.events))),
            );
            println!(
                "  {:>5}  {:<15} {:>7.0} {:>20} {:>12} {:>9} {:>5.0} {:>7} {:>6.0} {:>6.2} {:>5.0}",
                rate,
                kind.label(),
                med(&|r| r.events as f64),
                db,
                split,
                if relay_cpu.n == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.0}", relay_cpu.median)
                },
                wal,
                extra,
                med(&|r| r.statements.wal_bytes as f64 / r.events as f64),
                med(&|r| r.statements.calls as f64 / r.events as f64),
                med(&|r| per_event_us(r.server.background, r.events)),
            );
            let short = of
                .iter()
                .filter(|r| r.achieved_rate < 0.95 * f64::from(rate))
                .count();
            if short > 0 {
                println!(
                    "         (the load reached only {:.0} events/s in {short} of {} runs)",
                    med(&|r| r.achieved_rate),
                    of.len()
                );
            }
        }
        // Ratios within each repetition.
        let cost_in = |round: u32, kind: ConsumerKind| {
            at_rate
                .iter()
                .find(|r| r.round == round && r.consumer == kind)
                .map(|r| r.server.consumer() / r.events as f64)
        };
        let ratio = |other: ConsumerKind| {
            Spread::of(at_rate.iter().filter_map(|r| {
                if r.consumer != ConsumerKind::Relay(SinkKind::Kafka) {
                    return None;
                }
                Some(
                    cost_in(r.round, ConsumerKind::Relay(SinkKind::Kafka))?
                        / cost_in(r.round, other)?,
                )
            }))
        };
        let mut line = String::from("         ");
        for (name, other, goal) in [
            ("floor", ConsumerKind::Floor, COST_GOAL_FLOOR),
            (
                "polling",
                ConsumerKind::Polling(Commit::PerRound),
                COST_GOAL_POLLING,
            ),
        ] {
            let ratio = ratio(other);
            if ratio.n == 0 {
                continue;
            }
            let verdict = goals.check(
                format!(
                    "{rate}/s: relay DB cost ≤ {goal} × {name} ({})",
                    ratio.show(2)
                ),
                ratio.median <= goal,
            );
            line.push_str(&format!(
                "relay/{name} {} (≤ {goal:.2} {verdict})   ",
                ratio.show(2)
            ));
        }
        let per_event = ratio(ConsumerKind::Polling(Commit::PerEvent));
        if per_event.n > 0 {
            line.push_str(&format!("relay/polling(c/ev) {}", per_event.show(2)));
        }
        if !line.trim().is_empty() {
            println!("{line}");
        }
    }
    if args.statements {
        println!();
        println!(
            "  where the consumers' database time goes (pg_stat_statements, top 6, last run):"
        );
        let mut seen: Vec<(u32, ConsumerKind)> = Vec::new();
        for r in runs.iter().rev().filter(|r| !r.statements.top.is_empty()) {
            if seen.contains(&(r.rate, r.consumer)) {
                continue;
            }
            seen.push((r.rate, r.consumer));
            println!("  {} events/s, {}:", r.rate, r.consumer.label());
            for (query, calls, ms, rows, wal) in &r.statements.top {
                println!(
                    "    {calls:>7} calls {ms:>9.1} ms {rows:>8} rows {wal:>10} WAL B  {query}"
                );
            }
        }
    }
}

fn print_latency(args: &Args, runs: &[SteadyRun], goals: &mut Goals) {
    let at_rate: Vec<&SteadyRun> = runs
        .iter()
        .filter(|r| r.rate == args.latency_rate && !r.latency_ms.is_empty())
        .collect();
    if at_rate.is_empty() {
        return;
    }
    println!();
    println!(
        "LATENCY  at {} events/s: commit returned to the application → event received, ms",
        args.latency_rate
    );
    println!(
        "  {:<15} {:>7} {:>7} {:>7} {:>7} {:>7}  {:>22}  lost/twice",
        "consumer", "p50", "p90", "p99", "max", "events", "p99 − floor p99"
    );
    let floor_p99 = |round: u32| {
        at_rate
            .iter()
            .find(|r| r.round == round && r.consumer == ConsumerKind::Floor)
            .map(|r| percentile(&r.latency_ms, 0.99))
    };
    for (kind, of) in by_consumer(&at_rate) {
        let q = |p: f64| Spread::of(of.iter().map(|r| percentile(&r.latency_ms, p))).median;
        let over = Spread::of(
            of.iter()
                .filter_map(|r| Some(percentile(&r.latency_ms, 0.99) - floor_p99(r.round)?)),
        );
        let over_text = match kind {
            ConsumerKind::Relay(sink) if over.n > 0 => {
                let note = if sink == SinkKind::Webhook {
                    let verdict = goals.check(
                        format!(
                            "webhook p99 ≤ floor p99 + {WEBHOOK_P99_GOAL_MS} ms ({})",
                            over.show(1)
                        ),
                        over.median <= WEBHOOK_P99_GOAL_MS,
                    );
                    format!(" {verdict}")
                } else {
                    String::new()
                };
                format!("{}{note}", over.show(1))
            }
            _ => String::new(),
        };
        println!(
            "  {:<15} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7}  {:>22}  {}/{}",
            kind.label(),
            q(0.50),
            q(0.90),
            q(0.99),
            q(1.0),
            of.iter().map(|r| r.latency_ms.len()).sum::<usize>(),
            over_text,
            of.iter().map(|r| r.missing).sum::<usize>(),
            of.iter().map(|r| r.duplicates).sum::<usize>(),
        );
    }
    let acks: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| {
            r.rate == args.latency_rate && r.consumer == ConsumerKind::Relay(SinkKind::Kafka)
        })
        .filter_map(|r| r.commit_to_ack)
        .collect();
    if !acks.is_empty() {
        let p50 = Spread::of(acks.iter().map(|a| a.0));
        let p99 = Spread::of(acks.iter().map(|a| a.1));
        let verdict = goals.check(
            format!(
                "kafka commit → broker ack p99 ≤ {KAFKA_ACK_P99_GOAL_MS} ms (≤ {})",
                p99.show(1)
            ),
            p99.median <= KAFKA_ACK_P99_GOAL_MS,
        );
        println!(
            "  relay (kafka) commit → broker ack from the relay's own histogram \
             (dispatchbox_commit_to_ack_seconds, bucket bounds):"
        );
        println!(
            "                  p50 ≤ {} ms, p99 ≤ {} ms (goal ≤ {KAFKA_ACK_P99_GOAL_MS} ms {verdict})",
            p50.show(1),
            p99.show(1)
        );
    }
}

fn print_memory(args: &Args, runs: &[SteadyRun], goals: &mut Goals) {
    let mut peaks: Vec<(ConsumerKind, u64)> = Vec::new();
    for r in runs.iter().filter(|r| r.rate == args.latency_rate) {
        let Some(kib) = r.peak_rss_kib else { continue };
        match peaks.iter_mut().find(|(k, _)| *k == r.consumer) {
            Some((_, peak)) => *peak = (*peak).max(kib),
            None => peaks.push((r.consumer, kib)),
        }
    }
    if peaks.is_empty() {
        return;
    }
    let mut text = Vec::new();
    for (kind, kib) in peaks {
        goals.check(
            format!(
                "peak RSS at {} events/s, {} ≤ {RSS_GOAL_MIB} MiB ({:.1})",
                args.latency_rate,
                kind.label(),
                mib(kib)
            ),
            mib(kib) <= RSS_GOAL_MIB,
        );
        text.push(format!("{} {:.1} MiB", kind.label(), mib(kib)));
    }
    println!();
    println!(
        "MEMORY  relay peak RSS (VmHWM, highest of the repetitions) at {} events/s: {}",
        args.latency_rate,
        text.join(", ")
    );
}
