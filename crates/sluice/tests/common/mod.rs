//! Start a real Sluice server in-process on loopback ports chosen by the OS.

use std::time::Duration;

use sluice::Config;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running for one test.
pub struct TestServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Start with the default configuration, changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        edit(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sluice::serve(&config, listener, socket, async {
                let _ = stopped.await;
            })
            .await
        });
        TestServer {
            url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Start with the default configuration.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Stop the server and wait for it to finish.
    #[allow(dead_code)]
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
