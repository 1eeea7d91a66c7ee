//! Datagram buffers used again once sent. Each forwarded packet is sealed
//! into a buffer of its own; at hundreds of thousands of packets a second,
//! taking them from the allocator and freeing them after the send was a
//! few per cent of the shard's time. The shard hands sent datagrams back
//! here and the egress seals the next packets into them.

/// Most buffers kept for reuse (a few batches' worth of datagrams).
const KEPT: usize = 512;

/// Spare datagram buffers, emptied but keeping their capacity.
#[derive(Debug, Default)]
pub struct Buffers {
    spare: Vec<Vec<u8>>,
}

impl Buffers {
    /// An empty buffer that holds at least `capacity` bytes: a spare one
    /// when there is one large enough, else a new one.
    pub fn take(&mut self, capacity: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(buf) if buf.capacity() >= capacity => buf,
            _ => Vec::with_capacity(capacity),
        }
    }

    /// Keep `buf` (a sent datagram) for a later [`Buffers::take`].
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < KEPT {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_capacity() {
        let mut buffers = Buffers::default();
        let mut buf = buffers.take(1_500);
        buf.extend_from_slice(&[7; 1_200]);
        let at = buf.as_ptr();
        buffers.give(buf);
        let again = buffers.take(1_300);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at);
        assert!(again.capacity() >= 1_500);
    }

    #[test]
    fn a_buffer_too_small_is_not_handed_out() {
        let mut buffers = Buffers::default();
        buffers.give(Vec::with_capacity(100));
        assert!(buffers.take(1_300).capacity() >= 1_300);
    }

    #[test]
    fn only_so_many_are_kept() {
        let mut buffers = Buffers::default();
        for _ in 0..KEPT + 10 {
            buffers.give(Vec::with_capacity(10));
        }
        assert_eq!(buffers.spare.len(), KEPT);
    }
}
