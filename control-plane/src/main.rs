//! The `strait-controller` binary: parses the flags, sets up logging and runs a controller until
//! SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use strait_controller::{cli::Args, logging};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = logging::init(args.log_format) {
        eprintln!("strait-controller: {e}");
        return ExitCode::from(2);
    }
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strait-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strait-controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let signal = shutdown_signal()?;
        strait_controller::start(config).await?.run_until(signal).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-controller: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT. Installed before serving, so an early signal is not lost.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, strait_controller::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| signal(kind).map_err(strait_controller::Error::Signal);
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}
