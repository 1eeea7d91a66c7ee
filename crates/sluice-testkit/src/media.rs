//! Synthetic media that looks real to an SFU: VP8 packets with valid payload
//! descriptors and keyframe headers, H.264 single NAL unit packets with IDR
//! and non-IDR slices, and Opus-sized audio packets.

use crate::clip::{self, Clip};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Length of the VP8 payload descriptor this generator writes (X, I, 15-bit
/// picture id). Bytes after it are never rewritten by an SFU.
pub const VP8_DESCRIPTOR_LEN: usize = 4;

/// The video codec a synthetic publisher sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741).
    #[default]
    Vp8,
    /// H.264 (RFC 6184), packetization mode 1.
    H264,
    /// VP9 (RFC 9628), flexible mode off, no picture id.
    Vp9,
    /// AV1 (AOM RTP payload).
    Av1,
}

impl VideoCodec {
    /// How many leading payload bytes an SFU may rewrite (the VP8
    /// descriptor's picture ids); the rest must arrive unchanged.
    pub fn rewritable_prefix(self) -> usize {
        match self {
            VideoCodec::Vp8 => VP8_DESCRIPTOR_LEN,
            VideoCodec::H264 | VideoCodec::Vp9 | VideoCodec::Av1 => 0,
        }
    }

    /// Whether `payload` starts a keyframe of this codec.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            VideoCodec::Vp8 => vp8_starts_keyframe(payload),
            VideoCodec::H264 => payload.first().is_some_and(|b| b & 0x1f == 5),
            VideoCodec::Vp9 => payload.first().is_some_and(|b| b & 0x48 == 0x08),
            VideoCodec::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
        }
    }
}

/// Bytes at the end of every payload that carry its send time.
pub const STAMP_LEN: usize = 8;

/// The instant all stamps count from (shared by every peer of a process,
/// so a receiver can subtract a sender's stamp).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Write `now` into the last [`STAMP_LEN`] bytes of `payload` (its send
/// time, read back with [`sent_at`]).
pub fn stamp(payload: &mut [u8], now: Instant) {
    let micros = now.saturating_duration_since(epoch()).as_micros() as u64;
    let n = payload.len();
    payload[n - STAMP_LEN..].copy_from_slice(&micros.to_be_bytes());
}

/// When a payload made by [`SyntheticMedia`] in this process was sent.
pub fn sent_at(payload: &[u8]) -> Option<Instant> {
    let tail = payload.get(payload.len().checked_sub(STAMP_LEN)?..)?;
    let micros = u64::from_be_bytes(tail.try_into().ok()?);
    Some(epoch() + Duration::from_micros(micros))
}

/// Shape of the video one generator makes: a single stream, or one
/// simulcast layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoShape {
    /// Packets per frame.
    pub packets_per_frame: usize,
    /// Bytes per packet.
    pub packet_size: usize,
    /// Frames from one keyframe to the next (30 is one second).
    pub keyframe_every: u32,
    /// Written after the frame number, so a receiver knows which layer a
    /// packet came from.
    pub tag: u8,
}

impl Default for VideoShape {
    /// 3 packets of 300 bytes at 30 fps (about 216 kbit/s), a keyframe a second.
    fn default() -> Self {
        VideoShape {
            packets_per_frame: 3,
            packet_size: 300,
            keyframe_every: 30,
            tag: 0,
        }
    }
}

/// The three simulcast layers a synthetic publisher sends: rid and shape
/// (about 150, 600 and 2000 kbit/s at 30 fps, a keyframe every 3 s).
pub const SIMULCAST: [(&str, VideoShape); 3] = [
    (
        "q",
        VideoShape {
            packets_per_frame: 1,
            packet_size: 620,
            keyframe_every: 90,
            tag: 1,
        },
    ),
    (
        "h",
        VideoShape {
            packets_per_frame: 3,
            packet_size: 830,
            keyframe_every: 90,
            tag: 2,
        },
    ),
    (
        "f",
        VideoShape {
            packets_per_frame: 8,
            packet_size: 1040,
            keyframe_every: 90,
            tag: 3,
        },
    ),
];

/// Where the layer tag sits in a video payload: after the codec header and
/// the frame number (VP8 keyframe starts carry one more header byte).
pub fn layer_tag(codec: VideoCodec, payload: &[u8]) -> Option<u8> {
    let header = match codec {
        VideoCodec::Vp8 if payload.first().is_some_and(|b| b & 0x10 != 0) => VP8_DESCRIPTOR_LEN + 1,
        VideoCodec::Vp8 => VP8_DESCRIPTOR_LEN,
        VideoCodec::H264 | VideoCodec::Vp9 | VideoCodec::Av1 => 1,
    };
    payload.get(header + 4 + 1).copied()
}

/// Generator of numbered media frames, or of a looped VP8 clip.
#[derive(Debug, Default)]
pub struct SyntheticMedia {
    codec: VideoCodec,
    shape: VideoShape,
    /// Real VP8 frames to loop instead of made-up payloads.
    clip: Option<Clip>,
    /// The next frame of the clip.
    position: usize,
    frame: u32,
    audio: u32,
    force_keyframe: bool,
}

impl SyntheticMedia {
    /// A generator of `codec` video (and Opus-like audio).
    pub fn new(codec: VideoCodec) -> Self {
        Self::shaped(codec, VideoShape::default())
    }

    /// A generator of `codec` video in `shape`.
    pub fn shaped(codec: VideoCodec, shape: VideoShape) -> Self {
        SyntheticMedia {
            codec,
            shape,
            ..Default::default()
        }
    }

    /// A generator that loops `clip` (VP8); its payloads carry no send
    /// stamp or layer tag, so a browser can decode them.
    pub fn looping(clip: Clip) -> Self {
        SyntheticMedia {
            clip: Some(clip),
            ..Default::default()
        }
    }

    /// Whether payloads carry a send stamp ([`stamp`]) and a layer tag.
    pub fn stamps(&self) -> bool {
        self.clip.is_none()
    }

    /// Make the next video frame a keyframe (on PLI/FIR).
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// The packets of the next video frame, stamped with `now` (but for
    /// a clip's):
    /// `(payload, marker)` and whether it is a keyframe. The RTP timestamp
    /// is `frame * 3000` (30 fps).
    pub fn next_video_frame(&mut self, now: Instant) -> (Vec<(Vec<u8>, bool)>, bool, u32) {
        let frame = self.frame;
        self.frame += 1;
        if let Some(clip) = &self.clip {
            // A keyframe request restarts the loop at its keyframe.
            if std::mem::take(&mut self.force_keyframe) {
                self.position = 0;
            }
            let data = &clip.frames[self.position % clip.frames.len()];
            self.position = (self.position + 1) % clip.frames.len();
            let picture_id = (frame & 0x7fff) as u16;
            return (
                clip::packetize(data, picture_id),
                clip::is_keyframe(data),
                frame.wrapping_mul(3000),
            );
        }
        let shape = self.shape;
        let keyframe = self.force_keyframe || frame.is_multiple_of(shape.keyframe_every);
        self.force_keyframe = false;
        let picture_id = (frame & 0x7fff) as u16;
        let last = shape.packets_per_frame - 1;
        let packets = (0..shape.packets_per_frame)
            .map(|i| {
                let start = i == 0;
                let mut p = Vec::with_capacity(shape.packet_size);
                match self.codec {
                    VideoCodec::Vp8 => {
                        p.push(if start { 0x90 } else { 0x80 }); // X=1, S=start, PID=0
                        p.push(0x80); // I=1: picture id present
                        p.push(0x80 | (picture_id >> 8) as u8);
                        p.push(picture_id as u8);
                        if start {
                            // VP8 frame header: P bit (inverse key frame) and show_frame.
                            p.push(if keyframe { 0x10 } else { 0x11 });
                        }
                    }
                    // One slice per packet: IDR (type 5) or non-IDR (type 1).
                    VideoCodec::H264 => p.push(if keyframe { 0x65 } else { 0x41 }),
                    VideoCodec::Vp9 => {
                        // P (inter-predicted) unless a keyframe, B on the
                        // first packet, E on the last.
                        let mut d = if keyframe { 0x00 } else { 0x40 };
                        if start {
                            d |= 0x08;
                        }
                        if i == last {
                            d |= 0x04;
                        }
                        p.push(d);
                    }
                    // Aggregation header: N marks the start of a new coded
                    // video sequence (a keyframe); one OBU element (W=1).
                    VideoCodec::Av1 => p.push(if keyframe && start { 0x18 } else { 0x10 }),
                }
                p.extend(frame.to_be_bytes());
                p.push(i as u8);
                p.push(shape.tag);
                p.resize(shape.packet_size, (frame as u8) ^ (i as u8));
                stamp(&mut p, now);
                (p, i == last)
            })
            .collect();
        (packets, keyframe, frame.wrapping_mul(3000))
    }

    /// The next 20 ms audio packet, stamped with `now`, its RTP timestamp
    /// (48 kHz) and its audio level in -dBov for the RFC 6464 header
    /// extension: a second of speech (-25 to -34) then a second of
    /// silence (-90), over and over.
    pub fn next_audio(&mut self, now: Instant) -> (Vec<u8>, u32, i8) {
        let n = self.audio;
        self.audio += 1;
        let mut p = vec![0xfc];
        p.extend(n.to_be_bytes());
        p.resize(80, n as u8);
        stamp(&mut p, now);
        let level = if (n / 50).is_multiple_of(2) {
            -25 - (n % 10) as i8
        } else {
            -90
        };
        (p, n.wrapping_mul(960), level)
    }
}

/// Whether a VP8 payload made by [`SyntheticMedia`] (or anyone) starts a
/// keyframe.
pub fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    payload.len() > VP8_DESCRIPTOR_LEN
        && payload[0] & 0x10 != 0
        && payload[VP8_DESCRIPTOR_LEN] & 0x01 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_frames_are_idr_or_non_idr_slices() {
        let mut m = SyntheticMedia::new(VideoCodec::H264);
        let (packets, key, _) = m.next_video_frame(Instant::now());
        assert!(
            key && packets
                .iter()
                .all(|(p, _)| VideoCodec::H264.starts_keyframe(p))
        );
        let (packets, key, _) = m.next_video_frame(Instant::now());
        assert!(!key && !VideoCodec::H264.starts_keyframe(&packets[0].0));
        assert_eq!(packets[0].0[0], 0x41);
    }

    #[test]
    fn vp9_and_av1_keyframes_start_at_the_first_packet() {
        for codec in [VideoCodec::Vp9, VideoCodec::Av1] {
            let mut m = SyntheticMedia::new(codec);
            let (packets, key, _) = m.next_video_frame(Instant::now());
            assert!(key && codec.starts_keyframe(&packets[0].0), "{codec:?}");
            assert!(!codec.starts_keyframe(&packets[1].0), "{codec:?}");
            let (packets, _, _) = m.next_video_frame(Instant::now());
            assert!(!codec.starts_keyframe(&packets[0].0), "{codec:?}");
        }
    }

    #[test]
    fn keyframes_are_periodic_and_on_request() {
        let mut m = SyntheticMedia::default();
        let (packets, key, ts) = m.next_video_frame(Instant::now());
        assert!(key && ts == 0);
        assert!(vp8_starts_keyframe(&packets[0].0));
        assert!(
            !vp8_starts_keyframe(&packets[1].0),
            "only the first packet starts it"
        );
        assert!(packets[2].1 && !packets[0].1, "marker on the last packet");
        let (packets, key, ts) = m.next_video_frame(Instant::now());
        assert!(!key && ts == 3000 && !vp8_starts_keyframe(&packets[0].0));
        m.request_keyframe();
        assert!(m.next_video_frame(Instant::now()).1);
    }

    #[test]
    fn simulcast_layers_are_tagged_and_sized() {
        for (_, shape) in SIMULCAST {
            let mut m = SyntheticMedia::shaped(VideoCodec::Vp8, shape);
            for _ in 0..2 {
                let (packets, _, _) = m.next_video_frame(Instant::now());
                assert_eq!(packets.len(), shape.packets_per_frame);
                for (p, _) in &packets {
                    assert_eq!(p.len(), shape.packet_size);
                    assert_eq!(layer_tag(VideoCodec::Vp8, p), Some(shape.tag));
                }
            }
        }
    }

    #[test]
    fn payloads_carry_their_send_time() {
        let mut m = SyntheticMedia::default();
        let t = Instant::now() + Duration::from_millis(1234);
        let (packets, _, _) = m.next_video_frame(t);
        let (audio, _, _) = m.next_audio(t);
        for p in packets.iter().map(|(p, _)| p).chain([&audio]) {
            let sent = sent_at(p).unwrap();
            assert!(sent.max(t) - sent.min(t) < Duration::from_micros(2));
        }
        assert!(sent_at(&[1, 2]).is_none());
    }
}
