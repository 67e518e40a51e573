//! The drain: events queued while nothing consumes them, then read from the same WAL by
//! `pg_recvlogical` (process start → last event received) and by the relay (process
//! start → every row's status written).

use std::time::{Duration, Instant};

use crate::arrivals::count_lines;
use crate::cpu;
use crate::floor::Recvlogical;
use crate::support::relay::RelayProcess;
use crate::{done_rows, load, outstanding, stop_relay, tail, Bench, Drain, SinkKind, POLL};

impl Bench {
    pub(crate) async fn drain(&self, sink: SinkKind) -> Drain {
        let events = self.args.drain_events;
        let (db, env, app) = self.database(&format!("drain_{}", sink.name()), sink).await;
        let floor_slot = format!("floor_{db}");
        let relay_slot = format!("slot_{db}");
        for slot in [&floor_slot, &relay_slot] {
            app.query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await
            .expect("create slot");
        }
        let queue_rate = load::queue(
            &app,
            events,
            self.args.drain_tx_rows,
            self.args.drain_aggregates,
        )
        .await;
        self.checkpoint().await;

        // The floor: process start → last event received.
        let window = self.window(&db).await;
        let started = Instant::now();
        let mut floor = Recvlogical::start(&self.target(&db, &floor_slot));
        let deadline = started + Duration::from_secs(600);
        while floor.received() < events as usize {
            assert!(
                floor.is_running() && Instant::now() < deadline,
                "pg_recvlogical stopped or timed out after {} of {events} events",
                floor.received()
            );
            std::thread::sleep(POLL);
        }
        let (floor_server, _) = window.finish(self).await;
        let arrivals = floor.stop();
        let last = arrivals.iter().map(|&(_, at)| at).max().unwrap();
        let floor_seconds = last.duration_since(started).as_secs_f64();
        self.drop_slot(&db, &floor_slot).await;

        // The relay: process start → every row's status written.
        let window = self.window(&db).await;
        let broker_before = self.broker_cpu().await;
        let bench_before = cpu::process_tree_seconds(std::process::id()).unwrap_or_default();
        let started = Instant::now();
        let mut relay = RelayProcess::start_piped(&env);
        let lines = count_lines(relay.take_stdout());
        let deadline = started + Duration::from_secs(600);
        loop {
            if !outstanding(&app).await {
                break;
            }
            assert!(
                relay.is_running() && Instant::now() < deadline,
                "the relay stopped or timed out; log tail:\n{}",
                tail(&relay.stderr(), 30)
            );
            tokio::time::sleep(POLL).await;
        }
        let relay_seconds = started.elapsed().as_secs_f64();
        let relay_cpu = cpu::process_tree_seconds(relay.pid()).unwrap_or_default();
        let broker_cpu = self.broker_cpu().await - broker_before;
        let bench_cpu =
            cpu::process_tree_seconds(std::process::id()).unwrap_or_default() - bench_before;
        let peak_rss_kib = relay.peak_rss_kib();
        let (relay_server, _) = window.finish(self).await;
        assert_eq!(done_rows(&app).await, i64::from(events), "every row done");
        let statements = self.statements(&db).await;
        stop_relay(&mut relay);
        let lines = lines.join().unwrap();
        if sink == SinkKind::Stdout {
            assert!(
                lines >= events as usize,
                "{lines} stdout lines for {events} events"
            );
        }
        Drain {
            round: 0,
            sink,
            events,
            queue_rate,
            floor_seconds,
            floor_server,
            relay_seconds,
            relay_server,
            relay_cpu,
            broker_cpu,
            bench_cpu,
            peak_rss_kib,
            statements,
        }
    }
}
