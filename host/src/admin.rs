//! PLACEHOLDER until the admin branch is merged.
#![allow(missing_docs)]
use std::sync::Arc;
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}
pub async fn serve(
    _l: tokio::net::TcpListener,
    _i: Arc<dyn crate::status::Inventory>,
    _s: tokio_util::sync::CancellationToken,
) {
}
