// SPDX-License-Identifier: GPL-2.0-or-later
// Fuzz target: the StateDecoder. Input: a VMSTATE_SIZE payload (29 bytes), then frames, each
// a u32 big-endian length and that many payload bytes. The guest shape is fixed: 64 pages,
// two vCPUs, one device. Every piece handed out must lie inside the input and inside guest
// memory, and a completed checkpoint must have every required section.
#include <cstdint>
#include <cstdlib>
#include <set>
#include <span>

#include "proto/state.h"
#include "proto/wire.h"

using namespace colod::proto;

namespace {
void check(bool ok) {
    if (!ok)
        std::abort();
}
}  // namespace

// SAFETY (every cast below): the input is bytes; uint8_t and std::byte have the same size.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
    if (input.size() < 29)
        return 0;
    auto announced = VmstateSize::decode(input.first(29));
    if (!announced)
        return 0;
    StateShape shape;
    shape.page_count = 64;
    shape.vcpus = 2;
    shape.devices = {{"uart0", 1}};
    auto decoder = StateDecoder::create(shape);
    check(decoder.ok());
    if (!decoder->begin(announced.value()))
        return 0;
    auto rest = input.subspan(29);
    std::set<std::pair<int, uint32_t>> sections;
    uint64_t next_page = 0;
    while (rest.size() >= 4) {
        size_t length = load_be32(rest.data());
        rest = rest.subspan(4);
        if (length > rest.size())
            return 0;
        auto payload = rest.first(length);
        rest = rest.subspan(length);
        auto frame = decoder->feed(payload);
        if (!frame)
            return 0;
        for (const auto& piece : frame->pieces) {
            if (auto* run = std::get_if<PageRun>(&piece)) {
                check(run->first_page >= next_page && run->first_page + run->count <= shape.page_count);
                check(run->data.size() == run->count * kPageSize);
                check(run->data.data() >= payload.data() &&
                      run->data.data() + run->data.size() <= payload.data() + payload.size());
                next_page = run->first_page + run->count;
            } else if (auto* zero = std::get_if<ZeroRun>(&piece)) {
                check(zero->first_page >= next_page && zero->first_page + zero->count <= shape.page_count);
                next_page = zero->first_page + zero->count;
            } else {
                const auto& s = std::get<SectionView>(piece);
                check(s.body.data() >= payload.data() && s.body.data() + s.body.size() <= payload.data() + payload.size());
                check(sections.insert({int(s.id), s.instance}).second);
            }
        }
        if (frame->end) {
            check(sections.size() == (announced->kind == StateKind::Complete ? 2 + 3 + 1 : 0));
            return 0;
        }
    }
    return 0;
}
