//! Failover detection: which server the replication stream follows, by the system
//! identifier and timeline `IDENTIFY_SYSTEM` reports on every replication connection.
//!
//! A WAL position means something only on the WAL history it was read from. A different
//! system identifier is another cluster (a restore from backup, a URL pointing elsewhere); a
//! different timeline of the same cluster is another history: a promoted standby (the
//! timeline goes up), point-in-time recovery, or an old primary running again after its
//! standby took over (the timeline goes back). Across any of these the relay's remembered
//! position and the transactions it is waiting on belong to the server it left, and before
//! PostgreSQL 17 the slot did not come along either. [`ServerWatch`] tells such a switch from
//! a plain reconnect; what to do about it (forget the position, create the slot on the new
//! server, let the sweeper deliver what the new slot cannot stream) is the source's.
//!
//! Pure: no I/O. Remembered in memory only: a relay started after a failover finds no slot
//! on the new server, which the missing-slot path already handles the same way.

use std::fmt;

/// What `IDENTIFY_SYSTEM` says about the server behind a replication connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIdentity {
    /// The cluster's system identifier (the same on a primary and its physical standbys).
    pub system_id: u64,
    /// The WAL timeline the server is on.
    pub timeline: u32,
}

/// How the server of a new connection relates to the one the stream followed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerChange {
    /// The first server of this process, or the same cluster on the same timeline.
    Same,
    /// The same cluster on a later timeline: a standby was promoted (or the server was
    /// recovered to a point in time).
    Promoted {
        /// The timeline followed before.
        from: u32,
        /// The server's timeline now.
        to: u32,
    },
    /// The same cluster on an earlier timeline: a server on a history the stream had
    /// already left, e.g. the old primary running again after a failover.
    EarlierTimeline {
        /// The timeline followed before.
        from: u32,
        /// The server's timeline now.
        to: u32,
    },
    /// Another cluster (system identifier) altogether.
    OtherCluster {
        /// The system identifier followed before.
        from: u64,
        /// The server's system identifier now.
        to: u64,
    },
}

impl ServerChange {
    /// True when the stream now reads another WAL history than before: positions and
    /// transactions remembered from the old one mean nothing here.
    pub fn is_failover(self) -> bool {
        !matches!(self, ServerChange::Same)
    }
}

impl fmt::Display for ServerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerChange::Same => f.write_str("same server"),
            ServerChange::Promoted { from, to } => write!(
                f,
                "timeline {from} -> {to}: a standby was promoted (or the server was recovered to a point in time)"
            ),
            ServerChange::EarlierTimeline { from, to } => write!(
                f,
                "timeline {from} -> {to}: the server is on a WAL history the stream had left (an old primary running again after a failover?)"
            ),
            ServerChange::OtherCluster { from, to } => write!(
                f,
                "system identifier {from} -> {to}: another cluster (restored from a backup, or the database URL now points elsewhere)"
            ),
        }
    }
}

/// Remembers the server the stream follows and judges each new connection's server.
#[derive(Debug, Default)]
pub struct ServerWatch {
    followed: Option<ServerIdentity>,
}

impl ServerWatch {
    /// Judges the server of a new connection against the one followed so far, and follows
    /// it from now on.
    pub fn observe(&mut self, server: ServerIdentity) -> ServerChange {
        let change = match self.followed {
            None => ServerChange::Same,
            Some(before) if before.system_id != server.system_id => ServerChange::OtherCluster {
                from: before.system_id,
                to: server.system_id,
            },
            Some(before) if server.timeline > before.timeline => ServerChange::Promoted {
                from: before.timeline,
                to: server.timeline,
            },
            Some(before) if server.timeline < before.timeline => ServerChange::EarlierTimeline {
                from: before.timeline,
                to: server.timeline,
            },
            Some(_) => ServerChange::Same,
        };
        self.followed = Some(server);
        change
    }

    /// The server followed now, once a connection identified one.
    pub fn followed(&self) -> Option<ServerIdentity> {
        self.followed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(system_id: u64, timeline: u32) -> ServerIdentity {
        ServerIdentity {
            system_id,
            timeline,
        }
    }

    #[test]
    fn the_first_server_and_plain_reconnects_are_no_failover() {
        let mut watch = ServerWatch::default();
        assert_eq!(watch.observe(server(7, 1)), ServerChange::Same);
        assert_eq!(watch.observe(server(7, 1)), ServerChange::Same);
        assert!(!ServerChange::Same.is_failover());
        assert_eq!(watch.followed(), Some(server(7, 1)));
    }

    #[test]
    fn a_promoted_standby_is_a_later_timeline_of_the_same_cluster() {
        let mut watch = ServerWatch::default();
        watch.observe(server(7, 1));
        let change = watch.observe(server(7, 2));
        assert_eq!(change, ServerChange::Promoted { from: 1, to: 2 });
        assert!(change.is_failover());
        // Followed from now on: reconnecting to it is no new failover.
        assert_eq!(watch.observe(server(7, 2)), ServerChange::Same);
        // A second promotion later.
        assert_eq!(
            watch.observe(server(7, 4)),
            ServerChange::Promoted { from: 2, to: 4 }
        );
    }

    #[test]
    fn an_old_primary_back_or_another_cluster_is_a_switch_too() {
        let mut watch = ServerWatch::default();
        watch.observe(server(7, 2));
        let back = watch.observe(server(7, 1));
        assert_eq!(back, ServerChange::EarlierTimeline { from: 2, to: 1 });
        assert!(back.is_failover());
        // Another cluster wins over any timeline comparison (its timelines are unrelated).
        let other = watch.observe(server(9, 1));
        assert_eq!(other, ServerChange::OtherCluster { from: 7, to: 9 });
        assert!(other.is_failover());
        assert!(other.to_string().contains("another cluster"), "{other}");
    }
}
