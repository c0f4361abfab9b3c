// SPDX-License-Identifier: GPL-2.0-or-later
// Big-endian byte writer and a bounds-checked reader over a span. Every decoder in proto/ reads
// through ByteReader so that no length from the wire is ever used before it is checked against
// the bytes actually present.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "proto/errors.h"

namespace colod::proto {

inline void store_be16(std::byte* out, uint16_t v) {
    out[0] = std::byte(v >> 8);
    out[1] = std::byte(v);
}
inline void store_be32(std::byte* out, uint32_t v) {
    for (int i = 0; i < 4; ++i)
        out[i] = std::byte(v >> (24 - 8 * i));
}
inline void store_be64(std::byte* out, uint64_t v) {
    for (int i = 0; i < 8; ++i)
        out[i] = std::byte(v >> (56 - 8 * i));
}
inline uint16_t load_be16(const std::byte* in) {
    return uint16_t((uint16_t(in[0]) << 8) | uint16_t(in[1]));
}
inline uint32_t load_be32(const std::byte* in) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
        v = (v << 8) | uint32_t(in[i]);
    return v;
}
inline uint64_t load_be64(const std::byte* in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v = (v << 8) | uint64_t(in[i]);
    return v;
}

// Appends big-endian fields to a byte vector. Writing cannot fail; limits on what may be
// written (string lengths, counts) are checked by the message encoders before they write.
class ByteWriter {
public:
    explicit ByteWriter(std::vector<std::byte>& out) : m_out(out) {}

    void u8(uint8_t v) { m_out.push_back(std::byte(v)); }
    void u16(uint16_t v) { store_be16(grow(2), v); }
    void u32(uint32_t v) { store_be32(grow(4), v); }
    void u64(uint64_t v) { store_be64(grow(8), v); }
    void bytes(std::span<const std::byte> b) {
        if (!b.empty())
            std::memcpy(grow(b.size()), b.data(), b.size());
    }
    void bytes(std::string_view s) { bytes(std::as_bytes(std::span(s.data(), s.size()))); }
    // Length-prefixed strings; the caller has checked the length fits the prefix.
    void str8(std::string_view s) {
        u8(uint8_t(s.size()));
        bytes(s);
    }
    void str16(std::string_view s) {
        u16(uint16_t(s.size()));
        bytes(s);
    }
    void zeros(size_t n) { std::memset(grow(n), 0, n); }
    size_t size() const { return m_out.size(); }

private:
    std::byte* grow(size_t n) {
        size_t at = m_out.size();
        m_out.resize(at + n);
        return m_out.data() + at;
    }
    std::vector<std::byte>& m_out;
};

// Reads big-endian fields from a span; every read checks the remaining length first and fails
// with Reason::Truncated naming the field ("what") that did not fit.
class ByteReader {
public:
    explicit ByteReader(std::span<const std::byte> in) : m_in(in) {}

    size_t remaining() const { return m_in.size() - m_at; }
    size_t offset() const { return m_at; }
    bool at_end() const { return m_at == m_in.size(); }

    base::Result<uint8_t> u8(std::string_view what) {
        TRY(need(1, what));
        return uint8_t(m_in[m_at++]);
    }
    base::Result<uint16_t> u16(std::string_view what) {
        TRY(need(2, what));
        uint16_t v = load_be16(m_in.data() + m_at);
        m_at += 2;
        return v;
    }
    base::Result<uint32_t> u32(std::string_view what) {
        TRY(need(4, what));
        uint32_t v = load_be32(m_in.data() + m_at);
        m_at += 4;
        return v;
    }
    base::Result<uint64_t> u64(std::string_view what) {
        TRY(need(8, what));
        uint64_t v = load_be64(m_in.data() + m_at);
        m_at += 8;
        return v;
    }
    base::Result<std::span<const std::byte>> bytes(size_t n, std::string_view what) {
        TRY(need(n, what));
        auto out = m_in.subspan(m_at, n);
        m_at += n;
        return out;
    }
    // A string with a one- or two-byte length prefix; longer than max_len is Reason::BadField.
    base::Result<std::string> str8(std::string_view what, size_t max_len) {
        uint8_t len = TRY(u8(what));
        return string_of(len, what, max_len);
    }
    base::Result<std::string> str16(std::string_view what, size_t max_len) {
        uint16_t len = TRY(u16(what));
        return string_of(len, what, max_len);
    }

private:
    base::Result<void> need(size_t n, std::string_view what) const {
        if (n > remaining())
            return error(Reason::Truncated, "{} needs {} bytes, {} left", what, n, remaining());
        return base::ok();
    }
    base::Result<std::string> string_of(size_t len, std::string_view what, size_t max_len) {
        if (len > max_len)
            return error(Reason::BadField, "{} is {} bytes long, the limit is {}", what, len, max_len);
        auto b = TRY(bytes(len, what));
        // SAFETY: std::byte and char have the same size and any bit pattern is a valid char.
        return std::string(reinterpret_cast<const char*>(b.data()), b.size());
    }

    std::span<const std::byte> m_in;
    size_t m_at = 0;
};

}  // namespace colod::proto
