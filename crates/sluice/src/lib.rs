//! The Sluice server as a library: configuration and the function that runs
//! the HTTP control plane and the media shards on sockets it is given, so
//! tests start it in-process on port 0.

pub mod config;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use sluice_http::{AppState, RateLimiter, Readiness};
use sluice_server::Metrics;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

pub use config::Config;

/// How often draining checks whether the last session ended.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// Longest wait for the shards and the HTTP server to finish at the end.
const FINAL_WAIT: Duration = Duration::from_secs(3);

/// Bind the UDP socket of every media shard (see
/// [`config::MediaConfig::udp_addresses`]).
pub async fn bind_media(media: &config::MediaConfig) -> Result<Vec<UdpSocket>, String> {
    let mut sockets = Vec::new();
    for addr in media.udp_addresses()? {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| format!("cannot bind {addr} (UDP media): {e}"))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Run the server on `listener` (HTTP) and `sockets` (media, one shard
/// each; see [`bind_media`]).
///
/// The first message on `stop` starts draining: new sessions get 503 and
/// `/readyz` turns unhealthy, while live sessions run until they end or
/// `shutdown.drain_timeout_secs` passes. A second message (or the drain
/// ending) closes every session and returns.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    sockets: Vec<UdpSocket>,
    mut stop: mpsc::Receiver<()>,
) -> std::io::Result<()> {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let (events, webhooks) = match webhook::spawn(&config.webhooks, metrics.clone()) {
        Some((tx, task)) => (Some(tx), Some(task)),
        None => (None, None),
    };
    let (control, shards) =
        sluice_server::start(config.server_config(), sockets, metrics.clone(), events)?;
    let app = sluice_http::app(AppState {
        control: control.clone(),
        auth: config.auth(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        limits: config.http_limits(),
        rate: RateLimiter::new(config.limits.posts_per_second_per_address),
    });
    info!(http = %listener.local_addr()?, "HTTP server listening");
    let http_done = Arc::new(Notify::new());
    let http_stop = http_done.clone();
    let http = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_stop.notified().await })
        .await
    });

    let mut signals_open = stop.recv().await.is_some();
    readiness.start_draining();
    let deadline = tokio::time::Instant::now() + config.drain_timeout();
    info!(
        sessions = metrics.live_sessions(),
        "draining: taking no new sessions, waiting for live ones to end"
    );
    while metrics.live_sessions() > 0 {
        tokio::select! {
            signal = stop.recv(), if signals_open => {
                if signal.is_some() {
                    warn!(sessions = metrics.live_sessions(), "second stop signal: closing every session now");
                    break;
                }
                signals_open = false;
            }
            _ = tokio::time::sleep_until(deadline) => {
                warn!(sessions = metrics.live_sessions(), "drain timeout: closing the remaining sessions");
                break;
            }
            _ = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
    control.shutdown().await;
    let _ = tokio::time::timeout(FINAL_WAIT, shards).await;
    if let Some(webhooks) = webhooks {
        // The shards' ends of the queue are gone: the sender finishes what is
        // queued (the final participant_left and room_finished events).
        let _ = tokio::time::timeout(FINAL_WAIT, webhooks).await;
    }
    http_done.notify_one();
    if let Ok(Ok(result)) = tokio::time::timeout(FINAL_WAIT, http).await {
        result?;
    }
    info!("stopped");
    Ok(())
}
