// SPDX-License-Identifier: GPL-2.0-or-later
// Helper process for the cross-process snapshot test.
//   snapshot_tool BACKEND save FILE     boots kvstore, prints "PORT n", and on the stdin line
//                                       "save" pauses, writes FILE, prints "SAVED" and exits.
//   snapshot_tool BACKEND restore FILE  loads FILE into a fresh machine, starts it, prints
//                                       "PORT n" and runs until stdin closes.
#include <cstdio>
#include <iostream>
#include <string>

#include "core/guest_runtime.h"
#include "core/snapshot.h"
#include "core/state_sections.h"
#include "guests/builtin.h"

using namespace colod;

int main(int argc, char** argv) {
    if (argc != 4) {
        std::cerr << "usage: snapshot_tool BACKEND save|restore FILE\n";
        return 2;
    }
    std::string backend = argv[1], mode = argv[2], file = argv[3];
    auto image = guests::builtin_image("kvstore");
    core::RuntimeOptions options;
    options.machine.memory_bytes = 64ull << 20;
    options.machine.backend = backend;
    auto runtime = core::GuestRuntime::create(options);
    if (!runtime) {
        std::cerr << runtime.error().message() << "\n";
        return 1;
    }
    core::GuestRuntime& guest = **runtime;
    auto identity = core::machine_identity(guest.machine(), "snapshot-test", *image);
    if (mode == "save") {
        if (auto booted = guest.boot(*image, ""); !booted) {
            std::cerr << booted.error().message() << "\n";
            return 1;
        }
    } else if (auto loaded = core::load_snapshot(guest.machine(), identity, file); !loaded) {
        std::cerr << loaded.error().message() << "\n";
        return 1;
    }
    if (!guest.open_console() || !guest.start())
        return 1;
    std::cout << "PORT " << guest.console()->port() << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
        if (mode == "save" && line == "save") {
            auto paused = guest.machine().pause();
            if (auto saved = core::save_snapshot(guest.machine(), identity, file); !saved) {
                std::cerr << saved.error().message() << "\n";
                return 1;
            }
            std::cout << "SAVED" << std::endl;
            return 0;
        }
    }
    return 0;
}
