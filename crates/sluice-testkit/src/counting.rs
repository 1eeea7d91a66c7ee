//! Counting received media without decrypting it.
//!
//! An SRTP packet's RTP header is in the clear, so a load-test subscriber
//! can count packets, bytes and losses from the SSRC and sequence number
//! alone and never hand media to its WebRTC stack: it keeps ICE consent and
//! RTCP going at a fraction of the CPU. Latency needs the decrypted payload,
//! so it is left to a few full subscribers.

/// SRTP authentication tag length: 16 for the AEAD AES-GCM profiles str0m
/// prefers (and Sluice's str0m negotiates with the test peers' str0m).
const SRTP_TAG: usize = 16;
/// The fixed RTP header.
const RTP_HEADER: usize = 12;

/// The first SSRC each media section of an SDP announces: `(ssrc, is_video)`.
pub fn ssrcs_by_kind(sdp: &str) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    let mut video = None;
    let mut taken = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            video = Some(m.starts_with("video"));
            taken = false;
        } else if let (Some(v), false, Some(rest)) = (video, taken, line.strip_prefix("a=ssrc:"))
            && let Some(ssrc) = rest.split_whitespace().next().and_then(|s| s.parse().ok())
        {
            out.push((ssrc, v));
            taken = true;
        }
    }
    out
}

/// The SSRC, sequence number and payload size of an SRTP packet, or
/// `None` for any other datagram (STUN, DTLS, RTCP).
pub fn rtp_header(datagram: &[u8]) -> Option<(u32, u16, usize)> {
    if datagram.len() < RTP_HEADER || !(128..=191).contains(&datagram[0]) {
        return None;
    }
    // RTCP packet types 192-223 share the first byte's range (RFC 5761).
    if (192..=223).contains(&datagram[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    let mut header = RTP_HEADER + 4 * usize::from(datagram[0] & 0x0f);
    if datagram[0] & 0x10 != 0 {
        // Extension block: 4 bytes of profile and length, then 32-bit words.
        let words = datagram.get(header + 2..header + 4)?;
        header += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let payload = datagram.len().checked_sub(header + SRTP_TAG)?;
    Some((ssrc, seq, payload))
}

/// Extends 16-bit sequence numbers of one stream to 64 bits.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqExtender {
    last: Option<u64>,
}

impl SeqExtender {
    /// The extended value of `seq`, closest to the last one seen.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let extended = match self.last {
            None => u64::from(seq),
            Some(last) => {
                let base = last & !0xffff;
                [base.wrapping_sub(0x10000), base, base + 0x10000]
                    .into_iter()
                    .map(|b| b.wrapping_add(u64::from(seq)))
                    .min_by_key(|c| c.abs_diff(last))
                    .unwrap_or(u64::from(seq))
            }
        };
        if self.last.is_none_or(|l| extended > l) {
            self.last = Some(extended);
        }
        extended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_main_ssrc_of_each_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:11 cname:x\r\na=ssrc:12 cname:x\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=ssrc-group:FID 21 22\r\na=ssrc:21 cname:x\r\na=ssrc:22 cname:x\r\n";
        assert_eq!(ssrcs_by_kind(sdp), vec![(11, false), (21, true)]);
    }

    #[test]
    fn reads_rtp_headers_and_skips_the_rest() {
        let mut p = vec![0x80, 96, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 7];
        p.extend([0u8; 30]);
        assert_eq!(rtp_header(&p), Some((7, 0x1234, 14)));
        // One CSRC and a two-word extension block before the payload.
        let mut x = vec![0x91, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1];
        x.extend([0xbe, 0xde, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8]);
        x.extend([0u8; 50]);
        assert_eq!(rtp_header(&x), Some((9, 1, 34)));
        assert_eq!(rtp_header(&x[..18]), None, "extension length cut off");
        assert_eq!(rtp_header(&p[..20]), None, "shorter than a tag");
        p[1] = 200; // RTCP sender report
        assert_eq!(rtp_header(&p), None);
        assert_eq!(rtp_header(&[0x00, 0x01, 0, 0]), None); // STUN
    }

    #[test]
    fn sequence_numbers_extend_across_wraps_and_reordering() {
        let mut e = SeqExtender::default();
        assert_eq!(e.extend(65534), 65534);
        assert_eq!(e.extend(65535), 65535);
        assert_eq!(e.extend(1), 65537);
        assert_eq!(e.extend(0), 65536, "late packet");
        assert_eq!(e.extend(65535), 65535, "older, before the wrap");
        assert_eq!(e.extend(2), 65538);
    }
}
