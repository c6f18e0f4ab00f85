//! A caching device allocator, modelled on PyTorch's CUDA caching allocator but simpler.
//!
//! `cuMemAlloc`/`cuMemFree` synchronise the device and cost tens of microseconds to
//! milliseconds; a training step allocates and frees the same sizes every iteration. So freed
//! blocks are kept in a cache and handed out again without calling the driver.
//!
//! - **Size classes.** Requests up to 1 MiB are rounded up to a multiple of 512 B (0 bytes
//!   becomes one 512 B block, so every buffer has a distinct, valid address); larger requests
//!   are rounded up to a multiple of 2 MiB. Few distinct sizes means cached blocks fit later
//!   requests often; the cost is at most 511 B of waste per small block and, for large ones,
//!   under 2 MiB (worst just above 1 MiB, where a request gets nearly twice its size).
//! - **Per-stream free lists.** A freed block goes back to the free list of the stream it was
//!   allocated for, and only that stream reuses it: work queued on a stream runs in order, so
//!   a new kernel on the same stream cannot overtake the last use of the block, whereas another
//!   stream could still be reading it. (Cross-stream use needs events: not done here.)
//! - **Best fit, no splitting.** A request takes the smallest cached block of its stream that
//!   is at least its size class and at most a quarter larger (so a small request never pins a
//!   big block). Blocks are never split or merged: that keeps the bookkeeping to one ordered
//!   map per stream, and the coarse size classes keep the waste bounded as described above.
//! - **Out of memory.** When the raw allocation fails, every cached block (of every stream)
//!   is returned to the raw memory and the allocation is tried once more; if that fails too
//!   the error says so, with the allocator's statistics.
//!
//! - **Uncached mode** (`KILN_NO_CACHING=1`, [`CachingAllocator::uncached`]): every request
//!   gets a raw allocation of exactly its size, returned at once when dropped. Slow; for
//!   compute-sanitizer, which sees only raw allocations: a kernel overrunning its buffer into a
//!   cached block's rounding slack is reported only when there is no slack.
//!
//! The bookkeeping is independent of the memory itself ([`RawMemory`]): [`GpuMemory`] for a
//! real GPU, [`HostMemory`] (host pages with a guard page after each block) for the emulated
//! device, and counting fakes in tests.

use crate::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the allocator gets memory from and returns it to.
pub trait RawMemory: Send + Sync {
    /// Allocates `bytes` (> 0) of device memory; Err on out-of-memory (a kiln::Error naming the size).
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Frees a pointer `alloc` returned, with the size it was allocated with.
    fn free(&self, ptr: u64, bytes: usize);
    fn name(&self) -> &'static str;
}

/// The allocator's counters, in bytes of whole blocks (size classes, not requested sizes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in blocks handed out and not yet dropped.
    pub allocated: usize,
    /// Bytes obtained from the raw memory and not yet returned: allocated + cached.
    pub reserved: usize,
    pub peak_allocated: usize,
    pub peak_reserved: usize,
    /// Successful raw allocations (failed attempts are not counted).
    pub raw_allocs: usize,
    pub raw_frees: usize,
    /// Allocations served from the cache without a raw allocation.
    pub cache_hits: usize,
}

impl fmt::Display for AllocStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocated {} B (peak {}), reserved {} B (peak {}), {} raw allocs, {} raw frees, {} cache hits",
            self.allocated,
            self.peak_allocated,
            self.reserved,
            self.peak_reserved,
            self.raw_allocs,
            self.raw_frees,
            self.cache_hits
        )
    }
}

/// Largest request of the small pool, and the rounding of each pool.
const SMALL_MAX: usize = 1 << 20;
const SMALL_ROUND: usize = 512;
const LARGE_ROUND: usize = 2 << 20;

/// The block size (size class) serving a request of `bytes`; None on overflow.
pub fn size_class(bytes: usize) -> Option<usize> {
    if bytes <= SMALL_MAX {
        Some(bytes.max(1).div_ceil(SMALL_ROUND) * SMALL_ROUND)
    } else {
        bytes.div_ceil(LARGE_ROUND).checked_mul(LARGE_ROUND)
    }
}

#[derive(Default)]
struct State {
    /// Cached (free) blocks per stream, ordered by (size, ptr) for best-fit lookup.
    free: HashMap<u64, BTreeSet<(usize, u64)>>,
    stats: AllocStats,
}

impl State {
    /// Takes the best-fitting cached block of `stream` for a block of `class` bytes.
    fn take_cached(&mut self, class: usize, stream: u64) -> Option<(usize, u64)> {
        let set = self.free.get_mut(&stream)?;
        let limit = class + class / 4;
        let found = set.range((class, 0)..).next().copied().filter(|&(size, _)| size <= limit)?;
        set.remove(&found);
        Some(found)
    }

    /// Removes every cached block, returning them for the raw memory.
    fn drain_cache(&mut self) -> Vec<(usize, u64)> {
        let blocks: Vec<(usize, u64)> = self.free.drain().flat_map(|(_, set)| set).collect();
        for &(size, _) in &blocks {
            self.stats.reserved -= size;
            self.stats.raw_frees += 1;
        }
        blocks
    }

    fn note_allocated(&mut self, size: usize) {
        let s = &mut self.stats;
        s.allocated += size;
        s.peak_allocated = s.peak_allocated.max(s.allocated);
    }
}

/// A caching allocator over one [`RawMemory`]. Send + Sync: one mutex guards the bookkeeping.
pub struct CachingAllocator {
    raw: Box<dyn RawMemory>,
    state: Mutex<State>,
    /// false: uncached mode (exact sizes, freed at once).
    caching: bool,
}

impl CachingAllocator {
    pub fn new(raw: Box<dyn RawMemory>) -> Arc<CachingAllocator> {
        Arc::new(CachingAllocator { raw, state: Mutex::new(State::default()), caching: true })
    }

    /// An allocator that caches nothing: each block is a raw allocation of exactly the bytes
    /// asked for (one byte for 0), returned to the raw memory as soon as it is dropped.
    pub fn uncached(raw: Box<dyn RawMemory>) -> Arc<CachingAllocator> {
        Arc::new(CachingAllocator { raw, state: Mutex::new(State::default()), caching: false })
    }

    /// [`CachingAllocator::new`], or [`CachingAllocator::uncached`] when the environment has
    /// KILN_NO_CACHING=1.
    pub fn from_env(raw: Box<dyn RawMemory>) -> Arc<CachingAllocator> {
        if std::env::var("KILN_NO_CACHING").is_ok_and(|v| v == "1") {
            tracing::info!("{}: KILN_NO_CACHING=1, every allocation is exact and freed at once", raw.name());
            Self::uncached(raw)
        } else {
            Self::new(raw)
        }
    }

    /// The bookkeeping. A panic while it was held (none is expected: no user code runs under
    /// it) leaves it consistent enough to keep going, so a poisoned lock is not fatal.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A block of at least `bytes` (0 allowed: a valid, distinct, never-dereferenced block is fine) for use on `stream`.
    pub fn alloc(self: &Arc<Self>, bytes: usize, stream: u64) -> Result<DeviceBuf> {
        let class = if self.caching { size_class(bytes) } else { Some(bytes.max(1)) }
            .ok_or_else(|| Error::invalid("cuda alloc", format!("{bytes} bytes is more than any device can hold")))?;
        // The raw allocation happens under the lock, as in PyTorch: it is slow and synchronising
        // anyway, and a concurrent request for the same class then finds the block in the cache
        // rather than allocating a second one.
        let mut st = self.lock();
        if let Some((size, ptr)) = st.take_cached(class, stream) {
            st.stats.cache_hits += 1;
            st.note_allocated(size);
            return Ok(DeviceBuf { alloc: Arc::clone(self), ptr, size, stream });
        }
        let ptr = match self.raw.alloc(class) {
            Ok(p) => p,
            Err(first) => {
                // Cached blocks of every stream are idle (no stream uses a cached block), so
                // they can all go back before the one retry.
                let cached = st.drain_cache();
                tracing::debug!(
                    "{}: allocation of {class} B failed ({first}); freeing {} cached blocks and retrying",
                    self.raw.name(),
                    cached.len()
                );
                for (size, ptr) in cached {
                    self.raw.free(ptr, size);
                }
                self.raw.alloc(class).map_err(|e| out_of_memory(e, bytes, class, stream, self.raw.name(), &st.stats))?
            }
        };
        let s = &mut st.stats;
        s.raw_allocs += 1;
        s.reserved += class;
        s.peak_reserved = s.peak_reserved.max(s.reserved);
        st.note_allocated(class);
        Ok(DeviceBuf { alloc: Arc::clone(self), ptr, size: class, stream })
    }

    pub fn stats(&self) -> AllocStats {
        self.lock().stats
    }

    /// Returns every cached (free) block to the raw memory.
    pub fn empty_cache(&self) {
        let mut st = self.lock();
        for (size, ptr) in st.drain_cache() {
            self.raw.free(ptr, size);
        }
    }

    /// A dropped buffer's block goes back to its stream's free list.
    fn release(&self, ptr: u64, size: usize, stream: u64) {
        let mut st = self.lock();
        st.stats.allocated -= size;
        if self.caching {
            st.free.entry(stream).or_default().insert((size, ptr));
        } else {
            st.stats.reserved -= size;
            st.stats.raw_frees += 1;
            self.raw.free(ptr, size);
        }
    }
}

/// The error after the retry failed: the raw memory's own error (keeping its variant) with
/// the request and the allocator's statistics added, so the user sees how much was in use.
fn out_of_memory(e: Error, bytes: usize, class: usize, stream: u64, raw: &str, stats: &AllocStats) -> Error {
    let extra = format!(
        "out of memory: {bytes} B requested ({class} B block) on stream {stream:#x} of {raw}, \
         still failing after the cache was emptied; {stats}"
    );
    match e {
        Error::DeviceUnavailable { device, msg } => Error::DeviceUnavailable { device, msg: format!("{msg}; {extra}") },
        Error::InvalidArgument { op, msg } => Error::InvalidArgument { op, msg: format!("{msg}; {extra}") },
        other => Error::invalid("cuda alloc", format!("{other}; {extra}")),
    }
}

impl Drop for CachingAllocator {
    /// Only reached when no DeviceBuf is alive (each holds an Arc): everything left is cached.
    fn drop(&mut self) {
        self.empty_cache();
    }
}

impl fmt::Debug for CachingAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingAllocator").field("raw", &self.raw.name()).field("stats", &self.stats()).finish()
    }
}

/// An allocated block; dropping it returns it to the allocator's free list of its stream (not to the raw memory).
/// Send + Sync: it is an address and a handle on the (thread-safe) allocator.
pub struct DeviceBuf {
    alloc: Arc<CachingAllocator>,
    ptr: u64,
    size: usize,
    stream: u64,
}

impl DeviceBuf {
    /// The device address of the block.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// The block's usable size: the size class of the request, so at least the bytes asked for.
    pub fn bytes(&self) -> usize {
        self.size
    }
    /// The stream the block was allocated for (and the only one that may reuse it).
    pub fn stream(&self) -> u64 {
        self.stream
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        self.alloc.release(self.ptr, self.size, self.stream);
    }
}

impl fmt::Debug for DeviceBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceBuf({:#x}, {} B, stream {:#x})", self.ptr, self.size, self.stream)
    }
}

pub use super::memory::{GpuMemory, HostMemory};
