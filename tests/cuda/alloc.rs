//! The caching allocator's bookkeeping against a counting fake memory (reuse without raw
//! calls, streams kept apart, exact statistics, out-of-memory retry, concurrency), and the
//! emulated device's host memory (alignment, guard page that stops a kernel reading past the
//! end of its buffer).

use kiln::backend::cuda::alloc::{size_class, AllocStats, CachingAllocator, DeviceBuf, HostMemory, RawMemory};
use kiln::backend::cuda::{emu::EmuLauncher, kernels};
use kiln::backend::UnaryOp;
use kiln::{DType, Layout, Shape};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A fake device memory of `capacity` bytes that counts calls and checks frees.
struct Fake {
    capacity: usize,
    next: AtomicU64,
    allocs: AtomicUsize,
    failed: AtomicUsize,
    frees: AtomicUsize,
    live: Mutex<HashMap<u64, usize>>,
}

impl Fake {
    fn new(capacity: usize) -> Arc<Fake> {
        Arc::new(Fake {
            capacity,
            next: AtomicU64::new(0x1000_0000),
            allocs: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            frees: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
        })
    }
    fn live_bytes(&self) -> usize {
        self.live.lock().unwrap().values().sum()
    }
}

/// The allocator owns its memory as a Box; the test keeps an Arc to look inside.
struct Shared(Arc<Fake>);

impl RawMemory for Shared {
    fn alloc(&self, bytes: usize) -> kiln::Result<u64> {
        assert!(bytes > 0);
        let mut live = self.0.live.lock().unwrap();
        if live.values().sum::<usize>() + bytes > self.0.capacity {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            return Err(kiln::Error::DeviceUnavailable {
                device: kiln::Device::Cuda(0),
                msg: format!("fake out of memory allocating {bytes} bytes"),
            });
        }
        let ptr = self.0.next.fetch_add(bytes as u64, Ordering::SeqCst);
        live.insert(ptr, bytes);
        self.0.allocs.fetch_add(1, Ordering::SeqCst);
        Ok(ptr)
    }
    fn free(&self, ptr: u64, bytes: usize) {
        let was = self.0.live.lock().unwrap().remove(&ptr);
        assert_eq!(was, Some(bytes), "free of {ptr:#x} with {bytes} bytes");
        self.0.frees.fetch_add(1, Ordering::SeqCst);
    }
    fn name(&self) -> &'static str {
        "fake"
    }
}

fn setup(capacity: usize) -> (Arc<Fake>, Arc<CachingAllocator>) {
    let fake = Fake::new(capacity);
    (fake.clone(), CachingAllocator::new(Box::new(Shared(fake))))
}

const MIB: usize = 1 << 20;

#[test]
fn size_classes() {
    assert_eq!(size_class(0), Some(512));
    assert_eq!(size_class(1), Some(512));
    assert_eq!(size_class(512), Some(512));
    assert_eq!(size_class(513), Some(1024));
    assert_eq!(size_class(MIB), Some(MIB));
    assert_eq!(size_class(MIB + 1), Some(2 * MIB));
    assert_eq!(size_class(3 * MIB), Some(4 * MIB));
    assert_eq!(size_class(usize::MAX), None);
}

/// KILN_NO_CACHING's mode: exact sizes (no slack for an overrun to hide in), every drop a
/// raw free at once, nothing cached, statistics still exact.
#[test]
fn uncached_mode_allocates_exact_sizes_and_frees_at_once() {
    let fake = Fake::new(1 << 40);
    let a = CachingAllocator::uncached(Box::new(Shared(fake.clone())));
    let b = a.alloc(1000, 0).unwrap();
    assert_eq!(b.bytes(), 1000);
    assert_eq!(fake.live_bytes(), 1000);
    let z = a.alloc(0, 0).unwrap();
    assert_eq!(z.bytes(), 1);
    drop(b);
    assert_eq!(fake.frees.load(Ordering::SeqCst), 1, "freed at the drop");
    assert_eq!(fake.live_bytes(), 1);
    let c = a.alloc(1000, 0).unwrap();
    assert_eq!(fake.allocs.load(Ordering::SeqCst), 3, "no reuse: a raw allocation each time");
    let s = a.stats();
    assert_eq!((s.allocated, s.reserved, s.cache_hits, s.raw_frees), (1001, 1001, 0, 1));
    drop((c, z));
    assert_eq!(fake.live_bytes(), 0);
    assert_eq!((a.stats().allocated, a.stats().reserved), (0, 0));
}

#[test]
fn freed_blocks_are_reused_without_raw_calls() {
    let (fake, a) = setup(1 << 40);
    let b = a.alloc(1000, 0).unwrap();
    assert_eq!(b.bytes(), 1024);
    let p = b.ptr();
    drop(b);
    let b = a.alloc(700, 0).unwrap(); // same class, 1024
    assert_eq!(b.ptr(), p);
    assert_eq!(fake.allocs.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().cache_hits, 1);
    // 0 bytes: real, distinct blocks.
    let (z1, z2) = (a.alloc(0, 0).unwrap(), a.alloc(0, 0).unwrap());
    assert_ne!(z1.ptr(), z2.ptr());
    assert_eq!(z1.bytes(), 512);
    // A small request never takes a much larger cached block.
    drop(b);
    let s = a.alloc(100, 0).unwrap();
    assert_ne!(s.ptr(), p);
    assert_eq!(s.bytes(), 512);
    // Best fit among large blocks: 16 MiB then 18 MiB (within a quarter), not 32 MiB.
    let bufs: Vec<DeviceBuf> = [32 * MIB, 18 * MIB, 16 * MIB].iter().map(|&n| a.alloc(n, 0).unwrap()).collect();
    let ptrs: Vec<u64> = bufs.iter().map(|b| b.ptr()).collect();
    drop(bufs);
    let raw = fake.allocs.load(Ordering::SeqCst);
    let x = a.alloc(15 * MIB, 0).unwrap(); // class 16 MiB
    assert_eq!((x.ptr(), x.bytes()), (ptrs[2], 16 * MIB));
    let y = a.alloc(16 * MIB, 0).unwrap();
    assert_eq!((y.ptr(), y.bytes()), (ptrs[1], 18 * MIB));
    let z = a.alloc(16 * MIB, 0).unwrap(); // only 32 MiB left cached: too big, raw alloc
    assert_ne!(z.ptr(), ptrs[0]);
    assert_eq!(fake.allocs.load(Ordering::SeqCst), raw + 1);
}

#[test]
fn a_block_is_reused_only_by_its_own_stream() {
    let (fake, a) = setup(1 << 40);
    let b1 = a.alloc(4096, 1).unwrap();
    assert_eq!(b1.stream(), 1);
    let p1 = b1.ptr();
    drop(b1);
    let b2 = a.alloc(4096, 2).unwrap();
    assert_ne!(b2.ptr(), p1, "stream 2 must not get stream 1's freed block");
    assert_eq!(fake.allocs.load(Ordering::SeqCst), 2);
    let b1 = a.alloc(4096, 1).unwrap();
    assert_eq!(b1.ptr(), p1);
    assert_eq!(fake.allocs.load(Ordering::SeqCst), 2);
    let p2 = b2.ptr();
    drop(b2);
    assert_eq!(a.alloc(4096, 2).unwrap().ptr(), p2);
}

#[test]
fn statistics_are_exact() {
    let (fake, a) = setup(1 << 40);
    let s0 = AllocStats::default();
    assert_eq!(a.stats(), s0);
    let x = a.alloc(100, 0).unwrap(); // 512
    let y = a.alloc(3 * MIB, 0).unwrap(); // 4 MiB
    let want = AllocStats {
        allocated: 512 + 4 * MIB,
        reserved: 512 + 4 * MIB,
        peak_allocated: 512 + 4 * MIB,
        peak_reserved: 512 + 4 * MIB,
        raw_allocs: 2,
        ..s0
    };
    assert_eq!(a.stats(), want);
    drop(y);
    let want = AllocStats { allocated: 512, ..want };
    assert_eq!(a.stats(), want);
    let y = a.alloc(4 * MIB, 0).unwrap(); // cache hit
    let want = AllocStats { allocated: 512 + 4 * MIB, cache_hits: 1, ..want };
    assert_eq!(a.stats(), want);
    let w = a.alloc(600, 7).unwrap(); // 1024 on another stream: new peaks
    let top = 512 + 4 * MIB + 1024;
    let want =
        AllocStats { allocated: top, reserved: top, peak_allocated: top, peak_reserved: top, raw_allocs: 3, ..want };
    assert_eq!(a.stats(), want);
    drop((x, y, w));
    let want = AllocStats { allocated: 0, ..want };
    assert_eq!(a.stats(), want);
    assert_eq!(fake.live_bytes(), top);
    a.empty_cache();
    let want = AllocStats { reserved: 0, raw_frees: 3, ..want };
    assert_eq!(a.stats(), want);
    assert_eq!(fake.live_bytes(), 0);
    assert_eq!(fake.frees.load(Ordering::SeqCst), 3);
}

#[test]
fn empty_cache_frees_only_cached_blocks() {
    let (fake, a) = setup(1 << 40);
    let keep = a.alloc(2048, 0).unwrap();
    drop(a.alloc(4096, 0).unwrap());
    drop(a.alloc(4096, 3).unwrap());
    assert_eq!(a.stats().reserved, 2048 + 2 * 4096);
    a.empty_cache();
    let s = a.stats();
    assert_eq!((s.allocated, s.reserved, s.raw_frees), (2048, 2048, 2));
    assert_eq!(fake.live.lock().unwrap().keys().copied().collect::<Vec<_>>(), vec![keep.ptr()]);
    // The buffer still works and goes back to the cache; dropping the allocator frees it.
    drop(keep);
    assert_eq!(a.stats().reserved, 2048);
    drop(a);
    assert_eq!(fake.live_bytes(), 0);
    assert_eq!(fake.allocs.load(Ordering::SeqCst), fake.frees.load(Ordering::SeqCst));
}

#[test]
fn out_of_memory_empties_the_cache_and_retries_once() {
    let (fake, a) = setup(8192);
    drop(a.alloc(4096, 1).unwrap()); // cached on stream 1
    drop(a.alloc(2048, 2).unwrap()); // cached on stream 2
                                     // 4096 on stream 3: 4096 + 2048 + 4096 > 8192, so the cache (both streams) is emptied.
    let b = a.alloc(4096, 3).unwrap();
    assert_eq!(fake.failed.load(Ordering::SeqCst), 1);
    let s = a.stats();
    assert_eq!((s.allocated, s.reserved, s.raw_allocs, s.raw_frees, s.cache_hits), (4096, 4096, 3, 2, 0));
    assert_eq!(fake.live_bytes(), 4096);
    // Nothing cached is left to free: the retry fails too, and the error says why.
    let big = a.alloc(6000, 3).unwrap_err();
    assert_eq!(fake.failed.load(Ordering::SeqCst), 3);
    let msg = big.to_string();
    for part in ["6000", "6144", "fake out of memory", "allocated 4096", "reserved 4096"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(matches!(big, kiln::Error::DeviceUnavailable { .. }), "{big:?}");
    assert_eq!(a.stats(), s, "a failed allocation changes no statistic");
    drop(b);
    // Absurd sizes are an error, not an overflow.
    assert!(a.alloc(usize::MAX - 10, 0).is_err());
}

#[test]
fn concurrent_allocations_keep_consistent_statistics() {
    let (fake, a) = setup(1 << 40);
    let in_use = Arc::new(Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (a, in_use, count) = (a.clone(), in_use.clone(), count.clone());
            std::thread::spawn(move || {
                let mut held: Vec<DeviceBuf> = Vec::new();
                let mut g = kiln::Generator::new(t + 1);
                for _ in 0..2000 {
                    if held.len() > 8 || (!held.is_empty() && g.uniform() < 0.45) {
                        let b = held.swap_remove((g.uniform() * held.len() as f64) as usize % held.len());
                        assert!(in_use.lock().unwrap().remove(&b.ptr()));
                        drop(b);
                    } else {
                        let size = [0, 100, 512, 3000, 70_000, 3 * MIB][(g.uniform() * 6.0) as usize % 6];
                        let b = a.alloc(size, t % 3).unwrap();
                        count.fetch_add(1, Ordering::SeqCst);
                        assert!(b.bytes() >= size);
                        assert!(in_use.lock().unwrap().insert(b.ptr()), "block handed out twice");
                        held.push(b);
                    }
                }
                for b in held {
                    in_use.lock().unwrap().remove(&b.ptr());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = a.stats();
    assert_eq!(s.allocated, 0);
    assert_eq!(s.reserved, fake.live_bytes());
    assert_eq!(s.raw_allocs, fake.allocs.load(Ordering::SeqCst));
    assert!(s.peak_allocated <= s.peak_reserved && s.reserved <= s.peak_reserved);
    assert!(s.cache_hits > 1000, "{s:?}");
    assert_eq!(s.cache_hits + s.raw_allocs, count.load(Ordering::SeqCst));
    a.empty_cache();
    let s = a.stats();
    assert_eq!((s.reserved, s.raw_allocs), (0, s.raw_frees));
    assert_eq!(fake.live_bytes(), 0);
}

#[test]
fn host_memory_blocks_are_aligned_and_end_at_a_guard_page() {
    let mem = HostMemory::new();
    let a = CachingAllocator::new(Box::new(HostMemory::new()));
    for n in [1usize, 255, 256, 4000, 4096, 70_000] {
        let p = mem.alloc(n).unwrap();
        assert_eq!(p % 256, 0);
        // SAFETY (test): the block has at least n bytes, mapped read-write.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xab, n) };
        assert_eq!(unsafe { *((p as usize + n - 1) as *const u8) }, 0xab);
        mem.free(p, n);
        let b = a.alloc(n, 0).unwrap();
        assert_eq!(b.ptr() % 256, 0);
        unsafe { std::ptr::write_bytes(b.ptr() as *mut u8, 1, b.bytes()) };
    }
    assert_eq!(mem.live_blocks(), 0);
}

/// Runs a kernel that reads one f32 past the end of a 512-byte block: on the emulated device
/// this must kill the process with SIGSEGV (run in a child process by the test below).
#[test]
fn oob_child() {
    if std::env::var_os("KILN_OOB_CHILD").is_none() {
        return; // only meaningful as the child of the test below
    }
    let a = CachingAllocator::new(Box::new(HostMemory::new()));
    let x = a.alloc(512, 0).unwrap(); // 128 f32, the block ends at the guard page
    let y = a.alloc(4096, 0).unwrap();
    let n: usize = std::env::var("KILN_OOB_CHILD").unwrap().parse().unwrap();
    let l = Layout::contiguous(Shape::new(vec![n]));
    kernels::unary(&EmuLauncher, DType::F32, UnaryOp::Neg, x.ptr(), &l, y.ptr()).unwrap();
    println!("kernel finished");
}

#[test]
fn a_kernel_reading_past_its_buffer_faults_on_the_emulated_device() {
    use std::os::unix::process::ExitStatusExt;
    let run = |n: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "alloc::oob_child", "--nocapture", "--test-threads=1"])
            .env("KILN_OOB_CHILD", n)
            .output()
            .unwrap()
    };
    let ok = run("128");
    assert!(ok.status.success(), "in bounds: {:?} {}", ok.status, String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("kernel finished"));
    let bad = run("129");
    assert_eq!(bad.status.signal(), Some(libc::SIGSEGV), "one element past the end: {:?}", bad.status);
}

#[test]
fn allocator_buffers_memories_and_launcher_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CachingAllocator>();
    check::<DeviceBuf>();
    check::<HostMemory>();
    check::<kiln::backend::cuda::alloc::GpuMemory>();
    check::<kiln::backend::cuda::gpu::GpuLauncher>();
}
