//! The admin API: see rooms with live media, mute a track, remove a
//! participant, close a room; admin tokens only.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::Value;
use sluice_http::auth::Grants;
use sluice_testkit::peer::PeerState;
use sluice_testkit::{Kind, Peer, PeerOptions};

const SECRET: &str = "admin-test-secret";

fn token(sub: &str, grants: Grants) -> String {
    common::token("k", SECRET, sub, grants)
}

fn video(s: &PeerState) -> usize {
    s.received.iter().filter(|p| p.kind == Kind::Video).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_and_steer_rooms() {
    let server = TestServer::start_with(|c| c.auth.add_keys(&format!("k:{SECRET}")).unwrap()).await;
    let admin = token(
        "ops",
        Grants {
            room: "*".into(),
            admin: true,
            ..Grants::default()
        },
    );
    let user = token(
        "alice",
        Grants {
            room: "show".into(),
            publish: true,
            subscribe: true,
            admin: false,
        },
    );
    let peer = |publish| PeerOptions {
        token: Some(user.clone()),
        ..PeerOptions::new(&server.url, "show", publish)
    };
    let publisher = Peer::start(peer(true)).await.unwrap();
    let viewer = Peer::start(peer(false)).await.unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video(s) >= 60)
            .await
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // a full bitrate window

    let client = reqwest::Client::new();
    let api = |path: &str| format!("{}/api{path}", server.url);
    // Admin only.
    assert_eq!(
        client
            .get(api("/rooms"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let denied = client
        .get(api("/rooms"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);

    let rooms: Value = client
        .get(api("/rooms"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = &rooms["rooms"][0];
    assert_eq!(room["name"], "show");
    let sessions = room["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let publisher_info = sessions.iter().find(|s| s["role"] == "publisher").unwrap();
    assert_eq!(publisher_info["identity"], "alice");
    assert_eq!(publisher_info["connected"], true);
    let tracks = publisher_info["tracks"].as_array().unwrap();
    let video_track = tracks.iter().find(|t| t["kind"] == "video").unwrap();
    assert_eq!(video_track["subscribers"], 1);
    let layer = &video_track["layers"][0];
    assert_eq!(layer["active"], true);
    // 30 fps x 3 packets x 300 bytes is about 216 kbit/s of payload.
    let kbps = layer["bitrate_kbps"].as_u64().unwrap();
    assert!((150..300).contains(&kbps), "measured {kbps} kbit/s");

    // Mute the video track: the viewer stops getting video; unmute: it resumes.
    let track_id = video_track["id"].as_u64().unwrap();
    let mute = |muted: bool| {
        client
            .post(api(&format!("/rooms/show/tracks/{track_id}/mute")))
            .bearer_auth(&admin)
            .body(format!("{{\"muted\": {muted}}}"))
            .send()
    };
    assert_eq!(mute(true).await.unwrap().status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let muted_at = viewer.with_state(video);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(viewer.with_state(video), muted_at, "no video while muted");
    assert_eq!(mute(false).await.unwrap().status().as_u16(), 200);
    assert!(
        viewer
            .wait_for(Duration::from_secs(3), |s| video(s) > muted_at + 30)
            .await,
        "video resumes after unmute"
    );
    let bad = client
        .post(api(&format!("/rooms/show/tracks/{track_id}/mute")))
        .bearer_auth(&admin)
        .body("{\"mute\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let missing = client
        .post(api("/rooms/show/tracks/999999/mute"))
        .bearer_auth(&admin)
        .body("{\"muted\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // Remove the viewer, then close the room.
    let viewer_id = sessions.iter().find(|s| s["role"] == "viewer").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let removed = client
        .delete(api(&format!("/rooms/show/participants/{viewer_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status().as_u16(), 200);
    let room: Value = client
        .get(api("/rooms/show"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(room["sessions"].as_array().unwrap().len(), 1);
    let closed: Value = client
        .delete(api("/rooms/show"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(closed["closed_sessions"], 1);
    let gone = client
        .get(api("/rooms/show"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);

    publisher.vanish().await;
    viewer.vanish().await;
    server.stop().await;
}
