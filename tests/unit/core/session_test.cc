// SPDX-License-Identifier: GPL-2.0-or-later
// The replication session's sending: post() through the sender thread, post_now() from the
// caller when the link is idle; either way the peer reads the frames in the order they were
// posted, and post_now() never waits on a link that does not drain.
#include <catch2/catch.hpp>

#include <chrono>
#include <future>
#include <string>
#include <vector>

#include "core/session.h"

using namespace colod;
using namespace std::chrono_literals;

namespace {

proto::ConsoleInput numbered(uint64_t n) { return proto::ConsoleInput{n, std::string(proto::kMaxConsoleBytes, 'x')}; }

// The numbers of the next `count` console inputs the peer reads (heartbeats skipped).
std::vector<uint64_t> read_numbers(proto::Link& link, size_t count) {
    std::vector<uint64_t> numbers;
    while (numbers.size() < count) {
        auto frame = link.receive(proto::deadline_after(10s));
        REQUIRE(frame);
        auto message = frame->message();
        REQUIRE(message);
        if (const auto* input = std::get_if<proto::ConsoleInput>(&*message))
            numbers.push_back(input->epoch);
    }
    return numbers;
}

std::shared_ptr<core::Session> start(proto::Link link) {
    core::Session::Options options;
    options.heartbeat_interval = 1h;
    options.heartbeat_timeout = 1h;
    auto session = core::Session::start(std::move(link), options);
    REQUIRE(session);
    return std::move(session).value();
}

}  // namespace

TEST_CASE("post_now keeps the order of posts and never waits on a full link", "[session]") {
    auto ends = proto::Link::pair(64 << 10);
    REQUIRE(ends);
    auto& [mine, peer] = *ends;
    mine.set_authenticated(std::nullopt);
    peer.set_authenticated(std::nullopt);
    auto session = start(std::move(mine));

    // An idle link: written at once, in order with posts before and after.
    REQUIRE(session->post(numbered(1)));
    REQUIRE(session->post_now(numbered(2)));
    REQUIRE(session->post(numbered(3)));
    REQUIRE(session->post_now(numbered(4)));
    REQUIRE(session->flush(proto::deadline_after(10s)));
    CHECK(read_numbers(peer, 4) == std::vector<uint64_t>{1, 2, 3, 4});

    // The peer stops reading: the socket fills, post_now goes on returning at once (what the
    // link cannot take is queued, first in line when nothing else is), and every frame arrives
    // in order once the peer reads again.
    const uint64_t total = 200;  // 800 KiB: far more than the socket pair holds
    auto posting = std::async(std::launch::async, [&] {
        for (uint64_t n = 5; n < 5 + total; ++n)
            if (!(n % 3 ? session->post_now(numbered(n)) : session->post(numbered(n))))
                return false;
        return true;
    });
    REQUIRE(posting.wait_for(30s) == std::future_status::ready);
    CHECK(posting.get());
    std::vector<uint64_t> expected;
    for (uint64_t n = 5; n < 5 + total; ++n)
        expected.push_back(n);
    CHECK(read_numbers(peer, total) == expected);
    REQUIRE(session->flush(proto::deadline_after(10s)));
    CHECK_FALSE(session->failed());
    session->close();
}
