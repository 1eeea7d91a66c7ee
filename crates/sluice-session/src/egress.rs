//! A viewer's media egress around str0m's send queue.
//!
//! str0m turns a written packet into a datagram through its send queue,
//! its resend cache, a walk over all its state on every poll and a fresh
//! buffer: about three quarters of the server's time per forwarded packet
//! (docs/benchmarks.md). Once a viewer's DTLS handshake is done, this
//! module writes the viewer's RTP itself: one buffer, the header with its
//! extensions, the payload copied once and its VP8 descriptor patched,
//! sealed in place ([`crate::srtp`]).
//!
//! str0m keeps everything else: ICE, DTLS, keyframe requests, receiver
//! reports and the RTCP it sends. What str0m no longer sees, this module
//! does for it:
//! - **Resends.** It answers the viewer's NACKs (read from its SRTCP) on
//!   the RTX stream, within a resend budget of a share of what the stream
//!   sent. The packets are kept once per publisher stream
//!   ([`crate::history`]); each viewer stream keeps only how its sequence
//!   numbers, timestamps and VP8 ids map to the publisher's, so a NACK
//!   becomes a [`Resend`] for the shard to look up and hand back. Without a
//!   negotiated RTX stream nothing is resent: resending on the stream
//!   itself would seal a second packet under the same nonce.
//! - **Sender reports.** str0m still sends one per stream and second, but
//!   it never saw the packets; each is opened, given this module's RTP
//!   time, packet and octet counts, and sealed again under its own index.
//! - **Loss.** str0m's receiver report figures cover only what it sent:
//!   this module reads the viewer's report blocks itself and makes loss
//!   samples of them ([`Egress::take_loss`]) for [`crate::loss`].
//!
//! The route media goes on is the one str0m last sent DTLS or SRTCP on,
//! or the one the viewer's ICE agent last nominated, from the moment str0m
//! answers that nomination: a viewer whose network changed gets its media
//! on the new path at once, not from str0m's next sender report on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::Mid;
use str0m::net::{Protocol, Transmit};
use str0m::rtp::{Extension, ExtensionMap, ExtensionValues, VideoOrientation};

use sluice_router::SourceKey;

use crate::buffers::Buffers;
use crate::cache;
use crate::history::Kept;
use crate::srtp::{SrtpContext, SrtpKeys, TAG_LEN};

/// Share of a stream's payload bytes that may be spent on resends (str0m's
/// default cap).
pub(crate) const RESEND_SHARE: f64 = 0.15;
/// Resend bytes a stream may spend at once, beyond its share.
const RESEND_BURST: f64 = 64_000.0;
/// Most sequence numbers one RTCP datagram's NACKs are acted on for.
const MAX_NACKED: usize = 256;
/// Least time between two resends of one packet.
const RESEND_INTERVAL: Duration = Duration::from_millis(20);
/// Resends a stream remembers, to space out those of one packet.
const RESENT_REMEMBERED: usize = 32;
/// Source mappings a stream remembers (one more with each layer or
/// publisher switch; older ones are past resending).
const MAPPINGS: usize = 16;
/// Bytes of a fixed RTP header.
const RTP_HEADER: usize = 12;
/// Most bytes of the header extension block: its own header, the mid
/// (up to 16 bytes), audio level and video orientation, padded.
const MAX_EXTENSIONS: usize = 28;
/// RTCP packet type of a sender report.
const RTCP_SR: u8 = 200;
/// RTCP packet type of a receiver report.
const RTCP_RR: u8 = 201;
/// Size of a report block (RFC 3550 section 6.4.1).
const REPORT_BLOCK: usize = 24;
/// Least time a loss sample ([`Egress::take_loss`]) spans.
const LOSS_SAMPLE: Duration = Duration::from_millis(500);
/// RTCP packet type of transport-layer feedback (RFC 4585), whose format 1
/// is the generic NACK.
const RTCP_RTPFB: u8 = 205;

/// One send stream's identity, as str0m negotiated it.
#[derive(Debug, Clone, Copy)]
pub struct StreamIds {
    /// The media section.
    pub mid: Mid,
    /// The stream's SSRC.
    pub ssrc: u32,
    /// The resend (RTX) stream's SSRC, where one was negotiated.
    pub rtx: Option<u32>,
    /// The highest sequence number sent on it before the egress started.
    pub written: Option<u64>,
}

/// Header extension ids a viewer negotiated for the extensions forwarded
/// packets carry (one-byte form: 1 to 14).
#[derive(Debug, Clone, Copy, Default)]
struct ExtIds {
    mid: Option<u8>,
    audio_level: Option<u8>,
    video_orientation: Option<u8>,
}

impl ExtIds {
    fn from_map(map: &ExtensionMap) -> ExtIds {
        let one_byte = |e| map.id_of(e).filter(|id| (1..=14).contains(id));
        ExtIds {
            mid: one_byte(Extension::RtpMid),
            audio_level: one_byte(Extension::AudioLevel),
            video_orientation: one_byte(Extension::VideoOrientation),
        }
    }
}

/// What one forwarded packet needs to become a datagram.
#[derive(Debug, Clone, Copy)]
pub struct OutPacket<'a> {
    /// Payload type in the viewer's numbering.
    pub pt: u8,
    /// The RTX payload type paired with `pt`, where one was negotiated.
    pub rtx_pt: Option<u8>,
    /// RTP clock rate of the codec.
    pub clock_rate: u32,
    /// Extended sequence number in the viewer's numbering.
    pub seq: u64,
    /// RTP timestamp in the viewer's numbering.
    pub ts: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The publisher's payload, shared by all viewers.
    pub payload: &'a Arc<[u8]>,
    /// The publisher's header extension values: the audio level, voice
    /// activity and video orientation among them go on.
    pub ext: &'a ExtensionValues,
    /// VP8 descriptor fields to rewrite: picture id, TL0PICIDX.
    pub vp8: Option<(Option<u16>, Option<u8>)>,
    /// When the packet reached the server.
    pub arrival: Instant,
    /// The publisher's stream and header fields, for video (which is
    /// resent on NACKs); `None` for audio.
    pub origin: Option<Origin>,
}

/// Where a forwarded packet came from: the publisher's stream and its own
/// header fields, which the viewer's are offsets of.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The publisher's stream (publication and layer).
    pub source: SourceKey,
    /// The publisher's sequence number (extended).
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub ts: u32,
    /// The publisher's VP8 picture id and TL0PICIDX, where its descriptor
    /// carries them.
    pub vp8: Option<(Option<u16>, Option<u8>)>,
}

/// A packet a viewer asked for again (a NACK), to be looked up in the
/// [`crate::history::PacketHistory`] and passed to [`Egress::resend`].
#[derive(Debug, Clone, Copy)]
pub struct Resend {
    /// The publisher's stream it came from.
    pub source: SourceKey,
    /// Its sequence number there.
    pub seq: u64,
    /// The viewer's stream and sequence number.
    ssrc: u32,
    seq_out: u64,
    shift: Shift,
}

/// How a viewer stream's header fields follow from the publisher
/// stream's: constant between two switches of the viewer's forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shift {
    source: SourceKey,
    seq: u64,
    ts: u32,
    /// VP8 picture id (15 bits) and TL0PICIDX offsets, where both sides
    /// carry them.
    picture_id: Option<u16>,
    tl0: Option<u8>,
    rtx_pt: u8,
}

impl Shift {
    fn between(origin: &Origin, packet: &OutPacket, rtx_pt: u8) -> Shift {
        let (pid_in, tl0_in) = origin.vp8.unwrap_or_default();
        let (pid_out, tl0_out) = packet.vp8.unwrap_or_default();
        Shift {
            source: origin.source,
            seq: packet.seq.wrapping_sub(origin.seq),
            ts: packet.ts.wrapping_sub(origin.ts),
            picture_id: pid_in.zip(pid_out).map(|(i, o)| o.wrapping_sub(i) & 0x7fff),
            tl0: tl0_in.zip(tl0_out).map(|(i, o)| o.wrapping_sub(i)),
            rtx_pt,
        }
    }

    /// The viewer's VP8 ids for the publisher's `vp8`.
    fn vp8(&self, vp8: Option<(Option<u16>, Option<u8>)>) -> Option<(Option<u16>, Option<u8>)> {
        vp8.map(|(pid, tl0)| {
            (
                pid.zip(self.picture_id)
                    .map(|(p, d)| p.wrapping_add(d) & 0x7fff),
                tl0.zip(self.tl0).map(|(t, d)| t.wrapping_add(d)),
            )
        })
    }
}

/// The viewer stream's sequence numbers from `from` on follow the
/// publisher's by `shift`.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    from: u64,
    shift: Shift,
}

/// Sequence numbers a stream has sealed lately, so that none is sealed
/// twice (a duplicate from the publisher): two different packets under
/// one nonce would expose the key's authentication.
#[derive(Debug, Default)]
struct Sealed {
    highest: Option<u64>,
    /// Bit i: `highest - i` was sealed.
    recent: u64,
}

impl Sealed {
    /// A window in which everything up to `highest` counts as sealed.
    fn after(highest: Option<u64>) -> Sealed {
        Sealed {
            highest,
            recent: if highest.is_some() { u64::MAX } else { 0 },
        }
    }

    /// Note `seq` as sealed; false if it already was, or is too old to
    /// tell.
    fn mark(&mut self, seq: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.recent = 1;
            return true;
        };
        if seq > highest {
            let shift = seq - highest;
            self.recent = if shift >= 64 { 0 } else { self.recent << shift } | 1;
            self.highest = Some(seq);
            return true;
        }
        let age = highest - seq;
        if age >= 64 || self.recent & (1 << age) != 0 {
            return false;
        }
        self.recent |= 1 << age;
        true
    }
}

/// One send stream's state.
#[derive(Debug)]
struct Stream {
    ids: StreamIds,
    ext: ExtIds,
    /// The mid's bytes for its header extension, made once: reading them
    /// out of a [`Mid`] trims its padding on every packet.
    mid: MidBytes,
    /// Packets and payload octets sent, for sender reports.
    packets: u32,
    octets: u32,
    /// RTP time and arrival of the last packet, and the clock rate.
    last: Option<(u32, Instant, u32)>,
    sealed: Sealed,
    /// How its sequence numbers map to publisher streams, oldest first.
    mappings: VecDeque<Mapping>,
    /// The newest mapping's shift, here as well: every write compares its
    /// own with it, and the deque's buffer is a line of memory elsewhere.
    shift: Option<Shift>,
    /// Its sequence numbers resent lately, and when.
    resent: VecDeque<(u64, Instant)>,
    /// Next sequence number on the RTX stream.
    rtx_seq: u64,
    /// Resend bytes this stream may still spend.
    resend_budget: f64,
    /// Packets and octets sent when the viewer last reported on it (none
    /// before its first report, which covers the stream from its start).
    reported: (u32, u32),
}

impl Stream {
    fn new(ids: StreamIds, ext: ExtIds) -> Stream {
        Stream {
            ids,
            ext,
            mid: MidBytes::of(ids.mid),
            packets: 0,
            octets: 0,
            last: None,
            sealed: Sealed::after(ids.written),
            mappings: VecDeque::new(),
            shift: None,
            resent: VecDeque::new(),
            rtx_seq: u64::from(rand_u16() & 0x7fff),
            resend_budget: RESEND_BURST,
            reported: (0, 0),
        }
    }
}

/// A mid as the one-byte header extension carries it: 1 to 16 bytes,
/// inline.
#[derive(Debug, Clone, Copy)]
struct MidBytes {
    bytes: [u8; 16],
    len: u8,
}

impl MidBytes {
    /// The bytes of `mid`; none if it does not fit an extension element.
    fn of(mid: Mid) -> MidBytes {
        let mut bytes = [0; 16];
        let mid = mid.as_bytes();
        let len = if (1..=16).contains(&mid.len()) {
            bytes[..mid.len()].copy_from_slice(mid);
            mid.len() as u8
        } else {
            0
        };
        MidBytes { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Stream {
    /// Note that sequence number `seq` follows its publisher stream by
    /// `shift`.
    fn map(&mut self, seq: u64, shift: Shift) {
        if self.shift == Some(shift) {
            return;
        }
        if self.mappings.back().is_some_and(|last| last.from > seq) {
            return;
        }
        self.shift = Some(shift);
        if self.mappings.len() >= MAPPINGS {
            self.mappings.pop_front();
        }
        self.mappings.push_back(Mapping { from: seq, shift });
    }

    /// The sealed sequence number nearest below the highest whose low 16
    /// bits are `seq16`, and how it follows its publisher stream.
    fn origin_of(&self, seq16: u16) -> Option<(u64, Shift)> {
        let highest = self.sealed.highest?;
        let back = (highest as u16).wrapping_sub(seq16);
        let seq = highest.checked_sub(u64::from(back))?;
        let mapping = self.mappings.iter().rev().find(|m| m.from <= seq)?;
        Some((seq, mapping.shift))
    }

    /// Whether `seq` was resent less than [`RESEND_INTERVAL`] before `now`.
    fn resent_lately(&self, seq: u64, now: Instant) -> bool {
        self.resent
            .iter()
            .any(|&(s, t)| s == seq && now.saturating_duration_since(t) < RESEND_INTERVAL)
    }
}

/// Local and remote address of the route datagrams go on.
pub type Route = (SocketAddr, SocketAddr);

/// A viewer's direct egress: see the module documentation.
#[derive(Debug)]
pub struct Egress {
    send: SrtpContext,
    receive: SrtpContext,
    streams: Vec<Stream>,
    /// Datagrams made and not yet polled.
    out: VecDeque<Transmit>,
    /// Packets NACKed and not yet handed to [`Egress::take_resends`].
    wanted: Vec<Resend>,
    /// What the viewer's reports said since the last loss sample.
    loss: LossSample,
}

/// The viewer's receiver reports since the last [`Egress::take_loss`].
#[derive(Debug, Default)]
struct LossSample {
    /// When the sample started (the egress's start, then the last sample).
    since: Option<Instant>,
    /// Packets reported on, and how many of them were lost.
    sent: u64,
    lost: f64,
    /// Payload octets sent meanwhile.
    octets: u64,
}

impl LossSample {
    /// The viewer reported `lost` (its fraction lost) on `stream` at
    /// `now`: weigh it by the packets sent since its last report on that
    /// stream (since the start, for the first).
    fn add(&mut self, stream: &mut Stream, lost: f64, now: Instant) {
        self.since.get_or_insert(now);
        let counts = (stream.packets, stream.octets);
        let (packets, octets) = std::mem::replace(&mut stream.reported, counts);
        let sent = u64::from(counts.0.wrapping_sub(packets));
        self.sent += sent;
        self.lost += lost * sent as f64;
        self.octets += u64::from(counts.1.wrapping_sub(octets));
    }

    /// The sample, once it spans [`LOSS_SAMPLE`] and covers a packet; a
    /// new one starts.
    fn take(&mut self, now: Instant) -> Option<(f64, u64)> {
        let span = now.saturating_duration_since(self.since?);
        if span < LOSS_SAMPLE || self.sent == 0 {
            return None;
        }
        let sample = std::mem::replace(
            self,
            LossSample {
                since: Some(now),
                ..LossSample::default()
            },
        );
        let bps = (sample.octets as f64 * 8.0 / span.as_secs_f64()) as u64;
        Some((sample.lost / sample.sent as f64, bps))
    }
}

/// The report blocks of one RTCP packet, if it is a sender or receiver
/// report: each block's SSRC and fraction lost (out of 256).
fn report_blocks(packet: &[u8]) -> impl Iterator<Item = (u32, u8)> + '_ {
    let from = match packet.get(1) {
        Some(&RTCP_RR) => 8,
        Some(&RTCP_SR) => 28,
        _ => packet.len(),
    };
    let count = packet.first().map_or(0, |first| usize::from(first & 0x1f));
    packet
        .get(from..)
        .unwrap_or_default()
        .chunks_exact(REPORT_BLOCK)
        .take(count)
        .map(|b| (u32::from_be_bytes([b[0], b[1], b[2], b[3]]), b[4]))
}

/// Whether str0m's datagram `transmit` is DTLS or SRTCP, which str0m
/// sends on the selected route only (unlike STUN).
pub fn is_route_probe(transmit: &Transmit) -> bool {
    match transmit.contents.first() {
        Some(&first) if (20..=63).contains(&first) => true,
        Some(_) => is_rtcp(&transmit.contents),
        None => false,
    }
}

/// Whether a datagram is RTCP (RFC 5761 section 4, RFC 7983).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b >> 6 == 2)
        && datagram.get(1).is_some_and(|pt| (192..=223).contains(pt))
}

impl Egress {
    /// An egress for `streams`, starting at `now`, with the SRTP keys of
    /// `keys`, whose header extension ids are in `extmap(mid)`; `None` if
    /// the keys are of a profile [`crate::srtp`] does not handle.
    pub fn new(
        keys: &SrtpKeys,
        streams: &[StreamIds],
        extmap: impl Fn(Mid) -> Option<ExtensionMap>,
        now: Instant,
    ) -> Option<Egress> {
        Some(Egress {
            send: SrtpContext::new(keys, true)?,
            receive: SrtpContext::new(keys, false)?,
            streams: streams
                .iter()
                .map(|ids| {
                    let ext = extmap(ids.mid).as_ref().map(ExtIds::from_map);
                    Stream::new(*ids, ext.unwrap_or_default())
                })
                .collect(),
            out: VecDeque::new(),
            wanted: Vec::new(),
            loss: LossSample {
                since: Some(now),
                ..LossSample::default()
            },
        })
    }

    /// Correct the sender reports in str0m's SRTCP datagram `transmit`
    /// (see the module documentation), as of `now`. Other datagrams are
    /// left alone.
    pub fn correct_sender_reports(&self, transmit: &mut Transmit, now: Instant) {
        if !is_rtcp(&transmit.contents) {
            return;
        }
        let mut contents: Vec<u8> =
            std::mem::replace(&mut transmit.contents, Vec::new().into()).into();
        let streams = &self.streams;
        self.send.reseal_rtcp(&mut contents, |rtcp| {
            correct_sender_reports(rtcp, streams, now)
        });
        transmit.contents = contents.into();
    }

    /// The index of the stream of `mid`, for [`Egress::write`].
    pub fn stream_of(&self, mid: Mid) -> Option<usize> {
        self.streams.iter().position(|s| s.ids.mid == mid)
    }

    /// Start loading into the CPU's caches the streams an
    /// [`Egress::write`] touches (see [`crate::Session::prefetch`]).
    pub fn prefetch(&self) {
        self.send.prefetch_rtp();
        cache::prefetch(self.streams.as_slice());
    }

    /// Make the datagram of `packet` on stream `stream` (from
    /// [`Egress::stream_of`]), to go on `route`. Returns false if this
    /// egress has no such stream, or already sealed that sequence number.
    pub fn write(
        &mut self,
        (source, destination): Route,
        stream: usize,
        packet: &OutPacket,
        buffers: &mut Buffers,
    ) -> bool {
        let Some(stream) = self.streams.get_mut(stream) else {
            return false;
        };
        if !stream.sealed.mark(packet.seq) {
            return false;
        }
        let video_orientation = packet.ext.video_orientation;
        let datagram = seal(
            buffers,
            &self.send,
            stream,
            Header {
                ssrc: stream.ids.ssrc,
                pt: packet.pt,
                seq: packet.seq,
                ts: packet.ts,
                marker: packet.marker,
                osn: None,
            },
            Extensions {
                audio_level: packet.ext.audio_level,
                voice_activity: packet.ext.voice_activity,
                video_orientation,
            },
            packet.payload,
            packet.vp8,
        );
        let size = packet.payload.len();
        stream.packets = stream.packets.wrapping_add(1);
        stream.octets = stream.octets.wrapping_add(size as u32);
        stream.last = Some((packet.ts, packet.arrival, packet.clock_rate));
        if let (Some(origin), Some(rtx_pt), Some(_)) =
            (packet.origin, packet.rtx_pt, stream.ids.rtx)
        {
            stream.map(packet.seq, Shift::between(&origin, packet, rtx_pt));
            stream.resend_budget =
                (stream.resend_budget + size as f64 * RESEND_SHARE).min(RESEND_BURST);
        }
        self.out.push_back(Transmit {
            proto: Protocol::Udp,
            source,
            destination,
            contents: datagram.into(),
        });
        true
    }

    /// Read the viewer's SRTCP datagram `datagram`, received at `now`, for
    /// NACKs (the packets they ask for wait in [`Egress::take_resends`])
    /// and report blocks (their loss adds to [`Egress::take_loss`]).
    /// Returns how many NACK messages it held.
    pub fn on_rtcp(&mut self, datagram: &[u8], now: Instant) -> u64 {
        let Some(rtcp) = self.receive.open_rtcp(datagram) else {
            return 0;
        };
        let mut nacks = 0;
        let mut asked = 0;
        let mut at = 0;
        while let Some(next) = next_rtcp(&rtcp, at) {
            let (first, pt) = (rtcp[at], rtcp[at + 1]);
            let mut end = next;
            if first & 0x20 != 0 {
                // Padding: its last byte counts the padding bytes.
                end -= usize::from(rtcp[end - 1]).min(end - at - 4);
            }
            for (ssrc, fraction) in report_blocks(&rtcp[at..end]) {
                if let Some(stream) = self.streams.iter_mut().find(|s| s.ids.ssrc == ssrc) {
                    self.loss.add(stream, f64::from(fraction) / 256.0, now);
                }
            }
            let generic_nack = first >> 6 == 2 && first & 0x1f == 1 && pt == RTCP_RTPFB;
            if generic_nack && end >= at + 12 {
                nacks += 1;
                let media =
                    u32::from_be_bytes([rtcp[at + 8], rtcp[at + 9], rtcp[at + 10], rtcp[at + 11]]);
                let entries = rtcp[at + 12..end].chunks_exact(4).map(|e| {
                    (
                        u16::from_be_bytes([e[0], e[1]]),
                        u16::from_be_bytes([e[2], e[3]]),
                    )
                });
                for (pid, blp) in entries {
                    let lost = std::iter::once(pid).chain(
                        (0..16u16)
                            .filter(move |bit| blp & (1 << bit) != 0)
                            .map(move |bit| pid.wrapping_add(bit + 1)),
                    );
                    for seq in lost {
                        // A bound on the work one datagram can ask for.
                        asked += 1;
                        if asked > MAX_NACKED {
                            return nacks;
                        }
                        self.want(media, seq);
                    }
                }
            }
            at = next;
        }
        nacks
    }

    /// The loss the viewer's reports showed, as a fraction of the packets
    /// sent, and the payload rate sent (bits per second), over the time
    /// since the last sample, once that is at least half a second.
    pub fn take_loss(&mut self, now: Instant) -> Option<(f64, u64)> {
        self.loss.take(now)
    }

    /// Note the packet of `ssrc` whose sequence number ends in `seq` as
    /// asked for, if it went out on a stream with resends.
    fn want(&mut self, ssrc: u32, seq: u16) {
        let Some(stream) = self.streams.iter().find(|s| s.ids.ssrc == ssrc) else {
            return;
        };
        if stream.ids.rtx.is_none() || stream.resend_budget < 1.0 {
            return;
        }
        if let Some((seq_out, shift)) = stream.origin_of(seq) {
            self.wanted.push(Resend {
                source: shift.source,
                seq: seq_out.wrapping_sub(shift.seq),
                ssrc,
                seq_out,
                shift,
            });
        }
    }

    /// The packets NACKed since the last call.
    pub fn take_resends(&mut self) -> Vec<Resend> {
        std::mem::take(&mut self.wanted)
    }

    /// Resend `kept`, the publisher's packet `resend` asked for, on the
    /// RTX stream on `route`, unless it was resent in the last
    /// [`RESEND_INTERVAL`] or the stream's budget does not allow it.
    pub fn resend(
        &mut self,
        (source, destination): Route,
        resend: &Resend,
        kept: &Kept,
        now: Instant,
        buffers: &mut Buffers,
    ) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.ids.ssrc == resend.ssrc) else {
            return;
        };
        let Some(rtx) = stream.ids.rtx else {
            return;
        };
        let size = kept.payload.len() as f64;
        let shift = resend.shift;
        if kept.seq != resend.seq
            || size > stream.resend_budget
            || stream.resent_lately(resend.seq_out, now)
        {
            return;
        }
        if stream.resent.len() >= RESENT_REMEMBERED {
            stream.resent.pop_front();
        }
        stream.resent.push_back((resend.seq_out, now));
        stream.resend_budget -= size;
        // Only ever counts up, so no RTX sequence number is sealed twice.
        let rtx_seq = stream.rtx_seq;
        stream.rtx_seq += 1;
        let datagram = seal(
            buffers,
            &self.send,
            stream,
            Header {
                ssrc: rtx,
                pt: shift.rtx_pt,
                seq: rtx_seq,
                ts: kept.ts.wrapping_add(shift.ts),
                marker: kept.marker,
                osn: Some(resend.seq_out as u16),
            },
            Extensions {
                video_orientation: kept.video_orientation,
                ..Extensions::default()
            },
            &kept.payload,
            shift.vp8(kept.vp8.map(|d| (d.picture_id(), d.tl0_pic_idx()))),
        );
        self.out.push_back(Transmit {
            proto: Protocol::Udp,
            source,
            destination,
            contents: datagram.into(),
        });
    }

    /// The next datagram made.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
}

/// The header extension values a datagram carries (besides the mid).
#[derive(Debug, Clone, Copy, Default)]
struct Extensions {
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    video_orientation: Option<VideoOrientation>,
}

/// The fixed RTP header fields of one datagram.
#[derive(Debug, Clone, Copy)]
struct Header {
    ssrc: u32,
    pt: u8,
    seq: u64,
    ts: u32,
    marker: bool,
    /// On an RTX stream, the original sequence number, written first in
    /// the payload (RFC 4588).
    osn: Option<u16>,
}

/// Build and seal one RTP datagram of `stream` in a buffer from
/// `buffers`: header, the extensions of `ext` the viewer negotiated (and
/// the mid), the original sequence number first on an RTX stream, then the
/// payload with its VP8 ids rewritten.
fn seal(
    buffers: &mut Buffers,
    srtp: &SrtpContext,
    stream: &Stream,
    header: Header,
    ext: Extensions,
    payload: &[u8],
    vp8: Option<(Option<u16>, Option<u8>)>,
) -> Vec<u8> {
    let mut buf = buffers.take(RTP_HEADER + MAX_EXTENSIONS + 2 + payload.len() + TAG_LEN);
    buf.extend_from_slice(&[0x80, (u8::from(header.marker) << 7) | (header.pt & 0x7f)]);
    buf.extend_from_slice(&(header.seq as u16).to_be_bytes());
    buf.extend_from_slice(&header.ts.to_be_bytes());
    buf.extend_from_slice(&header.ssrc.to_be_bytes());
    write_extensions(&mut buf, stream, ext);
    let header_len = buf.len();
    if let Some(osn) = header.osn {
        buf.extend_from_slice(&osn.to_be_bytes());
    }
    let payload_at = buf.len();
    buf.extend_from_slice(payload);
    if let Some((picture_id, tl0)) = vp8 {
        patch_vp8(&mut buf[payload_at..], picture_id, tl0);
    }
    srtp.seal_rtp(
        &mut buf,
        header_len,
        header.ssrc,
        header.seq & 0xffff_ffff_ffff,
    );
    buf
}

/// Append the one-byte header extension block (RFC 8285) for the mid,
/// audio level and video orientation, and set the header's X bit; nothing
/// when there is none to write.
fn write_extensions(buf: &mut Vec<u8>, stream: &Stream, ext: Extensions) {
    let start = buf.len();
    buf.extend_from_slice(&[0xbe, 0xde, 0, 0]);
    let ids = stream.ext;
    let mid = stream.mid.as_bytes();
    if let (Some(id), false) = (ids.mid, mid.is_empty()) {
        buf.push((id << 4) | (mid.len() as u8 - 1));
        buf.extend_from_slice(mid);
    }
    if let (Some(id), Some(level)) = (ids.audio_level, ext.audio_level) {
        let voice = if ext.voice_activity.unwrap_or(false) {
            0x80
        } else {
            0
        };
        buf.extend_from_slice(&[id << 4, voice | (level.unsigned_abs() & 0x7f)]);
    }
    if let (Some(id), Some(orientation)) = (ids.video_orientation, ext.video_orientation) {
        buf.extend_from_slice(&[id << 4, orientation as u8]);
    }
    let body = buf.len() - start - 4;
    if body == 0 {
        buf.truncate(start);
        return;
    }
    buf.resize(start + 4 + body.div_ceil(4) * 4, 0);
    let words = (body.div_ceil(4) as u16).to_be_bytes();
    buf[start + 2..start + 4].copy_from_slice(&words);
    buf[0] |= 0x10;
}

/// Rewrite the picture id and TL0PICIDX of a VP8 payload descriptor
/// (RFC 7741 section 4.2) in place, each only where the descriptor carries
/// it; a picture id keeps its 7- or 15-bit width.
fn patch_vp8(payload: &mut [u8], picture_id: Option<u16>, tl0: Option<u8>) {
    let Some(&first) = payload.first() else {
        return;
    };
    if first & 0x80 == 0 || payload.len() < 2 {
        return; // no extension byte, so neither field
    }
    let x = payload[1];
    let mut at = 2;
    if x & 0x80 != 0 {
        let Some(&m) = payload.get(at) else { return };
        let long = m & 0x80 != 0;
        if let Some(id) = picture_id {
            if long {
                if at + 1 >= payload.len() {
                    return;
                }
                payload[at] = 0x80 | ((id >> 8) as u8 & 0x7f);
                payload[at + 1] = id as u8;
            } else {
                payload[at] = id as u8 & 0x7f;
            }
        }
        at += if long { 2 } else { 1 };
    }
    if x & 0x40 != 0
        && let (Some(t), Some(slot)) = (tl0, payload.get_mut(at))
    {
        *slot = t;
    }
}

/// Where the RTCP packet starting at `at` of the compound packet `rtcp`
/// ends (its length field, RFC 3550 section 6.4.1), if it is whole.
fn next_rtcp(rtcp: &[u8], at: usize) -> Option<usize> {
    let length = rtcp.get(at + 2..at + 4)?;
    let end = at + 4 * (usize::from(u16::from_be_bytes([length[0], length[1]])) + 1);
    (end <= rtcp.len()).then_some(end)
}

/// Give every sender report in the compound RTCP packet `rtcp` that is
/// about one of `streams` that stream's RTP time for its NTP time (taken
/// as `now`), packet count and octet count.
fn correct_sender_reports(rtcp: &mut [u8], streams: &[Stream], now: Instant) {
    let mut at = 0;
    while let Some(end) = next_rtcp(rtcp, at) {
        if rtcp[at + 1] == RTCP_SR && end >= at + 28 {
            let ssrc = u32::from_be_bytes([rtcp[at + 4], rtcp[at + 5], rtcp[at + 6], rtcp[at + 7]]);
            if let Some(stream) = streams.iter().find(|s| s.ids.ssrc == ssrc)
                && let Some((ts, arrival, rate)) = stream.last
            {
                let elapsed = now.saturating_duration_since(arrival);
                let ticks = (elapsed.as_secs_f64() * f64::from(rate)) as u32;
                rtcp[at + 16..at + 20].copy_from_slice(&ts.wrapping_add(ticks).to_be_bytes());
                rtcp[at + 20..at + 24].copy_from_slice(&stream.packets.to_be_bytes());
                rtcp[at + 24..at + 28].copy_from_slice(&stream.octets.to_be_bytes());
            }
        }
        at = end;
    }
}

/// A random 16-bit number for the first RTX sequence number.
fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_ids_are_rewritten_in_their_own_width() {
        // X, I with a 15-bit picture id, L with TL0PICIDX.
        let mut long = [0x90, 0xc0, 0x80, 0x01, 0x05, 0xaa];
        patch_vp8(&mut long, Some(0x1234), Some(9));
        assert_eq!(long, [0x90, 0xc0, 0x92, 0x34, 9, 0xaa]);
        // A 7-bit picture id stays 7 bits, and no L leaves the next byte.
        let mut short = [0x90, 0x80, 0x05, 0xaa];
        patch_vp8(&mut short, Some(0x1234), Some(9));
        assert_eq!(short, [0x90, 0x80, 0x34, 0xaa]);
        // No X byte: nothing to rewrite; a cut descriptor is left alone.
        let mut plain = [0x10, 0x00, 0x00];
        patch_vp8(&mut plain, Some(1), Some(1));
        assert_eq!(plain, [0x10, 0x00, 0x00]);
        let mut cut = [0x90, 0x80, 0x80];
        patch_vp8(&mut cut, Some(1), None);
        assert_eq!(cut, [0x90, 0x80, 0x80]);
    }

    fn stream(ext: ExtIds) -> Stream {
        let ids = StreamIds {
            mid: Mid::from("1"),
            ssrc: 7,
            rtx: None,
            written: None,
        };
        Stream::new(ids, ext)
    }

    #[test]
    fn compound_rtcp_is_walked_by_length_and_cut_packets_end_it() {
        let two = [0x80, 200, 0, 1, 0, 0, 0, 7, 0x81, 205, 0, 0];
        assert_eq!(next_rtcp(&two, 0), Some(8));
        assert_eq!(next_rtcp(&two, 8), Some(12));
        assert_eq!(next_rtcp(&two, 12), None);
        assert_eq!(next_rtcp(&two[..10], 8), None, "cut length field");
        assert_eq!(
            next_rtcp(&[0x80, 200, 0xff, 0xff], 0),
            None,
            "longer than it is"
        );
    }

    #[test]
    fn nacked_packets_map_back_to_their_publisher_stream_across_switches() {
        let mut s = stream(ExtIds::default());
        let payload: Arc<[u8]> = Arc::from(&[1u8][..]);
        let ext = ExtensionValues::default();
        let now = Instant::now();
        let source = |layer| SourceKey {
            publication: sluice_router::PublicationId(4),
            layer,
        };
        // (publisher layer, its seq, ts and picture id; the viewer's seq):
        // layer 2 until the viewer's 65,536, then layer 1 from its keyframe.
        let sent = [
            (2, 1_000, 90_000, 300, 65_534),
            (2, 1_001, 93_000, 301, 65_535),
            (2, 1_002, 93_000, 301, 65_536),
            (1, 7_000, 12_000, 50, 65_537),
        ];
        for (layer, seq_in, ts_in, pid_in, seq_out) in sent {
            let origin = Origin {
                source: source(layer),
                seq: seq_in,
                ts: ts_in,
                vp8: Some((Some(pid_in), None)),
            };
            // The viewer's own numbering: a fixed offset per source.
            let shifted = |base: u32| ts_in.wrapping_add(base);
            let packet = OutPacket {
                pt: 96,
                rtx_pt: Some(97),
                clock_rate: 90_000,
                seq: seq_out,
                ts: if layer == 2 {
                    shifted(5)
                } else {
                    shifted(90_000)
                },
                marker: false,
                payload: &payload,
                ext: &ext,
                vp8: Some((
                    Some((pid_in + if layer == 2 { 10 } else { 300 }) & 0x7fff),
                    None,
                )),
                arrival: now,
                origin: Some(origin),
            };
            assert!(s.sealed.mark(seq_out));
            s.map(seq_out, Shift::between(&origin, &packet, 97));
        }
        assert_eq!(s.mappings.len(), 2, "one mapping per source");
        let (seq_out, shift) = s.origin_of(0).expect("after the wrap");
        assert_eq!(seq_out, 65_536);
        assert_eq!(shift.source, source(2));
        assert_eq!(seq_out.wrapping_sub(shift.seq), 1_002);
        assert_eq!(93_000u32.wrapping_add(shift.ts), 93_005);
        assert_eq!(shift.vp8(Some((Some(301), None))), Some((Some(311), None)));
        let (seq_out, shift) = s.origin_of(1).expect("the newest");
        assert_eq!((seq_out, shift.source), (65_537, source(1)));
        assert_eq!(seq_out.wrapping_sub(shift.seq), 7_000);
        assert_eq!(shift.vp8(Some((Some(50), None))), Some((Some(350), None)));
        let (seq_out, _) = s.origin_of(65_534).expect("the oldest");
        assert_eq!(seq_out, 65_534);
        assert!(s.origin_of(65_533).is_none(), "sent before any mapping");
        assert!(s.origin_of(2).is_none(), "not sent yet");
        assert!(!s.resent_lately(65_536, now));
        s.resent.push_back((65_536, now));
        assert!(s.resent_lately(65_536, now + RESEND_INTERVAL / 2));
        assert!(!s.resent_lately(65_536, now + RESEND_INTERVAL));
    }

    #[test]
    fn no_sequence_number_is_sealed_twice() {
        let mut sealed = Sealed::default();
        assert!(sealed.mark(100));
        assert!(sealed.mark(102));
        assert!(sealed.mark(101), "late but new");
        assert!(!sealed.mark(101));
        assert!(!sealed.mark(100));
        assert!(sealed.mark(200));
        assert!(!sealed.mark(102), "too old to tell");
        assert!(!sealed.mark(200));

        let mut after_str0m = Sealed::after(Some(50));
        assert!(!after_str0m.mark(50));
        assert!(!after_str0m.mark(20));
        assert!(after_str0m.mark(51));
    }

    #[test]
    fn extensions_are_one_byte_elements_padded_to_words() {
        let mut buf = vec![0x80; RTP_HEADER];
        let s = stream(ExtIds {
            mid: Some(4),
            audio_level: Some(1),
            video_orientation: None,
        });
        let ext = Extensions {
            audio_level: Some(-30),
            voice_activity: Some(true),
            video_orientation: None,
        };
        write_extensions(&mut buf, &s, ext);
        assert_eq!(buf[0], 0x90, "X bit");
        assert_eq!(
            buf[RTP_HEADER..],
            [0xbe, 0xde, 0, 1, 0x40, b'1', 0x10, 0x80 | 30]
        );
        let mut padded = vec![0x80; RTP_HEADER];
        let audio_only = stream(ExtIds {
            audio_level: Some(1),
            ..ExtIds::default()
        });
        write_extensions(&mut padded, &audio_only, ext);
        assert_eq!(
            padded[RTP_HEADER..],
            [0xbe, 0xde, 0, 1, 0x10, 0x80 | 30, 0, 0]
        );
        let mut none = vec![0x80; RTP_HEADER];
        write_extensions(&mut none, &stream(ExtIds::default()), ext);
        assert_eq!(none, vec![0x80; RTP_HEADER]);
        assert_eq!(MidBytes::of(Mid::from("video")).as_bytes(), b"video");
        assert!(MidBytes::of(Mid::from("")).as_bytes().is_empty());
    }

    #[test]
    fn report_blocks_are_read_from_receiver_and_sender_reports() {
        let block = |ssrc: u32, fraction: u8| {
            let mut b = ssrc.to_be_bytes().to_vec();
            b.push(fraction);
            b.extend_from_slice(&[0; 19]);
            b
        };
        // An RR from SSRC 1 with two blocks.
        let mut rr = vec![0x82, 201, 0, 13, 0, 0, 0, 1];
        rr.extend(block(7, 64));
        rr.extend(block(9, 0));
        let blocks: Vec<_> = report_blocks(&rr).collect();
        assert_eq!(blocks, [(7, 64), (9, 0)]);
        // An SR with one block after its sender info.
        let mut sr = vec![0x81, 200, 0, 12, 0, 0, 0, 1];
        sr.extend_from_slice(&[0; 20]);
        sr.extend(block(7, 128));
        assert_eq!(report_blocks(&sr).collect::<Vec<_>>(), [(7, 128)]);
        // A count beyond the packet, and other packet types: nothing made up.
        assert_eq!(report_blocks(&rr[..8 + 24]).count(), 1);
        assert_eq!(report_blocks(&[0x81, 205, 0, 0]).count(), 0);
        assert_eq!(report_blocks(&[]).count(), 0);
    }

    #[test]
    fn loss_is_weighed_by_the_packets_each_report_covers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (mut video, mut audio) = (stream(ExtIds::default()), stream(ExtIds::default()));
        let mut sample = LossSample {
            since: Some(t0),
            ..LossSample::default()
        };
        // Nothing sent yet: a report covers no packets.
        sample.add(&mut video, 0.5, t0);
        assert_eq!(sample.take(t0 + ms(600)), None, "nothing covered yet");
        // 90 video packets (90,000 octets) at a quarter lost, 10 audio
        // packets (1,000 octets) none lost, over 1 s from the start.
        video.packets += 90;
        video.octets += 90_000;
        audio.packets += 10;
        audio.octets += 1_000;
        sample.add(&mut video, 0.25, t0 + ms(700));
        assert_eq!(sample.take(t0 + ms(400)), None, "under half a second");
        sample.add(&mut audio, 0.0, t0 + ms(900));
        let (lost, bps) = sample.take(t0 + ms(1000)).unwrap();
        assert!((lost - 0.225).abs() < 1e-9, "{lost}");
        assert_eq!(bps, 728_000);
        assert_eq!(sample.take(t0 + ms(2000)), None, "a new sample starts");
    }

    #[test]
    fn sender_reports_get_the_streams_own_figures() {
        let now = Instant::now();
        let mut s = stream(ExtIds::default());
        s.packets = 3;
        s.octets = 3000;
        s.last = Some((90_000, now - Duration::from_millis(100), 90_000));
        // An SR for SSRC 7 (no report blocks), then an SDES.
        let mut rtcp = vec![0x80, 200, 0, 6, 0, 0, 0, 7];
        rtcp.extend_from_slice(&[0x11; 20]);
        rtcp.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 7]);
        correct_sender_reports(&mut rtcp, std::slice::from_ref(&s), now);
        let rtp_time = u32::from_be_bytes(rtcp[16..20].try_into().unwrap());
        assert!((99_000..=99_100).contains(&rtp_time), "{rtp_time}");
        assert_eq!(rtcp[20..24], 3u32.to_be_bytes());
        assert_eq!(rtcp[24..28], 3000u32.to_be_bytes());
        assert_eq!(rtcp[8..16], [0x11; 8], "NTP time untouched");
        assert_eq!(rtcp[28..], [0x81, 202, 0, 1, 0, 0, 0, 7]);
    }
}
