//! Log output: plain or JSON lines on stderr, filtered by `STRAIT_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "STRAIT_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("{FILTER_ENV}: {0}")]
    Filter(#[from] tracing_subscriber::filter::FromEnvError),
    #[error("installing the logger: {0}")]
    Install(String),
}

/// Installs the global logger. A bad filter is an error rather than silently logging nothing.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = match std::env::var(FILTER_ENV) {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_from_env(FILTER_ENV)?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    installed.map_err(|e| LoggingError::Install(e.to_string()))
}
