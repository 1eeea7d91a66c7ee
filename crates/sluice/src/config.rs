//! Configuration: built-in defaults, a TOML file, `SLUICE_*` environment
//! variables and flags (highest precedence last).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Everything the server can be told.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP settings.
    pub http: HttpConfig,
    /// Media (UDP, ICE) settings.
    pub media: MediaConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Token authentication.
    pub auth: AuthConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Capacity and rate limits.
    pub limits: LimitsConfig,
    /// Lifecycle webhooks.
    pub webhooks: WebhookConfig,
}

/// `[webhooks]` section.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` only). None: no webhooks.
    pub url: Option<String>,
    /// HMAC-SHA256 key for the `Sluice-Signature` header.
    pub secret: String,
    /// Attempts per event before it is given up.
    pub max_attempts: u32,
    /// Timeout of one attempt, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: String::new(),
            max_attempts: 5,
            timeout_ms: 3000,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("max_attempts", &self.max_attempts)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// A URL needs a secret, and must be plain `http://` (no TLS client is
    /// built in: point it at a local relay for `https` endpoints).
    pub fn check(&self) -> Result<(), String> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        if !url.starts_with("http://") {
            return Err(format!(
                "webhooks.url must start with http:// (got {url:?})"
            ));
        }
        if self.secret.is_empty() {
            return Err("webhooks.url is set but webhooks.secret is empty".into());
        }
        Ok(())
    }
}

/// `[limits]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest SDP offer or PATCH body, in bytes (413 above).
    pub max_sdp_bytes: usize,
    /// Session POSTs per second per client address (429 above; bursts of
    /// twice as many pass).
    pub posts_per_second_per_address: f64,
    /// Rooms at once (503 above).
    pub max_rooms: usize,
    /// Sessions in one room (403 above).
    pub max_sessions_per_room: usize,
    /// Live sessions created from one client address (429 above).
    pub max_sessions_per_address: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let http = sluice_http::HttpLimits::default();
        let server = sluice_server::Limits::default();
        LimitsConfig {
            max_sdp_bytes: http.max_body_bytes,
            posts_per_second_per_address: http.posts_per_second,
            max_rooms: server.max_rooms,
            max_sessions_per_room: server.max_sessions_per_room,
            max_sessions_per_address: server.max_sessions_per_address,
        }
    }
}

/// `[shutdown]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds live sessions may keep running after a stop signal.
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_secs: 60,
        }
    }
}

/// `[auth]` section.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Key id to HS256 secret. Empty: authentication is off (loopback only).
    pub keys: BTreeMap<String, String>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: BTreeMap::new(),
            leeway_secs: 5,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: secrets never reach a log.
        f.debug_struct("AuthConfig")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl AuthConfig {
    /// Add keys from `kid:secret[,kid:secret]` (the `SLUICE_AUTH_KEYS` form).
    pub fn add_keys(&mut self, list: &str) -> Result<(), String> {
        for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kid, secret) = pair
                .split_once(':')
                .filter(|(k, s)| !k.is_empty() && !s.is_empty())
                .ok_or_else(|| {
                    format!(
                        "auth keys are kid:secret pairs, got an entry without ':' ({} characters)",
                        pair.len()
                    )
                })?;
            self.keys.insert(kid.to_owned(), secret.to_owned());
        }
        Ok(())
    }
}

/// `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server.
    pub listen: SocketAddr,
}

/// `[media]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The UDP socket of the first media shard; shard `i` binds the port
    /// after the first plus `i` (every shard picks one when the port is 0).
    pub udp: SocketAddr,
    /// Media shards: each forwards the rooms placed on it (one task, so
    /// at most about one core each) through a UDP port of its own; 0 runs
    /// one per core.
    pub shards: usize,
    /// Address announced in ICE candidates (needed when `udp` is 0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// Seconds of silence after which a peer is dropped.
    pub consent_timeout_secs: u64,
    /// Minimum milliseconds between keyframe requests to a publisher (all
    /// its layers together).
    pub keyframe_interval_ms: u64,
    /// Where a viewer's bandwidth estimate starts, kbit/s; 0 (the default)
    /// leaves bandwidth estimation, and the layer choice it drives, off.
    pub viewer_start_bitrate_kbps: u64,
    /// Seal viewers' RTP in Sluice rather than str0m (about half the CPU
    /// per forwarded packet); on by default.
    pub direct_egress: bool,
    /// Move a viewer on the direct egress to a simulcast layer its path
    /// carries when its receiver reports show loss; on by default.
    pub viewer_loss_estimate: bool,
}

/// `[log]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// tracing filter directives.
    pub filter: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            udp: SocketAddr::from(([127, 0, 0, 1], 50000)),
            shards: 1,
            public_ip: None,
            consent_timeout_secs: 30,
            keyframe_interval_ms: 350,
            viewer_start_bitrate_kbps: 0,
            direct_egress: true,
            viewer_loss_estimate: true,
        }
    }
}

impl MediaConfig {
    /// The UDP address of each shard: `udp`, then the ports after it (all
    /// port 0 when `udp`'s is).
    pub fn udp_addresses(&self) -> Result<Vec<SocketAddr>, String> {
        let shards = self.shard_count()?;
        (0..shards)
            .map(|i| {
                let port = match self.udp.port() {
                    0 => Some(0),
                    first => u16::try_from(i).ok().and_then(|i| first.checked_add(i)),
                };
                port.map(|port| SocketAddr::new(self.udp.ip(), port))
                    .ok_or_else(|| {
                        format!(
                            "{shards} shards need ports {} to {}, past 65535",
                            self.udp.port(),
                            usize::from(self.udp.port()) + shards - 1
                        )
                    })
            })
            .collect()
    }

    /// How many shards to run: `shards`, or with 0 one per core this
    /// process may use.
    pub fn shard_count(&self) -> Result<usize, String> {
        let max = sluice_server::MAX_SHARDS;
        match self.shards {
            0 => Ok(std::thread::available_parallelism().map_or(1, |n| n.get().min(max))),
            n if n <= max => Ok(n),
            n => Err(format!(
                "media.shards must be 1 to {max}, or 0 for one per core, not {n}"
            )),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Read a TOML file; missing keys keep their defaults. The error names
    /// the file, the line and the key.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Refuse to expose an unauthenticated server: without keys the HTTP
    /// server must listen on loopback, unless `insecure`. Also refuses a
    /// shard count the server cannot run.
    pub fn check_exposure(&self, insecure: bool) -> Result<(), String> {
        self.webhooks.check()?;
        self.media.udp_addresses()?;
        let exposed = !self.http.listen.ip().is_loopback();
        if self.auth.keys.is_empty() && exposed && !insecure {
            return Err(format!(
                "refusing to serve {} without authentication: configure [auth] keys (or SLUICE_AUTH_KEYS), \
                 listen on loopback, or pass --insecure",
                self.http.listen
            ));
        }
        Ok(())
    }

    /// How long live sessions may run on after a stop signal.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown.drain_timeout_secs)
    }

    /// The token verifier for this configuration.
    pub fn auth(&self) -> sluice_http::Auth {
        sluice_http::Auth::new(&self.auth.keys, self.auth.leeway_secs)
    }

    /// The media server's settings.
    pub fn server_config(&self) -> sluice_server::ServerConfig {
        sluice_server::ServerConfig {
            public_ip: self.media.public_ip,
            consent_timeout: Duration::from_secs(self.media.consent_timeout_secs),
            keyframe_interval: Duration::from_millis(self.media.keyframe_interval_ms),
            viewer_bwe_initial_bps: (self.media.viewer_start_bitrate_kbps > 0)
                .then(|| self.media.viewer_start_bitrate_kbps * 1000),
            direct_egress: self.media.direct_egress,
            viewer_loss_estimate: self.media.viewer_loss_estimate,
            limits: sluice_server::Limits {
                max_rooms: self.limits.max_rooms,
                max_sessions_per_room: self.limits.max_sessions_per_room,
                max_sessions_per_address: self.limits.max_sessions_per_address,
            },
        }
    }

    /// The HTTP layer's limits.
    pub fn http_limits(&self) -> sluice_http::HttpLimits {
        sluice_http::HttpLimits {
            max_body_bytes: self.limits.max_sdp_bytes,
            posts_per_second: self.limits.posts_per_second_per_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_binds_the_next_port() {
        let mut media = MediaConfig {
            shards: 3,
            ..MediaConfig::default()
        };
        let ports: Vec<u16> = media
            .udp_addresses()
            .unwrap()
            .iter()
            .map(|a| a.port())
            .collect();
        assert_eq!(ports, [50000, 50001, 50002]);
        media.udp.set_port(0);
        assert_eq!(media.udp_addresses().unwrap().len(), 3);
        assert!(media.udp_addresses().unwrap().iter().all(|a| a.port() == 0));
        media.udp.set_port(65535);
        let err = media.udp_addresses().unwrap_err();
        assert!(err.contains("past 65535"), "{err}");
        media.shards = 257;
        let err = media.udp_addresses().unwrap_err();
        assert!(err.contains("media.shards must be 1 to 256"), "{err}");
        media.shards = 0; // one per core
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(media.shard_count().unwrap(), cores.min(256));
    }

    #[test]
    fn example_file_shows_the_defaults() {
        let text = include_str!("../../../config/sluice.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn the_container_config_is_valid_and_needs_keys() {
        let text = include_str!("../../../deploy/sluice.container.toml");
        let c = Config::from_toml(text).unwrap();
        assert!(c.http.listen.ip().is_unspecified());
        assert!(c.check_exposure(false).is_err(), "no keys, no start");
    }

    #[test]
    fn auth_keys_come_from_toml_and_the_env_form() {
        let mut c = Config::from_toml("[auth.keys]\nk1 = \"s1\"\n").unwrap();
        c.auth.add_keys("k2:s2, k3:s3:with:colons").unwrap();
        assert_eq!(c.auth.keys.len(), 3);
        assert_eq!(c.auth.keys["k3"], "s3:with:colons");
        assert!(c.auth.add_keys("nocolon").is_err());
        assert!(
            !format!("{c:?}").contains("s1"),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn unauthenticated_servers_stay_on_loopback() {
        let mut c = Config::default();
        assert!(c.check_exposure(false).is_ok());
        c.http.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(c.check_exposure(false).unwrap_err().contains("--insecure"));
        assert!(c.check_exposure(true).is_ok());
        c.auth.add_keys("k:s").unwrap();
        assert!(c.check_exposure(false).is_ok());
    }

    #[test]
    fn bad_keys_are_named_with_their_line() {
        let err = Config::from_toml("[media]\nudp = \"127.0.0.1:1\"\nconsent = 3\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("consent"), "{err}");
        let err = Config::from_toml("[http]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
