//! Configuration: built-in defaults, a TOML file, `SLUICE_*` environment
//! variables and flags (highest precedence last).

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
    /// The UDP socket for all media.
    pub udp: SocketAddr,
    /// Address announced in ICE candidates (needed when `udp` is 0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// Seconds of silence after which a peer is dropped.
    pub consent_timeout_secs: u64,
    /// Minimum milliseconds between keyframe requests per layer.
    pub keyframe_interval_ms: u64,
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
            public_ip: None,
            consent_timeout_secs: 30,
            keyframe_interval_ms: 500,
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

    /// The media server's settings.
    pub fn server_config(&self) -> sluice_server::ServerConfig {
        sluice_server::ServerConfig {
            public_ip: self.media.public_ip,
            consent_timeout: Duration::from_secs(self.media.consent_timeout_secs),
            keyframe_interval: Duration::from_millis(self.media.keyframe_interval_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_shows_the_defaults() {
        let text = include_str!("../../../config/sluice.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
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
