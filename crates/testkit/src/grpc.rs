//! A gRPC server for client tests and benchmarks: `grpc.health.v1` only, serving.

use std::net::SocketAddr;

use anyhow::Result;

/// A plaintext health server on 127.0.0.1 (port 0), serving until the runtime ends.
pub async fn health_server() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}
