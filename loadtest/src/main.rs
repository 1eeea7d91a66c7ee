//! `sluice-loadtest`: synthetic WHIP publishers and WHEP subscribers
//! against a running Sluice, with a summary table and a JSON report.
//!
//! Each peer is a real str0m WebRTC client with its own task, sending VP8
//! and Opus-sized packets that carry their send time. A few probe
//! subscribers per room decrypt everything and measure latency; the rest
//! count packets and losses from the clear RTP headers, read for all of
//! them by one receive thread, from a socket each or (`--shared-socket`,
//! in a network namespace of its own) from one socket they all share.

mod capacity;
mod delay;
mod meeting;
mod procfs;
mod report;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use report::{LayerCounts, Percentiles, Report, Spread, loss_pct};
use sluice_http::auth::{Claims, Grants, mint, now_secs};
use sluice_testkit::peer::PeerState;
use sluice_testkit::{Peer, PeerOptions};

/// Synthetic WHIP publishers and WHEP subscribers against a running Sluice.
#[derive(Parser, Clone)]
#[command(version, about)]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Room name (with --rooms > 1: ROOM-0, ROOM-1, ...).
    #[arg(long, default_value = "load")]
    room: String,
    /// Rooms, each with its own publishers and subscribers.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishers per room.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Measurement window after everyone joined: seconds, or with s or m.
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    duration: u64,
    /// Subscribers per room that decrypt everything and measure latency and
    /// keyframe join time; the others count packets from the clear RTP
    /// headers only, which costs the tester far less CPU.
    #[arg(long, default_value_t = 2)]
    probes: usize,
    /// Publishers send video as three simulcast layers (q/h/f, about
    /// 150/600/2000 kbit/s); viewers get the highest active one.
    #[arg(long)]
    simulcast: bool,
    /// A meeting: every publisher of a room is a participant that, like
    /// the conference page, opens the conference WebSocket and watches
    /// every other participant it announces (one WHEP session each,
    /// `?participant=`, on --layer); --subscribers is ignored.
    #[arg(long, conflicts_with = "find_capacity")]
    meeting: bool,
    /// Publishers and subscribers offer audio only (Opus-sized packets,
    /// 50 per second, with the audio level extension).
    #[arg(long, conflicts_with = "simulcast")]
    audio_only: bool,
    /// Publishers loop the shipped VP8 clips (real video, 320x180,
    /// 640x360 and 1280x720 with --simulcast) instead of made-up payloads,
    /// so a browser can watch them; latency is then not measured.
    #[arg(long, conflicts_with = "audio_only")]
    clips: bool,
    /// The simulcast layer subscribers ask for: q, h, f, or auto (the
    /// best one the publisher sends).
    #[arg(long, default_value = "auto", value_parser = ["q", "h", "f", "auto"])]
    layer: String,
    /// Peers started per second (all at once without it).
    #[arg(long)]
    ramp: Option<f64>,
    /// Bearer token for every peer.
    #[arg(long, conflicts_with = "key")]
    token: Option<String>,
    /// Key id to mint a token per peer with (needs --secret).
    #[arg(long, requires = "secret")]
    key: Option<String>,
    /// The key's secret.
    #[arg(long, env = "SLUICE_TOKEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Add subscribers in steps of --step (each measured for --duration)
    /// until loss exceeds 0.5 %, latency p99 50 ms or the server's CPU
    /// 95 % of a core; report the last good step.
    #[arg(long)]
    find_capacity: bool,
    /// Subscribers added per capacity step.
    #[arg(long, default_value_t = 50)]
    step: usize,
    /// Upper bound of the capacity search.
    #[arg(long, default_value_t = 2000)]
    max_subscribers: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The server's pid, for its CPU and memory (default: the one process
    /// named `sluice` on this machine, if there is exactly one).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Count-only subscribers share one UDP socket, each with an address
    /// of its own in 127.1.0.0/16, instead of a socket each. Needs a
    /// network namespace of its own with only loopback: run the server
    /// and the tester under `unshare --net` (see docs/loadtest.md).
    #[arg(long)]
    shared_socket: bool,
    /// How far, in milliseconds, a publisher's pacer may run ahead of its
    /// pacing rate (2.5 times the video bitrate). 40, libwebrtc's default,
    /// sends each ordinary frame in one burst, as browsers and encoders
    /// without a pacer do; 0 spreads every frame over 40 % of the frame
    /// interval, as libwebrtc's pacer did before it allowed bursts.
    #[arg(long, default_value_t = 40)]
    pacer_burst_ms: u64,
}

/// `30`, `30s`, `2m` as seconds.
fn parse_seconds(text: &str) -> Result<u64, String> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number
        .parse::<u64>()
        .map(|n| n * scale)
        .map_err(|_| format!("{text:?} is not a duration like 30s or 2m"))
}

impl Args {
    /// Subscribers per room: --subscribers, or in a meeting one per
    /// ordered pair of participants.
    fn subscribers_per_room(&self) -> usize {
        if self.meeting {
            self.publishers * self.publishers.saturating_sub(1)
        } else {
            self.subscribers
        }
    }

    fn room_name(&self, index: usize) -> String {
        if self.rooms == 1 {
            self.room.clone()
        } else {
            format!("{}-{index}", self.room)
        }
    }

    /// Wait between two peers (`--ramp`), if asked to.
    async fn ramp_pause(&self) {
        if let Some(rate) = self.ramp {
            tokio::time::sleep(Duration::from_secs_f64(1.0 / rate.max(0.001))).await;
        }
    }

    /// The token for one peer, if the server needs one.
    fn token(&self, room: &str, identity: String) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let (Some(key), Some(secret)) = (&self.key, &self.secret) else {
            return Ok(None);
        };
        let claims = Claims {
            iss: key.clone(),
            sub: identity,
            exp: now_secs() + self.duration + 3600,
            nbf: None,
            grants: Grants {
                room: room.to_owned(),
                publish: true,
                subscribe: true,
                admin: false,
            },
        };
        mint(&claims, secret.as_bytes()).map(Some)
    }
}

/// What one peer of a room does.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The `n`-th publisher.
    Publish(usize),
    /// The `n`-th subscriber, following the room or the `k`-th publisher
    /// (`follow`); a probe decrypts everything and measures latency.
    Subscribe {
        n: usize,
        follow: Option<usize>,
        probe: bool,
    },
}

/// Whether the `n`-th of a room's `count` subscribers is one of its
/// `probes` probes. Probes are spread evenly over the join order and the
/// last subscriber is always one: the server fans a packet out in join
/// order, so probes that all joined first would only ever see the start
/// of a fan-out and report too little latency.
fn is_probe(n: usize, count: usize, probes: usize) -> bool {
    count > 0 && (n + 1) * probes / count > n * probes / count
}

/// The participant name (and token identity) of a room's `n`-th publisher.
fn publisher_name(room: usize, n: usize) -> String {
    format!("load-{room}-p-{n}")
}

/// Start one peer of room `room`.
async fn start_peer(args: &Args, room: usize, role: Role) -> Result<Option<Peer>, String> {
    let name = args.room_name(room);
    let (publish, identity, participant, count_only) = match role {
        Role::Publish(n) => (
            true,
            publisher_name(room, n),
            Some(publisher_name(room, n)),
            false,
        ),
        Role::Subscribe { n, follow, probe } => (
            false,
            format!("load-{room}-s-{n}"),
            follow.map(|k| publisher_name(room, k)),
            !probe,
        ),
    };
    let options = PeerOptions {
        token: args.token(&name, identity)?,
        keep_packets: false,
        simulcast: args.simulcast,
        count_only,
        layer: Some(args.layer.clone()),
        audio_only: args.audio_only,
        clips: args.clips,
        participant,
        pacer_burst: std::time::Duration::from_millis(args.pacer_burst_ms),
        ..PeerOptions::new(&args.url, &name, publish)
    };
    match Peer::start(options).await {
        Ok(peer) => Ok(Some(peer)),
        Err(e) => {
            eprintln!("a peer could not join {name}: {e}");
            Ok(None)
        }
    }
}

/// Start every peer of a broadcast, a room's publishers before its
/// subscribers: at `--ramp` per second, or without it a room's
/// subscribers all at once (their offers go out together).
async fn start_peers(args: &Args) -> Result<(Vec<Peer>, Vec<Peer>), String> {
    let (mut publishers, mut subscribers) = (Vec::new(), Vec::new());
    let shared = Arc::new(args.clone());
    for r in 0..args.rooms {
        for n in 0..args.publishers {
            publishers.extend(start_peer(args, r, Role::Publish(n)).await?);
            args.ramp_pause().await;
        }
        let role = |n| Role::Subscribe {
            n,
            follow: None,
            probe: is_probe(n, args.subscribers, args.probes),
        };
        if args.ramp.is_some() {
            for n in 0..args.subscribers {
                subscribers.extend(start_peer(args, r, role(n)).await?);
                args.ramp_pause().await;
            }
            continue;
        }
        let mut storm = tokio::task::JoinSet::new();
        for n in 0..args.subscribers {
            let (args, role) = (shared.clone(), role(n));
            storm.spawn(async move { (n, start_peer(&args, r, role).await) });
        }
        let mut joined = Vec::new();
        while let Some(done) = storm.join_next().await {
            let (n, peer) = done.map_err(|e| e.to_string())?;
            joined.extend(peer?.map(|p| (n, p)));
        }
        joined.sort_by_key(|(n, _)| *n);
        subscribers.extend(joined.into_iter().map(|(_, p)| p));
    }
    Ok((publishers, subscribers))
}

/// Payload bytes each peer received so far.
fn received_bytes(peers: &[Peer]) -> Vec<u64> {
    peers
        .iter()
        .map(|p| p.with_state(|s| s.rx.iter().map(|r| r.bytes).sum::<u64>()))
        .collect()
}

fn join_spread(peers: &[Peer], until: impl Fn(&PeerState) -> Option<Instant>) -> Percentiles {
    let mut samples: Vec<f64> = peers
        .iter()
        .filter_map(|p| {
            p.with_state(|s| {
                let ms = until(s)?.saturating_duration_since(s.post_at?);
                Some(ms.as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let spread = Spread::of(&mut samples);
    Percentiles {
        p50: spread.p50,
        p99: spread.p99,
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let asked_publishers = args.rooms * args.publishers;
    let asked_subscribers = args.rooms * args.subscribers_per_room();
    // A meeting's WebSockets stay open until the end of the run.
    let (publishers, subscribers, _sockets) = if args.meeting {
        let (publishers, tiles, sockets) = meeting::start(&args).await?;
        (publishers, tiles, Some(sockets))
    } else {
        let (publishers, subscribers) = start_peers(&args).await?;
        (publishers, subscribers, None)
    };
    let everyone = || publishers.iter().chain(&subscribers);
    let deadline = Instant::now() + Duration::from_secs(10);
    for peer in everyone() {
        let left = deadline.saturating_duration_since(Instant::now());
        peer.wait_for(left, |s| s.connected).await;
    }
    let connected = everyone().filter(|p| p.with_state(|s| s.connected)).count();

    let pid = args.server_pid.or_else(procfs::find_sluice);
    let cpu_start = pid.and_then(procfs::cpu);
    let me = std::process::id();
    let my_cpu_start = procfs::cpu(me);
    let delay_start = delay::scrape(&args.url).await;
    let bytes_start = received_bytes(&subscribers);
    let window_start = Instant::now();
    for second in 1..=args.duration {
        tokio::time::sleep_until((window_start + Duration::from_secs(second)).into()).await;
        let received: u64 = subscribers
            .iter()
            .map(|p| p.with_state(|s| s.rx[0].packets + s.rx[1].packets))
            .sum();
        eprint!(
            "\r{} {second:>4}/{}s  connected {connected}/{}  packets received {received}   ",
            progress_bar(second, args.duration),
            args.duration,
            asked_publishers + asked_subscribers
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let window = window_start.elapsed().as_secs_f64();
    let server_delay_ms = match (delay_start, delay::scrape(&args.url).await) {
        (Some(a), Some(b)) => delay::percentiles(&a, &b),
        _ => None,
    };
    // Each subscriber's bitrate in the window, kbit/s.
    let kbps: Vec<f64> = received_bytes(&subscribers)
        .iter()
        .zip(&bytes_start)
        .map(|(end, start)| (end - start) as f64 * 8.0 / 1000.0 / window)
        .collect();
    let server = pid.and_then(|pid| procfs::usage(pid, cpu_start?));
    let tester = my_cpu_start.and_then(|start| procfs::usage(me, start));
    let tester_udp_sockets = procfs::udp_sockets(me);

    let (received, lost) = subscribers.iter().fold((0, 0), |(r, l), p| {
        p.with_state(|s| {
            (
                r + s.rx[0].packets + s.rx[1].packets,
                l + s.rx[0].lost() + s.rx[1].lost(),
            )
        })
    });
    let mut latencies: Vec<f64> = subscribers
        .iter()
        .flat_map(|p| p.with_state(|s| s.latencies_us.clone()))
        .map(|us| f64::from(us) / 1000.0)
        .collect();
    let report = Report {
        publishers: asked_publishers,
        subscribers: asked_subscribers,
        connected,
        duration_s: window,
        packets_sent: publishers
            .iter()
            .map(|p| p.with_state(|s| s.sent_count))
            .sum(),
        packets_received: received,
        loss_pct: loss_pct(received, lost),
        latency_ms: Spread::of(&mut latencies),
        join_ms: join_spread(&subscribers, |s| s.first_packet_at),
        join_keyframe_ms: join_spread(&subscribers, |s| s.first_keyframe_at),
        recv_kbps_per_subscriber: if kbps.is_empty() {
            0.0
        } else {
            kbps.iter().sum::<f64>() / kbps.len() as f64
        },
        recv_kbps_min: kbps.iter().copied().reduce(f64::min).unwrap_or(0.0),
        server,
        tester,
        tester_udp_sockets,
        server_delay_ms,
        probe_layers: LayerCounts::of(
            subscribers
                .iter()
                .map(|p| p.with_state(|s| s.video_layers))
                .fold([0; 4], |a, b| std::array::from_fn(|i| a[i] + b[i])),
        ),
    };
    for peer in publishers.into_iter().chain(subscribers) {
        let _ = peer.delete().await;
    }
    print_summary(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report.connected == asked_publishers + asked_subscribers)
}

/// `[#####...............]`: `done` of `total`, 20 characters wide.
fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    )
}

fn print_summary(r: &Report) {
    println!(
        "peers            {} publishers, {} subscribers, {} connected",
        r.publishers, r.subscribers, r.connected
    );
    println!("window           {:.1} s", r.duration_s);
    println!(
        "packets          {} sent, {} received, {:.3} % lost",
        r.packets_sent, r.packets_received, r.loss_pct
    );
    println!(
        "latency          p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.max
    );
    println!(
        "join             first packet p50 {:.0} ms, p99 {:.0} ms",
        r.join_ms.p50, r.join_ms.p99
    );
    println!(
        "                 first keyframe p50 {:.0} ms, p99 {:.0} ms",
        r.join_keyframe_ms.p50, r.join_keyframe_ms.p99
    );
    println!(
        "per subscriber   {:.0} kbit/s (the lowest {:.0} kbit/s)",
        r.recv_kbps_per_subscriber, r.recv_kbps_min
    );
    let l = r.probe_layers;
    println!(
        "layers (probes)  q {}, h {}, f {}, without simulcast {} video packets",
        l.q, l.h, l.f, l.plain
    );
    match r.server {
        Some(s) => println!(
            "server           {:.1} % CPU, {:.1} MiB RSS",
            s.cpu_pct, s.rss_mb
        ),
        None => println!("server           unknown (give --server-pid)"),
    }
    if let Some(t) = r.tester {
        println!(
            "tester           {:.1} % CPU, {:.1} MiB RSS, {} UDP sockets",
            t.cpu_pct,
            t.rss_mb,
            r.tester_udp_sockets.map_or("?".into(), |n| n.to_string())
        );
    }
    if let Some(d) = r.server_delay_ms {
        println!(
            "server delay     p50 {:.2} ms, p99 {:.2} ms (sluice_forward_delay_seconds)",
            d.p50, d.p99
        );
    }
}

/// Put every count-only subscriber on one shared socket.
#[cfg(target_os = "linux")]
fn share_one_socket() -> std::io::Result<()> {
    sluice_testkit::endpoint::share_one_socket()
}

/// Shared sockets need Linux.
#[cfg(not(target_os = "linux"))]
fn share_one_socket() -> std::io::Result<()> {
    Err(std::io::Error::other("needs Linux"))
}

/// `--find-capacity`: the search, its summary and JSON.
async fn run_capacity(args: Args) -> Result<bool, String> {
    let found = capacity::find(&args).await?;
    println!(
        "capacity: {} subscribers (last step within the limits; server CPU limit {:.0} %)",
        found.capacity_subscribers, found.cpu_limit_pct
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(true)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.shared_socket
        && let Err(e) = share_one_socket()
    {
        eprintln!("sluice-loadtest: --shared-socket: {e}");
        return ExitCode::FAILURE;
    }
    let result = if args.find_capacity {
        run_capacity(args).await
    } else {
        run(args).await
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fewer peers connected than asked");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_probe, progress_bar};

    /// Probes spread over the join order, the last subscriber among them.
    #[test]
    fn probes_are_spread_and_include_the_last_subscriber() {
        let probes = |count, k| {
            (0..count)
                .filter(|&n| is_probe(n, count, k))
                .collect::<Vec<_>>()
        };
        assert_eq!(probes(700, 2), [349, 699]);
        assert_eq!(probes(10, 1), [9]);
        assert_eq!(probes(9, 3), [2, 5, 8]);
        assert_eq!(probes(3, 5), [0, 1, 2]);
        assert_eq!(probes(4, 0), Vec::<usize>::new());
        assert_eq!(probes(0, 2), Vec::<usize>::new());
    }

    #[test]
    fn the_progress_bar_fills_with_time() {
        assert_eq!(progress_bar(0, 10), "[....................]");
        assert_eq!(progress_bar(5, 20), "[#####...............]");
        assert_eq!(progress_bar(10, 10), "[####################]");
        assert_eq!(progress_bar(3, 0), "[####################]");
    }
}
