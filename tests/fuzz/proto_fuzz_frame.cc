// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: the frame decoder over a byte stream (frame after frame), and the typed message
// decoder on every frame it accepts. Frames flagged Tag or Sealed go through the opening path
// of a session with link security first (FrameCipher: begin, open in pieces, finish_open), and
// only a frame whose tag checks reaches the message decoder, as on the link. The first input
// byte is a mode: odd means "fix the checksums first, and seal tagged frames" (so mutations
// reach the message decoders), even means "as is" (so the checksum and tag checks themselves
// are fuzzed).
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "proto/frame.h"
#include "proto/link_crypto.h"
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
    std::vector<std::byte> opened;
    while (!rest.empty()) {
        auto frame = decode_frame(rest);
        if (!frame)
            break;
        // A decoded frame never claims more than the input holds.
        if (frame->size > rest.size() || frame->payload.size() != frame->header.payload_length)
            std::abort();
        std::span<const std::byte> payload = frame->payload;
        if (frame->header.tagged()) {
            if (frame->tag.size() != kTagSize)
                std::abort();
            // Opened in uneven pieces, in place, as the link does with what each recv brings.
            FrameCipher& opener = fuzz::FuzzSession::instance().opener(frame->header.flags);
            opened.assign(payload.begin(), payload.end());
            std::span<const std::byte, kHeaderSize> header(rest.data(), kHeaderSize);
            bool ok = opener.begin(frame->header.sequence, header).ok();
            for (size_t at = 0; ok && at < opened.size(); at += 1 + at % 4093)
                ok = opener.open(std::span(opened).subspan(at, std::min(opened.size() - at, 1 + at % 4093))).ok();
            ok = ok && opener.finish_open(std::span<const std::byte, kTagSize>(frame->tag.data(), kTagSize)).ok();
            if (!ok) {
                rest = rest.subspan(frame->size);
                continue;  // refused, as the link refuses it
            }
            payload = opened;
        }
        if (frame->header.type != MessageType::VmstateSend)
            (void)decode_message(frame->header.type, payload);
        rest = rest.subspan(frame->size);
    }
    return 0;
}
