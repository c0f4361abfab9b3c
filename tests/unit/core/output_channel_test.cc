// SPDX-License-Identifier: GPL-2.0-or-later
// Output channels on their own: what is held, when it goes out, in which pieces, and what the
// COLO comparison decides, for both framings.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/output_buffer.h"
#include "core/output_comparator.h"

using namespace colod::core;
using namespace std::chrono_literals;

namespace {

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

struct Released {
    std::vector<std::string> records;
    OutputChannel::ReleaseFn fn() {
        return [this](std::span<const std::byte> b) { records.emplace_back(reinterpret_cast<const char*>(b.data()), b.size()); };
    }
    std::string joined() const {
        std::string all;
        for (const auto& r : records)
            all += r;
        return all;
    }
};

}  // namespace

TEST_CASE("a held stream goes out when the checkpoint that sealed it commits", "[output]") {
    Released out;
    int limits = 0;
    OutputBuffer channel("console", Framing::Stream, out.fn(), 10, [&] { ++limits; });
    channel.put(bytes("before"));  // unprotected: straight out
    CHECK(out.joined() == "before");
    channel.protect(1);
    channel.put(bytes("ab"));
    channel.put(bytes("cd"));
    channel.captured(2);
    channel.put(bytes("ef"));
    CHECK(channel.held_bytes() == 6);
    CHECK(out.records.size() == 1);
    channel.committed(1);  // an older checkpoint: nothing of epoch 2 yet
    CHECK(out.records.size() == 1);
    channel.committed(2);
    REQUIRE(out.records.size() == 2);
    CHECK(out.records[1] == "abcd");  // a stream's pieces merge
    CHECK(channel.held_bytes() == 2);
    channel.put(bytes("0123456789"));  // crosses the limit: one call for a checkpoint
    channel.put(bytes("x"));
    CHECK(limits == 1);
    channel.release_all();  // no standby: everything out, in order
    CHECK(out.joined() == "beforeabcdef0123456789x");
    CHECK(channel.held_bytes() == 0);
    channel.put(bytes("!"));
    CHECK(out.records.back() == "!");
}

TEST_CASE("held datagrams go out as the records they were", "[output]") {
    Released out;
    OutputBuffer channel("net", Framing::Datagram, out.fn(), 1 << 20, {});
    channel.protect(1);
    channel.put(bytes("packet-1"));
    channel.put(bytes("packet-2"));
    channel.captured(3);
    channel.committed(3);
    CHECK(out.records == std::vector<std::string>{"packet-1", "packet-2"});
    channel.put(bytes("never-checkpointed"));
    channel.discard_all();  // the standby carries on from its checkpoint and says this again
    channel.release_all();
    CHECK(out.records.size() == 2);
}

TEST_CASE("compared streams go out as soon as both guests said the same", "[output]") {
    Released out;
    std::vector<OutputComparator::Verdict> verdicts;
    OutputComparator channel("console", Framing::Stream, out.fn(), 10s, 1 << 20,
                             [&](OutputComparator::Verdict v) { verdicts.push_back(v); });
    channel.protect(5);
    channel.put(bytes("hello "));
    CHECK(out.records.empty());
    channel.secondary(5, bytes("hel"));  // other pieces, same bytes
    channel.secondary(5, bytes("lo "));
    CHECK(out.joined() == "hello ");
    channel.secondary(4, bytes("stale"));  // an old epoch: dropped
    channel.put(bytes("abc"));
    channel.secondary(5, bytes("abd"));  // differ at the third byte
    REQUIRE(verdicts.size() == 1);
    CHECK(verdicts[0] == OutputComparator::Verdict::Mismatch);
    CHECK(out.joined() == "hello ab");  // what matched went out
    channel.put(bytes("more"));
    channel.captured(6);  // the checkpoint the mismatch asked for
    CHECK(channel.held_bytes() == 5);
    channel.committed(6);
    CHECK(out.joined() == "hello abcmore");
    CHECK(channel.held_bytes() == 0);
}

// The secondary's guest runs on from a checkpoint once it has loaded it, and its output can
// reach the primary before the primary has seen that checkpoint commit: what both guests said
// after a checkpoint must still go out after what was sealed by it.
TEST_CASE("compared output matched after a checkpoint waits for what that checkpoint sealed", "[output]") {
    for (Framing framing : {Framing::Stream, Framing::Datagram}) {
        Released out;
        OutputComparator channel("console", framing, out.fn(), 10s, 1 << 20, {});
        channel.protect(1);
        channel.put(bytes("O"));  // the secondary has not said it yet
        channel.captured(2);      // sealed as checkpoint 2
        channel.put(bytes("K 122\n"));
        channel.secondary(2, bytes("K 122\n"));  // both said it in epoch 2: matched
        CHECK(out.records.empty());               // but "O" is not out yet
        CHECK(channel.held_bytes() == 7);
        channel.put(bytes("more"));
        channel.captured(3);  // sealed behind the matched bytes
        channel.put(bytes("!"));
        channel.secondary(3, bytes("!"));
        channel.committed(2);
        CHECK(out.joined() == "OK 122\n");  // "more" waits for checkpoint 3, and "!" behind it
        channel.committed(3);
        CHECK(out.joined() == "OK 122\nmore!");
        CHECK(channel.held_bytes() == 0);
        channel.put(bytes("x"));
        channel.secondary(3, bytes("x"));  // nothing sealed waits: straight out
        CHECK(out.joined() == "OK 122\nmore!x");
        channel.put(bytes("y"));
        channel.captured(4);
        channel.put(bytes("z"));
        channel.secondary(4, bytes("z"));
        channel.release_all();  // no standby: everything held goes out, in order
        CHECK(out.joined() == "OK 122\nmore!xyz");
    }
}

TEST_CASE("compared datagrams are matched whole and in order", "[output]") {
    Released out;
    std::vector<OutputComparator::Verdict> verdicts;
    OutputComparator channel("net", Framing::Datagram, out.fn(), 10s, 1 << 20,
                             [&](OutputComparator::Verdict v) { verdicts.push_back(v); });
    channel.protect(1);
    channel.put(bytes("syn"));
    channel.put(bytes("data"));
    channel.secondary(1, bytes("syn"));
    CHECK(out.records == std::vector<std::string>{"syn"});
    channel.secondary(1, bytes("dat"));  // a different packet at the same place
    REQUIRE(verdicts.size() == 1);
    CHECK(verdicts[0] == OutputComparator::Verdict::Mismatch);
    CHECK(out.records.size() == 1);
    channel.captured(2);
    channel.committed(2);
    CHECK(out.records == std::vector<std::string>{"syn", "data"});
}

TEST_CASE("a standby that falls behind asks for a checkpoint", "[output]") {
    Released out;
    std::vector<OutputComparator::Verdict> verdicts;
    OutputComparator lagging("console", Framing::Stream, out.fn(), 0us, 1 << 20,
                             [&](OutputComparator::Verdict v) { verdicts.push_back(v); });
    lagging.protect(1);
    lagging.put(bytes("waiting"));
    lagging.check_lag();
    lagging.check_lag();  // one verdict until the checkpoint
    CHECK(verdicts == std::vector{OutputComparator::Verdict::Behind});
    OutputComparator full("console", Framing::Stream, out.fn(), 10s, 4,
                          [&](OutputComparator::Verdict v) { verdicts.push_back(v); });
    full.protect(1);
    full.put(bytes("12345"));  // more than max-held
    CHECK(verdicts.back() == OutputComparator::Verdict::Behind);
    CHECK(verdicts.size() == 2);
}
