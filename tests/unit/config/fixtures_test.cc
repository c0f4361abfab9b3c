// SPDX-License-Identifier: GPL-2.0-or-later
// Every fixtures/bad-*.conf must fail with exactly the problems its "# expect: " lines list,
// in order. The expectations live in the fixture itself (as comments, which the parser skips),
// so a new case is a new file.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "config/config.h"

using namespace colod::config;

TEST_CASE("bad config fixtures fail with the messages they expect", "[config][fixtures]") {
    const std::filesystem::path fixtures = COLOD_CONFIG_FIXTURES;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(fixtures)) {
        const std::string name = entry.path().filename().string();
        if (name.starts_with("bad-") && name.ends_with(".conf"))
            files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    REQUIRE(files.size() >= 4);

    for (const auto& file : files) {
        const std::string name = file.filename().string();
        CAPTURE(name);
        std::ifstream in(file, std::ios::binary);
        std::stringstream text;
        text << in.rdbuf();
        std::string expected;
        std::string line;
        std::istringstream lines(text.str());
        while (std::getline(lines, line)) {
            constexpr std::string_view marker = "# expect: ";
            if (!line.starts_with(marker))
                continue;
            if (!expected.empty())
                expected += '\n';
            expected += line.substr(marker.size());
        }
        REQUIRE_FALSE(expected.empty());

        ParseOptions options;
        options.base_dir = fixtures;
        auto result = parse(text.str(), name, options);
        REQUIRE_FALSE(result.ok());
        CHECK(result.error().message() == expected);
    }
}
