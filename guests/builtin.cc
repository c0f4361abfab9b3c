// SPDX-License-Identifier: GPL-2.0-or-later
#include "guests/builtin.h"

#include <array>

// Emitted by the generated embed_<name>.S files (guests/CMakeLists.txt): the first byte of each
// embedded ELF and the byte after its last.
extern "C" {
extern const unsigned char colod_guest_kvstore_start[];
extern const unsigned char colod_guest_kvstore_end[];
}

namespace colod::guests {

namespace {

struct BuiltinGuest {
    std::string_view name;
    const unsigned char* start;
    const unsigned char* end;
};

const std::array<BuiltinGuest, 1> k_guests = {{
    {"kvstore", colod_guest_kvstore_start, colod_guest_kvstore_end},
}};

}  // namespace

std::optional<std::span<const std::byte>> builtin_image(std::string_view name) {
    if (name.starts_with(k_builtin_prefix))
        name.remove_prefix(k_builtin_prefix.size());
    for (const BuiltinGuest& guest : k_guests) {
        if (guest.name != name)
            continue;
        // SAFETY: start and end delimit one .incbin'd file inside .rodata; viewing read-only
        // bytes as std::byte is always allowed.
        auto* first = reinterpret_cast<const std::byte*>(guest.start);
        return std::span<const std::byte>(first, static_cast<size_t>(guest.end - guest.start));
    }
    return std::nullopt;
}

std::vector<std::string_view> builtin_names() {
    std::vector<std::string_view> names;
    names.reserve(k_guests.size());
    for (const BuiltinGuest& guest : k_guests)
        names.push_back(guest.name);
    return names;
}

}  // namespace colod::guests
