//! Token authentication, case by case: who may publish, watch, and end or
//! patch a session.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestServer, audio_offer};
use sluice_http::auth::{Claims, Grants, mint, now_secs};

const K1: &str = "secret-number-one";
const K2: &str = "secret-number-two";

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.add_keys(&format!("k1:{K1},k2:{K2}")).unwrap();
    })
    .await
}

fn claims(room: &str, publish: bool, subscribe: bool) -> Claims {
    Claims {
        iss: "k1".into(),
        sub: "alice".into(),
        exp: now_secs() + 600,
        nbf: None,
        grants: Grants {
            room: room.into(),
            publish,
            subscribe,
            admin: false,
        },
    }
}

fn token(c: &Claims, secret: &str) -> String {
    mint(c, secret.as_bytes()).unwrap()
}

/// A token assembled by hand (for what a correct library refuses to make).
fn raw_token(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        signature
    )
}

async fn post(url: &str, token: Option<&str>, offer: String) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/sdp")
        .body(offer);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn every_token_case_gets_the_right_status() {
    let server = server().await;
    let whip = format!("{}/whip/room1", server.url);
    let whep = format!("{}/whep/room1", server.url);
    let other_room = format!("{}/whip/room2", server.url);
    let good = claims("room1", true, false);
    let expired = Claims {
        exp: now_secs() - 120,
        ..good.clone()
    };
    let future = Claims {
        nbf: Some(now_secs() + 600),
        ..good.clone()
    };
    let unknown_kid = Claims {
        iss: "k9".into(),
        ..good.clone()
    };
    let admin_everywhere = Claims {
        grants: Grants {
            room: "*".into(),
            admin: true,
            ..Grants::default()
        },
        ..good.clone()
    };
    let star_without_admin = claims("*", true, true);
    let payload = format!(
        r#"{{"iss":"k1","sub":"alice","exp":{},"grants":{{"room":"room1","publish":true}}}}"#,
        now_secs() + 600
    );
    let no_exp = r#"{"iss":"k1","sub":"alice","grants":{"room":"room1","publish":true}}"#;
    let cases: Vec<(&str, &str, Option<String>, u16)> = vec![
        ("good token", &whip, Some(token(&good, K1)), 201),
        (
            "second key",
            &whip,
            Some(token(
                &Claims {
                    iss: "k2".into(),
                    ..good.clone()
                },
                K2,
            )),
            201,
        ),
        ("no token", &whip, None, 401),
        ("not a JWT", &whip, Some("abc".into()), 401),
        ("wrong room", &other_room, Some(token(&good, K1)), 403),
        ("missing grant", &whep, Some(token(&good, K1)), 403),
        ("expired", &whip, Some(token(&expired, K1)), 401),
        ("future nbf", &whip, Some(token(&future, K1)), 401),
        ("wrong signature", &whip, Some(token(&good, K2)), 401),
        (
            "alg none",
            &whip,
            Some(raw_token(r#"{"alg":"none","typ":"JWT"}"#, &payload, "")),
            401,
        ),
        ("unknown key id", &whip, Some(token(&unknown_kid, K1)), 401),
        (
            "missing exp",
            &whip,
            Some(raw_token(r#"{"alg":"HS256","typ":"JWT"}"#, no_exp, "x")),
            401,
        ),
        (
            "admin, any room",
            &whep,
            Some(token(&admin_everywhere, K1)),
            201,
        ),
        (
            "room * without admin",
            &whip,
            Some(token(&star_without_admin, K1)),
            403,
        ),
    ];
    for (name, url, token, status) in cases {
        let r = post(
            url,
            token.as_deref(),
            audio_offer(if url.contains("whep") {
                "recvonly"
            } else {
                "sendonly"
            }),
        )
        .await;
        let got = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        assert_eq!(got, status, "{name}: {body}");
        if status == 401 {
            assert!(
                challenge.is_some_and(|c| c.starts_with("Bearer")),
                "{name}: WWW-Authenticate"
            );
        }
        if let Some(t) = token.filter(|t| t.len() > 10) {
            assert!(!body.contains(&t), "{name}: the token is echoed");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn only_the_owner_or_an_admin_may_end_or_patch_a_session() {
    let server = server().await;
    let alice = token(&claims("room1", true, true), K1);
    let bob = token(
        &Claims {
            sub: "bob".into(),
            ..claims("room1", true, true)
        },
        K1,
    );
    let admin = token(
        &Claims {
            sub: "ops".into(),
            grants: Grants {
                room: "*".into(),
                admin: true,
                ..Grants::default()
            },
            ..claims("room1", false, false)
        },
        K1,
    );
    let client = reqwest::Client::new();
    let create = || async {
        let r = post(
            &format!("{}/whip/room1", server.url),
            Some(&alice),
            audio_offer("sendonly"),
        )
        .await;
        assert_eq!(r.status().as_u16(), 201);
        format!(
            "{}{}",
            server.url,
            r.headers()["location"].to_str().unwrap()
        )
    };
    let delete = |resource: String, token: Option<String>| {
        let mut r = client.delete(resource);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };

    let first = create().await;
    assert_eq!(delete(first.clone(), None).await, 401);
    assert_eq!(
        delete(first.clone(), Some(bob.clone())).await,
        403,
        "another identity"
    );
    let patch = client
        .patch(&first)
        .bearer_auth(&bob)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .header("if-match", "*")
        .body("a=end-of-candidates\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status().as_u16(), 403);
    assert_eq!(
        delete(first.clone(), Some(alice.clone())).await,
        200,
        "the owner"
    );

    let second = create().await;
    assert_eq!(delete(second, Some(admin)).await, 200, "an admin");
    server.stop().await;
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_server_accepts() {
    let server = server().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "--key", "k2", "--secret", K2, "--room", "room1"])
        .args(["--identity", "obs", "--publish", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_owned();
    let r = post(
        &format!("{}/whip/room1", server.url),
        Some(&token),
        audio_offer("sendonly"),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201);
    // The same token cannot watch: it only grants publishing.
    let r = post(
        &format!("{}/whep/room1", server.url),
        Some(&token),
        audio_offer("recvonly"),
    )
    .await;
    assert_eq!(r.status().as_u16(), 403);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "token",
            "--key",
            "k2",
            "--secret",
            K2,
            "--room",
            "*",
            "--identity",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "room * needs --admin");
    server.stop().await;
}
