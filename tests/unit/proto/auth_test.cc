// SPDX-License-Identifier: GPL-2.0-or-later
// The key file rules, key ids and key sets, the proof construction, and the frame ciphers of a
// session (link_crypto.h) without sockets.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <string>

#include "proto/auth.h"
#include "proto/errors.h"
#include "proto/key_ring.h"
#include "proto/link_crypto.h"

using namespace colod;
using namespace colod::proto;

namespace {

struct TempFile {
    std::string path;
    TempFile(std::string_view contents, mode_t mode) {
        static int counter = 0;
        path = fmt::format("/tmp/proto-key-{}-{}", ::getpid(), counter++);
        int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, contents.data(), contents.size()) == ssize_t(contents.size()));
        ::close(fd);
        REQUIRE(::chmod(path.c_str(), mode) == 0);
    }
    ~TempFile() { ::unlink(path.c_str()); }
};

}  // namespace

TEST_CASE("key file: accepted at 0600 and 0400 with 32+ bytes") {
    TempFile a(std::string(32, 'k'), 0600);
    REQUIRE(Key::load_file(a.path).ok());
    TempFile b(std::string(100, 'k'), 0400);
    REQUIRE(Key::load_file(b.path).ok());
}

TEST_CASE("key file: refused when group or others may read it, naming the file and the rule") {
    TempFile a(std::string(32, 'k'), 0640);
    auto r = Key::load_file(a.path);
    REQUIRE_FALSE(r.ok());
    REQUIRE(reason_of(r.error()) == Reason::KeyFile);
    REQUIRE(r.error().code() == base::Errc::Invalid);
    REQUIRE_THAT(r.error().message(), Catch::Contains(a.path));
    REQUIRE_THAT(r.error().message(), Catch::Contains("0600"));
    TempFile b(std::string(32, 'k'), 0604);
    REQUIRE(reason_of(Key::load_file(b.path).error()) == Reason::KeyFile);
}

TEST_CASE("key file: refused when another user owns it, naming the file, its owner and its mode") {
    passwd* nobody = ::getpwnam("nobody");
    if (!nobody || ::geteuid() != 0) {
        WARN("needs root and a user 'nobody' to hand the file to: not run");
        return;
    }
    TempFile a(std::string(32, 'k'), 0600);
    REQUIRE(::chown(a.path.c_str(), nobody->pw_uid, nobody->pw_gid) == 0);
    auto r = Key::load_file(a.path);
    REQUIRE_FALSE(r.ok());
    REQUIRE(reason_of(r.error()) == Reason::KeyFile);
    REQUIRE(r.error().code() == base::Errc::Invalid);
    REQUIRE_THAT(r.error().message(), Catch::Contains(a.path));
    REQUIRE_THAT(r.error().message(), Catch::Contains("owned by nobody"));
    REQUIRE_THAT(r.error().message(), Catch::Contains("0600"));
    REQUIRE_THAT(r.error().message(), Catch::Contains("root (uid 0)"));
    // The same through a key set, for the next key: the message names its config key.
    TempFile current(std::string(32, 'c'), 0600);
    auto set = KeySet::load(current.path, a.path);
    REQUIRE_FALSE(set.ok());
    REQUIRE_THAT(set.error().message(), Catch::Contains("auth-key-file-next " + a.path));
}

TEST_CASE("key file: refused when short, missing or not a file") {
    TempFile a(std::string(31, 'k'), 0600);
    auto r = Key::load_file(a.path);
    REQUIRE(reason_of(r.error()) == Reason::KeyFile);
    REQUIRE_THAT(r.error().message(), Catch::Contains("32"));
    REQUIRE(reason_of(Key::load_file("/nonexistent/colod.key").error()) == Reason::KeyFile);
    REQUIRE(reason_of(Key::load_file("/tmp").error()) == Reason::KeyFile);
}

TEST_CASE("same material gives the same key; different material a different one") {
    std::string m1(40, 'a'), m2(40, 'b');
    auto k1 = Key::from_bytes(std::as_bytes(std::span(m1.data(), m1.size())));
    auto k1b = Key::from_bytes(std::as_bytes(std::span(m1.data(), m1.size())));
    auto k2 = Key::from_bytes(std::as_bytes(std::span(m2.data(), m2.size())));
    REQUIRE(std::equal(k1->bytes().begin(), k1->bytes().end(), k1b->bytes().begin()));
    REQUIRE_FALSE(std::equal(k1->bytes().begin(), k1->bytes().end(), k2->bytes().begin()));
}

TEST_CASE("proofs depend on key, side, both nonces and the transcript") {
    std::string material(32, 'x'), other_material(32, 'y');
    auto key = Key::from_bytes(std::as_bytes(std::span(material.data(), material.size()))).value();
    auto other = Key::from_bytes(std::as_bytes(std::span(other_material.data(), other_material.size()))).value();
    auto n1 = make_nonce();
    auto n2 = make_nonce();
    REQUIRE(n1 != n2);
    auto t = transcript_hash(n1, n2);
    auto base_proof = make_proof(key, LinkSide::Connecting, n1, n2, t);
    REQUIRE(proofs_equal(base_proof, make_proof(key, LinkSide::Connecting, n1, n2, t)));
    REQUIRE_FALSE(proofs_equal(base_proof, make_proof(other, LinkSide::Connecting, n1, n2, t)));
    REQUIRE_FALSE(proofs_equal(base_proof, make_proof(key, LinkSide::Accepting, n1, n2, t)));
    REQUIRE_FALSE(proofs_equal(base_proof, make_proof(key, LinkSide::Connecting, n2, n1, t)));
    auto t2 = transcript_hash(n2, n1);
    REQUIRE_FALSE(proofs_equal(base_proof, make_proof(key, LinkSide::Connecting, n1, n2, t2)));
}

TEST_CASE("image hashes tell images apart") {
    std::string a(1000, 'a'), b = a;
    b[999] = 'b';
    auto ha = hash_image(std::as_bytes(std::span(a.data(), a.size())));
    REQUIRE(ha == hash_image(std::as_bytes(std::span(a.data(), a.size()))));
    REQUIRE(ha != hash_image(std::as_bytes(std::span(b.data(), b.size()))));
}

namespace {

Key key_of(char fill) {
    std::string material(32, fill);
    return Key::from_bytes(std::as_bytes(std::span(material.data(), material.size()))).value();
}

}  // namespace

TEST_CASE("key ids: stable for a key, different between keys, and not the key's bytes") {
    Key a = key_of('a');
    REQUIRE(a.id() == key_of('a').id());
    REQUIRE(a.id() != key_of('b').id());
    REQUIRE_FALSE(std::equal(a.id().begin(), a.id().end(), a.bytes().begin()));
    REQUIRE(key_id_hex(a.id()).size() == 2 * kKeyIdSize);
}

TEST_CASE("key sets: the current key first, the next one after it, a repeated key once") {
    TempFile current(std::string(40, 'c'), 0600);
    TempFile next(std::string(40, 'n'), 0400);
    TempFile same(std::string(40, 'c'), 0600);
    auto only = KeySet::load(current.path, "");
    REQUIRE(only.ok());
    REQUIRE(only->entries().size() == 1);
    auto both = KeySet::load(current.path, next.path);
    REQUIRE(both.ok());
    REQUIRE(both->ids().size() == 2);
    REQUIRE(both->ids()[0] == only->ids()[0]);
    REQUIRE(both->find(both->ids()[1]) == &both->entries()[1]);
    REQUIRE_THAT(both->describe(), Catch::Contains("auth-key-file " + current.path + " (key id " +
                                                   key_id_hex(both->ids()[0]) + ")"));
    REQUIRE_THAT(both->describe(), Catch::Contains("auth-key-file-next " + next.path));
    REQUIRE(KeySet::load(current.path, same.path)->entries().size() == 1);
    auto missing = KeySet::load(current.path, "/nonexistent/next.key");
    REQUIRE(reason_of(missing.error()) == Reason::KeyFile);
    REQUIRE_THAT(missing.error().message(), Catch::Contains("auth-key-file-next /nonexistent/next.key"));
}

TEST_CASE("a key ring hands out the keys of the moment; a snapshot taken before a reload keeps its keys") {
    KeyRing ring{KeySet(key_of('1'))};
    auto before = ring.keys();
    ring.replace(KeySet(key_of('1'), key_of('2')));
    auto after = ring.keys();
    REQUIRE(before->entries().size() == 1);
    REQUIRE(after->entries().size() == 2);
    REQUIRE(after->ids()[1] == key_of('2').id());
}

// ---- Frame ciphers ----

namespace {

struct Session {
    std::array<std::byte, kNonceSize> connecting_nonce = make_nonce();
    std::array<std::byte, kNonceSize> accepting_nonce = make_nonce();
    std::array<std::byte, kHashSize> transcript = transcript_hash(connecting_nonce, accepting_nonce);

    SessionParams params(LinkSecurity security, Aead aead) const {
        return {security, aead, connecting_nonce, accepting_nonce, transcript};
    }
};

FrameCipher cipher(const Key& key, LinkSide sender, const SessionParams& params, FrameCipher::Direction direction) {
    auto made = FrameCipher::derive(key, sender, params, direction);
    REQUIRE(made.ok());
    return std::move(made).value();
}

struct Sealed {
    HeaderBytes header;
    std::vector<std::byte> body;  // payload (ciphertext when encrypted), then the tag
};

// Seals `payload` as frame `sequence`, fed in pieces of `piece` bytes.
Sealed seal(FrameCipher& c, uint64_t sequence, std::span<const std::byte> payload, size_t piece = 1000) {
    FrameHeader h{kWireVersion, MessageType::VmstateSend, uint16_t(c.flag()), sequence, uint32_t(payload.size())};
    Sealed out{encode_header(h), std::vector<std::byte>(payload.size() + kTagSize)};
    REQUIRE(c.begin(sequence, out.header).ok());
    for (size_t at = 0; at < payload.size(); at += piece) {
        size_t n = std::min(piece, payload.size() - at);
        REQUIRE(c.seal(payload.subspan(at, n), out.body.data() + at).ok());
        if (c.security() == LinkSecurity::Authenticated)
            std::copy_n(payload.begin() + ptrdiff_t(at), n, out.body.begin() + ptrdiff_t(at));
    }
    auto tag = c.finish_seal();
    REQUIRE(tag.ok());
    std::copy(tag->begin(), tag->end(), out.body.end() - kTagSize);
    return out;
}

// Opens a sealed frame as frame `sequence`, in pieces of `piece` bytes; the payload on success.
base::Result<std::vector<std::byte>> open(FrameCipher& c, uint64_t sequence, Sealed frame, size_t piece = 777) {
    TRY(c.begin(sequence, frame.header));
    size_t length = frame.body.size() - kTagSize;
    for (size_t at = 0; at < length; at += piece)
        TRY(c.open(std::span(frame.body).subspan(at, std::min(piece, length - at))));
    TRY(c.finish_open(std::span<const std::byte, kTagSize>(frame.body.data() + length, kTagSize)));
    frame.body.resize(length);
    return frame.body;
}

std::vector<std::byte> random_bytes(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::byte> out(n);
    for (auto& b : out)
        b = std::byte(rng());
    return out;
}

}  // namespace

TEST_CASE("frame ciphers: what one side seals the other opens, for both AEADs and both securities") {
    Key key = key_of('s');
    Session s;
    auto payload = random_bytes(70000, 1);
    for (Aead aead : {Aead::Aes256Gcm, Aead::ChaCha20Poly1305}) {
        for (LinkSecurity security : {LinkSecurity::Encrypted, LinkSecurity::Authenticated}) {
            INFO(aead_name(aead) << ", " << link_security_name(security));
            auto params = s.params(security, aead);
            auto sender = cipher(key, LinkSide::Connecting, params, FrameCipher::Direction::Seal);
            auto receiver = cipher(key, LinkSide::Connecting, params, FrameCipher::Direction::Open);
            REQUIRE(sender.flag() == (security == LinkSecurity::Encrypted ? FrameFlag::Sealed : FrameFlag::Tag));
            for (uint64_t seq = 2; seq < 6; ++seq) {
                auto frame = seal(sender, seq, payload);
                bool in_clear = std::equal(payload.begin(), payload.end(), frame.body.begin());
                REQUIRE(in_clear == (security == LinkSecurity::Authenticated));
                auto opened = open(receiver, seq, frame);
                REQUIRE(opened.ok());
                REQUIRE(opened.value() == payload);
            }
            // An empty payload (a frame that is all header) is sealed too.
            auto empty = seal(sender, 6, {});
            REQUIRE(open(receiver, 6, empty).ok());
        }
    }
}

TEST_CASE("frame ciphers: a changed header, payload or tag, another sequence, direction or session fails the tag") {
    Key key = key_of('s');
    Session s;
    auto payload = random_bytes(5000, 2);
    for (LinkSecurity security : {LinkSecurity::Encrypted, LinkSecurity::Authenticated}) {
        INFO(link_security_name(security));
        auto params = s.params(security, Aead::Aes256Gcm);
        auto sender = cipher(key, LinkSide::Accepting, params, FrameCipher::Direction::Seal);
        auto receiver = cipher(key, LinkSide::Accepting, params, FrameCipher::Direction::Open);
        auto frame = seal(sender, 9, payload);
        auto refused = [&](const base::Result<std::vector<std::byte>>& r) {
            REQUIRE_FALSE(r.ok());
            REQUIRE(reason_of(r.error()) == Reason::FrameAuth);
            REQUIRE(r.error().code() == base::Errc::Auth);
        };
        for (size_t byte : {size_t(5), size_t(10), size_t(17)}) {  // type, sequence, length
            Sealed bad = frame;
            bad.header[byte] ^= std::byte{1};
            refused(open(receiver, 9, bad));
        }
        for (size_t at : {size_t(0), payload.size() / 2, payload.size() - 1, payload.size(), frame.body.size() - 1}) {
            Sealed bad = frame;
            bad.body[at] ^= std::byte{0x80};
            refused(open(receiver, 9, bad));
        }
        refused(open(receiver, 10, frame));  // replayed or reordered: another nonce
        // Reflected: the accepting side's frames opened as if the connecting side had sent them.
        auto reflected = cipher(key, LinkSide::Connecting, params, FrameCipher::Direction::Open);
        refused(open(reflected, 9, frame));
        // Another session (other nonces), another key, another security or AEAD: other keys.
        Session other;
        auto other_session = cipher(key, LinkSide::Accepting, other.params(security, Aead::Aes256Gcm),
                                    FrameCipher::Direction::Open);
        refused(open(other_session, 9, frame));
        auto other_key = cipher(key_of('t'), LinkSide::Accepting, params, FrameCipher::Direction::Open);
        refused(open(other_key, 9, frame));
        auto other_aead = cipher(key, LinkSide::Accepting, s.params(security, Aead::ChaCha20Poly1305),
                                 FrameCipher::Direction::Open);
        refused(open(other_aead, 9, frame));
        // Truncated: the frame opened as if it ended earlier.
        Sealed cut = frame;
        cut.body.erase(cut.body.begin() + ptrdiff_t(payload.size() - 1));
        refused(open(receiver, 9, cut));
        // After all that, the genuine frame still opens.
        REQUIRE(open(receiver, 9, frame).ok());
    }
}

TEST_CASE("the session uses AES-256-GCM only when both sides prefer it") {
    REQUIRE(agreed_aead(Aead::Aes256Gcm, Aead::Aes256Gcm) == Aead::Aes256Gcm);
    REQUIRE(agreed_aead(Aead::Aes256Gcm, Aead::ChaCha20Poly1305) == Aead::ChaCha20Poly1305);
    REQUIRE(agreed_aead(Aead::ChaCha20Poly1305, Aead::Aes256Gcm) == Aead::ChaCha20Poly1305);
    REQUIRE(agreed_aead(Aead::Aes256Gcm, Aead::Auto) == Aead::ChaCha20Poly1305);
    Aead here = preferred_aead();
    REQUIRE((here == Aead::Aes256Gcm || here == Aead::ChaCha20Poly1305));
    WARN("this host prefers " << aead_name(here));
    Session s;
    REQUIRE_FALSE(FrameCipher::derive(key_of('x'), LinkSide::Connecting, s.params(LinkSecurity::None, Aead::Aes256Gcm),
                                      FrameCipher::Direction::Seal)
                      .ok());
}
