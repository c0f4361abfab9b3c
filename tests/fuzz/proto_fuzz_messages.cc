// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: the control message decoders. The first byte picks the message type, the rest
// is the payload. Whatever decodes must encode and decode again to the same value.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "proto/messages.h"

using namespace colod::proto;

// SAFETY (every cast below): the input is bytes; uint8_t and std::byte have the same size.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1)
        return 0;
    auto type = static_cast<MessageType>(1 + data[0] % 12);
    std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data + 1), size - 1);
    auto message = decode_message(type, payload);
    if (!message)
        return 0;
    if (message_type(message.value()) != type)
        std::abort();
    auto again = decode_message(type, encode_message(message.value()));
    if (!again || !(again.value() == message.value()))
        std::abort();
    return 0;
}
