// SPDX-License-Identifier: GPL-2.0-or-later
// A small JSON reader (RFC 8259) for coloctl: `status --watch` reads the object the daemon's
// `status --json` writes (daemons/status_format.h) back into a core::Status. The tests use it
// too, on the Grafana dashboard that packaging/ installs.
//
// A document becomes a tree of JsonValue. Numbers keep their spelling, so that a counter above
// 2^53 is read exactly (as_u64) and not through a double. Objects keep their members in order;
// a key given twice is refused (JSON leaves that undefined, and a reader that picks one of them
// silently reads something the writer did not mean).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/result.h"
#include "core/status.h"

namespace colod::daemons {

class JsonValue {
public:
    enum class Kind { Null, Bool, Number, String, Array, Object };

    JsonValue() = default;
    static JsonValue null() { return JsonValue(); }
    static JsonValue boolean(bool value);
    static JsonValue number(std::string spelling);
    static JsonValue string(std::string text);
    static JsonValue array(std::vector<JsonValue> items);
    static JsonValue object(std::vector<std::pair<std::string, JsonValue>> members);

    Kind kind() const { return m_kind; }
    bool is(Kind kind) const { return m_kind == kind; }

    // A string's text (unescaped), or a number's spelling as written; empty for other kinds.
    const std::string& text() const { return m_text; }
    bool boolean_value() const { return m_bool; }
    // A number that is a whole, non-negative integer that fits; nullopt for anything else
    // (a fraction, an exponent, a sign, another kind).
    std::optional<uint64_t> as_u64() const;
    // Any number, as a double; nullopt for other kinds.
    std::optional<double> as_double() const;
    const std::vector<JsonValue>& items() const { return m_items; }
    const std::vector<std::pair<std::string, JsonValue>>& members() const { return m_members; }
    // An object's member, or nullptr when it has none of that name (or is not an object).
    const JsonValue* find(std::string_view key) const;

private:
    Kind m_kind = Kind::Null;
    bool m_bool = false;
    std::string m_text;
    std::vector<JsonValue> m_items;
    std::vector<std::pair<std::string, JsonValue>> m_members;
};

// One JSON document (whitespace around it allowed, nothing else after it). The error
// (Errc::Invalid) says what is wrong and at which byte. Nesting deeper than 64 levels is
// refused rather than followed down the stack.
base::Result<JsonValue> parse_json(std::string_view text);

// The object `status --json` writes, as a core::Status. The keys DESIGN.md promises must be
// there with the right types; the others (the ones status_json adds) are read when present, so
// that a daemon of an older version still answers; unknown keys are skipped (the daemon may
// add keys at any time). Fields the JSON does not carry (the pause histogram, sync progress,
// failovers) stay at their defaults.
base::Result<core::Status> status_from_json(std::string_view text);

}  // namespace colod::daemons
