//! The WHIP/WHEP HTTP contract: status codes, headers and problem bodies.

mod common;

use common::{TestServer, audio_offer};
use sluice_testkit::{Peer, PeerOptions};

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .header("origin", "http://example.test")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The problem body of an error response, checked to be RFC 9457 JSON.
async fn problem(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "errors are problem details"
    );
    assert!(
        response
            .headers()
            .contains_key("access-control-allow-origin"),
        "CORS on errors"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("\"status\":{status}")), "{body}");
    body
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let server = TestServer::start().await;
    let whip = format!("{}/whip/room1", server.url);

    let body = problem(post(&whip, "text/plain", "v=0").await, 415).await;
    assert!(body.contains("application/sdp"), "{body}");

    let body = problem(post(&whip, "application/sdp", "this is not sdp").await, 400).await;
    assert!(body.contains("malformed SDP"), "{body}");

    let huge = vec![b'a'; 70 * 1024];
    problem(post(&whip, "application/sdp", huge).await, 413).await;

    let body = problem(
        post(
            &format!("{}/whip/bad.room!", server.url),
            "application/sdp",
            "v=0",
        )
        .await,
        400,
    )
    .await;
    assert!(body.contains("room name"), "{body}");

    let body = problem(
        post(
            &format!("{}/whep/room1", server.url),
            "application/sdp",
            "v=0\r\n",
        )
        .await,
        400,
    )
    .await;
    assert!(body.contains("malformed SDP"), "{body}");

    // Offers whose media flow the wrong way for the endpoint.
    let body = problem(
        post(&whip, "application/sdp", audio_offer("recvonly")).await,
        400,
    )
    .await;
    assert!(body.contains("must send"), "{body}");
    let whep = format!("{}/whep/room1", server.url);
    let body = problem(
        post(&whep, "application/sdp", audio_offer("sendonly")).await,
        400,
    )
    .await;
    assert!(body.contains("must receive"), "{body}");

    let client = reqwest::Client::new();
    let gone = client
        .delete(format!(
            "{}/resource/00000000000000000000000000000000",
            server.url
        ))
        .send()
        .await
        .unwrap();
    problem(gone, 404).await;
    server.stop().await;
}

#[tokio::test]
async fn endpoints_answer_options_and_refuse_other_methods() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for endpoint in ["whip", "whep"] {
        let url = format!("{}/{endpoint}/room1", server.url);
        let options = client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "http://example.test")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(options.status().is_success());
        assert_eq!(options.headers()["access-control-allow-origin"], "*");
        let plain = client
            .request(reqwest::Method::OPTIONS, &url)
            .send()
            .await
            .unwrap();
        assert_eq!(plain.headers()["accept-post"], "application/sdp");
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let r = client.request(method.clone(), &url).send().await.unwrap();
            assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
            let body = problem(r, 405).await;
            assert!(body.contains("not allowed"), "{method} {url}: {body}");
        }
    }
    let resource = format!("{}/resource/abc", server.url);
    let r = client.get(&resource).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    server.stop().await;
}

#[tokio::test]
async fn created_sessions_carry_location_etag_and_cors() {
    let server = TestServer::start().await;
    // A real offer from a str0m peer, sent by hand to read the headers.
    let peer = Peer::start(PeerOptions {
        token: Some("ignored-while-auth-is-off".into()),
        ..PeerOptions::new(&server.url, "headers", true)
    })
    .await
    .unwrap();
    assert!(
        peer.resource
            .starts_with(&format!("{}/resource/", server.url))
    );
    let id = peer.resource.rsplit('/').next().unwrap().to_owned();
    assert_eq!(id.len(), 32, "128-bit resource id");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));

    let offer = audio_offer("sendonly");
    let r = post(
        &format!("{}/whip/headers", server.url),
        "application/sdp",
        offer,
    )
    .await;
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let answer = r.text().await.unwrap();
    assert_eq!(status, 201, "{answer}");
    assert_eq!(h["content-type"], "application/sdp");
    assert!(h["location"].to_str().unwrap().starts_with("/resource/"));
    assert!(h.contains_key("etag"));
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["location", "etag", "link", "accept-patch"] {
        assert!(exposed.contains(name), "{name} exposed: {exposed}");
    }
    assert!(
        answer.contains("a=recvonly"),
        "WHIP answers are recvonly:\n{answer}"
    );
    assert!(
        answer.contains("a=candidate:"),
        "the answer has the server candidate"
    );
    assert!(answer.contains("a=ice-lite"));

    assert_eq!(peer.delete().await.unwrap(), 200);
    server.stop().await;
}

#[tokio::test]
async fn patch_trickles_and_restarts_ice_under_if_match() {
    let server = TestServer::start().await;
    let created = post(
        &format!("{}/whip/patch", server.url),
        "application/sdp",
        audio_offer("sendonly"),
    )
    .await;
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(
        created.headers()["accept-patch"],
        "application/trickle-ice-sdpfrag"
    );
    let etag = created.headers()["etag"].to_str().unwrap().to_owned();
    let resource = format!(
        "{}{}",
        server.url,
        created.headers()["location"].to_str().unwrap()
    );
    let client = reqwest::Client::new();
    let patch = |if_match: Option<&str>, content_type: &str, body: &str| {
        let mut request = client
            .patch(&resource)
            .header("content-type", content_type)
            .body(body.to_owned());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send()
    };
    let candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
    let sdpfrag = "application/trickle-ice-sdpfrag";

    problem(patch(None, sdpfrag, candidate).await.unwrap(), 428).await;
    problem(
        patch(Some("\"other\""), sdpfrag, candidate).await.unwrap(),
        412,
    )
    .await;
    problem(
        patch(Some(&etag), "application/sdp", candidate)
            .await
            .unwrap(),
        415,
    )
    .await;
    let body = problem(
        patch(Some(&etag), sdpfrag, "a=candidate:nonsense\r\n")
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(body.contains("candidate"), "{body}");

    // Trickle: 204, same ICE session.
    let trickled = patch(Some(&etag), sdpfrag, candidate).await.unwrap();
    assert_eq!(trickled.status().as_u16(), 204);
    assert_eq!(trickled.headers()["etag"].to_str().unwrap(), etag);

    // ICE restart: 200 with the server's new credentials and a new ETag.
    let restart = "a=ice-ufrag:newu\r\na=ice-pwd:newpasswordnewpassword12\r\n";
    let restarted = patch(Some("*"), sdpfrag, restart).await.unwrap();
    assert_eq!(restarted.status().as_u16(), 200);
    assert_eq!(restarted.headers()["content-type"], sdpfrag);
    let new_etag = restarted.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let answer = restarted.text().await.unwrap();
    assert!(
        answer.contains("a=ice-ufrag:") && answer.contains("a=ice-pwd:"),
        "{answer}"
    );
    assert!(answer.contains("a=candidate:"), "{answer}");
    assert!(
        !answer.contains(etag.trim_matches('"')),
        "new server ufrag:\n{answer}"
    );
    // The old ICE session's tag no longer matches.
    problem(patch(Some(&etag), sdpfrag, candidate).await.unwrap(), 412).await;
    let gone = client
        .patch(format!(
            "{}/resource/ffffffffffffffffffffffffffffffff",
            server.url
        ))
        .header("content-type", sdpfrag)
        .header("if-match", "*")
        .body(candidate)
        .send()
        .await
        .unwrap();
    problem(gone, 404).await;
    server.stop().await;
}

/// An offer shaped like OBS's WHIP output (libdatachannel): Opus on 111 and
/// H.264 on 96 with libdatachannel's default profile, no RTX, one BUNDLE.
const OBS_LIKE_OFFER: &str = "v=0\r\no=rtc 1 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=group:BUNDLE 0 1\r\na=msid-semantic:WMS *\r\na=ice-options:ice2,trickle\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
    a=ssrc:1111 cname:obs\r\na=msid:obs audio\r\na=rtcp-mux\r\na=setup:actpass\r\n\
    a=ice-ufrag:obsu\r\na=ice-pwd:obspasswordobspassword12\r\n\
    a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n\
    a=ssrc:2222 cname:obs\r\na=msid:obs video\r\na=rtcp-mux\r\na=setup:actpass\r\n\
    a=ice-ufrag:obsu\r\na=ice-pwd:obspasswordobspassword12\r\n\
    a=rtpmap:96 H264/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 goog-remb\r\n\
    a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1\r\n";

#[tokio::test]
async fn an_obs_shaped_offer_gets_h264_and_opus() {
    let server = TestServer::start().await;
    let r = reqwest::Client::new()
        .post(format!("{}/whip/obs", server.url))
        .header("content-type", "application/sdp")
        .bearer_auth("obs-stream-key")
        .body(OBS_LIKE_OFFER)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let answer = r.text().await.unwrap();
    assert_eq!(status, 201, "{answer}");
    assert!(answer.contains("a=rtpmap:96 H264/90000"), "{answer}");
    assert!(answer.contains("packetization-mode=1"), "{answer}");
    assert!(answer.contains("a=rtpmap:111 opus/48000/2"), "{answer}");
    assert_eq!(answer.matches("a=recvonly").count(), 2, "{answer}");
    server.stop().await;
}
