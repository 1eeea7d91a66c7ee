//! Webhooks: lifecycle events arrive in order, signed, and are retried.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::TestServer;
use parking_lot::Mutex;
use serde_json::Value;
use sluice::webhook::signature;
use sluice_testkit::{Peer, PeerOptions};

const SECRET: &str = "hook-secret";

/// A webhook receiver that refuses its first request (to exercise the
/// retry) and records the rest.
async fn receiver() -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let refused_once = Arc::new(Mutex::new(false));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            let refused_once = refused_once.clone();
            async move {
                let mut refused = refused_once.lock();
                if !*refused {
                    *refused = true;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                record.lock().push((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_signed_ordered_and_retried() {
    let (url, seen) = receiver().await;
    let server = TestServer::start_with(|c| {
        c.webhooks.url = Some(url);
        c.webhooks.secret = SECRET.into();
    })
    .await;
    let publisher = Peer::start(PeerOptions::new(&server.url, "hooks", true))
        .await
        .unwrap();
    let viewer = Peer::start(PeerOptions::new(&server.url, "hooks", false))
        .await
        .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| !s.received.is_empty())
            .await
    );
    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);

    let expected = [
        "room_started",
        "participant_joined",
        "track_published",
        "track_published",
        "participant_joined",
        "participant_left",
        "track_unpublished",
        "track_unpublished",
        "participant_left",
        "room_finished",
    ];
    for _ in 0..100 {
        if seen.lock().len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().clone();
    let names: Vec<String> = seen
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names, expected,
        "every event once, in order, the refused one retried"
    );
    for (headers, body) in &seen {
        let sig = headers["sluice-signature"].to_str().unwrap();
        assert_eq!(
            sig,
            signature(SECRET.as_bytes(), body),
            "signed with the secret"
        );
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["room"], "hooks");
        assert_eq!(headers["sluice-event"], event["event"].as_str().unwrap());
    }
    let published: Value = serde_json::from_slice(&seen[2].1).unwrap();
    assert!(published["track"].is_u64() && published["session"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn webhooks_need_a_secret_and_plain_http() {
    let mut c = sluice::Config::default();
    c.webhooks.url = Some("http://127.0.0.1:1/x".into());
    assert!(c.check_exposure(false).unwrap_err().contains("secret"));
    c.webhooks.secret = "s".into();
    assert!(c.check_exposure(false).is_ok());
    c.webhooks.url = Some("https://example.test/x".into());
    assert!(c.check_exposure(false).unwrap_err().contains("http://"));
}
