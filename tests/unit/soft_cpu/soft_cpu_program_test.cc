// SPDX-License-Identifier: GPL-2.0-or-later
// End to end: program/program.c, compiled freestanding with the guests' flags at -O2, -Os and
// -O3, runs in the interpreter and must print exactly what the same file prints when compiled
// into this test for the host. This is the test that finds missing or wrong opcodes in the code
// gcc really emits.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>

#include "tests/unit/soft_cpu/fake_bus.h"

using namespace colod::kvm::soft;
using namespace colod::kvm::soft::test;

namespace {
std::string g_host_output;
}

extern "C" void program_main(void);
extern "C" void program_emit(char c) { g_host_output.push_back(c); }

TEST_CASE("a freestanding C program prints what it prints on the host", "[soft_cpu][program]") {
    static const std::string expected = [] {
        program_main();
        return g_host_output;
    }();
    REQUIRE(expected.find("program end") != std::string::npos);

    const char* variant = GENERATE("O2", "Os", "O3");
    TestMachine m(std::string(SOFT_CPU_SNIPPETS) + "/stubs.bin");
    m.load_file(std::string(SOFT_CPU_PROGRAMS) + "/program_" + variant + ".bin");
    uint64_t executed = 0;
    Stop s;
    const auto t0 = std::chrono::steady_clock::now();
    do {
        s = m.run(1'000'000);
        executed += s.executed;
    } while (s.reason == StopReason::Budget && executed < 2'000'000'000);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO("variant -" << variant << ": " << executed << " instructions in " << seconds << " s ("
                     << executed / seconds / 1e6 << " M/s); stop detail: " << s.detail);
    CHECK(s.reason == StopReason::Halt);
    CHECK(m.record().count == 0);  // no exception was raised
    CHECK(m.bus.console() == expected);
    WARN("-" << variant << ": " << executed << " instructions, " << executed / seconds / 1e6
             << " M instructions/s");
}

TEST_CASE("the guest builds of the program contain no SSE or x87 code", "[soft_cpu][program]") {
    const char* variant = GENERATE("O2", "Os", "O3");
    const std::string command = std::string(SOFT_CPU_OBJDUMP) + " -d --no-show-raw-insn " +
                                SOFT_CPU_PROGRAMS + "/program_" + variant + ".elf";
    FILE* pipe = popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, pipe)) > 0)
        text.append(buf, n);
    REQUIRE(pclose(pipe) == 0);
    // Mnemonic histogram, for the record.
    std::map<std::string, int> histogram;
    std::istringstream lines(text);
    std::string line;
    int total = 0;
    while (std::getline(lines, line)) {
        const auto tab = line.find('\t');
        if (tab == std::string::npos || line.find(':') > tab)
            continue;
        std::istringstream fields(line.substr(tab + 1));
        std::string mnemonic;
        fields >> mnemonic;
        ++histogram[mnemonic];
        ++total;
    }
    std::string summary;
    for (const auto& [mnemonic, count] : histogram)
        summary += mnemonic + " " + std::to_string(count) + ", ";
    INFO("-" << variant << ": " << total << " instructions: " << summary);
    CHECK(total > 1000);
    CHECK(text.find("%xmm") == std::string::npos);
    CHECK(text.find("%ymm") == std::string::npos);
    CHECK(text.find("%st") == std::string::npos);
}
