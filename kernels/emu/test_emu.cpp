// Self-test of the host emulator. Build and run:
//   g++ -std=c++20 -O1 -pthread -Wall -Wextra -I kernels kernels/emu/test_emu.cpp kernels/emu/emu.cpp -o /tmp/test_emu
//   /tmp/test_emu
// Every launch goes through kiln_emu_launch with a void** array, as cuLaunchKernel takes.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <thread>
#include <string>
#include <vector>

#include "emu/emu.h"

// Each kernel file in its own namespace, as build.rs does for the host build.
namespace kiln_kernels_test_kernels {
#include "emu/test_kernels.cu"
}
namespace kiln_kernels_test_kernels2 {
#include "emu/test_kernels2.cu"
}


// A host-only kernel (not NVRTC code): C++ exceptions from kernel code become errors.
KILN_KERNEL void throws(int n) {
    if (threadIdx.x == 3 && n > 0) throw std::runtime_error("bad n");
}
KILN_REGISTER(throws);

// subwarp_masks with the other order of arrival forced: lanes 16..31 are long in their
// full-warp exchange when lanes 0..15 start theirs.
KILN_KERNEL void subwarp_masks_late(int* out) {
    const int lane = int(threadIdx.x % 32);
    int v = lane;
    if (lane < 16) {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        v = __shfl_xor_sync(0x0000ffffu, v, 1);
    }
    v = __shfl_xor_sync(0xffffffffu, v, 16);
    out[threadIdx.x] = v;
}
KILN_REGISTER(subwarp_masks_late);

static int noop_calls = 0;
KILN_KERNEL void noop() {
    if (threadIdx.x == 0) atomicAdd(&noop_calls, 1);
}
KILN_REGISTER(noop);

static int failures = 0;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            ++failures;                                                         \
            std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);         \
            std::printf(__VA_ARGS__);                                           \
            std::printf("\n");                                                  \
        }                                                                       \
    } while (0)

static char err[2048];

static int launch(const char* k, dim3 g, dim3 b, unsigned shared, void** args) {
    err[0] = 'x';  // must be overwritten
    return kiln_emu_launch(k, g.x, g.y, g.z, b.x, b.y, b.z, shared, args, err, sizeof err);
}
static void expect_ok(const char* k, dim3 g, dim3 b, unsigned shared, void** args) {
    const int rc = launch(k, g, b, shared, args);
    CHECK(rc == 0 && err[0] == 0, "launch of %s: rc %d, %s", k, rc, err);
}
// Expects the launch to fail with a message containing every one of `needles`.
static void expect_error(const char* k, dim3 g, dim3 b, unsigned shared, void** args, int want_rc,
                         std::vector<const char*> needles, double max_seconds = 5) {
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = launch(k, g, b, shared, args);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(rc == want_rc, "launch of %s: rc %d, want %d (%s)", k, rc, want_rc, err);
    for (const char* n : needles) CHECK(std::strstr(err, n), "launch of %s: message lacks '%s': %s", k, n, err);
    CHECK(s < max_seconds, "launch of %s took %.2f s", k, s);
    std::printf("  expected error (%.0f ms): %s\n", s * 1e3, err);
}

static std::vector<float> random_floats(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

// (a) block-wide sums with __shared__ and __syncthreads, sizes not multiples of the block.
static void test_block_sum() {
    for (int block : {32, 64, 128, 256, 1024}) {
        for (int n : {1, 31, 1000, 4097}) {
            const std::vector<float> x = random_floats(n, n + block);
            const int grid = (n + block - 1) / block;
            std::vector<float> partial(grid, -999.0f);
            const float* xp = x.data();
            float* pp = partial.data();
            void* args[] = {&xp, &pp, &n};
            expect_ok("block_sum", dim3(grid), dim3(block), 0, args);
            double got = 0, want = 0;
            for (float p : partial) got += p;
            for (float v : x) want += v;
            CHECK(std::fabs(got - want) <= 1e-5 * (1 + n), "block_sum n=%d block=%d: %g vs %g", n, block, got, want);
        }
    }
}

// (b) warp-shuffle row sums against a serial sum.
static void test_row_sum() {
    for (int block : {32, 64, 256, 1024}) {
        for (int cols : {1, 3, 100, 1000, 5000}) {
            const int rows = 7;
            const std::vector<float> x = random_floats(size_t(rows) * cols, cols * 3 + block);
            std::vector<float> out(rows, -999.0f);
            const float* xp = x.data();
            float* op = out.data();
            void* args[] = {&xp, &op, &cols};
            expect_ok("row_sum", dim3(rows), dim3(block), 0, args);
            for (int r = 0; r < rows; ++r) {
                double want = 0;
                for (int c = 0; c < cols; ++c) want += x[size_t(r) * cols + c];
                CHECK(std::fabs(out[r] - want) <= 1e-5 * (1 + cols), "row_sum cols=%d block=%d row %d: %g vs %g",
                      cols, block, r, out[r], want);
            }
        }
    }
}

// Lane arithmetic of every warp op against the CUDA programming guide's definitions.
static void test_warp_ops() {
    const int n = 64;
    std::vector<int> in(n);
    for (int t = 0; t < n; ++t) in[t] = (t * 37 + 11) % 100;
    for (int width : {32, 16, 8, 4, 2, 1}) {
        std::vector<int> out(8 * n, -1);
        const int* ip = in.data();
        int* op = out.data();
        void* args[] = {&ip, &op, &width};
        expect_ok("warp_ops", dim3(1), dim3(n), 0, args);
        for (int t = 0; t < n; ++t) {
            const int warp0 = t & ~31, l = t & 31, seg = l & ~(width - 1), pos = l - seg;
            auto at = [&](int lane) { return in[warp0 + lane]; };
            unsigned ballot = 0;
            bool any = false;
            for (int k = 0; k < 32; ++k) {
                ballot |= unsigned(at(k) & 1) << k;
                any |= at(k) > 90;
            }
            const int xm = 1 + (width > 2 ? 2 : 0), xs = l ^ xm;
            const int want[8] = {
                at(seg + (l * 7 + 3) % width),
                pos >= 3 ? at(l - 3) : at(l),
                pos + 5 < width ? at(l + 5) : at(l),
                xs < seg + width ? at(xs) : at(l),
                int(ballot),
                any,
                1,
                int((at(l ^ 16) + 0.25) * 4.0) + 1000 * (l < 31 ? at(l + 1) : at(l)),
            };
            for (int k = 0; k < 8; ++k)
                CHECK(out[k * n + t] == want[k], "warp_ops width %d op %d thread %d: %d vs %d", width, k, t,
                      out[k * n + t], want[k]);
        }
    }
}

// (c) atomics from 64 x 256 threads (n not a multiple of the block).
static void test_atomics() {
    int n = 64 * 256 - 100;
    float fsum = 0;
    double dsum = 0;
    int counts[6] = {0, -1, 1, 0, 0, 0};
    unsigned hist[10] = {};
    unsigned long long big = 0;
    float* fp = &fsum;
    double* dp = &dsum;
    int* cp = counts;
    unsigned* hp = hist;
    unsigned long long* bp = &big;
    void* args[] = {&fp, &dp, &cp, &hp, &bp, &n};
    expect_ok("atomics", dim3(64), dim3(256), 0, args);
    CHECK(fsum == float(n), "float atomicAdd: %g", fsum);
    CHECK(dsum == 0.25 * double(n) * (n - 1), "double atomicAdd: %g", dsum);
    CHECK(counts[0] == n && counts[1] == n - 1 && counts[2] == -(n - 1) && counts[3] == -2 * n &&
              counts[4] == 3 * n && counts[5] == 7,
          "int atomics: %d %d %d %d %d %d", counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]);
    unsigned total = 0;
    for (int k = 0; k < 10; ++k) {
        total += hist[k];
        CHECK(hist[k] == unsigned(n / 10 + (k < n % 10)), "hist[%d] = %u", k, hist[k]);
    }
    CHECK(total == unsigned(n), "hist total %u", total);
    CHECK(big == ((unsigned long long)n * (n - 1) / 2) << 20, "u64 atomicAdd: %llu", big);
}

// (d) dynamic shared memory.
static void test_dynamic_shared() {
    for (int n : {1, 100, 1000}) {
        const int block = 128, grid = (n + block - 1) / block;
        std::vector<float> x(n), y(n, -5.0f);
        for (int i = 0; i < n; ++i) x[i] = float(i);
        const float* xp = x.data();
        float* yp = y.data();
        void* args[] = {&xp, &yp, &n};
        expect_ok("reverse_chunks", dim3(grid), dim3(block), block * sizeof(float), args);
        for (int i = 0; i < n; ++i) {
            const int base = i / block * block, len = std::min(block, n - base);
            CHECK(y[i] == x[base + len - 1 - (i - base)], "reverse_chunks n=%d y[%d] = %g", n, i, y[i]);
        }
    }
    int count = 16;
    void* args[] = {&count};
    expect_ok("fill_shared", dim3(3), dim3(32), 16 * sizeof(double), args);
    count = 17;
    expect_error("fill_shared", dim3(3), dim3(32), 16 * sizeof(double), args, 2,
                 {"fill_shared", "past the end", "128 bytes of dynamic shared memory"});
}

// (e) __half and __nv_bfloat16.
static uint16_t hbits(float f) { return __half_as_ushort(__float2half(f)); }
static uint16_t bbits(float f) { return __bfloat16_as_ushort(__float2bfloat16(f)); }

// Round-to-nearest-even reference by brute force: the nearest of all finite 16-bit values
// (decoded independently with ldexp), ties to the even bit pattern, beyond max + half an
// ulp to infinity.
struct Ref16 {
    std::vector<std::pair<double, uint16_t>> values;  // finite, non-negative, sorted
    double overflow;                                  // |x| >= this rounds to infinity
    Ref16(int mant_bits, int exp_bits) {
        const int bias = (1 << (exp_bits - 1)) - 1, emax = (1 << exp_bits) - 1;
        for (int e = 0; e < emax; ++e)
            for (int m = 0; m < (1 << mant_bits); ++m) {
                const double v = e == 0 ? std::ldexp(m, 1 - bias - mant_bits)
                                        : std::ldexp(1.0 + std::ldexp(m, -mant_bits), e - bias);
                values.push_back({v, uint16_t(e << mant_bits | m)});
            }
        const double max = values.back().first;
        overflow = max + std::ldexp(1.0, emax - 1 - bias - mant_bits - 1);
        inf_bits = uint16_t(emax << mant_bits);
    }
    uint16_t inf_bits;
    uint16_t round(float f) const {
        if (std::isnan(f)) return 0x7fff;  // CUDA's canonical NaN
        const double a = std::fabs(double(f));
        const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
        if (a >= overflow) return sign | inf_bits;
        auto hi = std::lower_bound(values.begin(), values.end(), std::make_pair(a, uint16_t(0)));
        if (hi == values.end()) return sign | values.back().second;  // between max and overflow
        if (hi->first == a) return sign | hi->second;
        auto lo = hi - 1;
        const double dl = a - lo->first, dh = hi->first - a;
        const uint16_t r = dl < dh ? lo->second : dh < dl ? hi->second : (lo->second & 1 ? hi->second : lo->second);
        return sign | r;
    }
};

static void test_16bit() {
    // Exact values.
    // Known encodings (not all exact in both formats: 65504 and 0x3ffp-24 round in bf16).
    struct { float f; uint16_t h, b; } cases[] = {
        {0.0f, 0x0000, 0x0000},     {-0.0f, 0x8000, 0x8000},  {0.5f, 0x3800, 0x3f00},
        {-2.0f, 0xc000, 0xc000},    {1024.0f, 0x6400, 0x4480}, {65504.0f, 0x7bff, 0x4780},
        {0x1p-24f, 0x0001, 0x3380}, {0x1p-14f, 0x0400, 0x3880}, {0x3ffp-24f, 0x03ff, 0x3880},
        {0x1p-133f, 0x0000, 0x0001}, {INFINITY, 0x7c00, 0x7f80}, {-INFINITY, 0xfc00, 0xff80},
    };
    for (const auto& e : cases) {
        CHECK(hbits(e.f) == e.h, "half(%a) = %04x, want %04x", e.f, hbits(e.f), e.h);
        CHECK(bbits(e.f) == e.b, "bf16(%a) = %04x, want %04x", e.f, bbits(e.f), e.b);
        if (e.f != 0x1p-133f) CHECK(__half2float(__float2half(e.f)) == e.f, "half round trip of %a", e.f);
    }
    // Ties to even and overflow.
    CHECK(hbits(1.0f + 0x1p-11f) == 0x3c00, "1 + half ulp ties down to even");
    CHECK(hbits(1.0f + 3 * 0x1p-11f) == 0x3c02, "1 + 3 half ulps ties up to even");
    CHECK(hbits(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01, "just above the tie rounds up");
    CHECK(hbits(65519.0f) == 0x7bff && hbits(65520.0f) == 0x7c00 && hbits(-1e6f) == 0xfc00, "half overflow");
    CHECK(hbits(0x1p-25f) == 0x0000 && hbits(0x1.8p-25f) == 0x0001 && hbits(0x1.8p-24f) == 0x0002,
          "half subnormal ties");
    CHECK(hbits(0x1.ffcp-15f) == 0x0400, "rounding up out of the subnormals");
    CHECK(bbits(1.0f + 0x1p-8f) == 0x3f80 && bbits(1.0f + 3 * 0x1p-8f) == 0x3f82, "bf16 ties to even");
    CHECK(bbits(std::bit_cast<float>(0x7f7fffffu)) == 0x7f80, "bf16 overflow to inf");
    // NaN: the canonical NaNs of CUDA's own conversions.
    CHECK(hbits(NAN) == 0x7fff && hbits(-NAN) == 0x7fff && bbits(NAN) == 0x7fff && bbits(-NAN) == 0x7fff,
          "NaN to 16 bits");
    CHECK(std::bit_cast<uint32_t>(__half2float(__ushort_as_half(0xfe01))) == 0x7fffffffu, "half NaN to float");
    CHECK(std::isnan(__bfloat162float(__ushort_as_bfloat16(0xffc1))), "bf16 NaN to float");
    CHECK(__hisnan(__float2half(NAN)) && __hisnan(__float2bfloat16(NAN)), "__hisnan");

    // Every 16-bit pattern: widening is exact and narrowing it back is the identity.
    const Ref16 href(10, 5), bref(7, 8);
    for (uint32_t u = 0; u < 65536; ++u) {
        const float hf = __half2float(__ushort_as_half(uint16_t(u)));
        const float bf = __bfloat162float(__ushort_as_bfloat16(uint16_t(u)));
        if (!std::isnan(hf)) {
            CHECK(hbits(hf) == u, "half %04x round trip gives %04x", u, hbits(hf));
            CHECK(href.round(hf) == u, "half %04x decodes to %a, which the reference rounds to %04x", u, hf,
                  href.round(hf));
        }
        if (!std::isnan(bf)) CHECK(bbits(bf) == u, "bf16 %04x round trip gives %04x", u, bbits(bf));
    }
    // Random floats of every magnitude, and the exact midpoints between neighbours.
    std::mt19937 rng(7);
    int bad_h = 0, bad_b = 0;
    for (int k = 0; k < 2000000; ++k) {
        float f = std::bit_cast<float>(uint32_t(rng()));
        if (std::isnan(f)) continue;
        if (k % 2) f = std::ldexp(std::fmod(f, 2.0f), int(rng() % 44) - 28);  // half's range
        if (hbits(f) != href.round(f) && bad_h++ < 5) CHECK(false, "half(%a) = %04x, want %04x", f, hbits(f), href.round(f));
        if (bbits(f) != bref.round(f) && bad_b++ < 5) CHECK(false, "bf16(%a) = %04x, want %04x", f, bbits(f), bref.round(f));
    }
    for (size_t i = 1; i < href.values.size(); ++i) {
        const float mid = float((href.values[i - 1].first + href.values[i].first) / 2);  // exact in float
        CHECK(hbits(mid) == href.round(mid), "half midpoint %a: %04x vs %04x", mid, hbits(mid), href.round(mid));
    }
    for (size_t i = 1; i < bref.values.size(); ++i) {
        const float mid = float((bref.values[i - 1].first + bref.values[i].first) / 2);
        CHECK(bbits(mid) == bref.round(mid), "bf16 midpoint %a: %04x vs %04x", mid, bbits(mid), bref.round(mid));
    }
    // Arithmetic is rounded once.
    CHECK(__half_as_ushort(__float2half(1.0f) + __float2half(0x1p-11f)) == 0x3c00, "half add ties to even");
    CHECK(float(__float2half(3.0f) * __float2half(0.5f)) == 1.5f, "half mul");

    // And through a kernel.
    std::vector<float> x = {0.5f, -2.0f, 1024.0f, 65504.0f, 0x1p-24f, 1.0f + 0x1p-11f, 70000.0f, NAN, -INFINITY, 0.1f};
    int n = int(x.size());
    std::vector<__half> h(n);
    std::vector<__nv_bfloat16> b(n);
    std::vector<float> hb(n), bb(n);
    const float* xp = x.data();
    __half* hp = h.data();
    float* hbp = hb.data();
    __nv_bfloat16* bp = b.data();
    float* bbp = bb.data();
    void* args[] = {&xp, &hp, &hbp, &bp, &bbp, &n};
    expect_ok("convert16", dim3(2), dim3(8), 0, args);
    for (int i = 0; i < n; ++i) {
        CHECK(__half_as_ushort(h[i]) == href.round(x[i]), "convert16 half %d", i);
        CHECK(__bfloat16_as_ushort(b[i]) == bref.round(x[i]), "convert16 bf16 %d", i);
        CHECK(std::bit_cast<uint32_t>(hb[i]) == std::bit_cast<uint32_t>(__half2float(h[i])), "convert16 back %d", i);
    }
}

static void test_misc_kernels() {
    // math_mix against the same formulas in double.
    std::vector<float> x = random_floats(4 * 50, 3);
    std::vector<float> y(x.size(), -1.0f);
    const float4* xp = reinterpret_cast<const float4*>(x.data());
    float* yp = y.data();
    int64_t n4 = 50;
    void* args[] = {&xp, &yp, &n4};
    expect_ok("math_mix", dim3(2), dim3(32), 0, args);
    for (int i = 0; i < 50; ++i) {
        const double a = x[4 * i], b = x[4 * i + 1], c = x[4 * i + 2], d = x[4 * i + 3];
        const double want[4] = {
            0.5 * a * (1 + std::erf(a * 0.70710678)), b / (1 + std::exp(-b)),
            1 / std::sqrt(std::fabs(c) + 1) + std::tanh(c) + std::sqrt(std::max(c, 0.0)) + std::log(1 + std::fabs(c)),
            std::sqrt(std::fabs(d) + 1) + std::min(d, 1.0) + std::max(3, std::min(i, 5)) + std::exp(-std::fabs(d))};
        for (int k = 0; k < 4; ++k)
            CHECK(std::fabs(y[4 * i + k] - want[k]) < 1e-5, "math_mix %d.%d: %g vs %g", i, k, y[4 * i + k], want[k]);
    }

    // A 2-D block.
    std::vector<int> tin(128), tout(128, -1);
    for (int i = 0; i < 128; ++i) tin[i] = i;
    const int* tip = tin.data();
    int* top = tout.data();
    void* targs[] = {&tip, &top};
    expect_ok("transpose_tile", dim3(1), dim3(16, 8), 0, targs);
    for (int k = 0; k < 128; ++k) CHECK(tout[k] == (k % 8) * 16 + k / 8, "transpose_tile %d: %d", k, tout[k]);

    // A partial last warp used correctly.
    std::vector<int> pw(40, -1);
    int* pwp = pw.data();
    void* pargs[] = {&pwp};
    expect_ok("partial_warp_ok", dim3(1), dim3(40), 0, pargs);
    for (int t = 0; t < 40; ++t) CHECK(pw[t] == (t < 32 ? 16 : 4) * 1000 + (t ^ 1), "partial_warp_ok %d: %d", t, pw[t]);

    // Sub-warp masks used one after another.
    std::vector<int> sw(64, -1);
    int* swp = sw.data();
    void* sargs[] = {&swp};
    for (const char* k : {"subwarp_masks", "subwarp_masks_late"}) {
        std::fill(sw.begin(), sw.end(), -1);
        expect_ok(k, dim3(1), dim3(64), 0, sargs);
        for (int t = 0; t < 64; ++t) {
            const int l = t % 32, want = l < 16 ? l + 16 : (l - 16) ^ 1;
            CHECK(sw[t] == want, "%s %d: %d, want %d", k, t, sw[t], want);
        }
    }

    // No parameters: args may be NULL.
    CHECK(launch("noop", dim3(3, 2), dim3(4), 0, nullptr) == 0 && noop_calls == 6, "noop: %s, %d calls", err,
          noop_calls);

    // The second file's warp_sum is its own.
    std::vector<float> dv = {1, 2, 3};
    float* dvp = dv.data();
    int dn = 3;
    void* dargs[] = {&dvp, &dn};
    expect_ok("double_it", dim3(1), dim3(32), 0, dargs);
    CHECK(dv[0] == 2 && dv[1] == 4 && dv[2] == 6, "double_it: %g %g %g", dv[0], dv[1], dv[2]);
}

// Launches from several host threads at once (Rust runs tests in parallel): each is
// serialised, so the static __shared__ arrays of row_sum are not shared between them.
static void test_concurrent_launches() {
    std::vector<std::thread> hosts;
    std::atomic<int> bad{0};
    for (int h = 0; h < 4; ++h) {
        hosts.emplace_back([h, &bad] {
            for (int rep = 0; rep < 3; ++rep) {
                int cols = 100 + 37 * h + rep;
                const std::vector<float> x = random_floats(size_t(4) * cols, 100 * h + rep);
                std::vector<float> out(4);
                const float* xp = x.data();
                float* op = out.data();
                void* args[] = {&xp, &op, &cols};
                char e[512];
                if (kiln_emu_launch("row_sum", 4, 1, 1, 64, 1, 1, 0, args, e, sizeof e) != 0) ++bad;
                for (int r = 0; r < 4; ++r) {
                    double want = 0;
                    for (int c = 0; c < cols; ++c) want += x[size_t(r) * cols + c];
                    if (std::fabs(out[r] - want) > 1e-4) ++bad;
                }
            }
        });
    }
    for (std::thread& t : hosts) t.join();
    CHECK(bad == 0, "%d concurrent launches went wrong", bad.load());
}

// (f) (g) (h) and the other reported errors.
static void test_errors() {
    setenv("KILN_EMU_BARRIER_TIMEOUT_MS", "300", 1);
    std::vector<float> out(256, 0.0f);
    float* op = out.data();
    void* args1[] = {&op};

    // (f) a thread skips __syncthreads.
    expect_error("skip_sync", dim3(1), dim3(64), 0, args1, 2, {"kernel skip_sync", "__syncthreads", "test_kernels.cu:"});
    int n = 100;
    void* args2[] = {&op, &n};
    expect_error("early_return", dim3(2), dim3(64), 0, args2, 2, {"early_return", "returned"});
    expect_error("divergent_sync", dim3(1), dim3(64), 0, args1, 2, {"divergent_sync", "different calls"});
    // A true deadlock: ended by the timeout (300 ms here).
    expect_error("cross_wait", dim3(1), dim3(32), 0, args1, 2, {"deadlock in kernel cross_wait", "__syncthreads (test_kernels.cu:", "__shfl_down_sync (test_kernels.cu:"}, 2.0);

    // (g) shuffles in a partial warp (40 threads), and reading a lane outside the mask.
    std::vector<float> x(40 * 3, 1.0f), rs(3);
    const float* xp = x.data();
    float* rp = rs.data();
    int cols = 40;
    void* args3[] = {&xp, &rp, &cols};
    expect_error("row_sum", dim3(3), dim3(40), 0, args3, 2, {"__shfl_down_sync", "kernel row_sum", "do not exist"});
    std::vector<int> iv(32);
    int* ip = iv.data();
    void* args4[] = {&ip};
    expect_error("mixed_warp_ops", dim3(1), dim3(32), 0, args4, 2, {"mixed_warp_ops", "disagrees", "__ballot_sync", "__shfl_xor_sync"}, 0.2);
    expect_error("shfl_outside_mask", dim3(1), dim3(32), 0, args4, 2, {"shfl_outside_mask", "reads lane 16"});

    // __trap and C++ exceptions.
    std::vector<float> tx(100, 1.0f);
    tx[77] = -1.0f;
    const float* txp = tx.data();
    n = 100;
    void* args5[] = {&txp, &n};
    expect_error("trap_on_negative", dim3(4), dim3(32), 0, args5, 2, {"__trap()", "trap_on_negative", "block (2,0,0) thread (13,0,0)"});
    void* args6[] = {&n};
    expect_error("throws", dim3(1), dim3(8), 0, args6, 2, {"kernel throws", "bad n"});

    // (h) refused launches.
    expect_error("no_such_kernel", dim3(1), dim3(1), 0, args1, 1, {"unknown kernel 'no_such_kernel'"});
    expect_error("skip_sync", dim3(1), dim3(1025), 0, args1, 1, {"skip_sync", "1024"});
    expect_error("skip_sync", dim3(1), dim3(32, 32, 2), 0, args1, 1, {"skip_sync", "1024"});
    expect_error("skip_sync", dim3(0), dim3(32), 0, args1, 1, {"skip_sync", "empty"});
    expect_error("skip_sync", dim3(1), dim3(32), 0, nullptr, 1, {"args is NULL"});
    CHECK(kiln_emu_launch(nullptr, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, 0) == 1, "NULL name, NULL err");

    // After all those failures the emulator still works.
    unsetenv("KILN_EMU_BARRIER_TIMEOUT_MS");
    test_block_sum();
}

static void test_registry() {
    const int count = kiln_emu_kernel_count();
    bool found = false;
    for (int i = 0; i < count; ++i) found |= std::strcmp(kiln_emu_kernel_name(i), "row_sum") == 0;
    CHECK(count == 22 && found, "registry: %d kernels", count);
    CHECK(kiln_emu_kernel_name(count) == nullptr && kiln_emu_kernel_name(-1) == nullptr, "name out of range");
    CHECK(kiln_emu_kernel_num_params("atomics") == 6 && kiln_emu_kernel_num_params("nope") == -1, "num_params");
}

static void timing() {
    const int n = 64 * 256;
    const std::vector<float> x = random_floats(n, 1);
    std::vector<float> partial(64);
    const float* xp = x.data();
    float* pp = partial.data();
    int nn = n;
    void* args[] = {&xp, &pp, &nn};
    for (int block : {256, 1024}) {
        const int grid = n / block, reps = 5;
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < reps; ++r) expect_ok("block_sum", dim3(grid), dim3(block), 0, args);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
        std::printf("timing: block_sum, %d blocks x %d threads (%d barriers per block): %.1f ms per launch\n", grid,
                    block, 1 + std::countr_zero(unsigned(block)), ms);
    }
    std::vector<float> v(n, 1.0f);
    float* vp = v.data();
    void* eargs[] = {&vp, &nn};
    auto t1 = std::chrono::steady_clock::now();
    expect_ok("double_it", dim3(64), dim3(256), 0, eargs);
    std::printf("timing: double_it (elementwise, no barrier), 64 blocks x 256 threads: %.1f ms per launch\n",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count());
    std::vector<float> out(64);
    float* op = out.data();
    int cols = 256;
    void* rargs[] = {&xp, &op, &cols};
    const auto t0 = std::chrono::steady_clock::now();
    expect_ok("row_sum", dim3(64), dim3(256), 0, rargs);
    std::printf("timing: row_sum, 64 blocks x 256 threads (10 shuffles + 1 barrier): %.1f ms per launch\n",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

int main() {
    std::printf("block sums\n");
    test_block_sum();
    std::printf("row sums (warp shuffles)\n");
    test_row_sum();
    std::printf("warp op semantics\n");
    test_warp_ops();
    std::printf("atomics\n");
    test_atomics();
    std::printf("dynamic shared memory\n");
    test_dynamic_shared();
    std::printf("__half and __nv_bfloat16\n");
    test_16bit();
    std::printf("math, 2-D blocks, partial warps, two kernel files\n");
    test_misc_kernels();
    std::printf("concurrent launches\n");
    test_concurrent_launches();
    std::printf("errors\n");
    test_errors();
    test_registry();
    timing();
    if (failures) {
        std::printf("%d check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all emulator tests passed\n");
    return 0;
}
