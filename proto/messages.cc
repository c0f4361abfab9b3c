// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/messages.h"

#include <algorithm>

#include "proto/errors.h"
#include "proto/wire.h"

namespace colod::proto {

namespace {

bool valid_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxNameLength)
        return false;
    return std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// Truncates texts that would exceed their prefix or cap; reasons are for humans, and a long
// one must not make an encoder produce a frame the peer refuses.
std::string_view clip(std::string_view text) { return text.substr(0, kMaxReasonLength); }

base::Result<std::string> read_name(ByteReader& r, std::string_view what) {
    std::string name = TRY(r.str8(what, kMaxNameLength));
    if (!valid_name(name))
        return error(Reason::BadField, "{} is empty or holds bytes outside printable ASCII", what);
    return name;
}

template <size_t N>
base::Result<void> read_array(ByteReader& r, std::array<std::byte, N>& out, std::string_view what) {
    auto b = TRY(r.bytes(N, what));
    std::copy(b.begin(), b.end(), out.begin());
    return base::ok();
}

}  // namespace

std::string_view peer_state_name(PeerState state) {
    switch (state) {
    case PeerState::PrimaryActive: return "primary-active";
    case PeerState::SecondaryStandby: return "secondary-standby";
    case PeerState::SecondaryActive: return "secondary-active";
    case PeerState::PrimaryStarting: return "primary-starting";
    }
    return "unknown";
}

std::string_view link_security_name(LinkSecurity security) {
    switch (security) {
    case LinkSecurity::None: return "none";
    case LinkSecurity::Authenticated: return "authenticated";
    case LinkSecurity::Encrypted: return "encrypted";
    }
    return "unknown";
}

std::string_view aead_name(Aead aead) {
    switch (aead) {
    case Aead::Auto: return "auto";
    case Aead::Aes256Gcm: return "aes-256-gcm";
    case Aead::ChaCha20Poly1305: return "chacha20-poly1305";
    }
    return "unknown";
}

std::string key_id_hex(const KeyId& id) {
    std::string out;
    for (auto b : id)
        out += fmt::format("{:02x}", uint8_t(b));
    return out;
}

std::vector<std::byte> Hello::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u16(protocol_version);
    w.u8(static_cast<uint8_t>(state));
    w.u8(static_cast<uint8_t>(link_security));
    w.u64(memory_bytes);
    w.u32(vcpus);
    w.bytes(image_hash);
    w.bytes(nonce);
    w.str8(vm_name.substr(0, kMaxNameLength));
    size_t count = std::min(devices.size(), kMaxDevices);
    w.u16(uint16_t(count));
    for (size_t i = 0; i < count; ++i) {
        w.str8(std::string_view(devices[i].name).substr(0, kMaxNameLength));
        w.u32(devices[i].version);
    }
    if (protocol_version >= 2) {
        w.u8(static_cast<uint8_t>(aead));
        size_t ids = std::min(key_ids.size(), kMaxKeyIds);
        w.u8(uint8_t(ids));
        for (size_t i = 0; i < ids; ++i)
            w.bytes(key_ids[i]);
        if (!mac.empty() || disk_bytes != 0)
            w.str8(std::string_view(mac).substr(0, kMacTextLength));
        if (disk_bytes != 0)
            w.u64(disk_bytes);
    }
    return out;
}

base::Result<Hello> Hello::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    Hello h;
    h.protocol_version = TRY(r.u16("HELLO protocol version"));
    uint8_t state = TRY(r.u8("HELLO state"));
    if (state < 1 || state > 4)
        return error(Reason::BadField, "HELLO state {}", state);
    h.state = static_cast<PeerState>(state);
    // Protocol 1 sent frame_auth here (0 off, 1 on): the same values mean none and authenticated.
    uint8_t security = TRY(r.u8("HELLO link security"));
    if (security > 2)
        return error(Reason::BadField, "HELLO link security {}", security);
    h.link_security = static_cast<LinkSecurity>(security);
    h.memory_bytes = TRY(r.u64("HELLO memory size"));
    if (h.memory_bytes == 0 || h.memory_bytes % kPageSize != 0)
        return error(Reason::BadField, "HELLO memory size {} is not a nonzero multiple of {}", h.memory_bytes,
                     kPageSize);
    h.vcpus = TRY(r.u32("HELLO vCPU count"));
    if (h.vcpus == 0 || h.vcpus > 4096)
        return error(Reason::BadField, "HELLO vCPU count {}", h.vcpus);
    TRY(read_array(r, h.image_hash, "HELLO image hash"));
    TRY(read_array(r, h.nonce, "HELLO nonce"));
    h.vm_name = TRY(read_name(r, "HELLO VM name"));
    uint16_t count = TRY(r.u16("HELLO device count"));
    if (count > kMaxDevices)
        return error(Reason::BadField, "HELLO lists {} devices, the limit is {}", count, kMaxDevices);
    for (uint16_t i = 0; i < count; ++i) {
        DeviceInfo d;
        d.name = TRY(read_name(r, "HELLO device name"));
        d.version = TRY(r.u32("HELLO device version"));
        for (const auto& seen : h.devices)
            if (seen.name == d.name)
                return error(Reason::BadField, "HELLO lists device {} twice", d.name);
        h.devices.push_back(std::move(d));
    }
    if (h.protocol_version < 2)
        return h;  // refused by incompatibility(); the fields below came with protocol 2
    // A snapshot's HELLO states neither (0): the handshake asks for them, not the decoder.
    uint8_t aead = TRY(r.u8("HELLO AEAD"));
    if (aead > static_cast<uint8_t>(Aead::ChaCha20Poly1305))
        return error(Reason::BadField, "HELLO AEAD {}", aead);
    h.aead = static_cast<Aead>(aead);
    uint8_t ids = TRY(r.u8("HELLO key count"));
    if (ids > kMaxKeyIds)
        return error(Reason::BadField, "HELLO lists {} keys, at most {} allowed", ids, kMaxKeyIds);
    for (uint8_t i = 0; i < ids; ++i) {
        KeyId id;
        TRY(read_array(r, id, "HELLO key id"));
        h.key_ids.push_back(id);
    }
    if (r.at_end())
        return h;  // no NIC, or a sender from before the MAC was appended
    h.mac = TRY(r.str8("HELLO MAC", kMacTextLength));
    if (!h.mac.empty() && !is_mac_text(h.mac))
        return error(Reason::BadField, "HELLO MAC '{}' is not six lower-case hex pairs joined by ':'", h.mac);
    if (r.at_end()) {
        if (h.mac.empty())
            return error(Reason::BadField, "HELLO has an empty MAC and no disk after it");
        return h;  // no disk, or a sender from before the disk size was appended
    }
    h.disk_bytes = TRY(r.u64("HELLO disk size"));
    if (h.disk_bytes == 0 || h.disk_bytes % kDiskSectorSize != 0)
        return error(Reason::BadField, "HELLO disk size {} is not a nonzero multiple of {}", h.disk_bytes,
                     kDiskSectorSize);
    return h;
}

bool is_mac_text(std::string_view text) {
    if (text.size() != kMacTextLength)
        return false;
    for (size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        bool ok = i % 3 == 2 ? c == ':' : (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        if (!ok)
            return false;
    }
    return true;
}

std::string incompatibility(const Hello& local, const Hello& peer) {
    if (local.protocol_version != peer.protocol_version)
        return fmt::format("protocol version differs: local {}, peer {}", local.protocol_version,
                           peer.protocol_version);
    if (local.vm_name != peer.vm_name)
        return fmt::format("VM name differs: local '{}', peer '{}'", local.vm_name, peer.vm_name);
    if (local.memory_bytes != peer.memory_bytes)
        return fmt::format("memory size differs: local {} bytes, peer {} bytes", local.memory_bytes,
                           peer.memory_bytes);
    if (local.vcpus != peer.vcpus)
        return fmt::format("vCPU count differs: local {}, peer {}", local.vcpus, peer.vcpus);
    if (local.devices.size() != peer.devices.size())
        return fmt::format("device count differs: local {}, peer {}", local.devices.size(), peer.devices.size());
    for (size_t i = 0; i < local.devices.size(); ++i) {
        const auto& a = local.devices[i];
        const auto& b = peer.devices[i];
        if (a.name != b.name || a.version != b.version)
            return fmt::format("device {} differs: local {} v{}, peer {} v{}", i, a.name, a.version, b.name,
                               b.version);
    }
    if (local.image_hash != peer.image_hash)
        return "guest image hash differs";
    if (local.mac != peer.mac)
        return fmt::format("guest MAC differs: local {}, peer {} ([vm] mac must be the same on both hosts)",
                           local.mac.empty() ? "none" : local.mac, peer.mac.empty() ? "none" : peer.mac);
    if (local.disk_bytes != peer.disk_bytes) {
        auto size = [](uint64_t bytes) { return bytes == 0 ? std::string("none") : fmt::format("{} bytes", bytes); };
        return fmt::format("guest disk differs: local {}, peer {} ([vm] disk must be an image of the same size on both "
                           "hosts)",
                           size(local.disk_bytes), size(peer.disk_bytes));
    }
    if (local.link_security != peer.link_security)
        return fmt::format("link-security differs: local {}, peer {} ([replication] link-security must be the same "
                           "on both sides)",
                           link_security_name(local.link_security), link_security_name(peer.link_security));
    return {};
}

std::vector<std::byte> Auth::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.bytes(proof);
    w.u8(static_cast<uint8_t>(verdict));
    w.str16(clip(reason));
    return out;
}

base::Result<Auth> Auth::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    Auth a;
    TRY(read_array(r, a.proof, "AUTH proof"));
    uint8_t verdict = TRY(r.u8("AUTH verdict"));
    if (verdict > 1)
        return error(Reason::BadField, "AUTH verdict {}", verdict);
    a.verdict = static_cast<Verdict>(verdict);
    a.reason = TRY(r.str16("AUTH reason", kMaxReasonLength));
    return a;
}

std::vector<std::byte> ErrorMessage::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u16(code);
    w.str16(clip(reason));
    return out;
}

base::Result<ErrorMessage> ErrorMessage::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    ErrorMessage e;
    e.code = TRY(r.u16("ERROR code"));
    e.reason = TRY(r.str16("ERROR reason", kMaxReasonLength));
    return e;
}

std::vector<std::byte> Heartbeat::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(committed_seq);
    w.u64(time_ns);
    return out;
}

base::Result<Heartbeat> Heartbeat::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    Heartbeat h;
    h.committed_seq = TRY(r.u64("HEARTBEAT committed sequence"));
    h.time_ns = TRY(r.u64("HEARTBEAT time"));
    return h;
}

template <MessageType T>
std::vector<std::byte> SeqMessage<T>::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(seq);
    return out;
}

template <MessageType T>
base::Result<SeqMessage<T>> SeqMessage<T>::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    SeqMessage m;
    m.seq = TRY(r.u64(message_type_name(T)));
    return m;
}

template struct SeqMessage<MessageType::CheckpointReady>;
template struct SeqMessage<MessageType::CheckpointRequest>;
template struct SeqMessage<MessageType::CheckpointReply>;
template struct SeqMessage<MessageType::VmstateReceived>;
template struct SeqMessage<MessageType::VmstateLoaded>;
template struct SeqMessage<MessageType::Handover>;

std::vector<std::byte> VmstateSize::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(seq);
    w.u64(bytes);
    w.u64(pages);
    w.u32(frames);
    w.u8(static_cast<uint8_t>(kind));
    return out;
}

base::Result<VmstateSize> VmstateSize::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    VmstateSize s;
    s.seq = TRY(r.u64("VMSTATE_SIZE sequence"));
    s.bytes = TRY(r.u64("VMSTATE_SIZE bytes"));
    s.pages = TRY(r.u64("VMSTATE_SIZE pages"));
    s.frames = TRY(r.u32("VMSTATE_SIZE frames"));
    uint8_t kind = TRY(r.u8("VMSTATE_SIZE kind"));
    if (kind > 1)
        return error(Reason::BadField, "VMSTATE_SIZE kind {}", kind);
    s.kind = static_cast<StateKind>(kind);
    if (s.frames == 0)
        return error(Reason::BadField, "VMSTATE_SIZE announces no frames");
    if (s.bytes > uint64_t(s.frames) * kMaxStatePayload)
        return error(Reason::BadField, "VMSTATE_SIZE announces {} bytes in {} frames", s.bytes, s.frames);
    return s;
}

template <MessageType T>
std::vector<std::byte> ConsoleBytes<T>::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(epoch);
    w.str16(std::string_view(bytes).substr(0, kMaxConsoleBytes));
    return out;
}

template <MessageType T>
base::Result<ConsoleBytes<T>> ConsoleBytes<T>::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    ConsoleBytes m;
    m.epoch = TRY(r.u64("console epoch"));
    m.bytes = TRY(r.str16("console bytes", kMaxConsoleBytes));
    if (m.bytes.empty())
        return error(Reason::BadField, "{} without bytes", message_type_name(T));
    return m;
}

template struct ConsoleBytes<MessageType::ConsoleInput>;
template struct ConsoleBytes<MessageType::ConsoleOutput>;

std::vector<std::byte> RngInput::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(offset);
    w.str16(std::string_view(bytes).substr(0, kMaxRngBytes));
    return out;
}

base::Result<RngInput> RngInput::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    RngInput m;
    m.offset = TRY(r.u64("rng offset"));
    m.bytes = TRY(r.str16("rng bytes", kMaxRngBytes));
    if (m.bytes.empty())
        return error(Reason::BadField, "RNG_INPUT without bytes");
    if (m.offset > UINT64_MAX - m.bytes.size())
        return error(Reason::BadField, "RNG_INPUT offset {} overflows", m.offset);
    return m;
}

std::vector<std::byte> GuestShutdown::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u32(uint32_t(exit_code));
    return out;
}

base::Result<GuestShutdown> GuestShutdown::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    GuestShutdown g;
    g.exit_code = int32_t(TRY(r.u32("GUEST_SHUTDOWN exit code")));
    return g;
}

namespace {

// The rest of a NET_INPUT or NET_OUTPUT payload, `length` bytes: a frame of a size the NIC passes.
base::Result<std::string> net_frame(ByteReader& r, size_t length, MessageType type) {
    if (length < kMinNetFrameBytes || length > kMaxNetFrameBytes)
        return error(Reason::BadField, "{} carries a frame of {} bytes ({} to {} allowed)", message_type_name(type), length,
                     kMinNetFrameBytes, kMaxNetFrameBytes);
    auto bytes = TRY(r.bytes(length, "net frame"));
    return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

}  // namespace

template <MessageType T>
std::vector<std::byte> NetFrame<T>::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(epoch);
    w.bytes(std::string_view(frame).substr(0, kMaxNetFrameBytes));
    return out;
}

template <MessageType T>
base::Result<NetFrame<T>> NetFrame<T>::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    NetFrame m;
    m.epoch = TRY(r.u64("net epoch"));
    m.frame = TRY(net_frame(r, payload.size() - sizeof(uint64_t), T));
    return m;
}

std::vector<std::byte> NetInput::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(epoch);
    w.bytes(std::span<const std::byte>(header));
    w.bytes(std::string_view(frame).substr(0, kMaxNetFrameBytes));
    return out;
}

base::Result<NetInput> NetInput::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    NetInput m;
    m.epoch = TRY(r.u64("net epoch"));
    auto header = TRY(r.bytes(kNetHeaderBytes, "virtio-net header"));
    std::copy(header.begin(), header.end(), m.header.begin());
    m.frame = TRY(net_frame(r, payload.size() - sizeof(uint64_t) - kNetHeaderBytes, type));
    return m;
}

template struct NetFrame<MessageType::NetOutput>;

namespace {

// Sector-aligned disk data at `offset`: a nonzero multiple of kDiskSectorSize that does not run
// past 2^64.
base::Result<void> check_disk_extent(std::string_view what, uint64_t offset, size_t length) {
    if (length == 0 || length % kDiskSectorSize != 0 || offset % kDiskSectorSize != 0)
        return error(Reason::BadField, "{} at offset {} with {} bytes: offset and length must be nonzero multiples of {}",
                     what, offset, length, kDiskSectorSize);
    if (offset > UINT64_MAX - length)
        return error(Reason::BadField, "{} at offset {} with {} bytes overflows", what, offset, length);
    return base::ok();
}

}  // namespace

std::vector<std::byte> DiskWrites::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(seq);
    w.u32(uint32_t(writes.size()));
    for (const auto& write : writes) {
        w.u64(write.offset);
        w.u32(uint32_t(write.bytes.size()));
        w.bytes(std::string_view(write.bytes));
    }
    return out;
}

base::Result<DiskWrites> DiskWrites::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    DiskWrites m;
    m.seq = TRY(r.u64("DISK_WRITES seq"));
    uint32_t count = TRY(r.u32("DISK_WRITES count"));
    if (count == 0 || count > kMaxDiskMessageBytes / kDiskSectorSize)
        return error(Reason::BadField, "DISK_WRITES with {} writes (1 to {} allowed)", count,
                     kMaxDiskMessageBytes / kDiskSectorSize);
    size_t total = 0;
    m.writes.reserve(count);
    for (uint32_t i = 0; i < count; ++i) {
        DiskWrite write;
        write.offset = TRY(r.u64("DISK_WRITES offset"));
        uint32_t length = TRY(r.u32("DISK_WRITES length"));
        TRY(check_disk_extent("DISK_WRITES write", write.offset, length));
        total += length;
        if (total > kMaxDiskMessageBytes)
            return error(Reason::BadField, "DISK_WRITES carries more than {} bytes", kMaxDiskMessageBytes);
        auto bytes = TRY(r.bytes(length, "DISK_WRITES data"));
        write.bytes.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        m.writes.push_back(std::move(write));
    }
    return m;
}

std::vector<std::byte> DiskHashes::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(first_block);
    w.u32(block_bytes);
    w.u32(uint32_t(hashes.size()));
    for (const auto& hash : hashes)
        w.bytes(hash);
    return out;
}

base::Result<DiskHashes> DiskHashes::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    DiskHashes m;
    m.first_block = TRY(r.u64("DISK_HASHES first block"));
    m.block_bytes = TRY(r.u32("DISK_HASHES block size"));
    if (m.block_bytes < kDiskSectorSize || m.block_bytes > kMaxDiskMessageBytes ||
        (m.block_bytes & (m.block_bytes - 1)) != 0)
        return error(Reason::BadField, "DISK_HASHES block size {} is not a power of two from {} to {}", m.block_bytes,
                     kDiskSectorSize, kMaxDiskMessageBytes);
    uint32_t count = TRY(r.u32("DISK_HASHES count"));
    if (count == 0 || count > kMaxDiskMessageBytes / kDiskHashSize)
        return error(Reason::BadField, "DISK_HASHES with {} hashes (1 to {} allowed)", count,
                     kMaxDiskMessageBytes / kDiskHashSize);
    if (m.first_block > UINT64_MAX / m.block_bytes - count)
        return error(Reason::BadField, "DISK_HASHES blocks {} + {} run past the largest disk", m.first_block, count);
    m.hashes.resize(count);
    for (auto& hash : m.hashes)
        TRY(read_array(r, hash, "DISK_HASHES hash"));
    return m;
}

std::vector<std::byte> DiskBlocks::encode() const {
    std::vector<std::byte> out;
    ByteWriter w(out);
    w.u64(offset);
    w.bytes(std::string_view(bytes).substr(0, kMaxDiskMessageBytes));
    return out;
}

base::Result<DiskBlocks> DiskBlocks::decode(std::span<const std::byte> payload) {
    ByteReader r(payload);
    DiskBlocks m;
    m.offset = TRY(r.u64("DISK_BLOCKS offset"));
    size_t length = payload.size() - sizeof(uint64_t);
    if (length > kMaxDiskMessageBytes)
        return error(Reason::BadField, "DISK_BLOCKS carries {} bytes, at most {} allowed", length, kMaxDiskMessageBytes);
    TRY(check_disk_extent("DISK_BLOCKS", m.offset, length));
    auto bytes = TRY(r.bytes(length, "DISK_BLOCKS data"));
    m.bytes.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return m;
}

MessageType message_type(const Message& message) {
    return std::visit([](const auto& m) { return std::decay_t<decltype(m)>::type; }, message);
}

std::vector<std::byte> encode_message(const Message& message) {
    return std::visit([](const auto& m) { return m.encode(); }, message);
}

namespace {
template <typename M>
base::Result<Message> decode_as(std::span<const std::byte> payload) {
    M m = TRY(M::decode(payload));
    return Message(std::move(m));
}
}  // namespace

base::Result<Message> decode_message(MessageType type, std::span<const std::byte> payload) {
    switch (type) {
    case MessageType::Hello: return decode_as<Hello>(payload);
    case MessageType::Auth: return decode_as<Auth>(payload);
    case MessageType::Error: return decode_as<ErrorMessage>(payload);
    case MessageType::Heartbeat: return decode_as<Heartbeat>(payload);
    case MessageType::CheckpointReady: return decode_as<CheckpointReady>(payload);
    case MessageType::CheckpointRequest: return decode_as<CheckpointRequest>(payload);
    case MessageType::CheckpointReply: return decode_as<CheckpointReply>(payload);
    case MessageType::VmstateSize: return decode_as<VmstateSize>(payload);
    case MessageType::VmstateReceived: return decode_as<VmstateReceived>(payload);
    case MessageType::VmstateLoaded: return decode_as<VmstateLoaded>(payload);
    case MessageType::GuestShutdown: return decode_as<GuestShutdown>(payload);
    case MessageType::Handover: return decode_as<Handover>(payload);
    case MessageType::ConsoleInput: return decode_as<ConsoleInput>(payload);
    case MessageType::ConsoleOutput: return decode_as<ConsoleOutput>(payload);
    case MessageType::RngInput: return decode_as<RngInput>(payload);
    case MessageType::NetInput: return decode_as<NetInput>(payload);
    case MessageType::NetOutput: return decode_as<NetOutput>(payload);
    case MessageType::DiskWrites: return decode_as<DiskWrites>(payload);
    case MessageType::DiskHashes: return decode_as<DiskHashes>(payload);
    case MessageType::DiskBlocks: return decode_as<DiskBlocks>(payload);
    case MessageType::VmstateSend: break;
    }
    return error(Reason::UnexpectedMessage, "{} is not a control message", message_type_name(type));
}

}  // namespace colod::proto
