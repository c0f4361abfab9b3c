// SPDX-License-Identifier: GPL-2.0-or-later
// Writes the seed corpus of the proto fuzz targets: valid inputs of every kind, so the fuzzer
// starts from deep inside the decoders. Usage: proto_fuzz_seeds DIR  (writes DIR/<target>/...)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "proto/frame.h"
#include "proto/messages.h"
#include "proto/state.h"
#include "proto/wire.h"
#include "proto_fuzz_fixup.h"

using namespace colod::proto;

namespace {

std::filesystem::path g_root;

void write(const std::string& target, const std::string& name, std::vector<std::byte> bytes) {
    // The frame and snapshot targets take a mode byte first: 1 = fix checksums (and seal
    // tagged frames), 0 = as is.
    bool as_is = name == "stream" || name == "small" || name.ends_with("-as-is");
    if (target == "proto_fuzz_frame" || target == "proto_fuzz_snapshot")
        bytes.insert(bytes.begin(), std::byte(as_is ? 0 : 1));
    auto dir = g_root / target;
    std::filesystem::create_directories(dir);
    std::ofstream out(dir / name, std::ios::binary);
    // SAFETY: writing bytes through the char interface of ofstream.
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

std::vector<Message> sample_messages() {
    Hello h;
    h.vm_name = "demo";
    h.memory_bytes = 64 * kPageSize;
    h.vcpus = 2;
    h.devices = {{"uart0", 1}};
    h.image_hash[3] = std::byte{7};
    Auth a;
    a.proof[0] = std::byte{1};
    a.verdict = Verdict::Refuse;
    a.reason = "memory size differs";
    return {h, a, ErrorMessage{uint16_t(Reason::AuthFailed), "authentication failed"}, Heartbeat{41, 1700000000000000000},
            CheckpointReady{0}, CheckpointRequest{42}, CheckpointReply{42}, VmstateSize{42, 9000, 3, 1},
            VmstateReceived{42}, VmstateLoaded{42}, GuestShutdown{-1}, Handover{42}, ConsoleInput{42, "PING\n"}, ConsoleOutput{42, "PONG\n"},
            RngInput{4096, "\x01\x02\x03"}, NetInput{42, std::string(60, '\x11')}, NetOutput{42, std::string(60, '\x22')},
            DiskWrites{42, {{4096, std::string(512, '\x33')}, {0, std::string(1024, '\x44')}}},
            DiskHashes{2, 65536, {DiskHash{}, DiskHash{std::byte{1}}}}, DiskBlocks{65536, std::string(512, '\x55')}};
}

struct Guest {
    std::vector<std::byte> memory = std::vector<std::byte>(64 * kPageSize);
    std::vector<std::byte> body = std::vector<std::byte>(40, std::byte{5});
    std::vector<SectionInput> sections() const {
        return {{SectionId::Vcpu, 1, 0, "", body},    {SectionId::Vcpu, 1, 1, "", body},
                {SectionId::Irqchip, 1, 0, "", body}, {SectionId::Pit, 1, 0, "", body},
                {SectionId::Clock, 1, 0, "", body},   {SectionId::Device, 1, 0, "uart0", body}};
    }
    Hello hello() const {
        Hello h;
        h.vm_name = "demo";
        h.memory_bytes = 64 * kPageSize;
        h.vcpus = 2;
        h.devices = {{"uart0", 1}};
        return h;
    }
};

EncodedState encode(const Guest& g, std::vector<uint64_t> pages, uint32_t limit,
                    StateKind kind = StateKind::Complete) {
    auto r = StateEncoder({limit, ZeroScan::On})
                 .encode({1, pages, [&](uint64_t p) { return std::span(g.memory).subspan(p * kPageSize, kPageSize); },
                          kind == StateKind::Complete ? g.sections() : std::vector<SectionInput>{}, kind});
    if (!r) {
        std::fprintf(stderr, "encode: %s\n", r.error().message().c_str());
        std::exit(1);
    }
    return std::move(r).value();
}

// The state target's input format: VMSTATE_SIZE payload, then length-prefixed frames.
std::vector<std::byte> state_input(const EncodedState& s) {
    std::vector<std::byte> out = s.size().encode();
    ByteWriter w(out);
    for (size_t i = 0; i < s.frame_count(); ++i) {
        auto payload = s.frame_payload(i);
        w.u32(uint32_t(payload.size()));
        w.bytes(payload);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    g_root = argv[1];

    std::vector<std::byte> stream;
    uint64_t seq = 0;
    for (const auto& m : sample_messages()) {
        auto payload = encode_message(m);
        std::vector<std::byte> typed{std::byte(uint8_t(message_type(m)) - 1)};
        typed.insert(typed.end(), payload.begin(), payload.end());
        std::string name(message_type_name(message_type(m)));
        write("proto_fuzz_messages", name, typed);
        auto frame = encode_frame(message_type(m), seq++, payload);
        write("proto_fuzz_frame", name, frame);
        stream.insert(stream.end(), frame.begin(), frame.end());
    }
    write("proto_fuzz_frame", "stream", stream);

    // The frames of a session with link security: every message after the handshake, sealed
    // (encrypted) or tagged (authenticated), once as plaintext for the fix-up to seal and once
    // sealed already with the fuzz session's key (replayed as is: the tags check).
    for (auto flag : {FrameFlag::Sealed, FrameFlag::Tag}) {
        std::string kind = flag == FrameFlag::Sealed ? "sealed" : "tagged";
        std::vector<std::byte> plain;
        uint64_t sequence = 2;  // HELLO and AUTH were 0 and 1
        for (const auto& m : sample_messages()) {
            if (message_type(m) == MessageType::Hello || message_type(m) == MessageType::Auth)
                continue;
            auto payload = encode_message(m);
            FrameHeader h{kWireVersion, message_type(m), uint16_t(flag), sequence++, uint32_t(payload.size())};
            ByteWriter w(plain);
            w.bytes(encode_header(h));
            w.bytes(payload);
            w.zeros(kTagSize);
        }
        write("proto_fuzz_frame", kind + "-stream", plain);
        std::vector<std::byte> sealed = plain;
        fuzz::fix_checksums(sealed);
        write("proto_fuzz_frame", kind + "-stream-as-is", sealed);
    }

    Guest g;
    for (int p : {1, 2, 3, 10, 40})
        g.memory[size_t(p) * kPageSize + 17] = std::byte{0x99};
    auto small = encode(g, {0, 1, 2, 3, 4, 10, 40, 41, 63}, kMinFramePayload);
    write("proto_fuzz_state", "small", state_input(small));
    std::vector<uint64_t> zeros;
    for (uint64_t p = 20; p < 36; ++p)
        zeros.push_back(p);
    write("proto_fuzz_state", "zero-runs", state_input(encode(g, zeros, kMinFramePayload)));
    write("proto_fuzz_state", "precopy", state_input(encode(g, {5, 6, 7, 10, 20}, kMinFramePayload, StateKind::Precopy)));
    std::vector<uint64_t> many;
    for (uint64_t p = 0; p < 64; ++p)
        g.memory[p * kPageSize] = std::byte(p + 1), many.push_back(p);
    // 64 data pages over 64 KiB frames: several frames.
    auto multi = encode(g, many, kMinFramePayload);
    write("proto_fuzz_state", "multi-frame", state_input(multi));
    auto send = encode_frame(MessageType::VmstateSend, 0, small.frame_payload(0));
    write("proto_fuzz_frame", "VMSTATE_SEND", send);

    write("proto_fuzz_snapshot", "small", encode_snapshot(g.hello(), small));
    write("proto_fuzz_snapshot", "zero-runs", encode_snapshot(g.hello(), encode(g, zeros, kMinFramePayload)));
    std::printf("seeds written to %s\n", argv[1]);
    return 0;
}
