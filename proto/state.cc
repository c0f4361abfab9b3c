// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/state.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "base/fd.h"
#include "proto/crc32c.h"
#include "proto/errors.h"
#include "proto/wire.h"

namespace colod::proto {

namespace {

constexpr uint8_t kRunData = 0;
constexpr uint8_t kRunZero = 1;

alignas(64) const std::byte kZeroPage[kPageSize] = {};

bool all_zero(std::span<const std::byte> page) { return std::memcmp(page.data(), kZeroPage, kPageSize) == 0; }

base::Error invalid(std::string message) { return base::Error(base::Errc::Invalid, std::move(message)); }

uint8_t platform_bit(SectionId id) {
    switch (id) {
    case SectionId::Irqchip: return static_cast<uint8_t>(PlatformSection::Irqchip);
    case SectionId::Pit: return static_cast<uint8_t>(PlatformSection::Pit);
    case SectionId::Clock: return static_cast<uint8_t>(PlatformSection::Clock);
    default: return 0;
    }
}

}  // namespace

std::string_view section_name(SectionId id) {
    switch (id) {
    case SectionId::Ram: return "RAM";
    case SectionId::Vcpu: return "VCPU";
    case SectionId::Irqchip: return "IRQCHIP";
    case SectionId::Pit: return "PIT";
    case SectionId::Clock: return "CLOCK";
    case SectionId::Device: return "DEVICE";
    case SectionId::End: return "END";
    }
    return "UNKNOWN";
}

StateShape StateShape::from_hello(const Hello& hello, SectionVersions versions) {
    StateShape shape;
    shape.page_count = hello.page_count();
    shape.vcpus = hello.vcpus;
    shape.devices = hello.devices;
    shape.versions = versions;
    return shape;
}

// ---- Gather lists ----

uint32_t crc32c_of(std::span<const iovec> iov) {
    Crc32c crc;
    for (const auto& v : iov)
        crc.update({static_cast<const std::byte*>(v.iov_base), v.iov_len});
    return crc.value();
}

size_t total_length(std::span<const iovec> iov) {
    size_t n = 0;
    for (const auto& v : iov)
        n += v.iov_len;
    return n;
}

std::span<const iovec> EncodedState::frame_iov(size_t index) const {
    const auto& f = m_frames.at(index);
    return std::span(m_iov).subspan(f.iov_begin, f.iov_count);
}

std::vector<std::byte> EncodedState::frame_payload(size_t index) const {
    std::vector<std::byte> out;
    out.reserve(m_frames.at(index).length);
    for (const auto& v : frame_iov(index)) {
        auto* p = static_cast<const std::byte*>(v.iov_base);
        out.insert(out.end(), p, p + v.iov_len);
    }
    return out;
}

// ---- Encoder ----

namespace {

// Builds one checkpoint's frames. Metadata goes into a byte vector that grows while planning,
// so gather entries first record offsets into it and become pointers only at the end.
class Planner {
public:
    Planner(uint64_t seq, uint32_t limit) : m_seq(seq), m_limit(limit) {}

    size_t room() const { return m_limit - m_frame_length; }
    bool frame_open() const { return m_frame_open; }

    void open_frame() {
        m_frames.push_back({m_entries.size(), 0, 0});
        m_frame_open = true;
        m_frame_length = 0;
        size_t at = meta(kStateHeaderSize);
        store_be64(&m_meta[at], m_seq);
        store_be32(&m_meta[at + 8], uint32_t(m_frames.size() - 1));
        store_be32(&m_meta[at + 12], 0);
    }
    void close_frame() {
        auto& f = m_frames.back();
        f.iov_count = m_entries.size() - f.iov_begin;
        f.length = uint32_t(m_frame_length);
        m_frame_open = false;
    }

    // Writes a section header and returns its offset, so the body length can be patched.
    size_t section_header(SectionId id, uint16_t version, uint32_t instance, std::string_view name,
                          uint32_t body_length) {
        size_t at = meta(kSectionHeaderSize + name.size());
        m_meta[at] = std::byte(static_cast<uint8_t>(id));
        m_meta[at + 1] = std::byte(uint8_t(name.size()));
        store_be16(&m_meta[at + 2], version);
        store_be32(&m_meta[at + 4], instance);
        store_be32(&m_meta[at + 8], body_length);
        if (!name.empty())
            std::memcpy(&m_meta[at + kSectionHeaderSize], name.data(), name.size());
        return at;
    }
    void patch_u8(size_t at, uint8_t v) { m_meta[at] = std::byte(v); }
    void patch_u32(size_t at, uint32_t v) { store_be32(&m_meta[at], v); }
    void patch_u64(size_t at, uint64_t v) { store_be64(&m_meta[at], v); }

    size_t meta(size_t n) {
        size_t at = m_meta.size();
        m_meta.resize(at + n);
        // Consecutive metadata stays one gather entry.
        if (!m_entries.empty() && m_entries.back().external == nullptr &&
            m_entries.back().offset + m_entries.back().length == at && m_entries.size() > m_frames.back().iov_begin)
            m_entries.back().length += n;
        else
            m_entries.push_back({nullptr, at, n});
        m_frame_length += n;
        return at;
    }
    void external(std::span<const std::byte> bytes) {
        if (bytes.empty())
            return;
        auto& last = m_entries.back();
        // Pages adjacent in the caller's memory merge into one entry: fewer, larger writes.
        if (last.external && last.external + last.length == bytes.data())
            last.length += bytes.size();
        else
            m_entries.push_back({bytes.data(), 0, bytes.size()});
        m_frame_length += bytes.size();
    }

    void finish(std::vector<std::byte>& meta_out, std::vector<iovec>& iov_out) {
        meta_out = std::move(m_meta);
        iov_out.clear();
        iov_out.reserve(m_entries.size());
        for (const auto& e : m_entries) {
            const std::byte* base = e.external ? e.external : meta_out.data() + e.offset;
            // SAFETY: iovec takes a non-const pointer for readv's sake; writev only reads it.
            iov_out.push_back({const_cast<std::byte*>(base), e.length});
        }
    }

    struct Frame {
        size_t iov_begin;
        size_t iov_count;
        uint32_t length;
    };
    std::vector<Frame> m_frames;

private:
    struct Entry {
        const std::byte* external;  // caller's bytes, or nullptr for metadata at `offset`
        size_t offset;
        size_t length;
    };
    uint64_t m_seq;
    size_t m_limit;
    size_t m_frame_length = 0;
    bool m_frame_open = false;
    std::vector<std::byte> m_meta;
    std::vector<Entry> m_entries;
};

}  // namespace

base::Result<EncodedState> StateEncoder::encode(const StateInput& input) const {
    const uint32_t limit = m_options.max_frame_payload;
    if (limit < kMinFramePayload || limit > kMaxStatePayload)
        return invalid(fmt::format("frame payload limit {} outside {}..{}", limit, kMinFramePayload, kMaxStatePayload));
    for (size_t i = 1; i < input.pages.size(); ++i)
        if (input.pages[i] <= input.pages[i - 1])
            return invalid(fmt::format("dirty page list not strictly ascending at entry {}", i));
    if (!input.pages.empty() && !input.page_bytes)
        return invalid("dirty pages given without a page lookup");
    if (input.kind == StateKind::Precopy && !input.sections.empty())
        return invalid("a pre-copy round carries RAM only");

    Planner plan(input.seq, limit);
    EncodedState out;
    plan.open_frame();

    // RAM. First the runs: consecutive indices of one kind (data or zero pages).
    struct Run {
        uint64_t first;
        uint64_t count;
        bool zero;
        size_t data_begin;  // index into `data` of the run's first page (data runs)
    };
    std::vector<Run> runs;
    std::vector<std::span<const std::byte>> data;
    for (uint64_t page : input.pages) {
        auto bytes = input.page_bytes(page);
        if (bytes.size() != kPageSize)
            return invalid(fmt::format("page {} lookup gave {} bytes", page, bytes.size()));
        bool zero = m_options.zero_scan == ZeroScan::On && all_zero(bytes);
        if (!runs.empty() && runs.back().zero == zero && runs.back().first + runs.back().count == page &&
            runs.back().count < UINT32_MAX) {
            ++runs.back().count;
        } else {
            runs.push_back({page, 1, zero, data.size()});
        }
        if (zero)
            ++out.m_zero_pages;
        else
            data.push_back(bytes);
    }

    // Then pack them into RAM sections, one per frame: header, run table, and the data of all
    // data runs back to back, so that the gather list holds page bytes without tiny header
    // pieces between them.
    constexpr size_t kRamFixed = kSectionHeaderSize + kRamTableHeaderSize;
    size_t next = 0;
    uint64_t done_in_run = 0;  // pages of runs[next] already packed into an earlier frame
    while (next < runs.size()) {
        if (plan.room() < kRamFixed + kRunHeaderSize + kPageSize) {
            plan.close_frame();
            plan.open_frame();
        }
        // Choose what fits: whole runs, and a data run split at a page boundary.
        size_t room = plan.room() - kRamFixed;
        struct Piece {
            uint64_t first;
            uint32_t count;
            bool zero;
            size_t data_begin;
        };
        std::vector<Piece> pieces;
        while (next < runs.size() && room >= kRunHeaderSize) {
            const Run& run = runs[next];
            uint64_t left = run.count - done_in_run;
            uint64_t take = left;
            if (!run.zero)
                take = std::min<uint64_t>(left, (room - kRunHeaderSize) / kPageSize);
            if (take == 0)
                break;
            pieces.push_back({run.first + done_in_run, uint32_t(take), run.zero, run.data_begin + done_in_run});
            room -= kRunHeaderSize + (run.zero ? 0 : take * kPageSize);
            done_in_run += take;
            if (done_in_run == run.count) {
                ++next;
                done_in_run = 0;
            }
        }
        size_t body_length = kRamTableHeaderSize + pieces.size() * kRunHeaderSize;
        for (const auto& piece : pieces)
            body_length += piece.zero ? 0 : piece.count * kPageSize;
        size_t at = plan.section_header(SectionId::Ram, kRamVersion, 0, {}, uint32_t(body_length));
        (void)at;
        size_t table = plan.meta(kRamTableHeaderSize + pieces.size() * kRunHeaderSize);
        plan.patch_u32(table, uint32_t(pieces.size()));
        for (size_t i = 0; i < pieces.size(); ++i) {
            size_t entry = table + kRamTableHeaderSize + i * kRunHeaderSize;
            plan.patch_u64(entry, pieces[i].first);
            plan.patch_u32(entry + 8, pieces[i].count);
            plan.patch_u8(entry + 12, pieces[i].zero ? kRunZero : kRunData);
        }
        for (const auto& piece : pieces)
            if (!piece.zero)
                for (uint32_t i = 0; i < piece.count; ++i)
                    plan.external(data[piece.data_begin + i]);
    }
    out.m_data_pages = data.size();

    uint32_t sections = 0;
    for (const auto& s : input.sections) {
        if (s.id == SectionId::Ram || s.id == SectionId::End)
            return invalid(fmt::format("{} is not an opaque section", section_name(s.id)));
        if (s.name.size() > kMaxNameLength)
            return invalid(fmt::format("section name '{}' longer than {}", s.name, kMaxNameLength));
        size_t need = kSectionHeaderSize + s.name.size() + s.body.size();
        if (need > limit - kStateHeaderSize)
            return invalid(fmt::format("{} section of {} bytes does not fit a frame of {}", section_name(s.id),
                                       s.body.size(), limit));
        if (need > plan.room()) {
            plan.close_frame();
            plan.open_frame();
        }
        plan.section_header(s.id, s.version, s.instance, s.name, uint32_t(s.body.size()));
        plan.external(s.body);
        ++sections;
    }

    if (kSectionHeaderSize + kEndBodySize > plan.room()) {
        plan.close_frame();
        plan.open_frame();
    }
    plan.section_header(SectionId::End, kEndVersion, 0, {}, kEndBodySize);
    size_t end_at = plan.meta(kEndBodySize);
    uint32_t frames = uint32_t(plan.m_frames.size());
    plan.patch_u64(end_at, input.seq);
    plan.patch_u32(end_at + 8, frames);
    plan.patch_u32(end_at + 12, sections);
    plan.patch_u64(end_at + 16, out.m_data_pages);
    plan.patch_u64(end_at + 24, out.m_zero_pages);
    plan.close_frame();

    plan.finish(out.m_meta, out.m_iov);
    uint64_t bytes = 0;
    for (const auto& f : plan.m_frames) {
        out.m_frames.push_back({f.iov_begin, f.iov_count, f.length});
        bytes += f.length;
    }
    out.m_size = VmstateSize{input.seq, bytes, out.m_data_pages + out.m_zero_pages, frames, input.kind};
    return out;
}

}  // namespace colod::proto

// ---- Decoder ----

namespace colod::proto {

base::Result<StateDecoder> StateDecoder::create(StateShape shape) {
    if (shape.page_count == 0)
        return invalid("state shape without guest memory");
    if (shape.vcpus == 0)
        return invalid("state shape without vCPUs");
    if (shape.required_platform & ~kAllPlatformSections)
        return invalid("state shape requires unknown platform sections");
    return StateDecoder(std::move(shape));
}

base::Result<void> StateDecoder::begin(const VmstateSize& size) {
    if (m_active)
        return error(Reason::StateOrder, "VMSTATE_SIZE for checkpoint {} while checkpoint {} is in progress", size.seq,
                     m_size.seq);
    if (m_last_complete && size.seq != *m_last_complete + 1)
        return error(Reason::SequenceGap, "checkpoint {} follows checkpoint {}", size.seq, *m_last_complete);
    if (size.frames == 0)
        return error(Reason::BadField, "VMSTATE_SIZE announces no frames");
    if (size.pages > m_shape.page_count)
        return error(Reason::PageBeyondMemory, "VMSTATE_SIZE announces {} pages, the guest has {}", size.pages,
                     m_shape.page_count);
    m_size = size;
    m_progress = Progress{};
    m_progress.vcpus_seen.assign(m_shape.vcpus, false);
    m_progress.devices_seen.assign(m_shape.devices.size(), false);
    m_active = true;
    return base::ok();
}

void StateDecoder::abandon() {
    m_active = false;
    m_progress = Progress{};
}

base::Result<DecodedFrame> StateDecoder::feed(std::span<const std::byte> payload) {
    if (!m_active)
        return error(Reason::StateOrder, "VMSTATE_SEND without VMSTATE_SIZE");
    // Work on a copy: a frame that fails halfway leaves the decoder as it was.
    Progress p = m_progress;
    ByteReader r(payload);
    uint64_t seq = TRY(r.u64("VMSTATE_SEND sequence"));
    uint32_t index = TRY(r.u32("VMSTATE_SEND frame index"));
    uint32_t reserved = TRY(r.u32("VMSTATE_SEND reserved"));
    if (seq != m_size.seq)
        return error(Reason::StateOrder, "VMSTATE_SEND for checkpoint {} inside checkpoint {}", seq, m_size.seq);
    if (index != p.next_frame)
        return error(Reason::StateOrder, "VMSTATE_SEND frame {} where frame {} was due", index, p.next_frame);
    if (index >= m_size.frames)
        return error(Reason::EndMismatch, "VMSTATE_SEND frame {} beyond the {} announced", index, m_size.frames);
    if (reserved != 0)
        return error(Reason::BadField, "VMSTATE_SEND reserved field {:#x}", reserved);
    p.bytes += payload.size();
    if (p.bytes > m_size.bytes)
        return error(Reason::EndMismatch, "{} state bytes received, {} announced", p.bytes, m_size.bytes);

    DecodedFrame out;
    out.kind = m_size.kind;
    bool saw_end = false;
    while (!r.at_end()) {
        if (saw_end)
            return error(Reason::StateOrder, "{} bytes after END", r.remaining());
        TRY(decode_section(r, p, out, saw_end));
    }
    p.next_frame = index + 1;
    if (!saw_end && p.next_frame == m_size.frames)
        return error(Reason::EndMismatch, "the last of {} announced frames ends without END", m_size.frames);
    if (saw_end) {
        m_last_complete = m_size.seq;
        abandon();
    } else {
        m_progress = std::move(p);
    }
    return out;
}

base::Result<void> StateDecoder::decode_section(ByteReader& r, Progress& p, DecodedFrame& out, bool& saw_end) const {
    if (r.remaining() < kSectionHeaderSize)
        return error(Reason::Truncated, "section header needs {} bytes, {} left", kSectionHeaderSize, r.remaining());
    uint8_t raw_id = TRY(r.u8("section id"));
    uint8_t name_length = TRY(r.u8("section name length"));
    uint16_t version = TRY(r.u16("section version"));
    uint32_t instance = TRY(r.u32("section instance"));
    uint32_t body_length = TRY(r.u32("section length"));
    if (size_t(name_length) + body_length > r.remaining())
        return error(Reason::SectionOverrun, "section id {} claims {} bytes, its frame holds {} more", raw_id,
                     size_t(name_length) + body_length, r.remaining());
    if (raw_id < static_cast<uint8_t>(SectionId::Ram) || raw_id > static_cast<uint8_t>(SectionId::End))
        return error(Reason::UnknownSection, "section id {}", raw_id);
    auto id = static_cast<SectionId>(raw_id);
    auto name_bytes = TRY(r.bytes(name_length, "section name"));
    auto body = TRY(r.bytes(body_length, "section body"));
    // SAFETY: std::byte and char have the same size; the name is only compared and returned.
    std::string_view name(reinterpret_cast<const char*>(name_bytes.data()), name_bytes.size());
    if (id != SectionId::Device && name_length != 0)
        return error(Reason::BadField, "{} section carries a name", section_name(id));
    if (m_size.kind == StateKind::Precopy && id != SectionId::Ram && id != SectionId::End)
        return error(Reason::BadField, "{} section in a pre-copy round", section_name(id));

    auto check_version = [&](uint16_t known) -> base::Result<void> {
        if (version != known)
            return error(Reason::UnknownSectionVersion, "{} section version {}, this side reads {}", section_name(id),
                         version, known);
        return base::ok();
    };
    auto check_instance_zero = [&]() -> base::Result<void> {
        if (instance != 0)
            return error(Reason::BadField, "{} section instance {}", section_name(id), instance);
        return base::ok();
    };

    switch (id) {
    case SectionId::Ram:
        TRY(check_version(kRamVersion));
        TRY(check_instance_zero());
        return decode_ram(body, p, out);
    case SectionId::End:
        TRY(check_version(kEndVersion));
        TRY(check_instance_zero());
        TRY(check_end(body, p, out));
        saw_end = true;
        return base::ok();
    case SectionId::Vcpu:
        TRY(check_version(m_shape.versions.vcpu));
        if (instance >= m_shape.vcpus)
            return error(Reason::BadField, "VCPU section for vCPU {}, the guest has {}", instance, m_shape.vcpus);
        if (p.vcpus_seen[instance])
            return error(Reason::DuplicateSection, "VCPU section for vCPU {} twice", instance);
        p.vcpus_seen[instance] = true;
        break;
    case SectionId::Irqchip:
    case SectionId::Pit:
    case SectionId::Clock: {
        uint16_t known = id == SectionId::Irqchip ? m_shape.versions.irqchip
                         : id == SectionId::Pit   ? m_shape.versions.pit
                                                  : m_shape.versions.clock;
        TRY(check_version(known));
        TRY(check_instance_zero());
        uint8_t bit = platform_bit(id);
        if (p.platform_seen & bit)
            return error(Reason::DuplicateSection, "{} section twice", section_name(id));
        p.platform_seen |= bit;
        break;
    }
    case SectionId::Device: {
        if (instance >= m_shape.devices.size())
            return error(Reason::BadField, "DEVICE section instance {}, the guest has {} devices", instance,
                         m_shape.devices.size());
        const auto& device = m_shape.devices[instance];
        if (name != device.name)
            return error(Reason::BadField, "DEVICE section {} named '{}', expected '{}'", instance, name, device.name);
        if (device.version > UINT16_MAX)
            return error(Reason::UnknownSectionVersion, "device {} version {} does not fit a section", device.name,
                         device.version);
        TRY(check_version(uint16_t(device.version)));
        if (p.devices_seen[instance])
            return error(Reason::DuplicateSection, "DEVICE section {} ({}) twice", instance, device.name);
        p.devices_seen[instance] = true;
        break;
    }
    }
    ++p.sections;
    out.pieces.push_back(SectionView{id, version, instance, name, body});
    return base::ok();
}

base::Result<void> StateDecoder::decode_ram(std::span<const std::byte> body, Progress& p, DecodedFrame& out) const {
    ByteReader r(body);
    uint32_t count_runs = TRY(r.u32("RAM run count"));
    uint32_t reserved = TRY(r.u32("RAM reserved"));
    if (reserved != 0)
        return error(Reason::BadField, "RAM reserved field {:#x}", reserved);
    if (uint64_t(count_runs) * kRunHeaderSize > r.remaining())
        return error(Reason::SectionOverrun, "RAM run table of {} runs needs {} bytes, its section holds {}", count_runs,
                     uint64_t(count_runs) * kRunHeaderSize, r.remaining());
    // The table first: every run checked before any data is handed out.
    ByteReader data_reader(body.subspan(r.offset() + size_t(count_runs) * kRunHeaderSize));
    uint64_t data_needed = 0;
    size_t first_piece = out.pieces.size();
    for (uint32_t i = 0; i < count_runs; ++i) {
        uint64_t first = TRY(r.u64("RAM run first page"));
        uint32_t count = TRY(r.u32("RAM run page count"));
        uint8_t kind = TRY(r.u8("RAM run kind"));
        auto run_reserved = TRY(r.bytes(3, "RAM run reserved"));
        if (count == 0)
            return error(Reason::BadField, "RAM run at page {} with no pages", first);
        if (kind != kRunData && kind != kRunZero)
            return error(Reason::BadField, "RAM run kind {}", kind);
        if (std::any_of(run_reserved.begin(), run_reserved.end(), [](std::byte b) { return b != std::byte{0}; }))
            return error(Reason::BadField, "RAM run reserved bytes not zero");
        if (first >= m_shape.page_count || count > m_shape.page_count - first)
            return error(Reason::PageBeyondMemory, "RAM run of {} pages at page {}, the guest has {} pages", count, first,
                         m_shape.page_count);
        if (first < p.next_page)
            return error(Reason::RunsOutOfOrder, "RAM run at page {} overlaps or precedes pages up to {}", first,
                         p.next_page);
        p.next_page = first + count;
        if (kind == kRunZero) {
            p.zero_pages += count;
            out.pieces.push_back(ZeroRun{first, count});
        } else {
            data_needed += uint64_t(count) * kPageSize;
            if (data_needed > data_reader.remaining())
                return error(Reason::SectionOverrun, "RAM runs need {} data bytes, the section holds {}", data_needed,
                             data_reader.remaining());
            p.data_pages += count;
            out.pieces.push_back(PageRun{first, count, {}});
        }
    }
    if (data_needed != data_reader.remaining())
        return error(Reason::BadField, "RAM section holds {} data bytes, its runs need {}", data_reader.remaining(),
                     data_needed);
    for (size_t i = first_piece; i < out.pieces.size(); ++i)
        if (auto* run = std::get_if<PageRun>(&out.pieces[i]))
            run->data = TRY(data_reader.bytes(size_t(run->count) * kPageSize, "RAM run data"));
    return base::ok();
}

base::Result<void> StateDecoder::check_end(std::span<const std::byte> body, const Progress& p, DecodedFrame& out) const {
    ByteReader r(body);
    EndSummary end;
    end.seq = TRY(r.u64("END sequence"));
    end.frames = TRY(r.u32("END frame count"));
    end.sections = TRY(r.u32("END section count"));
    end.data_pages = TRY(r.u64("END data pages"));
    end.zero_pages = TRY(r.u64("END zero pages"));
    if (end.seq != m_size.seq)
        return error(Reason::EndMismatch, "END for checkpoint {} inside checkpoint {}", end.seq, m_size.seq);
    uint32_t frames = p.next_frame + 1;
    if (end.frames != frames || m_size.frames != frames)
        return error(Reason::EndMismatch, "END in frame {}, END says {} frames, VMSTATE_SIZE said {}", frames,
                     end.frames, m_size.frames);
    if (end.sections != p.sections)
        return error(Reason::EndMismatch, "END counts {} sections, {} arrived", end.sections, p.sections);
    if (end.data_pages != p.data_pages || end.zero_pages != p.zero_pages)
        return error(Reason::EndMismatch, "END counts {} data and {} zero pages, {} and {} arrived", end.data_pages,
                     end.zero_pages, p.data_pages, p.zero_pages);
    if (m_size.pages != p.data_pages + p.zero_pages)
        return error(Reason::EndMismatch, "VMSTATE_SIZE announced {} pages, {} arrived", m_size.pages,
                     p.data_pages + p.zero_pages);
    if (m_size.bytes != p.bytes)
        return error(Reason::EndMismatch, "VMSTATE_SIZE announced {} bytes, {} arrived", m_size.bytes, p.bytes);
    if (m_size.kind == StateKind::Precopy) {
        out.end = end;
        return base::ok();
    }
    for (uint32_t i = 0; i < m_shape.vcpus; ++i)
        if (!p.vcpus_seen[i])
            return error(Reason::MissingSection, "no VCPU section for vCPU {}", i);
    for (SectionId id : {SectionId::Irqchip, SectionId::Pit, SectionId::Clock}) {
        uint8_t bit = platform_bit(id);
        if ((m_shape.required_platform & bit) && !(p.platform_seen & bit))
            return error(Reason::MissingSection, "no {} section", section_name(id));
    }
    for (size_t i = 0; i < m_shape.devices.size(); ++i)
        if (!p.devices_seen[i])
            return error(Reason::MissingSection, "no DEVICE section for {}", m_shape.devices[i].name);
    out.end = end;
    return base::ok();
}

// ---- Snapshot files ----

namespace {

std::array<std::byte, kSnapshotHeaderSize> snapshot_header() {
    std::array<std::byte, kSnapshotHeaderSize> out{};
    std::memcpy(out.data(), kSnapshotMagic.data(), kSnapshotMagic.size());
    store_be32(&out[8], kSnapshotVersion);
    return out;
}

// The small frames of a snapshot (header, HELLO, VMSTATE_SIZE) and the header and trailer of
// each VMSTATE_SEND frame, in file order, beside the state's own gather lists.
struct SnapshotLayout {
    std::vector<std::byte> prefix;
    std::vector<std::array<std::byte, kHeaderSize>> frame_headers;
    std::vector<std::array<std::byte, kCrcSize>> frame_trailers;
};

SnapshotLayout layout_snapshot(const Hello& identity, const EncodedState& state) {
    SnapshotLayout l;
    auto header = snapshot_header();
    l.prefix.assign(header.begin(), header.end());
    Hello id = identity;
    id.nonce = {};
    auto hello = encode_frame(MessageType::Hello, 0, id.encode());
    l.prefix.insert(l.prefix.end(), hello.begin(), hello.end());
    auto size = encode_frame(MessageType::VmstateSize, 1, state.size().encode());
    l.prefix.insert(l.prefix.end(), size.begin(), size.end());
    for (size_t i = 0; i < state.frame_count(); ++i) {
        FrameHeader h{kWireVersion, MessageType::VmstateSend, 0, 2 + i, state.frame_payload_length(i)};
        l.frame_headers.push_back(encode_header(h));
        std::array<std::byte, kCrcSize> trailer{};
        store_be32(trailer.data(), crc32c_of(state.frame_iov(i)));
        l.frame_trailers.push_back(trailer);
    }
    return l;
}

}  // namespace

std::vector<std::byte> encode_snapshot(const Hello& identity, const EncodedState& state) {
    SnapshotLayout l = layout_snapshot(identity, state);
    std::vector<std::byte> out = std::move(l.prefix);
    for (size_t i = 0; i < state.frame_count(); ++i) {
        out.insert(out.end(), l.frame_headers[i].begin(), l.frame_headers[i].end());
        auto payload = state.frame_payload(i);
        out.insert(out.end(), payload.begin(), payload.end());
        out.insert(out.end(), l.frame_trailers[i].begin(), l.frame_trailers[i].end());
    }
    return out;
}

namespace {
base::Result<void> write_all(int fd, std::span<const iovec> iov, const std::string& path) {
    std::vector<iovec> rest(iov.begin(), iov.end());
    size_t at = 0;
    while (at < rest.size()) {
        int count = int(std::min<size_t>(rest.size() - at, IOV_MAX));
        ssize_t n = ::writev(fd, &rest[at], count);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return base::Error::from_errno(fmt::format("writing {}", path));
        }
        size_t left = size_t(n);
        while (at < rest.size() && left >= rest[at].iov_len)
            left -= rest[at++].iov_len;
        if (left) {
            rest[at].iov_base = static_cast<std::byte*>(rest[at].iov_base) + left;
            rest[at].iov_len -= left;
        }
    }
    return base::ok();
}
}  // namespace

base::Result<void> write_snapshot_file(const std::string& path, const Hello& identity, const EncodedState& state) {
    SnapshotLayout l = layout_snapshot(identity, state);
    std::string temporary = path + ".tmp";
    base::Fd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd)
        return base::Error::from_errno(fmt::format("creating {}", temporary));
    std::vector<iovec> iov;
    // SAFETY: iovec wants non-const pointers; writev only reads them.
    auto add = [&](std::span<const std::byte> b) { iov.push_back({const_cast<std::byte*>(b.data()), b.size()}); };
    add(l.prefix);
    for (size_t i = 0; i < state.frame_count(); ++i) {
        add(l.frame_headers[i]);
        for (const auto& v : state.frame_iov(i))
            iov.push_back(v);
        add(l.frame_trailers[i]);
    }
    TRY(write_all(fd.get(), iov, temporary));
    if (::fsync(fd.get()) != 0)
        return base::Error::from_errno(fmt::format("fsync {}", temporary));
    fd.reset();
    if (::rename(temporary.c_str(), path.c_str()) != 0)
        return base::Error::from_errno(fmt::format("renaming {} to {}", temporary, path));
    return base::ok();
}

base::Result<Snapshot> decode_snapshot(std::span<const std::byte> file, SectionVersions versions) {
    if (file.size() < kSnapshotHeaderSize ||
        std::memcmp(file.data(), kSnapshotMagic.data(), kSnapshotMagic.size()) != 0)
        return error(Reason::BadSnapshot, "not a colod snapshot (magic)");
    uint32_t version = load_be32(&file[8]);
    if (version != kSnapshotVersion)
        return error(Reason::BadSnapshot, "snapshot format version {}, this build reads {}", version,
                     kSnapshotVersion);
    if (load_be32(&file[12]) != 0)
        return error(Reason::BadSnapshot, "snapshot header reserved field not zero");
    auto rest = file.subspan(kSnapshotHeaderSize);
    uint64_t expected_sequence = 0;
    auto next_frame = [&](MessageType type) -> base::Result<FrameView> {
        FrameView f = TRY(decode_frame(rest));
        if (f.header.type != type)
            return error(Reason::UnexpectedMessage, "snapshot holds {} where {} belongs",
                         message_type_name(f.header.type), message_type_name(type));
        if (f.header.sequence != expected_sequence)
            return error(Reason::SequenceGap, "snapshot frame {} where {} belongs", f.header.sequence,
                         expected_sequence);
        if (f.header.tagged())
            return error(Reason::BadFlags, "snapshot frames are in clear with a CRC, not tagged");
        ++expected_sequence;
        rest = rest.subspan(f.size);
        return f;
    };
    Snapshot snap;
    FrameView hello = TRY(next_frame(MessageType::Hello));
    snap.identity = TRY(Hello::decode(hello.payload));
    FrameView size = TRY(next_frame(MessageType::VmstateSize));
    snap.size = TRY(VmstateSize::decode(size.payload));
    if (snap.size.kind != StateKind::Complete)
        return error(Reason::BadSnapshot, "a snapshot must hold a complete state");
    auto decoder = TRY(StateDecoder::create(StateShape::from_hello(snap.identity, versions)));
    TRY(decoder.begin(snap.size));
    for (;;) {
        FrameView f = TRY(next_frame(MessageType::VmstateSend));
        DecodedFrame d = TRY(decoder.feed(f.payload));
        snap.pieces.insert(snap.pieces.end(), std::make_move_iterator(d.pieces.begin()),
                           std::make_move_iterator(d.pieces.end()));
        if (d.end) {
            snap.end = *d.end;
            break;
        }
    }
    if (!rest.empty())
        return error(Reason::BadSnapshot, "{} bytes after the snapshot's END", rest.size());
    return snap;
}

}  // namespace colod::proto
