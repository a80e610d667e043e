//! Giving freed heap memory back to the system.
//!
//! After a burst (thousands of connections, thousands of requests in flight) the memory
//! they used is free again, but glibc keeps it in its per-thread arenas, so the process
//! stays as large as the burst made it, and the next burst's Argon2 buffers come on top.
//! `malloc_trim` returns the free pages of every arena; the daemon calls it every few
//! seconds, which costs well under a millisecond on a heap of this size.

/// Returns free heap pages to the system; a no-op where the C library has no such call.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases pages the allocator holds
    // free; it is safe to call from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
