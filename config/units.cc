// SPDX-License-Identifier: GPL-2.0-or-later
#include "config/units.h"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <limits>

namespace colod::config {

namespace {

constexpr std::string_view k_duration_rule =
    "not a duration: expected a number and a unit (us, ms, s or m), e.g. 100ms or 1.5s";
constexpr std::string_view k_size_rule =
    "not a size: expected a number with an optional K, M, G or T suffix, e.g. 256M";

// "12.345" split into its digits. Both parts are kept as integers so that no value ever goes
// through floating point (1.1s must be exactly 1100000us).
struct Decimal {
    uint64_t whole = 0;
    uint64_t fraction = 0;      // the digits after the point, as an integer
    uint64_t fraction_scale = 1;  // 10^(number of digits after the point)
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view text) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t'))
        text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
        text.remove_suffix(1);
    return text;
}

// Reads a decimal number from the front of `text` and leaves the rest (the unit) in `rest`.
// Returns false on no digits, a dangling point, too many digits to be exact, or overflow.
bool read_decimal(std::string_view text, Decimal& out, std::string_view& rest) {
    size_t i = 0;
    bool any_digit = false;
    for (; i < text.size() && is_digit(text[i]); ++i) {
        any_digit = true;
        if (__builtin_mul_overflow(out.whole, 10u, &out.whole) ||
            __builtin_add_overflow(out.whole, static_cast<uint64_t>(text[i] - '0'), &out.whole))
            return false;
    }
    if (i < text.size() && text[i] == '.') {
        ++i;
        size_t fraction_digits = 0;
        for (; i < text.size() && is_digit(text[i]); ++i) {
            // Nine digits is finer than any unit we have (1us in minutes needs eight).
            if (++fraction_digits > 9)
                return false;
            out.fraction = out.fraction * 10 + static_cast<uint64_t>(text[i] - '0');
            out.fraction_scale *= 10;
        }
        if (fraction_digits == 0)
            return false;
    }
    if (!any_digit)
        return false;
    rest = trim(text.substr(i));
    return true;
}

enum class Exactness { Exact, NotWhole, Overflow };

// value = decimal × multiplier, exactly.
Exactness scale(const Decimal& decimal, uint64_t multiplier, uint64_t& value) {
    if (__builtin_mul_overflow(decimal.whole, multiplier, &value))
        return Exactness::Overflow;
    // fraction < 10^9 and multiplier ≤ 2^40 for every unit, so this fits in 128 bits easily.
    const unsigned __int128 fraction = static_cast<unsigned __int128>(decimal.fraction) * multiplier;
    if (fraction % decimal.fraction_scale != 0)
        return Exactness::NotWhole;
    const auto fraction_part = static_cast<uint64_t>(fraction / decimal.fraction_scale);
    if (__builtin_add_overflow(value, fraction_part, &value))
        return Exactness::Overflow;
    return Exactness::Exact;
}

struct Unit {
    std::string_view name;
    uint64_t multiplier;
};

constexpr std::array<Unit, 4> k_duration_units{{
    {"m", 60'000'000},
    {"s", 1'000'000},
    {"ms", 1'000},
    {"us", 1},
}};

constexpr std::array<Unit, 5> k_size_units{{
    {"T", uint64_t{1} << 40},
    {"G", uint64_t{1} << 30},
    {"M", uint64_t{1} << 20},
    {"K", uint64_t{1} << 10},
    {"B", 1},
}};

// "1234.5" from value/unit with at most three decimals; the caller checked exactness.
std::string format_scaled(unsigned __int128 value, uint64_t unit, std::string_view unit_name) {
    const unsigned __int128 thousandths = value * 1000 / unit;
    const auto whole = static_cast<uint64_t>(thousandths / 1000);
    auto fraction = static_cast<uint64_t>(thousandths % 1000);
    if (fraction == 0)
        return fmt::format("{}{}", whole, unit_name);
    int digits = 3;
    while (fraction % 10 == 0) {
        fraction /= 10;
        --digits;
    }
    return fmt::format("{}.{:0{}}{}", whole, fraction, digits, unit_name);
}

// Picks the largest unit in which the value is at least 1 and exact to three decimals.
// `whole_only` names a unit that reads badly with fractions or as a single one (not 1.5m but
// 90s, not 1m but 60s: the limits operators know are in seconds).
template <size_t N>
std::string format_with(unsigned __int128 value, const std::array<Unit, N>& units,
                        std::string_view whole_only) {
    for (const auto& unit : units) {
        if (value < unit.multiplier || (unit.name == whole_only && value <= unit.multiplier))
            continue;
        if (value % unit.multiplier == 0)
            return format_scaled(value, unit.multiplier, unit.name);
        if (unit.name == whole_only)
            continue;
        if ((value * 1000) % unit.multiplier == 0)
            return format_scaled(value, unit.multiplier, unit.name);
    }
    const auto& smallest = units.back();
    return format_scaled(value, smallest.multiplier, smallest.name);
}

}  // namespace

base::Result<std::chrono::microseconds> parse_duration(std::string_view text) {
    Decimal decimal;
    std::string_view unit_text;
    if (!read_decimal(trim(text), decimal, unit_text))
        return base::Error(base::Errc::Invalid, std::string(k_duration_rule));
    if (unit_text.empty())
        return base::Error(base::Errc::Invalid,
                           "a duration needs a unit (us, ms, s or m), e.g. 100ms");
    for (const auto& unit : k_duration_units) {
        if (unit_text != unit.name)
            continue;
        uint64_t value = 0;
        switch (scale(decimal, unit.multiplier, value)) {
        case Exactness::Exact:
            break;
        case Exactness::NotWhole:
            return base::Error(base::Errc::Invalid, "not a whole number of microseconds");
        case Exactness::Overflow:
            return base::Error(base::Errc::Invalid, "too large");
        }
        if (value > static_cast<uint64_t>(std::numeric_limits<std::chrono::microseconds::rep>::max()))
            return base::Error(base::Errc::Invalid, "too large");
        return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(value));
    }
    return base::Error(base::Errc::Invalid, std::string(k_duration_rule));
}

base::Result<uint64_t> parse_size(std::string_view text) {
    Decimal decimal;
    std::string_view unit_text;
    if (!read_decimal(trim(text), decimal, unit_text))
        return base::Error(base::Errc::Invalid, std::string(k_size_rule));
    uint64_t multiplier = 1;
    if (!unit_text.empty()) {
        std::string_view suffix = unit_text;
        const char prefix = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix.front())));
        bool found = false;
        for (const auto& unit : k_size_units) {
            if (unit.name.front() == prefix && unit.name != "B") {
                multiplier = unit.multiplier;
                suffix.remove_prefix(1);
                found = true;
                break;
            }
        }
        // After a multiple: nothing, B or iB. Without one: only B (bytes).
        const bool suffix_ok = found ? (suffix.empty() || suffix == "B" || suffix == "iB") : suffix == "B";
        if (!suffix_ok)
            return base::Error(base::Errc::Invalid, std::string(k_size_rule));
    }
    uint64_t value = 0;
    switch (scale(decimal, multiplier, value)) {
    case Exactness::Exact:
        return value;
    case Exactness::NotWhole:
        return base::Error(base::Errc::Invalid, "not a whole number of bytes");
    case Exactness::Overflow:
        break;
    }
    return base::Error(base::Errc::Invalid, "too large");
}

std::string format_duration(std::chrono::microseconds duration) {
    const auto count = duration.count();
    if (count == 0)
        return "0s";
    if (count < 0) {
        // Only differences of timestamps are negative; -(min) does not fit, so go through
        // the unsigned magnitude.
        const auto magnitude = static_cast<uint64_t>(-(count + 1)) + 1;
        // (fmt rather than "-" + string: GCC 12 at -O3 warns falsely about that concatenation)
        return fmt::format("-{}", format_with(magnitude, k_duration_units, "m"));
    }
    return format_with(static_cast<uint64_t>(count), k_duration_units, "m");
}

std::string format_size(uint64_t bytes) {
    if (bytes == 0)
        return "0B";
    return format_with(bytes, k_size_units, "");
}

}  // namespace colod::config
