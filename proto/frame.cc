// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/frame.h"

#include "proto/crc32c.h"
#include "proto/errors.h"
#include "proto/wire.h"

namespace colod::proto {

std::string_view message_type_name(MessageType type) {
    switch (type) {
    case MessageType::Hello: return "HELLO";
    case MessageType::Auth: return "AUTH";
    case MessageType::Error: return "ERROR";
    case MessageType::Heartbeat: return "HEARTBEAT";
    case MessageType::CheckpointReady: return "CHECKPOINT_READY";
    case MessageType::CheckpointRequest: return "CHECKPOINT_REQUEST";
    case MessageType::CheckpointReply: return "CHECKPOINT_REPLY";
    case MessageType::VmstateSend: return "VMSTATE_SEND";
    case MessageType::VmstateSize: return "VMSTATE_SIZE";
    case MessageType::VmstateReceived: return "VMSTATE_RECEIVED";
    case MessageType::VmstateLoaded: return "VMSTATE_LOADED";
    case MessageType::GuestShutdown: return "GUEST_SHUTDOWN";
    case MessageType::Handover: return "HANDOVER";
    case MessageType::ConsoleInput: return "CONSOLE_INPUT";
    case MessageType::ConsoleOutput: return "CONSOLE_OUTPUT";
    case MessageType::RngInput: return "RNG_INPUT";
    case MessageType::NetInput: return "NET_INPUT";
    case MessageType::NetOutput: return "NET_OUTPUT";
    case MessageType::DiskWrites: return "DISK_WRITES";
    case MessageType::DiskHashes: return "DISK_HASHES";
    case MessageType::DiskBlocks: return "DISK_BLOCKS";
    }
    return "UNKNOWN";
}

bool known_message_type(uint8_t type) {
    return type >= static_cast<uint8_t>(MessageType::Hello) &&
           type <= static_cast<uint8_t>(MessageType::DiskBlocks);
}

uint32_t payload_cap(MessageType type) {
    switch (type) {
    case MessageType::Hello: return 64u << 10;
    case MessageType::Auth:
    case MessageType::Error: return 8u << 10;
    case MessageType::VmstateSend: return kMaxStatePayload;
    case MessageType::ConsoleInput:
    case MessageType::ConsoleOutput:
    case MessageType::RngInput: return 8u << 10;
    case MessageType::NetInput:
    case MessageType::NetOutput: return 72u << 10;  // u64 epoch (+ a 12-byte header) + a frame of up to 65550 bytes
    case MessageType::DiskWrites:
    case MessageType::DiskBlocks:
    case MessageType::DiskHashes: return kMaxDiskMessageBytes + (64u << 10);  // data + per-entry headers
    default:
        // Fixed-size control messages; the room above their current size lets a later minor
        // revision append fields that this version skips.
        return 256;
    }
}

HeaderBytes encode_header(const FrameHeader& header) {
    HeaderBytes out{};
    store_be32(&out[0], kFrameMagic);
    out[4] = std::byte(header.version);
    out[5] = std::byte(static_cast<uint8_t>(header.type));
    store_be16(&out[6], header.flags);
    store_be64(&out[8], header.sequence);
    store_be32(&out[16], header.payload_length);
    store_be32(&out[20], crc32c(std::span(out).first(20)));
    return out;
}

base::Result<FrameHeader> decode_header(std::span<const std::byte> bytes) {
    if (bytes.size() < kHeaderSize)
        return error(Reason::TruncatedHeader, "{} of {} header bytes", bytes.size(), kHeaderSize);
    uint32_t magic = load_be32(&bytes[0]);
    if (magic != kFrameMagic)
        return error(Reason::BadMagic, "magic {:#010x}, expected {:#010x}", magic, kFrameMagic);
    uint32_t check = load_be32(&bytes[20]);
    uint32_t computed = crc32c(bytes.first(20));
    if (check != computed)
        return error(Reason::HeaderCheck, "header check {:#010x}, computed {:#010x}", check, computed);
    FrameHeader header;
    header.version = uint8_t(bytes[4]);
    if (header.version != kWireVersion)
        return error(Reason::BadVersion, "wire version {}, this build speaks {}", header.version, kWireVersion);
    uint8_t type = uint8_t(bytes[5]);
    if (!known_message_type(type))
        return error(Reason::UnknownType, "message type {}", type);
    header.type = static_cast<MessageType>(type);
    header.flags = load_be16(&bytes[6]);
    if ((header.flags & ~kKnownFlags) || (header.has(FrameFlag::Tag) && header.has(FrameFlag::Sealed)))
        return error(Reason::BadFlags, "flags {:#06x}", header.flags);
    header.sequence = load_be64(&bytes[8]);
    header.payload_length = load_be32(&bytes[16]);
    if (header.payload_length > payload_cap(header.type))
        return error(Reason::LengthOverCap, "{} payload of {} bytes, cap {}", message_type_name(header.type),
                     header.payload_length, payload_cap(header.type));
    return header;
}

base::Result<void> check_payload_crc(std::span<const std::byte> payload, std::span<const std::byte> crc) {
    if (crc.size() != kCrcSize)
        return error(Reason::TruncatedPayload, "CRC trailer of {} bytes", crc.size());
    uint32_t sent = load_be32(crc.data());
    uint32_t computed = crc32c(payload);
    if (sent != computed)
        return error(Reason::PayloadCrc, "payload CRC {:#010x}, computed {:#010x} over {} bytes", sent, computed,
                     payload.size());
    return base::ok();
}

base::Result<FrameView> decode_frame(std::span<const std::byte> bytes) {
    FrameView view;
    view.header = TRY(decode_header(bytes));
    size_t body = view.header.body_size();
    if (bytes.size() - kHeaderSize < body)
        return error(Reason::TruncatedPayload, "{} frame needs {} bytes after its header, {} present",
                     message_type_name(view.header.type), body, bytes.size() - kHeaderSize);
    view.payload = bytes.subspan(kHeaderSize, view.header.payload_length);
    auto trailer = bytes.subspan(kHeaderSize + view.header.payload_length, view.header.trailer_size());
    if (view.header.tagged())
        view.tag = trailer;
    else
        TRY(check_payload_crc(view.payload, trailer));
    view.size = kHeaderSize + body;
    return view;
}

std::vector<std::byte> encode_frame(MessageType type, uint64_t sequence, std::span<const std::byte> payload) {
    FrameHeader header{kWireVersion, type, 0, sequence, uint32_t(payload.size())};
    std::vector<std::byte> out;
    out.reserve(kHeaderSize + payload.size() + kCrcSize);
    ByteWriter w(out);
    w.bytes(encode_header(header));
    w.bytes(payload);
    w.u32(crc32c(payload));
    return out;
}

}  // namespace colod::proto
