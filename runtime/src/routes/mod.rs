//! Route groups, one file each, combined with the OpenAPI document in [`crate::server::app`].

pub mod docs;
pub mod metrics;
pub mod repository;
pub mod typed;
pub mod v2;
