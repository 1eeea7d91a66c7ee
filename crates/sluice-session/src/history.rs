//! Publisher video kept for resends, once per incoming stream.
//!
//! Every viewer of a layer gets the same payloads with its own header
//! fields, and those follow from the publisher's by offsets that change
//! only when the viewer's forwarder switches source. So the packets are
//! kept here, once, and a viewer's direct egress ([`crate::egress`]) keeps
//! only its offsets: a resend for a viewer is the kept packet with the
//! viewer's offsets applied. (A history per viewer cost about 7 % of the
//! server's time and a sixth of its memory at 700 viewers:
//! docs/benchmarks.md.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_router::{IdMap, PublicationId, SourceKey};
use str0m::format::PayloadParams;
use str0m::rtp::{VideoOrientation, Vp8Descriptor};

/// How long a packet stays available for NACK resends (here and in
/// str0m's egress). A second covers a few round trips of any usable path
/// (libwebrtc keeps about as long: the larger of 1 s and three round
/// trips).
pub const HISTORY: Duration = Duration::from_secs(1);
/// Upper bound on packets kept per stream (about 12 Mbit/s of video).
pub const HISTORY_PACKETS: usize = 1024;
/// How far ahead of their expiry packets leave: those that would expire
/// within this time go together, so the oldest packet is looked at about
/// this often rather than on every packet kept.
const EVICT_EVERY: Duration = Duration::from_millis(100);

/// A publisher packet as received, with what a resend needs besides the
/// viewer's offsets, and what a first write to a viewer needs (a viewer
/// that connects just after a keyframe starts on the kept one:
/// [`PacketHistory::since_keyframe`]).
#[derive(Debug, Clone)]
pub struct Kept {
    /// The publisher's payload parameters (codec, payload type).
    pub params: PayloadParams,
    /// The publisher's sequence number (extended).
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub ts: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// Whether it starts a keyframe.
    pub keyframe: bool,
    /// The payload, shared with every viewer's datagram.
    pub payload: Arc<[u8]>,
    /// The payload's VP8 descriptor (VP8 only).
    pub vp8: Option<Vp8Descriptor>,
    /// The video orientation extension's value.
    pub video_orientation: Option<VideoOrientation>,
    /// When it reached the server.
    pub arrival: Instant,
}

/// The packets kept of every incoming video stream of one shard.
#[derive(Debug, Default)]
pub struct PacketHistory {
    streams: IdMap<SourceKey, Stream>,
}

impl PacketHistory {
    /// Keep `packet` of `source`.
    pub fn keep(&mut self, source: SourceKey, packet: Kept) {
        self.streams.entry(source).or_default().keep(packet);
    }

    /// The packet of `source` with sequence number `seq`, if it is kept
    /// and not older than [`HISTORY`] at `now`.
    pub fn get(&self, source: SourceKey, seq: u64, now: Instant) -> Option<&Kept> {
        self.streams
            .get(&source)?
            .get(seq)
            .filter(|p| now.saturating_duration_since(p.arrival) <= HISTORY)
    }

    /// The packets of `source` from the start of its newest keyframe to
    /// the newest packet, in order, if that keyframe arrived within
    /// `window` before `now` and none of the packets since is missing: a
    /// viewer that connects now can start on them rather than wait for
    /// another keyframe.
    pub fn since_keyframe(
        &self,
        source: SourceKey,
        now: Instant,
        window: Duration,
    ) -> Option<impl Iterator<Item = &Kept>> {
        let packets = &self.streams.get(&source)?.packets;
        let start = packets.iter().rposition(|p| p.keyframe)?;
        let newest = packets.back()?;
        let run = packets.range(start..);
        let complete = newest.seq - packets[start].seq + 1 == run.len() as u64;
        let recent = now.saturating_duration_since(packets[start].arrival) <= window;
        (complete && recent).then_some(run)
    }

    /// Drop what is kept of `publication`'s streams (it ended).
    pub fn forget(&mut self, publication: PublicationId) {
        self.streams.retain(|k, _| k.publication != publication);
    }
}

/// One stream's kept packets, in sequence order: each for at least
/// [`HISTORY`] less [`EVICT_EVERY`], and no more than [`HISTORY_PACKETS`].
#[derive(Debug, Default)]
struct Stream {
    packets: VecDeque<Kept>,
    /// When the oldest packet kept is due to go.
    evict_after: Option<Instant>,
}

impl Stream {
    /// Keep `packet`. One the publisher had to resend arrives after later
    /// ones and goes before them; a second copy of one kept is ignored.
    fn keep(&mut self, packet: Kept) {
        let now = packet.arrival;
        if self.packets.len() >= HISTORY_PACKETS || self.evict_after.is_some_and(|t| now > t) {
            let keep_for = HISTORY.saturating_sub(EVICT_EVERY);
            while self.packets.len() >= HISTORY_PACKETS
                || self
                    .packets
                    .front()
                    .is_some_and(|p| now.saturating_duration_since(p.arrival) > keep_for)
            {
                self.packets.pop_front();
            }
            self.evict_after = self.packets.front().map(|p| p.arrival + HISTORY);
        }
        if self.packets.is_empty() {
            self.evict_after = Some(now + HISTORY);
        }
        match self.packets.back() {
            None => self.packets.push_back(packet),
            Some(newest) if newest.seq < packet.seq => self.packets.push_back(packet),
            Some(_) => {
                if let Err(at) = self.packets.binary_search_by_key(&packet.seq, |p| p.seq) {
                    self.packets.insert(at, packet);
                }
            }
        }
    }

    fn get(&self, seq: u64) -> Option<&Kept> {
        let at = self.packets.binary_search_by_key(&seq, |p| p.seq).ok()?;
        self.packets.get(at)
    }
}

#[cfg(test)]
mod tests {
    use str0m::format::{Codec, CodecSpec, FormatParams};
    use str0m::media::Frequency;

    use super::*;

    fn kept(seq: u64, arrival: Instant) -> Kept {
        let vp8 = CodecSpec {
            codec: Codec::Vp8,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        };
        Kept {
            params: PayloadParams::new(96.into(), None, vp8),
            seq,
            ts: seq as u32 * 3000,
            marker: false,
            keyframe: false,
            payload: Arc::from(&[seq as u8][..]),
            vp8: None,
            video_orientation: None,
            arrival,
        }
    }

    fn source(publication: u64, layer: u8) -> SourceKey {
        SourceKey {
            publication: PublicationId(publication),
            layer,
        }
    }

    #[test]
    fn packets_are_found_by_stream_and_sequence_number() {
        let now = Instant::now();
        let mut h = PacketHistory::default();
        // 12 comes late (the publisher resent it), 11 twice.
        for seq in [10, 11, 13, 12, 11] {
            h.keep(source(1, 2), kept(seq, now));
        }
        h.keep(source(1, 0), kept(500, now));
        let seqs: Vec<u64> = h.streams[&source(1, 2)]
            .packets
            .iter()
            .map(|p| p.seq)
            .collect();
        assert_eq!(seqs, [10, 11, 12, 13]);
        assert_eq!(h.get(source(1, 2), 12, now).map(|p| p.ts), Some(36_000));
        assert!(h.get(source(1, 2), 14, now).is_none(), "not received");
        assert!(h.get(source(1, 1), 12, now).is_none(), "another layer");
        assert_eq!(h.get(source(1, 0), 500, now).map(|p| p.seq), Some(500));
        let later = now + HISTORY + Duration::from_millis(1);
        assert!(
            h.get(source(1, 2), 12, later).is_none(),
            "too old to resend"
        );
        h.forget(PublicationId(1));
        assert!(h.get(source(1, 0), 500, now).is_none());
    }

    #[test]
    fn a_recent_keyframe_and_what_followed_are_there_to_start_on() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let window = Duration::from_millis(500);
        let mut h = PacketHistory::default();
        let stream = source(1, 2);
        let seqs = |h: &PacketHistory, now| -> Option<Vec<u64>> {
            Some(
                h.since_keyframe(stream, now, window)?
                    .map(|p| p.seq)
                    .collect(),
            )
        };
        for seq in 0..5 {
            h.keep(stream, kept(seq, ms(seq * 10)));
        }
        assert_eq!(seqs(&h, ms(50)), None, "no keyframe kept");
        for seq in 5..10 {
            let keyframe = seq == 5 || seq == 8;
            h.keep(
                stream,
                Kept {
                    keyframe,
                    ..kept(seq, ms(seq * 10))
                },
            );
        }
        assert_eq!(seqs(&h, ms(100)), Some(vec![8, 9]), "from the newest");
        assert_eq!(seqs(&h, ms(581)), None, "too old to start on");
        // A gap after the keyframe: the viewer would start on a broken
        // picture.
        h.keep(stream, kept(11, ms(110)));
        assert_eq!(seqs(&h, ms(110)), None);
        h.keep(stream, kept(10, ms(115)));
        assert_eq!(seqs(&h, ms(115)), Some(vec![8, 9, 10, 11]));
        assert!(h.since_keyframe(source(1, 1), ms(115), window).is_none());
    }

    #[test]
    fn expired_packets_go_in_chunks_and_the_count_is_bounded() {
        let mut s = Stream::default();
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        // One packet every 10 ms for a second: none is older than that.
        for seq in 0..=100 {
            s.keep(kept(seq, ms(seq * 10)));
        }
        assert!(s.get(0).is_some(), "a second old");
        // The first expires: it goes with those that would within 100 ms.
        s.keep(kept(101, ms(1_010)));
        assert!(s.get(0).is_none());
        assert!(s.get(10).is_none(), "older than 0.9 s at 1.01 s");
        assert!(s.get(11).is_some());
        for seq in 102..102 + HISTORY_PACKETS as u64 {
            s.keep(kept(seq, ms(1_010)));
        }
        assert_eq!(s.packets.len(), HISTORY_PACKETS);
        assert!(s.get(101).is_none(), "the count bound drops the oldest");
    }
}
