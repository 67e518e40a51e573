//! The test harness itself: a cluster starts with logical WAL and accepts connections.
mod support;

use support::postgres::TestCluster;

#[tokio::test]
async fn cluster_starts_with_logical_wal() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("smoke").await;
    let client = cluster.connect(&db).await;
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
}
