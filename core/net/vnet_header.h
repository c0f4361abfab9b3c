// SPDX-License-Identifier: GPL-2.0-or-later
// The virtio-net header (struct virtio_net_hdr_v1, virtio 1.x §5.1.6): how a frame's checksum
// and segmentation offloads stand. A tap opened with IFF_VNET_HDR puts it in front of every
// frame it hands over and expects it in front of every frame written; the guest's NIC puts it
// in front of every frame it writes into the guest. It travels with a received frame from the
// tap through the NIC's backlog and, in COLO mode, over the link to the secondary's NIC.
//
// A header from the tap describes the frame as the host's network stack left it: a frame whose
// TCP or UDP checksum was never computed (NEEDS_CSUM: the field holds only the pseudo-header's
// sum, the rest is to be summed from csum_start and stored at csum_start + csum_offset), a
// frame whose checksum the host already verified (DATA_VALID), or one TCP segment of up to 64
// KiB that stands for several of gso_size bytes each (gso_type TCPV4 or TCPV6). The NIC passes
// such a frame to the guest only as far as the guest accepted these offloads (see
// virtio::NetDevice).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace colod::core::net {

struct VnetHeader {
    // struct virtio_net_hdr_v1 with its num_buffers field, which the receiving NIC fills.
    static constexpr size_t k_size = 12;
    // flags
    static constexpr uint8_t k_needs_csum = 1;
    static constexpr uint8_t k_data_valid = 2;
    // gso_type
    static constexpr uint8_t k_gso_none = 0;
    static constexpr uint8_t k_gso_tcpv4 = 1;
    static constexpr uint8_t k_gso_udp = 3;
    static constexpr uint8_t k_gso_tcpv6 = 4;
    static constexpr uint8_t k_gso_ecn = 0x80;

    uint8_t flags = 0;
    uint8_t gso_type = k_gso_none;
    uint16_t hdr_len = 0;
    uint16_t gso_size = 0;
    uint16_t csum_start = 0;
    uint16_t csum_offset = 0;

    // Little-endian, as VERSION_1 and a tap on x86 have it; num_buffers as given.
    std::array<std::byte, k_size> encode(uint16_t num_buffers = 0) const;
    // The first k_size bytes of `bytes` (num_buffers ignored); `bytes` must hold them.
    static VnetHeader decode(std::span<const std::byte> bytes);
    bool operator==(const VnetHeader&) const = default;
};

// Computes the Internet checksum (RFC 1071) of `frame` from `start` to its end, with the field
// at start + offset holding the partial sum it was left with, and stores it there: what a
// device does for a NEEDS_CSUM frame that goes to a guest that did not accept it unfinished.
// False, and nothing changed, when the field does not lie within the frame.
bool complete_checksum(std::span<std::byte> frame, uint16_t start, uint16_t offset);

}  // namespace colod::core::net
