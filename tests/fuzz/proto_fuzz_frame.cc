// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: the frame decoder over a byte stream (frame after frame), and the typed message
// decoder on every frame it accepts. The first input byte is a mode: odd means "fix the
// checksums first" (so mutations reach the message decoders), even means "as is" (so the
// checksum checks themselves are fuzzed).
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "proto/frame.h"
#include "proto/messages.h"
#include "proto_fuzz_fixup.h"

using namespace colod::proto;

// SAFETY (every cast below): the input is bytes; uint8_t and std::byte have the same size.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1)
        return 0;
    std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), reinterpret_cast<const std::byte*>(data + size));
    if (data[0] & 1)
        fuzz::fix_checksums(bytes);
    std::span<const std::byte> rest(bytes);
    while (!rest.empty()) {
        auto frame = decode_frame(rest);
        if (!frame)
            break;
        // A decoded frame never claims more than the input holds.
        if (frame->size > rest.size() || frame->payload.size() != frame->header.payload_length)
            std::abort();
        if (frame->header.type != MessageType::VmstateSend)
            (void)decode_message(frame->header.type, frame->payload);
        rest = rest.subspan(frame->size);
    }
    return 0;
}
