// SPDX-License-Identifier: GPL-2.0-or-later
// A small AML (ACPI Machine Language) encoder: just what colod's DSDT needs. Each function
// returns the encoding of one AML term as bytes, and terms nest by passing bytes in, so
//
//     device("VR00", {name("_HID", string("LNRO0005")), name("_UID", integer(0))})
//
// reads like the ASL it stands for. The inputs come from colod's own code (names, and values
// that build_tables() has checked), so a malformed one is a bug: the encoder aborts with a
// message rather than emit AML that a guest would misread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace colod::core::acpi {

using Bytes = std::vector<std::byte>;

// The largest value a PkgLength can hold (28 bits, in 4 bytes).
inline constexpr uint32_t k_max_pkg_length = 0x0fff'ffff;

// The PkgLength encoding of `length` (ACPI 6.x, 20.2.4): 1 byte up to 63, else a lead byte with
// the count of following bytes in bits 6-7 and the low nibble of the value in bits 0-3, then
// the rest 8 bits at a time (2 bytes up to 0xfff, 3 up to 0xfffff, 4 up to 0xfffffff).
Bytes pkg_length(uint32_t length);

// `body` preceded by the PkgLength that covers itself and `body`, as every package-like term
// (Scope, Device, Package, Buffer) needs.
Bytes with_pkg_length(const Bytes& body);

// A NameString: an optional root prefix `\` or parent prefixes `^`, then NameSegs separated by
// dots ("\_SB_.VR00", "_S5_", "^COM1"). A NameSeg shorter than 4 characters is padded with '_'
// ("_SB" is "_SB_"); it begins with A-Z or '_' and continues with A-Z, 0-9 or '_'.
Bytes name_string(std::string_view path);

// An integer in its shortest encoding: ZeroOp, OneOp, or BytePrefix/WordPrefix/DWordPrefix/
// QWordPrefix and the little-endian value.
Bytes integer(uint64_t value);

// A String object: printable ASCII, NUL-terminated.
Bytes string(std::string_view text);

// The 32-bit compressed EISA ID of a 7-character PNP ID ("PNP0501"), as ASL's EISAID() makes
// it, as an integer term.
Bytes eisa_id(std::string_view id);

// Name(path, object).
Bytes name(std::string_view path, const Bytes& object);

// Scope(path) { terms }.
Bytes scope(std::string_view path, const std::vector<Bytes>& terms);

// Device(path) { terms }.
Bytes device(std::string_view path, const std::vector<Bytes>& terms);

// Package() { elements } with NumElements = elements.size() (at most 255).
Bytes package(const std::vector<Bytes>& elements);

// Buffer() { data } with BufferSize = data.size().
Bytes buffer(const Bytes& data);

// Arguments of resource descriptors; enums rather than bools so a call site says what it means.
enum class MemoryAccess { ReadOnly, ReadWrite };
enum class Trigger { Level, Edge };
enum class Polarity { ActiveHigh, ActiveLow };
enum class Sharing { Exclusive, Shared };

// ResourceTemplate() { descriptors }: the descriptors are appended in call order and to_buffer()
// closes them with an end tag and wraps them in a Buffer object (what _CRS returns).
class ResourceTemplate {
public:
    // Memory32Fixed(access, base, size).
    ResourceTemplate& memory32_fixed(MemoryAccess access, uint32_t base, uint32_t size);
    // Interrupt(ResourceConsumer, trigger, polarity, sharing) { gsi }: the extended interrupt
    // descriptor, which names a GSI directly (the small IRQ descriptor only reaches 0-15).
    ResourceTemplate& interrupt(Trigger trigger, Polarity polarity, Sharing sharing, uint32_t gsi);
    // IO(Decode16, min, max, alignment, length).
    ResourceTemplate& io(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length);

    // The descriptors and an end tag whose checksum byte is 0 ("treat as valid"), as a Buffer.
    Bytes to_buffer() const;

private:
    Bytes m_descriptors;
};

// Resource descriptor tags and sizes (ACPI 6.x, 6.4), for the encoder and its tests.
inline constexpr uint8_t k_tag_io = 0x47;              // small item 0x08, 7 bytes follow
inline constexpr uint8_t k_tag_end = 0x79;             // small item 0x0f, 1 byte follows
inline constexpr uint8_t k_tag_memory32_fixed = 0x86;  // large item 0x06
inline constexpr uint8_t k_tag_interrupt = 0x89;       // large item 0x09

}  // namespace colod::core::acpi
