//! The Sluice server as a library: configuration and the function that runs
//! the HTTP control plane and the media shard on sockets it is given, so
//! tests start it in-process on port 0.

pub mod config;

use std::future::Future;

use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

pub use config::Config;

/// Run the server on `listener` (HTTP) and `socket` (media) until
/// `shutdown` completes.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    socket: UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (control, shard) = sluice_server::start(config.server_config(), socket)?;
    let app = sluice_http::app(control.clone(), config.auth());
    info!(http = %listener.local_addr()?, "HTTP server listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    control.shutdown().await;
    let _ = shard.await;
    Ok(())
}
