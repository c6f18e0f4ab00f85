// The emulator's runtime: kernel registry, launches, block barrier, warp rendezvous.
// See emu.h for the model and README.md in this folder for how it is built.
//
// Waiting: a thread that waits (at __syncthreads, in a warp exchange) sleeps on an atomic
// phase counter with std::atomic::wait (a futex on Linux), which the completing thread
// bumps. That is ~6x cheaper than a condition variable, whose waiters all fight for the
// mutex again on wake-up; it has no timeout, so the launching thread is the watchdog:
// when nothing completes for KILN_EMU_BARRIER_TIMEOUT_MS while threads wait, it fails the
// launch with a description of who waits where, and failing a launch wakes every waiter.
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "emu.h"  // after the standard headers: it defines CUDA keywords as macros

namespace kiln::emu {
namespace {

using Clock = std::chrono::steady_clock;

struct Kernel {
    std::string name;
    Trampoline fn;
    unsigned num_params;
};
// Filled by static initialisers of the kernel files, so a function-local static: it is
// constructed on first use whatever the order of initialisation.
std::vector<Kernel>& registry() {
    static std::vector<Kernel> kernels;
    return kernels;
}

// Thrown through the kernel's frames to stop a thread once its launch has failed.
struct Abort {};

struct BlockBarrier {
    std::mutex m;
    unsigned arrived = 0;   // threads waiting in the current phase
    unsigned returned = 0;  // threads of this block that have left the kernel
    std::source_location site;  // where the current phase's threads wait
    std::atomic<uint32_t> phase{0};
};

// One warp operation in progress: the lanes of `mask` meet in it.
struct Exchange {
    WarpOp op;
    unsigned mask, size;
    int width;
    std::source_location site;  // of the first lane to arrive
    unsigned first_lane;
    unsigned arrived;
};

struct Warp {
    std::mutex m;
    unsigned lanes = 0;     // the lanes that exist (all but in a partial last warp)
    unsigned returned = 0;  // lanes that have left the kernel
    unsigned busy = 0;      // lanes waiting in an exchange
    // Exchanges waiting for lanes. Usually one; several when disjoint groups of lanes (sub-
    // warp masks in divergent code) exchange at the same time. Their `arrived` sets are
    // disjoint, since a lane is in one exchange at a time, so the per-lane arrays are shared.
    std::vector<Exchange> open;
    uint64_t in[32]{}, out[32]{};
    long long param[32]{};
    std::atomic<uint32_t> phase{0};  // moves whenever an exchange of this warp completes
};

struct Launch;
struct NextBlock {
    Launch* launch;
    void operator()() noexcept;
};

constexpr size_t kGuardBytes = 64;  // after the dynamic shared memory, to catch overruns
constexpr unsigned char kGuardByte = 0xa5;

struct Launch {
    const char* kernel;
    Trampoline fn;
    void** args;
    dim3 grid, block;
    unsigned nthreads, nblocks, nwarps;
    Clock::duration timeout;

    struct alignas(16) Chunk {
        unsigned char b[16];
    };
    size_t shared_bytes;
    std::vector<Chunk> shared;

    BlockBarrier bar;
    std::unique_ptr<Warp[]> warps;

    std::atomic<bool> failed{false};
    std::mutex err_m;
    std::string err;
    std::atomic<uint64_t> progress{0};  // completed rendezvous, for the watchdog

    std::latch start{1};          // holds the workers until all of them exist
    std::barrier<NextBlock> end;  // all threads finish a block before the next begins
    unsigned block_index = 0;     // written only by NextBlock, between blocks
    bool stop = false;

    std::mutex done_m;  // the watchdog sleeps on done_cv until every worker has finished
    std::condition_variable done_cv;
    unsigned finished = 0;

    Launch(const char* k, Trampoline f, void** a, dim3 g, dim3 b, unsigned sb, Clock::duration to)
        : kernel(k), fn(f), args(a), grid(g), block(b), nthreads(b.x * b.y * b.z), nblocks(g.x * g.y * g.z),
          nwarps((nthreads + 31) / 32), timeout(to), shared_bytes(sb), shared((sb + kGuardBytes + 15) / 16),
          warps(new Warp[nwarps]), end(nthreads, NextBlock{this}) {
        for (unsigned w = 0; w < nwarps; ++w) {
            const unsigned n = std::min(32u, nthreads - w * 32);
            warps[w].lanes = n == 32 ? ~0u : (1u << n) - 1;
        }
        prepare_shared();
    }

    unsigned char* shared_data() { return shared.data()->b; }
    // Garbage in place of the previous block's data (0xff: NaN as a float, -1 as an int),
    // so reads of unwritten shared memory show up; a guard pattern after the end.
    void prepare_shared() {
        std::memset(shared_data(), 0xff, shared_bytes);
        std::memset(shared_data() + shared_bytes, kGuardByte, kGuardBytes);
    }
};

thread_local Launch* current = nullptr;
thread_local unsigned current_tid = 0;

Launch& launch_of_this_thread() {
    if (!current) {
        std::fputs("kiln emu: a kernel intrinsic was called outside kiln_emu_launch\n", stderr);
        std::abort();
    }
    return *current;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string site_str(const std::source_location& s) {
    const char* f = s.file_name();
    const char* slash = std::strrchr(f, '/');
    return format("%s:%u", slash ? slash + 1 : f, unsigned(s.line()));
}

bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// "block (1,0,0) thread (7,0,0)": the calling CUDA thread.
std::string who() {
    return format("block (%u,%u,%u) thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x,
                  threadIdx.y, threadIdx.z);
}

std::string block_str(const Launch& L) {
    const unsigned b = L.block_index, gx = L.grid.x, gy = L.grid.y;
    return format("block (%u,%u,%u)", b % gx, b / gx % gy, b / (gx * gy));
}

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::Shfl: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::Sync: return "__syncwarp";
    }
    return "?";
}

void bump(std::atomic<uint32_t>& phase) {
    phase.fetch_add(1);
    phase.notify_all();
}

// Fails the launch; the first error is the one reported. Every waiter is woken (its phase
// moves) and, seeing `failed`, unwinds. Needs no lock, so callers may hold any.
void record(Launch& L, const std::string& what) {
    {
        std::lock_guard g(L.err_m);
        if (L.err.empty()) L.err = what;
    }
    if (L.failed.exchange(true)) return;
    bump(L.bar.phase);
    for (unsigned w = 0; w < L.nwarps; ++w) bump(L.warps[w].phase);
}

[[noreturn]] void fail(Launch& L, const std::string& what) {
    record(L, what);
    throw Abort{};
}

// Sleeps until `phase` moves on from `seen`; throws Abort if that was the launch failing.
void wait_phase(Launch& L, std::atomic<uint32_t>& phase, uint32_t seen) {
    for (;;) {
        if (L.failed) throw Abort{};
        if (phase.load() != seen) return;
        phase.wait(seen);
    }
}

// Which lane `lane` reads, per the CUDA programming guide: within segments of `width`
// lanes; up/down past the segment's edge, and xor past its end, read the lane's own value.
unsigned source_lane(WarpOp op, unsigned lane, long long p, int width) {
    const long long seg = lane & ~unsigned(width - 1), pos = lane - seg;
    switch (op) {
        case WarpOp::Shfl: return unsigned(seg + (p & (width - 1)));
        case WarpOp::ShflUp: return p <= pos ? unsigned(lane - p) : lane;
        case WarpOp::ShflDown: return pos + p < width ? unsigned(lane + p) : lane;
        case WarpOp::ShflXor: {
            const long long s = lane ^ (p & 31);
            return s < seg + width ? unsigned(s) : lane;
        }
        default: return lane;
    }
}

// Runs when the last lane of an exchange arrives, with the warp's lock held.
void complete_exchange(Launch& L, Warp& W, const Exchange& E, unsigned w) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((E.mask >> l & 1) && W.in[l]) ballot |= 1u << l;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(E.mask >> l & 1)) continue;
        switch (E.op) {
            case WarpOp::Ballot: W.out[l] = ballot; break;
            case WarpOp::Any: W.out[l] = ballot != 0; break;
            case WarpOp::All: W.out[l] = ballot == E.mask; break;
            case WarpOp::Sync: W.out[l] = 0; break;
            default: {
                const unsigned src = source_lane(E.op, l, W.param[l], E.width);
                if (!(E.mask >> src & 1)) {
                    // On a GPU the value read is undefined: report instead of inventing one.
                    const bool exists = W.lanes >> src & 1;
                    fail(L, format("%s (%s) in kernel %s: in %s, lane %u of warp %u reads lane %u, which %s "
                                   "(mask 0x%08x, block of %u threads)",
                                   op_name(E.op), site_str(E.site).c_str(), L.kernel, block_str(L).c_str(), l, w,
                                   src, exists ? "is not in the mask" : "does not exist", E.mask, L.nthreads));
                }
                W.out[l] = W.in[src];
            }
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------

bool register_kernel(const char* name, Trampoline fn, unsigned num_params) {
    registry().push_back({name, fn, num_params});
    return true;
}

void* dynamic_shared() { return launch_of_this_thread().shared_data(); }

void trap(const std::source_location& site) {
    Launch& L = launch_of_this_thread();
    fail(L, format("__trap() (%s) in kernel %s: %s", site_str(site).c_str(), L.kernel, who().c_str()));
}

// A barrier completes only when every thread of the block has arrived at the same
// __syncthreads. A thread that has returned from the kernel never counts as arrived: on a
// GPU a barrier not reached by all threads of the block is undefined behaviour (it often
// happens to work, e.g. after `if (i >= n) return;`, which is why it must be reported).
void sync_block(const std::source_location& site) {
    Launch& L = launch_of_this_thread();
    BlockBarrier& B = L.bar;
    uint32_t seen;
    {
        std::lock_guard g(B.m);
        if (L.failed) throw Abort{};
        if (B.returned)
            fail(L, format("__syncthreads (%s) in kernel %s: reached by %s after %u of the block's %u threads "
                           "returned from the kernel; every thread of a block must reach each __syncthreads "
                           "(undefined behaviour on a GPU)",
                           site_str(site).c_str(), L.kernel, who().c_str(), B.returned, L.nthreads));
        if (B.arrived == 0) {
            B.site = site;
        } else if (!same_site(B.site, site)) {
            fail(L, format("__syncthreads in kernel %s: threads of %s wait at different calls, %s and %s (a "
                           "__syncthreads in divergent code: undefined behaviour on a GPU)",
                           L.kernel, block_str(L).c_str(), site_str(B.site).c_str(), site_str(site).c_str()));
        }
        if (++B.arrived == L.nthreads) {
            B.arrived = 0;
            L.progress.fetch_add(1, std::memory_order_relaxed);
            bump(B.phase);
            return;
        }
        seen = B.phase.load();
    }
    wait_phase(L, B.phase, seen);
}

// Lanes arrive one by one; the last lane named in the mask computes every lane's result.
// A lane joins the open exchange with the same operation and mask, or opens a new one.
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, long long param, int width, unsigned size,
                       const std::source_location& site) {
    Launch& L = launch_of_this_thread();
    const unsigned lane = current_tid % 32, w = current_tid / 32, bit = 1u << lane;
    Warp& W = L.warps[w];
    auto where = [&] { return format("%s (%s) in kernel %s", op_name(op), site_str(site).c_str(), L.kernel); };
    std::unique_lock lk(W.m);
    if (L.failed) throw Abort{};
    if (!(mask & bit))
        fail(L, format("%s: %s (lane %u of warp %u) is not in its own mask 0x%08x (undefined behaviour on a GPU)",
                       where().c_str(), who().c_str(), lane, w, mask));
    if (mask & ~W.lanes)
        fail(L, format("%s: mask 0x%08x names lanes that do not exist: warp %u of the block has %u lanes (block of "
                       "%u threads), called by %s",
                       where().c_str(), mask, w, std::popcount(W.lanes), L.nthreads, who().c_str()));
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail(L, format("%s: width %d is not a power of two in 1..32", where().c_str(), width));
    if (mask & W.returned)
        fail(L, format("%s: mask 0x%08x names lanes of warp %u that have returned from the kernel (0x%08x), "
                       "called by %s",
                       where().c_str(), mask, w, W.returned & mask, who().c_str()));

    size_t e = 0;
    while (e < W.open.size() && !(W.open[e].op == op && W.open[e].mask == mask && W.open[e].width == width &&
                                  W.open[e].size == size))
        ++e;
    if (e == W.open.size()) W.open.push_back({op, mask, size, width, site, lane, 0});
    // Certain deadlock: lanes waiting in another exchange for this lane are lanes that this
    // one needs. (Typically lanes of one warp calling different warp operations.)
    for (const Exchange& other : W.open) {
        if (&other == &W.open[e] || !(other.mask & bit)) continue;
        if (const unsigned stuck = other.arrived & mask & ~W.open[e].arrived)
            fail(L, format("warp %u of %s in kernel %s disagrees: lane %u calls %s (%s, mask 0x%08x, width %d, "
                           "%u-byte value) while lanes 0x%08x, which it needs, wait for it in %s (%s, mask 0x%08x, "
                           "width %d, %u-byte value)",
                           w, block_str(L).c_str(), L.kernel, lane, op_name(op), site_str(site).c_str(), mask,
                           width, size, stuck, op_name(other.op), site_str(other.site).c_str(), other.mask,
                           other.width, other.size));
    }

    W.in[lane] = value;
    W.param[lane] = param;
    W.busy |= bit;
    if ((W.open[e].arrived |= bit) == mask) {
        complete_exchange(L, W, W.open[e], w);
        W.busy &= ~mask;
        W.open.erase(W.open.begin() + std::ptrdiff_t(e));
        L.progress.fetch_add(1, std::memory_order_relaxed);
        bump(W.phase);
        return W.out[lane];
    }
    while (W.busy & bit) {
        const uint32_t seen = W.phase.load();
        lk.unlock();
        wait_phase(L, W.phase, seen);
        lk.lock();
    }
    return W.out[lane];
}

unsigned active_mask() {
    Launch& L = launch_of_this_thread();
    Warp& W = L.warps[current_tid / 32];
    std::lock_guard g(W.m);
    return W.lanes & ~W.returned;
}

namespace {

// A thread has left the kernel (returned, or stopped by a failure).
void thread_returned(Launch& L, unsigned tid) {
    {
        BlockBarrier& B = L.bar;
        std::lock_guard g(B.m);
        ++B.returned;
        if (B.arrived && !L.failed)
            record(L, format("kernel %s: %s returned while %u thread(s) of its block wait at __syncthreads (%s); "
                             "every thread of a block must reach each __syncthreads (undefined behaviour on a GPU)",
                             L.kernel, who().c_str(), B.arrived, site_str(B.site).c_str()));
    }
    {
        Warp& W = L.warps[tid / 32];
        const unsigned bit = 1u << (tid % 32);
        std::lock_guard g(W.m);
        W.returned |= bit;
        for (const Exchange& E : W.open)
            if ((E.mask & bit) && !L.failed)
                record(L, format("kernel %s: %s (lane %u) returned while lanes 0x%08x of its warp wait for it at %s "
                                 "(%s)",
                                 L.kernel, who().c_str(), tid % 32, E.arrived, op_name(E.op),
                                 site_str(E.site).c_str()));
    }
}

void worker(Launch& L, unsigned tid) {
    current = &L;
    current_tid = tid;
    threadIdx = {tid % L.block.x, tid / L.block.x % L.block.y, tid / (L.block.x * L.block.y)};
    blockDim = L.block;
    gridDim = L.grid;
    L.start.wait();
    while (!L.stop) {
        const unsigned b = L.block_index;
        blockIdx = {b % L.grid.x, b / L.grid.x % L.grid.y, b / (L.grid.x * L.grid.y)};
        try {
            L.fn(L.args);
        } catch (const Abort&) {
        } catch (const std::exception& e) {
            record(L, format("kernel %s threw a C++ exception in %s: %s", L.kernel, who().c_str(), e.what()));
        } catch (...) {
            record(L, format("kernel %s threw a C++ exception in %s", L.kernel, who().c_str()));
        }
        thread_returned(L, tid);
        L.end.arrive_and_wait();  // NextBlock runs here, once
    }
    current = nullptr;
    std::lock_guard g(L.done_m);
    ++L.finished;
    L.done_cv.notify_one();
}

// Called by the watchdog when nothing has completed for the timeout: if threads wait in a
// rendezvous, that is a deadlock (or a wait longer than the timeout): say who waits where.
void check_deadlock(Launch& L) {
    std::string waits;
    {
        std::lock_guard g(L.bar.m);
        if (L.bar.arrived)
            waits += format("; %u of its %u threads wait at __syncthreads (%s)", L.bar.arrived, L.nthreads,
                            site_str(L.bar.site).c_str());
    }
    for (unsigned w = 0; w < L.nwarps; ++w) {
        Warp& W = L.warps[w];
        std::lock_guard g(W.m);
        for (const Exchange& E : W.open)
            waits += format("; lanes 0x%08x of warp %u wait at %s (%s) for lanes 0x%08x", E.arrived, w,
                            op_name(E.op), site_str(E.site).c_str(), E.mask & ~E.arrived);
    }
    if (waits.empty()) return;  // threads are computing, not waiting
    const long long ms = std::chrono::duration_cast<std::chrono::milliseconds>(L.timeout).count();
    record(L, format("deadlock in kernel %s, %s: nothing completed for %lld ms (KILN_EMU_BARRIER_TIMEOUT_MS)",
                     L.kernel, block_str(L).c_str(), ms) +
                  waits);
}

// The launching thread, until every worker has finished.
void watchdog(Launch& L, unsigned started) {
    const auto slice = std::min<Clock::duration>(L.timeout / 4, std::chrono::milliseconds(100));
    uint64_t last = L.progress;
    auto since = Clock::now();
    bool warned = false;
    std::unique_lock lk(L.done_m);
    while (L.finished < started) {
        L.done_cv.wait_for(lk, slice);
        const auto now = Clock::now();
        if (L.progress != last) {
            last = L.progress;
            since = now;
        } else if (now - since >= L.timeout && !L.failed) {
            lk.unlock();
            check_deadlock(L);
            lk.lock();
            since = now;
        } else if (now - since >= 2 * L.timeout && L.failed && !warned) {
            // Threads cannot be killed: one that never returns (an endless loop) holds the
            // launch. Say so, for a CI log that would otherwise show only a hang.
            std::fprintf(stderr, "kiln emu: kernel %s has failed but %u thread(s) still run; waiting for them\n",
                         L.kernel, started - L.finished);
            warned = true;
        }
    }
}

std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

Clock::duration barrier_timeout() {
    long long ms = 10000;
    if (const char* s = std::getenv("KILN_EMU_BARRIER_TIMEOUT_MS")) {
        char* end = nullptr;
        const long long v = std::strtoll(s, &end, 10);
        if (end != s && *end == 0 && v > 0) ms = v;
    }
    return std::chrono::milliseconds(ms);
}

// Checks a launch's configuration against CUDA's limits; "" when valid.
std::string check_config(const char* kernel, const Kernel* k, dim3 g, dim3 b, void** args) {
    if (!kernel) return "kiln_emu_launch: kernel name is NULL";
    if (!k) return format("unknown kernel '%s' (%d kernels registered)", kernel, int(registry().size()));
    if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z)
        return format("kernel %s: empty launch, grid (%u,%u,%u) block (%u,%u,%u)", kernel, g.x, g.y, g.z, b.x, b.y,
                      b.z);
    if (b.x > 1024 || b.y > 1024 || b.z > 64 || uint64_t(b.x) * b.y * b.z > 1024)
        return format("kernel %s: block (%u,%u,%u) exceeds CUDA's limits (1024 threads; x, y <= 1024, z <= 64)",
                      kernel, b.x, b.y, b.z);
    if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 || uint64_t(g.x) * g.y * g.z > 0xffffffffu)
        return format("kernel %s: grid (%u,%u,%u) exceeds CUDA's limits (x < 2^31, y, z <= 65535)", kernel, g.x,
                      g.y, g.z);
    if (k->num_params && !args)
        return format("kernel %s takes %u parameters but args is NULL", kernel, k->num_params);
    return "";
}

// Returns 0, 1 or 2 as kiln_emu_launch does, with the message in `msg`.
int launch(const char* kernel, dim3 g, dim3 b, unsigned shared_bytes, void** args, std::string& msg) {
    const Kernel* k = nullptr;
    if (kernel) {
        for (const Kernel& r : registry()) {
            if (r.name != kernel) continue;
            if (k) {
                msg = format("kernel name %s is registered twice", kernel);
                return 1;
            }
            k = &r;
        }
    }
    msg = check_config(kernel, k, g, b, args);
    if (!msg.empty()) return 1;

    std::lock_guard serial(launch_mutex());
    Launch L(k->name.c_str(), k->fn, args, g, b, shared_bytes, barrier_timeout());
    std::vector<std::thread> threads;
    threads.reserve(L.nthreads);
    try {
        for (unsigned t = 0; t < L.nthreads; ++t) threads.emplace_back(worker, std::ref(L), t);
    } catch (const std::system_error& e) {
        record(L, format("kernel %s: could not start %u host threads: %s", L.kernel, L.nthreads, e.what()));
        L.stop = true;  // the started workers see it once released, before touching anything
    }
    L.start.count_down();
    watchdog(L, unsigned(threads.size()));
    for (std::thread& t : threads) t.join();
    msg = L.err;
    return msg.empty() ? 0 : 2;
}

}  // namespace

// Between two blocks, with every thread of the block waiting in L.end.
void NextBlock::operator()() noexcept {
    Launch& L = *launch;
    const unsigned char* guard = L.shared_data() + L.shared_bytes;
    for (size_t i = 0; i < kGuardBytes; ++i) {
        if (guard[i] != kGuardByte) {
            record(L, format("kernel %s: %s wrote past the end of its %zu bytes of dynamic shared memory", L.kernel,
                             block_str(L).c_str(), L.shared_bytes));
            break;
        }
    }
    L.bar.arrived = L.bar.returned = 0;
    for (unsigned w = 0; w < L.nwarps; ++w) {
        L.warps[w].open.clear();
        L.warps[w].busy = L.warps[w].returned = 0;
    }
    L.progress.fetch_add(1, std::memory_order_relaxed);
    ++L.block_index;
    L.stop = L.failed || L.block_index == L.nblocks;
    if (!L.stop) L.prepare_shared();
}

}  // namespace kiln::emu

// ---------------------------------------------------------------------------------------

extern "C" int kiln_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, unsigned shared_bytes, void** args, char* err, unsigned long errlen) {
    std::string msg;
    int rc;
    try {  // nothing may unwind into Rust
        rc = kiln::emu::launch(kernel, dim3(gx, gy, gz), dim3(bx, by, bz), shared_bytes, args, msg);
    } catch (const std::exception& e) {
        msg = std::string("kiln_emu_launch: ") + e.what();
        rc = 2;
    }
    if (err && errlen) std::snprintf(err, errlen, "%s", msg.c_str());
    return rc;
}

extern "C" int kiln_emu_kernel_count(void) { return int(kiln::emu::registry().size()); }

extern "C" const char* kiln_emu_kernel_name(int i) {
    const auto& r = kiln::emu::registry();
    return i >= 0 && size_t(i) < r.size() ? r[size_t(i)].name.c_str() : nullptr;
}

extern "C" int kiln_emu_kernel_num_params(const char* kernel) {
    if (kernel)
        for (const auto& k : kiln::emu::registry())
            if (k.name == kernel) return int(k.num_params);
    return -1;
}
