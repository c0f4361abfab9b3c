// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/net/vnet_header.h"

namespace colod::core::net {

namespace {

void put_le16(std::array<std::byte, VnetHeader::k_size>& out, size_t at, uint16_t value) {
    out[at] = std::byte(value & 0xff);
    out[at + 1] = std::byte(value >> 8);
}

uint16_t get_le16(std::span<const std::byte> bytes, size_t at) {
    return static_cast<uint16_t>(std::to_integer<uint16_t>(bytes[at]) | std::to_integer<uint16_t>(bytes[at + 1]) << 8);
}

}  // namespace

std::array<std::byte, VnetHeader::k_size> VnetHeader::encode(uint16_t num_buffers) const {
    std::array<std::byte, k_size> out{};
    out[0] = std::byte{flags};
    out[1] = std::byte{gso_type};
    put_le16(out, 2, hdr_len);
    put_le16(out, 4, gso_size);
    put_le16(out, 6, csum_start);
    put_le16(out, 8, csum_offset);
    put_le16(out, 10, num_buffers);
    return out;
}

VnetHeader VnetHeader::decode(std::span<const std::byte> bytes) {
    VnetHeader h;
    h.flags = std::to_integer<uint8_t>(bytes[0]);
    h.gso_type = std::to_integer<uint8_t>(bytes[1]);
    h.hdr_len = get_le16(bytes, 2);
    h.gso_size = get_le16(bytes, 4);
    h.csum_start = get_le16(bytes, 6);
    h.csum_offset = get_le16(bytes, 8);
    return h;
}

bool complete_checksum(std::span<std::byte> frame, uint16_t start, uint16_t offset) {
    const size_t field = size_t{start} + offset;
    if (field + 2 > frame.size())
        return false;
    uint64_t sum = 0;
    size_t at = start;
    for (; at + 1 < frame.size(); at += 2)
        sum += std::to_integer<uint32_t>(frame[at]) << 8 | std::to_integer<uint32_t>(frame[at + 1]);
    if (at < frame.size())
        sum += std::to_integer<uint32_t>(frame[at]) << 8;  // an odd last byte, padded with zero
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    auto checksum = static_cast<uint16_t>(~sum);
    // A UDP checksum of zero means "none" (RFC 768); a computed zero is sent as all ones. For
    // TCP both forms are the same number in one's complement.
    if (checksum == 0)
        checksum = 0xffff;
    frame[field] = std::byte(checksum >> 8);
    frame[field + 1] = std::byte(checksum & 0xff);
    return true;
}

}  // namespace colod::core::net
