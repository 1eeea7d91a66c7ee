//! The limits that span shards: rooms on the server and live sessions per
//! client address. A room lives on one shard, so the per-room limit stays
//! with it; these two are shared, behind one lock taken only when a session
//! is created or removed, never per packet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::control::{ControlError, Limits};

/// What every shard of one server has taken of the shared limits.
#[derive(Debug, Clone)]
pub(crate) struct Quota {
    max_rooms: usize,
    max_sessions_per_address: usize,
    taken: Arc<Mutex<Taken>>,
}

#[derive(Debug, Default)]
struct Taken {
    rooms: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Quota {
    pub(crate) fn new(limits: &Limits) -> Self {
        Quota {
            max_rooms: limits.max_rooms,
            max_sessions_per_address: limits.max_sessions_per_address,
            taken: Arc::default(),
        }
    }

    /// Take a session for `client`, and a room when the session starts one;
    /// refused, taking nothing, when either is used up.
    pub(crate) fn admit(&self, new_room: bool, client: IpAddr) -> Result<(), ControlError> {
        let mut taken = self.taken.lock();
        self.refusal(&taken, new_room, client)?;
        *taken.per_address.entry(client).or_default() += 1;
        taken.rooms += usize::from(new_room);
        Ok(())
    }

    /// Whether [`Quota::admit`] would take the session now (it may not by
    /// the time it is called).
    pub(crate) fn check(&self, new_room: bool, client: IpAddr) -> Result<(), ControlError> {
        self.refusal(&self.taken.lock(), new_room, client)
    }

    fn refusal(&self, taken: &Taken, new_room: bool, client: IpAddr) -> Result<(), ControlError> {
        if taken.per_address.get(&client).copied().unwrap_or(0) >= self.max_sessions_per_address {
            return Err(ControlError::TooManySessions);
        }
        if new_room && taken.rooms >= self.max_rooms {
            return Err(ControlError::TooManyRooms);
        }
        Ok(())
    }

    /// Give back what [`Quota::admit`] took.
    pub(crate) fn release(&self, room_ended: bool, client: IpAddr) {
        let mut taken = self.taken.lock();
        if let Some(n) = taken.per_address.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                taken.per_address.remove(&client);
            }
        }
        debug_assert!(
            taken.rooms >= usize::from(room_ended),
            "a room released twice"
        );
        taken.rooms = taken.rooms.saturating_sub(usize::from(room_ended));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_limits_hold_across_clones_and_come_back_on_release() {
        let quota = Quota::new(&Limits {
            max_rooms: 2,
            max_sessions_per_room: 10,
            max_sessions_per_address: 2,
        });
        let other = quota.clone(); // another shard
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        quota.admit(true, a).unwrap();
        other.admit(false, a).unwrap();
        assert_eq!(other.admit(false, a), Err(ControlError::TooManySessions));
        other.admit(true, b).unwrap();
        assert_eq!(quota.admit(true, b), Err(ControlError::TooManyRooms));
        quota.admit(false, b).unwrap(); // joining a live room needs no room
        quota.release(true, a);
        other.admit(true, a).unwrap();
    }
}
