//! `--meeting`: participants that behave like the conference page. Each
//! publishes over WHIP under its participant name, opens the conference
//! WebSocket, names its WHIP session there, and watches every other
//! participant the WebSocket announces (one WHEP session each,
//! `?participant=`), dropping those that leave, until the measurement
//! starts. Participants the tester did not start (a browser joining the
//! room) are not watched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_testkit::{ConferenceMessage, ConferenceSocket, Peer};
use tokio::task::JoinHandle;

use crate::{Args, Role, is_probe, publisher_name, start_peer};

/// How long participants may take to watch everyone announced.
const SETTLE: Duration = Duration::from_secs(10);

/// What a participant's WebSocket task shares with the run.
#[derive(Default)]
struct Tiles {
    /// Set once the run took the tiles: from then on announcements
    /// change nothing.
    taken: bool,
    /// The participants watched, by name.
    by_name: HashMap<String, Peer>,
}

/// The meeting's WebSockets: open until this is dropped.
pub struct Sockets {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Start every participant of every room (at `--ramp` per second) and
/// wait until each watches all the others the server announced. Like a
/// conference page's, a participant's tiles start as soon as the
/// WebSocket announces the others, not at the ramp's pace. Once the run
/// takes the tiles, announcements change nothing any more. Returns
/// the publishers, the tiles (every participant's WHEP sessions) and the
/// WebSockets, which stay open while the caller measures.
pub async fn start(args: &Args) -> Result<(Vec<Peer>, Vec<Peer>, Sockets), String> {
    let shared = Arc::new(args.clone());
    let mut publishers = Vec::new();
    let mut all_tiles = Vec::new();
    // Aborts the tasks started so far if this returns early.
    let mut sockets = Sockets { tasks: Vec::new() };
    for room in 0..args.rooms {
        for w in 0..args.publishers {
            if let Some((publisher, socket)) = join(args, room, w).await? {
                let tiles = Arc::new(Mutex::new(Tiles::default()));
                sockets.tasks.push(tokio::spawn(follow(
                    shared.clone(),
                    room,
                    w,
                    socket,
                    tiles.clone(),
                )));
                publishers.push(publisher);
                all_tiles.push(tiles);
            }
            args.ramp_pause().await;
        }
    }
    let others = args.publishers.saturating_sub(1);
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline
        && all_tiles
            .iter()
            .any(|t| t.lock().unwrap().by_name.len() < others)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tiles = all_tiles
        .iter()
        .flat_map(|t| {
            let mut t = t.lock().unwrap();
            t.taken = true;
            std::mem::take(&mut t.by_name).into_values()
        })
        .collect();
    Ok((publishers, tiles, sockets))
}

/// Participant `w` of room `room` publishes, opens its WebSocket and names
/// its session there.
async fn join(
    args: &Args,
    room: usize,
    w: usize,
) -> Result<Option<(Peer, ConferenceSocket)>, String> {
    let Some(publisher) = start_peer(args, room, Role::Publish(w)).await? else {
        return Ok(None);
    };
    let name = args.room_name(room);
    let token = args.token(&name, publisher_name(room, w))?;
    let opened = async {
        let mut socket = ConferenceSocket::connect(&args.url, &name, token.as_deref()).await?;
        socket.name_session(&publisher.resource).await?;
        Ok::<_, sluice_testkit::PeerError>(socket)
    };
    match opened.await {
        Ok(socket) => Ok(Some((publisher, socket))),
        Err(e) => {
            eprintln!("participant {w} of {name} has no conference WebSocket: {e}");
            let _ = publisher.delete().await;
            Ok(None)
        }
    }
}

/// Participant `w`'s WebSocket task: watch the participants it announces,
/// drop those it no longer does.
async fn follow(
    args: Arc<Args>,
    room: usize,
    w: usize,
    mut socket: ConferenceSocket,
    tiles: Arc<Mutex<Tiles>>,
) {
    let me = publisher_name(room, w);
    let count = args.publishers * args.publishers.saturating_sub(1);
    while let Some(message) = socket.next().await {
        let names = match message {
            ConferenceMessage::Participants(names) => names,
            ConferenceMessage::Ended(reason) => {
                eprintln!("the server ended {me}'s session: {reason}");
                continue;
            }
            ConferenceMessage::Error { status, detail } => {
                eprintln!("{me}'s conference WebSocket: {status} {detail}");
                continue;
            }
        };
        let gone: Vec<Peer> = {
            let mut t = tiles.lock().unwrap();
            if t.taken {
                continue;
            }
            let left: Vec<String> = t
                .by_name
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            left.iter().filter_map(|n| t.by_name.remove(n)).collect()
        };
        for peer in gone {
            let _ = peer.delete().await;
        }
        for name in names.iter().filter(|n| **n != me) {
            let Some(k) = participant_index(&args, room, name) else {
                continue; // not one of ours
            };
            {
                let t = tiles.lock().unwrap();
                if t.taken {
                    break;
                }
                if t.by_name.contains_key(name) {
                    continue;
                }
            }
            // Tiles are numbered as if every participant watched every
            // other in order, so probes land where --probes puts them.
            let n = w * args.publishers.saturating_sub(1) + if k < w { k } else { k - 1 };
            let role = Role::Subscribe {
                n,
                follow: Some(k),
                probe: is_probe(n, count, args.probes),
            };
            let peer = match start_peer(&args, room, role).await {
                Ok(Some(peer)) => peer,
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("{me} cannot watch {name}: {e}");
                    continue;
                }
            };
            let extra = {
                let mut t = tiles.lock().unwrap();
                if t.taken || t.by_name.contains_key(name) {
                    Some(peer)
                } else {
                    t.by_name.insert(name.clone(), peer);
                    None
                }
            };
            if let Some(peer) = extra {
                let _ = peer.delete().await;
            }
        }
    }
}

/// Which of room `room`'s participants `name` is, if the tester started it.
fn participant_index(args: &Args, room: usize, name: &str) -> Option<usize> {
    (0..args.publishers).find(|&k| publisher_name(room, k) == name)
}
