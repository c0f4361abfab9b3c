// SPDX-License-Identifier: GPL-2.0-or-later
// VM state as versioned, self-describing sections, for checkpoints on the link and for snapshot
// files. docs/protocol.md has the byte layout; in short a checkpoint is
//
//   VMSTATE_SIZE{seq, bytes, pages, frames}
//   VMSTATE_SEND{seq, frame_index, sections...}   x frames, each payload <= the frame limit
//
// and each section is  id u8 | name_len u8 | version u16 | instance u32 | body_length u32 |
// name | body.  Sections: RAM (a table of page runs, then the bytes of its data runs back to
// back; zero pages are runs without data), one per
// vCPU, IRQCHIP, PIT, CLOCK, one per device (named), and END, the last thing in the last frame,
// which carries counts so the receiver can prove it has everything.
//
// proto never touches guest memory: the encoder builds gather lists that point at the caller's
// page bytes, and the decoder hands back spans into the received frame for the caller to stage.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/result.h"
#include "proto/messages.h"

namespace colod::proto {

class ByteReader;

enum class SectionId : uint8_t {
    Ram = 1,
    Vcpu = 2,
    Irqchip = 3,
    Pit = 4,
    Clock = 5,
    Device = 6,
    End = 7,
};
std::string_view section_name(SectionId id);

inline constexpr size_t kStateHeaderSize = 16;    // seq u64, frame_index u32, reserved u32
inline constexpr size_t kSectionHeaderSize = 12;
inline constexpr size_t kRamTableHeaderSize = 8;  // run count u32, reserved u32
inline constexpr size_t kRunHeaderSize = 16;      // first_page u64, count u32, kind u8, 3 reserved
inline constexpr size_t kEndBodySize = 32;
inline constexpr uint16_t kRamVersion = 1;
inline constexpr uint16_t kEndVersion = 1;

// The body formats of vCPU, irqchip, PIT and clock sections belong to core/; proto checks
// that each arrives in the one version the receiver reads. Device versions come from the
// device list in HELLO.
struct SectionVersions {
    uint16_t vcpu = 1;
    uint16_t irqchip = 1;
    uint16_t pit = 1;
    uint16_t clock = 1;
};

// Platform sections a complete state must hold.
enum class PlatformSection : uint8_t { Irqchip = 1, Pit = 2, Clock = 4 };
inline constexpr uint8_t kAllPlatformSections = 7;

// What the receiver's guest looks like: the limits a checkpoint is validated against.
struct StateShape {
    uint64_t page_count = 0;
    uint32_t vcpus = 0;
    std::vector<DeviceInfo> devices;  // device section instance i is devices[i]
    SectionVersions versions;
    uint8_t required_platform = kAllPlatformSections;  // PlatformSection bits

    static StateShape from_hello(const Hello& hello, SectionVersions versions = {});
};

// ---- Encoding ----

// An opaque section for the encoder. `body` is referenced, not copied: it must stay valid and
// unchanged until the EncodedState has been sent or written.
struct SectionInput {
    SectionId id = SectionId::Vcpu;
    uint16_t version = 1;
    uint32_t instance = 0;
    std::string name;  // devices only
    std::span<const std::byte> body;
};

// The 4 KiB of one guest page, given its index. Called once per dirty page while encoding;
// the returned bytes are referenced by the result, not copied, so they must stay valid and
// unchanged until sent (guest paused, or a checkpoint buffer).
using PageLookup = std::function<std::span<const std::byte>(uint64_t page)>;

struct StateInput {
    uint64_t seq = 0;
    std::span<const uint64_t> pages;  // dirty page indices, strictly ascending
    PageLookup page_bytes;
    std::vector<SectionInput> sections;  // every non-RAM section except END, in sending order
    StateKind kind = StateKind::Complete;  // Precopy: RAM only, `sections` must be empty
};

enum class ZeroScan { On, Off };

struct EncoderOptions {
    uint32_t max_frame_payload = 4u << 20;  // kMinFramePayload..kMaxStatePayload
    ZeroScan zero_scan = ZeroScan::On;     // elide all-zero pages
};
inline constexpr uint32_t kMinFramePayload = 64u << 10;

// The planned frames of one checkpoint: VMSTATE_SIZE plus, per VMSTATE_SEND frame, a gather
// list over small headers owned here and page/section bytes owned by the caller. Movable; the
// gather lists stay valid across moves.
class EncodedState {
public:
    const VmstateSize& size() const { return m_size; }
    size_t frame_count() const { return m_frames.size(); }
    std::span<const iovec> frame_iov(size_t index) const;
    uint32_t frame_payload_length(size_t index) const { return m_frames[index].length; }
    // Frame `index`'s payload copied into one buffer (files, tests, fuzz corpora).
    std::vector<std::byte> frame_payload(size_t index) const;
    uint64_t data_pages() const { return m_data_pages; }
    uint64_t zero_pages() const { return m_zero_pages; }

private:
    friend class StateEncoder;
    struct FrameExtent {
        size_t iov_begin = 0;
        size_t iov_count = 0;
        uint32_t length = 0;
    };
    VmstateSize m_size;
    std::vector<std::byte> m_meta;  // payload headers, section headers, run headers
    std::vector<iovec> m_iov;
    std::vector<FrameExtent> m_frames;
    uint64_t m_data_pages = 0;
    uint64_t m_zero_pages = 0;
};

class StateEncoder {
public:
    explicit StateEncoder(EncoderOptions options = {}) : m_options(options) {}
    // Plans the frames of a checkpoint. Input errors (unsorted pages, a page span that is not
    // 4 KiB, a section bigger than a frame, a bad frame limit) are base::Errc::Invalid: they are
    // the caller's bugs, not the peer's.
    base::Result<EncodedState> encode(const StateInput& input) const;

private:
    EncoderOptions m_options;
};

// ---- Decoding ----

struct PageRun {
    uint64_t first_page = 0;
    uint32_t count = 0;
    std::span<const std::byte> data;  // count * kPageSize bytes inside the frame payload
};
struct ZeroRun {
    uint64_t first_page = 0;
    uint32_t count = 0;
};
struct SectionView {
    SectionId id = SectionId::Vcpu;
    uint16_t version = 0;
    uint32_t instance = 0;
    std::string_view name;             // devices only; points into the frame payload
    std::span<const std::byte> body;  // points into the frame payload
};
using StatePiece = std::variant<PageRun, ZeroRun, SectionView>;

// What END promised and the decoder verified.
struct EndSummary {
    uint64_t seq = 0;
    uint32_t frames = 0;
    uint32_t sections = 0;  // vCPU, platform and device sections (not RAM, not END)
    uint64_t data_pages = 0;
    uint64_t zero_pages = 0;
    bool operator==(const EndSummary&) const = default;
};

struct DecodedFrame {
    std::vector<StatePiece> pieces;  // in payload order; spans point into the fed payload
    std::optional<EndSummary> end;   // set when this frame completed the transfer
    StateKind kind = StateKind::Complete;
};

// Validates checkpoints frame by frame. Pure over the spans it is given; holds only counters
// and "seen" sets between frames. feed() decodes a whole payload before it returns anything and
// changes no state on failure. The caller stages the pieces and applies them only after a
// frame came back with `end` set. Any error means the checkpoint is lost: call abandon() (or
// drop the decoder) before starting the next one.
class StateDecoder {
public:
    static base::Result<StateDecoder> create(StateShape shape);

    // Starts a state transfer. After a completed one (or set_last_complete), size.seq must be
    // the next number, else SequenceGap; a transfer already in progress is StateOrder. A
    // Complete transfer must hold every vCPU, platform and device section by its END; a
    // Precopy round holds RAM only (any other section is BadField).
    base::Result<void> begin(const VmstateSize& size);
    base::Result<DecodedFrame> feed(std::span<const std::byte> payload);
    // Forgets a checkpoint in progress (link lost, decode error).
    void abandon();
    // The last complete checkpoint, for a secondary that resumes counting from its committed
    // state; the next begin() must then announce seq + 1.
    void set_last_complete(uint64_t seq) { m_last_complete = seq; }
    std::optional<uint64_t> last_complete() const { return m_last_complete; }
    bool in_progress() const { return m_active; }
    const StateShape& shape() const { return m_shape; }

private:
    explicit StateDecoder(StateShape shape) : m_shape(std::move(shape)) {}

    struct Progress {
        uint32_t next_frame = 0;
        uint64_t bytes = 0;
        uint64_t next_page = 0;  // runs must start at or after this index
        uint64_t data_pages = 0;
        uint64_t zero_pages = 0;
        uint32_t sections = 0;
        std::vector<bool> vcpus_seen;
        std::vector<bool> devices_seen;
        uint8_t platform_seen = 0;
    };

    base::Result<void> decode_section(ByteReader& reader, Progress& p, DecodedFrame& out,
                                      bool& saw_end) const;
    base::Result<void> decode_ram(std::span<const std::byte> body, Progress& p, DecodedFrame& out) const;
    base::Result<void> check_end(std::span<const std::byte> body, const Progress& p, DecodedFrame& out) const;

    StateShape m_shape;
    VmstateSize m_size;
    bool m_active = false;
    Progress m_progress;
    std::optional<uint64_t> m_last_complete;
};

// ---- Snapshot files ----
// A snapshot file is the same frames as the link carries, after a small file header:
//   "COLODSNP" | format version u32 | reserved u32 | HELLO frame (identity; nonce zero) |
//   VMSTATE_SIZE frame | VMSTATE_SEND frames
// Frame sequence numbers count from 0 and must be contiguous.
inline constexpr std::string_view kSnapshotMagic = "COLODSNP";
inline constexpr uint32_t kSnapshotVersion = 1;
inline constexpr size_t kSnapshotHeaderSize = 16;

struct Snapshot {
    Hello identity;    // compare with incompatibility() before applying anything
    VmstateSize size;
    std::vector<StatePiece> pieces;  // spans point into the decoded file bytes
    EndSummary end;
};

std::vector<std::byte> encode_snapshot(const Hello& identity, const EncodedState& state);
// Writes the snapshot with gather writes to `path` via a temporary file, fsync and rename, so
// that a crash never leaves a half-written file under the final name.
base::Result<void> write_snapshot_file(const std::string& path, const Hello& identity, const EncodedState& state);
// Validates the whole file (every frame CRC, every section rule against the shape the
// identity declares) before returning anything.
base::Result<Snapshot> decode_snapshot(std::span<const std::byte> file, SectionVersions versions = {});

// Gather-list helpers shared by the link and the snapshot writer.
uint32_t crc32c_of(std::span<const iovec> iov);
size_t total_length(std::span<const iovec> iov);

}  // namespace colod::proto
