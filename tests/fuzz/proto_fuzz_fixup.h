// SPDX-License-Identifier: GPL-2.0-or-later
// Rewrites the header checks and payload CRCs of a byte stream of frames so that mutated
// inputs get past the checksums and reach the decoders behind them. A fuzzer cannot guess a
// CRC; without this, nearly every mutation would stop at header-check or payload-crc (those
// paths are fuzzed too: the targets run without fix-up when the mode byte says so).
//
// Frames flagged Tag or Sealed (a session with link security) cannot be fixed up by a CRC: the
// fix-up seals them instead, with a fixed session of the fuzz targets' own (FuzzSession), whose
// opening side the frame target then uses, so mutated plaintext reaches the message decoders
// through the real opening path.
#pragma once

#include <cstddef>
#include <span>

#include "proto/crc32c.h"
#include "proto/frame.h"
#include "proto/link_crypto.h"
#include "proto/wire.h"

namespace colod::proto::fuzz {

// Both directions of one fixed session, for both link securities: the connecting side seals,
// the accepting side opens. Fixed key and nonces, so a corpus sealed once stays valid.
class FuzzSession {
public:
    static FuzzSession& instance() {
        static FuzzSession session;
        return session;
    }
    FrameCipher& sealer(uint16_t flags) { return flags & uint16_t(FrameFlag::Sealed) ? m_seal_encrypted : m_seal_tagged; }
    FrameCipher& opener(uint16_t flags) { return flags & uint16_t(FrameFlag::Sealed) ? m_open_encrypted : m_open_tagged; }

private:
    FuzzSession()
        : m_seal_encrypted(make(LinkSecurity::Encrypted, FrameCipher::Direction::Seal)),
          m_open_encrypted(make(LinkSecurity::Encrypted, FrameCipher::Direction::Open)),
          m_seal_tagged(make(LinkSecurity::Authenticated, FrameCipher::Direction::Seal)),
          m_open_tagged(make(LinkSecurity::Authenticated, FrameCipher::Direction::Open)) {}
    static FrameCipher make(LinkSecurity security, FrameCipher::Direction direction) {
        std::array<std::byte, 32> material{};
        material.fill(std::byte{0x42});
        auto key = Key::from_bytes(material).value();
        std::array<std::byte, kNonceSize> connecting{}, accepting{};
        connecting.fill(std::byte{1});
        accepting.fill(std::byte{2});
        std::array<std::byte, kHashSize> transcript{};
        SessionParams params{security, Aead::Aes256Gcm, connecting, accepting, transcript};
        return FrameCipher::derive(key, LinkSide::Connecting, params, direction).value();
    }
    FrameCipher m_seal_encrypted, m_open_encrypted, m_seal_tagged, m_open_tagged;
};

inline void fix_checksums(std::span<std::byte> stream) {
    while (stream.size() >= kHeaderSize) {
        store_be32(&stream[20], crc32c(stream.first(20)));
        size_t payload = load_be32(&stream[16]);
        uint16_t flags = load_be16(&stream[6]);
        bool tagged = flags & (uint16_t(FrameFlag::Tag) | uint16_t(FrameFlag::Sealed));
        size_t body = payload + (tagged ? kTagSize : kCrcSize);
        if (stream.size() - kHeaderSize < body)
            return;
        auto bytes = stream.subspan(kHeaderSize, payload);
        if (tagged && !(flags & uint16_t(FrameFlag::Tag) && flags & uint16_t(FrameFlag::Sealed))) {
            FrameCipher& sealer = FuzzSession::instance().sealer(flags);
            std::span<const std::byte, kHeaderSize> header(stream.data(), kHeaderSize);
            if (!sealer.begin(load_be64(&stream[8]), header) || !sealer.seal(bytes, bytes.data()))
                return;
            auto tag = sealer.finish_seal();
            if (!tag)
                return;
            std::copy(tag->begin(), tag->end(), stream.begin() + ptrdiff_t(kHeaderSize + payload));
        } else if (!tagged) {
            store_be32(&stream[kHeaderSize + payload], crc32c(bytes));
        }
        stream = stream.subspan(kHeaderSize + body);
    }
}

}  // namespace colod::proto::fuzz
