//! `strait-testsrv <mode> --listen ADDR [--name NAME]`: a real test application, one mode per process.
//! Prints `listening <addr>` on stdout once bound (port 0 is allowed: the line tells the port), and
//! exits 0 on SIGTERM or SIGINT. The modes are described in `strait_tests::servers`.

use std::io::Write;
use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use strait_tests::servers;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// HTTP/1.1 and h2c test application (see the routes in `servers::http`)
    Http,
    /// gRPC `strait.test.echo.Echo`
    Grpc,
    /// server-speaks-first line protocol
    Banner,
    /// TCP echo with half-close
    TcpEcho,
}

#[derive(Debug, Parser)]
#[command(
    name = "strait-testsrv",
    about = "Test application servers for Strait's end-to-end tests"
)]
struct Args {
    mode: Mode,
    /// Address to listen on, e.g. 127.0.0.1:0
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in responses (x-served-by, bodies, banner)
    #[arg(long, default_value = "testsrv")]
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;

    let mut terminate = signal(SignalKind::terminate())?;
    let name = args.name.as_str();
    let server = async {
        match args.mode {
            Mode::Http => servers::http::serve(listener, name).await,
            Mode::Grpc => servers::grpc::serve(listener, name).await,
            Mode::Banner => servers::tcp::serve_banner(listener, name).await,
            Mode::TcpEcho => servers::tcp::serve_echo(listener).await,
        }
    };
    tokio::select! {
        result = server => result?,
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
