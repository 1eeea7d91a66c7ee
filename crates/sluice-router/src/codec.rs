//! Codec identities the router cares about, and keyframe detection on RTP
//! payloads (the only payload inspection an SFU needs).

/// A media codec as seen by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus audio (48 kHz).
    Opus,
    /// VP8 video (RFC 7741 payload).
    Vp8,
    /// VP9 video (RFC 9628 payload).
    Vp9,
    /// H.264 video (RFC 6184 payload).
    H264,
    /// AV1 video (AOM RTP payload).
    Av1,
    /// Anything else: forwarded, but never recognised as a keyframe.
    Other,
}

impl Codec {
    /// Whether this codec carries video.
    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1)
    }

    /// Whether `payload` (an RTP payload without header) starts or carries a
    /// keyframe that a decoder can start from.
    ///
    /// Malformed or short payloads are simply "not a keyframe".
    pub fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Codec::Vp8 => vp8_is_keyframe(payload),
            Codec::Vp9 => vp9_is_keyframe(payload),
            Codec::H264 => h264_is_keyframe(payload),
            Codec::Av1 => av1_is_keyframe(payload),
            Codec::Opus | Codec::Other => false,
        }
    }
}

/// VP8 (RFC 7741 section 4.2/4.3): the start of partition 0 with the P bit of
/// the VP8 frame header cleared.
fn vp8_is_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut offset = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = p.get(offset) else {
            return false;
        };
        offset += 1;
        if ext & 0x80 != 0 {
            // PictureID, 7 or 15 bits.
            let Some(&pid) = p.get(offset) else {
                return false;
            };
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            offset += 1; // TID/Y/KEYIDX
        }
    }
    p.get(offset).is_some_and(|h| h & 0x01 == 0)
}

/// VP9 (RFC 9628 section 4.2): a packet that begins a frame (B) and is not
/// inter-predicted (P clear), in the base spatial layer.
fn vp9_is_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let inter_predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    let has_layer_indices = first & 0x20 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    if !has_layer_indices {
        return true;
    }
    // Locate the layer indices to check for spatial layer 0.
    let mut offset = 1;
    if first & 0x80 != 0 {
        let Some(&pid) = p.get(offset) else {
            return false;
        };
        offset += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    p.get(offset).is_some_and(|l| (l >> 1) & 0x07 == 0)
}

/// H.264 (RFC 6184): an IDR slice (type 5) or a sequence parameter set
/// (type 7, sent just ahead of an IDR) in a single NAL unit, STAP-A or the
/// first fragment of an FU-A.
fn h264_is_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let is_key_nal = |t: u8| t == 5 || t == 7;
    match first & 0x1f {
        1..=23 => is_key_nal(first & 0x1f),
        24 => {
            // STAP-A: 16-bit size followed by the NAL unit, repeated.
            let mut offset = 1;
            while offset + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[offset], p[offset + 1]]));
                let Some(&nal) = p.get(offset + 2) else {
                    return false;
                };
                if size > 0 && is_key_nal(nal & 0x1f) {
                    return true;
                }
                offset += 2 + size;
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key_nal(fu & 0x1f)),
        _ => false,
    }
}

/// AV1 (AOM RTP payload section 4.4): the N bit of the aggregation header
/// marks the first packet of a coded video sequence.
fn av1_is_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|h| h & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_with_extended_descriptor() {
        // X=1, S=1, PID=0; I=1 15-bit picture id; VP8 header byte with P=0.
        let key = [0x90, 0x80, 0x81, 0x23, 0x10, 0x00, 0x00];
        assert!(Codec::Vp8.is_keyframe(&key));
        let delta = [0x90, 0x80, 0x81, 0x23, 0x11, 0x00, 0x00];
        assert!(!Codec::Vp8.is_keyframe(&delta));
        // Not the start of the partition.
        let middle = [0x80, 0x80, 0x81, 0x23, 0x10];
        assert!(!Codec::Vp8.is_keyframe(&middle));
        assert!(!Codec::Vp8.is_keyframe(&[]));
        assert!(!Codec::Vp8.is_keyframe(&[0x90, 0x80]));
    }

    #[test]
    fn h264_keyframes_in_all_packetizations() {
        assert!(Codec::H264.is_keyframe(&[0x65, 0x88])); // IDR
        assert!(Codec::H264.is_keyframe(&[0x67, 0x42])); // SPS
        assert!(!Codec::H264.is_keyframe(&[0x41, 0x9a])); // non-IDR
        // STAP-A carrying SPS.
        assert!(Codec::H264.is_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42]));
        assert!(!Codec::H264.is_keyframe(&[0x78, 0x00, 0x02, 0x41, 0x42]));
        // FU-A start of an IDR, and a continuation.
        assert!(Codec::H264.is_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!Codec::H264.is_keyframe(&[0x7c, 0x05, 0x00]));
        // Truncated STAP-A never panics.
        assert!(!Codec::H264.is_keyframe(&[0x78, 0xff, 0xff]));
    }

    #[test]
    fn vp9_and_av1_keyframes() {
        assert!(Codec::Vp9.is_keyframe(&[0x08, 0x00]));
        assert!(!Codec::Vp9.is_keyframe(&[0x48, 0x00]));
        assert!(!Codec::Vp9.is_keyframe(&[0x00, 0x00]));
        assert!(Codec::Av1.is_keyframe(&[0x18]));
        assert!(!Codec::Av1.is_keyframe(&[0x10]));
        assert!(!Codec::Opus.is_keyframe(&[0xff]));
    }
}
