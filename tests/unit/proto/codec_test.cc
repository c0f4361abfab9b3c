// SPDX-License-Identifier: GPL-2.0-or-later
// Frames and control messages: round trips with random values, and one test per malformed
// class asserting its Reason.
#include <catch2/catch.hpp>

#include <random>

#include "proto/crc32c.h"
#include "proto/errors.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "proto/wire.h"

using namespace colod;
using namespace colod::proto;

namespace {

std::vector<std::byte> bytes_of(std::string_view s) {
    auto b = std::as_bytes(std::span(s.data(), s.size()));
    return {b.begin(), b.end()};
}

template <typename T>
Reason reason(const base::Result<T>& r) {
    REQUIRE_FALSE(r.ok());
    return reason_of(r.error());
}

std::string random_name(std::mt19937_64& rng, size_t max = kMaxNameLength) {
    std::string s(1 + rng() % max, 'a');
    for (auto& c : s)
        c = char(0x21 + rng() % (0x7f - 0x21));
    return s;
}

Hello random_hello(std::mt19937_64& rng) {
    Hello h;
    h.protocol_version = uint16_t(rng());
    h.state = static_cast<PeerState>(1 + rng() % 4);
    h.link_security = static_cast<LinkSecurity>(rng() % 3);
    h.vm_name = random_name(rng);
    h.memory_bytes = (1 + rng() % (1ull << 30)) * kPageSize;
    h.vcpus = uint32_t(1 + rng() % 4096);
    size_t devices = rng() % 8;
    for (size_t i = 0; i < devices; ++i)
        h.devices.push_back({random_name(rng, 60) + std::to_string(i), uint32_t(rng())});
    for (auto& b : h.image_hash)
        b = std::byte(rng());
    for (auto& b : h.nonce)
        b = std::byte(rng());
    if (h.protocol_version >= 2) {  // protocol 1 had neither
        h.aead = static_cast<Aead>(rng() % 3);
        h.key_ids.resize(rng() % (kMaxKeyIds + 1));
        for (auto& id : h.key_ids)
            for (auto& b : id)
                b = std::byte(rng());
        if (rng() % 2)
            h.mac = fmt::format("52:54:00:{:02x}:{:02x}:{:02x}", rng() % 256, rng() % 256, rng() % 256);
        if (rng() % 3 == 0)
            h.disk_bytes = (1 + rng() % (1ull << 40)) * kDiskSectorSize;
    }
    return h;
}

Message random_message(std::mt19937_64& rng) {
    switch (rng() % 20) {
    case 0: return random_hello(rng);
    case 1: {
        Auth a;
        for (auto& b : a.proof)
            b = std::byte(rng());
        a.verdict = static_cast<Verdict>(rng() % 2);
        a.reason = std::string(rng() % 100, 'r');
        return a;
    }
    case 2: return ErrorMessage{uint16_t(rng()), std::string(rng() % 300, 'e')};
    case 3: return Heartbeat{rng(), rng()};
    case 4: return CheckpointReady{rng()};
    case 5: return CheckpointRequest{rng()};
    case 6: return CheckpointReply{rng()};
    case 7: {
        uint64_t bytes = rng() % (1ull << 40);
        return VmstateSize{rng(), bytes, rng(), uint32_t(bytes / kMaxStatePayload + 1 + rng() % 1000),
                           static_cast<StateKind>(rng() % 2)};
    }
    case 8: return VmstateReceived{rng()};
    case 9: return VmstateLoaded{rng()};
    case 10: return Handover{rng()};
    case 11: return ConsoleInput{rng(), std::string(1 + rng() % 100, char(rng()))};
    case 12: return ConsoleOutput{rng(), std::string(1 + rng() % kMaxConsoleBytes, char(rng()))};
    case 13: return RngInput{rng() >> 1, std::string(1 + rng() % kMaxRngBytes, char(rng()))};
    case 14: return NetInput{rng(), std::string(kMinNetFrameBytes + rng() % 1500, char(rng()))};
    case 15: return NetOutput{rng(), std::string(kMinNetFrameBytes + rng() % (kMaxNetFrameBytes - kMinNetFrameBytes + 1), char(rng()))};
    case 16: {
        DiskWrites m{rng(), {}};
        size_t room = kMaxDiskMessageBytes;
        for (size_t i = 0, n = 1 + rng() % 8; i < n; ++i) {
            size_t sectors = 1 + rng() % std::min<uint64_t>(room / kDiskSectorSize, 64);
            m.writes.push_back({(rng() >> 24) * kDiskSectorSize, std::string(sectors * kDiskSectorSize, char(rng()))});
            room -= sectors * kDiskSectorSize;
            if (room < kDiskSectorSize)
                break;
        }
        return m;
    }
    case 17: {
        DiskHashes m{rng() >> 40, uint32_t(kDiskSectorSize << (rng() % 12)), {}};
        m.hashes.resize(1 + rng() % 300);
        for (auto& hash : m.hashes)
            hash[rng() % kDiskHashSize] = std::byte(rng());
        return m;
    }
    case 18: return DiskBlocks{(rng() >> 24) * kDiskSectorSize, std::string((1 + rng() % 2048) * kDiskSectorSize, char(rng()))};
    default: return GuestShutdown{int32_t(rng())};
    }
}

}  // namespace

TEST_CASE("crc32c matches the standard check value and both implementations agree") {
    REQUIRE(crc32c(bytes_of("123456789")) == 0xE3069283u);
    REQUIRE(crc32c({}) == 0u);
    std::mt19937_64 rng(7);
    for (size_t size : {1u, 7u, 8u, 63u, 191u, 192u, 193u, 4096u, 8191u, 12287u, 12288u, 12289u, 40000u, 100003u}) {
        std::vector<std::byte> data(size);
        for (auto& b : data)
            b = std::byte(rng());
        Crc32c table(CrcImplementation::Table);
        table.update(data);
        Crc32c hw;
        // Split at an odd place: the incremental form must equal the one-shot form.
        hw.update(std::span(data).first(size / 3));
        hw.update(std::span(data).subspan(size / 3));
        INFO("size " << size);
        REQUIRE(hw.value() == table.value());
        REQUIRE(crc32c(data) == table.value());
    }
}

TEST_CASE("frame header round trip") {
    std::mt19937_64 rng(1);
    for (int i = 0; i < 1000; ++i) {
        FrameHeader h;
        h.type = static_cast<MessageType>(1 + rng() % 16);
        h.flags = std::array<uint16_t, 3>{0, uint16_t(FrameFlag::Tag), uint16_t(FrameFlag::Sealed)}[rng() % 3];
        h.sequence = rng();
        h.payload_length = uint32_t(rng() % (payload_cap(h.type) + 1));
        auto bytes = encode_header(h);
        auto back = decode_header(bytes);
        REQUIRE(back.ok());
        REQUIRE(back.value() == h);
    }
}

TEST_CASE("control messages round trip through frames (random, many seeds)") {
    for (uint64_t seed = 0; seed < 2000; ++seed) {
        std::mt19937_64 rng(seed);
        Message m = random_message(rng);
        uint64_t sequence = rng();
        auto frame = encode_frame(message_type(m), sequence, encode_message(m));
        auto view = decode_frame(frame);
        REQUIRE(view.ok());
        REQUIRE(view->size == frame.size());
        REQUIRE(view->header.sequence == sequence);
        REQUIRE(view->header.type == message_type(m));
        auto back = decode_message(view->header.type, view->payload);
        REQUIRE(back.ok());
        REQUIRE(back.value() == m);
    }
}

TEST_CASE("RNG_INPUT: no bytes, too many, or an offset that wraps are refused") {
    REQUIRE(reason(RngInput::decode(RngInput{7, ""}.encode())) == Reason::BadField);
    RngInput big{7, std::string(kMaxRngBytes, 'x')};
    auto payload = big.encode();
    REQUIRE(RngInput::decode(payload).ok());
    // A length field one over the limit, with the bytes to match.
    std::vector<std::byte> over;
    ByteWriter w(over);
    w.u64(7);
    w.str16(std::string(kMaxRngBytes + 1, 'x'));
    REQUIRE_FALSE(RngInput::decode(over).ok());
    REQUIRE(reason(RngInput::decode(RngInput{UINT64_MAX - 2, "abcd"}.encode())) == Reason::BadField);
    REQUIRE(RngInput::decode(RngInput{UINT64_MAX - 4, "abcd"}.encode()).ok());
}

TEST_CASE("NET_INPUT / NET_OUTPUT: a frame shorter than an Ethernet header or longer than the NIC's largest is refused") {
    for (size_t size : {kMinNetFrameBytes, size_t{1514}, kMaxNetFrameBytes}) {
        NetOutput out{9, std::string(size, 'f')};
        auto back = NetOutput::decode(out.encode());
        REQUIRE(back.ok());
        CHECK(back.value() == out);
    }
    CHECK(reason(NetInput::decode(NetInput{9, std::string(kMinNetFrameBytes - 1, 'f')}.encode())) == Reason::BadField);
    CHECK(reason(NetInput::decode(NetInput{9, ""}.encode())) == Reason::BadField);
    // encode() never sends more than the limit; bytes written by hand are refused.
    std::vector<std::byte> over;
    ByteWriter w(over);
    w.u64(9);
    w.bytes(std::string(kNetHeaderBytes, '\0'));
    w.bytes(std::string(kMaxNetFrameBytes + 1, 'f'));
    CHECK(reason(NetInput::decode(over)) == Reason::BadField);
    CHECK_FALSE(NetInput::decode(std::vector<std::byte>(5)).ok());  // no room for the epoch
    CHECK(reason(NetInput::decode(std::vector<std::byte>(8 + kNetHeaderBytes - 1))) == Reason::Truncated);
    // The header travels as it is (the receiving NIC checks it).
    NetInput with_header{9, std::string(1514, 'f')};
    for (size_t i = 0; i < kNetHeaderBytes; ++i)
        with_header.header[i] = std::byte(0xa0 + i);
    auto decoded = NetInput::decode(with_header.encode());
    REQUIRE(decoded.ok());
    CHECK(decoded.value() == with_header);
    // The largest frame fits under the type's cap, which a sender never exceeds.
    CHECK(NetInput{9, std::string(kMaxNetFrameBytes, 'f')}.encode().size() <= payload_cap(MessageType::NetInput));
    CHECK(NetOutput{9, std::string(kMaxNetFrameBytes, 'f')}.encode().size() <= payload_cap(MessageType::NetOutput));
}

TEST_CASE("decoders skip fields appended by a later revision") {
    Heartbeat hb{5, 6};
    auto payload = hb.encode();
    payload.resize(payload.size() + 20, std::byte{0xAB});
    auto back = Heartbeat::decode(payload);
    REQUIRE(back.ok());
    REQUIRE(back.value() == hb);
}

// ---- One test per malformed frame class ----

namespace {
std::vector<std::byte> valid_frame() { return encode_frame(MessageType::Heartbeat, 3, Heartbeat{1, 2}.encode()); }
}  // namespace

TEST_CASE("malformed: truncated header") {
    auto f = valid_frame();
    REQUIRE(reason(decode_frame(std::span(f).first(kHeaderSize - 1))) == Reason::TruncatedHeader);
    REQUIRE(reason(decode_header({})) == Reason::TruncatedHeader);
}

TEST_CASE("malformed: bad magic") {
    auto f = valid_frame();
    f[0] = std::byte{'X'};
    REQUIRE(reason(decode_frame(f)) == Reason::BadMagic);
}

TEST_CASE("malformed: bad version") {
    FrameHeader h{2, MessageType::Heartbeat, 0, 0, 16};
    REQUIRE(reason(decode_header(encode_header(h))) == Reason::BadVersion);
}

TEST_CASE("malformed: unknown type") {
    FrameHeader h{kWireVersion, static_cast<MessageType>(22), 0, 0, 16};
    REQUIRE(reason(decode_header(encode_header(h))) == Reason::UnknownType);
    h.type = static_cast<MessageType>(0);
    REQUIRE(reason(decode_header(encode_header(h))) == Reason::UnknownType);
}

TEST_CASE("malformed: header check mismatch") {
    auto f = valid_frame();
    f[17] ^= std::byte{1};  // a length bit: exactly what the header check is for
    REQUIRE(reason(decode_frame(f)) == Reason::HeaderCheck);
}

TEST_CASE("malformed: unknown flags, the retired MAC bit, Tag and Sealed together") {
    for (uint16_t flags : {0x8000, 0x0001, 0x0003, 0x0006}) {
        FrameHeader h{kWireVersion, MessageType::Heartbeat, flags, 0, 16};
        INFO("flags " << flags);
        REQUIRE(reason(decode_header(encode_header(h))) == Reason::BadFlags);
    }
}

TEST_CASE("a tagged frame's trailer is a 16-byte tag, which decode_frame leaves to the cipher") {
    auto payload = Heartbeat{1, 2}.encode();
    FrameHeader h{kWireVersion, MessageType::Heartbeat, uint16_t(FrameFlag::Sealed), 5, uint32_t(payload.size())};
    REQUIRE(h.body_size() == payload.size() + kTagSize);
    std::vector<std::byte> f;
    ByteWriter w(f);
    w.bytes(encode_header(h));
    w.bytes(payload);
    w.zeros(kTagSize);
    auto view = decode_frame(f);
    REQUIRE(view.ok());
    REQUIRE(view->tag.size() == kTagSize);
    REQUIRE(view->size == f.size());
    REQUIRE(reason(decode_frame(std::span(f).first(f.size() - 1))) == Reason::TruncatedPayload);
}

TEST_CASE("malformed: length over cap") {
    FrameHeader h{kWireVersion, MessageType::Heartbeat, 0, 0, payload_cap(MessageType::Heartbeat) + 1};
    REQUIRE(reason(decode_header(encode_header(h))) == Reason::LengthOverCap);
    h.type = MessageType::VmstateSend;
    h.payload_length = kMaxStatePayload + 1;
    REQUIRE(reason(decode_header(encode_header(h))) == Reason::LengthOverCap);
    h.type = MessageType::Hello;
    h.payload_length = 0xFFFFFFFF;
    REQUIRE(reason(decode_header(encode_header(h))) == Reason::LengthOverCap);
}

TEST_CASE("malformed: truncated payload") {
    auto f = valid_frame();
    REQUIRE(reason(decode_frame(std::span(f).first(f.size() - 1))) == Reason::TruncatedPayload);
    REQUIRE(reason(decode_frame(std::span(f).first(kHeaderSize))) == Reason::TruncatedPayload);
}

TEST_CASE("malformed: payload CRC mismatch") {
    auto f = valid_frame();
    f[kHeaderSize + 3] ^= std::byte{0x40};
    REQUIRE(reason(decode_frame(f)) == Reason::PayloadCrc);
    auto g = valid_frame();
    g.back() ^= std::byte{1};
    REQUIRE(reason(decode_frame(g)) == Reason::PayloadCrc);
}

TEST_CASE("malformed messages: truncated fields and bad values") {
    auto hb = Heartbeat{1, 2}.encode();
    REQUIRE(reason(Heartbeat::decode(std::span(hb).first(15))) == Reason::Truncated);
    REQUIRE(reason(CheckpointRequest::decode({})) == Reason::Truncated);

    std::mt19937_64 rng(3);
    Hello h = random_hello(rng);
    h.mac.clear();
    h.disk_bytes = 0;
    auto payload = h.encode();
    for (size_t cut = 0; cut < payload.size(); ++cut)
        REQUIRE(reason(Hello::decode(std::span(payload).first(cut))) == Reason::Truncated);
    // The MAC is optional at the end: without it the HELLO is whole; cut inside it, truncated.
    Hello with_mac = h;
    with_mac.mac = "52:54:00:12:34:56";
    auto longer = with_mac.encode();
    REQUIRE(longer.size() == payload.size() + 1 + kMacTextLength);
    for (size_t cut = payload.size() + 1; cut < longer.size(); ++cut)
        REQUIRE(reason(Hello::decode(std::span(longer).first(cut))) == Reason::Truncated);

    Hello bad = h;
    bad.memory_bytes = 4097;
    REQUIRE(reason(Hello::decode(bad.encode())) == Reason::BadField);
    bad = h;
    bad.vcpus = 0;
    REQUIRE(reason(Hello::decode(bad.encode())) == Reason::BadField);
    bad = h;
    bad.vm_name = "has space";
    REQUIRE(reason(Hello::decode(bad.encode())) == Reason::BadField);
    bad = h;
    bad.devices = {{"uart", 1}, {"uart", 1}};
    REQUIRE(reason(Hello::decode(bad.encode())) == Reason::BadField);
    auto state = h.encode();
    state[2] = std::byte{9};  // PeerState
    REQUIRE(reason(Hello::decode(state)) == Reason::BadField);
    auto security = h.encode();
    security[3] = std::byte{3};  // link security: 0 none, 1 authenticated, 2 encrypted
    REQUIRE(reason(Hello::decode(security)) == Reason::BadField);
    Hello v2 = h;
    v2.protocol_version = kProtocolVersion;
    v2.key_ids.resize(1);
    auto fields = v2.encode();
    size_t aead_at = fields.size() - 1 - kKeyIdSize - 1;  // aead, key count, one key id
    REQUIRE(Hello::decode(fields).ok());
    fields[aead_at] = std::byte{3};
    REQUIRE(reason(Hello::decode(fields)) == Reason::BadField);
    fields = v2.encode();
    fields[aead_at + 1] = std::byte{kMaxKeyIds + 1};
    REQUIRE(reason(Hello::decode(fields)) == Reason::BadField);

    auto size = VmstateSize{1, 10, 1, 0}.encode();
    REQUIRE(reason(VmstateSize::decode(size)) == Reason::BadField);
    REQUIRE(reason(decode_message(MessageType::VmstateSend, {})) == Reason::UnexpectedMessage);
}

TEST_CASE("incompatibility names the first difference") {
    std::mt19937_64 rng(11);
    Hello a = random_hello(rng);
    Hello b = a;
    b.nonce[0] ^= std::byte{1};
    b.state = PeerState::SecondaryStandby;
    REQUIRE(incompatibility(a, b).empty());
    b.memory_bytes += kPageSize;
    REQUIRE_THAT(incompatibility(a, b), Catch::Contains("memory size differs"));
    b = a;
    b.image_hash[5] ^= std::byte{1};
    REQUIRE_THAT(incompatibility(a, b), Catch::Contains("image hash"));
    b = a;
    b.vm_name += "x";
    REQUIRE_THAT(incompatibility(a, b), Catch::Contains("VM name"));
    // Link security: the refusal names the config key and both values.
    b = a;
    a.link_security = LinkSecurity::Encrypted;
    b.link_security = LinkSecurity::None;
    REQUIRE_THAT(incompatibility(a, b), Catch::Contains("link-security differs: local encrypted, peer none"));
    // Keys and AEAD preferences are the handshake's business, not an incompatibility.
    b = a;
    b.aead = Aead::ChaCha20Poly1305;
    b.key_ids.clear();
    REQUIRE(incompatibility(a, b).empty());
    // The guest's MAC: the refusal names the key and both addresses (none: no NIC).
    b = a;
    a.mac = "52:54:00:12:34:56";
    b.mac = "52:54:00:12:34:57";
    REQUIRE_THAT(incompatibility(a, b), Catch::Contains("guest MAC differs: local 52:54:00:12:34:56, peer "
                                                        "52:54:00:12:34:57 ([vm] mac must be the same on both hosts)"));
    b.mac.clear();
    REQUIRE_THAT(incompatibility(a, b), Catch::Contains("peer none"));
}

TEST_CASE("HELLO: the MAC is optional at the end; a malformed one is refused") {
    Hello h;
    h.vm_name = "demo";
    h.memory_bytes = 16 * kPageSize;
    h.vcpus = 1;
    const auto no_mac = h.encode();
    auto without = Hello::decode(no_mac);
    REQUIRE(without.ok());
    CHECK(without.value().mac.empty());
    h.mac = "52:54:00:ab:cd:ef";
    auto with = Hello::decode(h.encode());
    REQUIRE(with.ok());
    CHECK(with.value().mac == "52:54:00:ab:cd:ef");
    for (const char* bad : {"52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "52:54:00:ab:cd:e", "52:54:00:ab:cd:efg"}) {
        INFO(bad);
        auto payload = no_mac;  // the HELLO without a MAC, then a bad one appended
        ByteWriter w(payload);
        w.str8(bad);
        CHECK(reason(Hello::decode(payload)) == Reason::BadField);
    }
}

TEST_CASE("a HELLO of protocol 1 decodes without protocol 2's fields and is refused naming both versions") {
    std::mt19937_64 rng(12);
    Hello ours = random_hello(rng);
    ours.protocol_version = kProtocolVersion;
    Hello old = ours;
    old.protocol_version = 1;
    old.link_security = LinkSecurity::Authenticated;  // protocol 1's frame_auth = 1
    old.aead = Aead::Auto;
    old.key_ids.clear();
    old.mac.clear();
    old.disk_bytes = 0;
    auto decoded = Hello::decode(old.encode());
    REQUIRE(decoded.ok());
    REQUIRE(decoded.value() == old);
    REQUIRE_THAT(incompatibility(ours, decoded.value()), Catch::Contains("protocol version differs: local 2, peer 1"));
}

TEST_CASE("error reasons survive context and map to broad classes") {
    auto e = error(Reason::PageBeyondMemory, "page {}", 99);
    REQUIRE(e.code() == base::Errc::Protocol);
    auto wrapped = std::move(e).context("checkpoint 4");
    REQUIRE(reason_of(wrapped) == Reason::PageBeyondMemory);
    REQUIRE_THAT(wrapped.message(), Catch::Contains("page-beyond-memory"));
    REQUIRE(error(Reason::AuthFailed, "x").code() == base::Errc::Auth);
    REQUIRE(error(Reason::Refused, "x").code() == base::Errc::Mismatch);
    REQUIRE(reason_of(base::Error::from_errno("read", 5)) == Reason::None);
}

TEST_CASE("crc32c: every lane size of the three-stream path agrees with the table") {
    std::mt19937_64 rng(17);
    std::vector<std::byte> data(13000);
    for (auto& b : data)
        b = std::byte(rng());
    for (size_t size = 0; size <= data.size(); size += 37) {
        std::span<const std::byte> piece(data.data() + size % 7, std::min(size, data.size() - size % 7));
        Crc32c table(CrcImplementation::Table);
        table.update(piece);
        INFO("size " << piece.size());
        REQUIRE(crc32c(piece) == table.value());
    }
}

TEST_CASE("HELLO: the disk's size follows the MAC (written empty without a NIC); a malformed one is refused",
          "[disk]") {
    Hello h;
    h.vm_name = "demo";
    h.memory_bytes = 16 * kPageSize;
    h.vcpus = 1;
    const auto plain = h.encode();
    h.disk_bytes = 64ull << 20;
    const auto disk_only = h.encode();
    REQUIRE(disk_only.size() == plain.size() + 1 + 8);  // an empty MAC, then the size
    auto read = Hello::decode(disk_only);
    REQUIRE(read.ok());
    CHECK(read.value().mac.empty());
    CHECK(read.value().disk_bytes == 64ull << 20);
    h.mac = "52:54:00:ab:cd:ef";
    read = Hello::decode(h.encode());
    REQUIRE(read.ok());
    CHECK(read.value() == h);
    // Cut inside the size: truncated.
    for (size_t cut = plain.size() + 2; cut < disk_only.size(); ++cut)
        CHECK(reason(Hello::decode(std::span(disk_only).first(cut))) == Reason::Truncated);
    // An empty MAC is only a placeholder for the disk after it.
    auto empty_mac = plain;
    ByteWriter(empty_mac).str8("");
    CHECK(reason(Hello::decode(empty_mac)) == Reason::BadField);
    for (uint64_t bad : {uint64_t{0}, uint64_t{1000}, uint64_t{(64ull << 20) + 1}}) {
        INFO(bad);
        auto payload = empty_mac;
        ByteWriter(payload).u64(bad);
        CHECK(reason(Hello::decode(payload)) == Reason::BadField);
    }
}

TEST_CASE("HELLO: a disk on one side only, or of another size, is an incompatibility naming [vm] disk", "[disk]") {
    Hello a;
    a.vm_name = "demo";
    a.memory_bytes = 16 * kPageSize;
    a.vcpus = 1;
    Hello b = a;
    a.disk_bytes = 1ull << 30;
    b.disk_bytes = (1ull << 30) + kDiskSectorSize;
    CHECK(incompatibility(a, b) == "guest disk differs: local 1073741824 bytes, peer 1073742336 bytes ([vm] disk must be "
                                   "an image of the same size on both hosts)");
    b.disk_bytes = 0;
    CHECK_THAT(incompatibility(a, b), Catch::Contains("peer none"));
    b.disk_bytes = a.disk_bytes;
    CHECK(incompatibility(a, b).empty());
}

TEST_CASE("DISK_WRITES, DISK_HASHES, DISK_BLOCKS: sector-aligned, bounded, refused otherwise", "[disk]") {
    const std::string sector(kDiskSectorSize, 's');
    // The largest of each fits its payload cap.
    DiskWrites full{7, {}};
    for (size_t i = 0; i < kMaxDiskMessageBytes / kDiskSectorSize; ++i)
        full.writes.push_back({i * kDiskSectorSize, sector});
    CHECK(full.encode().size() <= payload_cap(MessageType::DiskWrites));
    REQUIRE(DiskWrites::decode(full.encode()).ok());
    DiskHashes hashes{0, 65536, std::vector<DiskHash>(kMaxDiskMessageBytes / kDiskHashSize)};
    CHECK(hashes.encode().size() <= payload_cap(MessageType::DiskHashes));
    REQUIRE(DiskHashes::decode(hashes.encode()).ok());
    DiskBlocks blocks{kDiskSectorSize, std::string(kMaxDiskMessageBytes, 'b')};
    CHECK(blocks.encode().size() <= payload_cap(MessageType::DiskBlocks));
    REQUIRE(DiskBlocks::decode(blocks.encode()).ok());

    // Writes: none, misaligned offset or length, empty, over the message's bytes, overflowing.
    CHECK(reason(DiskWrites::decode(DiskWrites{7, {}}.encode())) == Reason::BadField);
    CHECK(reason(DiskWrites::decode(DiskWrites{7, {{100, sector}}}.encode())) == Reason::BadField);
    CHECK(reason(DiskWrites::decode(DiskWrites{7, {{0, sector + "x"}}}.encode())) == Reason::BadField);
    CHECK(reason(DiskWrites::decode(DiskWrites{7, {{0, ""}}}.encode())) == Reason::BadField);
    CHECK(reason(DiskWrites::decode(DiskWrites{7, {{UINT64_MAX - 511, sector}}}.encode())) == Reason::BadField);
    auto over = full;
    over.writes.back().bytes += sector;
    CHECK(reason(DiskWrites::decode(over.encode())) == Reason::BadField);
    auto cut = DiskWrites{7, {{0, sector}, {512, sector}}}.encode();
    for (size_t at = 0; at < cut.size(); ++at)
        CHECK_FALSE(DiskWrites::decode(std::span(cut).first(at)).ok());

    // Hashes: block sizes that are not powers of two in range, no hashes, too many, past 2^64.
    for (uint32_t size : {0u, 256u, 1000u, 4097u, 2u << 20})
        CHECK(reason(DiskHashes::decode(DiskHashes{0, size, {DiskHash{}}}.encode())) == Reason::BadField);
    CHECK(reason(DiskHashes::decode(DiskHashes{0, 4096, {}}.encode())) == Reason::BadField);
    auto too_many = hashes;
    too_many.hashes.emplace_back();
    CHECK(reason(DiskHashes::decode(too_many.encode())) == Reason::BadField);
    CHECK(reason(DiskHashes::decode(DiskHashes{UINT64_MAX / 4096, 4096, {DiskHash{}}}.encode())) == Reason::BadField);

    // Blocks: misaligned, empty, over the limit.
    CHECK(reason(DiskBlocks::decode(DiskBlocks{1, sector}.encode())) == Reason::BadField);
    CHECK(reason(DiskBlocks::decode(DiskBlocks{0, ""}.encode())) == Reason::BadField);
    CHECK(reason(DiskBlocks::decode(DiskBlocks{0, sector.substr(1)}.encode())) == Reason::BadField);
    auto big = DiskBlocks{0, ""}.encode();
    ByteWriter(big).bytes(std::string(kMaxDiskMessageBytes + kDiskSectorSize, 'b'));
    CHECK(reason(DiskBlocks::decode(big)) == Reason::BadField);
}
