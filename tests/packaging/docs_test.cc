// SPDX-License-Identifier: GPL-2.0-or-later
// The documentation and the code name the same things: every config key of the schema has a
// row in docs/config.md and every event of base/events.h a heading in docs/events.md, and
// neither file documents a key or an event the code does not have. Every COLOD_EVENT=VALUE
// that an operator may copy from the docs, man pages or units names a real event.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "tests/packaging/closed_events.h"

namespace fs = std::filesystem;

namespace {

const fs::path k_source = COLOD_SOURCE_DIR;

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    INFO("reading " << path);
    REQUIRE(in);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    return lines;
}

// "section.key" for every row of a key table in docs/config.md. A table belongs to the
// sections named in the "### `[section]`" heading above it (one heading may name several:
// "### `[primary]` and `[secondary]`"); a row's first cell is the key in backquotes.
std::set<std::string> documented_config_keys(const std::string& text) {
    static const std::regex section_name(R"(`\[([a-z]+)\]`)");
    static const std::regex key_row(R"(^\|\s*`([a-z][a-z0-9-]*)`\s*\|)");
    std::set<std::string> keys;
    std::vector<std::string> sections;
    for (const auto& line : lines_of(text)) {
        if (line.rfind("#", 0) == 0) {
            sections.clear();
            if (line.rfind("### ", 0) == 0)
                for (std::sregex_iterator it(line.begin(), line.end(), section_name), end; it != end; ++it)
                    sections.push_back((*it)[1]);
            continue;
        }
        std::smatch match;
        if (std::regex_search(line, match, key_row))
            for (const auto& section : sections)
                keys.insert(section + "." + match[1].str());
    }
    return keys;
}

// The events with a "### `name`" heading in docs/events.md.
std::set<std::string> documented_events(const std::string& text) {
    static const std::regex heading(R"(^### `([a-z-]+)`\s*$)");
    std::set<std::string> names;
    for (const auto& line : lines_of(text)) {
        std::smatch match;
        if (std::regex_match(line, match, heading))
            names.insert(match[1]);
    }
    return names;
}

std::string joined(const std::set<std::string>& names) {
    std::string out;
    for (const auto& name : names)
        out += (out.empty() ? "" : ", ") + name;
    return out.empty() ? "(none)" : out;
}

std::set<std::string> minus(const std::set<std::string>& a, const std::set<std::string>& b) {
    std::set<std::string> out;
    for (const auto& x : a)
        if (!b.count(x))
            out.insert(x);
    return out;
}

}  // namespace

TEST_CASE("the config parsers of the test read the doc's table layout", "[docs]") {
    const std::string sample =
        "# The config file\n| `stray` | not in a key section |\n"
        "### `[vm]`\n| key | type |\n|---|---|\n| `name` | name |\n| `memory` | size |\n"
        "### `[primary]` and `[secondary]`\n| `console` | endpoint |\n"
        "## Errors\n| `other` | not a key |\n";
    CHECK(documented_config_keys(sample) ==
          std::set<std::string>{"vm.name", "vm.memory", "primary.console", "secondary.console"});
    CHECK(documented_events("### `started`\n### `peer-lost`\n## `not-an-event`\n### started\n") ==
          std::set<std::string>{"started", "peer-lost"});
}

TEST_CASE("every config key is documented in docs/config.md, and nothing else is", "[docs]") {
    std::set<std::string> schema;
    for (const auto& key : colod::config::schema_keys())
        schema.insert(std::string(key.section) + "." + std::string(key.key));
    REQUIRE(schema.size() == colod::config::schema_keys().size());  // no key twice
    const auto documented = documented_config_keys(read_file(k_source / "docs" / "config.md"));
    INFO("in the schema but not documented: " << joined(minus(schema, documented)));
    INFO("documented but not in the schema: " << joined(minus(documented, schema)));
    CHECK(schema == documented);
}

TEST_CASE("every COLOD_EVENT value is documented in docs/events.md, and nothing else is", "[docs]") {
    const auto events = colod::test::closed_event_names();
    REQUIRE(events.size() > 10);
    const auto documented = documented_events(read_file(k_source / "docs" / "events.md"));
    INFO("in base/events.h but not documented: " << joined(minus(events, documented)));
    INFO("documented but not in base/events.h: " << joined(minus(documented, events)));
    CHECK(events == documented);
}

TEST_CASE("every COLOD_EVENT=VALUE in the docs, man pages and units names a real event", "[docs]") {
    const auto events = colod::test::closed_event_names();
    std::vector<fs::path> files{k_source / "README.md"};
    for (const char* dir : {"docs", "packaging/man", "packaging/systemd", "packaging/examples"})
        for (const auto& entry : fs::directory_iterator(k_source / dir))
            if (entry.is_regular_file())
                files.push_back(entry.path());
    // In roff a hyphen may be written "\-".
    static const std::regex reference(R"(COLOD_EVENT=((?:[a-z]|\\?-)+))");
    size_t references = 0;
    for (const auto& file : files) {
        const std::string text = read_file(file);
        for (std::sregex_iterator it(text.begin(), text.end(), reference), end; it != end; ++it) {
            std::string name = std::regex_replace((*it)[1].str(), std::regex(R"(\\-)"), "-");
            // A trailing hyphen is punctuation or a line break in the text, not the name's.
            while (!name.empty() && name.back() == '-')
                name.pop_back();
            INFO(file.string() << " says COLOD_EVENT=" << name);
            CHECK(events.count(name) == 1);
            ++references;
        }
    }
    // The operator guide and runbook show journalctl matches: the scan must have found them.
    CHECK(references >= 5);
}
