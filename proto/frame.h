// SPDX-License-Identifier: GPL-2.0-or-later
// Frames: the unit of the replication link and of snapshot files. docs/protocol.md draws the
// layout byte by byte; in short (all integers big-endian):
//
//   header (24 bytes)                         payload              trailer
//   magic u32 | version u8 | type u8 |        payload_length       crc32c u32 of the payload,
//   flags u16 | sequence u64 |                bytes (ciphertext    or a 16-byte AEAD tag when
//   payload_length u32 | header_check u32     when Sealed)         flag Tag or Sealed is set
//
// header_check is the CRC32C of the 20 header bytes before it, so a corrupt length is caught
// before anything is allocated or read for the payload. Every message type has its own payload
// cap; the decoder refuses a longer frame from its header alone. After the handshake a session
// with link security seals every frame (FrameCipher in link_crypto.h): the header stays in
// clear, authenticated as associated data, because the receiver needs its length and type
// before it can check anything else.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace colod::proto {

inline constexpr uint32_t kFrameMagic = 0x434F4C44;  // "COLD"
inline constexpr uint8_t kWireVersion = 1;
inline constexpr size_t kHeaderSize = 24;
inline constexpr size_t kCrcSize = 4;
// The AEAD tag that replaces the CRC in an authenticated or encrypted frame.
inline constexpr size_t kTagSize = 16;
// The largest VMSTATE_SEND payload; StateEncoder keeps its frames at or below its own
// (smaller, configurable) limit, which may not exceed this.
inline constexpr uint32_t kMaxStatePayload = 32u << 20;
// The most disk data (written bytes, block bytes or hashes) one DISK_* message carries.
inline constexpr uint32_t kMaxDiskMessageBytes = 1u << 20;

// Message types. Numbers are never reused; 22..63 are reserved for later messages and are
// refused as UnknownType by this version: a peer may only send them after HELLO shows the other side's protocol_version knows
// them.
enum class MessageType : uint8_t {
    Hello = 1,
    Auth = 2,
    Error = 3,
    Heartbeat = 4,
    CheckpointReady = 5,
    CheckpointRequest = 6,
    CheckpointReply = 7,
    VmstateSend = 8,
    VmstateSize = 9,
    VmstateReceived = 10,
    VmstateLoaded = 11,
    GuestShutdown = 12,
    Handover = 13,
    ConsoleInput = 14,
    ConsoleOutput = 15,
    RngInput = 16,
    NetInput = 17,
    NetOutput = 18,
    DiskWrites = 19,
    DiskHashes = 20,
    DiskBlocks = 21,
};

std::string_view message_type_name(MessageType type);
// True for the types this build knows.
bool known_message_type(uint8_t type);
// The payload cap of a type: what a conforming sender never exceeds.
uint32_t payload_cap(MessageType type);

// Header flags. Bit 0 was protocol 1's BLAKE2b MAC trailer: retired, refused as BadFlags (bit
// numbers are never reused). At most one of Tag and Sealed is set.
enum class FrameFlag : uint16_t {
    Tag = 2,     // link-security authenticated: payload in clear, a 16-byte tag instead of the CRC
    Sealed = 4,  // link-security encrypted: payload is ciphertext, a 16-byte tag instead of the CRC
};
inline constexpr uint16_t kKnownFlags = static_cast<uint16_t>(FrameFlag::Tag) | static_cast<uint16_t>(FrameFlag::Sealed);

struct FrameHeader {
    uint8_t version = kWireVersion;
    MessageType type = MessageType::Hello;
    uint16_t flags = 0;
    uint64_t sequence = 0;
    uint32_t payload_length = 0;

    bool has(FrameFlag flag) const { return flags & static_cast<uint16_t>(flag); }
    // True when an AEAD tag, not a CRC, follows the payload.
    bool tagged() const { return has(FrameFlag::Tag) || has(FrameFlag::Sealed); }
    // Bytes that follow the header: payload, then the CRC or the tag.
    size_t trailer_size() const { return tagged() ? kTagSize : kCrcSize; }
    size_t body_size() const { return size_t(payload_length) + trailer_size(); }
    bool operator==(const FrameHeader&) const = default;
};

using HeaderBytes = std::array<std::byte, kHeaderSize>;

// Writes magic, the fields and the header check. Encodes any field values, also invalid ones
// (tests build malformed headers with it).
HeaderBytes encode_header(const FrameHeader& header);

// Checks, in this order: length (TruncatedHeader), magic (BadMagic), header check
// (HeaderCheck), version (BadVersion), type (UnknownType), flags (BadFlags: an unknown bit, or
// Tag and Sealed together), payload length
// against the type's cap (LengthOverCap). Pure; reads only the first kHeaderSize bytes.
base::Result<FrameHeader> decode_header(std::span<const std::byte> bytes);

// A whole frame in memory, as decode_frame found it; spans point into the decoded buffer.
struct FrameView {
    FrameHeader header;
    std::span<const std::byte> payload;  // ciphertext when FrameFlag::Sealed
    std::span<const std::byte> tag;      // empty unless the frame is tagged
    size_t size = 0;                     // bytes the frame occupies (header + body)
};

// Decodes the frame at the start of `bytes` (trailing bytes are left for the next frame):
// decode_header's checks, then TruncatedPayload, then PayloadCrc for a frame with a CRC. A
// tagged frame's tag is not checked here (that needs the session's key: FrameCipher), nor is
// the sequence (the caller's).
base::Result<FrameView> decode_frame(std::span<const std::byte> bytes);

// The whole frame (header + payload + CRC) in one buffer, in clear. For small messages, tests
// and files; the link streams large frames instead.
std::vector<std::byte> encode_frame(MessageType type, uint64_t sequence,
                                    std::span<const std::byte> payload);

// Checks the CRC trailer of a payload received separately from its header.
base::Result<void> check_payload_crc(std::span<const std::byte> payload, std::span<const std::byte> crc);

}  // namespace colod::proto
