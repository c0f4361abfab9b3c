// SPDX-License-Identifier: GPL-2.0-or-later
// Rewrites the header checks and payload CRCs of a byte stream of frames so that mutated
// inputs get past the checksums and reach the decoders behind them. A fuzzer cannot guess a
// CRC; without this, nearly every mutation would stop at header-check or payload-crc (those
// paths are fuzzed too: the targets run without fix-up when the mode byte says so).
#pragma once

#include <cstddef>
#include <span>

#include "proto/crc32c.h"
#include "proto/frame.h"
#include "proto/wire.h"

namespace colod::proto::fuzz {

inline void fix_checksums(std::span<std::byte> stream) {
    while (stream.size() >= kHeaderSize) {
        store_be32(&stream[20], crc32c(stream.first(20)));
        size_t payload = load_be32(&stream[16]);
        size_t body = payload + kCrcSize + ((load_be16(&stream[6]) & 1) ? kMacSize : 0);
        if (stream.size() - kHeaderSize < body)
            return;
        store_be32(&stream[kHeaderSize + payload], crc32c(stream.subspan(kHeaderSize, payload)));
        stream = stream.subspan(kHeaderSize + body);
    }
}

}  // namespace colod::proto::fuzz
