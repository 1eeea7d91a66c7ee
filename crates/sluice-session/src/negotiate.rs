//! Turning a WHIP or WHEP offer into a configured [`Rtc`] and its answer.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::format::{CodecConfig, PayloadParams};
use str0m::media::{MediaKind, Mid};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc};

use crate::dtls::KeySlot;

/// Which way media flows for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A WHIP publisher: the server receives.
    Publisher,
    /// A WHEP viewer: the server sends.
    Viewer,
}

/// What every session of a server shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Addresses announced as the server's host candidates.
    pub candidates: Vec<SocketAddr>,
    /// A peer silent for this long (no ICE consent, no media) is gone.
    pub consent_timeout: Duration,
    /// Run a bandwidth estimator (TWCC, or REMB when that is all the peer
    /// sends) for viewers, starting from this many bits per second; `None`
    /// turns it off, and then a peer's REMB estimates are not reported
    /// either (nothing would probe beyond them).
    pub viewer_bwe_initial_bps: Option<u64>,
    /// Viewers without an estimator get the direct egress
    /// (`crate::egress`): Sluice, not str0m, seals their RTP.
    pub direct_egress: bool,
    /// Viewers on the direct egress estimate their path from the loss
    /// their receiver reports show ([`crate::loss`]).
    pub viewer_loss_estimate: bool,
}

/// Why an offer was refused. The text is meant for the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiateError {
    /// The body is not a usable SDP offer.
    MalformedSdp(String),
    /// The offer has no media flowing the way this endpoint needs.
    WrongDirection(String),
    /// The viewer cannot receive the codec the publisher sends.
    UnsupportedCodec(String),
}

impl fmt::Display for NegotiateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiateError::MalformedSdp(m) => write!(f, "malformed SDP offer: {m}"),
            NegotiateError::WrongDirection(m) | NegotiateError::UnsupportedCodec(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for NegotiateError {}

/// Build an RTP-mode, ICE-lite [`Rtc`] with the server's candidates (and
/// a bandwidth estimator for viewers, when configured). A viewer without
/// estimation also gets the slot its SRTP keys will be reported to, for
/// the direct egress (`crate::egress`).
pub(crate) fn new_rtc(
    config: &SessionConfig,
    role: Role,
    now: Instant,
) -> Result<(Rtc, Option<KeySlot>), NegotiateError> {
    let bwe = match role {
        Role::Viewer => config.viewer_bwe_initial_bps.map(Bitrate::bps),
        Role::Publisher => None,
    };
    let mut builder = crate::DtlsSetup::server()
        .apply(Rtc::builder())
        .set_ice_lite(true)
        .set_rtp_mode(true)
        // Once a second: NACK counts for the metrics.
        .set_stats_interval(Some(Duration::from_secs(1)))
        .enable_bwe(bwe);
    if role == Role::Viewer && bwe.is_none() {
        builder = builder.set_extension_map(without_estimation_extensions());
    }
    let direct_egress = config.direct_egress && role == Role::Viewer && bwe.is_none();
    let (mut rtc, keys) = if direct_egress {
        let (rtc, keys) = crate::dtls::capture_keys(|| builder.build(now));
        (rtc, Some(keys))
    } else {
        (builder.build(now), None)
    };
    for addr in &config.candidates {
        let candidate = Candidate::host(*addr, "udp")
            .map_err(|e| NegotiateError::MalformedSdp(format!("server candidate {addr}: {e}")))?;
        rtc.add_local_candidate(candidate);
    }
    Ok((rtc, keys))
}

/// Do ahead of the first session the work it would otherwise do for the
/// whole process: seed the crypto library's random generator (aws-lc
/// gathers CPU jitter for that, tens of milliseconds of CPU), make the
/// server's DTLS certificate and build and validate the DTLS
/// configuration. Left to the first session, that work lands on the
/// server's core while the first viewers join and media flows. Fails if
/// `config` or the crypto library cannot make a session at all.
pub fn warm_up(config: &SessionConfig) -> Result<(), NegotiateError> {
    new_rtc(config, Role::Viewer, Instant::now()).map(drop)
}

/// str0m's standard header extensions without the two that only feed a
/// sender's bandwidth estimation (transport-wide sequence numbers and
/// absolute send time). A viewer's session without estimation leaves them
/// out of its answer: the server then writes and registers neither for
/// every forwarded packet, and browsers send no transport-wide feedback
/// (several RTCP packets a second per viewer) that nobody would read.
fn without_estimation_extensions() -> ExtensionMap {
    let mut map = ExtensionMap::empty();
    for (id, ext) in ExtensionMap::standard().iter() {
        if !matches!(
            ext,
            Extension::TransportSequenceNumber | Extension::AbsoluteSendTime
        ) {
            map.set(id, ext.clone());
        }
    }
    map
}

/// Parse `offer` and apply it to `rtc`, returning the SDP answer and the
/// mids of the offer's media sections, in order.
pub(crate) fn accept_offer(
    rtc: &mut Rtc,
    offer: &str,
) -> Result<(String, Vec<Mid>), NegotiateError> {
    let offer = SdpOffer::from_sdp_string(offer)
        .map_err(|e| NegotiateError::MalformedSdp(e.to_string()))?;
    let mids = offer.media_lines.iter().map(|m| m.mid()).collect();
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| NegotiateError::MalformedSdp(e.to_string()))?;
    Ok((one_media_stream(&answer.to_sdp_string()), mids))
}

/// `answer` with every media section in one media stream: the first
/// section's msid stream id for all (RFC 8830). str0m gives each section of
/// its answer to a receive-only offer (what a WHEP player sends) a stream
/// of its own, and a browser then hands the page audio and video in two
/// `MediaStream`s: it does not play them in sync, and a player that shows
/// `event.streams[0]` of each track gets one of the two. A session's media
/// all come from one participant, so one stream is right.
fn one_media_stream(answer: &str) -> String {
    let first = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=msid:"))
        .and_then(|v| v.split(' ').next())
        .filter(|id| !id.is_empty() && *id != "-");
    let Some(stream) = first else {
        return answer.to_owned();
    };
    let mut out = String::with_capacity(answer.len());
    for line in answer.split_inclusive('\n') {
        let (text, end) = line.split_at(line.trim_end_matches(['\r', '\n']).len());
        // `a=msid:<stream> <track>`, or the same after `a=ssrc:<n> msid:`.
        let msid_at = if text.starts_with("a=msid:") {
            Some("a=msid:".len())
        } else if text.starts_with("a=ssrc:") {
            text.find(" msid:").map(|at| at + " msid:".len())
        } else {
            None
        };
        match msid_at {
            Some(at) => {
                let track = text[at..].split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&text[..at]);
                out.push_str(stream);
                if !track.is_empty() {
                    out.push(' ');
                    out.push_str(track);
                }
            }
            None if text.starts_with("a=msid-semantic:") && text.contains("WMS") => {
                let wms = text.find("WMS").map_or(text.len(), |at| at + 3);
                out.push_str(&text[..wms]);
                out.push(' ');
                out.push_str(stream);
            }
            None => out.push_str(text),
        }
        out.push_str(end);
    }
    out
}

/// Check that the negotiated media suit `role`: a publisher must send the
/// server something, a viewer must receive something.
pub(crate) fn check_directions(
    rtc: &Rtc,
    role: Role,
    mids: &[(Mid, MediaKind)],
) -> Result<(), NegotiateError> {
    let usable = mids.iter().any(|(mid, _)| {
        rtc.media(*mid).is_some_and(|m| match role {
            Role::Publisher => m.direction().is_receiving(),
            Role::Viewer => m.direction().is_sending(),
        })
    });
    if usable {
        return Ok(());
    }
    Err(NegotiateError::WrongDirection(match role {
        Role::Publisher => "a WHIP offer must send audio or video (sendonly or sendrecv)".into(),
        Role::Viewer => "a WHEP offer must receive audio or video (recvonly or sendrecv)".into(),
    }))
}

/// The payload type on `mid` of `rtc` that carries what `source` describes,
/// among the payload types the remote accepted for that media.
pub(crate) fn matching_pt(rtc: &Rtc, mid: Mid, source: &PayloadParams) -> Option<PayloadParams> {
    let media = rtc.media(mid)?;
    let remote = media.remote_pts();
    let candidates: Vec<PayloadParams> = rtc
        .codec_config()
        .params()
        .iter()
        .filter(|p| remote.contains(&p.pt()))
        .copied()
        .collect();
    CodecConfig::new_from_payload_params(candidates)
        .match_params(*source)
        .copied()
}

/// Check that a viewer can receive each of the publisher's `codecs`.
pub(crate) fn check_codecs(
    rtc: &Rtc,
    mids: &[(Mid, MediaKind)],
    codecs: &[PayloadParams],
) -> Result<(), NegotiateError> {
    for source in codecs {
        let kind = if source.spec().codec.is_audio() {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let mut of_kind = mids.iter().filter(|(_, k)| *k == kind).peekable();
        if of_kind.peek().is_none() {
            // The viewer does not want this kind at all.
            continue;
        }
        if !of_kind.any(|(mid, _)| matching_pt(rtc, *mid, source).is_some()) {
            return Err(NegotiateError::UnsupportedCodec(format!(
                "this room's publisher sends {:?} {}, which the offer cannot receive",
                source.spec().codec,
                if kind == MediaKind::Audio {
                    "audio"
                } else {
                    "video"
                },
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_media_stream;

    #[test]
    fn all_media_sections_join_the_first_ones_stream() {
        let answer = "v=0\r\n\
            a=msid-semantic: WMS s1 s2\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=msid:s1 audio1\r\n\
            a=ssrc:7 cname:c1\r\n\
            a=ssrc:7 msid:s1 audio1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
            a=msid:s2 video1\r\n\
            a=ssrc:8 msid:s2 video1\r\n";
        assert_eq!(
            one_media_stream(answer),
            "v=0\r\n\
            a=msid-semantic: WMS s1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=msid:s1 audio1\r\n\
            a=ssrc:7 cname:c1\r\n\
            a=ssrc:7 msid:s1 audio1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
            a=msid:s1 video1\r\n\
            a=ssrc:8 msid:s1 video1\r\n"
        );
        // Nothing to join: left as it is.
        let receive_only = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n";
        assert_eq!(one_media_stream(receive_only), receive_only);
    }
}
