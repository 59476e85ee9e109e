//! `strait`: the user's command — run the demo mesh, check health, inject sidecars, show stats.

mod check;
mod demo;
mod inject;
mod stat;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strait", version, about = "Strait service mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Is Strait installed and healthy on the cluster (or, with --pre, can it be installed): grouped checks with hints.
    Check(check::Args),
    /// A whole mesh on this machine: controller, services with sidecars, traffic with faults, live metrics.
    Demo(demo::Args),
    /// Per-service success rate, request rate, latency percentiles and retries, from proxies or Prometheus.
    Stat(stat::Args),
    /// Print the version.
    Version,
    /// Add the Strait proxy to the workloads in Kubernetes manifests (as the injector webhook does).
    Inject(inject::InjectArgs),
    /// Take the Strait proxy out of the workloads in Kubernetes manifests.
    Uninject(inject::UninjectArgs),
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Check(a) => check::run(a).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Stat(a) => stat::run(a).await,
            Cmd::Inject(a) => inject::run_inject(a).map_err(Into::into),
            Cmd::Uninject(a) => inject::run_uninject(a).map_err(Into::into),
            Cmd::Version => {
                println!("strait {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    });
    if let Err(e) = r {
        eprintln!("strait: {e}");
        std::process::exit(1);
    }
}
