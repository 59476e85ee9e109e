//! The `strait-proxy` binary: reads the environment, starts the runtime, runs the proxy.
//! `strait-proxy init [options]` instead writes the pod's iptables rules and exits (see `init`);
//! `strait-proxy await-ready` waits for this pod's proxy to be ready (the injector's postStart
//! hook where there are no native sidecars); `strait-proxy --version` prints the version. The few words are matched by hand, like `init`'s
//! options: the sidecar's configuration is its environment, and clap would be a dependency for
//! one flag.

use strait_proxy::config::Config;

const USAGE: &str = "usage: strait-proxy            (the proxy; configured by STRAIT_* variables)
       strait-proxy init [--help]  (the pod's iptables rules)
       strait-proxy await-ready [--help]  (waits until the proxy is ready)
       strait-proxy --version";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("init") => std::process::exit(strait_proxy::init::main(&args[1..])),
        Some("await-ready") => std::process::exit(strait_proxy::await_ready::main(&args[1..])),
        Some("--version" | "-V") => {
            println!("strait-proxy {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return;
        }
        Some(other) => {
            eprintln!("strait-proxy: unknown command {other:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strait-proxy: {e}");
            std::process::exit(2);
        }
    };
    init_tracing(&cfg);
    let rt = if cfg.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.worker_threads).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait-proxy: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(strait_proxy::run::run(cfg)) {
        tracing::error!("{e}");
        eprintln!("strait-proxy: {e}");
        std::process::exit(1);
    }
}

fn init_tracing(cfg: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cfg.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cfg.log_json {
        b.json().init();
    } else {
        b.init();
    }
}
