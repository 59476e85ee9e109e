//! Files re-read when their contents change. The issuer (identity) and the webhook's serving
//! certificate both come from Secrets that Kubernetes remounts when they are renewed (a symlink
//! swap, no inotify event on the file itself), so both are polled the same way: a hash of the
//! files' contents every interval, and a reload when it moved. One watcher loop serves both, so
//! they behave alike (a bad edit is reported once, the current value kept).

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// A hash of the files' contents (or of why they could not be read).
pub fn fingerprint<'a>(paths: impl IntoIterator<Item = &'a Path>) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        match std::fs::read(p) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => format!("{:?}", e.kind()).hash(&mut h),
        }
    }
    h.finish()
}

/// The fingerprint last acted on, so that an unusable edit is reported once and not on every poll.
#[derive(Debug)]
pub struct Seen(Mutex<u64>);

impl Seen {
    pub fn new(fingerprint: u64) -> Self {
        Self(Mutex::new(fingerprint))
    }

    /// Records `now`; true when it differs from what was seen before.
    pub fn changed(&self, now: u64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return false;
        }
        *seen = now;
        true
    }
}

/// Something loaded from files that can be re-read.
pub trait Reload: Send + Sync + 'static {
    type Error: std::fmt::Display + Send + 'static;

    /// Re-reads the files when they changed: `Ok(true)` when a new value is in use, `Ok(false)`
    /// when nothing changed, an error when the new contents cannot be used (the current value stays).
    fn reload_if_changed(&self) -> Result<bool, Self::Error>;
}

/// Calls [`Reload::reload_if_changed`] (off the async threads: it reads files) every `interval`
/// until `shutdown`, and hands each result but "nothing changed" to `report`.
pub async fn watch<R: Reload>(
    what: Arc<R>,
    interval: Duration,
    shutdown: CancellationToken,
    mut report: impl FnMut(Result<(), R::Error>),
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let check = {
            let what = what.clone();
            tokio::task::spawn_blocking(move || what.reload_if_changed()).await
        };
        match check {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => report(Ok(())),
            Ok(Err(e)) => report(Err(e)),
            Err(e) => tracing::warn!(error = %e, "checking files for changes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let seen = Seen::new(fingerprint([a.as_path()]));
        assert!(!seen.changed(fingerprint([a.as_path()])));
        std::fs::write(&a, "two").unwrap();
        assert!(seen.changed(fingerprint([a.as_path()])));
        assert!(!seen.changed(fingerprint([a.as_path()])));
        std::fs::remove_file(&a).unwrap();
        assert!(seen.changed(fingerprint([a.as_path()])), "a missing file is a change too");
    }
}
