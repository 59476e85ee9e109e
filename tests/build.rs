//! Compiles the test-only gRPC service used to check unary and streaming gRPC through the proxies.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/echo.proto"];
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
