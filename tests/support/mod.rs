//! Shared fixtures for the integration tests: real PostgreSQL clusters (and, later, a real
//! Kafka-protocol broker and HTTP receivers).
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub mod kafka;
pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod relay;
pub mod store;
pub mod webhook;
