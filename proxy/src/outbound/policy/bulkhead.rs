//! Bulkhead: at most `max_concurrent` requests in flight to one destination service from this
//! proxy, at most `max_pending` more waiting for a slot; beyond that a request fails at once with
//! 503 `bulkhead-full`, so a slow service cannot tie up the caller's resources.
//!
//! tower's `ConcurrencyLimit` has no bound on waiters and `LoadShed` admits none; a bulkhead needs
//! exactly `max_pending` waiters, so this is a semaphore plus a waiter count.

use std::sync::atomic::{AtomicU32, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::ProxyError;

pub struct Bulkhead {
    pub max_concurrent: u32,
    pub max_pending: u32,
    slots: std::sync::Arc<Semaphore>,
    pending: AtomicU32,
    in_flight: IntGauge,
    rejected: IntCounter,
}

/// Holds a slot while the request is in flight.
pub struct Permit {
    _permit: Option<OwnedSemaphorePermit>,
    in_flight: IntGauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Bulkhead {
    pub fn new(max_concurrent: u32, max_pending: u32, in_flight: IntGauge, rejected: IntCounter) -> Self {
        Bulkhead {
            max_concurrent,
            max_pending,
            slots: std::sync::Arc::new(Semaphore::new(max_concurrent as usize)),
            pending: AtomicU32::new(0),
            in_flight,
            rejected,
        }
    }

    pub async fn enter(&self) -> Result<Permit, ProxyError> {
        if self.max_concurrent == 0 {
            self.in_flight.inc();
            return Ok(Permit { _permit: None, in_flight: self.in_flight.clone() });
        }
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
                if waiting >= self.max_pending {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    self.rejected.inc();
                    return Err(ProxyError::BulkheadFull);
                }
                let r = self.slots.clone().acquire_owned().await;
                self.pending.fetch_sub(1, Ordering::AcqRel);
                r.map_err(|_| ProxyError::BulkheadFull)?
            }
        };
        self.in_flight.inc();
        Ok(Permit { _permit: Some(permit), in_flight: self.in_flight.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bh(c: u32, p: u32) -> Bulkhead {
        Bulkhead::new(c, p, IntGauge::new("g", "g").unwrap(), IntCounter::new("c", "c").unwrap())
    }

    #[tokio::test]
    async fn fails_fast_beyond_pending() {
        let b = std::sync::Arc::new(bh(2, 1));
        let p1 = b.enter().await.unwrap();
        let _p2 = b.enter().await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(matches!(b.enter().await, Err(ProxyError::BulkheadFull)));
        assert_eq!(b.rejected.get(), 1);
        drop(p1);
        waiter.await.unwrap().unwrap();
        assert_eq!(b.in_flight.get(), 1);
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let b = bh(0, 0);
        let _a = b.enter().await.unwrap();
        let _b = b.enter().await.unwrap();
        assert_eq!(b.in_flight.get(), 2);
    }
}
