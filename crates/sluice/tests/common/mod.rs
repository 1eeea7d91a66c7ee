//! Start a real Sluice server in-process on loopback ports chosen by the OS.

use std::time::Duration;

use sluice::Config;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A server running for one test.
pub struct TestServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    stop: mpsc::Sender<()>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Start with the default configuration, changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.media.udp = "127.0.0.1:0".parse().unwrap();
        edit(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sockets = sluice::bind_media(&config.media).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = mpsc::channel(2);
        let task =
            tokio::spawn(async move { sluice::serve(&config, listener, sockets, stopped).await });
        TestServer {
            url,
            stop,
            task: Some(task),
        }
    }

    /// Start with the default configuration.
    #[allow(dead_code)]
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Stop the server at once (two stop signals) and wait for it.
    #[allow(dead_code)]
    pub async fn stop(mut self) {
        for _ in 0..2 {
            let _ = self.stop.send(()).await;
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// A minimal but complete audio offer in `direction`, for tests that need
/// a valid SDP without a real peer behind it.
#[allow(dead_code)]
pub fn audio_offer(direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na={direction}\r\n\
        a=rtcp-mux\r\na=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n"
    )
}

/// A token signed with `secret` under key id `kid`, valid for 10 minutes.
#[allow(dead_code)]
pub fn token(kid: &str, secret: &str, sub: &str, grants: sluice_http::auth::Grants) -> String {
    use sluice_http::auth::{Claims, mint, now_secs};
    let claims = Claims {
        iss: kid.into(),
        sub: sub.into(),
        exp: now_secs() + 600,
        nbf: None,
        grants,
    };
    mint(&claims, secret.as_bytes()).unwrap()
}
