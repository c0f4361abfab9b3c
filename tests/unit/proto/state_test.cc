// SPDX-License-Identifier: GPL-2.0-or-later
// State sections: random checkpoints encode then decode to the same pages and sections (many
// seeds, several frame limits), snapshot files, and one test per malformed state class.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "proto/errors.h"
#include "proto/state.h"
#include "proto/wire.h"

using namespace colod;
using namespace colod::proto;

namespace {

template <typename T>
Reason reason(const base::Result<T>& r) {
    REQUIRE_FALSE(r.ok());
    return reason_of(r.error());
}

// A fake guest: memory plus the sections a checkpoint carries.
struct FakeGuest {
    uint64_t pages = 0;
    uint32_t vcpus = 1;
    std::vector<DeviceInfo> devices;
    std::vector<std::byte> memory;
    std::vector<std::vector<std::byte>> bodies;  // one per opaque section, in `sections` order
    std::vector<SectionInput> sections;

    Hello hello() const {
        Hello h;
        h.vm_name = "demo";
        h.memory_bytes = pages * kPageSize;
        h.vcpus = vcpus;
        h.devices = devices;
        return h;
    }
    StateShape shape() const { return StateShape::from_hello(hello()); }
    std::span<const std::byte> page(uint64_t i) const { return std::span(memory).subspan(i * kPageSize, kPageSize); }
};

FakeGuest random_guest(std::mt19937_64& rng) {
    FakeGuest g;
    g.pages = 16 + rng() % 2000;
    g.vcpus = uint32_t(1 + rng() % 4);
    g.memory.resize(g.pages * kPageSize);
    for (uint64_t p = 0; p < g.pages; ++p) {
        // A third of the pages stay zero so elision is exercised.
        if (rng() % 3 == 0)
            continue;
        auto* at = g.memory.data() + p * kPageSize;
        for (size_t i = 0; i < kPageSize; i += 8) {
            uint64_t v = rng();
            std::memcpy(at + i, &v, 8);
        }
    }
    size_t devices = rng() % 4;
    for (size_t i = 0; i < devices; ++i)
        g.devices.push_back({"dev" + std::to_string(i), uint32_t(1 + rng() % 3)});
    auto add = [&](SectionId id, uint16_t version, uint32_t instance, std::string name) {
        std::vector<std::byte> body(rng() % 9000);
        for (auto& b : body)
            b = std::byte(rng());
        g.bodies.push_back(std::move(body));
        g.sections.push_back({id, version, instance, std::move(name), {}});
    };
    for (uint32_t v = 0; v < g.vcpus; ++v)
        add(SectionId::Vcpu, 1, v, "");
    add(SectionId::Irqchip, 1, 0, "");
    add(SectionId::Pit, 1, 0, "");
    add(SectionId::Clock, 1, 0, "");
    for (uint32_t d = 0; d < g.devices.size(); ++d)
        add(SectionId::Device, uint16_t(g.devices[d].version), d, g.devices[d].name);
    std::shuffle(g.sections.begin(), g.sections.end(), rng);  // order is free; bodies follow below
    for (size_t i = 0; i < g.sections.size(); ++i)
        g.sections[i].body = g.bodies[i];
    return g;
}

std::vector<uint64_t> random_dirty(std::mt19937_64& rng, uint64_t pages) {
    std::vector<uint64_t> dirty;
    uint64_t density = 1 + rng() % 4;
    for (uint64_t p = 0; p < pages; ++p)
        if (rng() % density == 0)
            dirty.push_back(p);
    return dirty;
}

// Applies pieces to a copy of memory: what a secondary does after END.
struct Applied {
    std::map<uint64_t, std::vector<std::byte>> pages;  // page -> bytes (zero pages as zeros)
    std::vector<std::tuple<SectionId, uint16_t, uint32_t, std::string, std::vector<std::byte>>> sections;
};

void apply_pieces(const std::vector<StatePiece>& pieces, Applied& out) {
    for (const auto& piece : pieces) {
        if (auto* run = std::get_if<PageRun>(&piece)) {
            for (uint32_t i = 0; i < run->count; ++i) {
                auto b = run->data.subspan(i * kPageSize, kPageSize);
                REQUIRE(out.pages.emplace(run->first_page + i, std::vector<std::byte>(b.begin(), b.end())).second);
            }
        } else if (auto* zero = std::get_if<ZeroRun>(&piece)) {
            for (uint32_t i = 0; i < zero->count; ++i)
                REQUIRE(out.pages.emplace(zero->first_page + i, std::vector<std::byte>(kPageSize)).second);
        } else {
            const auto& s = std::get<SectionView>(piece);
            out.sections.emplace_back(s.id, s.version, s.instance, std::string(s.name),
                                      std::vector<std::byte>(s.body.begin(), s.body.end()));
        }
    }
}

base::Result<Applied> decode_all(StateDecoder& decoder, const EncodedState& state) {
    TRY(decoder.begin(state.size()));
    Applied applied;
    std::vector<std::vector<std::byte>> keep;
    for (size_t i = 0; i < state.frame_count(); ++i) {
        keep.push_back(state.frame_payload(i));
        REQUIRE(keep.back().size() == state.frame_payload_length(i));
        DecodedFrame d = TRY(decoder.feed(keep.back()));
        apply_pieces(d.pieces, applied);
        REQUIRE(d.end.has_value() == (i + 1 == state.frame_count()));
    }
    return applied;
}

void check_equal(const FakeGuest& g, const std::vector<uint64_t>& dirty, const Applied& applied) {
    REQUIRE(applied.pages.size() == dirty.size());
    for (uint64_t p : dirty) {
        auto it = applied.pages.find(p);
        REQUIRE(it != applied.pages.end());
        auto want = g.page(p);
        REQUIRE(std::memcmp(it->second.data(), want.data(), kPageSize) == 0);
    }
    REQUIRE(applied.sections.size() == g.sections.size());
    for (size_t i = 0; i < g.sections.size(); ++i) {
        const auto& [id, version, instance, name, body] = applied.sections[i];
        const auto& s = g.sections[i];
        REQUIRE(id == s.id);
        REQUIRE(version == s.version);
        REQUIRE(instance == s.instance);
        REQUIRE(name == s.name);
        REQUIRE(std::equal(body.begin(), body.end(), s.body.begin(), s.body.end()));
    }
}

}  // namespace

TEST_CASE("random checkpoints round trip (many seeds, several frame limits)") {
    for (uint64_t seed = 0; seed < 120; ++seed) {
        std::mt19937_64 rng(seed);
        FakeGuest g = random_guest(rng);
        auto dirty = random_dirty(rng, g.pages);
        uint32_t limit = seed % 3 == 0 ? kMinFramePayload : seed % 3 == 1 ? 200000 : 4u << 20;
        StateEncoder encoder({limit, seed % 5 == 0 ? ZeroScan::Off : ZeroScan::On});
        StateInput input{seed + 1, dirty, [&](uint64_t p) { return g.page(p); }, g.sections};
        auto state = encoder.encode(input);
        REQUIRE(state.ok());
        for (size_t i = 0; i < state->frame_count(); ++i)
            REQUIRE(state->frame_payload_length(i) <= limit);
        auto decoder = StateDecoder::create(g.shape());
        REQUIRE(decoder.ok());
        INFO("seed " << seed << " frames " << state->frame_count());
        auto applied = decode_all(decoder.value(), state.value());
        REQUIRE(applied.ok());
        check_equal(g, dirty, applied.value());
        REQUIRE(decoder->last_complete() == seed + 1);
    }
}

TEST_CASE("zero pages are elided, data pages are referenced not copied") {
    FakeGuest g;
    g.pages = 64;
    g.memory.resize(g.pages * kPageSize);
    g.memory[5 * kPageSize] = std::byte{1};
    std::vector<uint64_t> dirty{1, 2, 3, 5, 6};
    StateInput input{1, dirty, [&](uint64_t p) { return g.page(p); }, {}};
    auto state = StateEncoder().encode(input);
    REQUIRE(state.ok());
    REQUIRE(state->data_pages() == 1);
    REQUIRE(state->zero_pages() == 4);
    // Only one page of data travels.
    REQUIRE(state->size().bytes < 2 * kPageSize);
    bool points_into_guest = false;
    for (const auto& v : state->frame_iov(0))
        if (v.iov_base == g.page(5).data())
            points_into_guest = true;
    REQUIRE(points_into_guest);
}

TEST_CASE("adjacent pages become one gather entry") {
    FakeGuest g;
    g.pages = 1024;
    g.memory.assign(g.pages * kPageSize, std::byte{7});
    std::vector<uint64_t> dirty(1024);
    for (uint64_t i = 0; i < 1024; ++i)
        dirty[i] = i;
    StateInput input{1, dirty, [&](uint64_t p) { return g.page(p); }, {}};
    auto state = StateEncoder({32u << 20, ZeroScan::On}).encode(input);
    REQUIRE(state.ok());
    REQUIRE(state->frame_count() == 1);
    REQUIRE(state->frame_iov(0).size() <= 4);
}

TEST_CASE("encoder refuses caller mistakes as Invalid") {
    FakeGuest g;
    g.pages = 8;
    g.memory.resize(g.pages * kPageSize);
    std::vector<uint64_t> unsorted{3, 2};
    auto r = StateEncoder().encode({1, unsorted, [&](uint64_t p) { return g.page(p); }, {}});
    REQUIRE(r.error().code() == base::Errc::Invalid);
    std::vector<std::byte> huge(kMinFramePayload);
    auto big = StateEncoder({kMinFramePayload, ZeroScan::On}).encode({1, {}, {}, {{SectionId::Vcpu, 1, 0, "", huge}}});
    REQUIRE(big.error().code() == base::Errc::Invalid);
    REQUIRE(StateEncoder({1000, ZeroScan::On}).encode({}).error().code() == base::Errc::Invalid);
}

TEST_CASE("snapshot files round trip through memory and disk") {
    std::mt19937_64 rng(99);
    FakeGuest g = random_guest(rng);
    std::vector<uint64_t> all(g.pages);
    for (uint64_t i = 0; i < g.pages; ++i)
        all[i] = i;
    auto state = StateEncoder({kMinFramePayload, ZeroScan::On}).encode({0, all, [&](uint64_t p) { return g.page(p); }, g.sections});
    REQUIRE(state.ok());
    REQUIRE(state->frame_count() > 1);
    auto bytes = encode_snapshot(g.hello(), state.value());
    auto snap = decode_snapshot(bytes);
    REQUIRE(snap.ok());
    REQUIRE(incompatibility(g.hello(), snap->identity).empty());
    Applied applied;
    apply_pieces(snap->pieces, applied);
    check_equal(g, all, applied);

    std::string path = fmt::format("/tmp/proto-snapshot-{}.bin", ::getpid());
    REQUIRE(write_snapshot_file(path, g.hello(), state.value()).ok());
    std::ifstream in(path, std::ios::binary);
    std::vector<char> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ::unlink(path.c_str());
    auto from_disk = std::as_bytes(std::span(file));
    REQUIRE(std::equal(from_disk.begin(), from_disk.end(), bytes.begin(), bytes.end()));

    // Any single flipped byte is caught somewhere (magic, header check, CRC).
    for (size_t i = 0; i < bytes.size(); i += 997) {
        auto bad = bytes;
        bad[i] ^= std::byte{0x10};
        REQUIRE_FALSE(decode_snapshot(bad).ok());
    }
    REQUIRE(reason(decode_snapshot(std::span(bytes).first(bytes.size() - 1))) == Reason::TruncatedPayload);
    auto wrong = bytes;
    wrong[0] = std::byte{'X'};
    REQUIRE(reason(decode_snapshot(wrong)) == Reason::BadSnapshot);
}

// ---- One test per malformed state class ----
// A hand-built checkpoint: a small shape (16 pages, 1 vCPU, no devices) and a builder for
// payloads, so each test breaks exactly one rule.

namespace {

StateShape small_shape() {
    StateShape s;
    s.page_count = 16;
    s.vcpus = 1;
    return s;
}

struct PayloadBuilder {
    std::vector<std::byte> out;
    ByteWriter w{out};
    uint32_t sections = 0;
    uint64_t data_pages = 0;
    uint64_t zero_pages = 0;

    PayloadBuilder(uint64_t seq, uint32_t index) {
        w.u64(seq);
        w.u32(index);
        w.u32(0);
    }
    void section(uint8_t id, uint16_t version, uint32_t instance, std::string_view name, std::span<const std::byte> body,
                 uint32_t claimed_length = UINT32_MAX) {
        w.u8(id);
        w.u8(uint8_t(name.size()));
        w.u16(version);
        w.u32(instance);
        w.u32(claimed_length == UINT32_MAX ? uint32_t(body.size()) : claimed_length);
        w.bytes(name);
        w.bytes(body);
        if (id >= 2 && id <= 6)
            ++sections;
    }
    void platform() {
        std::vector<std::byte> body(8);
        section(2, 1, 0, "", body);
        section(3, 1, 0, "", body);
        section(4, 1, 0, "", body);
        section(5, 1, 0, "", body);
    }
    // RAM section with runs {first, count, zero?}.
    void ram(std::initializer_list<std::tuple<uint64_t, uint32_t, bool>> runs) {
        std::vector<std::byte> body;
        ByteWriter b(body);
        b.u32(uint32_t(runs.size()));
        b.u32(0);
        size_t data = 0;
        for (auto [first, count, zero] : runs) {
            b.u64(first);
            b.u32(count);
            b.u8(zero ? 1 : 0);
            b.zeros(3);
            if (!zero) {
                data += count * kPageSize;
                data_pages += count;
            } else {
                zero_pages += count;
            }
        }
        b.zeros(data);
        section(1, 1, 0, "", body);
    }
    void end(uint64_t seq, uint32_t frames) {
        std::vector<std::byte> body;
        ByteWriter b(body);
        b.u64(seq);
        b.u32(frames);
        b.u32(sections);
        b.u64(data_pages);
        b.u64(zero_pages);
        section(7, 1, 0, "", body);
    }
    VmstateSize size(uint64_t seq, uint32_t frames = 1) const { return {seq, out.size(), data_pages + zero_pages, frames}; }
};

base::Result<DecodedFrame> run_one(PayloadBuilder& b, uint64_t seq = 1, StateShape shape = small_shape()) {
    auto decoder = StateDecoder::create(std::move(shape));
    REQUIRE(decoder.ok());
    TRY(decoder->begin(b.size(seq)));
    return decoder->feed(b.out);
}

}  // namespace

TEST_CASE("the hand-built checkpoint is valid as built") {
    PayloadBuilder b(1, 0);
    b.ram({{0, 2, false}, {4, 3, true}});
    b.platform();
    b.end(1, 1);
    auto r = run_one(b);
    REQUIRE(r.ok());
    REQUIRE(r->end.has_value());
    REQUIRE(r->end->data_pages == 2);
    REQUIRE(r->end->zero_pages == 3);
}

TEST_CASE("malformed state: page index beyond memory") {
    PayloadBuilder b(1, 0);
    b.ram({{15, 2, true}});
    b.platform();
    b.end(1, 1);
    REQUIRE(reason(run_one(b)) == Reason::PageBeyondMemory);
    PayloadBuilder c(1, 0);
    c.ram({{~0ull, 1, true}});  // the overflow case: first + count wraps
    c.platform();
    c.end(1, 1);
    REQUIRE(reason(run_one(c)) == Reason::PageBeyondMemory);
}

TEST_CASE("malformed state: overlapping and unsorted runs") {
    PayloadBuilder b(1, 0);
    b.ram({{2, 3, true}, {4, 1, true}});
    b.platform();
    b.end(1, 1);
    REQUIRE(reason(run_one(b)) == Reason::RunsOutOfOrder);
    PayloadBuilder c(1, 0);
    c.ram({{8, 1, false}});
    c.ram({{3, 1, false}});  // a later RAM section going backwards
    c.platform();
    c.end(1, 1);
    REQUIRE(reason(run_one(c)) == Reason::RunsOutOfOrder);
}

TEST_CASE("malformed state: section longer than its frame") {
    PayloadBuilder b(1, 0);
    b.platform();
    std::vector<std::byte> body(10);
    b.section(6, 1, 0, "", body, 1000);
    REQUIRE(reason(run_one(b)) == Reason::SectionOverrun);
    PayloadBuilder c(1, 0);
    std::vector<std::byte> ram;
    ByteWriter w(ram);
    w.u32(1);
    w.u32(0);
    w.u64(0);
    w.u32(4);  // four data pages claimed, none present
    w.u8(0);
    w.zeros(3);
    c.section(1, 1, 0, "", ram);
    REQUIRE(reason(run_one(c)) == Reason::SectionOverrun);
    PayloadBuilder d(1, 0);
    std::vector<std::byte> table;
    ByteWriter t(table);
    t.u32(1000);  // a run table longer than the section
    t.u32(0);
    d.section(1, 1, 0, "", table);
    REQUIRE(reason(run_one(d)) == Reason::SectionOverrun);
}

TEST_CASE("malformed state: duplicate section") {
    PayloadBuilder b(1, 0);
    b.platform();
    std::vector<std::byte> body(8);
    b.section(4, 1, 0, "", body);  // PIT again
    b.end(1, 1);
    REQUIRE(reason(run_one(b)) == Reason::DuplicateSection);
    PayloadBuilder c(1, 0);
    c.platform();
    c.section(2, 1, 0, "", body);  // vCPU 0 again
    REQUIRE(reason(run_one(c)) == Reason::DuplicateSection);
}

TEST_CASE("malformed state: missing section at END") {
    PayloadBuilder b(1, 0);
    std::vector<std::byte> body(8);
    b.section(2, 1, 0, "", body);
    b.section(3, 1, 0, "", body);
    b.section(5, 1, 0, "", body);  // no PIT
    b.end(1, 1);
    auto r = run_one(b);
    REQUIRE(reason(r) == Reason::MissingSection);
    REQUIRE_THAT(r.error().message(), Catch::Contains("PIT"));
    PayloadBuilder c(1, 0);
    c.platform();
    c.end(1, 1);
    StateShape shape = small_shape();
    shape.devices = {{"uart0", 1}};
    REQUIRE(reason(run_one(c, 1, shape)) == Reason::MissingSection);
}

TEST_CASE("malformed state: unknown section version and unknown section id") {
    PayloadBuilder b(1, 0);
    std::vector<std::byte> body(8);
    b.section(2, 2, 0, "", body);
    REQUIRE(reason(run_one(b)) == Reason::UnknownSectionVersion);
    PayloadBuilder c(1, 0);
    c.section(1, 9, 0, "", {});
    REQUIRE(reason(run_one(c)) == Reason::UnknownSectionVersion);
    PayloadBuilder d(1, 0);
    StateShape shape = small_shape();
    shape.devices = {{"uart0", 3}};
    d.section(6, 2, 0, "uart0", body);
    REQUIRE(reason(run_one(d, 1, shape)) == Reason::UnknownSectionVersion);
    PayloadBuilder e(1, 0);
    e.section(42, 1, 0, "", body);
    REQUIRE(reason(run_one(e)) == Reason::UnknownSection);
}

TEST_CASE("malformed state: END counts mismatch") {
    PayloadBuilder b(1, 0);
    b.ram({{0, 1, false}});
    b.platform();
    b.data_pages = 2;  // END claims a page that never came
    b.end(1, 1);
    auto decoder = StateDecoder::create(small_shape());
    REQUIRE(decoder->begin({1, b.out.size(), 1, 1}).ok());
    REQUIRE(reason(decoder->feed(b.out)) == Reason::EndMismatch);

    PayloadBuilder c(1, 0);
    c.platform();
    c.end(1, 1);
    auto d2 = StateDecoder::create(small_shape());
    REQUIRE(d2->begin({1, c.out.size() + 1, 0, 1}).ok());  // VMSTATE_SIZE announced more bytes
    REQUIRE(reason(d2->feed(c.out)) == Reason::EndMismatch);

    PayloadBuilder e(1, 0);
    e.platform();
    auto d3 = StateDecoder::create(small_shape());
    REQUIRE(d3->begin({1, e.out.size(), 0, 1}).ok());  // the last frame without END
    REQUIRE(reason(d3->feed(e.out)) == Reason::EndMismatch);
}

TEST_CASE("malformed state: sequence gap between checkpoints") {
    auto decoder = StateDecoder::create(small_shape());
    PayloadBuilder b(1, 0);
    b.platform();
    b.end(1, 1);
    REQUIRE(decoder->begin(b.size(1)).ok());
    REQUIRE(decoder->feed(b.out).ok());
    REQUIRE(decoder->last_complete() == 1);
    PayloadBuilder c(3, 0);
    c.platform();
    c.end(3, 1);
    REQUIRE(reason(decoder->begin(c.size(3))) == Reason::SequenceGap);
    PayloadBuilder d(2, 0);
    d.platform();
    d.end(2, 1);
    REQUIRE(decoder->begin(d.size(2)).ok());
    REQUIRE(decoder->feed(d.out).ok());
}

TEST_CASE("malformed state: frames out of order, after END, without VMSTATE_SIZE") {
    auto decoder = StateDecoder::create(small_shape());
    PayloadBuilder b(1, 1);  // frame 1 first
    REQUIRE(decoder->begin({1, 100, 0, 2}).ok());
    REQUIRE(reason(decoder->feed(b.out)) == Reason::StateOrder);

    auto fresh = StateDecoder::create(small_shape());
    PayloadBuilder c(1, 0);
    REQUIRE(reason(fresh->feed(c.out)) == Reason::StateOrder);

    PayloadBuilder d(1, 0);
    d.platform();
    d.end(1, 1);
    std::vector<std::byte> tail(8);
    d.section(2, 1, 0, "", tail);
    auto third = StateDecoder::create(small_shape());
    REQUIRE(third->begin({1, d.out.size(), 0, 1}).ok());
    REQUIRE(reason(third->feed(d.out)) == Reason::StateOrder);
}

TEST_CASE("a failed frame leaves the decoder unchanged and applies nothing") {
    auto decoder = StateDecoder::create(small_shape());
    PayloadBuilder first(1, 0);
    first.ram({{0, 1, false}});
    PayloadBuilder second(1, 1);
    second.ram({{0, 1, true}});  // overlaps the first frame's run
    PayloadBuilder good(1, 1);
    good.data_pages = 1;
    good.ram({{1, 1, true}});
    good.platform();
    good.end(1, 2);
    REQUIRE(decoder->begin({1, first.out.size() + good.out.size(), 2, 2}).ok());
    REQUIRE(decoder->feed(first.out).ok());
    auto bad = decoder->feed(second.out);
    REQUIRE(reason(bad) == Reason::RunsOutOfOrder);
    // The same frame index can still be fed correctly: nothing of the bad frame stuck.
    auto done = decoder->feed(good.out);
    REQUIRE(done.ok());
    REQUIRE(done->end.has_value());
}

TEST_CASE("pre-copy rounds carry RAM only and need no machine sections") {
    FakeGuest g;
    g.pages = 32;
    g.vcpus = 2;
    g.memory.assign(g.pages * kPageSize, std::byte{1});
    std::vector<uint64_t> dirty{0, 1, 2, 9};
    auto lookup = [&](uint64_t p) { return g.page(p); };
    auto round = StateEncoder().encode({1, dirty, lookup, {}, StateKind::Precopy});
    REQUIRE(round.ok());
    REQUIRE(round->size().kind == StateKind::Precopy);
    auto decoder = StateDecoder::create(g.shape()).value();
    REQUIRE(decoder.begin(round->size()).ok());
    auto payload = round->frame_payload(0);
    auto frame = decoder.feed(payload);
    REQUIRE(frame.ok());
    REQUIRE(frame->end.has_value());
    REQUIRE(frame->kind == StateKind::Precopy);

    std::vector<std::byte> body(8);
    auto mixed = StateEncoder().encode({2, dirty, lookup, {{SectionId::Vcpu, 1, 0, "", body}}, StateKind::Precopy});
    REQUIRE(mixed.error().code() == base::Errc::Invalid);

    PayloadBuilder b(2, 0);
    b.section(2, 1, 0, "", body);
    b.end(2, 1);
    REQUIRE(decoder.begin({2, b.out.size(), 0, 1, StateKind::Precopy}).ok());
    REQUIRE(reason(decoder.feed(b.out)) == Reason::BadField);
}
