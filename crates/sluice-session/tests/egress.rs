//! A viewer's direct egress against a str0m client: what a publisher
//! sends arrives sealed so the client opens it, losses are repaired from
//! the publisher's packets kept once for all viewers (as the shard keeps
//! them), and the sender reports the client gets describe what the egress
//! sent.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{PEER, SERVER, config, connected, to_client};
use sluice_router::{PublicationId, Rewritten, SourceKey};
use sluice_session::demux;
use sluice_session::history::{Kept, PacketHistory};
use sluice_session::{
    Buffers, IncomingRtp, MediaKind, Mid, Role, Session, SessionEvent, SessionOutput,
};
use str0m::media::MediaTime;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// What the viewer's client got: sequence number and payload of each
/// packet, and each new sender report (packet count, RTP time) with the
/// RTP timestamp of the packet it first came with.
#[derive(Default)]
struct Received {
    packets: Vec<(u64, Vec<u8>)>,
    reports: Vec<(u32, u64, u32)>,
}

/// Move everything `client` has for the server into `session`.
fn client_to_server(
    client: &mut Rtc,
    session: &mut Session,
    now: Instant,
    received: &mut Received,
) {
    let (peer, server): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), SERVER.parse().unwrap());
    loop {
        match client.poll_output().unwrap() {
            Output::Timeout(_) => return,
            Output::Transmit(t) => session.handle_datagram(now, peer, server, &t.contents),
            Output::Event(Event::RtpPacket(p)) => {
                if let Some(info) = p.last_sender_info {
                    let report = (info.sender_packet_count, info.rtp_time.numer());
                    if received.reports.last().map(|r| (r.0, r.1)) != Some(report) {
                        received
                            .reports
                            .push((report.0, report.1, p.header.timestamp));
                    }
                }
                received.packets.push((*p.seq_no, p.payload.to_vec()));
            }
            Output::Event(_) => {}
        }
    }
}

/// The publisher stream the tests forward from.
const SOURCE: SourceKey = SourceKey {
    publication: PublicationId(1),
    layer: 0,
};

/// Forward `rtp` to `viewer`'s `video` track as its packet `seq`, the
/// publisher's timestamp kept, as the shard would.
fn forward(viewer: &mut Session, video: Mid, rtp: &IncomingRtp, seq: u64) -> bool {
    let rewritten = Rewritten {
        seq,
        ts: rtp.packet.header.timestamp,
        vp8: None,
    };
    viewer.write_rtp(video, rtp, SOURCE, &rewritten, &mut Buffers::default())
}

/// The publisher's client sends one small VP8 frame on `video`; returns
/// what the publisher's session made of it.
fn publish_frame(
    sender: &mut Rtc,
    video: Mid,
    publisher: &mut Session,
    now: Instant,
    frame: u32,
) -> Vec<IncomingRtp> {
    let writer = sender.writer(video).unwrap();
    let pt = writer.payload_params().next().unwrap().pt();
    let payload = vec![0x10, 0x02, 0x00, frame as u8, (frame >> 8) as u8, 7, 7, 7];
    let rtp_time = MediaTime::from_90khz(u64::from(frame) * 900);
    writer.write(pt, now, rtp_time, payload).unwrap();
    sender.handle_input(Input::Timeout(now)).unwrap();
    client_to_server(sender, publisher, now, &mut Received::default());
    publisher.handle_timeout(now);
    let mut packets = Vec::new();
    loop {
        match publisher.poll() {
            SessionOutput::Timeout(_) => return packets,
            SessionOutput::Event(SessionEvent::Rtp(rtp)) => packets.push(*rtp),
            _ => {}
        }
    }
}

#[test]
fn a_viewer_gets_media_repairs_and_reports_from_the_direct_egress() {
    let config = config(None);
    let (mut publisher, mut sender, sender_video, t0) = connected(Role::Publisher, &config);
    let (mut viewer, mut watcher, _, t1) = connected(Role::Viewer, &config);
    assert!(
        viewer.direct_egress(),
        "a viewer without estimation uses it"
    );
    assert!(!publisher.direct_egress());
    let (video, _) = viewer
        .send_tracks()
        .into_iter()
        .find(|(_, kind)| *kind == MediaKind::Video)
        .unwrap();

    let mut now = t0.max(t1);
    let mut sent = Vec::new();
    let mut received = Received::default();
    let mut dropped = 0;
    let mut video_ssrc = None;
    let mut seq = 1_000u64;
    let mut history = PacketHistory::default();
    for frame in 0..300u32 {
        now += Duration::from_millis(10);
        // The server forwards what the publisher's session got.
        for rtp in publish_frame(&mut sender, sender_video, &mut publisher, now, frame) {
            history.keep(
                SOURCE,
                Kept {
                    params: rtp.params,
                    seq: *rtp.packet.seq_no,
                    ts: rtp.packet.header.timestamp,
                    marker: rtp.packet.header.marker,
                    keyframe: false,
                    payload: rtp.packet.payload.clone(),
                    vp8: None,
                    video_orientation: None,
                    arrival: now,
                },
            );
            assert!(forward(&mut viewer, video, &rtp, seq));
            sent.push((seq, rtp.packet.payload.to_vec()));
            seq += 1;
        }

        // The viewer's session sends; every tenth new video packet is lost.
        viewer.handle_timeout(now);
        loop {
            match viewer.poll() {
                SessionOutput::Timeout(_) => break,
                SessionOutput::Transmit(t) => {
                    let d = &t.contents[..];
                    let is_rtp = d[0] >> 6 == 2 && !(192..=223).contains(&d[1]);
                    if is_rtp {
                        // The first RTP datagram is an original, not a resend.
                        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
                        let video_ssrc = *video_ssrc.get_or_insert(ssrc);
                        if ssrc == video_ssrc && u16::from_be_bytes([d[2], d[3]]) % 10 == 5 {
                            dropped += 1;
                            continue;
                        }
                    }
                    // Polled after each datagram, as a real peer does (str0m
                    // holds one received packet per stream until polled).
                    to_client(&mut watcher, now, d);
                    client_to_server(&mut watcher, &mut viewer, now, &mut received);
                }
                SessionOutput::Event(SessionEvent::Resends(resends)) => {
                    for resend in &resends {
                        let kept = history.get(resend.source, resend.seq, now);
                        let kept = kept.expect("NACKed packets are kept");
                        viewer.resend(resend, kept, now, &mut Buffers::default());
                    }
                }
                SessionOutput::Event(_) => {}
            }
        }
        watcher.handle_input(Input::Timeout(now)).unwrap();
        client_to_server(&mut watcher, &mut viewer, now, &mut received);
    }

    assert!(dropped >= 20, "{dropped} packets dropped");
    let mut got = received.packets.clone();
    got.sort();
    got.dedup();
    // All but the newest packets (their resends may still be due) arrived
    // as sent, the dropped ones among them by resend.
    let settled = &sent[..sent.len() - 20];
    for (seq, payload) in settled {
        let arrived = got.iter().find(|(s, _)| s == seq);
        assert_eq!(arrived.map(|(_, p)| p), Some(payload), "packet {seq}");
    }
    // Sender reports count what the egress sent (str0m itself sent
    // nothing), and their RTP time is that of the packets sent with them
    // (a frame every 900 ticks, 10 ms at 90 kHz).
    assert!(received.reports.len() >= 2, "{:?}", received.reports);
    let newest = received.reports.iter().map(|r| r.0).max().unwrap_or(0);
    assert!(
        newest >= 150,
        "the last sender report counts {newest} packets"
    );
    for &(packets, rtp_time, ts) in &received.reports {
        assert!(packets > 0, "a sender report says {packets} packets");
        let off = rtp_time.abs_diff(u64::from(ts));
        assert!(off <= 2 * 900, "report RTP time {rtp_time}, packet {ts}");
    }
}

#[test]
fn media_follows_a_viewer_to_its_new_address_once_ice_picks_it() {
    let config = config(None);
    let (mut publisher, mut sender, sender_video, t0) = connected(Role::Publisher, &config);
    let (mut viewer, mut watcher, _, t1) = connected(Role::Viewer, &config);
    let (video, _) = viewer
        .send_tracks()
        .into_iter()
        .find(|(_, kind)| *kind == MediaKind::Video)
        .unwrap();
    let server: SocketAddr = SERVER.parse().unwrap();
    let (old, new): (SocketAddr, SocketAddr) =
        (PEER.parse().unwrap(), "127.0.0.1:6001".parse().unwrap());

    // The viewer's network changes: its client gathers a new address and
    // drops the old one, and its ICE agent checks and nominates a new pair.
    let mut now = t0.max(t1);
    watcher.add_local_candidate(Candidate::host(new, "udp").unwrap());
    let gone = Candidate::host(old, "udp").unwrap();
    watcher.direct_api().invalidate_candidate(&gone);
    // The client's nominating check from the new address; when the server
    // answered it (in RTP datagrams sent until then); where each went.
    let mut nomination = None;
    let mut answered = None;
    let mut media = Vec::new();
    let mut seq = 1_000u64;
    for frame in 0..60u32 {
        now += Duration::from_millis(5);
        for rtp in publish_frame(&mut sender, sender_video, &mut publisher, now, frame) {
            forward(&mut viewer, video, &rtp, seq);
            seq += 1;
        }
        watcher.handle_input(Input::Timeout(now)).unwrap();
        viewer.handle_timeout(now);
        for _ in 0..10 {
            // Client to server, from whichever address it sends on.
            while let Output::Transmit(_) | Output::Event(_) = {
                let output = watcher.poll_output().unwrap();
                if let Output::Transmit(t) = &output {
                    if t.source == new && nomination.is_none() {
                        nomination = demux::nomination(&t.contents);
                    }
                    viewer.handle_datagram(now, t.source, server, &t.contents);
                }
                output
            } {}
            // Server to client: only the new address still reaches it.
            while let SessionOutput::Transmit(_) | SessionOutput::Event(_) = {
                let output = viewer.poll();
                if let SessionOutput::Transmit(t) = &output {
                    let d = &t.contents[..];
                    if nomination.is_some() && demux::binding_success(d) == nomination {
                        answered.get_or_insert(media.len());
                    }
                    if d.len() > 1 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1]) {
                        media.push(t.destination);
                    }
                    if t.destination == new {
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source: server,
                                destination: new,
                                contents: d.try_into().unwrap(),
                            },
                        );
                        watcher.handle_input(input).unwrap();
                    }
                }
                output
            } {}
        }
    }
    let answered = answered.expect("the server answered the nomination of the new address");
    assert!(media.len() > answered + 20, "{} datagrams", media.len());
    // Some media went to the old address before the nomination; none
    // after the server answered it.
    assert!(media[..answered].iter().all(|d| *d == old));
    assert_eq!(
        media[answered..].iter().filter(|d| **d == old).count(),
        0,
        "media to the old address after ICE moved: {:?}",
        &media[answered..]
    );
}
