//! Capacity and rate limits, and sessions that never connect.

mod common;

use std::time::Duration;

use common::{TestServer, audio_offer};

async fn post(server: &TestServer, room: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/whip/{room}", server.url))
        .header("content-type", "application/sdp")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn status_and_detail(r: reqwest::Response) -> (u16, Option<String>, String) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.text().await.unwrap())
}

#[tokio::test]
async fn rooms_room_size_and_addresses_are_capped() {
    let server = TestServer::start_with(|c| {
        c.limits.max_rooms = 2;
        c.limits.max_sessions_per_room = 2;
        c.limits.max_sessions_per_address = 4;
    })
    .await;
    let offer = || audio_offer("sendonly");
    assert_eq!(post(&server, "a", offer()).await.status().as_u16(), 201);
    assert_eq!(post(&server, "a", offer()).await.status().as_u16(), 201);
    let (status, _, detail) = status_and_detail(post(&server, "a", offer()).await).await;
    assert_eq!(status, 403, "room a is full: {detail}");
    assert!(detail.contains("room"), "{detail}");

    assert_eq!(post(&server, "b", offer()).await.status().as_u16(), 201);
    let (status, retry, detail) = status_and_detail(post(&server, "c", offer()).await).await;
    assert_eq!(status, 503, "a third room: {detail}");
    assert!(retry.is_some());

    assert_eq!(post(&server, "b", offer()).await.status().as_u16(), 201);
    let (status, retry, detail) = status_and_detail(post(&server, "b", offer()).await).await;
    assert_eq!(status, 429, "a fifth session from one address: {detail}");
    assert!(retry.is_some());
    server.stop().await;
}

/// A lone publisher that publishes again under its name (a reloaded page)
/// keeps its room: the room stays counted against `max_rooms` while it
/// lives and is given back once, when it ends.
#[tokio::test]
async fn a_replaced_lone_publisher_keeps_its_room_counted() {
    let server = TestServer::start_with(|c| c.limits.max_rooms = 1).await;
    let offer = || audio_offer("sendonly");
    let mut resource = String::new();
    for _ in 0..2 {
        let r = post(&server, "a?participant=alice", offer()).await;
        assert_eq!(r.status().as_u16(), 201);
        resource = r.headers()["location"].to_str().unwrap().to_owned();
    }
    let (status, _, detail) = status_and_detail(post(&server, "b", offer()).await).await;
    assert_eq!(status, 503, "room a is still live: {detail}");
    let deleted = reqwest::Client::new()
        .delete(format!("{}{resource}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    assert_eq!(post(&server, "b", offer()).await.status().as_u16(), 201);
    let (status, _, detail) = status_and_detail(post(&server, "c", offer()).await).await;
    assert_eq!(status, 503, "room b holds the only place: {detail}");
    server.stop().await;
}

#[tokio::test]
async fn posts_per_address_are_rate_limited() {
    let server = TestServer::start_with(|c| c.limits.posts_per_second_per_address = 2.0).await;
    // A burst of twice the rate passes (these offers are bad; they still count).
    for _ in 0..4 {
        let r = post(&server, "r", "v=0\r\n".into()).await;
        assert_eq!(r.status().as_u16(), 400);
    }
    let (status, retry, detail) =
        status_and_detail(post(&server, "r", audio_offer("sendonly")).await).await;
    assert_eq!(status, 429, "{detail}");
    assert!(retry.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        post(&server, "r", audio_offer("sendonly"))
            .await
            .status()
            .as_u16(),
        201
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_offers_are_refused() {
    let server = TestServer::start_with(|c| c.limits.max_sdp_bytes = 1024).await;
    let mut big = audio_offer("sendonly");
    big.push_str(&"a=x-padding:0123456789\r\n".repeat(60));
    let (status, _, detail) = status_and_detail(post(&server, "big", big).await).await;
    assert_eq!(status, 413, "{detail}");
    assert!(detail.contains("1024"), "{detail}");
    server.stop().await;
}

#[tokio::test]
async fn sessions_that_never_connect_are_freed() {
    let server = TestServer::start_with(|c| {
        c.media.consent_timeout_secs = 2;
        c.limits.max_sessions_per_address = 1;
    })
    .await;
    // An offer nobody will ever complete ICE for.
    let r = post(&server, "ghost", audio_offer("sendonly")).await;
    assert_eq!(r.status().as_u16(), 201);
    let resource = format!(
        "{}{}",
        server.url,
        r.headers()["location"].to_str().unwrap()
    );
    assert_eq!(
        post(&server, "ghost", audio_offer("sendonly"))
            .await
            .status()
            .as_u16(),
        429
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gone = reqwest::Client::new()
        .delete(&resource)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404, "the session was freed");
    assert_eq!(
        post(&server, "ghost", audio_offer("sendonly"))
            .await
            .status()
            .as_u16(),
        201,
        "its address slot too"
    );
    server.stop().await;
}
