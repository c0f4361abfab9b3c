// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/auth.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "base/fd.h"
#include "proto/errors.h"

namespace colod::proto {

namespace {

// libsodium must be initialised once before its random generator is used; sodium_init is
// itself thread-safe and idempotent.
void ensure_sodium() {
    static const int ready = sodium_init();
    if (ready < 0)
        std::abort();  // no usable random source: nothing safe can be done
}

// SAFETY: libsodium takes unsigned char pointers; std::byte has the same size and alignment.
const unsigned char* uc(const std::byte* p) { return reinterpret_cast<const unsigned char*>(p); }
unsigned char* uc(std::byte* p) { return reinterpret_cast<unsigned char*>(p); }

constexpr std::string_view kKeyLabel = "colod key v1";
constexpr std::string_view kProofLabel = "colod proof v1";
constexpr std::string_view kKeyIdLabel = "colod key id v2";

std::span<const std::byte> as_bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

// "root (uid 0)", or "uid 1234" for a uid without a name.
std::string user_name(uid_t uid) {
    passwd entry{};
    passwd* found = nullptr;
    std::vector<char> buffer(4096);
    if (::getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) == 0 && found)
        return fmt::format("{} (uid {})", found->pw_name, uid);
    return fmt::format("uid {}", uid);
}

}  // namespace

base::Result<Key> Key::from_bytes(std::span<const std::byte> material) {
    ensure_sodium();
    if (material.size() < kMinKeyFileBytes)
        return error(Reason::KeyFile, "key material of {} bytes, at least {} needed", material.size(),
                     kMinKeyFileBytes);
    Key key;
    // Keyed by a fixed label so the derived key is specific to this use.
    crypto_generichash(uc(key.m_key.data()), kKeySize, uc(material.data()), material.size(),
                       uc(as_bytes(kKeyLabel).data()), kKeyLabel.size());
    std::array<std::byte, kHashSize> id;
    crypto_generichash(uc(id.data()), id.size(), uc(as_bytes(kKeyIdLabel).data()), kKeyIdLabel.size(),
                       uc(key.m_key.data()), kKeySize);
    std::copy_n(id.begin(), key.m_id.size(), key.m_id.begin());
    return key;
}

base::Result<Key> Key::load_file(const std::string& path, std::string_view what) {
    base::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (!fd)
        return error(Reason::KeyFile, "{} {}: cannot open: {}", what, path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return error(Reason::KeyFile, "{} {}: cannot stat: {}", what, path, std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        return error(Reason::KeyFile, "{} {}: not a regular file", what, path);
    // Whoever owns the file can change it (and its mode): only the daemon's own user may.
    if (st.st_uid != ::geteuid())
        return error(Reason::KeyFile, "{} {}: owned by {}, mode {:04o}; it must be owned by {}, the user this daemon runs as",
                     what, path, user_name(st.st_uid), st.st_mode & 07777, user_name(::geteuid()));
    if (st.st_mode & 077)
        return error(Reason::KeyFile, "{} {}: mode {:04o} lets group or others read it; it must be 0600 or stricter",
                     what, path, st.st_mode & 07777);
    if (st.st_size < off_t(kMinKeyFileBytes) || st.st_size > off_t(kMaxKeyFileBytes))
        return error(Reason::KeyFile, "{} {}: {} bytes; it must hold {} to {} bytes (32+ random bytes)", what, path,
                     st.st_size, kMinKeyFileBytes, kMaxKeyFileBytes);
    std::vector<std::byte> material(size_t(st.st_size));
    size_t got = 0;
    while (got < material.size()) {
        ssize_t n = ::read(fd.get(), material.data() + got, material.size() - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sodium_memzero(material.data(), material.size());
            return error(Reason::KeyFile, "{} {}: short read", what, path);
        }
        got += size_t(n);
    }
    auto key = from_bytes(material);
    sodium_memzero(material.data(), material.size());
    return key;
}

Key::Key(const Key& other) : m_key(other.m_key), m_id(other.m_id) {}
Key& Key::operator=(const Key& other) {
    m_key = other.m_key;
    m_id = other.m_id;
    return *this;
}
Key::~Key() { sodium_memzero(m_key.data(), kKeySize); }

std::array<std::byte, kHashSize> hash_image(std::span<const std::byte> image) {
    ensure_sodium();
    std::array<std::byte, kHashSize> out;
    crypto_generichash(uc(out.data()), out.size(), uc(image.data()), image.size(), nullptr, 0);
    return out;
}

std::array<std::byte, kNonceSize> make_nonce() {
    ensure_sodium();
    std::array<std::byte, kNonceSize> nonce;
    randombytes_buf(nonce.data(), nonce.size());
    return nonce;
}

std::array<std::byte, kProofSize> make_proof(const Key& key, LinkSide prover, std::span<const std::byte> challenge,
                                             std::span<const std::byte> prover_nonce,
                                             std::span<const std::byte> transcript) {
    static_assert(kProofSize == crypto_auth_hmacsha512256_BYTES);
    static_assert(kKeySize == crypto_auth_hmacsha512256_KEYBYTES);
    crypto_auth_hmacsha512256_state state;
    crypto_auth_hmacsha512256_init(&state, uc(key.bytes().data()), kKeySize);
    auto add = [&](std::span<const std::byte> b) { crypto_auth_hmacsha512256_update(&state, uc(b.data()), b.size()); };
    const std::byte side{static_cast<uint8_t>(prover)};
    add(as_bytes(kProofLabel));
    add(std::span(&side, 1));
    add(challenge);
    add(prover_nonce);
    add(transcript);
    std::array<std::byte, kProofSize> proof;
    crypto_auth_hmacsha512256_final(&state, uc(proof.data()));
    sodium_memzero(&state, sizeof state);
    return proof;
}

bool proofs_equal(std::span<const std::byte, kProofSize> a, std::span<const std::byte, kProofSize> b) {
    static_assert(kProofSize == 32);
    return crypto_verify_32(uc(a.data()), uc(b.data())) == 0;
}

std::array<std::byte, kHashSize> transcript_hash(std::span<const std::byte> connecting_hello,
                                                 std::span<const std::byte> accepting_hello) {
    crypto_generichash_state state;
    crypto_generichash_init(&state, nullptr, 0, kHashSize);
    // Length-prefixed, so that moving bytes between the two HELLOs changes the hash.
    for (auto part : {connecting_hello, accepting_hello}) {
        unsigned char length[8];
        uint64_t n = part.size();
        for (int i = 0; i < 8; ++i)
            length[i] = static_cast<unsigned char>(n >> (56 - 8 * i));
        crypto_generichash_update(&state, length, sizeof length);
        crypto_generichash_update(&state, uc(part.data()), part.size());
    }
    std::array<std::byte, kHashSize> out;
    crypto_generichash_final(&state, uc(out.data()), out.size());
    return out;
}

}  // namespace colod::proto
