//! Pre-encoded VP8 clips a synthetic publisher can loop instead of made-up
//! payloads, so a browser watching it decodes real video. The clips (two
//! seconds at 30 fps per simulcast layer, a keyframe at the start of each)
//! live in `clips/`, made by `clips/make.sh`.

/// The clip files, by simulcast layer.
const CLIPS: [(&str, &[u8]); 3] = [
    ("q", include_bytes!("../clips/q.ivf")),
    ("h", include_bytes!("../clips/h.ivf")),
    ("f", include_bytes!("../clips/f.ivf")),
];

/// Largest VP8 payload per RTP packet (descriptor included), well under a
/// 1200-byte datagram with RTP, SRTP and header extensions.
pub const MAX_PAYLOAD: usize = 1100;

/// A VP8 clip: its frames, in order, and its picture size.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Encoded frames.
    pub frames: Vec<Vec<u8>>,
    /// Picture width.
    pub width: u16,
    /// Picture height.
    pub height: u16,
}

impl Clip {
    /// The shipped clip of simulcast layer `rid` (`q`, `h` or `f`).
    pub fn layer(rid: &str) -> Option<Clip> {
        let (_, bytes) = CLIPS.iter().find(|(name, _)| *name == rid)?;
        Clip::parse_ivf(bytes)
    }

    /// Read an IVF file of VP8 frames (`None` if it is not one).
    pub fn parse_ivf(data: &[u8]) -> Option<Clip> {
        if data.get(0..4)? != b"DKIF" || data.get(8..12)? != b"VP80" {
            return None;
        }
        let u16_at = |i: usize| Some(u16::from_le_bytes(data.get(i..i + 2)?.try_into().ok()?));
        let header_len = usize::from(u16_at(6)?);
        let (width, height) = (u16_at(12)?, u16_at(14)?);
        let mut frames = Vec::new();
        let mut at = header_len;
        while at < data.len() {
            let size = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
            // 4 bytes of size, 8 of timestamp, then the frame.
            frames.push(data.get(at + 12..at + 12 + size)?.to_vec());
            at += 12 + size;
        }
        (!frames.is_empty()).then_some(Clip {
            frames,
            width,
            height,
        })
    }
}

/// Whether an encoded VP8 frame is a keyframe (RFC 6386: the P bit of the
/// frame tag is 0).
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// Split one encoded frame into RTP payloads (RFC 7741): each starts with
/// a 4-byte descriptor carrying the 15-bit `picture_id`, the first one with
/// the start bit; `(payload, marker)`, the marker on the last.
pub fn packetize(frame: &[u8], picture_id: u16) -> Vec<(Vec<u8>, bool)> {
    let chunk = MAX_PAYLOAD - 4;
    let count = frame.len().div_ceil(chunk).max(1);
    (0..count)
        .map(|i| {
            let part = &frame[(i * chunk).min(frame.len())..((i + 1) * chunk).min(frame.len())];
            let mut payload = Vec::with_capacity(4 + part.len());
            payload.push(if i == 0 { 0x90 } else { 0x80 }); // X, S on the first
            payload.push(0x80); // I: picture id present
            payload.push(0x80 | ((picture_id >> 8) & 0x7f) as u8);
            payload.push(picture_id as u8);
            payload.extend_from_slice(part);
            (payload, i == count - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_clips_are_two_second_loops_starting_with_a_keyframe() {
        for (rid, size) in [("q", (320, 180)), ("h", (640, 360)), ("f", (1280, 720))] {
            let clip = Clip::layer(rid).unwrap();
            assert_eq!((clip.width, clip.height), size, "{rid}");
            assert_eq!(clip.frames.len(), 60, "{rid}");
            assert!(is_keyframe(&clip.frames[0]), "{rid} starts with a keyframe");
            assert!(
                clip.frames[1..].iter().all(|f| !is_keyframe(f)),
                "{rid}: one keyframe per loop"
            );
        }
        assert!(Clip::layer("x").is_none());
        assert!(Clip::parse_ivf(b"not an ivf file at all, really").is_none());
    }

    #[test]
    fn packets_carry_the_frame_in_order_with_valid_descriptors() {
        let frame: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let packets = packetize(&frame, 0x1234);
        assert_eq!(packets.len(), 3);
        let mut joined = Vec::new();
        for (i, (payload, marker)) in packets.iter().enumerate() {
            assert!(payload.len() <= MAX_PAYLOAD);
            assert_eq!(payload[0], if i == 0 { 0x90 } else { 0x80 });
            assert_eq!(&payload[1..4], &[0x80, 0x92, 0x34]);
            assert_eq!(*marker, i == 2);
            joined.extend_from_slice(&payload[4..]);
        }
        assert_eq!(joined, frame);
        assert_eq!(packetize(&[], 1).len(), 1, "an empty frame is one packet");
    }
}
