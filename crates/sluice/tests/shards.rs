//! Several media shards: rooms spread over them, each shard forwards its
//! rooms' media through a UDP port of its own, requests about a session
//! find its shard, and the per-address limit counts every shard.

mod common;

use std::time::Duration;

use common::{TestServer, audio_offer};
use sluice_testkit::peer::post_offer;
use sluice_testkit::{Peer, PeerOptions};

/// The port of the host candidate in an SDP answer.
fn candidate_port(answer: &str) -> u16 {
    let line = answer
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .expect("the answer has a candidate");
    // a=candidate:<foundation> <component> <transport> <priority> <ip> <port> typ host
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

async fn delete(url: &str) -> u16 {
    reqwest::Client::new()
        .delete(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_two_shards_forward_media_and_share_the_limits() {
    let server = TestServer::start_with(|c| {
        c.media.shards = 2;
        c.limits.max_sessions_per_address = 6;
    })
    .await;
    let room_on = |shard| {
        (0..)
            .map(|i| format!("room-{i}"))
            .find(|r| sluice_server::shard_of_room(r, 2) == shard)
            .unwrap()
    };
    let rooms = [room_on(0), room_on(1)];

    // A publisher and a viewer in each room: both viewers get video.
    let mut peers = Vec::new();
    for room in &rooms {
        let publisher = Peer::start(PeerOptions::new(&server.url, room, true))
            .await
            .unwrap();
        let viewer = Peer::start(PeerOptions::new(&server.url, room, false))
            .await
            .unwrap();
        peers.push((publisher, viewer));
    }
    for (room, (_, viewer)) in rooms.iter().zip(&peers) {
        assert!(
            viewer
                .wait_for(Duration::from_secs(10), |s| s.rx[1].packets >= 60)
                .await,
            "the viewer in {room} receives video"
        );
        assert_eq!(viewer.with_state(|s| s.rx[1].lost()), 0, "{room}");
    }

    // Each room's sessions are reached through their own shard's port.
    let whip = |room: &str| format!("{}/whip/{room}", server.url);
    let offer = audio_offer("sendonly");
    let (answer0, _) = post_offer(&whip(&rooms[0]), &offer, None).await.unwrap();
    let (answer1, location1) = post_offer(&whip(&rooms[1]), &offer, None).await.unwrap();
    assert_ne!(candidate_port(&answer0), candidate_port(&answer1));

    // Six sessions from this address, three on each shard: the seventh is
    // refused whichever shard it would land on.
    for room in &rooms {
        match post_offer(&whip(room), &offer, None).await {
            Err(sluice_testkit::peer::PeerError::Status(status, _)) => assert_eq!(status, 429),
            other => panic!("a seventh session in {room}: {other:?}"),
        }
    }
    // Ending one on shard 1 (found by its resource id) frees a place.
    let resource = format!("{}{location1}", server.url);
    let elsewhere = resource.replacen("/resource/01", "/resource/7f", 1);
    assert_ne!(elsewhere, resource, "shard 1's resource ids start with 01");
    assert_eq!(delete(&elsewhere).await, 404, "no shard 127");
    assert_eq!(delete(&resource).await, 200);
    post_offer(&whip(&rooms[0]), &offer, None).await.unwrap();

    // The gauges add up every shard's rooms.
    let mut text = String::new();
    for _ in 0..30 {
        text = metrics(&server).await;
        if text.lines().any(|l| l == "sluice_rooms 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.lines().any(|l| l == "sluice_rooms 2"), "{text}");
    server.stop().await;
}
