//! Host-to-device uploads that do not make the host wait for the GPU.
//!
//! A synchronous `cuMemcpyHtoD` from pageable memory returns only after the copy is done,
//! and the copy runs on the legacy default stream after every kernel queued before it: the
//! host stalls until the GPU has caught up, and cannot prepare the next batch meanwhile. So
//! uploads go through pinned (page-locked) staging buffers instead: the bytes are copied
//! into a staging slot, `cuMemcpyHtoDAsync` is queued on the same default stream as the
//! kernels (so every kernel queued later sees the data, and every synchronous copy back
//! waits for it, exactly as before), an event is recorded after it, and the call returns.
//! This is what PyTorch's `pin_memory()` + `.to(device, non_blocking=True)` do.
//!
//! Slots are used round-robin; before a slot is refilled the host waits on its event (its
//! last copy has finished reading it). Uploads larger than a slot go in slot-sized pieces.
//!
//! Why not a separate copy stream yet: a block the caching allocator hands out may still be
//! read by kernels queued on the compute stream before its previous owner was dropped; a
//! copy on another stream could overwrite it first. A copy stream needs the allocator to
//! record, per freed block, an event on the stream that last used it (PyTorch's
//! `record_stream`), and the copy to wait for it. Until then, the default stream orders
//! everything and these uploads only free the host.
//!
//! The bookkeeping is separate from the driver ([`CopyEngine`]): the GPU's engine is
//! [`GpuEngine`], and the tests below drive the same code with a recording fake.

use crate::{Error, Result};

/// Staging slots in the ring.
pub const SLOTS: usize = 4;
/// The largest staging slot (and upload piece): 16 MiB.
pub const SLOT_MAX: usize = 16 << 20;
/// The smallest staging slot allocated: 1 MiB.
const SLOT_MIN: usize = 1 << 20;

/// The driver calls the stager needs. Events are opaque handles.
pub trait CopyEngine: Send {
    /// `bytes` of pinned host memory.
    fn alloc_pinned(&self, bytes: usize) -> Result<*mut u8>;
    /// # Safety
    /// `p` came from `alloc_pinned` and no copy from it is pending.
    unsafe fn free_pinned(&self, p: *mut u8);
    /// Queues a copy of `bytes` from pinned `src` to device address `dst` on the compute
    /// (default) stream.
    ///
    /// # Safety
    /// `src` holds `bytes` bytes and stays untouched until the event recorded after this
    /// copy has completed; `dst` is a device allocation of at least `bytes` bytes.
    unsafe fn copy_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()>;
    fn new_event(&self) -> Result<usize>;
    /// Records `event` on the compute stream (after the work queued so far).
    fn record(&self, event: usize) -> Result<()>;
    /// Blocks the host until `event`'s work has completed.
    fn wait(&self, event: usize) -> Result<()>;
    fn destroy_event(&self, event: usize);
}

struct Slot {
    ptr: *mut u8,
    cap: usize,
    event: usize,
    /// A copy from this slot may still be running.
    pending: bool,
}

/// The ring of pinned staging slots of one device.
pub struct Stager<E: CopyEngine> {
    engine: E,
    slots: Vec<Slot>,
    next: usize,
    /// Uploads and bytes staged so far (for tests and logs).
    pub uploads: usize,
    pub bytes: usize,
}

// SAFETY: the slots' pinned host memory is owned by the stager and reachable from any thread
// (page-locked memory is ordinary process memory); the stager is used under a Mutex.
unsafe impl<E: CopyEngine> Send for Stager<E> {}

impl<E: CopyEngine> Stager<E> {
    pub fn new(engine: E) -> Result<Self> {
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            slots.push(Slot { ptr: std::ptr::null_mut(), cap: 0, event: engine.new_event()?, pending: false });
        }
        Ok(Stager { engine, slots, next: 0, uploads: 0, bytes: 0 })
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Queues the copy of `src` to device address `dst` (a device allocation of at least
    /// src.len() bytes) and returns once `src` has been read; the device copy completes in
    /// stream order.
    pub fn upload(&mut self, dst: u64, src: &[u8]) -> Result<()> {
        for (k, piece) in src.chunks(SLOT_MAX).enumerate() {
            let i = self.next;
            self.next = (self.next + 1) % SLOTS;
            let slot = &mut self.slots[i];
            if slot.pending {
                self.engine.wait(slot.event)?;
                slot.pending = false;
            }
            if slot.cap < piece.len() {
                if !slot.ptr.is_null() {
                    // SAFETY: the slot's last copy has completed (waited for above).
                    unsafe { self.engine.free_pinned(slot.ptr) };
                    (slot.ptr, slot.cap) = (std::ptr::null_mut(), 0);
                }
                let cap = piece.len().next_power_of_two().clamp(SLOT_MIN, SLOT_MAX);
                slot.ptr = self.engine.alloc_pinned(cap)?;
                slot.cap = cap;
            }
            // SAFETY: the slot holds cap >= piece.len() bytes and no copy reads it now.
            unsafe {
                std::ptr::copy_nonoverlapping(piece.as_ptr(), slot.ptr, piece.len());
                self.engine.copy_async(dst + (k * SLOT_MAX) as u64, slot.ptr, piece.len())?;
            }
            self.engine.record(slot.event)?;
            slot.pending = true;
        }
        self.uploads += 1;
        self.bytes += src.len();
        Ok(())
    }
}

impl<E: CopyEngine> Drop for Stager<E> {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if slot.pending {
                let _ = self.engine.wait(slot.event);
            }
            if !slot.ptr.is_null() {
                // SAFETY: no copy from it is pending (waited for above).
                unsafe { self.engine.free_pinned(slot.ptr) };
            }
            self.engine.destroy_event(slot.event);
        }
    }
}

/// The driver's side on a GPU: pinned memory from `cuMemHostAlloc`, copies and events on
/// the legacy default stream. The caller binds the context to the thread first.
pub struct GpuEngine;

fn driver_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid("cuda upload", format!("{what}: {e}"))
}

impl CopyEngine for GpuEngine {
    fn alloc_pinned(&self, bytes: usize) -> Result<*mut u8> {
        // SAFETY: plain allocation; the memory is written before any copy reads it.
        unsafe { cudarc::driver::result::malloc_host(bytes, 0) }
            .map(|p| p as *mut u8)
            .map_err(|e| driver_err(&format!("cuMemHostAlloc of {bytes} bytes"), e))
    }
    unsafe fn free_pinned(&self, p: *mut u8) {
        // SAFETY: the caller's contract.
        let _ = unsafe { cudarc::driver::result::free_host(p as *mut std::ffi::c_void) };
    }
    unsafe fn copy_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        // SAFETY: the caller's contract; the null stream is the legacy default stream.
        let src = unsafe { std::slice::from_raw_parts(src, bytes) };
        let stream = cudarc::driver::result::stream::null();
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, stream) }
            .map_err(|e| driver_err("cuMemcpyHtoDAsync", e))
    }
    fn new_event(&self) -> Result<usize> {
        let flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        cudarc::driver::result::event::create(flags).map(|e| e as usize).map_err(|e| driver_err("cuEventCreate", e))
    }
    fn record(&self, event: usize) -> Result<()> {
        let stream = cudarc::driver::result::stream::null();
        // SAFETY: `event` came from `new_event` and is not destroyed.
        unsafe { cudarc::driver::result::event::record(event as cudarc::driver::sys::CUevent, stream) }
            .map_err(|e| driver_err("cuEventRecord", e))
    }
    fn wait(&self, event: usize) -> Result<()> {
        // SAFETY: as in `record`.
        unsafe { cudarc::driver::result::event::synchronize(event as cudarc::driver::sys::CUevent) }
            .map_err(|e| driver_err("cuEventSynchronize", e))
    }
    fn destroy_event(&self, event: usize) {
        // SAFETY: as in `record`; destroying a pending event is allowed (released on completion).
        let _ = unsafe { cudarc::driver::result::event::destroy(event as cudarc::driver::sys::CUevent) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// What the fake driver saw; shared with the test, which keeps it past the stager.
    #[derive(Default)]
    struct Seen {
        log: RefCell<Vec<String>>,
        /// The copies: (dst, bytes), in order.
        device: RefCell<Vec<(u64, Vec<u8>)>>,
        events: RefCell<usize>,
        live_pinned: RefCell<Vec<(usize, usize)>>,
    }

    /// Records every call; a copy happens when queued (a GPU's would be done by the wait).
    #[derive(Default)]
    struct Fake(Rc<Seen>);
    // SAFETY: the fake is only used on the test's thread.
    unsafe impl Send for Fake {}

    impl std::ops::Deref for Fake {
        type Target = Seen;
        fn deref(&self) -> &Seen {
            &self.0
        }
    }

    impl CopyEngine for Fake {
        fn alloc_pinned(&self, bytes: usize) -> Result<*mut u8> {
            let p = Box::leak(vec![0u8; bytes].into_boxed_slice()).as_mut_ptr();
            self.live_pinned.borrow_mut().push((p as usize, bytes));
            self.log.borrow_mut().push(format!("alloc {bytes}"));
            Ok(p)
        }
        unsafe fn free_pinned(&self, p: *mut u8) {
            let mut live = self.live_pinned.borrow_mut();
            let i = live.iter().position(|&(q, _)| q == p as usize).expect("freeing a live pinned block");
            let (_, n) = live.remove(i);
            // SAFETY: made by alloc_pinned above with this length.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)) });
            self.log.borrow_mut().push(format!("free {n}"));
        }
        unsafe fn copy_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
            // SAFETY: the stager's contract.
            let data = unsafe { std::slice::from_raw_parts(src, bytes) }.to_vec();
            self.device.borrow_mut().push((dst, data));
            self.log.borrow_mut().push(format!("copy {dst} {bytes}"));
            Ok(())
        }
        fn new_event(&self) -> Result<usize> {
            *self.events.borrow_mut() += 1;
            Ok(*self.events.borrow())
        }
        fn record(&self, event: usize) -> Result<()> {
            self.log.borrow_mut().push(format!("record {event}"));
            Ok(())
        }
        fn wait(&self, event: usize) -> Result<()> {
            self.log.borrow_mut().push(format!("wait {event}"));
            Ok(())
        }
        fn destroy_event(&self, event: usize) {
            self.log.borrow_mut().push(format!("destroy {event}"));
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn a_large_upload_goes_in_slot_sized_pieces_with_the_right_offsets() {
        let mut s = Stager::new(Fake::default()).unwrap();
        let src = bytes(2 * SLOT_MAX + 12345, 7);
        s.upload(1 << 40, &src).unwrap();
        let dev = s.engine().device.borrow().clone();
        assert_eq!(dev.len(), 3);
        for (k, (dst, data)) in dev.iter().enumerate() {
            assert_eq!(*dst, (1u64 << 40) + (k * SLOT_MAX) as u64, "piece {k}");
            assert_eq!(data[..], src[k * SLOT_MAX..(k * SLOT_MAX + data.len())], "piece {k}");
        }
        assert_eq!(dev.iter().map(|(_, d)| d.len()).sum::<usize>(), src.len());
        assert_eq!((s.uploads, s.bytes), (1, src.len()));
    }

    #[test]
    fn a_slot_is_refilled_only_after_waiting_for_its_last_copy() {
        let mut s = Stager::new(Fake::default()).unwrap();
        let srcs: Vec<Vec<u8>> = (0..SLOTS + 2).map(|i| bytes(1000 + i, i as u8)).collect();
        for (i, src) in srcs.iter().enumerate() {
            s.upload(4096 * i as u64, src).unwrap();
        }
        // The copies carried each source's bytes as they were when uploaded.
        let dev = s.engine().device.borrow().clone();
        for (i, (dst, data)) in dev.iter().enumerate() {
            assert_eq!((*dst, data), (4096 * i as u64, &srcs[i]));
        }
        let log = s.engine().log.borrow().clone();
        // The first SLOTS uploads wait for nothing; upload SLOTS reuses slot 0 (event 1), and
        // waits for it before its copy.
        let first_wait = log.iter().position(|l| l.starts_with("wait")).expect("a wait");
        assert_eq!(log[first_wait], "wait 1");
        let copies_before = log[..first_wait].iter().filter(|l| l.starts_with("copy")).count();
        assert_eq!(copies_before, SLOTS);
        assert_eq!(log.iter().filter(|l| l.starts_with("alloc")).count(), SLOTS, "small slots are reused, not regrown");
    }

    #[test]
    fn a_slot_grows_after_its_copy_and_drop_waits_and_frees_everything() {
        let seen = Rc::new(Seen::default());
        let mut s = Stager::new(Fake(Rc::clone(&seen))).unwrap();
        for i in 0..SLOTS {
            s.upload(0, &bytes(10, i as u8)).unwrap();
        }
        // Slot 0 again, now 3 MiB: wait for its copy, free the 1 MiB block, allocate 4 MiB.
        s.upload(0, &bytes(3 << 20, 9)).unwrap();
        let tail: Vec<String> = seen.log.borrow().iter().rev().take(5).rev().cloned().collect();
        assert_eq!(tail, ["wait 1", "free 1048576", "alloc 4194304", "copy 0 3145728", "record 1"]);
        assert_eq!(seen.live_pinned.borrow().len(), SLOTS);
        // Dropped: every pending copy waited for, every block freed, every event destroyed.
        drop(s);
        assert!(seen.live_pinned.borrow().is_empty());
        let log = seen.log.borrow();
        let waits = log.iter().rev().take_while(|l| !l.starts_with("record")).filter(|l| l.starts_with("wait")).count();
        assert_eq!(waits, SLOTS, "{log:?}");
        assert_eq!(log.iter().filter(|l| l.starts_with("destroy")).count(), SLOTS);
    }
}
