//! strait-proxy owns the sidecar data path: accept, detect, discover, route and forward a pod's
//! traffic, inbound and outbound, with golden metrics and an admin endpoint.

pub mod admin;
pub mod await_ready;
pub mod config;
pub mod detect;
pub mod discover;
pub mod dns;
pub mod drain;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod outbound;
pub mod ready;
pub mod run;
pub mod tls;
pub mod transport;
