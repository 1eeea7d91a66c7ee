//! WHIP in, WHEP out, through a running server, with str0m client peers on
//! loopback: what the viewer receives is what the publisher sent.

mod common;

use std::time::Duration;

use common::TestServer;
use sluice_testkit::media::{layer_tag, vp8_starts_keyframe};
use sluice_testkit::peer::{IceConnectionState, PeerError, PeerState};
use sluice_testkit::{Kind, Loss, Packet, Peer, PeerOptions, VideoCodec};

fn options(url: &str, room: &str, publish: bool) -> PeerOptions {
    PeerOptions::new(url, room, publish)
}

/// A publisher of synthetic q/h/f simulcast video (and audio).
async fn simulcast_publisher(url: &str, room: &str) -> Peer {
    Peer::start(PeerOptions {
        simulcast: true,
        ..options(url, room, true)
    })
    .await
    .unwrap()
}

/// Start a peer and wait until ICE and DTLS are up.
async fn connected(options: PeerOptions) -> Peer {
    let peer = Peer::start(options).await.unwrap();
    assert!(
        peer.wait_for(Duration::from_secs(10), |s| s.connected)
            .await,
        "peer connects"
    );
    peer
}

fn of_kind(packets: &[Packet], kind: Kind) -> Vec<Packet> {
    packets.iter().filter(|p| p.kind == kind).cloned().collect()
}

fn video_received(s: &PeerState) -> usize {
    s.received.iter().filter(|p| p.kind == Kind::Video).count()
}

/// Every received packet of `kind`, in order, is the next sent packet:
/// identical bytes (but for the VP8 picture ids an SFU rewrites), the same
/// audio level, consecutive sequence numbers, no gaps.
fn assert_received_is_sent_in_order(
    codec: VideoCodec,
    sent: &[Packet],
    received: &[Packet],
    kind: Kind,
) {
    let body = |p: &Packet| -> Vec<u8> {
        match p.kind {
            Kind::Video => p.payload[codec.rewritable_prefix()..].to_vec(),
            Kind::Audio => p.payload.to_vec(),
        }
    };
    let sent = of_kind(sent, kind);
    let received = of_kind(received, kind);
    assert!(!received.is_empty(), "no {kind:?} received");
    let start = sent
        .iter()
        .position(|s| body(s) == body(&received[0]))
        .expect("first received packet was sent");
    for (i, r) in received.iter().enumerate() {
        let s = &sent[start + i];
        assert_eq!(
            body(s),
            body(r),
            "{kind:?} packet {i} differs from what was sent"
        );
        assert_eq!(
            s.audio_level, r.audio_level,
            "{kind:?} packet {i}: the audio level extension goes along"
        );
        if i > 0 {
            assert_eq!(
                r.seq,
                received[i - 1].seq + 1,
                "{kind:?} sequence gap at {i}"
            );
            assert_eq!(
                r.ts.wrapping_sub(received[i - 1].ts),
                s.ts.wrapping_sub(sent[start + i - 1].ts),
                "{kind:?} timestamp step at {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_receives_exactly_what_the_publisher_sends() {
    let server = TestServer::start().await;
    let publisher = connected(options(&server.url, "bytes", true)).await;
    let viewer = Peer::start(options(&server.url, "bytes", false))
        .await
        .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video_received(s) >= 90)
            .await,
        "viewer receives 30 frames of video"
    );
    let received = viewer.with_state(|s| s.received.clone());
    let video = of_kind(&received, Kind::Video);
    assert!(
        vp8_starts_keyframe(&video[0].payload),
        "the viewer starts at a keyframe"
    );
    assert!(video[0].seq < 1 << 15, "sequence numbers start low (ROC 0)");
    let sent = publisher.with_state(|s| s.sent.clone());
    assert_received_is_sent_in_order(VideoCodec::Vp8, &sent, &received, Kind::Video);
    assert_received_is_sent_in_order(VideoCodec::Vp8, &sent, &received, Kind::Audio);
    // Joining asked the publisher for a keyframe instead of waiting for one.
    assert!(publisher.with_state(|s| s.keyframe_requests) >= 1);

    // A viewer PLI reaches the publisher.
    let before = publisher.with_state(|s| s.keyframe_requests);
    tokio::time::sleep(Duration::from_millis(600)).await; // past the throttle interval
    viewer.request_keyframe();
    assert!(
        publisher
            .wait_for(Duration::from_secs(5), |s| s.keyframe_requests > before)
            .await,
        "PLI forwarded upstream"
    );

    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    server.stop().await;
}

/// A keyframe that reaches the server while a viewer is still connecting
/// (here: the one the first viewer's join asked for, as the second viewer
/// posts its offer) is kept for it: the viewer starts on it as soon as it
/// connects, rather than on the publisher's next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_starts_on_a_keyframe_that_came_while_it_connected() {
    let server = TestServer::start().await;
    let publisher = connected(options(&server.url, "early", true)).await;
    let first = Peer::start(options(&server.url, "early", false))
        .await
        .unwrap();
    assert!(
        first
            .wait_for(Duration::from_secs(10), |s| video_received(s) >= 1)
            .await
    );
    let viewer = Peer::start(options(&server.url, "early", false))
        .await
        .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video_received(s) >= 30)
            .await,
        "viewer receives video"
    );
    let (connected_at, received) = viewer.with_state(|s| (s.connected_at, s.received.clone()));
    let connected_at = connected_at.expect("connected");
    let video = of_kind(&received, Kind::Video);
    assert!(
        vp8_starts_keyframe(&video[0].payload),
        "starts at a keyframe"
    );
    let sent = publisher.with_state(|s| s.sent.clone());
    let body = |p: &Packet| p.payload[VideoCodec::Vp8.rewritable_prefix()..].to_vec();
    let keyframe = sent
        .iter()
        .find(|s| s.kind == Kind::Video && body(s) == body(&video[0]))
        .expect("the keyframe was sent");
    assert!(
        keyframe.at < connected_at,
        "the viewer started on a keyframe sent {:?} after it connected, not on a kept one",
        keyframe.at - connected_at
    );
    // What followed the kept keyframe came too, then the live packets,
    // without a gap.
    assert_received_is_sent_in_order(VideoCodec::Vp8, &sent, &received, Kind::Video);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_viewers_get_the_top_layer_without_gaps() {
    let server = TestServer::start().await;
    let publisher = simulcast_publisher(&server.url, "layers").await;
    assert!(
        publisher
            .wait_for(Duration::from_secs(10), |s| s.connected)
            .await
    );
    let viewer = Peer::start(options(&server.url, "layers", false))
        .await
        .unwrap();
    // It starts on what the first bandwidth estimate carries and moves up
    // as the estimate grows.
    assert!(
        viewer
            .wait_for(Duration::from_secs(15), |s| s.video_layers[3] >= 150)
            .await
    );
    let video = of_kind(&viewer.with_state(|s| s.received.clone()), Kind::Video);
    // One continuous stream, whichever layers it was made of.
    for pair in video.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "no gap across layer switches");
    }
    // It settles on the full layer (f, tag 3): the last 100 packets are f's.
    let tags: Vec<Option<u8>> = video[video.len() - 100..]
        .iter()
        .map(|p| layer_tag(VideoCodec::Vp8, &p.payload))
        .collect();
    assert!(tags.iter().all(|t| *t == Some(3)), "layers: {tags:?}");
    // The publisher sent all three layers.
    let sent_tags: std::collections::BTreeSet<Option<u8>> = publisher.with_state(|s| {
        s.sent
            .iter()
            .filter(|p| p.kind == Kind::Video)
            .map(|p| layer_tag(VideoCodec::Vp8, &p.payload))
            .collect()
    });
    assert_eq!(sent_tags.len(), 3);
    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    server.stop().await;
}

/// Video packets `peer` receives per layer tag (1 q, 2 h, 3 f) while it
/// receives its next `count` video packets.
async fn layers_of_next(peer: &Peer, count: u64) -> [u64; 4] {
    let before = peer.with_state(|s| s.video_layers);
    let total = |l: [u64; 4]| l.iter().sum::<u64>();
    assert!(
        peer.wait_for(Duration::from_secs(10), |s| total(s.video_layers)
            >= total(before) + count)
            .await,
        "video keeps flowing"
    );
    let after = peer.with_state(|s| s.video_layers);
    std::array::from_fn(|i| after[i] - before[i])
}

/// Whether `layers` (packets per layer tag) came from layer `tag` only.
fn only_layer(layers: [u64; 4], tag: usize) -> bool {
    layers[tag] > 0 && (0..4).all(|t| t == tag || layers[t] == 0)
}

/// Whether `peer` receives 30 more packets of layer `tag` within 15 s.
async fn reaches_layer(peer: &Peer, tag: usize) -> bool {
    let before = peer.with_state(|s| s.video_layers[tag]);
    peer.wait_for(Duration::from_secs(15), |s| {
        s.video_layers[tag] > before + 30
    })
    .await
}

/// Let a viewer's layer change take effect (it waits for a keyframe of
/// the new layer), then return what it receives.
async fn settled_layers(peer: &Peer) -> [u64; 4] {
    layers_of_next(peer, 60).await;
    layers_of_next(peer, 60).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_choose_their_simulcast_layer() {
    let server = TestServer::start().await;
    let publisher = simulcast_publisher(&server.url, "choice").await;
    // The low viewer reports what it receives as its estimate, as a
    // browser does (REMB): without an estimator of its own (the default)
    // the server must not take that for a limit, or a viewer on q could
    // never go back up.
    let low = Peer::start(PeerOptions {
        layer: Some("q".into()),
        remb_kbps: Some(200),
        ..options(&server.url, "choice", false)
    })
    .await
    .unwrap();
    let auto = Peer::start(options(&server.url, "choice", false))
        .await
        .unwrap();
    let l = settled_layers(&low).await;
    assert!(only_layer(l, 1), "?layer=q gets q only: {l:?}");
    let a = settled_layers(&auto).await;
    assert!(only_layer(a, 3), "the default gets f only: {a:?}");

    // Switch at run time through the layer resource, then back to auto.
    assert_eq!(low.choose_layer(Some("h")).await.unwrap(), 204);
    let l = settled_layers(&low).await;
    assert!(only_layer(l, 2), "after choosing h: {l:?}");
    assert_eq!(low.choose_layer(None).await.unwrap(), 204);
    // Back on automatic it moves up at f's next keyframe.
    assert!(reaches_layer(&low, 3).await, "f arrives again");
    let l = settled_layers(&low).await;
    assert!(only_layer(l, 3), "after going back to auto: {l:?}");
    let a = settled_layers(&auto).await;
    assert!(only_layer(a, 3), "the other viewer never moved: {a:?}");

    // Errors: an unknown layer, a publisher's resource.
    assert_eq!(low.choose_layer(Some("x")).await.unwrap(), 400);
    assert_eq!(publisher.choose_layer(Some("q")).await.unwrap(), 409);
    let url = format!("{}/whep/choice?layer=huge", server.url);
    match sluice_testkit::peer::post_offer(&url, "v=0", None).await {
        Err(PeerError::Status(400, body)) => assert!(body.contains("unknown layer"), "{body}"),
        other => panic!("expected 400, got {other:?}"),
    }
    // A WHEP answer links to the layer resource (the WHEP layer extension).
    let response = reqwest::Client::new()
        .post(format!("{}/whep/choice", server.url))
        .header("content-type", "application/sdp")
        .body(common::audio_offer("recvonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let link = response.headers()["link"].to_str().unwrap();
    assert_eq!(
        link,
        format!("<{location}/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\"")
    );

    for peer in [low, auto, publisher] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_a_narrow_link_gets_a_layer_that_fits() {
    let server = TestServer::start_with(|c| c.media.viewer_start_bitrate_kbps = 1000).await;
    let publisher = simulcast_publisher(&server.url, "narrow").await;
    // 400 kbit/s to this viewer: only q (about 150 kbit/s) fits. Viewers
    // start on h (what the starting estimate of 1 Mbit/s carries): this one
    // must move down, the other one up to f. The wide one reports a low
    // REMB (as a browser's REMB stays near what it receives): the server's
    // own estimate is what counts, or it would stay low for good.
    let narrow = Peer::start(PeerOptions {
        loss: Some(Loss {
            to_peer_kbps: Some(400),
            ..Loss::default()
        }),
        ..options(&server.url, "narrow", false)
    })
    .await
    .unwrap();
    let wide = Peer::start(PeerOptions {
        remb_kbps: Some(200),
        ..options(&server.url, "narrow", false)
    })
    .await
    .unwrap();
    // Wait for each to reach its layer (the estimators take a few
    // seconds), then look at what arrives.
    assert!(
        reaches_layer(&narrow, 1).await,
        "the narrow viewer moves to q"
    );
    assert!(reaches_layer(&wide, 3).await, "the wide viewer moves to f");
    let n = settled_layers(&narrow).await;
    assert!(only_layer(n, 1), "the narrow viewer gets q: {n:?}");
    let w = settled_layers(&wide).await;
    assert!(only_layer(w, 3), "the wide viewer gets f: {w:?}");
    // The estimates are in the metrics.
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_bandwidth_estimate_bps_count "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(count > 0, "bandwidth estimates observed");
    for peer in [narrow, wide, publisher] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

/// Without an estimator (the default), a viewer behind a narrow link loses
/// most of the best layer: its receiver reports say so, and it moves to a
/// layer that fits, while a viewer that loses nothing stays on the best.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_reports_show_loss_moves_to_a_layer_that_fits() {
    let server = TestServer::start().await;
    let publisher = simulcast_publisher(&server.url, "lossy").await;
    let narrow = Peer::start(PeerOptions {
        loss: Some(Loss {
            to_peer_kbps: Some(400),
            ..Loss::default()
        }),
        ..options(&server.url, "lossy", false)
    })
    .await
    .unwrap();
    let wide = Peer::start(options(&server.url, "lossy", false))
        .await
        .unwrap();
    assert!(reaches_layer(&wide, 3).await, "the wide viewer gets f");
    assert!(
        reaches_layer(&narrow, 1).await,
        "the narrow viewer moves to q"
    );
    let n = settled_layers(&narrow).await;
    assert!(only_layer(n, 1), "the narrow viewer gets q: {n:?}");
    let lost = narrow.with_state(|s| s.rx[1].lost());
    let w = settled_layers(&wide).await;
    assert!(only_layer(w, 3), "the wide viewer stays on f: {w:?}");
    // On q, what the narrow viewer's link carries, it loses next to nothing.
    let more = narrow.with_state(|s| s.rx[1].lost()) - lost;
    assert!(more < 10, "{more} more packets lost on q");
    // The admin API shows the narrow viewer's estimate (far under the
    // 2 Mbit/s of f; it grows again after a hold), and none for the wide
    // one.
    let room: serde_json::Value = reqwest::get(format!("{}/api/rooms/lossy", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let estimate = |peer: &Peer| {
        let id = peer.resource.rsplit('/').next().unwrap();
        let sessions = room["sessions"].as_array().unwrap();
        let session = sessions.iter().find(|s| s["id"] == id).unwrap();
        session["estimate_kbps"].as_u64()
    };
    assert!(
        estimate(&narrow).is_some_and(|kbps| (100..1000).contains(&kbps)),
        "{room}"
    );
    assert_eq!(estimate(&wide), None, "{room}");
    for peer in [narrow, wide, publisher] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_sessions_carry_audio_and_its_level() {
    let server = TestServer::start().await;
    let audio_only = |publish| PeerOptions {
        audio_only: true,
        ..options(&server.url, "radio", publish)
    };
    let publisher = Peer::start(audio_only(true)).await.unwrap();
    let viewer = Peer::start(audio_only(false)).await.unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| s.received.len() >= 50)
            .await,
        "audio arrives"
    );
    let received = viewer.with_state(|s| s.received.clone());
    assert!(received.iter().all(|p| p.kind == Kind::Audio));
    assert!(received.iter().all(|p| p.audio_level.is_some()));
    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_follows_a_new_publisher_without_renegotiation() {
    let server = TestServer::start().await;
    // The viewer comes first and waits.
    let viewer = connected(options(&server.url, "relay", false)).await;

    let first = Peer::start(options(&server.url, "relay", true))
        .await
        .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video_received(s) >= 30)
            .await
    );
    assert_eq!(first.delete().await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = viewer.with_state(|s| s.received.len());

    let second = Peer::start(options(&server.url, "relay", true))
        .await
        .unwrap();
    let switched = std::time::Instant::now();
    assert!(
        viewer
            .wait_for(Duration::from_secs(2), |s| {
                s.received[before..]
                    .iter()
                    .filter(|p| p.kind == Kind::Video)
                    .count()
                    >= 3
            })
            .await,
        "video from the new publisher within 2 s"
    );
    println!("switch to the new publisher took {:?}", switched.elapsed());
    let received = viewer.with_state(|s| s.received.clone());
    // One continuous stream across both publishers: no gap, no repeat.
    for kind in [Kind::Video, Kind::Audio] {
        let packets = of_kind(&received, kind);
        for pair in packets.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "{kind:?} sequence continues");
        }
    }
    let new_video: Vec<_> = of_kind(&received[before..], Kind::Video);
    assert!(
        vp8_starts_keyframe(&new_video[0].payload),
        "switch happens at a keyframe"
    );

    assert_eq!(second.delete().await.unwrap(), 200);
    assert_eq!(viewer.delete().await.unwrap(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_video_codec_reaches_viewers_that_can_decode_it() {
    let server = TestServer::start().await;
    for codec in [VideoCodec::H264, VideoCodec::Vp9, VideoCodec::Av1] {
        let room = format!("{codec:?}").to_lowercase();
        let with_codec = |publish| PeerOptions {
            video: codec,
            ..options(&server.url, &room, publish)
        };
        let publisher = connected(with_codec(true)).await;
        let viewer = Peer::start(with_codec(false)).await.unwrap();
        assert!(
            viewer
                .wait_for(Duration::from_secs(10), |s| video_received(s) >= 90)
                .await,
            "{codec:?} video reaches the viewer"
        );
        let received = viewer.with_state(|s| s.received.clone());
        let video = of_kind(&received, Kind::Video);
        assert!(
            codec.starts_keyframe(&video[0].payload),
            "{codec:?} starts at a keyframe"
        );
        let sent = publisher.with_state(|s| s.sent.clone());
        assert_received_is_sent_in_order(codec, &sent, &received, Kind::Video);

        // A viewer that can only decode VP8 is told why it cannot watch.
        match Peer::start(options(&server.url, &room, false)).await {
            Err(PeerError::Status(422, body)) => {
                let name = format!("{codec:?}").to_uppercase();
                assert!(body.to_uppercase().contains(&name), "{body}");
            }
            Err(e) => panic!("expected 422 for {codec:?}, got {e}"),
            Ok(_) => panic!("a VP8-only viewer was accepted for a {codec:?} room"),
        }
        assert_eq!(viewer.delete().await.unwrap(), 200);
        assert_eq!(publisher.delete().await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_keep_media_flowing() {
    let server = TestServer::start().await;
    let publisher = Peer::start(options(&server.url, "restart", true))
        .await
        .unwrap();
    let viewer = Peer::start(options(&server.url, "restart", false))
        .await
        .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video_received(s) >= 30)
            .await
    );

    // The publisher restarts: its old candidate pairs are gone, so media
    // only keeps coming if the server answered checks with the new
    // credentials.
    for (peer, name) in [(&publisher, "publisher"), (&viewer, "viewer")] {
        peer.restart_ice();
        assert!(
            peer.wait_for(Duration::from_secs(5), |s| !s.ice_restarts.is_empty())
                .await,
            "{name} restart answered"
        );
        assert_eq!(peer.with_state(|s| s.ice_restarts.clone()), vec![200]);
        // The peer's ICE agent flushed its pairs and checked again with
        // the server's new credentials: it must complete a second time.
        let completed_twice = |s: &PeerState| {
            s.ice_states
                .iter()
                .filter(|st| {
                    matches!(
                        st,
                        IceConnectionState::Completed | IceConnectionState::Connected
                    )
                })
                .count()
                >= 2
                && s.ice_states.last() != Some(&IceConnectionState::Checking)
        };
        assert!(
            peer.wait_for(Duration::from_secs(5), completed_twice).await,
            "{name} ICE completes after the restart: {:?}",
            peer.with_state(|s| s.ice_states.clone())
        );
        let before = viewer.with_state(video_received);
        assert!(
            viewer
                .wait_for(Duration::from_secs(5), |s| video_received(s) >= before + 60)
                .await,
            "video keeps flowing after the {name}'s ICE restart"
        );
    }
    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_is_repaired_on_both_legs() {
    lost_video_is_repaired(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_is_repaired_through_the_direct_egress() {
    lost_video_is_repaired(true).await;
}

/// Losses on the way in and out are repaired, with the viewer on str0m's
/// egress or on the direct one (`media.direct_egress`).
async fn lost_video_is_repaired(direct_egress: bool) {
    let server = TestServer::start_with(|c| c.media.direct_egress = direct_egress).await;
    // Every 15th video packet is lost on the way in (the server must NACK
    // the publisher) and every 15th on the way out (the server must answer
    // the viewer's NACKs from its retransmission buffer).
    let lossy = |publish, loss| PeerOptions {
        loss: Some(loss),
        ..options(&server.url, "lossy", publish)
    };
    let publisher = connected(lossy(
        true,
        Loss {
            to_server_every: Some(15),
            ..Loss::default()
        },
    ))
    .await;
    let viewer = Peer::start(lossy(
        false,
        Loss {
            to_peer_every: Some(15),
            ..Loss::default()
        },
    ))
    .await
    .unwrap();
    assert!(
        viewer
            .wait_for(Duration::from_secs(10), |s| video_received(s) >= 300)
            .await
    );
    // Let the last retransmissions arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        publisher.dropped() >= 10,
        "publisher leg lost {}",
        publisher.dropped()
    );
    assert!(
        viewer.dropped() >= 10,
        "viewer leg lost {}",
        viewer.dropped()
    );

    let sent = of_kind(&publisher.with_state(|s| s.sent.clone()), Kind::Video);
    let mut received = of_kind(&viewer.with_state(|s| s.received.clone()), Kind::Video);
    received.sort_by_key(|p| p.seq);
    received.dedup_by_key(|p| p.seq);
    let first = received[0].seq;
    // Everything up to shortly before the end must be there (the newest
    // packets may still be waiting for their retransmission).
    let complete = &received[..received.len() - 30];
    for (i, p) in complete.iter().enumerate() {
        assert_eq!(
            p.seq,
            first + i as u64,
            "video packet {} never arrived (first received: {first})",
            first + i as u64
        );
    }
    let start = sent
        .iter()
        .position(|s| s.payload[VP8_PREFIX..] == received[0].payload[VP8_PREFIX..])
        .expect("first received packet was sent");
    for (i, p) in complete.iter().enumerate() {
        assert_eq!(
            sent[start + i].payload[VP8_PREFIX..],
            p.payload[VP8_PREFIX..]
        );
    }
    // The NACKs on both legs show in the metrics (stats come once a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for direction in ["from_viewers", "to_publishers"] {
        let series = format!("sluice_nacks_total{{direction=\"{direction}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0.0);
        assert!(count >= 5.0, "{series}= {count}");
    }
    assert_eq!(viewer.delete().await.unwrap(), 200);
    assert_eq!(publisher.delete().await.unwrap(), 200);
    server.stop().await;
}

/// The VP8 descriptor bytes an SFU may rewrite.
const VP8_PREFIX: usize = sluice_testkit::VP8_DESCRIPTOR_LEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_is_dropped_after_the_consent_timeout() {
    let server = TestServer::start_with(|c| c.media.consent_timeout_secs = 2).await;
    let publisher = connected(options(&server.url, "vanish", true)).await;
    let resource = publisher.resource.clone();
    publisher.vanish().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The session is gone: deleting it now finds nothing.
    let status = reqwest::Client::new()
        .delete(&resource)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);
    server.stop().await;
}
