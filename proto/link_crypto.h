// SPDX-License-Identifier: GPL-2.0-or-later
// The protection of frames after the handshake ([replication] link-security), with OpenSSL 3's
// libcrypto: only constructions the library documents, nothing of our own.
//
//   keys    one per session and direction: HKDF-SHA256 (EVP_KDF "HKDF", RFC 5869) of the agreed
//           pre-shared key, salted with both handshake nonces, the info binding the sending
//           side, the link security, the AEAD and the handshake transcript (docs/protocol.md §6)
//   AEAD    AES-256-GCM or ChaCha20-Poly1305 through EVP_CIPHER, 16-byte tags
//   nonce   96 bits: 4 zero bytes and the frame's 64-bit sequence number in this direction
//           (NIST SP 800-38D's deterministic construction; RFC 8439 for ChaCha20-Poly1305): a
//           key never sees a nonce twice, and a frame replayed, dropped, reordered or sent
//           back to its sender fails its tag
//   encrypted      the 24-byte header is associated data, the payload is encrypted
//   authenticated  header and payload are associated data, nothing is encrypted (GMAC, or
//                  Poly1305 alone): integrity without confidentiality, the payload goes out
//                  straight from the caller's memory
//
// A FrameCipher is one direction of one session. The link calls begin() per frame, feeds the
// payload in pieces as it sends or receives it, then finish_seal() / finish_open(): the
// payload is never held whole in another buffer.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>

#include "base/result.h"
#include "proto/auth.h"
#include "proto/frame.h"
#include "proto/messages.h"

namespace colod::proto {

// The AEAD this host prefers: AES-256-GCM when the CPU has AES and carry-less multiply
// instructions (x86-64 AES-NI and PCLMULQDQ, ARMv8 AES and PMULL), else ChaCha20-Poly1305,
// which is several times faster than AES without them (docs/protocol.md §9).
Aead preferred_aead();
// The session's AEAD: AES-256-GCM if both sides prefer it, else ChaCha20-Poly1305. The same on
// both sides, since each computes it from both HELLOs (which the proofs authenticate).
Aead agreed_aead(Aead local, Aead peer);

// What the two ends of a session agreed in the handshake, for deriving its keys.
struct SessionParams {
    LinkSecurity security = LinkSecurity::Encrypted;  // Authenticated or Encrypted
    Aead aead = Aead::Aes256Gcm;                      // as agreed_aead() returned
    std::span<const std::byte> connecting_nonce;      // kNonceSize bytes each
    std::span<const std::byte> accepting_nonce;
    std::span<const std::byte> transcript;            // transcript_hash() of both HELLOs
};

class FrameCipher {
public:
    enum class Direction { Seal, Open };

    // The cipher for the frames `sender` sends in this session, under the pre-shared key both
    // sides agreed on: the sender seals with it, the other side opens. Errors only when
    // libcrypto fails (Errc::Failed).
    static base::Result<FrameCipher> derive(const Key& key, LinkSide sender, const SessionParams& params,
                                            Direction direction);

    FrameCipher(FrameCipher&&) noexcept;
    FrameCipher& operator=(FrameCipher&&) noexcept;
    ~FrameCipher();

    LinkSecurity security() const { return m_security; }
    Aead aead() const { return m_aead; }
    // The header flag every frame of this session carries (Tag or Sealed).
    FrameFlag flag() const;

    // Starts a frame: the nonce from its sequence number, the header as associated data.
    base::Result<void> begin(uint64_t sequence, std::span<const std::byte, kHeaderSize> header);
    // The next payload bytes, in order. Encrypted sealing writes the ciphertext to `out` (the
    // same length; `out` may equal `in`); opening decrypts in place. Authenticated: the bytes
    // are only authenticated and `out` is unused (pass null).
    base::Result<void> seal(std::span<const std::byte> in, std::byte* out);
    base::Result<void> open(std::span<std::byte> bytes);
    // Ends a sealed frame: its tag.
    base::Result<std::array<std::byte, kTagSize>> finish_seal();
    // Ends an opened frame: Reason::FrameAuth (Errc::Auth) unless `tag` is the frame's tag.
    // Until this succeeds the opened bytes must not be used.
    base::Result<void> finish_open(std::span<const std::byte, kTagSize> tag);

private:
    struct Context;
    FrameCipher(std::unique_ptr<Context> context, LinkSecurity security, Aead aead, Direction direction);
    base::Result<void> update(const std::byte* in, std::byte* out, size_t n);

    std::unique_ptr<Context> m_context;
    LinkSecurity m_security;
    Aead m_aead;
    Direction m_direction;
};

}  // namespace colod::proto
