// SPDX-License-Identifier: GPL-2.0-or-later
// Fixed-width, big-endian encoding of state bodies (vCPU, irqchip, devices). The reader never
// trusts the input: every read is bounds-checked, a failure is sticky, and finish() reports it
// together with any trailing bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "base/result.h"

namespace colod::core {

class StateWriter {
public:
    template <typename T>
        requires std::is_integral_v<T>
    void put(T value) {
        using U = std::make_unsigned_t<T>;
        U v = static_cast<U>(value);
        for (int shift = (sizeof(U) - 1) * 8; shift >= 0; shift -= 8)
            m_out.push_back(static_cast<std::byte>((v >> shift) & 0xff));
    }
    void put_bytes(std::span<const std::byte> bytes) { m_out.insert(m_out.end(), bytes.begin(), bytes.end()); }
    void put_raw(const void* data, size_t size) {
        put_bytes(std::span(static_cast<const std::byte*>(data), size));
    }
    // A length-prefixed (u32) byte string.
    void put_blob(std::span<const std::byte> bytes) {
        put(static_cast<uint32_t>(bytes.size()));
        put_bytes(bytes);
    }
    void put_string(std::string_view text) { put_blob(std::as_bytes(std::span(text.data(), text.size()))); }

    std::vector<std::byte>& bytes() { return m_out; }
    std::vector<std::byte> take() { return std::move(m_out); }

private:
    std::vector<std::byte> m_out;
};

class StateReader {
public:
    explicit StateReader(std::span<const std::byte> in) : m_in(in) {}

    template <typename T>
        requires std::is_integral_v<T>
    T get() {
        using U = std::make_unsigned_t<T>;
        if (!need(sizeof(U)))
            return T{};
        U v = 0;
        for (size_t i = 0; i < sizeof(U); ++i)
            v = static_cast<U>((v << 8) | static_cast<U>(m_in[m_pos + i]));
        m_pos += sizeof(U);
        return static_cast<T>(v);
    }
    template <typename T>
    void get_into(T& out) {
        out = get<T>();
    }
    void get_raw(void* out, size_t size) {
        if (!need(size)) {
            std::memset(out, 0, size);
            return;
        }
        std::memcpy(out, m_in.data() + m_pos, size);
        m_pos += size;
    }
    // A length-prefixed byte string of at most `max` bytes.
    std::vector<std::byte> get_blob(size_t max) {
        uint32_t size = get<uint32_t>();
        if (size > max) {
            fail(fmt::format("a field of {} bytes exceeds its limit of {}", size, max));
            return {};
        }
        if (!need(size))
            return {};
        std::vector<std::byte> out(m_in.begin() + static_cast<long>(m_pos), m_in.begin() + static_cast<long>(m_pos + size));
        m_pos += size;
        return out;
    }
    std::string get_string(size_t max) {
        auto blob = get_blob(max);
        return std::string(reinterpret_cast<const char*>(blob.data()), blob.size());
    }

    void fail(std::string why) {
        if (m_error.empty())
            m_error = std::move(why);
    }
    bool failed() const { return !m_error.empty(); }
    size_t remaining() const { return m_in.size() - m_pos; }

    // Ok only if every read succeeded and the input was consumed exactly.
    base::Result<void> finish(std::string_view what) const {
        if (!m_error.empty())
            return base::Error::make(base::Errc::Invalid, "{}: {}", what, m_error);
        if (m_pos != m_in.size())
            return base::Error::make(base::Errc::Invalid, "{}: {} unexpected trailing bytes", what, m_in.size() - m_pos);
        return base::ok();
    }

private:
    bool need(size_t size) {
        if (failed())
            return false;
        if (m_in.size() - m_pos < size) {
            fail(fmt::format("truncated at byte {} (needed {} more, {} left)", m_pos, size, m_in.size() - m_pos));
            return false;
        }
        return true;
    }

    std::span<const std::byte> m_in;
    size_t m_pos = 0;
    std::string m_error;
};

}  // namespace colod::core
