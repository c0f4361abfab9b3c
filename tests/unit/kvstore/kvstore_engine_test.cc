// SPDX-License-Identifier: GPL-2.0-or-later
// The kvstore guest's protocol engine (guests/kvstore/kvstore.c), compiled for the host and
// driven line by line: every command, the line rules (length, CR LF, binary bytes, empty
// lines), INCR overflow, a full table, DIRTY/CHURN bounds and what they write into memory.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "guests/kvstore/kvstore.h"

namespace {

// What the engine wrote, one entry per kv_platform_write() call.
std::vector<std::string> g_writes;
uint64_t g_ticks = 0;

}  // namespace

extern "C" void kv_platform_write(const char* bytes, size_t len) {
    g_writes.emplace_back(bytes, len);
}

extern "C" uint64_t kv_platform_ticks(void) {
    return g_ticks;
}

namespace {

// Page-aligned host memory standing in for guest scratch RAM.
struct Scratch {
    explicit Scratch(size_t page_count) : pages(page_count) {
        // SAFETY: aligned_alloc's size is a multiple of the alignment, as it requires.
        base = static_cast<uint8_t*>(std::aligned_alloc(KV_PAGE_SIZE, page_count * KV_PAGE_SIZE));
        REQUIRE(base != nullptr);
        std::memset(base, 0, page_count * KV_PAGE_SIZE);
    }
    ~Scratch() { std::free(base); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;

    uint64_t first_word(size_t page) const {
        uint64_t v;
        std::memcpy(&v, base + page * KV_PAGE_SIZE, sizeof v);
        return v;
    }
    // True when every byte of the page after its first word is still zero.
    bool rest_untouched(size_t page) const {
        const uint8_t* p = base + page * KV_PAGE_SIZE;
        for (size_t i = sizeof(uint64_t); i < KV_PAGE_SIZE; ++i)
            if (p[i] != 0)
                return false;
        return true;
    }

    uint8_t* base;
    size_t pages;
};

class Engine {
public:
    Engine() {
        kv_reset();
        g_writes.clear();
        g_ticks = 0;
    }

    // Feeds raw bytes and returns everything written meanwhile, as separate writes.
    std::vector<std::string> feed(std::string_view bytes) {
        g_writes.clear();
        kv_feed(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
        return g_writes;
    }

    // Sends one line and returns its single reply without the '\n', after checking that there
    // was exactly one reply, written in one call, ending in exactly one '\n'.
    std::string cmd(std::string_view line) {
        std::string bytes(line);
        bytes += '\n';
        auto writes = feed(bytes);
        REQUIRE(writes.size() == 1);
        const std::string& reply = writes[0];
        REQUIRE(!reply.empty());
        REQUIRE(reply.back() == '\n');
        REQUIRE(reply.find('\n') == reply.size() - 1);
        return reply.substr(0, reply.size() - 1);
    }
};

bool is_error(const std::string& reply) {
    return reply.rfind("ERR ", 0) == 0;
}

}  // namespace

TEST_CASE("PING answers PONG, with any case and with CR LF", "[kvstore]") {
    Engine e;
    CHECK(e.cmd("PING") == "PONG");
    CHECK(e.cmd("ping") == "PONG");
    CHECK(e.cmd("PING\r") == "PONG");
    CHECK(e.cmd("  PING  ") == "PONG");
    CHECK(e.cmd("PING extra") == "ERR usage: PING");
    CHECK(e.cmd("PINGS") == "ERR unknown command");
}

TEST_CASE("SET, GET, overwrite, DEL", "[kvstore]") {
    Engine e;
    CHECK(e.cmd("GET colour") == "NIL");
    CHECK(e.cmd("SET colour blue") == "OK");
    CHECK(e.cmd("GET colour") == "blue");
    CHECK(e.cmd("SET colour red") == "OK");
    CHECK(e.cmd("GET colour") == "red");
    CHECK(kv_key_count() == 1);
    CHECK(e.cmd("DEL colour") == "OK");
    CHECK(e.cmd("GET colour") == "NIL");
    CHECK(e.cmd("DEL colour") == "OK");  // deleting a missing key is not an error
    CHECK(kv_key_count() == 0);

    SECTION("the value is the rest of the line, inner and trailing spaces included") {
        CHECK(e.cmd("SET greeting hello,  wide world ") == "OK");
        CHECK(e.cmd("GET greeting") == "hello,  wide world ");
        CHECK(e.cmd("SET  spaced    value") == "OK");
        CHECK(e.cmd("GET spaced") == "value");
    }
    SECTION("a CR before the LF is not part of the value") {
        CHECK(e.cmd("SET k v\r") == "OK");
        CHECK(e.cmd("GET k\r") == "v");
    }
    SECTION("keys are case-sensitive, commands are not") {
        CHECK(e.cmd("set Key upper") == "OK");
        CHECK(e.cmd("get key") == "NIL");
        CHECK(e.cmd("GET Key") == "upper");
    }
    SECTION("missing arguments") {
        CHECK(e.cmd("SET") == "ERR usage: SET key value");
        CHECK(e.cmd("SET k") == "ERR usage: SET key value");
        CHECK(e.cmd("SET k ") == "ERR usage: SET key value");
        CHECK(e.cmd("GET") == "ERR usage: GET key");
        CHECK(e.cmd("GET a b") == "ERR usage: GET key");
        CHECK(e.cmd("DEL") == "ERR usage: DEL key");
        CHECK(e.cmd("DEL a b") == "ERR usage: DEL key");
        CHECK(kv_key_count() == 0);
    }
}

TEST_CASE("INCR counts from 1, refuses non-integers and overflow", "[kvstore]") {
    Engine e;
    for (int i = 1; i <= 5; ++i)
        CHECK(e.cmd("INCR hits") == std::to_string(i));
    CHECK(e.cmd("GET hits") == "5");

    CHECK(e.cmd("SET word abc") == "OK");
    CHECK(is_error(e.cmd("INCR word")));
    CHECK(e.cmd("GET word") == "abc");

    CHECK(e.cmd("SET neg -5") == "OK");
    CHECK(e.cmd("INCR neg") == "-4");
    CHECK(e.cmd("SET zero -1") == "OK");
    CHECK(e.cmd("INCR zero") == "0");
    CHECK(e.cmd("SET padded 007") == "OK");
    CHECK(e.cmd("INCR padded") == "8");

    CHECK(e.cmd("SET big 9223372036854775806") == "OK");
    CHECK(e.cmd("INCR big") == "9223372036854775807");
    CHECK(e.cmd("INCR big") == "ERR increment would overflow");
    CHECK(e.cmd("GET big") == "9223372036854775807");

    CHECK(e.cmd("SET min -9223372036854775808") == "OK");
    CHECK(e.cmd("INCR min") == "-9223372036854775807");

    for (const char* bad : {"9223372036854775808", "-9223372036854775809", "+5", "5 ", "1.5", "-",
                            "0x10", "99999999999999999999999"}) {
        CAPTURE(bad);
        CHECK(e.cmd(std::string("SET bad ") + bad) == "OK");
        CHECK(e.cmd("INCR bad") == "ERR value is not an integer");
        CHECK(e.cmd("GET bad") == bad);
    }
    CHECK(e.cmd("INCR") == "ERR usage: INCR key");
    CHECK(e.cmd("INCR a b") == "ERR usage: INCR key");
}

TEST_CASE("INCR on the longest possible key still fits its record", "[kvstore]") {
    Engine e;
    std::string key(KV_LINE_MAX - 5, 'k');  // "INCR " + key = 512 bytes
    CHECK(e.cmd("SET " + key + " 1") == "ERR line too long");  // SET cannot make this key
    CHECK(e.cmd("INCR " + key) == "1");
    CHECK(e.cmd("INCR " + key) == "2");
    CHECK(e.cmd("GET " + key) == "2");
}

TEST_CASE("INFO reports ticks, keys and pages", "[kvstore]") {
    Engine e;
    Scratch scratch(8);
    REQUIRE(kv_scratch_add(scratch.base, scratch.pages) == 0);
    g_ticks = 1234;
    CHECK(e.cmd("INFO") == "ticks=1234 keys=0 pages=0");
    CHECK(e.cmd("SET a 1") == "OK");
    CHECK(e.cmd("SET b 2") == "OK");
    CHECK(e.cmd("DIRTY 3") == "OK 3");
    g_ticks = 18446744073709551615ull;
    CHECK(e.cmd("INFO") == "ticks=18446744073709551615 keys=2 pages=3");
    CHECK(e.cmd("info") == "ticks=18446744073709551615 keys=2 pages=3");
    CHECK(e.cmd("INFO now") == "ERR usage: INFO");
}

TEST_CASE("DIRTY writes a new value into n distinct pages across spans", "[kvstore]") {
    Engine e;
    Scratch a(10), b(5), c(7);
    REQUIRE(kv_scratch_add(a.base, a.pages) == 0);
    REQUIRE(kv_scratch_add(b.base, b.pages) == 0);
    REQUIRE(kv_scratch_add(c.base, 0) == 0);  // an empty span is ignored
    REQUIRE(kv_scratch_add(c.base, c.pages) == 0);
    REQUIRE(kv_scratch_pages() == 22);
    std::vector<Scratch*> spans = {&a, &b, &c};

    auto snapshot = [&] {
        std::vector<uint64_t> words;
        for (Scratch* s : spans)
            for (size_t p = 0; p < s->pages; ++p)
                words.push_back(s->first_word(p));
        return words;
    };
    auto changed_pages = [&](const std::vector<uint64_t>& before, const std::vector<uint64_t>& after) {
        size_t n = 0;
        for (size_t i = 0; i < before.size(); ++i)
            n += before[i] != after[i];
        return n;
    };

    CHECK(e.cmd("DIRTY 0") == "OK 0");
    auto before = snapshot();
    CHECK(e.cmd("DIRTY 22") == "OK 22");
    auto after = snapshot();
    CHECK(changed_pages(before, after) == 22);
    CHECK(kv_pages_dirtied() == 22);

    // The cursor carries on where the last command stopped and wraps; every page written in
    // one command is distinct, so n pages change even when the run crosses the end.
    CHECK(e.cmd("DIRTY 5") == "OK 5");
    before = snapshot();
    CHECK(e.cmd("DIRTY 20") == "OK 20");
    after = snapshot();
    CHECK(changed_pages(before, after) == 20);
    CHECK(kv_pages_dirtied() == 47);

    // Only the first word of a page is written.
    for (Scratch* s : spans)
        for (size_t p = 0; p < s->pages; ++p)
            CHECK(s->rest_untouched(p));

    SECTION("bounds and bad numbers") {
        CHECK(e.cmd("DIRTY 23") == "ERR page count exceeds scratch memory of 22 pages");
        CHECK(is_error(e.cmd("DIRTY -1")));
        CHECK(is_error(e.cmd("DIRTY abc")));
        CHECK(is_error(e.cmd("DIRTY 1x")));
        CHECK(is_error(e.cmd("DIRTY 18446744073709551616")));
        CHECK(is_error(e.cmd("DIRTY 99999999999999999999999")));
        CHECK(e.cmd("DIRTY") == "ERR usage: DIRTY pages");
        CHECK(e.cmd("DIRTY 1 2") == "ERR usage: DIRTY pages");
        CHECK(kv_pages_dirtied() == 47);
        CHECK(snapshot() == after);
    }
}

TEST_CASE("DIRTY and CHURN with no scratch memory accept only 0", "[kvstore]") {
    Engine e;
    CHECK(e.cmd("DIRTY 0") == "OK 0");
    CHECK(e.cmd("DIRTY 1") == "ERR page count exceeds scratch memory of 0 pages");
    CHECK(e.cmd("CHURN 0") == "OK");
    CHECK(is_error(e.cmd("CHURN 1")));
    CHECK_FALSE(kv_churn_due(5));
}

TEST_CASE("scratch spans must be page-aligned and are bounded in number", "[kvstore]") {
    Engine e;
    Scratch s(KV_SCRATCH_MAX_SPANS + 1);
    CHECK(kv_scratch_add(s.base + 8, 1) == -1);
    for (unsigned i = 0; i < KV_SCRATCH_MAX_SPANS; ++i)
        CHECK(kv_scratch_add(s.base + i * KV_PAGE_SIZE, 1) == 0);
    CHECK(kv_scratch_add(s.base + KV_SCRATCH_MAX_SPANS * KV_PAGE_SIZE, 1) == -1);
    CHECK(kv_scratch_pages() == KV_SCRATCH_MAX_SPANS);
}

TEST_CASE("CHURN dirties n pages once per new tick", "[kvstore]") {
    Engine e;
    Scratch s(16);
    REQUIRE(kv_scratch_add(s.base, s.pages) == 0);
    g_ticks = 100;
    CHECK(e.cmd("CHURN 4") == "OK");
    CHECK_FALSE(kv_churn_due(100));  // the tick that passed before the command owes nothing
    kv_churn(100);
    CHECK(kv_pages_dirtied() == 0);

    CHECK(kv_churn_due(101));
    kv_churn(101);
    CHECK(kv_pages_dirtied() == 4);
    CHECK_FALSE(kv_churn_due(101));
    kv_churn(101);  // no second round for the same tick
    CHECK(kv_pages_dirtied() == 4);

    // Falling behind by several ticks gives one round, not a backlog.
    kv_churn(110);
    CHECK(kv_pages_dirtied() == 8);

    // Rounds cycle through the scratch: after 16 pages every page changed.
    kv_churn(111);
    kv_churn(112);
    for (size_t p = 0; p < s.pages; ++p)
        CHECK(s.first_word(p) != 0);
    CHECK(kv_pages_dirtied() == 16);

    g_ticks = 113;
    CHECK(e.cmd("INFO") == "ticks=113 keys=0 pages=16");
    CHECK(e.cmd("CHURN 17") == "ERR page count exceeds scratch memory of 16 pages");
    CHECK(kv_churn_due(114));  // a refused CHURN leaves the running one alone
    CHECK(e.cmd("CHURN 16") == "OK");
    kv_churn(114);
    CHECK(kv_pages_dirtied() == 32);
    CHECK(e.cmd("CHURN 0") == "OK");
    CHECK_FALSE(kv_churn_due(200));
    kv_churn(200);
    CHECK(kv_pages_dirtied() == 32);
    CHECK(e.cmd("CHURN") == "ERR usage: CHURN pages");
    CHECK(is_error(e.cmd("CHURN x")));
}

TEST_CASE("line rules: length, CR LF, empty and binary lines", "[kvstore]") {
    Engine e;

    SECTION("a line of exactly 512 bytes is accepted, with or without CR") {
        std::string value(KV_LINE_MAX - 6, 'v');  // "SET k " + value = 512
        std::string line = "SET k " + value;
        REQUIRE(line.size() == KV_LINE_MAX);
        CHECK(e.cmd(line) == "OK");
        CHECK(e.cmd("GET k") == value);
        CHECK(e.cmd(line + "\r") == "OK");
    }
    SECTION("513 bytes is too long, also when a CR follows") {
        std::string line = "SET k " + std::string(KV_LINE_MAX - 5, 'v');
        REQUIRE(line.size() == KV_LINE_MAX + 1);
        CHECK(e.cmd(line) == "ERR line too long");
        CHECK(e.cmd(line + "\r") == "ERR line too long");
        CHECK(e.cmd("GET k") == "NIL");
    }
    SECTION("a 10000-byte line gets exactly one reply, and the next line is served") {
        auto writes = e.feed(std::string(10000, 'X') + "\nPING\n");
        REQUIRE(writes.size() == 2);
        CHECK(writes[0] == "ERR line too long\n");
        CHECK(writes[1] == "PONG\n");
    }
    SECTION("a long line fed one byte at a time still gets one reply at its end") {
        std::string line = "SET k " + std::string(20000, 'v');
        size_t replies = 0;
        for (char c : line)
            replies += e.feed(std::string_view(&c, 1)).size();
        CHECK(replies == 0);
        CHECK(e.feed("\n") == std::vector<std::string>{"ERR line too long\n"});
        CHECK(e.cmd("GET k") == "NIL");
    }
    SECTION("a CR at byte 513 followed by more bytes does not shorten the line") {
        std::string line = "SET k " + std::string(KV_LINE_MAX - 6, 'v') + "\rmore";
        CHECK(e.cmd(line) == "ERR line too long");
        CHECK(e.cmd("GET k") == "NIL");
    }
    SECTION("a too-long line with binary bytes is reported as too long") {
        CHECK(e.cmd(std::string(600, '\x01')) == "ERR line too long");
    }
    SECTION("empty lines") {
        CHECK(e.cmd("") == "ERR empty line");
        CHECK(e.cmd("\r") == "ERR empty line");
        CHECK(e.cmd("    ") == "ERR empty line");
    }
    SECTION("binary bytes anywhere make the line an error") {
        std::string garbage;
        for (int c = 1; c < 10; ++c)
            garbage += static_cast<char>(c);
        garbage += "\xff\xfe";
        CHECK(is_error(e.cmd(garbage)));
        CHECK(is_error(e.cmd(std::string("PING\0", 5))));
        CHECK(is_error(e.cmd(std::string("SET k a\0b", 9))));
        CHECK(is_error(e.cmd("SET k caf\xc3\xa9")));
        CHECK(is_error(e.cmd("SET k a\tb")));
        CHECK(is_error(e.cmd("SET k a\x7f")));
        CHECK(is_error(e.cmd("PING\r\r")));  // only one trailing CR is stripped
        CHECK(is_error(e.cmd("PI\rNG")));
        CHECK(e.cmd("GET k") == "NIL");
        CHECK(e.cmd("PING") == "PONG");
    }
    SECTION("unknown commands") {
        CHECK(e.cmd("FROBNICATE") == "ERR unknown command");
        CHECK(e.cmd("FROBNICATE a b c") == "ERR unknown command");
    }
}

TEST_CASE("input arrives in arbitrary pieces; each line gets its reply in order", "[kvstore]") {
    Engine e;
    auto writes = e.feed("SET a 1\nGET a\nPI");
    REQUIRE(writes.size() == 2);
    CHECK(writes[0] == "OK\n");
    CHECK(writes[1] == "1\n");
    writes = e.feed("NG\r");
    CHECK(writes.empty());
    writes = e.feed("\n\nINCR a\n");
    REQUIRE(writes.size() == 3);
    CHECK(writes[0] == "PONG\n");
    CHECK(writes[1] == "ERR empty line\n");
    CHECK(writes[2] == "2\n");

    SECTION("a client that left mid-line: the next newline ends that line") {
        CHECK(e.feed("SET half").empty());
        CHECK(e.cmd("") == "ERR usage: SET key value");
        CHECK(e.cmd("PING") == "PONG");
    }
}

TEST_CASE("the table holds exactly its capacity", "[kvstore]") {
    Engine e;
    for (unsigned i = 0; i < KV_TABLE_CAPACITY; ++i)
        REQUIRE(e.cmd("SET key" + std::to_string(i) + " v" + std::to_string(i)) == "OK");
    CHECK(kv_key_count() == KV_TABLE_CAPACITY);
    CHECK(e.cmd("SET one-more x") == "ERR table full");
    CHECK(e.cmd("INCR one-more") == "ERR table full");
    CHECK(e.cmd("GET one-more") == "NIL");
    CHECK(e.cmd("SET key7 overwritten") == "OK");  // existing keys can still change
    CHECK(e.cmd("GET key7") == "overwritten");
    CHECK(e.cmd("INCR key8") == "ERR value is not an integer");
    CHECK(e.cmd("DEL key9") == "OK");
    CHECK(e.cmd("SET one-more x") == "OK");
    CHECK(e.cmd("GET one-more") == "x");
    CHECK(e.cmd("SET two-more x") == "ERR table full");
    for (unsigned i = 0; i < KV_TABLE_CAPACITY; ++i) {
        if (i == 7 || i == 9)
            continue;
        REQUIRE(e.cmd("GET key" + std::to_string(i)) == "v" + std::to_string(i));
    }
    CHECK(e.cmd("INFO") == "ticks=0 keys=4096 pages=0");
}

TEST_CASE("random SET/GET/DEL/INCR agree with a reference map", "[kvstore]") {
    Engine e;
    std::map<std::string, std::string> reference;
    std::mt19937_64 rng(20240611);
    // More distinct keys than the table holds, so full-table replies and slot reuse happen too.
    const unsigned universe = KV_TABLE_CAPACITY + KV_TABLE_CAPACITY / 4;
    auto key_of = [&](unsigned i) { return "k" + std::to_string(i * 2654435761u % 1000003u); };

    for (int step = 0; step < 200000; ++step) {
        std::string key = key_of(static_cast<unsigned>(rng() % universe));
        unsigned op = static_cast<unsigned>(rng() % 10);
        INFO("step " << step << " op " << op << " key " << key);
        auto it = reference.find(key);
        if (op < 3) {
            std::string value = std::to_string(rng() % 1000) + (rng() % 4 == 0 ? " tail" : "");
            std::string reply = e.cmd("SET " + key + " " + value);
            if (it == reference.end() && reference.size() == KV_TABLE_CAPACITY) {
                REQUIRE(reply == "ERR table full");
            } else {
                REQUIRE(reply == "OK");
                reference[key] = value;
            }
        } else if (op < 6) {
            REQUIRE(e.cmd("GET " + key) == (it == reference.end() ? "NIL" : it->second));
        } else if (op < 8) {
            REQUIRE(e.cmd("DEL " + key) == "OK");
            reference.erase(key);
        } else {
            std::string reply = e.cmd("INCR " + key);
            if (it == reference.end()) {
                if (reference.size() == KV_TABLE_CAPACITY) {
                    REQUIRE(reply == "ERR table full");
                } else {
                    REQUIRE(reply == "1");
                    reference[key] = "1";
                }
            } else if (it->second.find(' ') != std::string::npos) {
                REQUIRE(reply == "ERR value is not an integer");
            } else {
                std::string expected = std::to_string(std::stoll(it->second) + 1);
                REQUIRE(reply == expected);
                it->second = expected;
            }
        }
        REQUIRE(kv_key_count() == reference.size());
    }
    // Everything the reference holds is still found after all the deletions' shifting.
    for (const auto& [key, value] : reference)
        REQUIRE(e.cmd("GET " + key) == value);
}

TEST_CASE("random byte streams: one reply per newline, never more, never malformed", "[kvstore]") {
    Engine e;
    Scratch s(4);
    REQUIRE(kv_scratch_add(s.base, s.pages) == 0);
    std::mt19937_64 rng(7);
    const std::vector<std::string> words = {"SET ", "GET ", "DEL ", "INCR ", "DIRTY ", "CHURN ",
                                            "INFO", "PING", " ", "1", "-1", "x", "\r", "\n"};
    for (int round = 0; round < 2000; ++round) {
        std::string input;
        size_t pieces = rng() % 64;
        for (size_t i = 0; i < pieces; ++i) {
            switch (rng() % 4) {
            case 0:
                input += static_cast<char>(rng() % 256);
                break;
            case 1:
                input.append(rng() % 700, static_cast<char>('a' + rng() % 26));
                break;
            default:
                input += words[rng() % words.size()];
            }
        }
        input += '\n';
        size_t newlines = static_cast<size_t>(std::count(input.begin(), input.end(), '\n'));
        size_t replies = 0;
        // Cut the input at random points to exercise partial lines.
        for (size_t pos = 0; pos < input.size();) {
            size_t len = std::min(input.size() - pos, static_cast<size_t>(1 + rng() % 300));
            for (const std::string& w : e.feed(std::string_view(input).substr(pos, len))) {
                REQUIRE(!w.empty());
                REQUIRE(w.back() == '\n');
                REQUIRE(w.find('\n') == w.size() - 1);
                ++replies;
            }
            pos += len;
        }
        REQUIRE(replies == newlines);
    }
    CHECK(e.cmd("PING") == "PONG");
}

TEST_CASE("every byte value is classified right at every position of a word", "[kvstore]") {
    Engine e;
    // The engine scans eight bytes at a time: put each byte at offsets around word boundaries.
    for (int value = 0; value < 256; ++value) {
        if (value == '\n')
            continue;
        for (size_t offset = 0; offset < 24; ++offset) {
            std::string line = "SET k " + std::string(offset, 'a') + static_cast<char>(value) + "bcdefghijklmnop";
            bool printable = value >= 0x20 && value <= 0x7e;
            CAPTURE(value, offset);
            std::string reply = e.cmd(line);
            if (printable)
                REQUIRE(reply == "OK");
            else
                REQUIRE(reply == "ERR binary data in line");
        }
    }
}

TEST_CASE("keys that differ in one byte anywhere are different keys", "[kvstore]") {
    Engine e;
    // Exercises the word-wise hash, key comparison and space scan on keys of many lengths.
    for (size_t len = 1; len <= 40; ++len) {
        std::string base(len, 'q');
        REQUIRE(e.cmd("SET " + base + " base") == "OK");
        for (size_t pos = 0; pos < len; ++pos) {
            std::string other = base;
            other[pos] = 'r';
            CAPTURE(len, pos);
            REQUIRE(e.cmd("GET " + other) == "NIL");
            REQUIRE(e.cmd("SET " + other + " " + std::to_string(pos)) == "OK");
            REQUIRE(e.cmd("GET " + other) == std::to_string(pos));
            REQUIRE(e.cmd("GET " + base) == "base");
            REQUIRE(e.cmd("DEL " + other) == "OK");
        }
        // A key that is a prefix of another is not found as the other.
        REQUIRE(e.cmd("GET " + base + "q") == "NIL");
    }
}
