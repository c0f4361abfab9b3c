// SPDX-License-Identifier: GPL-2.0-or-later
// Typed messages: one struct per message type with encode() into a payload and a pure
// decode() from a payload span. Decoders read the fields they know and ignore bytes after
// them, so that a later minor revision can append fields; a field that runs past the payload
// is Reason::Truncated, a value out of range Reason::BadField.
//
// VMSTATE_SEND is not here: its payload is a run of state sections, handled by state.h.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "base/result.h"
#include "proto/frame.h"

namespace colod::proto {

// 2: HELLO carries link_security (replacing frame_auth), the AEAD preference and key ids;
// frames after the handshake are sealed (docs/protocol.md).
inline constexpr uint16_t kProtocolVersion = 2;
inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kHashSize = 32;
inline constexpr size_t kProofSize = 32;
inline constexpr size_t kMaxNameLength = 64;     // VM and device names
inline constexpr size_t kMaxDevices = 256;
inline constexpr size_t kMaxReasonLength = 1024;  // ERROR and refusal texts
inline constexpr uint64_t kPageSize = 4096;
inline constexpr size_t kKeyIdSize = 8;
inline constexpr size_t kMaxKeyIds = 2;           // the current key and the next one

// Role and state of the side that sends a HELLO. A primary uses the peer's value to refuse
// starting its own guest when the peer has already taken over (no split brain from a careless
// restart).
enum class PeerState : uint8_t {
    PrimaryActive = 1,     // a primary running its guest, looking for a secondary
    SecondaryStandby = 2,  // a secondary without a running guest, ready to receive state
    SecondaryActive = 3,   // a secondary that took over: its guest runs unprotected
    PrimaryStarting = 4,   // a primary that has not started its guest yet
};
std::string_view peer_state_name(PeerState state);

// What protects the frames after the handshake ([replication] link-security); both sides must
// ask for the same. Encrypted: every frame sealed with an AEAD (confidential and authenticated);
// Authenticated: every frame in clear with an AEAD tag over header and payload; None: CRC32C only.
enum class LinkSecurity : uint8_t { None = 0, Authenticated = 1, Encrypted = 2 };
std::string_view link_security_name(LinkSecurity security);  // "none", "authenticated", "encrypted"

// The AEAD a side prefers for the session's frames. The session uses AES-256-GCM when both
// sides prefer it and ChaCha20-Poly1305 otherwise (agreed_aead in link_crypto.h). Auto is never
// on the wire: handshake() replaces it with this host's preference.
enum class Aead : uint8_t { Auto = 0, Aes256Gcm = 1, ChaCha20Poly1305 = 2 };
std::string_view aead_name(Aead aead);  // "aes-256-gcm", "chacha20-poly1305"

// Names a pre-shared key without revealing it (auth.h: Key::id), so that two sides can agree on
// a key they both hold while one is being replaced by the next.
using KeyId = std::array<std::byte, kKeyIdSize>;
std::string key_id_hex(const KeyId& id);

struct DeviceInfo {
    std::string name;  // printable ASCII, no spaces, 1..kMaxNameLength bytes
    uint32_t version = 0;
    bool operator==(const DeviceInfo&) const = default;
};

// HELLO: who the sender is and what guest it has. The nonce is the sender's challenge for the
// handshake (see handshake.h). A HELLO of protocol 1 decodes without the fields protocol 2
// appended (aead, key_ids), so that the refusal can name both versions.
struct Hello {
    static constexpr MessageType type = MessageType::Hello;
    uint16_t protocol_version = kProtocolVersion;
    PeerState state = PeerState::PrimaryActive;
    LinkSecurity link_security = LinkSecurity::Encrypted;
    std::string vm_name;
    uint64_t memory_bytes = 0;  // a nonzero multiple of kPageSize
    uint32_t vcpus = 0;         // 1..4096
    std::vector<DeviceInfo> devices;
    std::array<std::byte, kHashSize> image_hash{};
    std::array<std::byte, kNonceSize> nonce{};
    Aead aead = Aead::Auto;        // filled by handshake() unless a test sets it; Auto in snapshots
    std::vector<KeyId> key_ids;    // the keys the sender holds, preferred first (at most
                                   // kMaxKeyIds); set by handshake(), none in snapshots
    std::string mac;               // the guest NIC's MAC address (xx:xx:xx:xx:xx:xx, lower case);
                                   // empty without a NIC. Appended to protocol 2: absent = empty
    uint64_t disk_bytes = 0;       // the guest disk's size (a multiple of kDiskSectorSize); 0
                                   // without one. Appended after the MAC (then written even
                                   // when empty): absent = 0

    uint64_t page_count() const { return memory_bytes / kPageSize; }
    std::vector<std::byte> encode() const;
    static base::Result<Hello> decode(std::span<const std::byte> payload);
    bool operator==(const Hello&) const = default;
};

// The first difference that makes two sides unable to pair (protocol version, VM name, memory
// size, vCPU count, device list, image hash, NIC MAC, disk size, link security), as a sentence for both logs; empty
// when they match. Roles are not compared here (policy for the caller); neither are keys and
// AEAD preferences (the handshake settles those).
std::string incompatibility(const Hello& local, const Hello& peer);
// A MAC address as HELLO carries it: "52:54:00:12:34:56", lower case.
inline constexpr size_t kMacTextLength = 17;
bool is_mac_text(std::string_view text);

// AUTH: the sender's proof that it holds the pre-shared key, answering the peer's nonce, and
// its verdict on the peer's HELLO (a refusal carries the reason).
enum class Verdict : uint8_t { Accept = 0, Refuse = 1 };
struct Auth {
    static constexpr MessageType type = MessageType::Auth;
    std::array<std::byte, kProofSize> proof{};
    Verdict verdict = Verdict::Accept;
    std::string reason;

    std::vector<std::byte> encode() const;
    static base::Result<Auth> decode(std::span<const std::byte> payload);
    bool operator==(const Auth&) const = default;
};

// ERROR: the sender gives up on the link and says why before closing it.
struct ErrorMessage {
    static constexpr MessageType type = MessageType::Error;
    uint16_t code = 0;  // the proto::Reason behind it when there is one, else 0
    std::string reason;

    std::vector<std::byte> encode() const;
    static base::Result<ErrorMessage> decode(std::span<const std::byte> payload);
    bool operator==(const ErrorMessage&) const = default;
};

// HEARTBEAT: sent when a direction is idle; carries the last committed checkpoint and the
// sender's CLOCK_REALTIME in nanoseconds (for logs and one-way delay estimates only).
struct Heartbeat {
    static constexpr MessageType type = MessageType::Heartbeat;
    uint64_t committed_seq = 0;
    uint64_t time_ns = 0;

    std::vector<std::byte> encode() const;
    static base::Result<Heartbeat> decode(std::span<const std::byte> payload);
    bool operator==(const Heartbeat&) const = default;
};

// The checkpoint handshake messages carry only the checkpoint sequence number.
template <MessageType T>
struct SeqMessage {
    static constexpr MessageType type = T;
    uint64_t seq = 0;

    std::vector<std::byte> encode() const;
    static base::Result<SeqMessage> decode(std::span<const std::byte> payload);
    bool operator==(const SeqMessage&) const = default;
};
using CheckpointReady = SeqMessage<MessageType::CheckpointReady>;
using CheckpointRequest = SeqMessage<MessageType::CheckpointRequest>;
using CheckpointReply = SeqMessage<MessageType::CheckpointReply>;
using VmstateReceived = SeqMessage<MessageType::VmstateReceived>;
using VmstateLoaded = SeqMessage<MessageType::VmstateLoaded>;
// HANDOVER(seq): a planned switchover. The sender has stopped its guest at checkpoint seq, which
// it has just sent; the receiver takes over as soon as seq is applied, without fencing (the
// sender's guest is stopped for good).
using Handover = SeqMessage<MessageType::Handover>;

// What a state transfer holds. A complete one carries every section of the machine and may be
// applied as a checkpoint; a pre-copy round (the live initial sync, sent while the primary's
// guest runs) carries RAM only and is never a checkpoint by itself.
enum class StateKind : uint8_t { Complete = 0, Precopy = 1 };

// VMSTATE_SIZE: announces state transfer `seq`: `frames` VMSTATE_SEND frames follow with
// `bytes` payload bytes in all, covering `pages` dirty pages (sent plus elided zero pages).
struct VmstateSize {
    static constexpr MessageType type = MessageType::VmstateSize;
    uint64_t seq = 0;
    uint64_t bytes = 0;
    uint64_t pages = 0;
    uint32_t frames = 0;
    StateKind kind = StateKind::Complete;

    std::vector<std::byte> encode() const;
    static base::Result<VmstateSize> decode(std::span<const std::byte> payload);
    bool operator==(const VmstateSize&) const = default;
};

// GUEST_SHUTDOWN: the guest powered off; both sides stop without failover.
struct GuestShutdown {
    static constexpr MessageType type = MessageType::GuestShutdown;
    int32_t exit_code = 0;

    std::vector<std::byte> encode() const;
    static base::Result<GuestShutdown> decode(std::span<const std::byte> payload);
    bool operator==(const GuestShutdown&) const = default;
};

// COLO mode. CONSOLE_INPUT: console bytes the primary fed its guest, for the secondary's guest
// (primary → secondary). CONSOLE_OUTPUT: console bytes the secondary's guest wrote, for the
// primary to compare (secondary → primary). `epoch` is the checkpoint the sender's guest runs
// after (the bytes belong to the epoch that follows checkpoint `epoch`).
inline constexpr size_t kMaxConsoleBytes = 4096;
template <MessageType T>
struct ConsoleBytes {
    static constexpr MessageType type = T;
    uint64_t epoch = 0;
    std::string bytes;  // 1..kMaxConsoleBytes, binary

    std::vector<std::byte> encode() const;
    static base::Result<ConsoleBytes> decode(std::span<const std::byte> payload);
    bool operator==(const ConsoleBytes&) const = default;
};
using ConsoleInput = ConsoleBytes<MessageType::ConsoleInput>;
using ConsoleOutput = ConsoleBytes<MessageType::ConsoleOutput>;

// COLO mode. RNG_INPUT: bytes the primary's virtio-rng gave its guest, for the secondary's
// guest (primary → secondary). `offset` is where the first of them sits in the device's
// stream (the count of bytes it had taken before them); consecutive messages are contiguous.
// Sent only for a guest with a virtio-rng device, which only builds that know this type run.
inline constexpr size_t kMaxRngBytes = 4096;
struct RngInput {
    static constexpr MessageType type = MessageType::RngInput;
    uint64_t offset = 0;
    std::string bytes;  // 1..kMaxRngBytes, binary

    std::vector<std::byte> encode() const;
    static base::Result<RngInput> decode(std::span<const std::byte> payload);
    bool operator==(const RngInput&) const = default;
};

// COLO mode, a guest with a NIC. NET_INPUT: an Ethernet frame the primary's NIC accepted for
// its guest, for the secondary's guest (primary → secondary), with the 12-byte virtio-net
// header that says which of its checksum and segmentation offloads are still to be done
// (core/net/vnet_header.h; the receiving NIC checks it). NET_OUTPUT: a frame the secondary's
// guest sent (its TCP sequence numbers moved onto the primary's), for the primary's packet
// comparator (secondary → primary). `epoch` as for the console: the checkpoint the sender's
// guest runs after. The frame is the rest of the payload.
inline constexpr size_t kMinNetFrameBytes = 14;     // an Ethernet header
inline constexpr size_t kMaxNetFrameBytes = 65550;  // the NIC's largest frame (a 64 KiB segment's too)
inline constexpr size_t kNetHeaderBytes = 12;       // struct virtio_net_hdr_v1
struct NetInput {
    static constexpr MessageType type = MessageType::NetInput;
    uint64_t epoch = 0;
    std::string frame;  // kMinNetFrameBytes..kMaxNetFrameBytes, binary
    std::array<std::byte, kNetHeaderBytes> header{};  // the frame's virtio-net header

    std::vector<std::byte> encode() const;
    static base::Result<NetInput> decode(std::span<const std::byte> payload);
    bool operator==(const NetInput&) const = default;
};
template <MessageType T>
struct NetFrame {
    static constexpr MessageType type = T;
    uint64_t epoch = 0;
    std::string frame;  // kMinNetFrameBytes..kMaxNetFrameBytes, binary

    std::vector<std::byte> encode() const;
    static base::Result<NetFrame> decode(std::span<const std::byte> payload);
    bool operator==(const NetFrame&) const = default;
};
using NetOutput = NetFrame<MessageType::NetOutput>;

// A guest disk ([vm] disk): writes and copies move in whole sectors.
inline constexpr uint64_t kDiskSectorSize = 512;

// DISK_WRITES: writes the primary's guest made to its disk during the epoch that checkpoint `seq`
// closes (primary → secondary), in the order the guest made them. Sent before that checkpoint's
// state; the secondary writes them into its image only when it applies `seq`, and drops them
// otherwise. Each offset and length is a multiple of kDiskSectorSize, each length nonzero, and
// the data of one message at most kMaxDiskMessageBytes (an epoch takes as many as it needs).
struct DiskWrite {
    uint64_t offset = 0;
    std::string bytes;  // binary
    bool operator==(const DiskWrite&) const = default;
};
struct DiskWrites {
    static constexpr MessageType type = MessageType::DiskWrites;
    uint64_t seq = 0;
    std::vector<DiskWrite> writes;  // at least one

    std::vector<std::byte> encode() const;
    static base::Result<DiskWrites> decode(std::span<const std::byte> payload);
    bool operator==(const DiskWrites&) const = default;
};

// The live copy of the disk. DISK_HASHES (secondary → primary): the hashes of consecutive
// blocks of the secondary's image from block `first_block` on, blocks of `block_bytes` (a power
// of two, kDiskSectorSize to kMaxDiskMessageBytes; the last block of the disk may be shorter).
// DISK_BLOCKS (primary → secondary): `bytes` of the primary's image at `offset` (sector
// multiples, at most kMaxDiskMessageBytes), for the secondary's image as they are: the copy
// that comes before a session's first checkpoint.
inline constexpr size_t kDiskHashSize = 32;
using DiskHash = std::array<std::byte, kDiskHashSize>;
struct DiskHashes {
    static constexpr MessageType type = MessageType::DiskHashes;
    uint64_t first_block = 0;
    uint32_t block_bytes = 0;
    std::vector<DiskHash> hashes;  // 1..kMaxDiskMessageBytes / kDiskHashSize

    std::vector<std::byte> encode() const;
    static base::Result<DiskHashes> decode(std::span<const std::byte> payload);
    bool operator==(const DiskHashes&) const = default;
};
struct DiskBlocks {
    static constexpr MessageType type = MessageType::DiskBlocks;
    uint64_t offset = 0;
    std::string bytes;  // binary

    std::vector<std::byte> encode() const;
    static base::Result<DiskBlocks> decode(std::span<const std::byte> payload);
    bool operator==(const DiskBlocks&) const = default;
};

// Any control message (everything but VMSTATE_SEND).
using Message = std::variant<Hello, Auth, ErrorMessage, Heartbeat, CheckpointReady, CheckpointRequest,
                             CheckpointReply, VmstateSize, VmstateReceived, VmstateLoaded, GuestShutdown,
                             Handover, ConsoleInput, ConsoleOutput, RngInput, NetInput, NetOutput, DiskWrites,
                             DiskHashes, DiskBlocks>;

MessageType message_type(const Message& message);
std::vector<std::byte> encode_message(const Message& message);
// Decodes the payload of a frame of the given type. VMSTATE_SEND is UnexpectedMessage here.
base::Result<Message> decode_message(MessageType type, std::span<const std::byte> payload);

}  // namespace colod::proto
