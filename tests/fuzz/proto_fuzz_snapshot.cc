// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: snapshot file decoding (file header, frames, HELLO identity, state sections).
#include <cstdint>
#include <cstdlib>
#include <span>

#include "proto/state.h"

using namespace colod::proto;

// SAFETY (every cast below): the input is bytes; uint8_t and std::byte have the same size.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
    auto snapshot = decode_snapshot(file);
    if (!snapshot)
        return 0;
    for (const auto& piece : snapshot->pieces)
        if (auto* run = std::get_if<PageRun>(&piece))
            if (run->data.data() < file.data() || run->data.data() + run->data.size() > file.data() + file.size() ||
                run->first_page + run->count > snapshot->identity.page_count())
                std::abort();
    return 0;
}
