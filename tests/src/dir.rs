//! Per-test temporary directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set this variable (to anything) to keep test directories after the test, for post-mortems.
pub const KEEP_ENV: &str = "STRAIT_KEEP_TEST_DIRS";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under `std::env::temp_dir()`, removed on drop unless `STRAIT_KEEP_TEST_DIRS` is set.
///
/// Its name carries the running test's name (libtest names each test's thread after the test), the
/// test process's pid and a counter, so parallel tests and parallel test binaries never share one.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new directory named after the current test and `label`.
    pub fn new(label: &str) -> TestDir {
        let test = std::thread::current().name().unwrap_or("test").to_owned();
        let name = format!(
            "strait-{}-{}-{}-{}",
            sanitize(&test),
            sanitize(label),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create test dir {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside this directory (not created).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside this directory (creating parent directories) and returns its path.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV} is set: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Keeps `[A-Za-z0-9_-]` and turns everything else (such as the `::` of test paths) into `_`.
fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if cleaned.is_empty() {
        "x".to_owned()
    } else {
        cleaned
    }
}
