// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include "config/units.h"

using namespace colod::config;
using namespace std::chrono_literals;

namespace {
std::string duration_error(std::string_view text) {
    auto result = parse_duration(text);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == colod::base::Errc::Invalid);
    return result.error().message();
}
std::string size_error(std::string_view text) {
    auto result = parse_size(text);
    REQUIRE_FALSE(result.ok());
    return result.error().message();
}
}  // namespace

TEST_CASE("durations parse in every unit", "[config][units]") {
    CHECK(parse_duration("250us").value() == 250us);
    CHECK(parse_duration("100ms").value() == 100ms);
    CHECK(parse_duration("3s").value() == 3s);
    CHECK(parse_duration("2m").value() == 2min);
    CHECK(parse_duration("0s").value() == 0us);
    CHECK(parse_duration("100 ms").value() == 100ms);
    CHECK(parse_duration(" 5s ").value() == 5s);
}

TEST_CASE("durations take exact fractions", "[config][units]") {
    CHECK(parse_duration("1.5s").value() == 1500ms);
    CHECK(parse_duration("0.1s").value() == 100ms);
    CHECK(parse_duration("1.1s").value() == 1100ms);  // exact: no floating point on the way
    CHECK(parse_duration("0.25m").value() == 15s);
    CHECK(parse_duration("1.001ms").value() == 1001us);
    CHECK(parse_duration("0.000001m").value() == 60us);
    CHECK(duration_error("0.5us") == "not a whole number of microseconds");
    CHECK(duration_error("1.0001ms") == "not a whole number of microseconds");
}

TEST_CASE("durations without a unit or with a bad one are refused", "[config][units]") {
    CHECK(duration_error("100") == "a duration needs a unit (us, ms, s or m), e.g. 100ms");
    const std::string rule = "not a duration: expected a number and a unit (us, ms, s or m), e.g. 100ms or 1.5s";
    CHECK(duration_error("") == rule);
    CHECK(duration_error("ms") == rule);
    CHECK(duration_error("10h") == rule);
    CHECK(duration_error("10 sec") == rule);
    CHECK(duration_error("10MS") == rule);
    CHECK(duration_error("-5s") == rule);
    CHECK(duration_error("+5s") == rule);
    CHECK(duration_error("1.s") == rule);
    CHECK(duration_error(".5s") == rule);
    CHECK(duration_error("1.5.2s") == rule);
    CHECK(duration_error("0x10s") == rule);
    CHECK(duration_error("99999999999999999999s") == rule);  // overflows while reading
    CHECK(duration_error("9999999999999999m") == "too large");
}

TEST_CASE("sizes parse with binary multiples", "[config][units]") {
    CHECK(parse_size("4096").value() == 4096);
    CHECK(parse_size("4096B").value() == 4096);
    CHECK(parse_size("4K").value() == 4096);
    CHECK(parse_size("4k").value() == 4096);
    CHECK(parse_size("256M").value() == 256ull << 20);
    CHECK(parse_size("256MiB").value() == 256ull << 20);
    CHECK(parse_size("256MB").value() == 256ull << 20);
    CHECK(parse_size("256 M").value() == 256ull << 20);
    CHECK(parse_size("2G").value() == 2ull << 30);
    CHECK(parse_size("1T").value() == 1ull << 40);
    CHECK(parse_size("1.5G").value() == 3ull << 29);
    CHECK(parse_size("0").value() == 0);
    CHECK(size_error("1.5") == "not a whole number of bytes");
    CHECK(size_error("0.1K") == "not a whole number of bytes");
    CHECK(size_error("20000000T") == "too large");
    const std::string rule = "not a size: expected a number with an optional K, M, G or T suffix, e.g. 256M";
    CHECK(size_error("") == rule);
    CHECK(size_error("M") == rule);
    CHECK(size_error("4X") == rule);
    CHECK(size_error("4Mb") == rule);
    CHECK(size_error("4MiBs") == rule);
    CHECK(size_error("4iB") == rule);
    CHECK(size_error("-4M") == rule);
}

TEST_CASE("durations format back in the same units", "[config][units]") {
    CHECK(format_duration(0us) == "0s");
    CHECK(format_duration(80us) == "80us");
    CHECK(format_duration(100ms) == "100ms");
    CHECK(format_duration(1500ms) == "1.5s");
    CHECK(format_duration(1234us) == "1.234ms");
    CHECK(format_duration(1234567us) == "1234.567ms");
    CHECK(format_duration(90s) == "90s");
    CHECK(format_duration(60s) == "60s");
    CHECK(format_duration(2min) == "2m");
    CHECK(format_duration(3s) == "3s");
    CHECK(format_duration(-50ms) == "-50ms");
    CHECK(format_duration(std::chrono::microseconds::min()).starts_with("-"));
}

TEST_CASE("sizes format back in the same units", "[config][units]") {
    CHECK(format_size(0) == "0B");
    CHECK(format_size(1025) == "1025B");
    CHECK(format_size(4096) == "4K");
    CHECK(format_size(1280) == "1.25K");
    CHECK(format_size(256ull << 20) == "256M");
    CHECK(format_size(3ull << 29) == "1.5G");
    CHECK(format_size(1ull << 40) == "1T");
    CHECK(format_size(2048ull << 40) == "2048T");
    CHECK(format_size(UINT64_MAX) == fmt::format("{}B", UINT64_MAX));
}

TEST_CASE("formatted values read back to the same value", "[config][units]") {
    for (int64_t us : {1LL, 999LL, 1000LL, 1001LL, 60'000'000LL, 61'000'000LL, 123'456'789LL, 3'600'000'000LL}) {
        const std::chrono::microseconds value(us);
        CAPTURE(us);
        CHECK(parse_duration(format_duration(value)).value() == value);
    }
    for (uint64_t bytes : {uint64_t{1}, uint64_t{1023}, uint64_t{1024}, uint64_t{1536}, uint64_t{4097},
                           uint64_t{1} << 30, (uint64_t{1} << 30) + 512, UINT64_MAX}) {
        CAPTURE(bytes);
        CHECK(parse_size(format_size(bytes)).value() == bytes);
    }
}
