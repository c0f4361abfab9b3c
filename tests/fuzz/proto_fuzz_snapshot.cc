// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: snapshot file decoding (file header, frames, HELLO identity, state sections).
// The first input byte is a mode: odd means "fix the frame checksums first" (so mutations
// reach the HELLO and section decoders), even means "as is".
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "proto/state.h"
#include "proto_fuzz_fixup.h"

using namespace colod::proto;

// SAFETY (every cast below): the input is bytes; uint8_t and std::byte have the same size.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1)
        return 0;
    std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), reinterpret_cast<const std::byte*>(data + size));
    if ((data[0] & 1) && bytes.size() > kSnapshotHeaderSize)
        fuzz::fix_checksums(std::span(bytes).subspan(kSnapshotHeaderSize));
    std::span<const std::byte> file(bytes);
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
