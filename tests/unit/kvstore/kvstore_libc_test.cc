// SPDX-License-Identifier: GPL-2.0-or-later
// The guest's own memset/memcpy/memcmp/strlen (guests/kvstore/libc.c), built for the host under
// other names, against the C library's.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

extern "C" {
void* guest_memset(void* dst, int value, size_t len);
void* guest_memcpy(void* dst, const void* src, size_t len);
int guest_memcmp(const void* a, const void* b, size_t len);
size_t guest_strlen(const char* s);
}

namespace {
int sign(int v) {
    return (v > 0) - (v < 0);
}
}  // namespace

TEST_CASE("guest memcmp orders like the C library's at every length and offset", "[kvstore]") {
    std::mt19937 rng(3);
    for (size_t len = 0; len < 40; ++len) {
        for (size_t diff = 0; diff <= len; ++diff) {
            std::vector<unsigned char> a(len + 1), b(len + 1);
            for (size_t i = 0; i < len; ++i)
                a[i] = b[i] = static_cast<unsigned char>(rng());
            if (diff < len)
                b[diff] = static_cast<unsigned char>(a[diff] ^ (1u + rng() % 255));
            // Offset by one byte so the word loads are unaligned too.
            std::vector<unsigned char> a1(len + 1), b1(len + 1);
            std::memcpy(a1.data() + 1, a.data(), len);
            std::memcpy(b1.data() + 1, b.data(), len);
            CAPTURE(len, diff);
            CHECK(sign(guest_memcmp(a.data(), b.data(), len)) == sign(std::memcmp(a.data(), b.data(), len)));
            CHECK(sign(guest_memcmp(b.data(), a.data(), len)) == sign(std::memcmp(b.data(), a.data(), len)));
            CHECK(sign(guest_memcmp(a1.data() + 1, b1.data() + 1, len)) ==
                  sign(std::memcmp(a.data(), b.data(), len)));
        }
    }
    // Bytes compare as unsigned.
    unsigned char high = 0xff, low = 0x01;
    CHECK(guest_memcmp(&high, &low, 1) > 0);
}

TEST_CASE("guest memset, memcpy and strlen", "[kvstore]") {
    std::vector<unsigned char> buf(100, 0xaa);
    CHECK(guest_memset(buf.data() + 3, 0x5c, 50) == buf.data() + 3);
    for (size_t i = 0; i < buf.size(); ++i)
        CHECK(buf[i] == ((i >= 3 && i < 53) ? 0x5c : 0xaa));
    std::vector<unsigned char> dst(100, 0);
    CHECK(guest_memcpy(dst.data() + 1, buf.data(), 99) == dst.data() + 1);
    CHECK(std::memcmp(dst.data() + 1, buf.data(), 99) == 0);
    CHECK(dst[0] == 0);
    CHECK(guest_memcpy(dst.data(), buf.data(), 0) == dst.data());
    CHECK(guest_strlen("") == 0);
    CHECK(guest_strlen("kvstore") == 7);
}
