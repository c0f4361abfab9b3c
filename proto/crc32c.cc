// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/crc32c.h"

#include <algorithm>
#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#include <wmmintrin.h>
#endif

namespace colod::proto {

namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // reflected Castagnoli polynomial

using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables make_tables() {
    Tables t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k)
            c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
        t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
        for (size_t s = 1; s < 8; ++s)
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    return t;
}

constexpr Tables kTables = make_tables();

uint64_t load_le64(const std::byte* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // x86-64 is little-endian; the table walk below assumes it
    return v;
}

uint32_t update_table(uint32_t crc, const std::byte* p, size_t n) {
    while (n >= 8) {
        uint64_t v = load_le64(p) ^ crc;
        crc = kTables[7][v & 0xff] ^ kTables[6][(v >> 8) & 0xff] ^ kTables[5][(v >> 16) & 0xff] ^
              kTables[4][(v >> 24) & 0xff] ^ kTables[3][(v >> 32) & 0xff] ^
              kTables[2][(v >> 40) & 0xff] ^ kTables[1][(v >> 48) & 0xff] ^ kTables[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ kTables[0][(crc ^ uint32_t(*p++)) & 0xff];
    return crc;
}

#if defined(__x86_64__)

// a * b modulo the polynomial, both in the reflected bit order CRC registers use.
uint32_t multiply_mod_poly(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
        if (a & bit)
            product ^= b;
        b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
    }
    return product;
}

// x^k modulo the polynomial.
uint32_t x_power(uint64_t k) {
    uint32_t result = 1u << 31;  // x^0
    uint32_t power = 1u << 30;   // x^1, squared below to x^2, x^4, ...
    while (k) {
        if (k & 1)
            result = multiply_mod_poly(result, power);
        power = multiply_mod_poly(power, power);
        k >>= 1;
    }
    return result;
}

// Three streams run side by side over three equal lanes; their registers are joined by
// shifting the earlier ones over the later lanes: register(A||B) = register(A)·x^(8|B|) ^
// register0(B). The shift is a carry-less multiply by a precomputed x^(8|B| - 33), reduced by
// the crc32 instruction itself (which multiplies by x^32; the other power comes from the
// bit order of the carry-less product). Lanes are a multiple of 64 bytes up to 4 KiB, so a
// single 4 KiB page (the common gather piece) gets the three-stream speed too.
constexpr size_t kLaneUnit = 64;
constexpr size_t kMaxLaneUnits = 64;  // lanes up to 4 KiB

struct LaneOperators {
    uint32_t one[kMaxLaneUnits + 1];  // shifts over one lane of units * 64 bytes
    uint32_t two[kMaxLaneUnits + 1];  // shifts over two lanes
    LaneOperators() {
        for (size_t units = 1; units <= kMaxLaneUnits; ++units) {
            one[units] = x_power(8 * units * kLaneUnit - 33);
            two[units] = x_power(16 * units * kLaneUnit - 33);
        }
    }
};
const LaneOperators kLaneOperators;

__attribute__((target("sse4.2,pclmul"))) inline uint32_t shift_register(uint32_t reg, uint32_t op) {
    __m128i product = _mm_clmulepi64_si128(_mm_cvtsi32_si128(int(reg)), _mm_cvtsi32_si128(int(op)), 0);
    return uint32_t(_mm_crc32_u64(0, uint64_t(_mm_cvtsi128_si64(product))));
}

__attribute__((target("sse4.2,pclmul"))) uint32_t update_hardware(uint32_t crc, const std::byte* p,
                                                           size_t n) {
    uint64_t c0 = crc;
    while (n >= 3 * kLaneUnit) {
        size_t units = std::min(kMaxLaneUnits, n / (3 * kLaneUnit));
        size_t lane = units * kLaneUnit;
        uint64_t c1 = 0, c2 = 0;
        const std::byte* a = p;
        const std::byte* b = p + lane;
        const std::byte* c = p + 2 * lane;
        for (size_t i = 0; i < lane; i += 8) {
            c0 = _mm_crc32_u64(c0, load_le64(a + i));
            c1 = _mm_crc32_u64(c1, load_le64(b + i));
            c2 = _mm_crc32_u64(c2, load_le64(c + i));
        }
        c0 = shift_register(uint32_t(c0), kLaneOperators.two[units]) ^
             shift_register(uint32_t(c1), kLaneOperators.one[units]) ^ uint32_t(c2);
        p += 3 * lane;
        n -= 3 * lane;
    }
    while (n >= 8) {
        c0 = _mm_crc32_u64(c0, load_le64(p));
        p += 8;
        n -= 8;
    }
    uint32_t c32 = uint32_t(c0);
    while (n--)
        c32 = _mm_crc32_u8(c32, uint8_t(*p++));
    return c32;
}

bool cpu_has_sse42() {
    static const bool has = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("pclmul");
    return has;
}
#endif

}  // namespace

CrcImplementation crc32c_implementation() {
#if defined(__x86_64__)
    if (cpu_has_sse42())
        return CrcImplementation::Hardware;
#endif
    return CrcImplementation::Table;
}

void Crc32c::update(std::span<const std::byte> data) {
#if defined(__x86_64__)
    if (m_impl == CrcImplementation::Hardware && cpu_has_sse42()) {
        m_state = update_hardware(m_state, data.data(), data.size());
        return;
    }
#endif
    m_state = update_table(m_state, data.data(), data.size());
}

uint32_t crc32c(std::span<const std::byte> data) {
    Crc32c crc;
    crc.update(data);
    return crc.value();
}

}  // namespace colod::proto
