//! Prometheus metrics of the media server, all prefixed `sluice_`.
//!
//! The shard counts packets in plain integers and adds them to the
//! Prometheus counters once a second ([`Tally`]), so the per-packet path
//! touches no shared memory.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric Sluice exports, registered in [`Metrics::registry`].
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Live sessions by role (`publisher`, `viewer`).
    pub sessions: IntGaugeVec,
    /// Sessions ever created, by role.
    pub sessions_created: IntCounterVec,
    /// Sessions that ended without a DELETE, by reason (`consent`, `disconnected`).
    pub sessions_lost: IntCounterVec,
    /// Rooms with at least one session (refreshed every second).
    pub rooms: IntGauge,
    /// People in rooms: distinct identities or publisher names, plus each
    /// anonymous viewer.
    pub participants: IntGauge,
    /// Published tracks (refreshed every second).
    pub publications: IntGauge,
    /// RTP packets received from publishers.
    pub packets_received: IntCounter,
    /// RTP payload bytes received from publishers.
    pub bytes_received: IntCounter,
    /// RTP packets forwarded to viewers.
    pub packets_forwarded: IntCounter,
    /// RTP payload bytes forwarded to viewers.
    pub bytes_forwarded: IntCounter,
    /// NACKs, by direction (`from_viewers`: viewers lost packets we sent;
    /// `to_publishers`: we lost packets a publisher sent).
    pub nacks: IntCounterVec,
    /// Subscriptions moved to another simulcast layer.
    pub layer_switches: IntCounter,
    /// Keyframe requests, by direction (`from_viewers`, `to_publishers`).
    pub keyframe_requests: IntCounterVec,
    /// Lifecycle events dropped because the webhook sender was behind.
    pub events_dropped: IntCounter,
    /// Webhook deliveries by outcome (`delivered`, `failed`).
    pub webhooks: IntCounterVec,
    /// Seconds from a session's POST to ICE and DTLS being up.
    pub join_seconds: Histogram,
    /// Seconds from a viewer's POST to its first video packet, by how it
    /// started (`kept`: on a kept keyframe as it connected; `live`: on
    /// one forwarded as it arrived).
    pub first_video_seconds: HistogramVec,
    /// Seconds from the kernel's receipt of a receive batch's earliest
    /// forwarded packet to the sending of its last: the server's added
    /// latency, time queued in the socket included.
    pub forward_delay_seconds: Histogram,
    /// Viewers' bandwidth estimates, bits per second.
    pub bandwidth_estimate: Histogram,
    /// HTTP requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// Process CPU time (user + system), seconds.
    pub process_cpu_seconds: prometheus::Gauge,
    /// Process resident memory, bytes.
    pub process_resident_bytes: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("sluice_{name}"), help);
        // Metric definitions are constants: failing to build or register
        // one is a programming error caught by the first test run.
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(opts(name, help)).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(opts(name, help)).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(
                HistogramOpts::new(format!("sluice_{name}"), help).buckets(buckets.to_vec()),
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let first_video_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_first_video_seconds",
                "Seconds from a viewer's POST to its first video packet, by how it started \
                 (kept: on a kept keyframe as it connected; live: on one as it arrived)",
            )
            .buckets(vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["start"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(first_video_seconds.clone()))
            .expect("unique metric");
        let sessions = IntGaugeVec::new(opts("sessions", "Live sessions by role"), &["role"])
            .expect("valid gauge");
        registry
            .register(Box::new(sessions.clone()))
            .expect("unique metric");
        let cpu = prometheus::Gauge::with_opts(opts(
            "process_cpu_seconds",
            "Process CPU time, user plus system, in seconds",
        ))
        .expect("valid gauge");
        registry
            .register(Box::new(cpu.clone()))
            .expect("unique metric");
        Metrics {
            sessions,
            sessions_created: counter_vec(
                "sessions_created_total",
                "Sessions created, by role",
                &["role"],
            ),
            sessions_lost: counter_vec(
                "sessions_lost_total",
                "Sessions that ended without a DELETE (ICE/DTLS failure or vanished peer), by reason",
                &["reason"],
            ),
            rooms: gauge("rooms", "Rooms with at least one session"),
            participants: gauge(
                "participants",
                "People in rooms: distinct token identities (or publisher names), \
                 and each anonymous viewer",
            ),
            publications: gauge("publications", "Published tracks"),
            packets_received: counter(
                "packets_received_total",
                "RTP packets received from publishers",
            ),
            bytes_received: counter(
                "bytes_received_total",
                "RTP payload bytes received from publishers",
            ),
            packets_forwarded: counter(
                "packets_forwarded_total",
                "RTP packets forwarded to viewers",
            ),
            bytes_forwarded: counter(
                "bytes_forwarded_total",
                "RTP payload bytes forwarded to viewers",
            ),
            nacks: counter_vec(
                "nacks_total",
                "NACKs received from viewers and sent to publishers",
                &["direction"],
            ),
            layer_switches: counter(
                "layer_switches_total",
                "Subscriptions moved to another simulcast layer of the same track",
            ),
            keyframe_requests: counter_vec(
                "keyframe_requests_total",
                "Keyframe requests (PLI/FIR) from viewers and sent to publishers",
                &["direction"],
            ),
            events_dropped: counter(
                "events_dropped_total",
                "Lifecycle events dropped because the webhook sender was behind",
            ),
            webhooks: counter_vec(
                "webhooks_total",
                "Webhook deliveries by outcome (delivered, failed after every retry)",
                &["outcome"],
            ),
            join_seconds: histogram(
                "join_seconds",
                "Seconds from a session's POST until ICE and DTLS are up",
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            first_video_seconds,
            bandwidth_estimate: histogram(
                "bandwidth_estimate_bps",
                "Bandwidth estimates of viewers' paths (from transport-wide feedback, or \
                 from the loss in their receiver reports), bits per second, one \
                 observation per change",
                &[
                    100e3, 250e3, 500e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 20e6, 50e6,
                ],
            ),
            forward_delay_seconds: histogram(
                "forward_delay_seconds",
                "Seconds from the kernel's receipt of the earliest forwarded packet of a \
                 receive batch to handing the batch's last packet to the kernel (the \
                 server's added latency, queueing included, worst packet of the batch)",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02,
                    0.025, 0.05, 0.1,
                ],
            ),
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            process_cpu_seconds: cpu,
            process_resident_bytes: gauge(
                "process_resident_memory_bytes",
                "Resident memory in bytes",
            ),
            registry,
        }
    }

    /// Live sessions of both roles.
    pub fn live_sessions(&self) -> i64 {
        ["publisher", "viewer"]
            .iter()
            .map(|r| self.sessions.with_label_values(&[r]).get())
            .sum()
    }

    /// Refresh the process gauges from `/proc/self` (Linux; elsewhere they
    /// stay 0).
    pub fn update_process(&self) {
        let ticks_per_second = 100.0; // USER_HZ on Linux
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th fields of the whole line.
            if let Some(rest) = stat.rsplit(')').next() {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let ticks: f64 = [11, 12]
                    .iter()
                    .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
                    .sum();
                self.process_cpu_seconds.set(ticks / ticks_per_second);
            }
        }
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
        {
            self.process_resident_bytes.set(pages * 4096);
        }
    }
}

/// Per-packet counts kept in plain integers by the shard.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) packets_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) packets_forwarded: u64,
    pub(crate) bytes_forwarded: u64,
}

impl Tally {
    /// Add the counts to `metrics` and start over.
    pub(crate) fn flush(&mut self, metrics: &Metrics) {
        metrics.packets_received.inc_by(self.packets_received);
        metrics.bytes_received.inc_by(self.bytes_received);
        metrics.packets_forwarded.inc_by(self.packets_forwarded);
        metrics.bytes_forwarded.inc_by(self.bytes_forwarded);
        *self = Tally::default();
    }
}
