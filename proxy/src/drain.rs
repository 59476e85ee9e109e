//! Graceful shutdown: a signal every connection task watches, and a count of the tasks still running.
//!
//! On SIGTERM (or `/shutdown`) the listeners stop accepting, HTTP connections are asked to finish
//! their in-flight requests and close, and the process waits for the count to reach zero or the grace
//! period to pass.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{Notify, watch};

#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    inner: Arc<Inner>,
}

struct Inner {
    trigger: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

/// Held by each connection task; dropping it marks the task finished.
pub struct Watch {
    drain: Drain,
}

impl Drain {
    pub fn new() -> Self {
        let (trigger, signal) = watch::channel(false);
        Drain { signal, inner: Arc::new(Inner { trigger, active: AtomicUsize::new(0), idle: Notify::new() }) }
    }

    /// Registers a running task.
    pub fn watch(&self) -> Watch {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Watch { drain: self.clone() }
    }

    /// Starts the drain.
    pub fn start(&self) {
        let _ = self.inner.trigger.send(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once the drain has started.
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        // An error means the sender is gone, which only happens when the process ends.
        let _ = rx.wait_for(|v| *v).await;
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Resolves when no registered task is left.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    pub async fn signaled(&self) {
        self.drain.signaled().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.drain.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_watchers() {
        let d = Drain::new();
        let w = d.watch();
        d.start();
        assert!(d.is_draining());
        let idle = tokio::spawn({
            let d = d.clone();
            async move { d.idle().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!idle.is_finished());
        drop(w);
        tokio::time::timeout(Duration::from_secs(1), idle).await.unwrap().unwrap();
    }
}
