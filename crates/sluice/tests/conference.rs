//! Conferences: the WebSocket that says who publishes in a room, and WHEP
//! viewers that follow one participant (`?participant=`), with str0m peers.

mod common;

use std::time::Duration;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice_http::auth::Grants;
use sluice_testkit::{Kind, Packet, Peer, PeerOptions, VideoCodec};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(server: &TestServer, room: &str) -> String {
    format!(
        "{}/conference/{room}/ws",
        server.url.replacen("http://", "ws://", 1)
    )
}

/// The next JSON text message, within 5 s.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a message within 5 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Names in a participants message, in order.
fn names(message: &Value) -> Vec<String> {
    named(message, "participants")
}

/// Names in a speakers message, loudest first.
fn speakers(message: &Value) -> Vec<String> {
    named(message, "speakers")
}

/// The names in the list of a message of type `kind` (the list has the
/// type's name).
fn named(message: &Value, kind: &str) -> Vec<String> {
    assert_eq!(message["type"], kind, "{message}");
    message[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

fn publisher(server: &TestServer, room: &str, name: &str) -> PeerOptions {
    PeerOptions {
        participant: Some(name.into()),
        ..PeerOptions::new(&server.url, room, true)
    }
}

fn video(packets: &[Packet]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .filter(|p| p.kind == Kind::Video)
        .map(|p| p.payload[4..].to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_tells_who_publishes_as_it_changes() {
    let server = TestServer::start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&server, "meet"))
        .await
        .unwrap();
    assert!(names(&next_of_type(&mut socket, "participants").await).is_empty());

    let alice = Peer::start(publisher(&server, "meet", "alice"))
        .await
        .unwrap();
    let first = next_of_type(&mut socket, "participants").await;
    assert_eq!(names(&first), ["alice"]);
    let p = &first["participants"][0];
    assert_eq!((&p["audio"], &p["video"]), (&json!(true), &json!(true)));
    // An unnamed publisher (an OBS) gets a made-up name.
    let unnamed = Peer::start(PeerOptions::new(&server.url, "meet", true))
        .await
        .unwrap();
    let both = names(&next_of_type(&mut socket, "participants").await);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[1].starts_with('p'), "{both:?}");

    assert_eq!(alice.delete().await.unwrap(), 200);
    assert_eq!(
        names(&next_of_type(&mut socket, "participants").await),
        [both[1].clone()]
    );
    assert_eq!(unnamed.delete().await.unwrap(), 200);
    assert!(names(&next_of_type(&mut socket, "participants").await).is_empty());
    server.stop().await;
}

/// The socket says who speaks, from the audio level each packet carries:
/// a talking publisher does, a silent one does not; a client that joins
/// later hears it at once; the list empties when the speaker leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_tells_who_speaks() {
    let server = TestServer::start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&server, "talk"))
        .await
        .unwrap();
    let alice = Peer::start(publisher(&server, "talk", "alice"))
        .await
        .unwrap();
    let bob = Peer::start(PeerOptions {
        silent: true,
        ..publisher(&server, "talk", "bob")
    })
    .await
    .unwrap();
    let first = next_of_type(&mut socket, "speakers").await;
    assert_eq!(speakers(&first), ["alice"]);
    // The synthetic voice reads -25 to -34 dBov.
    let level = first["speakers"][0]["level_dbov"].as_i64().unwrap();
    assert!((-34..=-25).contains(&level), "{first}");
    // Nothing changes for a while: bob stays silent, alice's pauses (a
    // second of quiet after each second of speech) do not end her turn.
    let quiet = tokio::time::timeout(
        Duration::from_millis(2500),
        next_of_type(&mut socket, "speakers"),
    )
    .await;
    assert!(quiet.is_err(), "unexpected change: {quiet:?}");

    let (mut late, _) = tokio_tungstenite::connect_async(ws_url(&server, "talk"))
        .await
        .unwrap();
    assert_eq!(names(&next_json(&mut late).await), ["alice", "bob"]);
    assert_eq!(speakers(&next_json(&mut late).await), ["alice"]);

    assert_eq!(alice.delete().await.unwrap(), 200);
    assert!(speakers(&next_of_type(&mut socket, "speakers").await).is_empty());
    assert_eq!(bob.delete().await.unwrap(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tile_gets_its_participant_only() {
    let server = TestServer::start().await;
    let alice = Peer::start(publisher(&server, "tiles", "alice"))
        .await
        .unwrap();
    let bob = Peer::start(publisher(&server, "tiles", "bob"))
        .await
        .unwrap();
    let follow = |name: &str| PeerOptions {
        participant: Some(name.into()),
        ..PeerOptions::new(&server.url, "tiles", false)
    };
    let alice_tile = Peer::start(follow("alice")).await.unwrap();
    let bob_tile = Peer::start(follow("bob")).await.unwrap();
    let enough = |s: &sluice_testkit::peer::PeerState| {
        s.received.iter().filter(|p| p.kind == Kind::Video).count() >= 60
    };
    assert!(alice_tile.wait_for(Duration::from_secs(10), enough).await);
    assert!(bob_tile.wait_for(Duration::from_secs(10), enough).await);
    // Every video payload a tile got (but for the rewritten VP8 picture
    // id) is one its participant sent; the two publishers' payloads differ
    // in their send stamps.
    for (tile, own, other) in [(&alice_tile, &alice, &bob), (&bob_tile, &bob, &alice)] {
        let got = video(&tile.with_state(|s| s.received.clone()));
        let own = video(&own.with_state(|s| s.sent.clone()));
        let other = video(&other.with_state(|s| s.sent.clone()));
        assert!(
            got.iter().all(|p| own.contains(p)),
            "a tile shows its participant"
        );
        assert!(!got.iter().any(|p| other.contains(p)), "and nobody else");
    }

    // Alice leaves: her tile waits (it does not switch to bob).
    assert_eq!(alice.delete().await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = alice_tile.with_state(|s| s.received.len());
    let bob_before = bob_tile.with_state(|s| s.received.len());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(alice_tile.with_state(|s| s.received.len()), before);
    assert!(bob_tile.with_state(|s| s.received.len()) > bob_before + 20);

    for peer in [alice_tile, bob_tile, bob] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_again_under_a_name_replaces_the_older_session() {
    let server = TestServer::start().await;
    let first = Peer::start(publisher(&server, "again", "alice"))
        .await
        .unwrap();
    let tile = Peer::start(PeerOptions {
        participant: Some("alice".into()),
        ..PeerOptions::new(&server.url, "again", false)
    })
    .await
    .unwrap();
    let videos = |n: usize| {
        move |s: &sluice_testkit::peer::PeerState| {
            s.received.iter().filter(|p| p.kind == Kind::Video).count() >= n
        }
    };
    assert!(tile.wait_for(Duration::from_secs(10), videos(30)).await);

    // Alice's page reloads: a second WHIP session under her name.
    let second = Peer::start(publisher(&server, "again", "alice"))
        .await
        .unwrap();
    let seen = tile.with_state(|s| s.received.len());
    assert!(
        tile.wait_for(Duration::from_secs(10), videos(seen + 60))
            .await
    );
    // The tile now shows the second session's video.
    let got = video(&tile.with_state(|s| s.received[seen..].to_vec()));
    let from_second = video(&second.with_state(|s| s.sent.clone()));
    let tail = &got[got.len() - 30..];
    assert!(
        tail.iter().all(|p| from_second.contains(p)),
        "the tile follows the new session"
    );
    // The first session is gone; alice is listed once.
    assert_eq!(first.delete().await.unwrap(), 404);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&server, "again"))
        .await
        .unwrap();
    assert_eq!(
        names(&next_of_type(&mut socket, "participants").await),
        ["alice"]
    );
    // Another name in the room is left alone.
    let bob = Peer::start(publisher(&server, "again", "bob"))
        .await
        .unwrap();
    assert_eq!(
        names(&next_of_type(&mut socket, "participants").await),
        ["alice", "bob"]
    );

    for peer in [tile, second, bob] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_needs_only_its_participants_codec() {
    let server = TestServer::start().await;
    let h264 = |publish, participant: Option<&str>| PeerOptions {
        video: VideoCodec::H264,
        participant: participant.map(str::to_owned),
        ..PeerOptions::new(&server.url, "codecs", publish)
    };
    // Bob sends H.264, then Alice VP8: the room's feed is Alice's.
    let bob = Peer::start(h264(true, Some("bob"))).await.unwrap();
    assert!(bob.wait_for(Duration::from_secs(10), |s| s.connected).await);
    let alice = Peer::start(publisher(&server, "codecs", "alice"))
        .await
        .unwrap();
    assert!(
        alice
            .wait_for(Duration::from_secs(10), |s| s.connected)
            .await
    );
    // An H.264-only viewer of the room cannot decode Alice: 422.
    match Peer::start(h264(false, None)).await {
        Err(sluice_testkit::PeerError::Status(422, _)) => {}
        other => panic!("expected 422, got {:?}", other.map(|_| ())),
    }
    // As Bob's tile it only needs H.264, and gets his video.
    let tile = Peer::start(h264(false, Some("bob"))).await.unwrap();
    assert!(
        tile.wait_for(Duration::from_secs(10), |s| {
            s.received.iter().filter(|p| p.kind == Kind::Video).count() >= 30
        })
        .await
    );
    for peer in [tile, alice, bob] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_wants_a_token_when_authentication_is_on() {
    const SECRET: &str = "conference-secret";
    let server = TestServer::start_with(|c| {
        c.auth.add_keys(&format!("k1:{SECRET}")).unwrap();
    })
    .await;
    let token = |room: &str, subscribe: bool| {
        let grants = Grants {
            room: room.into(),
            publish: false,
            subscribe,
            admin: false,
        };
        common::token("k1", SECRET, "carol", grants)
    };
    let url = ws_url(&server, "secure");
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };

    // In the query: checked before the upgrade.
    let good = format!("{url}?token={}", token("secure", true));
    let (mut socket, _) = tokio_tungstenite::connect_async(good).await.unwrap();
    assert!(names(&next_of_type(&mut socket, "participants").await).is_empty());
    let bad = format!("{url}?token=not-a-token");
    assert_eq!(
        status(tokio_tungstenite::connect_async(bad).await.unwrap_err()),
        401
    );
    let other_room = format!("{url}?token={}", token("elsewhere", true));
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(other_room)
                .await
                .unwrap_err()
        ),
        403
    );
    let no_grant = format!("{url}?token={}", token("secure", false));
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(no_grant)
                .await
                .unwrap_err()
        ),
        403
    );

    // In the join message.
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let join = json!({ "type": "join", "token": token("secure", true) });
    socket
        .send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    assert!(names(&next_of_type(&mut socket, "participants").await).is_empty());
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let join = json!({ "type": "join", "token": "forged" });
    socket
        .send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let error = next_json(&mut socket).await;
    assert_eq!(
        (&error["type"], &error["status"]),
        (&json!("error"), &json!(401))
    );
    let close = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::from(4401));
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    server.stop().await;
}

/// The next message of type `kind`, skipping others, within 5 s each.
async fn next_of_type(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let message = next_json(socket).await;
        if message["type"] == kind {
            return message;
        }
    }
}

/// Name the WHIP session at `location` as this client's own; returns its
/// resource id.
async fn name_session(socket: &mut Socket, location: &str) -> String {
    let session = location.rsplit('/').next().unwrap();
    let message = json!({ "type": "publishing", "session": session });
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
    session.to_owned()
}

/// A conference page that names its WHIP session on the WebSocket hears
/// why the server ended it: the same name published again elsewhere (even
/// when that happened before the page named it), an admin removed it, an
/// admin closed the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishing_client_hears_why_its_session_ended() {
    const SECRET: &str = "ends-secret";
    let server = TestServer::start_with(|c| {
        c.auth.add_keys(&format!("k1:{SECRET}")).unwrap();
    })
    .await;
    let token = |sub: &str, grants: Grants| common::token("k1", SECRET, sub, grants);
    let alice = token(
        "alice",
        Grants {
            room: "ends".into(),
            publish: true,
            subscribe: true,
            admin: false,
        },
    );
    let admin = token(
        "ops",
        Grants {
            room: "*".into(),
            admin: true,
            ..Grants::default()
        },
    );
    let whip = format!("{}/whip/ends?participant=alice", server.url);
    let offer = common::audio_offer("sendonly");
    let publish = || sluice_testkit::peer::post_offer(&whip, &offer, Some(&alice));
    let url = format!("{}?token={alice}", ws_url(&server, "ends"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_of_type(&mut socket, "participants").await;

    let (_, first) = publish().await.unwrap();
    let (_, second) = publish().await.unwrap();
    name_session(&mut socket, &first).await; // already replaced
    let ended = next_of_type(&mut socket, "ended").await;
    assert_eq!(ended["reason"], "replaced");

    // Another identity cannot follow alice's session: naming it tells bob
    // nothing (his next message is the room's next change).
    let bob = token(
        "bob",
        Grants {
            room: "ends".into(),
            publish: true,
            subscribe: true,
            admin: false,
        },
    );
    let url = format!("{}?token={bob}", ws_url(&server, "ends"));
    let (mut bob_socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_of_type(&mut bob_socket, "participants").await;
    name_session(&mut bob_socket, &first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_whip = format!("{}/whip/ends?participant=bob", server.url);
    sluice_testkit::peer::post_offer(&bob_whip, &offer, Some(&bob))
        .await
        .unwrap();
    next_of_type(&mut bob_socket, "participants").await;

    let client = reqwest::Client::new();
    let second_id = name_session(&mut socket, &second).await;
    let removed = client
        .delete(format!(
            "{}/api/rooms/ends/participants/{second_id}",
            server.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status().as_u16(), 200);
    assert_eq!(
        next_of_type(&mut socket, "ended").await["reason"],
        "removed"
    );

    let (_, third) = publish().await.unwrap();
    name_session(&mut socket, &third).await;
    let closed = client
        .delete(format!("{}/api/rooms/ends", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status().as_u16(), 200);
    assert_eq!(
        next_of_type(&mut socket, "ended").await["reason"],
        "room_closed"
    );
    server.stop().await;
}

/// A client that sends more than a conference client ever needs loses its
/// socket; the server goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_message_closes_only_that_socket() {
    let server = TestServer::start().await;
    let (mut greedy, _) = tokio_tungstenite::connect_async(ws_url(&server, "big"))
        .await
        .unwrap();
    next_of_type(&mut greedy, "participants").await;
    let huge = format!(
        r#"{{"type": "publishing", "session": "{}"}}"#,
        "x".repeat(100_000)
    );
    let _ = greedy.send(Message::Text(huge.into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match greedy.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket is closed");

    let (mut other, _) = tokio_tungstenite::connect_async(ws_url(&server, "big"))
        .await
        .unwrap();
    assert!(names(&next_of_type(&mut other, "participants").await).is_empty());
    server.stop().await;
}
