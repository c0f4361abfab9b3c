// SPDX-License-Identifier: GPL-2.0-or-later
// The replication engines on their own, without daemons: each engine drives a real guest (the
// kvstore guest on the test backend) and talks the real protocol to a scripted peer
// (fake_peers.h) over a real link. Every transition of both state tables is taken on purpose
// here, and the last test checks that none was missed; refusals, timeouts and failover
// decisions are each caused, not waited for.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "core/active_engine.h"
#include "core/standby_engine.h"
#include "core/state_sections.h"
#include "core/status.h"
#include "tests/unit/engine/fake_peers.h"

using namespace colod;
using namespace colod::test;
using namespace std::chrono_literals;
using ActiveState = core::ActiveEngine::State;
using StandbyState = core::StandbyEngine::State;
using Script = FakeStandby::Script;

namespace {

// Transitions taken by any engine in this run, for the coverage check at the end.
std::mutex g_seen_mutex;
std::set<std::pair<int, int>> g_active_seen, g_standby_seen;
int g_cases_run = 0;
constexpr int k_transition_cases = 16;  // the test cases below that take transitions

struct CaseCounter {
    CaseCounter() {
        std::lock_guard lock(g_seen_mutex);
        ++g_cases_run;
    }
};

core::ReplicationConfig engine_config(core::ReplicationMode mode = core::ReplicationMode::Checkpoint) {
    core::ReplicationConfig c;
    c.vm_name = "engine-test";
    c.role = "primary";
    c.self_address = "127.0.0.1:0";
    c.peer_address = "the scripted peer";
    c.key = engine_test_key();
    c.mode = mode;
    c.checkpoint_interval = 50ms;
    c.heartbeat_interval = 20ms;
    c.heartbeat_timeout = scaled(std::chrono::microseconds(1'000'000));
    c.connect_retry = 200ms;
    c.ack_timeout = scaled(std::chrono::milliseconds(5'000));
    return c;
}

// Follows an engine's state through its observer (called under the engine's lock: the waiter
// never calls into the engine while it holds this one's).
template <typename State>
struct StateLog {
    std::mutex mutex;
    std::condition_variable changed;
    State current;
    std::vector<std::pair<State, State>> moves;

    explicit StateLog(State initial) : current(initial) {}
    void record(State from, State to, std::set<std::pair<int, int>>& seen) {
        {
            std::lock_guard lock(g_seen_mutex);
            seen.insert({int(from), int(to)});
        }
        std::lock_guard lock(mutex);
        current = to;
        moves.emplace_back(from, to);
        changed.notify_all();
    }
    bool reaches(State state, std::chrono::milliseconds timeout = 20s) {
        std::unique_lock lock(mutex);
        return changed.wait_for(lock, scaled(timeout), [&] { return current == state; });
    }
    bool took(State from, State to, std::chrono::milliseconds timeout = 20s) {
        std::unique_lock lock(mutex);
        return changed.wait_for(lock, scaled(timeout), [&] {
            return std::find(moves.begin(), moves.end(), std::pair{from, to}) != moves.end();
        });
    }
};

struct ActiveSide {
    CaseCounter counted;
    KvstoreGuest guest = KvstoreGuest::boot(32ull << 20);
    proto::Hello identity = core::machine_identity(guest.machine(), "engine-test", kvstore_image());
    FakeStandby peer;
    StateLog<ActiveState> log{ActiveState::Unprotected};
    std::unique_ptr<core::ActiveEngine> engine;

    explicit ActiveSide(Script script = {}, core::ReplicationMode mode = core::ReplicationMode::Checkpoint)
        : peer(identity, script) {
        engine = std::make_unique<core::ActiveEngine>(*guest.runtime, identity, engine_config(mode),
                                                      proto::PeerState::PrimaryActive);
        engine->observe_transitions([this](ActiveState from, ActiveState to) { log.record(from, to, g_active_seen); });
        engine->set_dialer([this] { return peer.dial(); });
    }
    ~ActiveSide() { engine.reset(); }  // before the peer and the guest it uses

    core::Status status() {
        core::Status s;
        engine->fill_status(s);
        return s;
    }
};

struct StandbySide {
    CaseCounter counted;
    KvstoreGuest primary_guest = KvstoreGuest::boot(32ull << 20);
    KvstoreGuest guest = KvstoreGuest::boot(32ull << 20, false);
    proto::Hello identity = core::machine_identity(guest.machine(), "engine-test", kvstore_image());
    StateLog<StandbyState> log{StandbyState::Listening};
    std::mutex mutex;
    int takeovers = 0;
    std::optional<int> shutdown_code;
    uint16_t port = 0;
    std::unique_ptr<core::StandbyEngine> engine;

    explicit StandbySide(std::string fence_command = {}) {
        auto listener = proto::Listener::create("127.0.0.1:0");
        REQUIRE(listener);
        port = listener->port();
        core::StandbyEngine::Callbacks callbacks;
        callbacks.take_over = [this] {
            std::lock_guard lock(mutex);
            ++takeovers;
            return true;
        };
        callbacks.guest_shutdown = [this](int code) {
            std::lock_guard lock(mutex);
            shutdown_code = code;
        };
        auto config = engine_config();
        config.role = "secondary";
        config.fence_command = std::move(fence_command);
        config.fence_timeout = scaled(std::chrono::milliseconds(10'000));
        engine = std::make_unique<core::StandbyEngine>(*guest.runtime, identity, config, std::move(*listener),
                                                       std::move(callbacks));
        engine->observe_transitions([this](StandbyState from, StandbyState to) { log.record(from, to, g_standby_seen); });
        engine->start();
    }
    ~StandbySide() { engine.reset(); }

    std::unique_ptr<FakePrimary> primary(std::chrono::milliseconds heartbeat = 20ms) {
        auto fake = std::make_unique<FakePrimary>(primary_guest.machine(), identity, heartbeat);
        REQUIRE(fake->connect(port));
        return fake;
    }
    int taken() {
        std::lock_guard lock(mutex);
        return takeovers;
    }
};

}  // namespace

// ---- the table itself ----

TEST_CASE("a state machine refuses and logs a move its table does not hold", "[engine]") {
    enum class S { A, B, C };
    static constexpr std::array table{core::Transition<S>{S::A, S::B, "go"}};
    core::StateMachine<S> machine("test", S::A, table, [](S s) -> std::string_view {
        return s == S::A ? "a" : s == S::B ? "b" : "c";
    });
    CHECK_FALSE(machine.move(S::C, "not in the table"));
    CHECK(machine.state() == S::A);
    CHECK(machine.refused() == 1);
    CHECK(machine.move(S::A, "staying"));  // staying is no move
    CHECK(machine.move(S::B, "go"));
    CHECK(machine.state() == S::B);
    CHECK_FALSE(machine.move(S::A, "no way back"));
    CHECK(machine.state() == S::B);
    CHECK(machine.refused() == 2);
}

TEST_CASE("both engines' tables name every state and no transition twice", "[engine]") {
    auto check = [](auto table, auto name) {
        std::set<std::pair<int, int>> seen;
        for (const auto& t : table) {
            CHECK(name(t.from) != "?");
            CHECK(name(t.to) != "?");
            CHECK(t.from != t.to);
            CHECK(!t.on.empty());
            CHECK(seen.insert({int(t.from), int(t.to)}).second);
        }
    };
    check(core::ActiveEngine::transitions(), &core::ActiveEngine::state_name);
    check(core::StandbyEngine::transitions(), &core::StandbyEngine::state_name);
}

// docs/engines.md shows both tables; they must say what the code does.
TEST_CASE("docs/engines.md shows both state tables exactly as the engines declare them", "[engine]") {
    std::ifstream file(std::string(COLOD_SOURCE_DIR) + "/docs/engines.md");
    REQUIRE(file);
    std::string doc((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    // The rows "| from[, from...] | to | on |" under a heading, up to the next heading.
    auto rows = [&](const std::string& heading) {
        std::set<std::tuple<std::string, std::string, std::string>> found;
        auto at = doc.find(heading);
        REQUIRE(at != std::string::npos);
        std::istringstream lines(doc.substr(at, doc.find("\n## ", at + 1) - at));
        std::string line;
        auto trim = [](std::string t) {
            t.erase(0, t.find_first_not_of(' '));
            t.erase(t.find_last_not_of(' ') + 1);
            return t;
        };
        while (std::getline(lines, line)) {
            if (line.size() < 2 || line[0] != '|' || line.find("---") != std::string::npos || line.find("| From") == 0)
                continue;
            std::vector<std::string> cells;
            std::istringstream cut(line.substr(1));
            std::string cell;
            while (std::getline(cut, cell, '|'))
                cells.push_back(trim(cell));
            REQUIRE(cells.size() >= 3);
            std::istringstream froms(cells[0]);
            std::string from;
            while (std::getline(froms, from, ','))
                found.insert({trim(from), cells[1], cells[2]});
        }
        return found;
    };
    auto declared = [](auto table, auto name) {
        std::set<std::tuple<std::string, std::string, std::string>> out;
        for (const auto& t : table)
            out.insert({std::string(name(t.from)), std::string(name(t.to)), std::string(t.on)});
        return out;
    };
    CHECK(rows("## The active engine's states") ==
          declared(core::ActiveEngine::transitions(), &core::ActiveEngine::state_name));
    CHECK(rows("## The standby engine's states") ==
          declared(core::StandbyEngine::transitions(), &core::StandbyEngine::state_name));
}

// ---- the active engine ----

TEST_CASE("active: syncs a standby, checkpoints, runs unprotected when it goes, and protects again", "[engine]") {
    ActiveSide side;
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    REQUIRE(side.peer.wait([](auto& p) { return p.complete >= 4; }));
    CHECK(side.status().state == "protected");
    CHECK(side.status().seq >= 3);
    // The figures the metrics show: synced, the sync's final stop forced, every pause counted.
    auto figures = side.status();
    CHECK(figures.sync_progress == 1);
    CHECK(figures.checkpoints_forced >= 1);
    CHECK(figures.checkpoints_forced < figures.checkpoints);
    CHECK(figures.pause_histogram.count >= 1);
    CHECK(figures.checkpoints_applied == 0);
    side.peer.vanish();
    REQUIRE(side.log.took(ActiveState::Protected, ActiveState::Unprotected));
    // It dials again by itself and syncs the standby from scratch.
    REQUIRE(side.peer.wait([](auto& p) { return p.connections() >= 2; }));
    REQUIRE(side.log.reaches(ActiveState::Protected));
    side.engine->stop();
    CHECK(side.log.took(ActiveState::Protected, ActiveState::Stopped));
    CHECK(side.engine->state() == ActiveState::Stopped);
}

TEST_CASE("active: a standby lost during the sync leaves the guest unprotected", "[engine]") {
    Script script;
    script.close_on_first_state = true;
    ActiveSide side(script);
    side.engine->start();
    REQUIRE(side.log.took(ActiveState::Syncing, ActiveState::Unprotected));
    auto c = side.guest.client();
    CHECK(c.command("PING") == "PONG");  // unprotected output is not held
}

TEST_CASE("active: stopping during the sync ends it", "[engine]") {
    Script script;
    script.ack = false;  // the sync's checkpoint is never answered (ack-timeout is far off)
    ActiveSide side(script);
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Syncing));
    side.engine->stop();
    CHECK(side.log.took(ActiveState::Syncing, ActiveState::Stopped));
}

TEST_CASE("active: a standby that heartbeats but never answers a checkpoint is given up after ack-timeout",
          "[engine]") {
    ActiveSide side;
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    auto c = side.guest.client();
    side.peer.set_ack(false);
    // No new session once this one is given up: the engine redials at once, and a peer that
    // answered would have it syncing again before the status below is read.
    side.peer.refuse_dials();
    // Output of the unanswered checkpoint waits for it, then goes out once the standby is given up.
    REQUIRE(c.send("PING\n"));
    REQUIRE(side.log.took(ActiveState::Protected, ActiveState::Unprotected, 60s));
    CHECK(c.line(60s) == "PONG");
    CHECK(side.status().state == "unprotected");
}

TEST_CASE("active: a peer that already runs the guest is never synced", "[engine]") {
    Script script;
    script.claims = proto::PeerState::SecondaryActive;
    ActiveSide side(script);
    auto probe = side.engine->probe();
    CHECK(probe.outcome == core::ActiveEngine::Probe::PeerActive);
    side.engine->start();
    REQUIRE(side.peer.wait([](auto& p) { return p.connections() >= 2; }));  // it keeps trying
    CHECK(side.engine->state() == ActiveState::Unprotected);
    side.engine->stop();
    CHECK(side.log.took(ActiveState::Unprotected, ActiveState::Stopped));
    CHECK(side.peer.wait([](auto& p) { return p.complete == 0; }));
}

TEST_CASE("active: a hold keeps the guest paused at a committed checkpoint until released", "[engine]") {
    ActiveSide side;
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    uint64_t forced = side.status().checkpoints_forced;
    auto held = side.engine->checkpoint_and_hold(scaled(10'000ms));
    REQUIRE(held);
    CHECK(side.engine->state() == ActiveState::Held);
    CHECK(eventually([&] { return side.status().checkpoints_forced > forced; }));  // a hold forces one
    CHECK(side.status().state == "protected");
    CHECK(side.status().seq >= held->first);
    // Paused: memory does not change under the hold.
    CHECK(side.guest.machine().memory().digest() == held->second);
    // What a held guest refuses.
    CHECK_FALSE(side.engine->checkpoint_and_hold(1000ms));
    CHECK_FALSE(side.engine->checkpoint_now(1000ms));
    auto handover = side.engine->handover(1000ms);
    REQUIRE_FALSE(handover);
    CHECK_THAT(handover.error().message(), Catch::Contains("resume"));
    side.engine->release_hold();
    CHECK(side.log.took(ActiveState::Held, ActiveState::Protected));
    auto c = side.guest.client();
    CHECK(c.command("PING") == "PONG");  // it runs and checkpoints again
    // Held, then the standby goes: the guest must not stay paused without a peer.
    REQUIRE(side.engine->checkpoint_and_hold(scaled(10'000ms)));
    side.peer.vanish();
    REQUIRE(side.log.took(ActiveState::Held, ActiveState::Unprotected));
    CHECK(c.command("PING") == "PONG");
}

TEST_CASE("active: stopping a held guest releases it", "[engine]") {
    ActiveSide side;
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    REQUIRE(side.engine->checkpoint_and_hold(scaled(10'000ms)));
    side.engine->stop(core::ActiveEngine::HeldOutput::Release);
    CHECK(side.log.took(ActiveState::Held, ActiveState::Stopped));
    auto c = side.guest.client();
    CHECK(c.command("PING") == "PONG");
}

TEST_CASE("active: a handover stops the guest at its final checkpoint and hands it over", "[engine]") {
    ActiveSide side;
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    auto seq = side.engine->handover(scaled(20'000ms));
    REQUIRE(seq);
    CHECK(side.engine->handed_over());
    CHECK(side.log.took(ActiveState::HandingOver, ActiveState::HandedOver));
    CHECK(side.log.took(ActiveState::HandedOver, ActiveState::Stopped));
    CHECK(side.peer.wait([](auto& p) { return p.handovers == 1; }));
    CHECK(side.status().seq == *seq);
}

TEST_CASE("active: a handover the standby refuses leaves the guest running here", "[engine]") {
    Script script;
    script.on_handover = Script::OnHandover::Error;
    ActiveSide side(script);
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    auto seq = side.engine->handover(scaled(20'000ms));
    REQUIRE_FALSE(seq);
    CHECK_FALSE(side.engine->handed_over());
    CHECK(side.log.took(ActiveState::HandingOver, ActiveState::Unprotected));
    auto c = side.guest.client();
    CHECK(c.command("PING") == "PONG");  // not left paused
}

TEST_CASE("active: stopping during a handover ends it", "[engine]") {
    Script script;
    script.on_handover = Script::OnHandover::Ignore;
    ActiveSide side(script);
    side.engine->start();
    REQUIRE(side.log.reaches(ActiveState::Protected));
    std::thread handing([&] { (void)side.engine->handover(scaled(60'000ms)); });
    REQUIRE(side.log.reaches(ActiveState::HandingOver));
    side.engine->stop();
    handing.join();
    CHECK(side.log.took(ActiveState::HandingOver, ActiveState::Stopped));
    CHECK_FALSE(side.engine->handed_over());
}

// COLO forwards console input to the standby while the primary's guest reads it. The standby
// stalls its reads around every checkpoint request (so the link's buffers fill with forwarded
// input exactly while the guest is paused): the pause must not wait for the link. Compared with
// a run without the stall, same test, same guest, same input.
TEST_CASE("active: a stalled forward link in COLO mode does not stretch the checkpoint pause", "[engine]") {
    auto run = [](std::chrono::milliseconds stall) {
        Script script;
        script.stall = stall;
        script.buffer_bytes = 16 << 10;
        ActiveSide side(script, core::ReplicationMode::Colo);
        side.engine->start();
        REQUIRE(side.log.reaches(ActiveState::Protected));
        auto typist = side.guest.client();
        std::atomic<bool> done{false};
        std::thread typing([&] {
            std::string lines;
            for (int i = 0; i < 64; ++i)
                lines += "SET key-with-a-longish-name some-longish-value-to-fill-the-link\n";
            while (!done && typist.send(lines)) {
            }
        });
        // Checkpoints while the input fills more than the link's buffers.
        uint64_t first = 0;
        REQUIRE(side.peer.wait([&](auto& p) { return p.input.size() > size_t(32 << 10); }, 120s));
        REQUIRE(side.peer.wait([&](auto& p) { return (first = p.requests) >= 1; }));
        bool enough = side.peer.wait([&](auto& p) { return p.requests >= first + 8; }, 120s);
        done = true;
        side.engine->stop();
        typing.join();
        REQUIRE(enough);
        return side.status().pause_us;
    };
    auto baseline = run(0ms);
    auto stalled = run(scaled(300ms));
    INFO("pause us without a stall: p50 " << baseline.p50 << ", max " << baseline.max << "; with a stall of "
                                          << scaled(300ms).count() << " ms at each checkpoint: p50 " << stalled.p50
                                          << ", max " << stalled.max);
    // A pause that waited for the link would take most of the stall (300 ms) at every checkpoint.
    CHECK(stalled.p50 <= 3 * baseline.p50 + 10'000);
    CHECK(stalled.max <= 3 * baseline.max + 30'000);
}

// ---- the standby engine ----

TEST_CASE("standby: takes a sync and checkpoints, then takes over when the primary goes", "[engine]") {
    StandbySide side;
    auto primary = side.primary();
    auto synced = primary->sync();
    REQUIRE(synced);
    CHECK(side.log.took(StandbyState::Listening, StandbyState::Syncing));
    CHECK(side.log.took(StandbyState::Syncing, StandbyState::Standby));
    for (int i = 0; i < 3; ++i)
        REQUIRE(primary->checkpoint());
    CHECK(side.engine->committed() == primary->committed());
    core::Status standing;
    side.engine->fill_status(standing);
    CHECK(standing.sync_progress == 1);
    CHECK(standing.checkpoints_applied == standing.checkpoints);
    CHECK(standing.failovers == 0);
    // While a primary is connected, only the primary may order a switchover.
    auto ordered = side.engine->failover_now();
    REQUIRE_FALSE(ordered);
    CHECK_THAT(ordered.error().message(), Catch::Contains("a primary is connected"));
    primary->close();
    REQUIRE(side.log.took(StandbyState::Standby, StandbyState::Active));
    CHECK(eventually([&] { return side.taken() == 1; }));
    CHECK(eventually([&] { return side.engine->failovers().count == 1; }));
    // Whoever connects now is refused: this side runs the guest.
    FakePrimary late(side.primary_guest.machine(), side.identity);
    CHECK_FALSE(late.connect(side.port));
    side.engine->stop();
    CHECK(side.log.took(StandbyState::Active, StandbyState::Stopped));
    CHECK(side.taken() == 1);
}

TEST_CASE("standby: a primary lost before a complete checkpoint leaves nothing to take over", "[engine]") {
    StandbySide side;
    auto primary = side.primary();
    REQUIRE(primary->precopy_all());
    primary->close();
    REQUIRE(side.log.took(StandbyState::Syncing, StandbyState::Listening));
    auto ordered = side.engine->failover_now();
    REQUIRE_FALSE(ordered);
    CHECK_THAT(ordered.error().message(), Catch::Contains("no complete checkpoint"));
    side.engine->stop();
    CHECK(side.log.took(StandbyState::Listening, StandbyState::Stopped));
    CHECK(side.taken() == 0);
}

TEST_CASE("standby: bad bytes from a live primary are refused, never a takeover", "[engine]") {
    StandbySide side;
    auto primary = side.primary();
    auto seq = primary->sync();
    REQUIRE(seq);
    // A transfer that announces no frames: the standby says why and closes the link.
    REQUIRE(primary->post(proto::VmstateSize{primary->next_seq(), 0, 0, 0, proto::StateKind::Complete}));
    auto closed = primary->wait_closed();
    REQUIRE(closed);
    CHECK(side.engine->state() == StandbyState::Standby);
    CHECK(side.engine->committed() == *seq);
    CHECK(side.taken() == 0);
    // A primary that reconnects and then vanishes before sending anything: the checkpoint kept
    // above is still whole, so this side takes over from it.
    auto again = side.primary();
    REQUIRE(side.log.took(StandbyState::Standby, StandbyState::Syncing));
    again->close();
    REQUIRE(side.log.took(StandbyState::Syncing, StandbyState::Active));
    CHECK(eventually([&] { return side.taken() == 1; }));
    CHECK(side.engine->committed() == *seq);
}

TEST_CASE("standby: the primary's guest powering off stops the standby without a takeover", "[engine]") {
    SECTION("after the sync") {
        StandbySide side;
        auto primary = side.primary();
        REQUIRE(primary->sync());
        REQUIRE(primary->post(proto::GuestShutdown{7}));
        REQUIRE(side.log.took(StandbyState::Standby, StandbyState::Stopped));
        // A primary that connects now (a daemon reconnecting while it stops) is refused, and the
        // end of its link is no reason to take over: nobody runs the guest any more.
        FakePrimary late(side.primary_guest.machine(), side.identity);
        CHECK_FALSE(late.connect(side.port));
        CHECK_FALSE(side.engine->failover_now());
        CHECK(side.engine->state() == StandbyState::Stopped);
        std::lock_guard lock(side.mutex);
        CHECK(side.shutdown_code == 7);
        CHECK(side.takeovers == 0);
    }
    SECTION("during the sync") {
        StandbySide side;
        auto primary = side.primary();
        REQUIRE(primary->precopy_all());
        REQUIRE(primary->post(proto::GuestShutdown{0}));
        REQUIRE(side.log.took(StandbyState::Syncing, StandbyState::Stopped));
        CHECK(side.taken() == 0);
    }
}

TEST_CASE("standby: a handover of the committed checkpoint is taken without fencing", "[engine]") {
    StandbySide side("false");  // a fence that would fail: a handover must not run it
    auto primary = side.primary();
    auto seq = primary->sync();
    REQUIRE(seq);
    REQUIRE(primary->post(proto::Handover{*seq}));
    REQUIRE(side.log.took(StandbyState::Standby, StandbyState::Active));
    CHECK(eventually([&] { return side.taken() == 1; }));
    auto closed = primary->wait_closed();
    REQUIRE(closed);
    CHECK(closed->code() == base::Errc::Eof);  // how the primary learns that the handover is done
}

TEST_CASE("standby: a fence that fails stops the takeover until the operator orders it", "[engine]") {
    auto ran = std::filesystem::temp_directory_path() / fmt::format("colod-engine-fence-{}", ::getpid());
    std::filesystem::remove(ran);
    StandbySide side(fmt::format("touch '{}'; exit 1", ran.string()));
    auto primary = side.primary();
    auto seq = primary->sync();
    REQUIRE(seq);
    primary->close();
    // The fence runs and fails: no takeover. The operator's order waits for that decision (one
    // takeover lock) and then takes over without fencing.
    REQUIRE(eventually([&] { return std::filesystem::exists(ran); }));
    auto ordered = side.engine->failover_now();
    std::filesystem::remove(ran);
    REQUIRE(ordered);
    CHECK(*ordered == *seq);
    CHECK(side.taken() == 1);
    CHECK(side.engine->state() == StandbyState::Active);
    CHECK(side.log.moves.back() == std::pair{StandbyState::Standby, StandbyState::Active});
}

TEST_CASE("standby: while a takeover fences, a primary that connects is refused as by an active side", "[engine]") {
    auto dir = std::filesystem::temp_directory_path() / fmt::format("colod-engine-fencing-{}", ::getpid());
    std::filesystem::create_directories(dir);
    // The fence says it runs, then waits until the test lets it end (successfully).
    StandbySide side(fmt::format("touch '{0}/ran'; while [ ! -e '{0}/go' ]; do sleep 0.02; done", dir.string()));
    auto primary = side.primary();
    REQUIRE(primary->sync());
    primary->close();
    REQUIRE(eventually([&] { return std::filesystem::exists(dir / "ran"); }));
    // A restarted primary's probe, mid-takeover: refused, and told the other side runs the guest
    // (so colod-primary exits 3 instead of starting a second guest).
    auto link = proto::Link::connect(fmt::format("127.0.0.1:{}", side.port), proto::deadline_after(5s));
    REQUIRE(link);
    std::optional<proto::PeerState> seen;
    auto shaken = proto::handshake(*link, *engine_test_key(), side.identity, proto::deadline_after(scaled(5s)),
                                   [&](const proto::Hello& peer) -> std::string {
                                       seen = peer.state;
                                       return {};
                                   });
    CHECK_FALSE(shaken);
    REQUIRE(seen);
    CHECK(*seen == proto::PeerState::SecondaryActive);
    CHECK(side.taken() == 0);  // the takeover is still fencing
    std::ofstream(dir / "go").put('\n');
    CHECK(eventually([&] { return side.taken() == 1; }));
    CHECK(side.engine->state() == StandbyState::Active);
    std::filesystem::remove_all(dir);
}

TEST_CASE("standby: a primary that falls silent is lost after heartbeat-timeout", "[engine]") {
    StandbySide side;
    auto primary = side.primary(std::chrono::hours(1));  // never a heartbeat of its own
    REQUIRE(primary->sync());
    // Nothing more is sent, and the link stays open.
    REQUIRE(side.log.took(StandbyState::Standby, StandbyState::Active, 30s));
    CHECK(eventually([&] { return side.taken() == 1; }));
}

// Runs last: every transition of both tables was taken by one of the cases above.
TEST_CASE("every transition of both state tables is exercised", "[engine]") {
    std::lock_guard lock(g_seen_mutex);
    if (g_cases_run < k_transition_cases) {
        WARN("only " << g_cases_run << " of " << k_transition_cases << " engine cases ran: coverage not judged");
        return;
    }
    for (const auto& t : core::ActiveEngine::transitions()) {
        INFO("active " << core::ActiveEngine::state_name(t.from) << " -> " << core::ActiveEngine::state_name(t.to));
        CHECK(g_active_seen.count({int(t.from), int(t.to)}) == 1);
    }
    for (const auto& t : core::StandbyEngine::transitions()) {
        INFO("standby " << core::StandbyEngine::state_name(t.from) << " -> " << core::StandbyEngine::state_name(t.to));
        CHECK(g_standby_seen.count({int(t.from), int(t.to)}) == 1);
    }
}
