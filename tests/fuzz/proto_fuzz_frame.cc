// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: the frame decoder over a byte stream (frame after frame), and the typed message
// decoder on every frame it accepts.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "proto/frame.h"
#include "proto/messages.h"

using namespace colod::proto;

// SAFETY (every cast below): the input is bytes; uint8_t and std::byte have the same size.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data), size);
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
