//! The numbers a load test reports, computed from what the peers recorded.

use serde::Serialize;

/// Percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples` (sorted in place); all zero when empty.
    pub fn of(samples: &mut [f64]) -> Spread {
        if samples.is_empty() {
            return Spread::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Spread {
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

/// A process's resource use over the measurement window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessUse {
    /// CPU, percent of one core.
    pub cpu_pct: f64,
    /// Resident memory at the end, MiB.
    pub rss_mb: f64,
}

/// Median and 99th percentile of join times or delays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
}

/// The JSON report (`--json FILE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Publishers asked for.
    pub publishers: usize,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Peers whose ICE and DTLS came up.
    pub connected: usize,
    /// Length of the measurement window, seconds.
    pub duration_s: f64,
    /// RTP packets the publishers sent (whole run).
    pub packets_sent: u64,
    /// RTP packets the subscribers received (whole run).
    pub packets_received: u64,
    /// Packets missing at the subscribers, percent of expected.
    pub loss_pct: f64,
    /// Send-to-receive delay, ms.
    pub latency_ms: Spread,
    /// POST to first packet, ms.
    pub join_ms: Percentiles,
    /// POST to first video keyframe, ms.
    pub join_keyframe_ms: Percentiles,
    /// Mean payload bitrate each subscriber received in the window, kbit/s.
    pub recv_kbps_per_subscriber: f64,
    /// The lowest bitrate one subscriber received in the window, kbit/s.
    pub recv_kbps_min: f64,
    /// The server's CPU and memory, when its pid is known.
    pub server: Option<ProcessUse>,
    /// The tester's own CPU and memory (this process).
    pub tester: Option<ProcessUse>,
    /// UDP sockets the tester had open at the end of the window.
    pub tester_udp_sockets: Option<usize>,
    /// The server's own forwarding delay in the window (its
    /// `sluice_forward_delay_seconds` histogram), ms.
    pub server_delay_ms: Option<Percentiles>,
    /// Video packets the probe subscribers received per simulcast layer.
    pub probe_layers: LayerCounts,
}

/// Video packets per simulcast layer (the synthetic publisher tags each
/// packet with its layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LayerCounts {
    /// From a publisher without simulcast.
    pub plain: u64,
    /// Low layer.
    pub q: u64,
    /// Medium layer.
    pub h: u64,
    /// Full layer.
    pub f: u64,
}

impl LayerCounts {
    /// From counts indexed by layer tag (0 plain, 1 q, 2 h, 3 f).
    pub fn of(tags: [u64; 4]) -> Self {
        LayerCounts {
            plain: tags[0],
            q: tags[1],
            h: tags[2],
            f: tags[3],
        }
    }
}

/// Loss in percent of what was expected.
pub fn loss_pct(received: u64, lost: u64) -> f64 {
    let expected = received + lost;
    if expected == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / expected as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_loss() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        let s = Spread::of(&mut samples);
        assert_eq!((s.p50, s.p99, s.max), (51.0, 99.0, 100.0));
        assert_eq!(Spread::of(&mut []), Spread::default());
        assert_eq!(loss_pct(99, 1), 1.0);
        assert_eq!(loss_pct(0, 0), 0.0);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = serde_json::to_value(Report::default()).unwrap();
        for key in [
            "publishers",
            "subscribers",
            "connected",
            "duration_s",
            "packets_sent",
            "packets_received",
            "loss_pct",
            "latency_ms",
            "join_ms",
            "recv_kbps_per_subscriber",
            "server",
            "server_delay_ms",
            "probe_layers",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(json["latency_ms"].get("p99").is_some());
    }
}
