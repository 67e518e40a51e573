//! Store fixtures: a connection pool built the way the relay builds it (from a database
//! URL), and a freshly migrated database with the default outbox table.

use deadpool_postgres::Pool;
use dispatchbox::conninfo::ConnInfo;
use dispatchbox::names::Names;
use dispatchbox::store::{Store, SESSION_SETTINGS};

use super::postgres::TestCluster;

/// A pool of at most `max_size` connections to `url`, through the relay's own `ConnInfo`,
/// with the session settings `dispatchbox run` uses.
pub fn pool(url: &str, max_size: usize) -> Pool {
    let conninfo: ConnInfo = url.parse().expect("test database URL");
    conninfo
        .pool_with_setup(max_size, Some(SESSION_SETTINGS))
        .expect("build pool")
}

/// The default names: `public.outbox_event` and publication `dispatchbox`.
pub fn default_names() -> Names {
    Names::new(
        "outbox_event".parse().expect("table name"),
        "dispatchbox".parse().expect("publication name"),
    )
    .expect("names")
}

/// A new database on `cluster`, migrated, with a store (pool of `max_size`) over it.
pub async fn migrated(cluster: &TestCluster, prefix: &str, max_size: usize) -> (String, Store) {
    let db = cluster.create_database(prefix).await;
    let names = default_names();
    let store = Store::new(
        pool(&cluster.superuser_url(&db), max_size),
        names.table().clone(),
    );
    store.migrate(&names).await.expect("migrate");
    (db, store)
}

/// Rows of the default outbox table (`public.outbox_event`) with `status`.
pub async fn count_status(client: &tokio_postgres::Client, status: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM public.outbox_event WHERE status = $1",
            &[&status],
        )
        .await
        .expect("count rows by status")
        .get(0)
}
