//! A steady run: one consumer, a fresh database, a fixed insert rate; the consumer's
//! database CPU, WAL, relay CPU, latency and memory over the window from the first insert
//! to the last event settled.

use std::time::{Duration, Instant};

use crate::arrivals::{
    commit_to_ack_buckets, histogram_quantiles, latencies, stdout_arrivals, webhook_id, KafkaReader,
};
use crate::cpu;
use crate::floor::Recvlogical;
use crate::load::{self, Load};
use crate::poller::Poller;
use crate::support::relay::{wait_streaming, RelayProcess};
use crate::{
    outstanding, stop_relay, Bench, ConsumerKind, SinkKind, SteadyRun, CONSUMER_PASSWORD,
    CONSUMER_ROLE, POLL,
};

impl Bench {
    pub(crate) async fn steady(&self, rate: u32, consumer: ConsumerKind) -> SteadyRun {
        let sink = match consumer {
            ConsumerKind::Relay(sink) => sink,
            _ => SinkKind::Stdout,
        };
        let (db, env, app) = self
            .database(&format!("r{rate}_{}", consumer.tag()), sink)
            .await;
        let load = Load {
            rate,
            seconds: self.args.seconds,
            tx_rows: self.args.tx_rows,
            aggregates: self.args.aggregates,
        };
        let floor_slot = format!("floor_{db}");
        let relay_slot = format!("slot_{db}");

        // Start the consumer and let it settle in before the window opens.
        let mut running = match consumer {
            ConsumerKind::Baseline => Running::Nothing,
            ConsumerKind::Floor => {
                app.query(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&floor_slot],
                )
                .await
                .expect("create slot");
                let floor = Recvlogical::start(&self.target(&db, &floor_slot));
                wait_streaming(&app).await;
                Running::Floor(floor)
            }
            ConsumerKind::Polling(commit) => Running::Polling(
                Poller::start(
                    &self.cluster.url(CONSUMER_ROLE, CONSUMER_PASSWORD, &db),
                    commit,
                )
                .await,
            ),
            ConsumerKind::Relay(sink) => {
                let mut relay = RelayProcess::start_piped(&env);
                let stdout = relay.take_stdout();
                wait_streaming(&app).await;
                let admin = relay.admin_url();
                let arrivals = match sink {
                    SinkKind::Stdout => Arrivals::Lines(stdout_arrivals(stdout)),
                    SinkKind::Webhook => Arrivals::Webhook(Instant::now()),
                    SinkKind::Kafka => {
                        drop(stdout);
                        Arrivals::Kafka(KafkaReader::start(&self.bootstrap))
                    }
                };
                Running::Relay {
                    relay,
                    admin,
                    arrivals,
                }
            }
        };
        // Let the first status update and sweep pass outside the window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.checkpoint().await;

        let ack_before = match &running {
            Running::Relay { admin, .. } => Some(commit_to_ack_buckets(admin).await),
            _ => None,
        };
        let relay_cpu_before = match &running {
            Running::Relay { relay, .. } => cpu::process_tree_seconds(relay.pid()),
            _ => None,
        };
        let window = self.window(&db).await;
        let committed = load::run(&app, load, 1).await;
        let events = committed.at.len();
        // Wait until the consumer settled everything.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let settled = match &mut running {
                Running::Nothing => true,
                Running::Floor(floor) => floor.received() >= events,
                Running::Polling(_) | Running::Relay { .. } => !outstanding(&app).await,
            };
            if settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not settle {events} events within 120 s",
                consumer.label()
            );
            tokio::time::sleep(POLL).await;
        }
        let relay_cpu = match (&running, relay_cpu_before) {
            (Running::Relay { relay, .. }, Some(before)) => {
                cpu::process_tree_seconds(relay.pid()).map(|after| after - before)
            }
            _ => None,
        };
        let window_length = window.started.elapsed();
        let (server, wal_bytes) = window.finish(self).await;
        let statements = self.statements(&db).await;

        let (arrivals, commit_to_ack, peak_rss_kib) = match running {
            Running::Nothing => (Vec::new(), None, None),
            Running::Floor(floor) => {
                let arrivals = floor.stop();
                self.drop_slot(&db, &floor_slot).await;
                (arrivals, None, None)
            }
            Running::Polling(poller) => {
                poller.stop().await;
                (Vec::new(), None, None)
            }
            Running::Relay {
                mut relay,
                admin,
                arrivals,
            } => {
                let peak = relay.peak_rss_kib();
                let ack = match ack_before {
                    Some(before) if sink == SinkKind::Kafka => {
                        let after = commit_to_ack_buckets(&admin).await;
                        Some(histogram_quantiles(&before, &after))
                    }
                    _ => None,
                };
                // Give the last Kafka records a moment to reach the reader.
                let arrivals = match arrivals {
                    Arrivals::Lines(reader) => {
                        stop_relay(&mut relay);
                        reader.join().unwrap()
                    }
                    Arrivals::Webhook(since) => {
                        stop_relay(&mut relay);
                        self.receiver
                            .requests()
                            .into_iter()
                            .filter(|r| r.arrived >= since)
                            .filter_map(|r| Some((webhook_id(&r.json())?, r.arrived)))
                            .collect()
                    }
                    Arrivals::Kafka(reader) => {
                        let arrivals = reader.finish(&committed, Duration::from_secs(30));
                        stop_relay(&mut relay);
                        arrivals
                    }
                };
                self.drop_slot(&db, &relay_slot).await;
                (arrivals, ack, Some(peak))
            }
        };
        let (latency_ms, missing, duplicates) = latencies(&committed, &arrivals);
        let (missing, duplicates) = match consumer {
            ConsumerKind::Baseline | ConsumerKind::Polling(_) => (0, 0),
            _ => (missing, duplicates),
        };
        SteadyRun {
            round: 0,
            rate,
            consumer,
            achieved_rate: committed.achieved_rate,
            events,
            window: window_length,
            server,
            relay_cpu,
            wal_bytes,
            statements,
            latency_ms,
            missing,
            duplicates,
            commit_to_ack,
            peak_rss_kib,
        }
    }
}

/// The consumer of a steady run, while it runs.
enum Running {
    Nothing,
    Floor(Recvlogical),
    Polling(Poller),
    Relay {
        relay: RelayProcess,
        admin: String,
        arrivals: Arrivals,
    },
}

/// How a relay run's deliveries are seen arriving.
enum Arrivals {
    /// stdout lines, read by a thread until the relay exits.
    Lines(std::thread::JoinHandle<Vec<(i64, Instant)>>),
    /// The shared webhook receiver's requests since this moment.
    Webhook(Instant),
    /// A Kafka reader.
    Kafka(KafkaReader),
}
