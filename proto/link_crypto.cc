// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/link_crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <climits>
#include <string_view>
#include <vector>

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "proto/errors.h"
#include "proto/wire.h"

namespace colod::proto {

namespace {

constexpr std::string_view kLinkKeyLabel = "colod link key v2";
constexpr size_t kIvSize = 12;

// SAFETY: libcrypto takes unsigned char pointers; std::byte has the same size and alignment.
const unsigned char* uc(const std::byte* p) { return reinterpret_cast<const unsigned char*>(p); }
unsigned char* uc(std::byte* p) { return reinterpret_cast<unsigned char*>(p); }

// libcrypto's own words for its most recent failure (its error queue is per thread).
base::Error crypto_error(std::string_view doing) {
    unsigned long code = ERR_get_error();
    char text[256] = "no detail";
    if (code)
        ERR_error_string_n(code, text, sizeof text);
    ERR_clear_error();
    return base::Error::make(base::Errc::Failed, "libcrypto: {}: {}", doing, text);
}

const char* cipher_name(Aead aead) { return aead == Aead::Aes256Gcm ? "AES-256-GCM" : "ChaCha20-Poly1305"; }

}  // namespace

Aead preferred_aead() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul"))
        return Aead::Aes256Gcm;
#elif defined(__aarch64__)
    unsigned long hwcap = ::getauxval(AT_HWCAP);
    if ((hwcap & HWCAP_AES) && (hwcap & HWCAP_PMULL))
        return Aead::Aes256Gcm;
#endif
    return Aead::ChaCha20Poly1305;
}

Aead agreed_aead(Aead local, Aead peer) {
    return local == Aead::Aes256Gcm && peer == Aead::Aes256Gcm ? Aead::Aes256Gcm : Aead::ChaCha20Poly1305;
}

struct FrameCipher::Context {
    EVP_CIPHER* cipher = nullptr;
    EVP_CIPHER_CTX* ctx = nullptr;
    ~Context() {
        EVP_CIPHER_CTX_free(ctx);  // also wipes the key schedule
        EVP_CIPHER_free(cipher);
    }
};

FrameCipher::FrameCipher(std::unique_ptr<Context> context, LinkSecurity security, Aead aead, Direction direction)
    : m_context(std::move(context)), m_security(security), m_aead(aead), m_direction(direction) {}
FrameCipher::FrameCipher(FrameCipher&&) noexcept = default;
FrameCipher& FrameCipher::operator=(FrameCipher&&) noexcept = default;
FrameCipher::~FrameCipher() = default;

base::Result<FrameCipher> FrameCipher::derive(const Key& key, LinkSide sender, const SessionParams& params,
                                              Direction direction) {
    if (params.security == LinkSecurity::None)
        return base::Error::make(base::Errc::Invalid, "link-security none has no frame cipher");
    if (params.aead != Aead::Aes256Gcm && params.aead != Aead::ChaCha20Poly1305)
        return base::Error::make(base::Errc::Invalid, "no AEAD agreed");

    // HKDF-SHA256: IKM = the pre-shared key, salt = nonce_connecting || nonce_accepting,
    // info = label || sender side || link security || AEAD || transcript hash.
    std::vector<unsigned char> salt;
    salt.insert(salt.end(), uc(params.connecting_nonce.data()), uc(params.connecting_nonce.data()) + params.connecting_nonce.size());
    salt.insert(salt.end(), uc(params.accepting_nonce.data()), uc(params.accepting_nonce.data()) + params.accepting_nonce.size());
    std::vector<unsigned char> info(kLinkKeyLabel.begin(), kLinkKeyLabel.end());
    info.push_back(static_cast<uint8_t>(sender));
    info.push_back(static_cast<uint8_t>(params.security));
    info.push_back(static_cast<uint8_t>(params.aead));
    info.insert(info.end(), uc(params.transcript.data()), uc(params.transcript.data()) + params.transcript.size());

    EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    if (!kdf)
        return crypto_error("fetching HKDF");
    EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (!kctx)
        return crypto_error("creating the HKDF context");
    char digest[] = "SHA256";
    OSSL_PARAM kdf_params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
        // SAFETY: OSSL_PARAM takes non-const pointers; EVP_KDF_derive only reads these.
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::byte*>(key.bytes().data()), kKeySize),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt.data(), salt.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
        OSSL_PARAM_construct_end(),
    };
    std::array<unsigned char, 32> session_key{};
    int derived = EVP_KDF_derive(kctx, session_key.data(), session_key.size(), kdf_params);
    EVP_KDF_CTX_free(kctx);
    if (derived <= 0)
        return crypto_error("HKDF");

    auto context = std::make_unique<Context>();
    context->cipher = EVP_CIPHER_fetch(nullptr, cipher_name(params.aead), nullptr);
    context->ctx = EVP_CIPHER_CTX_new();
    bool ready = context->cipher && context->ctx &&
                 EVP_CipherInit_ex2(context->ctx, context->cipher, session_key.data(), nullptr,
                                    direction == Direction::Seal ? 1 : 0, nullptr) > 0 &&
                 EVP_CIPHER_CTX_get_iv_length(context->ctx) == int(kIvSize);
    OPENSSL_cleanse(session_key.data(), session_key.size());
    if (!ready)
        return crypto_error(fmt::format("setting up {}", cipher_name(params.aead)));
    return FrameCipher(std::move(context), params.security, params.aead, direction);
}

FrameFlag FrameCipher::flag() const {
    return m_security == LinkSecurity::Encrypted ? FrameFlag::Sealed : FrameFlag::Tag;
}

base::Result<void> FrameCipher::begin(uint64_t sequence, std::span<const std::byte, kHeaderSize> header) {
    std::array<std::byte, kIvSize> iv{};
    store_be64(&iv[4], sequence);
    // The key stays; a new nonce starts a new message (EVP_CipherInit_ex2 with a null cipher
    // and key, and -1 for "same direction").
    if (EVP_CipherInit_ex2(m_context->ctx, nullptr, nullptr, uc(iv.data()), -1, nullptr) <= 0)
        return crypto_error("starting a frame");
    return update(header.data(), nullptr, header.size());
}

base::Result<void> FrameCipher::update(const std::byte* in, std::byte* out, size_t n) {
    // A null output makes the bytes associated data (authenticated, not encrypted).
    while (n) {
        int step = int(std::min<size_t>(n, INT_MAX / 2));
        int written = 0;
        if (EVP_CipherUpdate(m_context->ctx, out ? uc(out) : nullptr, &written, uc(in), step) <= 0 ||
            (out && written != step))
            return crypto_error("sealing or opening a frame");
        in += step;
        if (out)
            out += step;
        n -= size_t(step);
    }
    return base::ok();
}

base::Result<void> FrameCipher::seal(std::span<const std::byte> in, std::byte* out) {
    return update(in.data(), m_security == LinkSecurity::Encrypted ? out : nullptr, in.size());
}

base::Result<void> FrameCipher::open(std::span<std::byte> bytes) {
    return update(bytes.data(), m_security == LinkSecurity::Encrypted ? bytes.data() : nullptr, bytes.size());
}

base::Result<std::array<std::byte, kTagSize>> FrameCipher::finish_seal() {
    unsigned char rest[32];
    int written = 0;
    if (EVP_CipherFinal_ex(m_context->ctx, rest, &written) <= 0 || written != 0)
        return crypto_error("ending a frame");
    std::array<std::byte, kTagSize> tag;
    if (EVP_CIPHER_CTX_ctrl(m_context->ctx, EVP_CTRL_AEAD_GET_TAG, int(kTagSize), tag.data()) <= 0)
        return crypto_error("reading a frame's tag");
    return tag;
}

base::Result<void> FrameCipher::finish_open(std::span<const std::byte, kTagSize> tag) {
    std::array<std::byte, kTagSize> expected;
    std::copy(tag.begin(), tag.end(), expected.begin());
    if (EVP_CIPHER_CTX_ctrl(m_context->ctx, EVP_CTRL_AEAD_SET_TAG, int(kTagSize), expected.data()) <= 0)
        return crypto_error("setting a frame's tag");
    unsigned char rest[32];
    int written = 0;
    // The tag comparison is libcrypto's (constant time).
    if (EVP_CipherFinal_ex(m_context->ctx, rest, &written) <= 0) {
        ERR_clear_error();
        return error(Reason::FrameAuth, "the frame's tag does not match its header and payload");
    }
    return base::ok();
}

}  // namespace colod::proto
