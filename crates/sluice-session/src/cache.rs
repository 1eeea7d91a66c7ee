//! Cache prefetch hints for the forwarding path.
//!
//! Writing a batch of packets to hundreds of viewers touches each viewer's
//! state once per batch; with that many viewers the state is out of the
//! CPU's caches every time, and each of its pieces (the session, its
//! tracks, streams and queue) is a miss the next one waits for. Asking for
//! the next viewers' pieces while the current one is written lets those
//! misses overlap with useful work.

/// Bytes per cache line on the CPUs this is tuned for.
const LINE: usize = 64;

/// Most lines one [`prefetch`] asks for, so a large value costs no more
/// than a small one.
const MAX_LINES: usize = 16;

/// Ask the CPU to start loading the memory of `value` (up to
/// [`MAX_LINES`] cache lines) into its caches. A hint only: it reads
/// nothing the program sees, and where nothing needs loading it costs a
/// few instructions.
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    let start = (value as *const T).cast::<u8>();
    let bytes = std::mem::size_of_val(value).min(MAX_LINES * LINE);
    for offset in (0..bytes).step_by(LINE) {
        prefetch_line(start.wrapping_add(offset));
    }
}

/// Ask the CPU to start loading the cache line holding `at`.
#[inline(always)]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing the program sees and
    // never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
