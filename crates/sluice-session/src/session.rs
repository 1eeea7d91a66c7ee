//! A session: one peer connection, its tracks, and its liveness.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::format::{Codec as StrCodec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid, Rids};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use sluice_router::{Codec, Rewritten, SourceKey};

use crate::buffers::Buffers;
use crate::cache;
use crate::demux;
use crate::dtls::KeySlot;
use crate::egress::{self, Egress, Origin, OutPacket, Resend, Route, StreamIds};
use crate::history::{self, Kept};
use crate::loss::LossEstimator;
use crate::negotiate::{self, NegotiateError, Role, SessionConfig};
use crate::trickle::{self, SdpFrag};

/// Most simulcast layers a track may have (browsers send up to three).
const MAX_LAYERS: usize = 4;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent nothing for the consent timeout (RFC 7675), or never
    /// completed ICE.
    ConsentExpired,
    /// ICE or DTLS failed or the peer closed DTLS.
    Disconnected,
    /// The server (an HTTP DELETE, a shutdown) ended it.
    Ended,
}

/// One incoming RTP packet with what the router needs to know about it.
#[derive(Debug)]
pub struct IncomingRtp {
    /// The media section it arrived on.
    pub mid: Mid,
    /// Simulcast layer index (0 without simulcast), in rid declaration order.
    pub layer: u8,
    /// The codec, for keyframe detection.
    pub codec: Codec,
    /// The publisher's payload parameters, to pick each viewer's payload type.
    pub params: PayloadParams,
    /// Parsed VP8 descriptor (VP8 only), for picture id rewriting.
    pub vp8: Option<Vp8Descriptor>,
    /// The packet itself.
    pub packet: RtpPacket,
}

/// Something that happened to a session.
///
/// `Rtp` is boxed: a packet arrives once but every [`SessionOutput`] of
/// every viewer (one per datagram sent) is moved around at the size of the
/// largest variant, and an unboxed `RtpPacket` made that over 500 bytes.
#[derive(Debug)]
pub enum SessionEvent {
    /// ICE and DTLS are up.
    Connected,
    /// A publisher's media section the server receives (reported once,
    /// right after negotiation).
    MediaAdded {
        /// Its mid.
        mid: Mid,
        /// Audio or video.
        kind: MediaKind,
        /// Simulcast rids the peer sends, in declaration order (`[None]`
        /// without simulcast).
        rids: Vec<Option<String>>,
    },
    /// An RTP packet arrived.
    Rtp(Box<IncomingRtp>),
    /// The peer lost a picture on `mid` (PLI or FIR).
    KeyframeRequest {
        /// The media section of the outgoing track.
        mid: Mid,
    },
    /// The bandwidth estimator's view of the path to the peer (viewers
    /// with estimation on), or the loss-based estimate of a viewer on the
    /// direct egress once its reports showed congestion ([`crate::loss`]).
    BandwidthEstimate {
        /// Bits per second the path is estimated to carry.
        bps: u64,
    },
    /// NACKs since the last report: received from the peer (it lost
    /// packets we sent) and sent to it (we lost packets it sent).
    Nacks {
        /// NACKs the peer sent us.
        received: u64,
        /// NACKs we sent the peer.
        sent: u64,
    },
    /// Packets the viewer asked for again (NACKs), on the direct egress:
    /// look each up in the [`history::PacketHistory`] and pass it to
    /// [`Session::resend`].
    Resends(Vec<Resend>),
    /// The session is over; nothing more comes out of it.
    Closed(CloseReason),
}

/// One output of [`Session::poll`], returned by value (no allocation).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum SessionOutput {
    /// Send this datagram.
    Transmit(Transmit),
    /// Something happened.
    Event(SessionEvent),
    /// Nothing more to do until this time (or new input).
    Timeout(Instant),
}

/// A media section of the session.
#[derive(Debug)]
struct Track {
    mid: Mid,
    kind: MediaKind,
    rids: Vec<Option<Rid>>,
    /// Outgoing payload type for the last source codec seen.
    out_pt: Option<(PayloadParams, PayloadParams)>,
    /// SSRC of the send stream, once looked up by mid: str0m finds a
    /// stream by SSRC in a map, by mid only by walking all of them.
    send_ssrc: Option<Ssrc>,
    /// Highest sequence number sent through str0m, which the direct
    /// egress must never seal again.
    written: Option<u64>,
    /// Its stream in the direct egress, once that is set up.
    egress_stream: Option<usize>,
}

/// One WebRTC peer connection.
pub struct Session {
    /// str0m's state, about 10 KB: boxed, so the fields the forwarding
    /// path reads for each viewer sit in a few cache lines of a small
    /// struct (and the shard's session map holds small entries).
    rtc: Box<Rtc>,
    role: Role,
    /// The client's offer as last applied (re-applied on ICE restart).
    offer: String,
    tracks: Vec<Track>,
    /// Incoming SSRC to (track index, layer) cache.
    ssrcs: Vec<(Ssrc, usize, u8)>,
    pending: VecDeque<SessionEvent>,
    /// Last cumulative NACK count per (mid, rid, egress) stream.
    nacks_seen: Vec<(Mid, Option<Rid>, bool, u64)>,
    consent_timeout: Duration,
    last_receive: Instant,
    closed: Option<CloseReason>,
    close_reported: bool,
    /// str0m's last answer to a poll while nothing has been fed to it
    /// since: until then, polling and timing it out again is skipped
    /// (viewers on the direct egress only).
    rtc_timeout: Option<Instant>,
    /// Local and remote address of str0m's last DTLS or SRTCP datagram, or
    /// of the last nomination str0m answered: the selected route, which
    /// the direct egress sends on.
    route: Option<Route>,
    /// The last binding request that nominated a candidate pair, and the
    /// route it came on: once str0m answers it, media moves there.
    nominated: Option<(demux::TransactionId, Route)>,
    /// Where this session's DTLS reports its SRTP keys, until the direct
    /// egress is set up (viewers without bandwidth estimation).
    keys: Option<KeySlot>,
    /// The direct egress (see [`crate::egress`]), once set up.
    egress: Option<Egress>,
    /// The time of the last input, for what the session does on its own.
    clock: Instant,
    /// The peer closed DTLS: no more media goes to it.
    media_closed: bool,
    /// Why str0m gave up on the session, if it did ([`Session::failure`]).
    failure: Option<String>,
    /// A viewer with a bandwidth estimator (see
    /// [`SessionConfig::viewer_bwe_initial_bps`]).
    estimating: bool,
    /// A viewer's loss-based estimate, from the receiver reports its
    /// direct egress reads (see [`SessionConfig::viewer_loss_estimate`]).
    loss: Option<LossEstimator>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("tracks", &self.tracks)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Session {
    /// Create a session from an SDP offer and return it with the SDP answer.
    ///
    /// `codecs` are the payload parameters a viewer must be able to receive
    /// (the current publisher's); pass none for publishers.
    pub fn accept(
        role: Role,
        offer: &str,
        config: &SessionConfig,
        codecs: &[PayloadParams],
        now: Instant,
    ) -> Result<(Session, String), NegotiateError> {
        let (mut rtc, keys) = negotiate::new_rtc(config, role, now)?;
        let (answer, offered) = negotiate::accept_offer(&mut rtc, offer)?;
        let mut session = Session {
            rtc: Box::new(rtc),
            role,
            offer: offer.to_owned(),
            tracks: Vec::new(),
            ssrcs: Vec::new(),
            pending: VecDeque::new(),
            nacks_seen: Vec::new(),
            consent_timeout: config.consent_timeout,
            last_receive: now,
            closed: None,
            close_reported: false,
            rtc_timeout: None,
            route: None,
            nominated: None,
            keys,
            egress: None,
            clock: now,
            media_closed: false,
            failure: None,
            estimating: role == Role::Viewer && config.viewer_bwe_initial_bps.is_some(),
            loss: (role == Role::Viewer && config.viewer_loss_estimate)
                .then(LossEstimator::default),
        };
        for mid in offered {
            // Data channels have no media entry.
            let Some(media) = session.rtc.media(mid) else {
                continue;
            };
            let rids = match media.rids_rx() {
                Rids::Specific(rids) if !rids.is_empty() => rids.iter().map(|r| Some(*r)).collect(),
                _ => vec![None],
            };
            session.tracks.push(Track {
                mid,
                kind: media.kind(),
                rids,
                out_pt: None,
                send_ssrc: None,
                written: None,
                egress_stream: None,
            });
        }
        let mids: Vec<(Mid, MediaKind)> = session.tracks.iter().map(|t| (t.mid, t.kind)).collect();
        negotiate::check_directions(&session.rtc, role, &mids)?;
        if role == Role::Viewer {
            negotiate::check_codecs(&session.rtc, &mids, codecs)?;
            session.limit_resend_history();
        }
        if role == Role::Publisher {
            for t in &session.tracks {
                let receiving = session
                    .rtc
                    .media(t.mid)
                    .is_some_and(|m| m.direction().is_receiving());
                if receiving {
                    session.pending.push_back(SessionEvent::MediaAdded {
                        mid: t.mid,
                        kind: t.kind,
                        rids: t.rids.iter().map(|r| r.map(|r| r.to_string())).collect(),
                    });
                }
            }
        }
        Ok((session, answer))
    }

    /// Keep sent video for resends for [`history::HISTORY`] rather than
    /// str0m's default of 3 s: str0m's history is per viewer, so it is
    /// most of a viewer's memory until the direct egress takes over.
    fn limit_resend_history(&mut self) {
        for (mid, kind) in self.send_tracks() {
            if kind != MediaKind::Video {
                continue;
            }
            if let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                stream.set_rtx_cache(
                    history::HISTORY_PACKETS,
                    history::HISTORY,
                    Some(egress::RESEND_SHARE as f32),
                );
            }
        }
    }

    /// Whether this viewer's media goes out through the direct egress
    /// (see [`crate::egress`]) rather than str0m's send queue.
    pub fn direct_egress(&self) -> bool {
        self.egress.is_some()
    }

    /// Whether this session publishes or views.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The server-side ICE ufrag: STUN requests carrying it belong here.
    pub fn local_ufrag(&mut self) -> String {
        self.rtc.direct_api().local_ice_credentials().ufrag
    }

    /// The entity tag of the session resource: it names the current ICE
    /// session, so it changes with every ICE restart.
    pub fn etag(&mut self) -> String {
        format!("\"{}\"", self.local_ufrag())
    }

    /// Apply an HTTP PATCH fragment: trickled candidates, or an ICE restart
    /// when it carries new credentials. Returns the answer fragment of a
    /// restart (`None` for plain trickle). Drain [`Session::poll`] after.
    pub fn patch(&mut self, frag: &SdpFrag) -> Result<Option<String>, NegotiateError> {
        if self.closed.is_some() {
            return Err(NegotiateError::WrongDirection(
                "the session has ended".into(),
            ));
        }
        self.rtc_timeout = None;
        for candidate in &frag.candidates {
            self.rtc.add_remote_candidate(candidate.clone());
        }
        let (Some(ufrag), Some(pwd)) = (&frag.ufrag, &frag.pwd) else {
            return Ok(None);
        };
        if trickle::credentials(&self.offer) == Some((ufrag.as_str(), pwd.as_str())) {
            return Ok(None);
        }
        // Re-applying the client's offer with its new credentials makes
        // str0m restart ICE exactly as for a renegotiation.
        let offer = trickle::with_credentials(&self.offer, ufrag, pwd);
        let (answer, _) = negotiate::accept_offer(&mut self.rtc, &offer)?;
        self.offer = offer;
        let local = self.rtc.direct_api().local_ice_credentials();
        Ok(Some(trickle::restart_answer(
            &local.ufrag,
            &local.pass,
            &answer,
        )))
    }

    /// The payload parameters of the first codec negotiated on each media
    /// section this session receives (what a publisher will send).
    pub fn receive_codecs(&self) -> Vec<PayloadParams> {
        self.tracks
            .iter()
            .filter_map(|t| {
                let media = self.rtc.media(t.mid)?;
                if !media.direction().is_receiving() {
                    return None;
                }
                let pt = *media.remote_pts().first()?;
                self.rtc.codec_config().find(|p| p.pt() == pt).copied()
            })
            .collect()
    }

    /// The media sections this session sends on, with their kinds.
    pub fn send_tracks(&self) -> Vec<(Mid, MediaKind)> {
        self.tracks
            .iter()
            .filter(|t| {
                self.rtc
                    .media(t.mid)
                    .is_some_and(|m| m.direction().is_sending())
            })
            .map(|t| (t.mid, t.kind))
            .collect()
    }

    /// Whether the session still runs.
    pub fn is_alive(&self) -> bool {
        self.closed.is_none()
    }

    /// Whether a datagram from an address this session does not know yet
    /// belongs to it: a STUN request with its credentials and a valid
    /// MESSAGE-INTEGRITY (so a forged request cannot make the server learn
    /// an attacker's address).
    pub fn accepts(
        &self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        let Ok(contents) = datagram.try_into() else {
            return false;
        };
        self.rtc.accepts(&Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        ))
    }

    /// Feed one datagram that arrived from `source` on local `destination`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        if self.closed.is_some() {
            return;
        }
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        self.last_receive = now;
        self.clock = self.clock.max(now);
        self.rtc_timeout = None;
        if let Some(id) = demux::nomination(datagram) {
            self.nominated = Some((id, (destination, source)));
        }
        if let (Some(egress), Some(_)) = (&mut self.egress, self.route)
            && egress::is_rtcp(datagram)
        {
            let received = egress.on_rtcp(datagram, now);
            if received > 0 {
                self.pending
                    .push_back(SessionEvent::Nacks { received, sent: 0 });
            }
            if let Some((lost, sent_bps)) = egress.take_loss(now)
                && let Some(loss) = &mut self.loss
                && let Some(bps) = loss.on_report(lost, sent_bps, now)
            {
                self.pending
                    .push_back(SessionEvent::BandwidthEstimate { bps });
            }
            let resends = egress.take_resends();
            if !resends.is_empty() {
                self.pending.push_back(SessionEvent::Resends(resends));
            }
        }
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            self.fail(e);
        }
    }

    /// Drive time forward.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        self.clock = self.clock.max(now);
        if now.saturating_duration_since(self.last_receive) >= self.consent_timeout {
            self.close(CloseReason::ConsentExpired);
            return;
        }
        if self.rtc_timeout.is_some_and(|due| now < due) {
            return;
        }
        self.rtc_timeout = None;
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.fail(e);
        }
    }

    /// Resend `kept`, the publisher packet `resend` (from
    /// [`SessionEvent::Resends`]) asked for, on the direct egress, sealed
    /// into a buffer from `buffers`.
    pub fn resend(&mut self, resend: &Resend, kept: &Kept, now: Instant, buffers: &mut Buffers) {
        if let (Some(egress), Some(route)) = (&mut self.egress, self.route) {
            egress.resend(route, resend, kept, now, buffers);
        }
    }

    /// Close the session because str0m failed on `error` (a DTLS
    /// handshake it refused, a fingerprint that does not match the SDP):
    /// [`Session::failure`] then says what went wrong.
    fn fail(&mut self, error: impl std::fmt::Display) {
        if self.closed.is_none() {
            self.failure = Some(error.to_string());
        }
        self.close(CloseReason::Disconnected);
    }

    /// What made the session fail, when str0m refused something the peer
    /// sent (for the log: a client with an unusable DTLS certificate, say).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// End the session (DELETE, shutdown).
    pub fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.rtc_timeout = None;
            self.rtc.disconnect();
        }
    }

    /// The next output. Call until it returns [`SessionOutput::Timeout`]
    /// after every input or write.
    pub fn poll(&mut self) -> SessionOutput {
        if let Some(e) = self.pending.pop_front() {
            return SessionOutput::Event(e);
        }
        if let Some(reason) = self.closed {
            if !self.close_reported {
                self.close_reported = true;
                return SessionOutput::Event(SessionEvent::Closed(reason));
            }
            return SessionOutput::Timeout(self.last_receive + Duration::from_secs(3600));
        }
        if let Some(t) = self.egress.as_mut().and_then(Egress::poll_transmit) {
            return SessionOutput::Transmit(t);
        }
        match self.poll_rtc() {
            SessionOutput::Timeout(t) => {
                SessionOutput::Timeout(t.min(self.last_receive + self.consent_timeout))
            }
            other => other,
        }
    }

    fn poll_rtc(&mut self) -> SessionOutput {
        if let Some(t) = self.rtc_timeout {
            return SessionOutput::Timeout(t);
        }
        loop {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    self.fail(e);
                    return self.poll();
                }
            };
            match output {
                Output::Timeout(t) => {
                    // Only a viewer on the direct egress gets no str0m work
                    // per packet; others keep str0m's own pace.
                    if self.egress.is_some() {
                        self.rtc_timeout = Some(t);
                    }
                    return SessionOutput::Timeout(t);
                }
                Output::Transmit(mut t) => {
                    if egress::is_route_probe(&t) {
                        self.route = Some((t.source, t.destination));
                    }
                    // str0m answered a nomination (so its credentials were
                    // right): the peer moved, and str0m sends on the new
                    // pair from now on, so media does too (rather than
                    // from str0m's next DTLS or SRTCP datagram on).
                    if let Some((id, route)) = self.nominated
                        && demux::binding_success(&t.contents) == Some(id)
                        && (t.source, t.destination) == route
                    {
                        self.nominated = None;
                        self.route = Some(route);
                    }
                    if let Some(egress) = &self.egress {
                        egress.correct_sender_reports(&mut t, self.clock);
                    }
                    return SessionOutput::Transmit(t);
                }
                Output::Event(event) => {
                    if let Some(e) = self.on_event(event) {
                        return SessionOutput::Event(e);
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<SessionEvent> {
        match event {
            Event::Connected => {
                self.start_egress();
                Some(SessionEvent::Connected)
            }
            // The peer closed DTLS: media stops (str0m would queue it for
            // good); the session lasts until DELETE or the consent timeout.
            Event::Closed => {
                self.egress = None;
                self.media_closed = true;
                None
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.close(CloseReason::Disconnected);
                None
            }
            Event::RtpPacket(packet) => self.on_rtp(packet),
            Event::KeyframeRequest(req) => Some(SessionEvent::KeyframeRequest { mid: req.mid }),
            // Only the session's own estimator counts: it probes for more.
            // A browser's REMB stays near what it receives, so a viewer
            // moved to a low layer by it could never move back up (a
            // viewer without transport-wide feedback gets no estimate, as
            // without estimation).
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) if self.estimating => {
                Some(SessionEvent::BandwidthEstimate {
                    bps: estimate.as_u64(),
                })
            }
            // With the direct egress, NACKs are counted as they come.
            Event::MediaEgressStats(s) if self.egress.is_some() => {
                self.nack_delta(s.mid, s.rid, true, s.nacks);
                None
            }
            Event::MediaEgressStats(s) => {
                let received = self.nack_delta(s.mid, s.rid, true, s.nacks);
                (received > 0).then_some(SessionEvent::Nacks { received, sent: 0 })
            }
            Event::MediaIngressStats(s) => {
                let sent = self.nack_delta(s.mid, s.rid, false, s.nacks);
                (sent > 0).then_some(SessionEvent::Nacks { received: 0, sent })
            }
            _ => None,
        }
    }

    /// The growth of a stream's cumulative NACK count since last time.
    fn nack_delta(&mut self, mid: Mid, rid: Option<Rid>, egress: bool, total: u64) -> u64 {
        match self
            .nacks_seen
            .iter_mut()
            .find(|(m, r, e, _)| *m == mid && *r == rid && *e == egress)
        {
            Some(seen) => {
                let delta = total.saturating_sub(seen.3);
                seen.3 = total;
                delta
            }
            None => {
                self.nacks_seen.push((mid, rid, egress, total));
                total
            }
        }
    }

    fn on_rtp(&mut self, packet: RtpPacket) -> Option<SessionEvent> {
        let ssrc = packet.header.ssrc;
        let (track, layer) = match self.ssrcs.iter().find(|(s, _, _)| *s == ssrc) {
            Some(&(_, t, l)) => (t, l),
            None => {
                let mut api = self.rtc.direct_api();
                let stream = api.stream_rx(&ssrc)?;
                let (mid, rid) = (stream.mid(), stream.rid());
                let t = self.tracks.iter().position(|t| t.mid == mid)?;
                let rids = &mut self.tracks[t].rids;
                let l = match rids.iter().position(|r| *r == rid) {
                    Some(l) => l,
                    None if rid.is_none() => 0,
                    // An undeclared rid: accept a few, never grow unbounded.
                    None if rids.len() < MAX_LAYERS => {
                        rids.push(rid);
                        rids.len() - 1
                    }
                    None => return None,
                };
                self.ssrcs.push((ssrc, t, l as u8));
                (t, l as u8)
            }
        };
        let pt = packet.header.payload_type;
        let params = *self.rtc.codec_config().find(|p| p.pt() == pt)?;
        let codec = router_codec(params.spec().codec);
        let vp8 = match codec {
            Codec::Vp8 => Vp8Descriptor::parse(&packet.payload).ok(),
            _ => None,
        };
        Some(SessionEvent::Rtp(Box::new(IncomingRtp {
            mid: self.tracks[track].mid,
            layer,
            codec,
            params,
            vp8,
            packet,
        })))
    }

    /// Tell the bandwidth estimator how much this viewer would like to
    /// receive, so it probes the path for that much (no effect with
    /// estimation off).
    pub fn set_desired_bitrate(&mut self, bps: u64) {
        self.rtc_timeout = None;
        self.rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(bps));
    }

    /// Ask the peer for a keyframe on `mid`'s layer `layer`.
    pub fn request_keyframe(&mut self, mid: Mid, layer: u8) {
        let Some(track) = self.tracks.iter().find(|t| t.mid == mid) else {
            return;
        };
        let rid = track.rids.get(usize::from(layer)).copied().flatten();
        self.rtc_timeout = None;
        if let Some(stream) = self.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
        }
    }

    /// Set up the direct egress once the handshake has exported its SRTP
    /// keys; a profile it does not handle leaves str0m's egress in place.
    fn start_egress(&mut self) {
        let Some(slot) = &self.keys else {
            return;
        };
        let Some(keys) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return; // not yet
        };
        self.keys = None;
        let mut streams = Vec::new();
        for (mid, _) in self.send_tracks() {
            if let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                streams.push(StreamIds {
                    mid,
                    ssrc: *stream.ssrc(),
                    rtx: stream.rtx().map(|s| *s),
                    written: self
                        .tracks
                        .iter()
                        .find(|t| t.mid == mid)
                        .and_then(|t| t.written),
                });
            }
        }
        let rtc = &self.rtc;
        self.egress = Egress::new(
            &keys,
            &streams,
            |mid| rtc.media(mid).map(|m| m.remote_extmap().clone()),
            self.clock,
        );
        let Some(egress) = &self.egress else {
            return;
        };
        for track in &mut self.tracks {
            track.egress_stream = egress.stream_of(track.mid);
        }
        // What str0m sent before keeps no resends: str0m's resend stream
        // would share the egress's SSRC and key with a counter of its own.
        self.rtc_timeout = None;
        for (mid, _) in self.send_tracks() {
            if let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                stream.set_rtx_cache(1, Duration::ZERO, None);
            }
        }
    }

    /// Start loading into the CPU's caches what [`Session::write_rtp`]
    /// touches, ahead of writing to this session (see the shard's write
    /// loop). A hint: nothing changes.
    pub fn prefetch(&self) {
        // The session's own fields that a write reads, wherever the
        // compiler placed them: addresses only, nothing waits.
        cache::prefetch(&self.closed);
        cache::prefetch(&self.media_closed);
        cache::prefetch(&self.keys);
        cache::prefetch(&self.route);
        cache::prefetch(self.tracks.as_slice());
        if let Some(egress) = &self.egress {
            egress.prefetch();
        }
    }

    /// Send `rtp` (a publisher's packet) on `mid` with the header fields
    /// the router rewrote for this viewer. The payload is shared, not
    /// copied; the audio level, voice activity and video orientation header
    /// extensions go along. `from` is the publisher's stream, whose
    /// [`history::PacketHistory`] answers the viewer's NACKs. The packet
    /// is dropped if this peer did not negotiate the publisher's codec.
    /// The direct egress seals it into a buffer from `buffers`. Returns
    /// whether it was queued.
    pub fn write_rtp(
        &mut self,
        mid: Mid,
        rtp: &IncomingRtp,
        from: SourceKey,
        rewritten: &Rewritten,
        buffers: &mut Buffers,
    ) -> bool {
        let packet = &rtp.packet;
        let outgoing = Outgoing {
            params: &rtp.params,
            seq: *packet.seq_no,
            ts: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
            ext: &packet.header.ext_vals,
            vp8: rtp.vp8,
            arrival: packet.timestamp,
        };
        self.write(mid, &outgoing, from, rewritten, buffers)
    }

    /// [`Session::write_rtp`] for a packet kept in the publisher stream's
    /// [`history::PacketHistory`]: a viewer that connects just after a
    /// keyframe starts on the kept one and what followed it.
    pub fn write_kept(
        &mut self,
        mid: Mid,
        kept: &Kept,
        from: SourceKey,
        rewritten: &Rewritten,
        buffers: &mut Buffers,
    ) -> bool {
        let ext = ExtensionValues {
            video_orientation: kept.video_orientation,
            ..ExtensionValues::default()
        };
        let outgoing = Outgoing {
            params: &kept.params,
            seq: kept.seq,
            ts: kept.ts,
            marker: kept.marker,
            payload: &kept.payload,
            ext: &ext,
            vp8: kept.vp8,
            arrival: kept.arrival,
        };
        self.write(mid, &outgoing, from, rewritten, buffers)
    }

    fn write(
        &mut self,
        mid: Mid,
        packet: &Outgoing,
        from: SourceKey,
        rewritten: &Rewritten,
        buffers: &mut Buffers,
    ) -> bool {
        if self.closed.is_some() || self.media_closed {
            return false;
        }
        let Some(track) = self.tracks.iter().position(|t| t.mid == mid) else {
            return false;
        };
        let source = packet.params;
        let out = match self.tracks[track].out_pt {
            Some((src, out)) if src.pt() == source.pt() && src.spec() == source.spec() => out,
            _ => {
                let Some(out) = negotiate::matching_pt(&self.rtc, mid, source) else {
                    return false;
                };
                self.tracks[track].out_pt = Some((*source, out));
                out
            }
        };
        let is_video = out.spec().codec.is_video();
        if self.keys.is_some() {
            self.start_egress();
        }
        let ext = packet.ext;
        // The VP8 picture id and TL0PICIDX to write, each where the
        // publisher's descriptor carries one.
        let vp8 = packet.vp8.zip(rewritten.vp8).map(|(descriptor, ids)| {
            (
                descriptor.picture_id().map(|_| ids.picture_id),
                ids.tl0_pic_idx
                    .filter(|_| descriptor.tl0_pic_idx().is_some()),
            )
        });
        if let (Some(egress), Some(route)) = (&mut self.egress, self.route) {
            let written = OutPacket {
                pt: *out.pt(),
                rtx_pt: out.resend().map(|pt| *pt),
                clock_rate: out.spec().clock_rate.get(),
                seq: rewritten.seq,
                ts: rewritten.ts,
                marker: packet.marker,
                payload: packet.payload,
                ext,
                vp8,
                arrival: packet.arrival,
                origin: is_video.then(|| Origin {
                    source: from,
                    seq: packet.seq,
                    ts: packet.ts,
                    vp8: packet.vp8.map(|d| (d.picture_id(), d.tl0_pic_idx())),
                }),
            };
            let Some(stream) = self.tracks[track].egress_stream else {
                return false;
            };
            return egress.write(route, stream, &written, buffers);
        }
        self.rtc_timeout = None;
        let ext_vals = ExtensionValues {
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            ..ExtensionValues::default()
        };
        let mut write = RtpWrite::new(
            out.pt(),
            rewritten.seq.into(),
            rewritten.ts,
            packet.arrival,
            packet.payload.clone(),
        )
        .marker(packet.marker)
        .nackable(is_video)
        .ext_vals(ext_vals);
        if let (Some(descriptor), Some((picture_id, tl0))) = (packet.vp8, vp8) {
            let mut patch = descriptor.patch();
            if let Some(id) = picture_id {
                patch = patch.picture_id(id);
            }
            if let Some(t) = tl0 {
                patch = patch.tl0_pic_idx(t);
            }
            if let Ok(patch) = patch.build() {
                write = write.vp8_patch(patch);
            }
        }
        let track = &mut self.tracks[track];
        track.written = track.written.max(Some(rewritten.seq));
        let mut api = self.rtc.direct_api();
        if let Some(ssrc) = track.send_ssrc
            && let Some(stream) = api.stream_tx(&ssrc)
        {
            stream.write_rtp(write);
            return true;
        }
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        track.send_ssrc = Some(stream.ssrc());
        stream.write_rtp(write);
        true
    }
}

/// A publisher packet on its way to one viewer, live or kept.
struct Outgoing<'a> {
    params: &'a PayloadParams,
    /// The publisher's sequence number (extended) and timestamp.
    seq: u64,
    ts: u32,
    marker: bool,
    payload: &'a Arc<[u8]>,
    ext: &'a ExtensionValues,
    vp8: Option<Vp8Descriptor>,
    /// When it reached the server.
    arrival: Instant,
}

/// The router's view of a str0m codec.
fn router_codec(codec: StrCodec) -> Codec {
    match codec {
        StrCodec::Opus => Codec::Opus,
        StrCodec::Vp8 => Codec::Vp8,
        StrCodec::Vp9 => Codec::Vp9,
        StrCodec::H264 => Codec::H264,
        StrCodec::Av1 => Codec::Av1,
        _ => Codec::Other,
    }
}
