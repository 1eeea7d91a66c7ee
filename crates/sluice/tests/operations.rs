//! Operating the server: health and readiness, metrics that move with real
//! media, and a graceful drain on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, audio_offer};
use sluice_testkit::{Kind, Peer, PeerOptions};

/// The value of an unlabelled or fully labelled sample in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_real_media() {
    let server = TestServer::start().await;
    assert_eq!(get(&format!("{}/healthz", server.url)).await.0, 200);
    assert_eq!(get(&format!("{}/readyz", server.url)).await.0, 200);

    let publisher = Peer::start(PeerOptions::new(&server.url, "metrics", true))
        .await
        .unwrap();
    let viewer = Peer::start(PeerOptions::new(&server.url, "metrics", false))
        .await
        .unwrap();
    let video = |s: &sluice_testkit::peer::PeerState| {
        s.received.iter().filter(|p| p.kind == Kind::Video).count()
    };
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video(s) >= 60)
            .await
    );
    // A viewer PLI, counted on its way in and (merged) on its way out.
    let asked = publisher.with_state(|s| s.keyframe_requests);
    viewer.request_keyframe();
    assert!(
        publisher
            .wait_for(Duration::from_secs(5), |s| s.keyframe_requests > asked)
            .await
    );
    tokio::time::sleep(Duration::from_millis(1200)).await; // one counter flush

    let (status, text) = get(&format!("{}/metrics", server.url)).await;
    assert_eq!(status, 200);
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(value("sluice_sessions{role=\"publisher\"}"), 1.0);
    assert_eq!(value("sluice_sessions{role=\"viewer\"}"), 1.0);
    assert_eq!(value("sluice_rooms"), 1.0);
    // The (unnamed) publisher and the anonymous viewer.
    assert_eq!(value("sluice_participants"), 2.0);
    assert_eq!(value("sluice_publications"), 2.0);
    assert!(value("sluice_packets_received_total") >= 60.0);
    assert!(value("sluice_packets_forwarded_total") >= 60.0);
    assert!(value("sluice_bytes_forwarded_total") >= 60.0 * 300.0);
    assert!(value("sluice_keyframe_requests_total{direction=\"from_viewers\"}") >= 1.0);
    assert!(value("sluice_keyframe_requests_total{direction=\"to_publishers\"}") >= 1.0);
    println!(
        "{}",
        text.lines()
            .filter(|l| l.contains("join|sessions"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(value("sluice_join_seconds_count"), 2.0);
    // The viewer's first video went out once, on a kept keyframe or live.
    let started = |how: &str| {
        sample(
            &text,
            &format!("sluice_first_video_seconds_count{{start=\"{how}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(started("kept") + started("live"), 1.0, "in\n{text}");
    assert!(value("sluice_process_resident_memory_bytes") > 1e6);
    assert!(value("sluice_process_cpu_seconds") > 0.0);
    assert!(
        value("sluice_http_requests_total{method=\"POST\",route=\"/whip/{room}\",status=\"201\"}")
            >= 1.0
    );

    let forwarded = value("sluice_packets_forwarded_total");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = get(&format!("{}/metrics", server.url)).await;
    assert!(
        sample(&later, "sluice_packets_forwarded_total").unwrap() > forwarded,
        "counters move"
    );

    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    let (_, after) = get(&format!("{}/metrics", server.url)).await;
    assert_eq!(
        sample(&after, "sluice_sessions{role=\"viewer\"}"),
        Some(0.0)
    );
    server.stop().await;
}

/// A `sluice serve` child process on free loopback ports.
struct Child_ {
    child: Child,
    url: String,
}

impl Child_ {
    fn start() -> Child_ {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--udp",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Child_ {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if reqwest::get(format!("{}/readyz", self.url)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not start");
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait up to `limit` for the process to exit; its exit code.
    async fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_sessions_then_exits_cleanly() {
    let mut server = Child_::start();
    server.wait_ready().await;
    let publisher = Peer::start(PeerOptions::new(&server.url, "drain", true))
        .await
        .unwrap();
    let viewer = Peer::start(PeerOptions::new(&server.url, "drain", false))
        .await
        .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| !s.received.is_empty())
            .await
    );

    server.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not ready, no new sessions, but alive and still forwarding.
    assert_eq!(get(&format!("{}/readyz", server.url)).await.0, 503);
    assert_eq!(get(&format!("{}/healthz", server.url)).await.0, 200);
    let refused = reqwest::Client::new()
        .post(format!("{}/whep/drain", server.url))
        .header("content-type", "application/sdp")
        .body(audio_offer("recvonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let before = viewer.with_state(|s| s.received.len());
    assert!(
        viewer
            .wait_for(Duration::from_secs(3), |s| s.received.len() > before + 50)
            .await,
        "live sessions keep their media while draining"
    );
    assert_eq!(
        server.exit_within(Duration::from_millis(500)).await,
        None,
        "waits for sessions"
    );

    // When the last session ends, the server exits 0.
    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    assert_eq!(server.exit_within(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let mut server = Child_::start();
    server.wait_ready().await;
    let publisher = Peer::start(PeerOptions::new(&server.url, "force", true))
        .await
        .unwrap();
    assert!(
        publisher
            .wait_for(Duration::from_secs(10), |s| s.connected)
            .await
    );
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.exit_within(Duration::from_millis(300)).await, None);
    server.sigterm();
    assert_eq!(server.exit_within(Duration::from_secs(5)).await, Some(0));
    publisher.vanish().await;
}
