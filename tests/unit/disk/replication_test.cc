// SPDX-License-Identifier: GPL-2.0-or-later
// The disk's replication pieces on real image files: the primary's WriteLog (what a checkpoint
// carries) and the secondary's EpochJournal (an image that moves one whole checkpoint at a time,
// and comes back to one after a crash at any step).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/disk/image.h"
#include "core/disk/journal.h"
#include "core/disk/overlay.h"
#include "core/disk/write_log.h"

using namespace colod;
using core::disk::EpochJournal;
using core::disk::FileImage;
using core::disk::WriteLog;
using proto::DiskWrite;
using proto::DiskWrites;
using proto::kDiskSectorSize;
using proto::kMaxDiskMessageBytes;

namespace {

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "colod-disk-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

std::filesystem::path make_image(const std::filesystem::path& path, uint64_t bytes, char fill = '\0') {
    std::ofstream out(path, std::ios::binary);
    out << std::string(bytes, fill);
    return path;
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string sectors(size_t count, char fill) { return std::string(count * kDiskSectorSize, fill); }

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

}  // namespace

TEST_CASE("write log: writes come out in the guest's order, cut into messages the protocol allows", "[disk]") {
    WriteLog log;
    CHECK(log.take(1).empty());
    log.append(0, bytes_of(sectors(1, 'a')));
    log.append(4096, bytes_of(sectors(2, 'b')));
    log.append(0, bytes_of(sectors(1, 'c')));  // overwrites the first: both kept, in order
    CHECK(log.bytes() == 4 * kDiskSectorSize);
    auto messages = log.take(7);
    CHECK(log.bytes() == 0);
    REQUIRE(messages.size() == 1);
    CHECK(messages[0].seq == 7);
    REQUIRE(messages[0].writes.size() == 3);
    CHECK(messages[0].writes[0] == DiskWrite{0, sectors(1, 'a')});
    CHECK(messages[0].writes[1] == DiskWrite{4096, sectors(2, 'b')});
    CHECK(messages[0].writes[2] == DiskWrite{0, sectors(1, 'c')});
    CHECK(log.take(8).empty());

    // A write longer than a message is cut at sector boundaries; messages fill up to the limit,
    // and every one decodes.
    std::string big(kMaxDiskMessageBytes * 2 + 3 * kDiskSectorSize, 'x');
    for (size_t i = 0; i < big.size(); ++i)
        big[i] = char(i / kDiskSectorSize);
    log.append(1 << 20, bytes_of(sectors(1, 'y')));
    log.append(8 << 20, bytes_of(big));
    messages = log.take(9);
    std::string rebuilt;
    uint64_t expected_offset = 8 << 20;
    for (const auto& message : messages) {
        auto decoded = DiskWrites::decode(message.encode());
        REQUIRE(decoded.ok());
        CHECK(decoded.value() == message);
        for (const auto& write : message.writes) {
            if (write.offset == 1 << 20)
                continue;
            CHECK(write.offset == expected_offset);
            expected_offset += write.bytes.size();
            rebuilt += write.bytes;
        }
    }
    CHECK(rebuilt == big);
    CHECK(messages.size() == 3);

    // More single-sector writes than one message may list.
    for (size_t i = 0; i < kMaxDiskMessageBytes / kDiskSectorSize + 1; ++i)
        log.append(i * kDiskSectorSize, bytes_of(sectors(1, 'z')));
    messages = log.take(10);
    REQUIRE(messages.size() == 2);
    CHECK(messages[1].writes.size() == 1);
    for (const auto& message : messages)
        CHECK(DiskWrites::decode(message.encode()).ok());

    log.append(0, bytes_of(sectors(1, 'q')));
    log.clear();
    CHECK(log.bytes() == 0);
    CHECK(log.take(11).empty());
}

TEST_CASE("journal: a commit moves the image to the checkpoint; nothing to write, nothing done", "[disk]") {
    TempDir dir;
    auto image_path = make_image(dir.path / "disk.img", 1 << 20);
    auto image = FileImage::open(image_path);
    REQUIRE(image.ok());
    auto journal_path = EpochJournal::path_for(image_path);
    CHECK(journal_path == dir.path / "disk.img.colod-journal");
    auto journal = EpochJournal::open(**image, journal_path);
    REQUIRE(journal.ok());
    CHECK_FALSE((*journal)->recovered());
    struct stat st {};
    REQUIRE(::stat(journal_path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    std::vector<DiskWrites> epoch{{5, {{0, sectors(1, 'a')}, {8192, sectors(3, 'b')}}}, {5, {{0, sectors(1, 'c')}}}};
    REQUIRE((*journal)->commit(5, epoch).ok());
    auto content = read_file(image_path);
    CHECK(content.substr(0, 512) == sectors(1, 'c'));  // the later write to the same sector wins
    CHECK(content.substr(8192, 1536) == sectors(3, 'b'));
    CHECK((*journal)->committed_epochs() == 1);
    CHECK((*journal)->committed_bytes() == 5 * kDiskSectorSize);
    CHECK(std::filesystem::file_size(journal_path) > 0);  // the record stays until the next one

    auto journal_before = read_file(journal_path);
    REQUIRE((*journal)->commit(6, {}).ok());
    CHECK(read_file(journal_path) == journal_before);
    CHECK((*journal)->committed_epochs() == 1);

    // An extent outside the disk is refused before anything is written.
    std::vector<DiskWrites> outside{{7, {{0, sectors(1, 'z')}, {(1 << 20) - 512, sectors(2, 'z')}}}};
    auto refused = (*journal)->commit(7, outside);
    REQUIRE_FALSE(refused.ok());
    CHECK_THAT(refused.error().message(), Catch::Contains("outside the disk of 1048576 bytes"));
    CHECK(read_file(image_path) == content);
    CHECK(read_file(journal_path) == journal_before);

    REQUIRE((*journal)->settle().ok());
    CHECK(std::filesystem::file_size(journal_path) == 0);
}

TEST_CASE("journal: after a crash between the journal and the image, opening it finishes the checkpoint", "[disk]") {
    TempDir dir;
    auto image_path = make_image(dir.path / "disk.img", 1 << 20, 'o');
    auto journal_path = EpochJournal::path_for(image_path);
    std::string record;
    {
        auto image = FileImage::open(image_path);
        REQUIRE(image.ok());
        auto journal = EpochJournal::open(**image, journal_path);
        REQUIRE(journal.ok());
        REQUIRE((*journal)->commit(41, std::vector<DiskWrites>{{41, {{512, sectors(2, 'n')}}}}).ok());
        record = read_file(journal_path);
    }
    // The crash: the record is durable, the image never got the writes.
    make_image(image_path, 1 << 20, 'o');
    {
        std::ofstream out(journal_path, std::ios::binary | std::ios::trunc);
        out << record;
    }
    auto image = FileImage::open(image_path);
    REQUIRE(image.ok());
    auto journal = EpochJournal::open(**image, journal_path);
    REQUIRE(journal.ok());
    REQUIRE((*journal)->recovered());
    CHECK(*(*journal)->recovered() == 41);
    auto content = read_file(image_path);
    CHECK(content.substr(0, 512) == sectors(1, 'o'));
    CHECK(content.substr(512, 1024) == sectors(2, 'n'));
    CHECK(content.substr(1536, 512) == sectors(1, 'o'));
    CHECK(std::filesystem::file_size(journal_path) == 0);  // settled

    // Opening again changes nothing (replaying is idempotent; here there is nothing left).
    journal->reset();
    journal = EpochJournal::open(**image, journal_path);
    REQUIRE(journal.ok());
    CHECK_FALSE((*journal)->recovered());
    CHECK(read_file(image_path) == content);
}

TEST_CASE("journal: a torn record (a crash while it was written) is ignored; the image stays where it was", "[disk]") {
    TempDir dir;
    auto image_path = make_image(dir.path / "disk.img", 1 << 20, 'o');
    auto journal_path = EpochJournal::path_for(image_path);
    std::string record;
    {
        auto image = FileImage::open(image_path);
        REQUIRE(image.ok());
        auto journal = EpochJournal::open(**image, journal_path);
        REQUIRE(journal.ok());
        REQUIRE((*journal)->commit(3, std::vector<DiskWrites>{{3, {{0, sectors(4, 'n')}, {65536, sectors(1, 'm')}}}}).ok());
        record = read_file(journal_path);
    }
    const std::string before = std::string(1 << 20, 'o');
    auto torn_cases = std::vector<std::pair<std::string, std::string>>{
        {"cut in the header", record.substr(0, 10)},
        {"cut in the data", record.substr(0, record.size() / 2)},
        {"cut in the trailer", record.substr(0, record.size() - 5)},
        {"a data byte changed", record},
        {"the end magic missing", record},
        {"the header's seq changed", record},
    };
    torn_cases[3].second[EpochJournal::k_header_size + EpochJournal::k_entry_header_size + 7] ^= 1;
    torn_cases[4].second[record.size() - 1] = 'X';
    torn_cases[5].second[16] ^= 1;
    for (const auto& [what, bytes] : torn_cases) {
        INFO(what);
        make_image(image_path, 1 << 20, 'o');
        {
            std::ofstream out(journal_path, std::ios::binary | std::ios::trunc);
            out << bytes;
        }
        auto image = FileImage::open(image_path);
        REQUIRE(image.ok());
        auto journal = EpochJournal::open(**image, journal_path);
        REQUIRE(journal.ok());
        CHECK_FALSE((*journal)->recovered());
        CHECK(read_file(image_path) == before);
        CHECK(std::filesystem::file_size(journal_path) == 0);
    }
}

TEST_CASE("journal: a record for a disk of another size is refused by name, not replayed", "[disk]") {
    TempDir dir;
    auto image_path = make_image(dir.path / "disk.img", 1 << 20);
    auto journal_path = EpochJournal::path_for(image_path);
    {
        auto image = FileImage::open(image_path);
        REQUIRE(image.ok());
        auto journal = EpochJournal::open(**image, journal_path);
        REQUIRE(journal.ok());
        REQUIRE((*journal)->commit(9, std::vector<DiskWrites>{{9, {{0, sectors(1, 'n')}}}}).ok());
    }
    make_image(image_path, 2 << 20);
    auto image = FileImage::open(image_path);
    REQUIRE(image.ok());
    auto journal = EpochJournal::open(**image, journal_path);
    REQUIRE_FALSE(journal.ok());
    CHECK_THAT(journal.error().message(), Catch::Contains("holds checkpoint 9 of a disk of 1048576 bytes"));
    CHECK_THAT(journal.error().message(), Catch::Contains("has 2097152 bytes"));
    CHECK(read_file(image_path) == std::string(2 << 20, '\0'));

    // A journal that cannot be opened says which.
    auto missing = EpochJournal::open(**image, dir.path / "no-such-dir" / "j");
    REQUIRE_FALSE(missing.ok());
    CHECK_THAT(missing.error().message(), Catch::Contains("no-such-dir/j"));
}

TEST_CASE("overlay: the guest's own writes in front of the image, dropped or written into it", "[disk][overlay]") {
    TempDir dir;
    // 3 pages and a half: the last page is short.
    auto image_path = make_image(dir.path / "disk.img", 3 * 4096 + 2048, 'i');
    std::shared_ptr<core::disk::BlockBackend> image = FileImage::open(image_path).value();
    core::disk::Overlay overlay(image);
    CHECK(overlay.size() == image->size());
    std::string buffer(overlay.size(), '?');
    auto span_of = [](std::string& s) { return std::as_writable_bytes(std::span(s.data(), s.size())); };

    // A write covering part of a page: the rest of the page comes from the image.
    REQUIRE(overlay.write(4096 + 512, bytes_of(sectors(2, 'w'))).ok());
    REQUIRE(overlay.write(3 * 4096 + 1024, bytes_of(sectors(2, 'z'))).ok());  // the short last page
    CHECK(overlay.bytes() == 2 * 4096);
    REQUIRE(overlay.read(0, span_of(buffer)).ok());
    std::string expected(overlay.size(), 'i');
    expected.replace(4096 + 512, 1024, sectors(2, 'w'));
    expected.replace(3 * 4096 + 1024, 1024, sectors(2, 'z'));
    CHECK(buffer == expected);
    CHECK(read_file(image_path) == std::string(overlay.size(), 'i'));  // the image untouched
    REQUIRE(overlay.flush().ok());
    CHECK(read_file(image_path) == std::string(overlay.size(), 'i'));

    // A checkpoint loaded: the writes are gone.
    overlay.clear();
    CHECK(overlay.bytes() == 0);
    REQUIRE(overlay.read(0, span_of(buffer)).ok());
    CHECK(buffer == std::string(overlay.size(), 'i'));

    // A takeover: what is held goes into the image, and later writes straight there.
    REQUIRE(overlay.write(0, bytes_of(sectors(1, 'a'))).ok());
    REQUIRE(overlay.write(3 * 4096 + 1536, bytes_of(sectors(1, 'b'))).ok());
    REQUIRE(overlay.commit().ok());
    CHECK(overlay.passing_through());
    CHECK(overlay.bytes() == 0);
    expected = std::string(overlay.size(), 'i');
    expected.replace(0, 512, sectors(1, 'a'));
    expected.replace(3 * 4096 + 1536, 512, sectors(1, 'b'));
    CHECK(read_file(image_path) == expected);
    CHECK(std::filesystem::file_size(image_path) == 3 * 4096 + 2048);
    REQUIRE(overlay.write(8192, bytes_of(sectors(1, 'c'))).ok());
    expected.replace(8192, 512, sectors(1, 'c'));
    CHECK(read_file(image_path) == expected);
}
