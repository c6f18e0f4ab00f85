// Host versions of CUDA's 16-bit float types: __half (IEEE binary16) and __nv_bfloat16.
//
// Storage is the raw 16 bits, so arrays of them have the same layout as on the GPU and
// as Rust's half::f16 / half::bf16. Conversions from float round to nearest, ties to even,
// like cvt.rn on the GPU. NaN handling follows CUDA's own host fallback in cuda_fp16.hpp /
// cuda_bf16.hpp, so results match bit for bit: a float NaN becomes the canonical 0x7fff
// (sign dropped), and a half NaN widens to the canonical float NaN 0x7fffffff.
#pragma once

#include <bit>
#include <cstdint>

namespace kiln::emu {

inline uint16_t float_to_half_bits(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fff;         // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00;  // >= 65520 rounds to infinity (65504 is the max)

    // Keep `drop` low bits of the 24-bit significand m, rounding the rest to nearest even.
    auto round_shift = [](uint32_t m, uint32_t drop) -> uint32_t {
        if (drop >= 32) return 0;
        const uint32_t kept = m >> drop, rest = m & ((1u << drop) - 1), half = 1u << (drop - 1);
        return kept + (rest > half || (rest == half && (kept & 1u)));
    };
    const uint32_t e = a >> 23;
    if (e < 113) {  // below 2^-14: a half subnormal (in units of 2^-24) or zero
        if (e == 0) return sign;  // float subnormals are far below half's smallest subnormal
        // value = m * 2^(e-150) = m * 2^(e-126) units of 2^-24; e <= 112 so drop >= 14.
        // A carry out of the subnormal range yields 0x400, the smallest normal: still correct.
        return sign | round_shift((a & 0x7fffffu) | 0x800000u, 126 - e);
    }
    // Normal: rebias the exponent and round 23 mantissa bits to 10. A rounding carry runs
    // into the exponent field, which is exactly the next representable value.
    return sign | round_shift(((e - 112) << 23) | (a & 0x7fffffu), 13);
}

inline float half_bits_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return std::bit_cast<float>(m ? 0x7fffffffu : (sign | 0x7f800000u));
    if (e == 0) {  // zero or subnormal: m * 2^-24 is exact in float
        const float v = float(m) * 0x1p-24f;
        return sign ? -v : v;
    }
    return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
    // bf16 is the top half of a float: round the low 16 bits to nearest even. Overflow
    // carries into the exponent and produces infinity, as it should.
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_float(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

}  // namespace kiln::emu

// The types. Like CUDA's, they convert implicitly from and to float; arithmetic is done in
// float and rounded once, which is exactly what fp16/bf16 hardware gives for + - * /
// (float has more than 2p+2 bits of precision, so the double rounding is harmless).
#define KILN_EMU_16BIT_TYPE(T, TO_BITS, FROM_BITS)                                          \
    struct T {                                                                               \
        uint16_t __x;                                                                        \
        T() = default;                                                                       \
        T(float f) : __x(kiln::emu::TO_BITS(f)) {}                                           \
        operator float() const { return kiln::emu::FROM_BITS(__x); }                         \
        T& operator+=(T o) { return *this = T(float(*this) + float(o)); }                    \
        T& operator-=(T o) { return *this = T(float(*this) - float(o)); }                    \
        T& operator*=(T o) { return *this = T(float(*this) * float(o)); }                    \
        T& operator/=(T o) { return *this = T(float(*this) / float(o)); }                    \
        friend T operator+(T a, T b) { return T(float(a) + float(b)); }                      \
        friend T operator-(T a, T b) { return T(float(a) - float(b)); }                      \
        friend T operator*(T a, T b) { return T(float(a) * float(b)); }                      \
        friend T operator/(T a, T b) { return T(float(a) / float(b)); }                      \
        friend T operator-(T a) { T r; r.__x = uint16_t(a.__x ^ 0x8000u); return r; }        \
        friend bool operator==(T a, T b) { return float(a) == float(b); }                    \
        friend bool operator!=(T a, T b) { return float(a) != float(b); }                    \
        friend bool operator<(T a, T b) { return float(a) < float(b); }                      \
        friend bool operator<=(T a, T b) { return float(a) <= float(b); }                    \
        friend bool operator>(T a, T b) { return float(a) > float(b); }                      \
        friend bool operator>=(T a, T b) { return float(a) >= float(b); }                    \
    };                                                                                       \
    static_assert(sizeof(T) == 2 && alignof(T) == 2);

KILN_EMU_16BIT_TYPE(__half, float_to_half_bits, half_bits_to_float)
KILN_EMU_16BIT_TYPE(__nv_bfloat16, float_to_bf16_bits, bf16_bits_to_float)
#undef KILN_EMU_16BIT_TYPE

typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }

inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 b; b.__x = u; return b; }

inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
inline bool __hisnan(__nv_bfloat16 a) { return (a.__x & 0x7fffu) > 0x7f80u; }
