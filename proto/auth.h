// SPDX-License-Identifier: GPL-2.0-or-later
// The pair's pre-shared key and the handshake's cryptography built on it (libsodium): key ids,
// proofs, the transcript hash. The session's frame keys and ciphers are in link_crypto.h
// (OpenSSL). docs/protocol.md explains the construction.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include <sodium.h>

#include "base/result.h"
#include "proto/messages.h"

namespace colod::proto {

inline constexpr size_t kMinKeyFileBytes = 32;
inline constexpr size_t kMaxKeyFileBytes = 4096;
inline constexpr size_t kKeySize = 32;

// Which end of the connection a side is; part of every proof and frame key so that nothing a
// side sent can be played back to it as the peer's.
enum class LinkSide : uint8_t { Connecting = 1, Accepting = 2 };

// The pre-shared key, reduced to 32 bytes (keyed BLAKE2b of the file's bytes, so any file of
// 32+ random bytes works, binary or text), and its id. Every copy is wiped on destruction.
class Key {
public:
    // The key of a file: the file must be a regular file of kMinKeyFileBytes..kMaxKeyFileBytes
    // bytes, owned by the effective user of this process, with no permission bits for group or
    // others (0600, 0400 or stricter). Errors name the config key (`what`), the file and the
    // rule it broke, with the file's owner and mode where they matter (base::Errc::Invalid,
    // Reason::KeyFile).
    static base::Result<Key> load_file(const std::string& path, std::string_view what = "auth-key-file");
    // The key for given bytes (tests; also the file loader after its checks).
    static base::Result<Key> from_bytes(std::span<const std::byte> material);

    Key(const Key& other);
    Key& operator=(const Key& other);
    ~Key();

    std::span<const std::byte, kKeySize> bytes() const { return m_key; }
    // Keyed BLAKE2b-256 of a fixed label under the key, its first 8 bytes: tells keys apart in HELLO
    // and in logs, and reveals nothing about the key.
    const KeyId& id() const { return m_id; }

private:
    Key() = default;
    std::array<std::byte, kKeySize> m_key{};
    KeyId m_id{};
};

// BLAKE2b-256 of a guest image, for HELLO.image_hash (both sides hash the image they would
// boot; a difference refuses the pairing).
std::array<std::byte, kHashSize> hash_image(std::span<const std::byte> image);

// Fresh random nonce (randombytes_buf).
std::array<std::byte, kNonceSize> make_nonce();

// The proof a side sends in AUTH: HMAC-SHA-512/256 under the key over a label, the prover's
// side, the verifier's nonce (the challenge), the prover's nonce and a hash of both HELLO
// payloads (so a HELLO altered in transit fails authentication).
std::array<std::byte, kProofSize> make_proof(const Key& key, LinkSide prover,
                                             std::span<const std::byte> challenge,
                                             std::span<const std::byte> prover_nonce,
                                             std::span<const std::byte> transcript_hash);
// Constant-time comparison of a received proof against the expected one.
bool proofs_equal(std::span<const std::byte, kProofSize> a, std::span<const std::byte, kProofSize> b);

// BLAKE2b-256 of the connecting side's HELLO payload followed by the accepting side's.
std::array<std::byte, kHashSize> transcript_hash(std::span<const std::byte> connecting_hello,
                                                 std::span<const std::byte> accepting_hello);

}  // namespace colod::proto
