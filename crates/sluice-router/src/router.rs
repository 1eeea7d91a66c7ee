//! Rooms, publications and subscriptions, and the per-packet fan-out.
//!
//! A room has at most one current publication per media kind (the WHIP
//! broadcast model); every subscription of that kind follows it. When the
//! publication ends its subscriptions are parked with their rewriting state,
//! and the next publication of that kind picks them up, so viewers continue
//! without renegotiation.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::forwarder::{Forwarder, Rewritten, SourceKey, Vp8Ids};
use crate::id_map::IdMap;
use crate::keyframe::KeyframeThrottle;
use crate::layer::{LayerChoice, LayerInfo, Layers};
use crate::speech::SpeechDetector;

/// How often a publication re-checks which of its layers are alive.
const LAYER_RECHECK: Duration = Duration::from_millis(500);

/// A peer connection, as numbered by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// An incoming track of a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicationId(pub u64);

/// An outgoing track of a subscriber session (the server maps it to a mid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackId(pub u32);

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

/// What the router needs to know about one incoming RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct PacketMeta {
    /// Extended (never wrapping) sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// Payload size in bytes.
    pub size: usize,
    /// Whether the packet starts a keyframe.
    pub keyframe: bool,
    /// VP8 descriptor identifiers, for VP8 payloads that carry them.
    pub vp8: Option<Vp8Ids>,
    /// The audio level extension's level, dBov (0 loudest, -127 silence),
    /// for audio packets that carry it.
    pub audio_level: Option<i8>,
    /// When the packet arrived.
    pub arrival: Instant,
}

/// A participant who is speaking ([`Router::speakers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    /// The participant's name.
    pub participant: Arc<str>,
    /// The mean level of its voice over the last
    /// [`WINDOW`](crate::speech::WINDOW), dBov.
    pub level_dbov: i8,
}

/// A verdict to send one packet to one subscriber track.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The subscriber session.
    pub session: SessionId,
    /// The subscriber's outgoing track.
    pub track: TrackId,
    /// Header fields to send the packet with.
    pub rewritten: Rewritten,
}

/// Something the server must do on behalf of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterEvent {
    /// Ask the publisher for a keyframe on one layer of a publication.
    RequestKeyframe {
        /// Publisher session.
        session: SessionId,
        /// The publication.
        publication: PublicationId,
        /// Layer index within the publication.
        layer: u8,
    },
}

/// A publication as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationInfo {
    /// Audio or video.
    pub kind: MediaKind,
    /// Whether an operator muted it.
    pub muted: bool,
    /// Subscriptions following it.
    pub subscribers: usize,
    /// Its layers.
    pub layers: Vec<LayerInfo>,
}

/// Tunables of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// At most one keyframe request per publication in this interval
    /// (libwebrtc ignores requests closer than 300 ms).
    pub keyframe_interval: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            keyframe_interval: Duration::from_millis(350),
        }
    }
}

/// Whose media a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Follow {
    /// The room's current publication of its kind: the newest publisher's
    /// (a WHEP viewer's default).
    #[default]
    Room,
    /// One participant's publication of its kind, whenever that
    /// participant publishes (a conference tile).
    Participant(Arc<str>),
}

/// One subscriber track following a publication.
#[derive(Debug)]
struct Subscription {
    session: SessionId,
    track: TrackId,
    kind: MediaKind,
    follow: Follow,
    /// The layer this subscriber wants of simulcast publications.
    choice: LayerChoice,
    /// Its share of its session's bandwidth estimate, bits per second.
    budget_bps: Option<u64>,
    forwarder: Forwarder,
    /// The subscriber can receive media ([`Router::on_subscriber_ready`]).
    ready: bool,
}

#[derive(Debug)]
struct Publication {
    room: Arc<str>,
    session: SessionId,
    /// The publishing participant, when it has a name.
    participant: Option<Arc<str>>,
    kind: MediaKind,
    layers: Layers,
    /// Muted by an operator: nothing is forwarded.
    muted: bool,
    /// When layer activity was last re-evaluated.
    layers_checked: Option<Instant>,
    keyframes: KeyframeThrottle,
    /// Whether its audio is speech (audio publications).
    speech: SpeechDetector,
    subscriptions: Vec<Subscription>,
}

#[derive(Debug, Default)]
struct Room {
    /// The current publication per kind: `[audio, video]`.
    feeds: [Option<PublicationId>; 2],
    /// Every live publication of the room, oldest first.
    publications: Vec<PublicationId>,
    /// Subscriptions waiting for a publication of their kind.
    parked: Vec<Subscription>,
    /// Number of subscriptions in the room, wherever they are.
    subscriptions: usize,
}

/// Where a subscription lives now.
#[derive(Debug, Clone, Copy)]
enum Location {
    Feed(PublicationId),
    Parked,
}

/// All rooms of one shard.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    rooms: HashMap<Arc<str>, Room>,
    publications: IdMap<PublicationId, Publication>,
    subscriptions: HashMap<(SessionId, TrackId), (Arc<str>, Location)>,
    next_publication: u64,
    events: VecDeque<RouterEvent>,
    /// Simulcast layer switches since the last [`Router::take_layer_switches`].
    layer_switches: u64,
}

fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig) -> Self {
        Router {
            config,
            rooms: HashMap::new(),
            publications: IdMap::default(),
            subscriptions: HashMap::new(),
            next_publication: 1,
            events: VecDeque::new(),
            layer_switches: 0,
        }
    }

    /// Number of rooms with at least one publication or subscription.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Stop (or resume) forwarding a publication. Returns whether it exists.
    /// Resuming waits for a keyframe, so viewers never see a broken frame.
    pub fn set_muted(&mut self, publication: PublicationId, muted: bool) -> bool {
        let Some(p) = self.publications.get_mut(&publication) else {
            return false;
        };
        if p.muted && !muted {
            // Forwarders restart at the next keyframe of their target.
            for sub in &mut p.subscriptions {
                let target = sub.forwarder.target();
                sub.forwarder.set_target(None);
                sub.forwarder.set_target(target);
            }
        }
        p.muted = muted;
        true
    }

    /// What the admin API shows of a publication at `now`.
    pub fn publication_info(
        &self,
        publication: PublicationId,
        now: Instant,
    ) -> Option<PublicationInfo> {
        let p = self.publications.get(&publication)?;
        Some(PublicationInfo {
            kind: p.kind,
            muted: p.muted,
            subscribers: p.subscriptions.len(),
            layers: p.layers.info(now),
        })
    }

    /// Simulcast layer switches (a subscription moving to another layer of
    /// the same publication) since the last call.
    pub fn take_layer_switches(&mut self) -> u64 {
        std::mem::take(&mut self.layer_switches)
    }

    /// Number of live publications.
    pub fn publication_count(&self) -> usize {
        self.publications.len()
    }

    /// The session that publishes `publication`.
    pub fn publisher_of(&self, publication: PublicationId) -> Option<SessionId> {
        self.publications.get(&publication).map(|p| p.session)
    }

    /// Number of subscriptions following `publication`.
    pub fn subscriber_count(&self, publication: PublicationId) -> usize {
        self.publications
            .get(&publication)
            .map_or(0, |p| p.subscriptions.len())
    }

    /// Add `participant`'s publication with layers named by `rids`
    /// (`[None]` without simulcast). It becomes the room's feed of its kind
    /// and takes over the subscriptions that follow the room, and those
    /// that follow this participant.
    pub fn publish(
        &mut self,
        room: &str,
        session: SessionId,
        participant: Option<&str>,
        kind: MediaKind,
        rids: &[Option<String>],
    ) -> PublicationId {
        let id = PublicationId(self.next_publication);
        self.next_publication += 1;
        let room_key = self.room_key(room);
        let layers = Layers::new(rids);
        let keyframes = KeyframeThrottle::new(self.config.keyframe_interval, layers.len());
        let mut publication = Publication {
            room: room_key.clone(),
            session,
            participant: participant.map(Arc::from),
            kind,
            layers,
            muted: false,
            layers_checked: None,
            keyframes,
            speech: SpeechDetector::default(),
            subscriptions: Vec::new(),
        };
        let room = self.rooms.entry(room_key).or_default();
        let previous = room.feeds[kind_index(kind)].replace(id);
        let parked = std::mem::take(&mut room.parked);
        let (mut taken, others): (Vec<_>, Vec<_>) = parked
            .into_iter()
            .partition(|s| s.kind == kind && publication.is_followed_by(&s.follow));
        room.parked = others;
        for other in &room.publications {
            let Some(p) = self.publications.get_mut(other) else {
                continue;
            };
            if p.kind != kind {
                continue;
            }
            let from_feed = previous == Some(*other);
            let (moving, staying): (Vec<_>, Vec<_>) = std::mem::take(&mut p.subscriptions)
                .into_iter()
                .partition(|s| match &s.follow {
                    Follow::Room => from_feed,
                    Follow::Participant(_) => publication.is_followed_by(&s.follow),
                });
            p.subscriptions = staying;
            taken.extend(moving);
        }
        room.publications.push(id);
        for mut sub in taken {
            // Until a packet shows which layers are alive, aim for layer 0.
            sub.forwarder.set_target(Some(SourceKey {
                publication: id,
                layer: 0,
            }));
            if let Some(loc) = self.subscriptions.get_mut(&(sub.session, sub.track)) {
                loc.1 = Location::Feed(id);
            }
            publication.subscriptions.push(sub);
        }
        self.publications.insert(id, publication);
        id
    }

    /// Remove a publication. Its subscriptions move to the newest other
    /// publication of the same kind in the room, or wait for the next one.
    pub fn unpublish(&mut self, id: PublicationId) {
        let Some(publication) = self.publications.remove(&id) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&publication.room) else {
            return;
        };
        room.publications.retain(|p| *p != id);
        let slot = &mut room.feeds[kind_index(publication.kind)];
        if *slot == Some(id) {
            *slot = room.publications.iter().rev().copied().find(|p| {
                self.publications
                    .get(p)
                    .is_some_and(|p| p.kind == publication.kind)
            });
        }
        // Room followers go to the room's new feed; participant followers
        // to that participant's newest other publication; the rest wait.
        for sub in publication.subscriptions {
            let key = (sub.session, sub.track);
            let source = self.source(&publication.room, sub.kind, &sub.follow);
            let location = self.place(&publication.room, sub, source);
            if let Some(entry) = self.subscriptions.get_mut(&key) {
                entry.1 = location;
            }
        }
        self.drop_room_if_empty(&publication.room);
    }

    /// Subscribe a session's outgoing track of `kind` to what `follow`
    /// names in `room`, rewriting with `forwarder`; it waits when nothing
    /// matching is published yet. Nothing is forwarded to it until
    /// [`Router::on_subscriber_ready`].
    pub fn subscribe(
        &mut self,
        room: &str,
        session: SessionId,
        track: TrackId,
        kind: MediaKind,
        follow: Follow,
        forwarder: Forwarder,
    ) {
        let room_key = self.room_key(room);
        self.rooms
            .entry(room_key.clone())
            .or_default()
            .subscriptions += 1;
        let source = self.source(&room_key, kind, &follow);
        let sub = Subscription {
            session,
            track,
            kind,
            follow,
            choice: LayerChoice::Auto,
            budget_bps: None,
            forwarder,
            ready: false,
        };
        let location = self.place(&room_key, sub, source);
        self.subscriptions
            .insert((session, track), (room_key, location));
    }

    /// The publication of `kind` in `room` that a subscription following
    /// `follow` belongs on: the room's feed (its newest publication of that
    /// kind), or the participant's newest.
    pub fn source(&self, room: &str, kind: MediaKind, follow: &Follow) -> Option<PublicationId> {
        let room = self.rooms.get(room)?;
        match follow {
            Follow::Room => room.feeds[kind_index(kind)],
            Follow::Participant(_) => room.publications.iter().rev().copied().find(|p| {
                self.publications
                    .get(p)
                    .is_some_and(|p| p.kind == kind && p.is_followed_by(follow))
            }),
        }
    }

    /// Put `sub` on publication `source`, aimed at the layer it should
    /// get, or park it in `room` when there is none. Returns where it went.
    fn place(
        &mut self,
        room: &str,
        mut sub: Subscription,
        source: Option<PublicationId>,
    ) -> Location {
        if let Some((id, publication)) =
            source.and_then(|id| Some((id, self.publications.get_mut(&id)?)))
        {
            sub.forwarder
                .set_target(Some(publication.target_for(id, &sub)));
            publication.subscriptions.push(sub);
            return Location::Feed(id);
        }
        sub.forwarder.set_target(None);
        if let Some(room) = self.rooms.get_mut(room) {
            room.parked.push(sub);
        }
        Location::Parked
    }

    /// Set which layer a subscription wants of simulcast publications; it
    /// moves at the next keyframe of that layer. Returns whether the
    /// subscription exists.
    pub fn set_layer_choice(
        &mut self,
        session: SessionId,
        track: TrackId,
        choice: LayerChoice,
    ) -> bool {
        let Some((room, location)) = self.subscriptions.get(&(session, track)) else {
            return false;
        };
        let mine = |s: &&mut Subscription| s.session == session && s.track == track;
        match *location {
            Location::Feed(id) => {
                let Some(p) = self.publications.get_mut(&id) else {
                    return false;
                };
                let Some(index) = p.subscriptions.iter_mut().position(|s| mine(&s)) else {
                    return false;
                };
                p.subscriptions[index].choice = choice;
                p.retarget_one(id, index);
            }
            Location::Parked => {
                let Some(sub) = self
                    .rooms
                    .get_mut(room)
                    .and_then(|r| r.parked.iter_mut().find(mine))
                else {
                    return false;
                };
                sub.choice = choice;
            }
        }
        true
    }

    /// Give a subscription its share of its session's bandwidth estimate
    /// (`None`: unlimited); in automatic mode it then gets the best layer
    /// that fits. Returns the bitrate it would like for its preferred layer
    /// (what the estimator should probe for), if it follows a publication.
    pub fn set_budget(
        &mut self,
        session: SessionId,
        track: TrackId,
        budget_bps: Option<u64>,
    ) -> Option<u64> {
        let (room, location) = self.subscriptions.get(&(session, track))?;
        let id = match *location {
            Location::Feed(id) => id,
            Location::Parked => {
                let room = self.rooms.get_mut(room)?;
                let sub = room
                    .parked
                    .iter_mut()
                    .find(|s| s.session == session && s.track == track)?;
                sub.budget_bps = budget_bps;
                return None;
            }
        };
        let p = self.publications.get_mut(&id)?;
        let index = p
            .subscriptions
            .iter()
            .position(|s| s.session == session && s.track == track)?;
        p.subscriptions[index].budget_bps = budget_bps;
        p.retarget_one(id, index);
        let now = p.layers_checked?;
        let preferred = p
            .layers
            .choose(p.subscriptions[index].choice, None, None, now)?;
        Some(p.layers.bitrate_bps(preferred))
    }

    /// Remove one subscription.
    pub fn unsubscribe(&mut self, session: SessionId, track: TrackId) {
        let key = (session, track);
        let Some((room, location)) = self.subscriptions.remove(&key) else {
            return;
        };
        let keep = |s: &Subscription| (s.session, s.track) != key;
        match location {
            Location::Feed(p) => {
                if let Some(p) = self.publications.get_mut(&p) {
                    p.subscriptions.retain(keep);
                }
            }
            Location::Parked => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.parked.retain(keep);
                }
            }
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            r.subscriptions -= 1;
        }
        self.drop_room_if_empty(&room);
    }

    /// Fan one packet of `publication`'s `layer` out to its subscriptions,
    /// appending one [`Forward`] per subscriber that should get it.
    /// Returns whether a subscription still connecting aims at this layer
    /// (the packet is worth keeping for it: [`Router::replay`]).
    pub fn on_packet(
        &mut self,
        publication: PublicationId,
        layer: u8,
        meta: &PacketMeta,
        out: &mut Vec<Forward>,
    ) -> bool {
        let Some(p) = self.publications.get_mut(&publication) else {
            return false;
        };
        let now = meta.arrival;
        let recheck = p
            .layers_checked
            .is_none_or(|t| now.saturating_duration_since(t) >= LAYER_RECHECK);
        if p.layers.on_packet(layer, meta.size, now) || recheck {
            p.retarget(publication, now);
        }
        if p.muted {
            return false;
        }
        if let Some(dbov) = meta.audio_level {
            p.speech.on_level(dbov, now);
        }
        let source = SourceKey { publication, layer };
        let mut waiting = false;
        let mut awaited = false;
        for sub in &mut p.subscriptions {
            if !sub.ready {
                awaited |= sub.forwarder.target() == Some(source);
                continue;
            }
            let before = sub.forwarder.current();
            if let Some(rewritten) = sub.forwarder.on_packet(source, meta) {
                if before.is_some_and(|b| b.publication == publication && b.layer != layer) {
                    self.layer_switches += 1;
                }
                out.push(Forward {
                    session: sub.session,
                    track: sub.track,
                    rewritten,
                });
            }
            waiting |= sub.forwarder.needs_keyframe()
                && sub.forwarder.target().is_some_and(|t| t.layer == layer);
        }
        let index = usize::from(layer);
        if meta.keyframe {
            p.keyframes.on_keyframe(index);
        } else if (waiting && p.keyframes.request(index, now)) || p.keyframes.poll(index, now) {
            self.events.push_back(RouterEvent::RequestKeyframe {
                session: p.session,
                publication,
                layer,
            });
        }
        awaited
    }

    /// A subscriber lost a picture (PLI/FIR) on `track`.
    pub fn on_keyframe_request(&mut self, session: SessionId, track: TrackId, now: Instant) {
        let Some((_, Location::Feed(id))) = self.subscriptions.get(&(session, track)) else {
            return;
        };
        let id = *id;
        let Some(p) = self.publications.get_mut(&id) else {
            return;
        };
        if p.layers_checked.is_none() {
            // It has sent nothing yet (it may not be connected): its first
            // frame is a keyframe.
            return;
        }
        let Some(sub) = p
            .subscriptions
            .iter()
            .find(|s| s.session == session && s.track == track)
        else {
            return;
        };
        let Some(layer) = sub
            .forwarder
            .current()
            .or(sub.forwarder.target())
            .map(|s| s.layer)
        else {
            return;
        };
        if p.keyframes.request(usize::from(layer), now) {
            self.events.push_back(RouterEvent::RequestKeyframe {
                session: p.session,
                publication: id,
                layer,
            });
        }
    }

    /// A subscriber's session can now receive media (it connected).
    /// Until then its subscription forwards nothing, so the keyframe it
    /// starts on is one it gets: a keyframe that went by while it was
    /// still connecting would start its forwarder and leave it without a
    /// picture until the publisher's next one. Returns the source the
    /// subscription waits for a keyframe of, if it does: the server may
    /// start it at once on a keyframe kept from that source
    /// ([`Router::replay`]). Otherwise the next packet of that source asks
    /// for one. A subscription that was ready already gets `None`: a
    /// viewer that is watching must not be sent older packets.
    pub fn on_subscriber_ready(&mut self, session: SessionId, track: TrackId) -> Option<SourceKey> {
        let sub = self.subscription_mut(session, track)?;
        if std::mem::replace(&mut sub.ready, true) {
            return None;
        }
        sub.forwarder
            .needs_keyframe()
            .then(|| sub.forwarder.target())
            .flatten()
    }

    /// Offer a subscription that just became ready a packet of `source`
    /// that arrived before it did, oldest first from a keyframe: the
    /// rewritten header to send it with, if the subscription takes it.
    /// Once it starts on that keyframe, a keyframe request of the layer
    /// that has not gone out yet is dropped if no other subscription
    /// waits for one (the request its offer made, say).
    pub fn replay(
        &mut self,
        session: SessionId,
        track: TrackId,
        source: SourceKey,
        meta: &PacketMeta,
    ) -> Option<Rewritten> {
        let (_, Location::Feed(id)) = self.subscriptions.get(&(session, track))? else {
            return None;
        };
        let p = self.publications.get_mut(id)?;
        let sub = p
            .subscriptions
            .iter_mut()
            .find(|s| s.session == session && s.track == track && s.ready)?;
        let rewritten = sub.forwarder.on_packet(source, meta)?;
        let waiting = p.subscriptions.iter().any(|s| {
            s.ready && s.forwarder.needs_keyframe() && s.forwarder.target() == Some(source)
        });
        if meta.keyframe && !waiting {
            p.keyframes.cancel(usize::from(source.layer));
        }
        Some(rewritten)
    }

    fn subscription_mut(
        &mut self,
        session: SessionId,
        track: TrackId,
    ) -> Option<&mut Subscription> {
        let (room, location) = self.subscriptions.get(&(session, track))?;
        let mine = |s: &&mut Subscription| s.session == session && s.track == track;
        match *location {
            Location::Feed(id) => self
                .publications
                .get_mut(&id)?
                .subscriptions
                .iter_mut()
                .find(mine),
            Location::Parked => self.rooms.get_mut(room)?.parked.iter_mut().find(mine),
        }
    }

    /// The named participants of `room` whose audio is speech at `now`
    /// (see [`crate::speech`]), loudest first. A muted publication does
    /// not speak.
    pub fn speakers(&self, room: &str, now: Instant) -> Vec<Speaker> {
        let Some(room) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut speakers: Vec<Speaker> = room
            .publications
            .iter()
            .filter_map(|id| {
                let p = self.publications.get(id)?;
                if p.kind != MediaKind::Audio || p.muted {
                    return None;
                }
                Some(Speaker {
                    participant: p.participant.clone()?,
                    level_dbov: p.speech.speaking(now)?,
                })
            })
            .collect();
        speakers.sort_by(|a, b| {
            b.level_dbov
                .cmp(&a.level_dbov)
                .then_with(|| a.participant.cmp(&b.participant))
        });
        speakers
    }

    /// The next thing the server must do, if any.
    pub fn poll_event(&mut self) -> Option<RouterEvent> {
        self.events.pop_front()
    }

    fn room_key(&self, room: &str) -> Arc<str> {
        self.rooms
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| k.clone())
    }

    fn drop_room_if_empty(&mut self, room: &str) {
        let empty = self
            .rooms
            .get(room)
            .is_some_and(|r| r.publications.is_empty() && r.subscriptions == 0);
        if empty {
            self.rooms.remove(room);
        }
    }
}

impl Publication {
    /// Whether a subscription following `follow` belongs on this
    /// publication (when it is the room's feed, for room followers).
    fn is_followed_by(&self, follow: &Follow) -> bool {
        match follow {
            Follow::Room => true,
            Follow::Participant(name) => self.participant.as_deref() == Some(&**name),
        }
    }

    /// Aim every subscription at the layer its choice and budget allow.
    fn retarget(&mut self, id: PublicationId, now: Instant) {
        self.layers_checked = Some(now);
        for index in 0..self.subscriptions.len() {
            self.retarget_one(id, index);
        }
    }

    /// Aim subscription `index` at the layer its choice and budget allow
    /// among the layers active at the last check. It keeps its target
    /// while no layer is active.
    fn retarget_one(&mut self, id: PublicationId, index: usize) {
        let Some(now) = self.layers_checked else {
            return;
        };
        let sub = &mut self.subscriptions[index];
        let current = sub
            .forwarder
            .target()
            .filter(|t| t.publication == id)
            .map(|t| t.layer);
        let Some(layer) = self.layers.choose(sub.choice, sub.budget_bps, current, now) else {
            return;
        };
        let target = Some(SourceKey {
            publication: id,
            layer,
        });
        if sub.forwarder.target() != target {
            sub.forwarder.set_target(target);
        }
    }

    /// Where `sub`, arriving at this publication, should aim: its layer
    /// among those active at the last check, or layer 0 before any packet.
    fn target_for(&self, id: PublicationId, sub: &Subscription) -> SourceKey {
        let layer = self
            .layers_checked
            .and_then(|now| self.layers.choose(sub.choice, sub.budget_bps, None, now))
            .unwrap_or(0);
        SourceKey {
            publication: id,
            layer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISHER_A: SessionId = SessionId(1);
    const PUBLISHER_B: SessionId = SessionId(2);
    const VIEWER: SessionId = SessionId(10);
    const VIDEO: TrackId = TrackId(1);

    fn meta(seq: u64, ts: u32, keyframe: bool, arrival: Instant) -> PacketMeta {
        PacketMeta {
            seq,
            ts,
            marker: true,
            size: 100,
            keyframe,
            vp8: None,
            audio_level: None,
            arrival,
        }
    }

    /// Subscribe `session`'s `track` to the room's feed (a WHEP viewer).
    fn watch(r: &mut Router, session: SessionId, track: TrackId, kind: MediaKind, seed: u64) {
        let (video, clock_rate) = match kind {
            MediaKind::Video => (true, 90_000),
            MediaKind::Audio => (false, 48_000),
        };
        let forwarder = Forwarder::new(video, clock_rate, seed);
        r.subscribe("live", session, track, kind, Follow::Room, forwarder);
        r.on_subscriber_ready(session, track);
    }

    /// Subscribe [`VIEWER`]'s video to the room's feed, its session still
    /// connecting.
    fn viewer_connecting(r: &mut Router) {
        let forwarder = Forwarder::new(true, 90_000, 7);
        r.subscribe(
            "live",
            VIEWER,
            VIDEO,
            MediaKind::Video,
            Follow::Room,
            forwarder,
        );
    }

    fn keyframe_requests(router: &mut Router) -> Vec<RouterEvent> {
        std::iter::from_fn(|| router.poll_event()).collect()
    }

    /// A router with publisher A's video in room "live" (no simulcast), and
    /// its only layer.
    fn one_video_publication() -> (Router, PublicationId, SourceKey) {
        let mut r = Router::new(RouterConfig::default());
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &[None]);
        let source = SourceKey {
            publication: a,
            layer: 0,
        };
        (r, a, source)
    }

    /// A keyframe request for the only layer of publisher A's `publication`.
    fn layer_0_of_a(publication: PublicationId) -> RouterEvent {
        RouterEvent::RequestKeyframe {
            session: PUBLISHER_A,
            publication,
            layer: 0,
        }
    }

    #[test]
    fn viewer_waiting_before_publisher_follows_publisher_changes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Router::new(RouterConfig::default());
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 42);
        let mut out = Vec::new();

        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &[None]);
        assert_eq!(r.subscriber_count(a), 1);
        // No keyframe yet: nothing forwarded, one merged keyframe request.
        r.on_packet(a, 0, &meta(100, 0, false, t0), &mut out);
        r.on_packet(a, 0, &meta(101, 0, false, t0 + ms(1)), &mut out);
        assert!(out.is_empty());
        assert_eq!(keyframe_requests(&mut r), vec![layer_0_of_a(a)]);
        for i in 0..30u64 {
            r.on_packet(
                a,
                0,
                &meta(102 + i, 3000 * i as u32, i == 0, t0 + ms(33 * i)),
                &mut out,
            );
        }
        assert_eq!(out.len(), 30);
        let last_a = out.last().unwrap().rewritten;

        // Publisher A leaves; the viewer is parked, then B arrives.
        r.unpublish(a);
        assert_eq!(r.source("live", MediaKind::Video, &Follow::Room), None);
        let b = r.publish("live", PUBLISHER_B, None, MediaKind::Video, &[None]);
        out.clear();
        let t1 = t0 + ms(2000);
        r.on_packet(b, 0, &meta(9, 77, true, t1), &mut out);
        r.on_packet(b, 0, &meta(10, 3077, false, t1 + ms(33)), &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|f| f.session == VIEWER && f.track == VIDEO));
        assert_eq!(out[0].rewritten.seq, last_a.seq + 1, "no sequence gap");
        assert_eq!(out[1].rewritten.seq, last_a.seq + 2);
        assert!(out[0].rewritten.ts.wrapping_sub(last_a.ts) > 0);
        assert_eq!(out[1].rewritten.ts.wrapping_sub(out[0].rewritten.ts), 3000);
    }

    #[test]
    fn new_publisher_takes_over_from_a_live_one() {
        let t0 = Instant::now();
        let mut r = Router::new(RouterConfig::default());
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Audio, &[None]);
        watch(&mut r, VIEWER, TrackId(0), MediaKind::Audio, 1);
        let mut out = Vec::new();
        r.on_packet(a, 0, &meta(5, 960, false, t0), &mut out);
        let b = r.publish("live", PUBLISHER_B, None, MediaKind::Audio, &[None]);
        assert_eq!(r.subscriber_count(a), 0);
        assert_eq!(r.subscriber_count(b), 1);
        // Audio switches at once, continuing the sequence.
        r.on_packet(a, 0, &meta(6, 1920, false, t0), &mut out);
        r.on_packet(b, 0, &meta(1000, 5, false, t0), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].rewritten.seq, out[0].rewritten.seq + 1);
        // When B leaves, A (still live) takes the viewer back.
        r.unpublish(b);
        assert_eq!(r.source("live", MediaKind::Audio, &Follow::Room), Some(a));
        assert_eq!(r.subscriber_count(a), 1);
    }

    #[test]
    fn a_viewer_gets_nothing_until_it_can_receive_then_asks_for_a_keyframe() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Router::new(RouterConfig::default());
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &[None]);
        viewer_connecting(&mut r);
        let mut out = Vec::new();
        // The publisher's keyframe and a delta frame go by while the
        // viewer's session is still connecting: not forwarded, and no
        // keyframe is asked for on its behalf.
        r.on_packet(a, 0, &meta(1, 0, true, t0), &mut out);
        r.on_packet(a, 0, &meta(2, 3000, false, t0 + ms(33)), &mut out);
        assert!(out.is_empty());
        assert!(keyframe_requests(&mut r).is_empty());
        // It connects: the next packet asks for a keyframe, which starts it.
        r.on_subscriber_ready(VIEWER, VIDEO);
        r.on_packet(a, 0, &meta(3, 6000, false, t0 + ms(66)), &mut out);
        assert!(out.is_empty());
        assert_eq!(keyframe_requests(&mut r), vec![layer_0_of_a(a)]);
        r.on_packet(a, 0, &meta(4, 9000, true, t0 + ms(99)), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_viewer_that_connects_after_a_keyframe_can_start_on_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (mut r, a, source) = one_video_publication();
        let mut out = Vec::new();
        viewer_connecting(&mut r);
        // Nothing is asked of a publisher that has sent nothing yet (it
        // may not even be connected): its first frame is a keyframe.
        r.on_keyframe_request(VIEWER, VIDEO, t0);
        assert!(keyframe_requests(&mut r).is_empty());
        assert!(
            r.on_packet(a, 0, &meta(1, 0, false, t0), &mut out),
            "kept for the viewer still connecting"
        );
        // Asked for at its offer; the keyframe and a delta frame come
        // before it connects.
        r.on_keyframe_request(VIEWER, VIDEO, t0 + ms(10));
        assert_eq!(keyframe_requests(&mut r), vec![layer_0_of_a(a)]);
        let keyframe = meta(2, 3000, true, t0 + ms(40));
        let delta = meta(3, 6000, false, t0 + ms(73));
        assert!(r.on_packet(a, 0, &keyframe, &mut out));
        assert!(r.on_packet(a, 0, &delta, &mut out));
        assert!(out.is_empty());
        assert!(
            r.replay(VIEWER, VIDEO, source, &keyframe).is_none(),
            "not before it is ready"
        );
        // Ready: it waits for a keyframe of its source, and starts on the
        // kept ones, in order, as the live packets continue them.
        assert_eq!(r.on_subscriber_ready(VIEWER, VIDEO), Some(source));
        assert!(
            r.replay(VIEWER, VIDEO, source, &delta).is_none(),
            "not on a delta frame"
        );
        let first = r.replay(VIEWER, VIDEO, source, &keyframe).unwrap();
        let second = r.replay(VIEWER, VIDEO, source, &delta).unwrap();
        assert_eq!(second.seq, first.seq + 1);
        r.on_packet(a, 0, &meta(4, 9000, false, t0 + ms(106)), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rewritten.seq, second.seq + 1);
        assert!(keyframe_requests(&mut r).is_empty(), "no second request");
        // Told again (say, after an ICE restart) while waiting for another
        // source: nothing older is sent to a viewer that is watching.
        r.publish("live", PUBLISHER_B, None, MediaKind::Video, &[None]);
        assert_eq!(r.on_subscriber_ready(VIEWER, VIDEO), None);
    }

    #[test]
    fn speakers_are_named_audio_publications_that_speak_loudest_first() {
        let t0 = Instant::now();
        let mut r = Router::new(RouterConfig::default());
        let alice = r.publish(
            "talk",
            PUBLISHER_A,
            Some("alice"),
            MediaKind::Audio,
            &[None],
        );
        let bob = r.publish("talk", PUBLISHER_B, Some("bob"), MediaKind::Audio, &[None]);
        let unnamed = r.publish("talk", SessionId(3), None, MediaKind::Audio, &[None]);
        let carol = r.publish(
            "talk",
            SessionId(4),
            Some("carol"),
            MediaKind::Audio,
            &[None],
        );
        let mut out = Vec::new();
        let talk = |r: &mut Router, p: PublicationId, dbov: i8, out: &mut Vec<Forward>| {
            for i in 0..10 {
                let m = PacketMeta {
                    audio_level: Some(dbov),
                    ..meta(i, 0, false, t0 + Duration::from_millis(20 * i))
                };
                r.on_packet(p, 0, &m, out);
            }
        };
        talk(&mut r, alice, -40, &mut out);
        talk(&mut r, bob, -20, &mut out);
        talk(&mut r, unnamed, -20, &mut out);
        talk(&mut r, carol, -127, &mut out);
        let now = t0 + Duration::from_millis(300);
        let heard: Vec<(String, i8)> = r
            .speakers("talk", now)
            .into_iter()
            .map(|s| (s.participant.to_string(), s.level_dbov))
            .collect();
        assert_eq!(heard, [("bob".into(), -20), ("alice".into(), -40)]);
        // An operator's mute silences a speaker at once.
        r.set_muted(bob, true);
        let names: Vec<_> = r
            .speakers("talk", now)
            .into_iter()
            .map(|s| s.participant)
            .collect();
        assert_eq!(names, [Arc::from("alice")]);
        assert!(r.speakers("elsewhere", now).is_empty());
    }

    #[test]
    fn a_viewer_that_starts_on_a_kept_keyframe_drops_its_deferred_request() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (mut r, a, source) = one_video_publication();
        let mut out = Vec::new();
        r.on_packet(a, 0, &meta(1, 0, false, t0), &mut out);
        // Another viewer's request went out and its keyframe came.
        watch(&mut r, SessionId(11), VIDEO, MediaKind::Video, 3);
        r.on_packet(a, 0, &meta(2, 3000, false, t0 + ms(10)), &mut out);
        assert_eq!(keyframe_requests(&mut r), vec![layer_0_of_a(a)]);
        let keyframe = meta(3, 6000, true, t0 + ms(40));
        r.on_packet(a, 0, &keyframe, &mut out);
        // This viewer's offer asks soon after: deferred (minimum interval).
        viewer_connecting(&mut r);
        r.on_keyframe_request(VIEWER, VIDEO, t0 + ms(60));
        assert!(keyframe_requests(&mut r).is_empty());
        // It connects and starts on the kept keyframe: nobody waits now,
        // so the deferred request never goes out.
        assert_eq!(r.on_subscriber_ready(VIEWER, VIDEO), Some(source));
        assert!(r.replay(VIEWER, VIDEO, source, &keyframe).is_some());
        for (i, at) in [400, 433, 466].into_iter().enumerate() {
            let m = meta(4 + i as u64, 9000, false, t0 + ms(at));
            r.on_packet(a, 0, &m, &mut out);
        }
        assert!(keyframe_requests(&mut r).is_empty(), "no extra keyframe");
    }

    #[test]
    fn keyframe_requests_from_many_viewers_are_merged() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Router::new(RouterConfig::default());
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &[None]);
        let mut out = Vec::new();
        for v in 0..20 {
            watch(&mut r, SessionId(100 + v), VIDEO, MediaKind::Video, v);
        }
        r.on_packet(a, 0, &meta(1, 0, true, t0), &mut out);
        assert_eq!(out.len(), 20);
        assert!(keyframe_requests(&mut r).is_empty());
        // All twenty viewers send a PLI within 100 ms: one request goes out.
        for v in 0..20 {
            r.on_keyframe_request(SessionId(100 + v), VIDEO, t0 + ms(v * 5));
        }
        assert_eq!(keyframe_requests(&mut r).len(), 1);
        // No keyframe comes: the request is repeated a second later.
        r.on_packet(a, 0, &meta(2, 0, false, t0 + ms(300)), &mut out);
        assert!(keyframe_requests(&mut r).is_empty());
        for v in 0..20 {
            r.on_keyframe_request(SessionId(100 + v), VIDEO, t0 + ms(1000 + v));
        }
        assert_eq!(keyframe_requests(&mut r).len(), 1);
        // The keyframe answers everyone; a later PLI goes out 350 ms (the
        // default minimum interval) after the last request.
        r.on_packet(a, 0, &meta(3, 0, true, t0 + ms(1100)), &mut out);
        r.on_keyframe_request(SessionId(100), VIDEO, t0 + ms(1150));
        assert!(keyframe_requests(&mut r).is_empty());
        r.on_packet(a, 0, &meta(4, 0, false, t0 + ms(1300)), &mut out);
        assert!(keyframe_requests(&mut r).is_empty());
        r.on_packet(a, 0, &meta(5, 0, false, t0 + ms(1350)), &mut out);
        assert_eq!(keyframe_requests(&mut r).len(), 1);
        // Unknown subscribers are ignored.
        r.on_keyframe_request(SessionId(999), VIDEO, t0 + ms(2000));
        assert!(keyframe_requests(&mut r).is_empty());
    }

    #[test]
    fn muted_publications_forward_nothing_and_resume_at_a_keyframe() {
        let t0 = Instant::now();
        let mut r = Router::new(RouterConfig::default());
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &[None]);
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 1);
        let mut out = Vec::new();
        r.on_packet(a, 0, &meta(1, 0, true, t0), &mut out);
        assert_eq!(out.len(), 1);
        assert!(r.set_muted(a, true));
        r.on_packet(a, 0, &meta(2, 0, false, t0), &mut out);
        r.on_packet(a, 0, &meta(3, 0, true, t0), &mut out);
        assert_eq!(out.len(), 1, "nothing while muted");
        assert!(r.publication_info(a, t0).unwrap().muted);
        assert!(r.set_muted(a, false));
        r.on_packet(a, 0, &meta(4, 0, false, t0), &mut out);
        assert_eq!(out.len(), 1, "not before a keyframe");
        r.on_packet(a, 0, &meta(5, 0, true, t0), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].rewritten.seq,
            out[0].rewritten.seq + 1,
            "no gap for the viewer"
        );
        assert!(!r.set_muted(PublicationId(99), true));
    }

    #[test]
    fn simulcast_viewers_get_the_highest_active_layer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Router::new(RouterConfig::default());
        let rids = ["q", "h", "f"].map(|s| Some(s.to_string()));
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &rids);
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 5);
        let mut out = Vec::new();
        // Only q and h are sent: h wins, from its keyframe on.
        r.on_packet(a, 0, &meta(1, 0, true, t0), &mut out);
        r.on_packet(a, 1, &meta(1, 0, false, t0), &mut out);
        out.clear();
        r.on_packet(a, 1, &meta(2, 0, true, t0 + ms(10)), &mut out);
        r.on_packet(a, 0, &meta(2, 0, false, t0 + ms(10)), &mut out);
        assert_eq!(out.len(), 1);
        // f appears: the viewer moves up at f's keyframe, without a gap.
        r.on_packet(a, 2, &meta(50, 0, false, t0 + ms(20)), &mut out);
        r.on_packet(a, 1, &meta(3, 0, false, t0 + ms(20)), &mut out);
        r.on_packet(a, 2, &meta(51, 0, true, t0 + ms(30)), &mut out);
        r.on_packet(a, 1, &meta(4, 0, false, t0 + ms(30)), &mut out);
        assert_eq!(r.take_layer_switches(), 2, "q to h, then h to f");
        assert_eq!(r.take_layer_switches(), 0);
        let seqs: Vec<u64> = out.iter().map(|f| f.rewritten.seq).collect();
        assert_eq!(seqs.len(), 3);
        assert_eq!(seqs[1], seqs[0] + 1);
        assert_eq!(seqs[2], seqs[1] + 1);
        r.unsubscribe(VIEWER, VIDEO);
        assert_eq!(r.subscriber_count(a), 0);
        r.unpublish(a);
        assert_eq!(r.room_count(), 0);
    }

    #[test]
    fn each_viewer_gets_the_layer_it_chose() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Router::new(RouterConfig::default());
        let low_viewer = SessionId(11);
        let rids = ["q", "h", "f"].map(|s| Some(s.to_string()));
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 5);
        watch(&mut r, low_viewer, VIDEO, MediaKind::Video, 6);
        // A choice made while waiting for a publisher is kept.
        assert!(r.set_layer_choice(low_viewer, VIDEO, "q".parse().unwrap()));
        assert!(!r.set_layer_choice(SessionId(99), VIDEO, LayerChoice::Auto));
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &rids);
        let mut out = Vec::new();
        let send = |r: &mut Router, out: &mut Vec<Forward>, seq: u64, at: Duration| {
            out.clear();
            for layer in 0..3 {
                r.on_packet(a, layer, &meta(seq, 0, true, t0 + at), out);
            }
            out.iter()
                .map(|f| (f.session, f.rewritten.seq))
                .collect::<Vec<_>>()
        };
        // Every layer sends keyframes: the auto viewer ends on f, the
        // other one on q, each exactly one packet per round.
        send(&mut r, &mut out, 1, ms(0));
        let round = send(&mut r, &mut out, 2, ms(10));
        assert_eq!(round.len(), 2, "{round:?}");
        let layer_of = |r: &Router, session: SessionId| {
            let p = r.publications.get(&a).unwrap();
            let sub = p.subscriptions.iter().find(|s| s.session == session);
            sub.and_then(|s| s.forwarder.current()).map(|c| c.layer)
        };
        assert_eq!(layer_of(&r, VIEWER), Some(2));
        assert_eq!(layer_of(&r, low_viewer), Some(0));
        // The low viewer asks for h: it moves at h's next keyframe.
        assert!(r.set_layer_choice(low_viewer, VIDEO, "h".parse().unwrap()));
        send(&mut r, &mut out, 3, ms(20));
        assert_eq!(layer_of(&r, low_viewer), Some(1));
        // f stops: after the inactivity window the auto viewer drops to h,
        // and a viewer asking for "at most f" too.
        for i in 0..4u64 {
            out.clear();
            let at = t0 + ms(1000 + 600 * i);
            r.on_packet(a, 0, &meta(4 + i, 0, true, at), &mut out);
            r.on_packet(a, 1, &meta(4 + i, 0, true, at), &mut out);
        }
        assert_eq!(layer_of(&r, VIEWER), Some(1));
    }

    #[test]
    fn an_ignored_keyframe_request_for_a_new_layer_is_repeated() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Router::new(RouterConfig::default());
        let rids = ["q", "h", "f"].map(|s| Some(s.to_string()));
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 5);
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &rids);
        let mut out = Vec::new();
        let mut seq = 1;
        let mut round = |r: &mut Router, at: u64, keyframe: bool| {
            for layer in 0..3 {
                r.on_packet(a, layer, &meta(seq, 0, keyframe, t0 + ms(at)), &mut out);
            }
            seq += 1;
        };
        round(&mut r, 0, true);
        assert!(r.set_layer_choice(VIEWER, VIDEO, "q".parse().unwrap()));
        round(&mut r, 10, false);
        keyframe_requests(&mut r);
        round(&mut r, 20, true);
        // Back to auto: f is asked for, and the publisher ignores it
        // (Chromium drops a request that comes soon after a keyframe). As
        // long as the viewer waits, the request goes out again each second.
        assert!(r.set_layer_choice(VIEWER, VIDEO, LayerChoice::Auto));
        let mut requests = 0;
        for i in 0..300 {
            round(&mut r, 30 + i * 10, false);
            requests += keyframe_requests(&mut r).len();
        }
        assert_eq!(requests, 3, "one at once, then one a second for 3 s");
    }

    #[test]
    fn participant_followers_stay_with_their_participant() {
        let t0 = Instant::now();
        let mut r = Router::new(RouterConfig::default());
        let tile = SessionId(20);
        let follow_alice = Follow::Participant("alice".into());
        let forwarder = Forwarder::new(true, 90_000, 3);
        r.subscribe(
            "live",
            tile,
            VIDEO,
            MediaKind::Video,
            follow_alice,
            forwarder,
        );
        r.on_subscriber_ready(tile, VIDEO);
        let a1 = r.publish(
            "live",
            PUBLISHER_A,
            Some("alice"),
            MediaKind::Video,
            &[None],
        );
        let b = r.publish("live", PUBLISHER_B, Some("bob"), MediaKind::Video, &[None]);
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 4);
        let mut out = Vec::new();
        let mut seq = 0;
        let mut send = |r: &mut Router, p: PublicationId| {
            seq += 1;
            out.clear();
            r.on_packet(p, 0, &meta(seq, 0, true, t0), &mut out);
            out.iter().map(|f| f.session).collect::<Vec<_>>()
        };
        assert_eq!(send(&mut r, a1), [tile], "alice goes to her tile only");
        assert_eq!(
            send(&mut r, b),
            [VIEWER],
            "the room feed is the newest: bob"
        );
        // Alice leaves: her tile waits instead of showing bob.
        r.unpublish(a1);
        assert_eq!(send(&mut r, b), [VIEWER]);
        assert_eq!(r.subscriber_count(b), 1);
        // She comes back: her tile follows her; the room viewer moves to
        // the newest publication, hers.
        let a2 = r.publish(
            "live",
            PUBLISHER_A,
            Some("alice"),
            MediaKind::Video,
            &[None],
        );
        let mut got = send(&mut r, a2);
        got.sort();
        assert_eq!(got, [VIEWER, tile]);
        assert!(send(&mut r, b).is_empty());
        r.unpublish(b);
        assert_eq!(r.subscriber_count(a2), 2);
    }

    #[test]
    fn a_bandwidth_budget_picks_the_best_layer_that_fits() {
        let t0 = Instant::now();
        let mut r = Router::new(RouterConfig::default());
        let rids = ["q", "h", "f"].map(|s| Some(s.to_string()));
        let a = r.publish("live", PUBLISHER_A, None, MediaKind::Video, &rids);
        watch(&mut r, VIEWER, VIDEO, MediaKind::Video, 5);
        let mut out = Vec::new();
        let mut seq = 0;
        // Keyframes on every layer, 50 per second for 1.5 s: q about 40,
        // h about 400, f about 2000 kbit/s.
        let mut run = |r: &mut Router, from_ms: u64, to_ms: u64| {
            for ms in (from_ms..to_ms).step_by(20) {
                seq += 1;
                for (layer, size) in [(0u8, 100usize), (1, 1000), (2, 5000)] {
                    let m = PacketMeta {
                        size,
                        ..meta(seq, 0, true, t0 + Duration::from_millis(ms))
                    };
                    r.on_packet(a, layer, &m, &mut out);
                }
            }
        };
        run(&mut r, 0, 1500);
        let layer = |r: &Router| {
            let p = r.publications.get(&a).unwrap();
            p.subscriptions[0].forwarder.current().map(|c| c.layer)
        };
        assert_eq!(layer(&r), Some(2), "no budget: the best layer");
        // A 1 Mbit/s estimate: h. The viewer would like f's 2 Mbit/s.
        let wanted = r.set_budget(VIEWER, VIDEO, Some(1_000_000)).unwrap();
        assert!((1_900_000..2_100_000).contains(&wanted), "{wanted}");
        run(&mut r, 1500, 1600);
        assert_eq!(layer(&r), Some(1));
        // The estimate grows past f's rate: back to f.
        r.set_budget(VIEWER, VIDEO, Some(3_000_000));
        run(&mut r, 1600, 1700);
        assert_eq!(layer(&r), Some(2));
        assert_eq!(r.set_budget(SessionId(99), VIDEO, None), None);
    }
}
