// SPDX-License-Identifier: GPL-2.0-or-later
// The key file rules and the proof construction.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "proto/auth.h"
#include "proto/errors.h"

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
