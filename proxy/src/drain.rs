//! Graceful shutdown in two steps, watched by every connection task:
//!
//! 1. **Draining** (on SIGTERM or `/shutdown`): `/ready` answers 503 so the endpoint is taken out of
//!    discovery, but the listeners keep accepting for the accept period
//!    (`STRAIT_SHUTDOWN_ACCEPT_PERIOD`): clients that have not heard of the removal yet are still
//!    served instead of refused. HTTP/1 responses carry `connection: close`; HTTP/2 connections
//!    opened before the drain get GOAWAY, so clients move to a fresh connection (and, once
//!    discovery has caught up, to another endpoint).
//! 2. **Closing**: the listeners close, idle HTTP connections are closed and busy ones finish their
//!    requests; upgraded and opaque TCP streams may go on until the grace period
//!    (`STRAIT_SHUTDOWN_GRACE_PERIOD`, counted from the signal) ends, when the process exits.
//!
//! The phases are tokio-util [`CancellationToken`]s and the running connections a [`TaskTracker`],
//! as in the controller: the process exits as soon as the tracker is empty after closing.

use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};

#[derive(Clone, Default)]
pub struct Drain {
    draining: CancellationToken,
    closing: CancellationToken,
    tracker: TaskTracker,
}

/// Held by each connection task (and each upgraded stream); dropping it marks the task finished.
pub struct Watch {
    drain: Drain,
    /// Whether the connection was accepted after the drain had started.
    late: bool,
    _token: TaskTrackerToken,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a running task.
    pub fn watch(&self) -> Watch {
        Watch { drain: self.clone(), late: self.is_draining(), _token: self.tracker.token() }
    }

    /// Starts the drain (step 1).
    pub fn start(&self) {
        self.draining.cancel();
    }

    /// Closes the listeners and idle connections (step 2; implies step 1).
    pub fn close(&self) {
        self.draining.cancel();
        self.closing.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once the drain has started.
    pub async fn signaled(&self) {
        self.draining.cancelled().await
    }

    /// Resolves once the listeners are to close.
    pub async fn closing(&self) {
        self.closing.cancelled().await
    }

    /// Tasks still running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves when no registered task is left.
    pub async fn idle(&self) {
        self.tracker.close();
        self.tracker.wait().await
    }
}

impl Watch {
    /// The drain itself, to register a task this one hands work to (an upgraded stream).
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Resolves when this connection should start to wind down: at the start of the drain for a
    /// connection that was open before it, at the close of the listeners for one accepted during
    /// the accept period (it was opened by a client that still uses this endpoint; sending it away
    /// at once would only make it open another).
    pub async fn wind_down(&self) {
        if self.late { self.drain.closing().await } else { self.drain.signaled().await }
    }

    /// Resolves once the listeners are to close.
    pub async fn closing(&self) {
        self.drain.closing().await
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

    #[tokio::test]
    async fn late_connections_wind_down_when_the_listeners_close() {
        let d = Drain::new();
        let early = d.watch();
        d.start();
        let late = d.watch();
        tokio::time::timeout(Duration::from_millis(100), early.wind_down()).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), late.wind_down()).await.is_err());
        d.close();
        tokio::time::timeout(Duration::from_millis(100), late.wind_down()).await.unwrap();
    }
}
