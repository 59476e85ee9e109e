//! HTTP plumbing shared by both directions: the body type, header hygiene between protocol
//! versions, the clients towards peers and applications, upgrades, and the one place that turns
//! proxy errors into responses.

pub mod body;
pub mod client;
pub mod errors;
pub mod headers;
pub mod metrics;
pub mod replay;
pub mod server;
pub mod upgrade;

pub use body::Body;
pub use errors::ProxyError;

pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;
