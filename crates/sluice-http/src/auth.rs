//! Bearer-token authentication: HS256 JWTs whose `iss` names the key that
//! signed them, carrying the room and what the holder may do there.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// What a token lets its holder do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// The room, or `"*"` (admin tokens only) for every room.
    pub room: String,
    /// May publish (WHIP).
    pub publish: bool,
    /// May watch (WHEP).
    pub subscribe: bool,
    /// May use the admin API and act on anyone's sessions, in any room.
    pub admin: bool,
}

/// The claims of a Sluice token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The key id that signed the token (selects the secret).
    pub iss: String,
    /// The holder's identity.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// What the holder may do.
    pub grants: Grants,
}

impl Claims {
    /// Whether these claims reach `room`.
    pub fn covers_room(&self, room: &str) -> bool {
        self.grants.admin || self.grants.room == room
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sign `claims` with `secret` (HS256).
pub fn mint(claims: &Claims, secret: &[u8]) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// The token verifier: the configured keys and the allowed clock skew.
#[derive(Clone)]
pub struct Auth {
    keys: Vec<(String, DecodingKey)>,
    leeway_secs: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Auth").field("kids", &kids).finish()
    }
}

impl Auth {
    /// A verifier for `keys` (key id to secret). No keys: authentication
    /// is off and every request is allowed.
    pub fn new(keys: &BTreeMap<String, String>, leeway_secs: u64) -> Self {
        Auth {
            keys: keys
                .iter()
                .map(|(kid, secret)| (kid.clone(), DecodingKey::from_secret(secret.as_bytes())))
                .collect(),
            leeway_secs,
        }
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Verify a token: HS256 only, signed by the key its `iss` names,
    /// `exp` required, `nbf` checked when present.
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "the token is malformed")?;
        if header.alg != Algorithm::HS256 {
            return Err("the token must be signed with HS256");
        }
        // The key is chosen by `iss`; trying each configured key with the
        // issuer pinned to its id keeps unverified claims out of the choice.
        for (kid, key) in &self.keys {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.leeway = self.leeway_secs;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            validation.set_issuer(&[kid]);
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer
                    | jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        return Err("the token has expired");
                    }
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        return Err("the token is not valid yet (nbf)");
                    }
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                        return Err("the token lacks a required claim (exp, iss, sub)");
                    }
                    _ => return Err("the token is invalid"),
                },
            }
        }
        Err("the token is not signed by a known key")
    }

    /// The caller's claims from the `Authorization` header: `None` when
    /// authentication is off, 401 when the token is missing or invalid.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Option<Claims>, Problem> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("an Authorization: Bearer token is required"))?;
        self.verify(token).map(Some).map_err(unauthorized)
    }
}

/// 401 with a `WWW-Authenticate: Bearer` challenge.
fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, detail).with_challenge()
}

/// 403: the token is valid but does not allow this.
pub fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, detail)
}
