// SPDX-License-Identifier: GPL-2.0-or-later
// Guest images built with colod and embedded in it, so `image = builtin:NAME` in a VM's config
// needs no file at run time. The images are ELF64 executables for direct boot (guests/abi.h).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace colod::guests {

// The prefix of a config `image` value that names a built-in guest.
inline constexpr std::string_view k_builtin_prefix = "builtin:";

// The ELF bytes of the built-in guest `name` ("kvstore"; the config form "builtin:kvstore" is
// accepted too), or nullopt when there is no such guest. The bytes live in the program image:
// the span stays valid for the life of the process.
std::optional<std::span<const std::byte>> builtin_image(std::string_view name);

// Names of all built-in guests (without the prefix), for error messages and --help.
std::vector<std::string_view> builtin_names();

}  // namespace colod::guests
