// SPDX-License-Identifier: GPL-2.0-or-later
// CRC32C (Castagnoli), the checksum of every frame header and payload. Uses the SSE4.2 crc32
// instruction (three interleaved streams, so the instruction's latency is hidden, joined with
// PCLMULQDQ) when the CPU has both, and a slicing-by-8 table otherwise. Both give identical results; tests check that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace colod::proto {

enum class CrcImplementation { Hardware, Table };

// The implementation crc32c() uses on this CPU.
CrcImplementation crc32c_implementation();

// CRC32C of a whole buffer (standard: initial ~0, final xor ~0; "123456789" -> 0xE3069283).
uint32_t crc32c(std::span<const std::byte> data);

// Incremental form for data that arrives in pieces (gather lists, streamed frames):
//   Crc32c crc; crc.update(a); crc.update(b); crc.value() == crc32c(a || b)
class Crc32c {
public:
    explicit Crc32c(CrcImplementation impl = crc32c_implementation()) : m_impl(impl) {}
    void update(std::span<const std::byte> data);
    uint32_t value() const { return ~m_state; }

private:
    CrcImplementation m_impl;
    uint32_t m_state = ~0u;
};

}  // namespace colod::proto
