//! A shard: one tokio task owning a UDP socket, the sessions of the rooms
//! placed on it and their router, so forwarding within a room needs no
//! lock. A server runs one shard per configured core.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_router::forwarder::Vp8Ids;
use sluice_router::router::RouterConfig;
use sluice_router::{Follow, Forwarder, IdMap};
use sluice_router::{
    Forward, LayerChoice, MediaKind, PacketMeta, PublicationId, Router, SessionId, SourceKey,
    TrackId,
};
use sluice_session::demux::stun_server_ufrag;
use sluice_session::history::{Kept, PacketHistory};
use sluice_session::{
    CloseReason, IncomingRtp, Mid, Role, SdpFrag, Session, SessionConfig, SessionEvent,
    SessionOutput, Vp8Descriptor,
};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use crate::admin::{LayerInfo, ParticipantInfo, RoomInfo, SessionInfo, SpeakerInfo, TrackInfo};
use crate::control::{
    Caller, Command, ControlError, Created, EndReason, Limits, Patched, PublisherStatus,
    ServerConfig, SessionEnd, SessionRequest,
};
use crate::events::{Event, EventKind, EventSink};
use crate::inbox;
use crate::metrics::{Metrics, Tally};
use crate::outbox::Outbox;
use crate::quota::Quota;

/// Bandwidth kept for each audio track of a viewer before video gets the
/// rest of its estimate (Opus at its usual rates, with headers).
const AUDIO_SHARE_BPS: u64 = 64_000;
/// Largest datagram read from the socket.
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read per wake-up before timers and commands get a turn.
const RECV_BATCH: usize = 64;
/// How recent a kept keyframe must be for a viewer that connects to start
/// on it and the packets since, sent at once: beyond this the burst
/// would be long, and a keyframe asked for at the viewer's offer has come
/// well within it.
const START_WINDOW: Duration = Duration::from_millis(500);
/// How often per-packet counts are added to the Prometheus counters.
const METRICS_FLUSH: Duration = Duration::from_secs(1);
/// How often watched rooms' speakers are re-judged.
const SPEAKERS_TICK: Duration = Duration::from_millis(200);
/// Remote addresses one session may be reached from (ICE candidates that
/// proved themselves with a STUN request carrying the session's ufrag).
const MAX_ADDRS_PER_SESSION: usize = 8;
/// Publisher sessions the server ended whose reasons it remembers, for
/// clients that name their session after it ended.
const RECENT_ENDS: usize = 256;

/// A session and what the shard knows about it.
struct Entry {
    session: Session,
    room: Arc<str>,
    /// The token identity that created the session (authentication on).
    identity: Option<String>,
    /// A publisher's participant name (viewers follow it by this name).
    participant: Option<Arc<str>>,
    /// The HTTP client address that created it.
    client: IpAddr,
    resource: String,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    /// Incoming media sections and the publications they feed.
    publications: Vec<(Mid, PublicationId)>,
    /// Outgoing media sections, indexed by [`TrackId`].
    tracks: Vec<Mid>,
    /// The earliest wake-up of this session in the timer heap.
    next_timeout: Option<Instant>,
    /// The viewer's last bandwidth estimate, bits per second.
    estimate_bps: Option<u64>,
    /// When the offer arrived, until the session connects.
    joining_since: Option<Instant>,
    /// When a viewer's offer arrived, until its first video packet went
    /// out (`None` for publishers).
    awaiting_video: Option<Instant>,
}

/// The publisher packets of one receive batch (with the stream each came
/// on) and the writes the router made of them, each with its packet's
/// [`Slot`].
#[derive(Default)]
struct Batch {
    /// A receive batch is being read: writes wait for its end.
    open: bool,
    /// When the kernel received the datagram being handled.
    arrived: Option<SystemTime>,
    /// The earliest arrival of the batch's forwarded packets.
    first_forwarded: Option<SystemTime>,
    packets: Vec<(SourceKey, IncomingRtp)>,
    writes: Vec<(Forward, Slot)>,
}

/// A write's packet in its receive batch, and its place among the viewer's
/// writes of the batch: video before audio, so that an audio datagram
/// (always shorter) can end the viewer's GSO run rather than go alone,
/// and each in arrival order. Sorting by it looks at no packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot(u32);

impl Slot {
    /// The bit that puts audio after video.
    const AUDIO: u32 = 1 << 31;

    fn new(index: usize, audio: bool) -> Slot {
        Slot(index as u32 | if audio { Slot::AUDIO } else { 0 })
    }

    /// The packet's index in the batch.
    fn index(self) -> usize {
        (self.0 & !Slot::AUDIO) as usize
    }
}

/// Owner of the sessions of the rooms placed on this shard.
pub(crate) struct Shard {
    /// This shard's place among the server's shards; it leads every
    /// resource id the shard hands out, so requests find their way back.
    index: u8,
    socket: UdpSocket,
    local: SocketAddr,
    session_config: SessionConfig,
    router: Router,
    sessions: IdMap<SessionId, Entry>,
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    by_resource: HashMap<String, SessionId>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    events: VecDeque<(SessionId, SessionEvent)>,
    forwards: Vec<Forward>,
    /// Publisher packets of the current receive batch, and what the
    /// router made of them (see [`Shard::write_batch`]).
    batch: Batch,
    /// Forwarded publisher video, kept once for all viewers' resends.
    history: PacketHistory,
    outbox: Outbox,
    next_id: u64,
    metrics: Metrics,
    tally: Tally,
    /// The gauges' values this shard last added in (see [`Shard::report`]).
    reported: Reported,
    limits: Limits,
    /// What this shard took of the limits all shards share.
    quota: Quota,
    /// Live sessions per room, for the per-room limit.
    per_room: HashMap<Arc<str>, usize>,
    events_out: EventSink,
    /// Rooms whose publishing participants changed, for conference clients.
    room_changes: broadcast::Sender<Arc<str>>,
    /// Publisher sessions ended for a reason their clients did not give.
    session_ends: broadcast::Sender<SessionEnd>,
    /// The last [`RECENT_ENDS`] of them: resource id, room, owner, reason.
    recent_ends: VecDeque<RecentEnd>,
    /// Who speaks, per room that a conference client watches.
    speakers: HashMap<Arc<str>, watch::Sender<Vec<SpeakerInfo>>>,
}

/// A publisher session the server ended, remembered for a while.
struct RecentEnd {
    resource: Arc<str>,
    room: Arc<str>,
    identity: Option<String>,
    reason: EndReason,
}

/// This shard's share of the server-wide gauges, as last added in.
#[derive(Default)]
struct Reported {
    rooms: i64,
    participants: i64,
    publications: i64,
}

/// What every shard of a server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Metrics,
    pub(crate) quota: Quota,
    pub(crate) events_out: EventSink,
    pub(crate) room_changes: broadcast::Sender<Arc<str>>,
    pub(crate) session_ends: broadcast::Sender<SessionEnd>,
}

impl Shard {
    pub(crate) fn new(
        index: u8,
        socket: UdpSocket,
        session_config: SessionConfig,
        shared: Shared,
    ) -> std::io::Result<Self> {
        let local = socket.local_addr()?;
        let Shared {
            config,
            metrics,
            quota,
            events_out,
            room_changes,
            session_ends,
        } = shared;
        let limits = config.limits.clone();
        Ok(Shard {
            index,
            socket,
            local,
            session_config,
            router: Router::new(RouterConfig {
                keyframe_interval: config.keyframe_interval,
            }),
            sessions: IdMap::default(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_resource: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            forwards: Vec::new(),
            batch: Batch::default(),
            history: PacketHistory::default(),
            outbox: Outbox::default(),
            next_id: 1,
            metrics,
            tally: Tally::default(),
            reported: Reported::default(),
            limits,
            quota,
            per_room: HashMap::new(),
            events_out,
            room_changes,
            session_ends,
            recent_ends: VecDeque::new(),
            speakers: HashMap::new(),
        })
    }

    /// Run until shut down or every control handle is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut flush = tokio::time::interval(METRICS_FLUSH);
        let mut speakers_tick = tokio::time::interval(SPEAKERS_TICK);
        info!(udp = %self.local, "media shard started");
        loop {
            let deadline = self
                .timers
                .peek()
                .map(|Reverse((t, _))| *t)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                readable = self.socket.readable() => match readable {
                    Ok(()) => self.on_receive(&mut buf),
                    Err(e) => debug!("udp receive error: {e}"),
                },
                command = commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timers(Instant::now()),
                _ = flush.tick() => self.report(),
                _ = speakers_tick.tick() => self.update_speakers(Instant::now()),
            }
            self.outbox.flush(&self.socket);
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.close(id, CloseReason::Ended);
        }
        self.outbox.flush(&self.socket);
        self.report();
        info!("media shard stopped");
    }

    /// Add this shard's counts to the server's metrics: the packet tallies,
    /// and the change in its share of the room, participant and
    /// publication gauges (several shards feed each gauge).
    fn report(&mut self) {
        self.tally.flush(&self.metrics);
        self.metrics
            .layer_switches
            .inc_by(self.router.take_layer_switches());
        let now = Reported {
            rooms: self.per_room.len() as i64,
            participants: self.participant_count() as i64,
            publications: self.router.publication_count() as i64,
        };
        self.metrics.rooms.add(now.rooms - self.reported.rooms);
        self.metrics
            .participants
            .add(now.participants - self.reported.participants);
        self.metrics
            .publications
            .add(now.publications - self.reported.publications);
        self.reported = now;
    }

    /// Re-judge who speaks in each watched room, and tell the watchers of
    /// a room whose speakers changed; forget rooms nobody watches.
    fn update_speakers(&mut self, now: Instant) {
        let router = &self.router;
        self.speakers.retain(|room, watchers| {
            if watchers.is_closed() {
                return false;
            }
            let speakers: Vec<SpeakerInfo> = router
                .speakers(room, now)
                .into_iter()
                .map(|s| SpeakerInfo {
                    name: s.participant.to_string(),
                    level_dbov: s.level_dbov,
                })
                .collect();
            // A change of who speaks, or of who is loudest, is news; a
            // level that moves a little is not.
            watchers.send_if_modified(|current| {
                let changed = current.len() != speakers.len()
                    || current.iter().zip(&speakers).any(|(a, b)| a.name != b.name);
                if changed {
                    *current = speakers;
                }
                changed
            });
            true
        });
    }

    /// A watch on who speaks in `room`.
    fn watch_speakers(&mut self, room: &str) -> watch::Receiver<Vec<SpeakerInfo>> {
        if let Some(watchers) = self.speakers.get(room) {
            return watchers.subscribe();
        }
        let (watchers, watch) = watch::channel(Vec::new());
        self.speakers.insert(Arc::from(room), watchers);
        self.update_speakers(Instant::now());
        watch
    }

    /// Handle the datagrams queued on the socket (up to [`RECV_BATCH`]),
    /// then write and send what the batch brings each viewer, viewer by
    /// viewer.
    fn on_receive(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        self.batch.open = true;
        self.batch.first_forwarded = None;
        for _ in 0..RECV_BATCH {
            match inbox::try_recv(&self.socket, buf) {
                Ok(received) => {
                    self.batch.arrived = Some(received.arrived);
                    self.dispatch(now, received.source, &buf[..received.len]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("udp receive error: {e}");
                    break;
                }
            }
        }
        self.batch.open = false;
        self.write_batch(now);
        self.on_timers(now);
        self.outbox.flush(&self.socket);
        if let Some(arrived) = self.batch.first_forwarded {
            let delay = SystemTime::now()
                .duration_since(arrived)
                .unwrap_or_default();
            self.metrics
                .forward_delay_seconds
                .observe(delay.as_secs_f64());
        }
    }

    fn dispatch(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let id = match self.by_addr.get(&source) {
            Some(id) => *id,
            None => {
                let Some(id) = stun_server_ufrag(datagram).and_then(|u| self.by_ufrag.get(u))
                else {
                    return;
                };
                let id = *id;
                let local = self.local;
                if let Some(entry) = self.sessions.get_mut(&id)
                    && entry.addrs.len() < MAX_ADDRS_PER_SESSION
                    && entry.session.accepts(now, source, local, datagram)
                {
                    debug!(session = id.0, peer = %source, "learned peer address");
                    entry.addrs.push(source);
                    self.by_addr.insert(source, id);
                }
                id
            }
        };
        let local = self.local;
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.session.handle_datagram(now, source, local, datagram);
            self.drive(id);
            self.process_events(now);
        }
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.sessions.get_mut(&id) else {
                continue;
            };
            if entry.next_timeout != Some(at) {
                continue; // superseded by an earlier wake-up
            }
            entry.next_timeout = None;
            entry.session.handle_timeout(now);
            self.drive(id);
        }
        self.process_events(now);
    }

    /// Drain a session's outputs: send its datagrams, queue its events and
    /// schedule its next timeout.
    fn drive(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return;
        };
        loop {
            match entry.session.poll() {
                SessionOutput::Transmit(t) => self.outbox.push(&self.socket, t),
                SessionOutput::Event(e) => self.events.push_back((id, e)),
                SessionOutput::Timeout(t) => {
                    schedule(&mut self.timers, entry, id, t);
                    return;
                }
            }
        }
    }

    fn process_events(&mut self, now: Instant) {
        while let Some((id, event)) = self.events.pop_front() {
            self.on_session_event(id, event, now);
            self.on_router_events();
        }
    }

    /// Send the keyframe requests the router asked for.
    fn on_router_events(&mut self) {
        while let Some(event) = self.router.poll_event() {
            let sluice_router::RouterEvent::RequestKeyframe {
                session,
                publication,
                layer,
            } = event;
            if let Some(entry) = self.sessions.get_mut(&session)
                && let Some((mid, _)) = entry.publications.iter().find(|(_, p)| *p == publication)
            {
                entry.session.request_keyframe(*mid, layer);
                self.metrics
                    .keyframe_requests
                    .with_label_values(&["to_publishers"])
                    .inc();
                self.drive(session);
            }
        }
    }

    fn on_session_event(&mut self, id: SessionId, event: SessionEvent, now: Instant) {
        match event {
            SessionEvent::Rtp(rtp) => self.forward(id, rtp, now),
            SessionEvent::Connected => {
                if let Some(e) = self.sessions.get_mut(&id) {
                    let join = e
                        .joining_since
                        .take()
                        .map(|t| now.saturating_duration_since(t));
                    if let Some(join) = join {
                        self.metrics.join_seconds.observe(join.as_secs_f64());
                    }
                    info!(
                        session = id.0,
                        room = %e.room,
                        identity = e.identity.as_deref().unwrap_or("-"),
                        role = ?e.session.role(),
                        join_ms = join.map_or(0, |j| j.as_millis() as u64),
                        "session connected"
                    );
                    for track in 0..e.tracks.len() {
                        let track = TrackId(track as u32);
                        if let Some(source) = self.router.on_subscriber_ready(id, track) {
                            self.start_on_kept_keyframe(id, track, source, now);
                        }
                    }
                }
            }
            SessionEvent::MediaAdded { mid, kind, rids } => {
                let Some(entry) = self.sessions.get_mut(&id) else {
                    return;
                };
                if entry.session.role() == Role::Publisher {
                    let publication = self.router.publish(
                        &entry.room,
                        id,
                        entry.participant.as_deref(),
                        media_kind(kind),
                        &rids,
                    );
                    let _ = self.room_changes.send(entry.room.clone());
                    entry.publications.push((mid, publication));
                    info!(
                        session = id.0,
                        room = %entry.room,
                        identity = entry.identity.as_deref().unwrap_or("-"),
                        ?kind,
                        layers = rids.len(),
                        "track published"
                    );
                    let event = track_event(
                        EventKind::TrackPublished,
                        entry,
                        publication,
                        media_kind(kind),
                    );
                    self.emit(event);
                }
            }
            SessionEvent::KeyframeRequest { mid } => {
                if let Some(entry) = self.sessions.get(&id)
                    && let Some(track) = entry.tracks.iter().position(|m| *m == mid)
                {
                    self.metrics
                        .keyframe_requests
                        .with_label_values(&["from_viewers"])
                        .inc();
                    self.router
                        .on_keyframe_request(id, TrackId(track as u32), now);
                }
            }
            SessionEvent::BandwidthEstimate { bps } => self.on_estimate(id, bps),
            SessionEvent::Nacks { received, sent } => {
                let nacks = &self.metrics.nacks;
                nacks.with_label_values(&["from_viewers"]).inc_by(received);
                nacks.with_label_values(&["to_publishers"]).inc_by(sent);
            }
            SessionEvent::Resends(resends) => {
                if let Some(entry) = self.sessions.get_mut(&id) {
                    for resend in &resends {
                        if let Some(kept) = self.history.get(resend.source, resend.seq, now) {
                            entry
                                .session
                                .resend(resend, kept, now, &mut self.outbox.buffers);
                        }
                    }
                    self.drive(id);
                }
            }
            SessionEvent::Closed(reason) => self.remove(id, reason),
        }
    }

    /// Start a viewer's track that just connected on the newest keyframe
    /// kept of `source` and what followed it, if that keyframe is recent
    /// (see [`START_WINDOW`]): the keyframe asked for at its offer often
    /// comes before the viewer connects.
    fn start_on_kept_keyframe(
        &mut self,
        id: SessionId,
        track: TrackId,
        source: SourceKey,
        now: Instant,
    ) {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(&mid) = entry.tracks.get(track.0 as usize) else {
            return;
        };
        let Some(kept) = self.history.since_keyframe(source, now, START_WINDOW) else {
            return;
        };
        let mut written = 0;
        for packet in kept {
            let meta = PacketMeta {
                seq: packet.seq,
                ts: packet.ts,
                marker: packet.marker,
                size: packet.payload.len(),
                keyframe: packet.keyframe,
                vp8: vp8_ids(packet.vp8),
                audio_level: None,
                arrival: packet.arrival,
            };
            let Some(rewritten) = self.router.replay(id, track, source, &meta) else {
                continue;
            };
            let buffers = &mut self.outbox.buffers;
            if entry
                .session
                .write_kept(mid, packet, source, &rewritten, buffers)
            {
                written += 1;
                self.tally.packets_forwarded += 1;
                self.tally.bytes_forwarded += packet.payload.len() as u64;
            }
        }
        if written > 0 {
            debug!(
                session = id.0,
                packets = written,
                "started on a kept keyframe"
            );
            first_video(&self.metrics, &mut entry.awaiting_video, "kept", now);
            entry.session.handle_timeout(now);
            self.drive(id);
        }
    }

    /// A viewer's bandwidth estimate changed: audio keeps its share, video
    /// gets the rest (split evenly when there is more than one video
    /// track), and the estimator is told what the viewer would like.
    fn on_estimate(&mut self, id: SessionId, bps: u64) {
        self.metrics.bandwidth_estimate.observe(bps as f64);
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.estimate_bps = Some(bps);
        }
        self.allocate(id);
    }

    /// Split viewer `id`'s last bandwidth estimate over its tracks, and
    /// tell its estimator what to probe for.
    fn allocate(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(bps) = entry.estimate_bps else {
            return;
        };
        let tracks = entry.session.send_tracks();
        let videos = tracks
            .iter()
            .filter(|(_, k)| *k == sluice_session::MediaKind::Video)
            .count() as u64;
        let audios = tracks.len() as u64 - videos;
        if videos == 0 {
            return;
        }
        let share = bps.saturating_sub(audios * AUDIO_SHARE_BPS) / videos;
        // Until a layer's bitrate is measured, ask for the starting estimate.
        let unknown = self.session_config.viewer_bwe_initial_bps.unwrap_or(0);
        let mut video = 0;
        for (index, (_, kind)) in tracks.iter().enumerate() {
            if *kind == sluice_session::MediaKind::Video {
                video += self
                    .router
                    .set_budget(id, TrackId(index as u32), Some(share))
                    .filter(|bps| *bps > 0)
                    .unwrap_or(unknown);
            }
        }
        // The estimator follows what it is asked to probe for, so ask for
        // the preferred layers with headroom for keyframes.
        let desired = audios * AUDIO_SHARE_BPS + video * 3 / 2;
        entry.session.set_desired_bitrate(desired);
        self.drive(id);
    }

    /// Route one publisher packet: the router decides which viewers get
    /// it, with what header; the writes wait for the end of the receive
    /// batch ([`Shard::write_batch`]), or happen at once outside one.
    fn forward(&mut self, publisher: SessionId, rtp: Box<IncomingRtp>, now: Instant) {
        let Some(entry) = self.sessions.get(&publisher) else {
            return;
        };
        let Some(&(_, publication)) = entry.publications.iter().find(|(m, _)| *m == rtp.mid) else {
            return;
        };
        let packet = &rtp.packet;
        self.tally.packets_received += 1;
        self.tally.bytes_received += packet.payload.len() as u64;
        let meta = PacketMeta {
            seq: *packet.seq_no,
            ts: packet.header.timestamp,
            marker: packet.header.marker,
            size: packet.payload.len(),
            keyframe: rtp.codec.is_keyframe(&packet.payload),
            vp8: vp8_ids(rtp.vp8),
            audio_level: packet.header.ext_vals.audio_level,
            arrival: now,
        };
        let mut forwards = std::mem::take(&mut self.forwards);
        let awaited = self
            .router
            .on_packet(publication, rtp.layer, &meta, &mut forwards);
        let source = SourceKey {
            publication,
            layer: rtp.layer,
        };
        // Video is kept for resends, and for viewers still connecting,
        // which start on a recent keyframe when they connect.
        if (awaited || !forwards.is_empty()) && rtp.params.spec().codec.is_video() {
            self.history.keep(
                source,
                Kept {
                    params: rtp.params,
                    seq: meta.seq,
                    ts: meta.ts,
                    marker: meta.marker,
                    keyframe: meta.keyframe,
                    payload: packet.payload.clone(),
                    vp8: rtp.vp8,
                    video_orientation: packet.header.ext_vals.video_orientation,
                    arrival: now,
                },
            );
        }
        if !forwards.is_empty() {
            if let Some(arrived) = self.batch.arrived {
                let first = self.batch.first_forwarded.get_or_insert(arrived);
                *first = (*first).min(arrived);
            }
            let audio = !rtp.params.spec().codec.is_video();
            let slot = Slot::new(self.batch.packets.len(), audio);
            self.batch
                .writes
                .extend(forwards.drain(..).map(|forward| (forward, slot)));
            self.batch.packets.push((source, *rtp));
        }
        self.forwards = forwards;
        if !self.batch.open {
            self.write_batch(now);
        }
    }

    /// Write the routed packets to their viewers and send them: all of a
    /// viewer's packets of the batch one after the other, so its state
    /// (session, streams, keys) is fetched into the cache once per batch
    /// rather than once per packet, and its datagrams leave together
    /// (one GSO send where their sizes allow).
    fn write_batch(&mut self, now: Instant) {
        let mut writes = std::mem::take(&mut self.batch.writes);
        writes.sort_unstable_by_key(|(f, slot)| (f.session, *slot));
        let mut at = 0;
        while at < writes.len() {
            let id = writes[at].0.session;
            // A viewer's run is short (a few packets): a scan beats a search.
            let end = writes[at..]
                .iter()
                .position(|(f, _)| f.session != id)
                .map_or(writes.len(), |n| at + n);
            // With hundreds of viewers each one's state is out of the cache
            // by its turn: the next one's tracks and streams start loading
            // while this one is written.
            if let Some(next) = writes
                .get(end)
                .and_then(|(f, _)| self.sessions.get(&f.session))
            {
                next.session.prefetch();
            }
            let Some(viewer) = self.sessions.get_mut(&id) else {
                at = end;
                continue;
            };
            let mut written = false;
            for (f, slot) in &writes[at..end] {
                let Some(&mid) = viewer.tracks.get(f.track.0 as usize) else {
                    continue;
                };
                let (source, rtp) = &self.batch.packets[slot.index()];
                let buffers = &mut self.outbox.buffers;
                if viewer
                    .session
                    .write_rtp(mid, rtp, *source, &f.rewritten, buffers)
                {
                    self.tally.packets_forwarded += 1;
                    self.tally.bytes_forwarded += rtp.packet.payload.len() as u64;
                    written = true;
                    if viewer.awaiting_video.is_some() && rtp.params.spec().codec.is_video() {
                        first_video(&self.metrics, &mut viewer.awaiting_video, "live", now);
                    }
                }
            }
            if written {
                // str0m sends what was written through it on a timeout.
                viewer.session.handle_timeout(now);
                self.drive(id);
            }
            at = end;
        }
        writes.clear();
        self.batch.writes = writes; // keeps its capacity
        self.batch.packets.clear();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Prepare { request, reply } => {
                let _ = reply.send(self.prepare(&request));
            }
            Command::Create {
                request,
                accepted,
                reply,
            } => {
                let (session, answer) = *accepted;
                let _ = reply.send(self.create(request, session, answer));
                self.process_events(Instant::now());
            }
            Command::Delete {
                resource,
                caller,
                reply,
            } => {
                let result = self.owned_session(&resource, caller.as_ref()).map(|id| {
                    self.close(id, CloseReason::Ended);
                });
                let _ = reply.send(result);
            }
            Command::Patch {
                resource,
                caller,
                if_match,
                frag,
                reply,
            } => {
                let result = self
                    .owned_session(&resource, caller.as_ref())
                    .and_then(|id| self.patch(id, if_match.as_deref(), &frag));
                let _ = reply.send(result);
                self.process_events(Instant::now());
            }
            Command::ChooseLayer {
                resource,
                caller,
                choice,
                reply,
            } => {
                let result = self
                    .owned_session(&resource, caller.as_ref())
                    .and_then(|id| self.choose_layer(id, choice));
                let _ = reply.send(result);
            }
            Command::Participants { room, reply } => {
                let _ = reply.send(self.participants(&room));
            }
            Command::WatchSpeakers { room, reply } => {
                let _ = reply.send(self.watch_speakers(&room));
            }
            Command::PublisherStatus {
                room,
                resource,
                caller,
                reply,
            } => {
                let _ = reply.send(self.publisher_status(&room, &resource, caller.as_ref()));
            }
            Command::Rooms { room, reply } => {
                let _ = reply.send(self.rooms(room.as_deref()));
            }
            Command::CloseRoom { room, reply } => {
                let ids = self.sessions_in(&room);
                let result = if ids.is_empty() {
                    Err(ControlError::NotFound)
                } else {
                    for id in &ids {
                        self.end(*id, EndReason::RoomClosed);
                    }
                    info!(room = %room, sessions = ids.len(), "room closed by admin");
                    Ok(ids.len())
                };
                let _ = reply.send(result);
            }
            Command::RemoveSession {
                room,
                resource,
                reply,
            } => {
                let result = match self.by_resource.get(&resource).copied() {
                    Some(id) if self.sessions.get(&id).is_some_and(|e| *e.room == *room) => {
                        self.end(id, EndReason::Removed);
                        info!(session = id.0, room = %room, "participant removed by admin");
                        Ok(())
                    }
                    _ => Err(ControlError::NotFound),
                };
                let _ = reply.send(result);
            }
            Command::MuteTrack {
                room,
                track,
                muted,
                reply,
            } => {
                let publication = PublicationId(track);
                let in_room = self
                    .router
                    .publisher_of(publication)
                    .and_then(|s| self.sessions.get(&s))
                    .is_some_and(|e| *e.room == *room);
                let result = if in_room && self.router.set_muted(publication, muted) {
                    info!(room = %room, track, muted, "track mute changed by admin");
                    Ok(())
                } else {
                    Err(ControlError::NotFound)
                };
                let _ = reply.send(result);
            }
            Command::Shutdown => {}
        }
    }

    /// People in rooms: sessions of one token identity (or, without
    /// authentication, one publisher name) in a room count once; each
    /// anonymous viewer counts on its own.
    fn participant_count(&self) -> usize {
        let people: std::collections::HashSet<(&str, Result<&str, u64>)> = self
            .sessions
            .iter()
            .map(|(id, e)| {
                let who = e.identity.as_deref().or(e.participant.as_deref());
                (&*e.room, who.ok_or(id.0))
            })
            .collect();
        people.len()
    }

    /// The participants publishing in `room`, oldest first.
    fn participants(&self, room: &str) -> Vec<ParticipantInfo> {
        let now = Instant::now();
        self.sessions_in(room)
            .into_iter()
            .filter_map(|id| {
                let entry = self.sessions.get(&id)?;
                let name = entry.participant.as_deref()?;
                let mut info = ParticipantInfo {
                    name: name.to_owned(),
                    audio: false,
                    video: false,
                    video_layers: 0,
                };
                for (_, publication) in &entry.publications {
                    let Some(p) = self.router.publication_info(*publication, now) else {
                        continue;
                    };
                    match p.kind {
                        MediaKind::Audio => info.audio = true,
                        MediaKind::Video => {
                            info.video = true;
                            info.video_layers = p.layers.len();
                        }
                    }
                }
                (info.audio || info.video).then_some(info)
            })
            .collect()
    }

    /// Sessions of `room`, oldest first.
    fn sessions_in(&self, room: &str) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| &*e.room == room)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// The admin view of every room, or of one.
    fn rooms(&self, only: Option<&str>) -> Vec<RoomInfo> {
        let now = Instant::now();
        let mut names: Vec<&Arc<str>> = self.per_room.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter(|name| only.is_none_or(|o| ***name == *o))
            .map(|name| RoomInfo {
                name: name.to_string(),
                sessions: self
                    .sessions_in(name)
                    .into_iter()
                    .filter_map(|id| self.session_info(id, now))
                    .collect(),
            })
            .collect()
    }

    fn session_info(&self, id: SessionId, now: Instant) -> Option<SessionInfo> {
        let e = self.sessions.get(&id)?;
        let tracks = e
            .publications
            .iter()
            .filter_map(|(_, p)| {
                let info = self.router.publication_info(*p, now)?;
                Some(TrackInfo {
                    id: p.0,
                    kind: kind_label(info.kind),
                    muted: info.muted,
                    subscribers: info.subscribers,
                    layers: info
                        .layers
                        .into_iter()
                        .map(|l| LayerInfo {
                            rid: l.rid,
                            active: l.active,
                            bitrate_kbps: l.bitrate_bps / 1000,
                        })
                        .collect(),
                })
            })
            .collect();
        Some(SessionInfo {
            id: e.resource.clone(),
            role: role_label(e.session.role()),
            identity: e.identity.clone(),
            connected: e.joining_since.is_none(),
            estimate_kbps: e.estimate_bps.map(|bps| bps / 1000),
            tracks,
        })
    }

    /// The session behind `resource`, if `caller` may act on it: its
    /// creator, an admin, or anyone while authentication is off.
    fn owned_session(
        &self,
        resource: &str,
        caller: Option<&Caller>,
    ) -> Result<SessionId, ControlError> {
        let id = *self
            .by_resource
            .get(resource)
            .ok_or(ControlError::NotFound)?;
        let entry = self.sessions.get(&id).ok_or(ControlError::NotFound)?;
        if may_act(caller, entry.identity.as_deref()) {
            Ok(id)
        } else {
            Err(ControlError::Forbidden)
        }
    }

    /// Where publisher `resource` of `room` stands, as far as `caller` may
    /// know.
    fn publisher_status(
        &self,
        room: &str,
        resource: &str,
        caller: Option<&Caller>,
    ) -> PublisherStatus {
        if let Some(entry) = self
            .by_resource
            .get(resource)
            .and_then(|id| self.sessions.get(id))
        {
            let mine = *entry.room == *room
                && entry.session.role() == Role::Publisher
                && may_act(caller, entry.identity.as_deref());
            return if mine {
                PublisherStatus::Live
            } else {
                PublisherStatus::Unknown
            };
        }
        self.recent_ends
            .iter()
            .find(|e| {
                *e.resource == *resource
                    && *e.room == *room
                    && may_act(caller, e.identity.as_deref())
            })
            .map_or(PublisherStatus::Unknown, |e| {
                PublisherStatus::Ended(e.reason)
            })
    }

    /// Point every video track of viewer `id` at the layer `choice` names.
    fn choose_layer(&mut self, id: SessionId, choice: LayerChoice) -> Result<(), ControlError> {
        let entry = self.sessions.get(&id).ok_or(ControlError::NotFound)?;
        if entry.session.role() != Role::Viewer {
            return Err(ControlError::NotAViewer);
        }
        for (index, (_, kind)) in entry.session.send_tracks().into_iter().enumerate() {
            if kind == sluice_session::MediaKind::Video {
                self.router
                    .set_layer_choice(id, TrackId(index as u32), choice);
            }
        }
        self.allocate(id);
        debug!(session = id.0, ?choice, "layer chosen");
        Ok(())
    }

    /// Trickle candidates or restart ICE on a session (RFC 9725 4.4).
    fn patch(
        &mut self,
        id: SessionId,
        if_match: Option<&str>,
        frag: &str,
    ) -> Result<Patched, ControlError> {
        let frag = SdpFrag::parse(frag).map_err(ControlError::Negotiate)?;
        let entry = self.sessions.get_mut(&id).ok_or(ControlError::NotFound)?;
        let etag = entry.session.etag();
        match if_match.map(str::trim) {
            None => return Err(ControlError::PreconditionRequired),
            Some("*") => {}
            Some(tag) if tag == etag => {}
            Some(_) => return Err(ControlError::PreconditionFailed),
        }
        let restart_answer = entry
            .session
            .patch(&frag)
            .map_err(ControlError::Negotiate)?;
        if restart_answer.is_some() {
            let ufrag = entry.session.local_ufrag();
            self.by_ufrag.remove(&entry.ufrag);
            self.by_ufrag.insert(ufrag.clone(), id);
            entry.ufrag = ufrag;
            info!(
                session = id.0,
                room = %entry.room,
                identity = entry.identity.as_deref().unwrap_or("-"),
                "ICE restarted"
            );
        }
        let etag = entry.session.etag();
        self.drive(id);
        Ok(Patched {
            etag,
            restart_answer,
        })
    }

    /// Whether a session of `request` fits the limits now, and the codecs
    /// a viewer must be able to decode (see [`Shard::publisher_codecs`]).
    fn prepare(
        &self,
        request: &SessionRequest,
    ) -> Result<Vec<sluice_session::PayloadParams>, ControlError> {
        let room = request.room.as_str();
        let in_room = self.per_room.get(room).copied();
        self.quota.check(in_room.is_none(), request.client)?;
        if in_room.is_some_and(|n| n >= self.limits.max_sessions_per_room) {
            return Err(ControlError::RoomFull);
        }
        Ok(match request.role {
            Role::Publisher => Vec::new(),
            Role::Viewer => self.publisher_codecs(room, &follow_of(request)),
        })
    }

    /// Take in a session negotiated for `request` (see
    /// [`crate::ControlHandle::create`]), if the limits still allow it.
    fn create(
        &mut self,
        request: SessionRequest,
        mut session: Session,
        answer: String,
    ) -> Result<Created, ControlError> {
        let follow = follow_of(&request);
        let SessionRequest {
            role,
            room,
            identity,
            client,
            participant,
            layer,
            ..
        } = request;
        let room = room.as_str();
        let in_room = self.per_room.get(room).copied();
        let new_room = in_room.is_none();
        self.quota.admit(new_room, client)?;
        if in_room.is_some_and(|n| n >= self.limits.max_sessions_per_room) {
            self.quota.release(new_room, client);
            return Err(ControlError::RoomFull);
        }
        let now = Instant::now();
        let id = SessionId(self.next_id);
        self.next_id += 1;
        // The shard's index, then 120 random bits.
        let resource = format!("{:02x}{:030x}", self.index, rand::random::<u128>() >> 8);
        let ufrag = session.local_ufrag();
        let etag = session.etag();
        let room: Arc<str> = self
            .per_room
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| k.clone());
        let room_sessions = self.per_room.entry(room.clone()).or_default();
        *room_sessions += 1;
        if *room_sessions == 1 {
            self.emit(Event::room(EventKind::RoomStarted, &room));
        }
        // Only now, with the new session counted in its room: ending the
        // older one must not end the room (and give back its quota).
        if let (Role::Publisher, Some(name)) = (role, &participant) {
            self.replace_participant(&room, name);
        }
        let mut tracks = Vec::new();
        if role == Role::Viewer {
            for (index, (mid, kind)) in session.send_tracks().into_iter().enumerate() {
                let kind = media_kind(kind);
                let forwarder = match kind {
                    MediaKind::Video => Forwarder::new(true, 90_000, rand::random()),
                    MediaKind::Audio => Forwarder::new(false, 48_000, rand::random()),
                };
                let track = TrackId(index as u32);
                self.router
                    .subscribe(&room, id, track, kind, follow.clone(), forwarder);
                if let (MediaKind::Video, Some(choice)) = (kind, layer) {
                    self.router.set_layer_choice(id, track, choice);
                }
                if kind == MediaKind::Video
                    && let Some(initial) = self.session_config.viewer_bwe_initial_bps
                {
                    // Start on a layer the first estimate carries, rather
                    // than flooding the estimator before it has spoken.
                    let share = initial.saturating_sub(AUDIO_SHARE_BPS);
                    self.router.set_budget(id, track, Some(share));
                }
                if kind == MediaKind::Video {
                    // A browser takes about as long to send a keyframe as
                    // the viewer takes to connect: ask now. One that comes
                    // before the viewer connects is kept for it
                    // (`start_on_kept_keyframe`).
                    self.router.on_keyframe_request(id, track, now);
                }
                tracks.push(mid);
            }
            self.on_router_events();
        }
        let participant = match role {
            Role::Publisher => Some(Arc::from(
                participant.unwrap_or_else(|| format!("p{}", id.0)).as_str(),
            )),
            Role::Viewer => None,
        };
        info!(
            session = id.0,
            room = %room,
            ?role,
            identity = identity.as_deref().unwrap_or("-"),
            resource = %resource,
            "session created"
        );
        self.by_ufrag.insert(ufrag.clone(), id);
        self.by_resource.insert(resource.clone(), id);
        let label = [role_label(role)];
        self.metrics.sessions.with_label_values(&label).inc();
        self.metrics
            .sessions_created
            .with_label_values(&label)
            .inc();
        self.sessions.insert(
            id,
            Entry {
                session,
                room,
                identity,
                participant,
                client,
                resource: resource.clone(),
                ufrag,
                addrs: Vec::new(),
                publications: Vec::new(),
                tracks,
                next_timeout: None,
                estimate_bps: None,
                joining_since: Some(now),
                awaiting_video: (role == Role::Viewer).then_some(now),
            },
        );
        if let Some(entry) = self.sessions.get(&id) {
            self.emit(participant_event(EventKind::ParticipantJoined, entry));
        }
        self.drive(id);
        Ok(Created {
            resource,
            answer,
            etag,
        })
    }

    /// A participant name stands for one publisher per room: a new WHIP
    /// session under a name (a reloaded page, a reconnecting encoder, the
    /// same token from another device) ends the older ones, whose viewers
    /// then get the new session's media.
    fn replace_participant(&mut self, room: &str, name: &str) {
        let older: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| {
                e.session.role() == Role::Publisher
                    && &*e.room == room
                    && e.participant.as_deref() == Some(name)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in older {
            info!(
                session = id.0,
                room,
                participant = name,
                "participant replaced by a new session"
            );
            self.end(id, EndReason::Replaced);
        }
    }

    /// The codecs of what a new viewer following `follow` will receive
    /// (the room's feeds, or one participant's publications): it must be
    /// able to decode them.
    fn publisher_codecs(&self, room: &str, follow: &Follow) -> Vec<sluice_session::PayloadParams> {
        let mut codecs = Vec::new();
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let Some(publisher) = self
                .router
                .source(room, kind, follow)
                .and_then(|p| self.router.publisher_of(p))
                .and_then(|s| self.sessions.get(&s))
            else {
                continue;
            };
            for params in publisher.session.receive_codecs() {
                let is_video = params.spec().codec.is_video();
                if is_video == (kind == MediaKind::Video) && !codecs.contains(&params) {
                    codecs.push(params);
                }
            }
        }
        codecs
    }

    /// End a session for a reason its client did not give, and tell
    /// whoever listens for that client ([`crate::ControlHandle::session_ends`]).
    /// Only publishers are announced: they are who conference pages are.
    fn end(&mut self, id: SessionId, reason: EndReason) {
        if let Some(entry) = self.sessions.get(&id)
            && entry.session.role() == Role::Publisher
        {
            let resource: Arc<str> = Arc::from(entry.resource.as_str());
            if self.recent_ends.len() == RECENT_ENDS {
                self.recent_ends.pop_front();
            }
            self.recent_ends.push_back(RecentEnd {
                resource: resource.clone(),
                room: entry.room.clone(),
                identity: entry.identity.clone(),
                reason,
            });
            let _ = self.session_ends.send(SessionEnd { resource, reason });
        }
        self.close(id, CloseReason::Ended);
    }

    /// Ask a session to close; its `Closed` event removes it.
    fn close(&mut self, id: SessionId, reason: CloseReason) {
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.session.close(reason);
            self.drive(id);
            self.process_events(Instant::now());
        }
    }

    /// Forget a closed session and everything routed to or from it.
    fn remove(&mut self, id: SessionId, reason: CloseReason) {
        let Some(entry) = self.sessions.remove(&id) else {
            return;
        };
        for (_, publication) in &entry.publications {
            if self.events_out.enabled()
                && let Some(info) = self.router.publication_info(*publication, Instant::now())
            {
                let event =
                    track_event(EventKind::TrackUnpublished, &entry, *publication, info.kind);
                self.emit(event);
            }
            self.router.unpublish(*publication);
            self.history.forget(*publication);
        }
        if !entry.publications.is_empty() {
            let _ = self.room_changes.send(entry.room.clone());
        }
        self.metrics
            .sessions
            .with_label_values(&[role_label(entry.session.role())])
            .dec();
        for track in 0..entry.tracks.len() {
            self.router.unsubscribe(id, TrackId(track as u32));
        }
        for addr in &entry.addrs {
            self.by_addr.remove(addr);
        }
        decrement(&mut self.per_room, &entry.room);
        self.emit(participant_event(EventKind::ParticipantLeft, &entry));
        let room_ended = !self.per_room.contains_key(&entry.room);
        if room_ended {
            self.emit(Event::room(EventKind::RoomFinished, &entry.room));
        }
        self.quota.release(room_ended, entry.client);
        self.by_ufrag.remove(&entry.ufrag);
        self.by_resource.remove(&entry.resource);
        let identity = entry.identity.as_deref().unwrap_or("-");
        let lost = match reason {
            CloseReason::Ended => None,
            CloseReason::ConsentExpired => Some("consent"),
            CloseReason::Disconnected => Some("disconnected"),
        };
        match lost {
            None => info!(session = id.0, room = %entry.room, identity, "session ended"),
            Some(why) => {
                self.metrics.sessions_lost.with_label_values(&[why]).inc();
                let error = entry.session.failure().unwrap_or("-");
                warn!(session = id.0, room = %entry.room, identity, reason = why, error, "session lost");
            }
        }
    }
}

impl Shard {
    /// Hand a lifecycle event to the webhook sender, never waiting.
    fn emit(&self, event: Event) {
        if !self.events_out.send(event) {
            self.metrics.events_dropped.inc();
        }
    }
}

/// A participant event about `entry`.
fn participant_event(kind: EventKind, entry: &Entry) -> Event {
    Event {
        session: Some(entry.resource.clone()),
        role: Some(role_label(entry.session.role())),
        identity: entry.identity.clone(),
        ..Event::room(kind, &entry.room)
    }
}

/// A track event about `publication` of `entry`.
fn track_event(
    kind: EventKind,
    entry: &Entry,
    publication: PublicationId,
    media: MediaKind,
) -> Event {
    Event {
        role: None,
        track: Some(publication.0),
        kind: Some(kind_label(media)),
        ..participant_event(kind, entry)
    }
}

/// A viewer's first video packet went out at `now`: observe how long it
/// took since its offer (`awaiting`, which is cleared), by how it started.
fn first_video(metrics: &Metrics, awaiting: &mut Option<Instant>, start: &str, now: Instant) {
    if let Some(since) = awaiting.take() {
        metrics
            .first_video_seconds
            .with_label_values(&[start])
            .observe(now.saturating_duration_since(since).as_secs_f64());
    }
}

/// The VP8 identifiers the router rewrites, from a packet's descriptor.
fn vp8_ids(descriptor: Option<Vp8Descriptor>) -> Option<Vp8Ids> {
    let descriptor = descriptor?;
    Some(Vp8Ids {
        picture_id: descriptor.picture_id()?,
        tl0_pic_idx: descriptor.tl0_pic_idx(),
    })
}

/// The `kind` value of a track.
fn kind_label(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// Count one session less under `key`, forgetting keys that reach zero.
fn decrement<K: std::hash::Hash + Eq + Clone>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The `role` label value of a session.
fn role_label(role: Role) -> &'static str {
    match role {
        Role::Publisher => "publisher",
        Role::Viewer => "viewer",
    }
}

fn media_kind(kind: sluice_session::MediaKind) -> MediaKind {
    match kind {
        sluice_session::MediaKind::Audio => MediaKind::Audio,
        sluice_session::MediaKind::Video => MediaKind::Video,
    }
}

/// Whom a viewer of `request` follows: the named participant, or the room.
fn follow_of(request: &SessionRequest) -> Follow {
    match (&request.participant, request.role) {
        (Some(name), Role::Viewer) => Follow::Participant(Arc::from(name.as_str())),
        _ => Follow::Room,
    }
}

/// Whether `caller` may act on a session created by `owner`: its creator,
/// an admin, or anyone while authentication is off.
fn may_act(caller: Option<&Caller>, owner: Option<&str>) -> bool {
    match (caller, owner) {
        (Some(c), Some(owner)) => c.admin || c.identity == owner,
        _ => true,
    }
}

/// Make sure `entry` wakes up no later than `at`.
///
/// Only an earlier wake-up is pushed onto the heap; a later one waits for
/// the scheduled one to fire (an early `handle_timeout` is harmless), so the
/// heap holds about one entry per session however many packets pass.
fn schedule(
    timers: &mut BinaryHeap<Reverse<(Instant, SessionId)>>,
    entry: &mut Entry,
    id: SessionId,
    at: Instant,
) {
    if entry.next_timeout.is_none_or(|scheduled| at < scheduled) {
        entry.next_timeout = Some(at);
        timers.push(Reverse((at, id)));
    }
}

#[cfg(test)]
mod tests {
    use super::Slot;

    #[test]
    fn a_viewers_video_goes_before_its_audio_each_in_arrival_order() {
        let mut slots = [
            Slot::new(0, true),
            Slot::new(3, false),
            Slot::new(1, false),
            Slot::new(2, true),
        ];
        slots.sort_unstable();
        let order: Vec<(usize, bool)> = slots
            .iter()
            .map(|s| (s.index(), *s >= Slot::new(0, true)))
            .collect();
        assert_eq!(order, [(1, false), (3, false), (0, true), (2, true)]);
    }
}
