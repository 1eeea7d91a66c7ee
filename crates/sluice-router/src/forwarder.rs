//! Per-subscription RTP rewriting.
//!
//! A [`Forwarder`] turns packets of whichever source a subscription currently
//! follows into one continuous outgoing stream: sequence numbers without gaps
//! or jumps, timestamps that keep advancing with wall time, and VP8 picture
//! ids that never repeat. Switching to another source (a new publisher, or a
//! different simulcast layer) happens only at a keyframe of the new source,
//! so the viewer never sees a broken frame.

use std::time::Instant;

use crate::router::{PacketMeta, PublicationId};

/// One incoming stream: a layer of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The publication the packets belong to.
    pub publication: PublicationId,
    /// The simulcast layer index within that publication (0 without simulcast).
    pub layer: u8,
}

/// The rewritten header fields of one forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended outgoing sequence number (starts below 2^15, so ROC 0).
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub ts: u32,
    /// Rewritten VP8 picture id and TL0PICIDX, when the source carries them.
    pub vp8: Option<Vp8Ids>,
}

/// VP8 payload descriptor identifiers that need rewriting across sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Ids {
    /// 15-bit picture id.
    pub picture_id: u16,
    /// Temporal level zero index, when present.
    pub tl0_pic_idx: Option<u8>,
}

/// What was last sent, so the next source can continue from it.
#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    ts: u32,
    at: Instant,
    picture_id: u16,
    tl0_pic_idx: u8,
}

/// Rewriting state of one subscription.
#[derive(Debug)]
pub struct Forwarder {
    is_video: bool,
    clock_rate: u32,
    initial_seq: u64,
    current: Option<SourceKey>,
    target: Option<SourceKey>,
    /// First incoming sequence number of the current source mapping; older
    /// (reordered) packets belong to the previous mapping and are dropped.
    switch_seq: u64,
    seq_offset: u64,
    ts_offset: u32,
    picture_id_offset: u16,
    tl0_offset: u8,
    last: Option<LastOut>,
}

impl Forwarder {
    /// A forwarder for audio (`is_video == false`) or video at `clock_rate`.
    ///
    /// `seed` picks the first outgoing sequence number (kept below 2^15, as
    /// RFC 3550 asks for a random start and SRTP needs a zero rollover count).
    pub fn new(is_video: bool, clock_rate: u32, seed: u64) -> Self {
        Forwarder {
            is_video,
            clock_rate,
            initial_seq: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 49,
            current: None,
            target: None,
            switch_seq: 0,
            seq_offset: 0,
            ts_offset: 0,
            picture_id_offset: 0,
            tl0_offset: 0,
            last: None,
        }
    }

    /// The source being forwarded now, if any.
    pub fn current(&self) -> Option<SourceKey> {
        self.current
    }

    /// The source this forwarder wants to forward.
    pub fn target(&self) -> Option<SourceKey> {
        self.target
    }

    /// Ask to forward `target` from its next keyframe on (audio switches at
    /// once). `None` stops forwarding while keeping the continuity state.
    pub fn set_target(&mut self, target: Option<SourceKey>) {
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
    }

    /// Whether the forwarder waits for a keyframe of its target before it
    /// can forward anything from it.
    pub fn needs_keyframe(&self) -> bool {
        self.is_video && self.target.is_some() && self.target != self.current
    }

    /// Decide what to do with one packet of `source`: `None` to drop it, or
    /// the rewritten header fields to send it with.
    pub fn on_packet(&mut self, source: SourceKey, meta: &PacketMeta) -> Option<Rewritten> {
        if self.target == Some(source) && self.current != Some(source) {
            if self.is_video && !meta.keyframe {
                return None;
            }
            self.switch_to(source, meta);
        } else if self.current.is_none()
            && meta.keyframe
            && self
                .target
                .is_some_and(|t| t.publication == source.publication)
        {
            // Showing nothing yet: start on the first keyframe of any layer
            // of the target's publication, and move to the target at its
            // own keyframe (a viewer sees a picture sooner).
            self.switch_to(source, meta);
        }
        if self.current != Some(source) || meta.seq < self.switch_seq {
            return None;
        }
        let seq = meta.seq.wrapping_add(self.seq_offset);
        let ts = meta.ts.wrapping_add(self.ts_offset);
        let vp8 = meta.vp8.map(|ids| Vp8Ids {
            picture_id: ids.picture_id.wrapping_add(self.picture_id_offset) & 0x7fff,
            tl0_pic_idx: ids.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_offset)),
        });
        if self.last.is_none_or(|l| seq > l.seq) {
            self.last = Some(LastOut {
                seq,
                ts,
                at: meta.arrival,
                picture_id: vp8.map_or(0, |v| v.picture_id),
                tl0_pic_idx: vp8.and_then(|v| v.tl0_pic_idx).unwrap_or(0),
            });
        }
        Some(Rewritten { seq, ts, vp8 })
    }

    /// Start forwarding `source` so that its first packet (`meta`) follows
    /// what was sent before without a gap.
    fn switch_to(&mut self, source: SourceKey, meta: &PacketMeta) {
        let (next_seq, next_ts, next_pic, next_tl0) = match self.last {
            None => (self.initial_seq, meta.ts, 0, 0),
            Some(last) => {
                let elapsed = meta.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000)
                    .clamp(1, u128::from(u32::MAX / 2)) as u32;
                (
                    last.seq + 1,
                    last.ts.wrapping_add(ticks),
                    last.picture_id.wrapping_add(1),
                    last.tl0_pic_idx.wrapping_add(1),
                )
            }
        };
        self.seq_offset = next_seq.wrapping_sub(meta.seq);
        self.ts_offset = next_ts.wrapping_sub(meta.ts);
        if let Some(ids) = meta.vp8 {
            self.picture_id_offset = next_pic.wrapping_sub(ids.picture_id);
            self.tl0_offset = ids.tl0_pic_idx.map_or(0, |t| next_tl0.wrapping_sub(t));
        }
        self.switch_seq = meta.seq;
        self.current = Some(source);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn src(publication: u64, layer: u8) -> SourceKey {
        SourceKey {
            publication: PublicationId(publication),
            layer,
        }
    }

    fn pkt(seq: u64, ts: u32, keyframe: bool, at: Instant) -> PacketMeta {
        PacketMeta {
            seq,
            ts,
            marker: false,
            size: 100,
            keyframe,
            vp8: None,
            audio_level: None,
            arrival: at,
        }
    }

    #[test]
    fn video_waits_for_keyframe_then_counts_from_a_low_start() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 7);
        f.set_target(Some(src(1, 0)));
        assert!(f.needs_keyframe());
        assert_eq!(f.on_packet(src(1, 0), &pkt(500, 1000, false, t0)), None);
        let first = f.on_packet(src(1, 0), &pkt(501, 4000, true, t0)).unwrap();
        assert!(first.seq < 1 << 15);
        assert!(!f.needs_keyframe());
        let second = f.on_packet(src(1, 0), &pkt(502, 4000, false, t0)).unwrap();
        assert_eq!(second.seq, first.seq + 1);
        assert_eq!(second.ts, first.ts);
        // Packets of other sources are not forwarded.
        assert_eq!(f.on_packet(src(2, 0), &pkt(9, 9, true, t0)), None);
    }

    #[test]
    fn a_new_viewer_starts_on_any_layer_then_moves_to_its_target() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 9);
        f.set_target(Some(src(1, 2)));
        // A keyframe of layer 0 arrives first: shown at once.
        let a = f.on_packet(src(1, 0), &pkt(40, 0, true, t0)).unwrap();
        assert_eq!(f.current(), Some(src(1, 0)));
        assert!(f.needs_keyframe(), "still heading for layer 2");
        let b = f.on_packet(src(1, 0), &pkt(41, 0, false, t0)).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        // Layer 2's keyframe: switch, without a gap.
        let c = f.on_packet(src(1, 2), &pkt(900, 0, true, t0)).unwrap();
        assert_eq!(c.seq, b.seq + 1);
        assert_eq!(f.current(), Some(src(1, 2)));
        assert_eq!(
            f.on_packet(src(1, 0), &pkt(42, 0, true, t0)),
            None,
            "layer 0 no longer"
        );
        // Keyframes of another publication never start a viewer.
        let mut g = Forwarder::new(true, 90_000, 9);
        g.set_target(Some(src(1, 2)));
        assert_eq!(g.on_packet(src(2, 0), &pkt(1, 0, true, t0)), None);
    }

    #[test]
    fn publisher_change_continues_sequence_and_time_without_gap() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 1);
        f.set_target(Some(src(1, 0)));
        let mut last = None;
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(i * 10);
            last = f.on_packet(src(1, 0), &pkt(60_000 + i, 3000 * i as u32, i == 0, at));
        }
        let last = last.unwrap();

        // The new publisher starts 500 ms later with unrelated numbers.
        f.set_target(Some(src(2, 0)));
        let t1 = t0 + Duration::from_millis(990 + 500);
        assert_eq!(f.on_packet(src(2, 0), &pkt(17, 123_456, false, t1)), None);
        let first = f.on_packet(src(2, 0), &pkt(18, 123_456, true, t1)).unwrap();
        assert_eq!(first.seq, last.seq + 1, "no gap in sequence numbers");
        let dt = first.ts.wrapping_sub(last.ts);
        assert_eq!(dt, 45_000, "timestamps advance by the 500 ms of wall time");
        let next = f
            .on_packet(src(2, 0), &pkt(19, 126_456, false, t1))
            .unwrap();
        assert_eq!(next.seq, first.seq + 1);
        assert_eq!(next.ts.wrapping_sub(first.ts), 3000);
        // A late packet of the old publisher is dropped.
        assert_eq!(
            f.on_packet(src(1, 0), &pkt(60_100, 300_000, false, t1)),
            None
        );
    }

    #[test]
    fn reordered_packets_keep_their_relative_numbers() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(false, 48_000, 3);
        f.set_target(Some(src(1, 0)));
        let a = f.on_packet(src(1, 0), &pkt(10, 960, false, t0)).unwrap();
        let c = f.on_packet(src(1, 0), &pkt(12, 2880, false, t0)).unwrap();
        let b = f.on_packet(src(1, 0), &pkt(11, 1920, false, t0)).unwrap();
        assert_eq!((b.seq - a.seq, c.seq - a.seq), (1, 2));
        // Packets from before the switch point are dropped.
        assert_eq!(f.on_packet(src(1, 0), &pkt(9, 0, false, t0)), None);
    }

    #[test]
    fn vp8_picture_ids_continue_across_sources() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 3);
        let with_ids = |seq, pic, tl0, key| PacketMeta {
            vp8: Some(Vp8Ids {
                picture_id: pic,
                tl0_pic_idx: Some(tl0),
            }),
            ..pkt(seq, 0, key, t0)
        };
        f.set_target(Some(src(1, 0)));
        let a = f
            .on_packet(src(1, 0), &with_ids(1, 0x7ffe, 200, true))
            .unwrap();
        let b = f
            .on_packet(src(1, 0), &with_ids(2, 0x7fff, 201, false))
            .unwrap();
        assert_eq!(
            a.vp8.unwrap().picture_id.wrapping_add(1) & 0x7fff,
            b.vp8.unwrap().picture_id
        );
        f.set_target(Some(src(1, 2)));
        let c = f.on_packet(src(1, 2), &with_ids(90, 5, 7, true)).unwrap();
        let (bv, cv) = (b.vp8.unwrap(), c.vp8.unwrap());
        assert_eq!(cv.picture_id, (bv.picture_id + 1) & 0x7fff);
        assert_eq!(cv.tl0_pic_idx, bv.tl0_pic_idx.map(|t| t.wrapping_add(1)));
    }
}
