//! Support for Strait's end-to-end tests: the test application servers behind `strait-testsrv`, and
//! the harness that runs the workspace's real binaries on loopback (processes, temporary
//! directories, ports, HTTP/gRPC clients, Prometheus metrics). See `tests/README.md`.

pub mod client;
pub mod dir;
pub mod fixtures;
pub mod kube_api;
pub mod load;
pub mod metrics;
pub mod net;
pub mod netns;
pub mod process;
pub mod servers;

/// The test-only gRPC service of `tests/proto/echo.proto` (client and server).
pub mod echo {
    tonic::include_proto!("strait.test.echo");
}

pub use client::{
    HttpResponse, grpc_channel, http_connect_tunnel, http_get, http_get_via_proxy, send_h2c,
    send_http1, wait_for_http_ok,
};
pub use dir::TestDir;
pub use fixtures::{
    ControllerHandle, ProxyHandle, controller, controller_named, proxy, proxy_named, spawn_proxy, testsrv,
    testsrv_at, testsrv_in,
};
pub use net::{free_addr, free_port, wait_for_tcp};
pub use process::{Process, bin};
