//! `sluice-loadtest`: synthetic publishers and subscribers against a running
//! Sluice, reporting what each subscriber received.
//!
//! This first version runs one task per peer with the test peers of
//! `sluice-testkit`; multiplexing many peers over few sockets, simulcast
//! media, latency and the JSON report come with the load-test issue.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice_testkit::peer::PeerState;
use sluice_testkit::{Kind, Peer, PeerOptions};

/// Synthetic WHIP publishers and WHEP subscribers.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Room name.
    #[arg(long, default_value = "load")]
    room: String,
    /// Publishers (each one replaces the previous as the room's feed).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Seconds to run after everyone joined.
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

/// Received and lost packets of one kind, from sequence numbers.
fn received_and_lost(state: &PeerState, kind: Kind) -> (u64, u64) {
    let seqs: Vec<u64> = state
        .received
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.seq)
        .collect();
    let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) else {
        return (0, 0);
    };
    let expected = last - first + 1;
    (
        seqs.len() as u64,
        expected.saturating_sub(seqs.len() as u64),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let options = |publish| PeerOptions::new(&args.url, &args.room, publish);
    let mut peers = Vec::new();
    for i in 0..args.publishers + args.subscribers {
        match Peer::start(options(i < args.publishers)).await {
            Ok(peer) => peers.push(peer),
            Err(e) => {
                eprintln!("peer {i} could not join: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (publishers, subscribers) = peers.split_at(args.publishers);
    for p in publishers.iter().chain(subscribers) {
        if !p.wait_for(Duration::from_secs(10), |s| s.connected).await {
            eprintln!("a peer did not connect within 10 s");
            return ExitCode::FAILURE;
        }
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let sent: usize = publishers
        .iter()
        .map(|p| p.with_state(|s| s.sent.len()))
        .sum();
    println!("publishers {}  packets sent {sent}", publishers.len());
    println!("subscriber  video_rx  video_lost  audio_rx  audio_lost");
    for (i, s) in subscribers.iter().enumerate() {
        let (vr, vl) = s.with_state(|s| received_and_lost(s, Kind::Video));
        let (ar, al) = s.with_state(|s| received_and_lost(s, Kind::Audio));
        println!("{i:>10}  {vr:>8}  {vl:>10}  {ar:>8}  {al:>10}");
    }
    for peer in peers {
        let _ = peer.delete().await;
    }
    ExitCode::SUCCESS
}
