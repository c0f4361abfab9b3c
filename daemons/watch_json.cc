// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/watch_json.h"

#include <charconv>
#include <cstdlib>

namespace colod::daemons {

namespace {

constexpr int k_max_depth = 64;

// A recursive-descent reader over the whole text; m_at is the next byte to read.
class JsonReader {
public:
    explicit JsonReader(std::string_view text) : m_text(text) {}

    base::Result<JsonValue> document() {
        auto value = TRY(this->value(0));
        skip_space();
        if (m_at != m_text.size())
            return error("unexpected text after the value");
        return value;
    }

private:
    base::Error error(std::string_view what) const {
        return base::Error::make(base::Errc::Invalid, "JSON: {} at byte {}", what, m_at);
    }
    void skip_space() {
        while (m_at < m_text.size() &&
               (m_text[m_at] == ' ' || m_text[m_at] == '\t' || m_text[m_at] == '\n' || m_text[m_at] == '\r'))
            ++m_at;
    }
    bool take(char c) {
        if (m_at < m_text.size() && m_text[m_at] == c) {
            ++m_at;
            return true;
        }
        return false;
    }
    bool take_word(std::string_view word) {
        if (m_text.substr(m_at, word.size()) != word)
            return false;
        m_at += word.size();
        return true;
    }

    base::Result<JsonValue> value(int depth) {
        if (depth > k_max_depth)
            return error("nested too deeply");
        skip_space();
        if (m_at >= m_text.size())
            return error("a value is missing");
        char c = m_text[m_at];
        if (c == '{')
            return object(depth);
        if (c == '[')
            return array(depth);
        if (c == '"')
            return JsonValue::string(TRY(string()));
        if (c == '-' || (c >= '0' && c <= '9'))
            return number();
        if (take_word("true"))
            return JsonValue::boolean(true);
        if (take_word("false"))
            return JsonValue::boolean(false);
        if (take_word("null"))
            return JsonValue::null();
        return error("unexpected character");
    }

    base::Result<JsonValue> object(int depth) {
        ++m_at;  // {
        std::vector<std::pair<std::string, JsonValue>> members;
        skip_space();
        if (take('}'))
            return JsonValue::object(std::move(members));
        for (;;) {
            skip_space();
            if (m_at >= m_text.size() || m_text[m_at] != '"')
                return error("a member name (a string) is missing");
            std::string key = TRY(string());
            for (const auto& member : members)
                if (member.first == key)
                    return error(fmt::format("the key \"{}\" appears twice", key));
            skip_space();
            if (!take(':'))
                return error("':' is missing after a member name");
            auto member = TRY(value(depth + 1));
            members.emplace_back(std::move(key), std::move(member));
            skip_space();
            if (take('}'))
                return JsonValue::object(std::move(members));
            if (!take(','))
                return error("',' or '}' is missing in an object");
        }
    }

    base::Result<JsonValue> array(int depth) {
        ++m_at;  // [
        std::vector<JsonValue> items;
        skip_space();
        if (take(']'))
            return JsonValue::array(std::move(items));
        for (;;) {
            items.push_back(TRY(value(depth + 1)));
            skip_space();
            if (take(']'))
                return JsonValue::array(std::move(items));
            if (!take(','))
                return error("',' or ']' is missing in an array");
        }
    }

    // The grammar's number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    base::Result<JsonValue> number() {
        size_t start = m_at;
        take('-');
        auto digits = [&] {
            size_t first = m_at;
            while (m_at < m_text.size() && m_text[m_at] >= '0' && m_text[m_at] <= '9')
                ++m_at;
            return m_at - first;
        };
        size_t leading = m_at;
        size_t integer_digits = digits();
        if (integer_digits == 0)
            return error("a number has no digits");
        if (integer_digits > 1 && m_text[leading] == '0')
            return error("a number starts with 0");
        if (take('.') && digits() == 0)
            return error("a number has no digits after '.'");
        if (take('e') || take('E')) {
            if (!take('+'))
                take('-');
            if (digits() == 0)
                return error("a number has no digits in its exponent");
        }
        return JsonValue::number(std::string(m_text.substr(start, m_at - start)));
    }

    base::Result<uint32_t> hex4() {
        if (m_at + 4 > m_text.size())
            return error("a \\u escape is cut short");
        uint32_t code = 0;
        auto [end, ec] = std::from_chars(m_text.data() + m_at, m_text.data() + m_at + 4, code, 16);
        if (ec != std::errc() || end != m_text.data() + m_at + 4)
            return error("a \\u escape needs four hex digits");
        m_at += 4;
        return code;
    }

    static void append_utf8(std::string& out, uint32_t code) {
        if (code < 0x80) {
            out += static_cast<char>(code);
        } else if (code < 0x800) {
            out += static_cast<char>(0xc0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3f));
        } else if (code < 0x10000) {
            out += static_cast<char>(0xe0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (code & 0x3f));
        } else {
            out += static_cast<char>(0xf0 | (code >> 18));
            out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (code & 0x3f));
        }
    }

    // A string, the opening quote at m_at. Bytes of 0x80 and above are taken as they are (the
    // reader does not check UTF-8; nothing here depends on it).
    base::Result<std::string> string() {
        ++m_at;  // "
        std::string out;
        for (;;) {
            if (m_at >= m_text.size())
                return error("a string is not closed");
            char c = m_text[m_at++];
            if (c == '"')
                return out;
            if (static_cast<unsigned char>(c) < 0x20)
                return error("a control character inside a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (m_at >= m_text.size())
                return error("a string is not closed");
            switch (m_text[m_at++]) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                uint32_t code = TRY(hex4());
                if (code >= 0xd800 && code <= 0xdbff) {
                    // A high surrogate: its low half must follow as a second escape.
                    if (!take_word("\\u"))
                        return error("a high surrogate without its low half");
                    uint32_t low = TRY(hex4());
                    if (low < 0xdc00 || low > 0xdfff)
                        return error("a high surrogate without its low half");
                    code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                } else if (code >= 0xdc00 && code <= 0xdfff) {
                    return error("a low surrogate without its high half");
                }
                append_utf8(out, code);
                break;
            }
            default: return error("an unknown escape in a string");
            }
        }
    }

    std::string_view m_text;
    size_t m_at = 0;
};

// The status object's members, one type check at a time; the first problem is kept.
class StatusFields {
public:
    explicit StatusFields(const JsonValue& object) : m_object(object) {}

    enum class Need { Required, Optional };

    void text(std::string_view key, std::string& out, Need need) {
        const JsonValue* value = member(m_object, key, need);
        if (!value)
            return;
        if (!value->is(JsonValue::Kind::String))
            return fail(fmt::format("\"{}\" is not a string", key));
        out = value->text();
    }
    void count(std::string_view key, uint64_t& out, Need need) { count_in(m_object, key, key, out, need); }
    // A member of a nested object ("pause_us": {"p99": ...}).
    void count(std::string_view outer, std::string_view key, uint64_t& out, Need need) {
        const JsonValue* object = member(m_object, outer, need);
        if (!object)
            return;
        if (!object->is(JsonValue::Kind::Object))
            return fail(fmt::format("\"{}\" is not an object", outer));
        count_in(*object, key, fmt::format("{}.{}", outer, key), out, need);
    }

    base::Result<void> result() const {
        if (m_problem)
            return base::Error(base::Errc::Protocol, "the daemon's status: " + *m_problem);
        return base::ok();
    }

private:
    const JsonValue* member(const JsonValue& object, std::string_view key, Need need) {
        const JsonValue* value = object.find(key);
        if (!value && need == Need::Required)
            fail(fmt::format("\"{}\" is missing", key));
        return value;
    }
    void count_in(const JsonValue& object, std::string_view key, std::string_view name, uint64_t& out, Need need) {
        const JsonValue* value = member(object, key, need);
        if (!value)
            return;
        auto number = value->as_u64();
        if (!number)
            return fail(fmt::format("\"{}\" is not a whole number of 0 or more", name));
        out = *number;
    }
    void fail(std::string problem) {
        if (!m_problem)
            m_problem = std::move(problem);
    }

    const JsonValue& m_object;
    std::optional<std::string> m_problem;
};

}  // namespace

JsonValue JsonValue::boolean(bool value) {
    JsonValue v;
    v.m_kind = Kind::Bool;
    v.m_bool = value;
    return v;
}

JsonValue JsonValue::number(std::string spelling) {
    JsonValue v;
    v.m_kind = Kind::Number;
    v.m_text = std::move(spelling);
    return v;
}

JsonValue JsonValue::string(std::string text) {
    JsonValue v;
    v.m_kind = Kind::String;
    v.m_text = std::move(text);
    return v;
}

JsonValue JsonValue::array(std::vector<JsonValue> items) {
    JsonValue v;
    v.m_kind = Kind::Array;
    v.m_items = std::move(items);
    return v;
}

JsonValue JsonValue::object(std::vector<std::pair<std::string, JsonValue>> members) {
    JsonValue v;
    v.m_kind = Kind::Object;
    v.m_members = std::move(members);
    return v;
}

std::optional<uint64_t> JsonValue::as_u64() const {
    if (m_kind != Kind::Number)
        return std::nullopt;
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(m_text.data(), m_text.data() + m_text.size(), value);
    if (ec != std::errc() || end != m_text.data() + m_text.size())
        return std::nullopt;
    return value;
}

std::optional<double> JsonValue::as_double() const {
    if (m_kind != Kind::Number)
        return std::nullopt;
    // strtod and not from_chars: GCC 12's libstdc++ has from_chars for double, older ones do not.
    return std::strtod(m_text.c_str(), nullptr);
}

const JsonValue* JsonValue::find(std::string_view key) const {
    for (const auto& [name, value] : m_members)
        if (name == key)
            return &value;
    return nullptr;
}

base::Result<JsonValue> parse_json(std::string_view text) { return JsonReader(text).document(); }

base::Result<core::Status> status_from_json(std::string_view text) {
    auto document = parse_json(text);
    if (!document)
        return base::Error(base::Errc::Protocol, "the daemon's status: " + document.error().message());
    if (!document->is(JsonValue::Kind::Object))
        return base::Error(base::Errc::Protocol, "the daemon's status is not a JSON object");
    using Need = StatusFields::Need;
    core::Status s;
    StatusFields fields(*document);
    fields.text("vm", s.vm, Need::Required);
    fields.text("role", s.role, Need::Required);
    fields.text("mode", s.mode, Need::Required);
    fields.text("state", s.state, Need::Required);
    fields.count("seq", s.seq, Need::Required);
    fields.count("checkpoints", s.checkpoints, Need::Required);
    fields.count("pause_us", "last", s.pause_us.last, Need::Required);
    fields.count("pause_us", "p50", s.pause_us.p50, Need::Required);
    fields.count("pause_us", "p99", s.pause_us.p99, Need::Required);
    fields.count("pause_us", "max", s.pause_us.max, Need::Required);
    fields.count("dirty_pages", "last", s.dirty_pages.last, Need::Required);
    fields.count("dirty_pages", "total", s.dirty_pages.total, Need::Required);
    fields.count("bytes_sent", s.bytes_sent, Need::Required);
    fields.count("held_output_bytes", s.held_output_bytes, Need::Required);
    fields.text("peer", s.peer, Need::Required);
    fields.text("peer_state", s.peer_state, Need::Required);
    fields.text("backend", s.backend, Need::Optional);
    fields.text("guest", s.guest, Need::Optional);
    fields.count("uptime_ms", s.uptime_ms, Need::Optional);
    fields.count("console_clients", s.console_clients, Need::Optional);
    fields.count("checkpoints_mismatch", s.checkpoints_mismatch, Need::Optional);
    fields.count("checkpoints_interval", s.checkpoints_interval, Need::Optional);
    fields.count("compare_us", "p50", s.compare_us_p50, Need::Optional);
    fields.count("compare_us", "p99", s.compare_us_p99, Need::Optional);
    TRY(fields.result());
    return s;
}

}  // namespace colod::daemons
