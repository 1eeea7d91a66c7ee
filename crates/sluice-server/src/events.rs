//! Lifecycle events for webhooks: rooms, participants and tracks coming and
//! going. The shard hands them over with `try_send`, so a slow consumer
//! loses events (counted) instead of ever blocking media.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first session of a room was created.
    RoomStarted,
    /// The last session of a room ended.
    RoomFinished,
    /// A session (publisher or viewer) was created.
    ParticipantJoined,
    /// A session ended.
    ParticipantLeft,
    /// A publisher's track appeared.
    TrackPublished,
    /// A publisher's track went away.
    TrackUnpublished,
}

/// One lifecycle event, as POSTed to the webhook URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The room.
    pub room: String,
    /// The session's resource id (participant and track events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `publisher` or `viewer` (participant events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The token identity, when authentication is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Track id and kind (track events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<u64>,
    /// `audio` or `video` (track events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

impl Event {
    /// A room event.
    pub(crate) fn room(event: EventKind, room: &str) -> Event {
        Event {
            event,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            room: room.to_owned(),
            session: None,
            role: None,
            identity: None,
            track: None,
            kind: None,
        }
    }
}

/// Where the shards send events, if anyone listens.
#[derive(Debug, Default, Clone)]
pub(crate) struct EventSink(Option<mpsc::Sender<Event>>);

impl EventSink {
    pub(crate) fn new(tx: Option<mpsc::Sender<Event>>) -> Self {
        EventSink(tx)
    }

    /// Whether events are wanted (build them only then).
    pub(crate) fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Hand an event over without waiting. Returns `false` when it was
    /// dropped because the consumer is behind.
    pub(crate) fn send(&self, event: Event) -> bool {
        match &self.0 {
            Some(tx) => tx.try_send(event).is_ok(),
            None => true,
        }
    }
}
