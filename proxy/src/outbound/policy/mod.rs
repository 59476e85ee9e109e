//! The per-service resilience stack (DESIGN §5), built once per destination service and cached:
//!
//! ```text
//! request ─> bulkhead ─> request timeout ─> retry (budget, backoff, replay) ─> per-try timeout
//!         ─> balance (P2C peak-EWMA over endpoints that the circuit breakers let through) ─> endpoint
//! ```
//!
//! Each stage is a module with one job and an `async fn` entry, composed in [`stack`]. The stages
//! are composed as plain async calls rather than boxed `tower::Service` layers: every request
//! passes through all of them, and static composition costs no allocation or dynamic dispatch per
//! request. A new stage (hedging, adaptive concurrency, deadline propagation) is one more module
//! and one more line in [`stack::Logical::call`]. tower provides the retry budget
//! (`tower::retry::budget::TpsBudget`); see [`balance`] for why the balancer is not tower's.

pub mod balance;
pub mod breaker;
pub mod bulkhead;
pub mod config;
pub mod retry;
pub mod stack;

pub use config::Policy;
pub use stack::{Logical, Logicals};
