// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/acpi/aml.h"

#include <cstdlib>
#include <string>

#include "base/log.h"

namespace colod::core::acpi {

namespace {

// AML opcodes (ACPI 6.x, 20.3).
constexpr uint8_t k_zero_op = 0x00;
constexpr uint8_t k_one_op = 0x01;
constexpr uint8_t k_name_op = 0x08;
constexpr uint8_t k_byte_prefix = 0x0a;
constexpr uint8_t k_word_prefix = 0x0b;
constexpr uint8_t k_dword_prefix = 0x0c;
constexpr uint8_t k_string_prefix = 0x0d;
constexpr uint8_t k_qword_prefix = 0x0e;
constexpr uint8_t k_scope_op = 0x10;
constexpr uint8_t k_buffer_op = 0x11;
constexpr uint8_t k_package_op = 0x12;
constexpr uint8_t k_ext_op_prefix = 0x5b;
constexpr uint8_t k_device_op = 0x82;  // after ExtOpPrefix
constexpr uint8_t k_null_name = 0x00;
constexpr uint8_t k_dual_name_prefix = 0x2e;
constexpr uint8_t k_multi_name_prefix = 0x2f;
constexpr uint8_t k_root_char = '\\';
constexpr uint8_t k_parent_prefix_char = '^';

// The encoder's inputs come from colod itself; one it cannot encode is a bug in the caller.
[[noreturn]] void bug(std::string message) {
    base::log(base::Level::Error, base::Event::None, "AML encoder: " + message);
    std::abort();
}

void put(Bytes& out, uint8_t byte) { out.push_back(std::byte{byte}); }

// Little-endian, as every multi-byte AML and resource-descriptor field is.
void put_le(Bytes& out, uint64_t value, unsigned bytes) {
    for (unsigned i = 0; i < bytes; ++i)
        put(out, static_cast<uint8_t>(value >> (8 * i)));
}

void append(Bytes& out, const Bytes& more) { out.insert(out.end(), more.begin(), more.end()); }

bool is_lead_char(char c) { return (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_lead_char(c) || (c >= '0' && c <= '9'); }

void put_name_seg(Bytes& out, std::string_view seg, std::string_view path) {
    if (seg.empty() || seg.size() > 4 || !is_lead_char(seg[0]))
        bug(fmt::format("malformed name segment '{}' in '{}'", seg, path));
    for (char c : seg) {
        if (!is_name_char(c))
            bug(fmt::format("character '{}' in name '{}'", c, path));
        put(out, static_cast<uint8_t>(c));
    }
    for (size_t i = seg.size(); i < 4; ++i)
        put(out, '_');
}

// Name(_HID, ...) and the like: a term that is an opcode, a PkgLength, a name and a body.
Bytes named_package(std::initializer_list<uint8_t> opcode, std::string_view path, const std::vector<Bytes>& terms) {
    Bytes body = name_string(path);
    for (const auto& term : terms)
        append(body, term);
    Bytes out;
    for (uint8_t op : opcode)
        put(out, op);
    append(out, with_pkg_length(body));
    return out;
}

}  // namespace

Bytes pkg_length(uint32_t length) {
    Bytes out;
    if (length <= 0x3f) {
        put(out, static_cast<uint8_t>(length));
        return out;
    }
    if (length > k_max_pkg_length)
        bug(fmt::format("PkgLength {:#x} exceeds {:#x}", length, k_max_pkg_length));
    // Bytes after the lead byte: the lead byte carries 4 bits, each following byte 8.
    const unsigned follow = length <= 0xfff ? 1 : length <= 0xf'ffff ? 2 : 3;
    put(out, static_cast<uint8_t>((follow << 6) | (length & 0x0f)));
    put_le(out, length >> 4, follow);
    return out;
}

Bytes with_pkg_length(const Bytes& body) {
    // The PkgLength counts its own bytes, so its size depends on itself: try each size in turn.
    for (uint32_t size = 1; size <= 4; ++size) {
        const uint64_t total = body.size() + size;
        if (total > k_max_pkg_length)
            break;
        Bytes encoded = pkg_length(static_cast<uint32_t>(total));
        if (encoded.size() == size) {
            append(encoded, body);
            return encoded;
        }
    }
    bug(fmt::format("a package body of {} bytes does not fit a PkgLength", body.size()));
}

Bytes name_string(std::string_view path) {
    Bytes out;
    std::string_view rest = path;
    if (!rest.empty() && rest.front() == k_root_char) {
        put(out, k_root_char);
        rest.remove_prefix(1);
    } else {
        while (!rest.empty() && rest.front() == k_parent_prefix_char) {
            put(out, k_parent_prefix_char);
            rest.remove_prefix(1);
        }
    }
    std::vector<std::string_view> segs;
    while (!rest.empty()) {
        const size_t dot = rest.find('.');
        segs.push_back(rest.substr(0, dot));
        rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
        if (dot != std::string_view::npos && rest.empty())
            bug(fmt::format("name '{}' ends with a dot", path));
    }
    if (segs.empty()) {
        if (out.empty() || out.front() != std::byte{k_root_char})
            bug(fmt::format("empty name '{}'", path));
        put(out, k_null_name);  // "\" alone: the root
        return out;
    }
    if (segs.size() == 2)
        put(out, k_dual_name_prefix);
    else if (segs.size() > 2) {
        if (segs.size() > 255)
            bug(fmt::format("name '{}' has more than 255 segments", path));
        put(out, k_multi_name_prefix);
        put(out, static_cast<uint8_t>(segs.size()));
    }
    for (auto seg : segs)
        put_name_seg(out, seg, path);
    return out;
}

Bytes integer(uint64_t value) {
    Bytes out;
    if (value == 0)
        put(out, k_zero_op);
    else if (value == 1)
        put(out, k_one_op);
    else if (value <= 0xff) {
        put(out, k_byte_prefix);
        put_le(out, value, 1);
    } else if (value <= 0xffff) {
        put(out, k_word_prefix);
        put_le(out, value, 2);
    } else if (value <= 0xffff'ffff) {
        put(out, k_dword_prefix);
        put_le(out, value, 4);
    } else {
        put(out, k_qword_prefix);
        put_le(out, value, 8);
    }
    return out;
}

Bytes string(std::string_view text) {
    Bytes out;
    put(out, k_string_prefix);
    for (char c : text) {
        // AML strings are ASCII without NUL (0x01-0x7f); we only ever need the printable part.
        if (c < 0x20 || c > 0x7e)
            bug(fmt::format("non-printable character {:#x} in an AML string", static_cast<unsigned char>(c)));
        put(out, static_cast<uint8_t>(c));
    }
    put(out, 0);
    return out;
}

Bytes eisa_id(std::string_view id) {
    // Three upper-case letters in 5 bits each ('A' = 1), then four hex digits; stored so that
    // the bytes in memory read in the order of the text (ACPI 6.x, 6.1.5).
    if (id.size() != 7)
        bug(fmt::format("EISA ID '{}' is not 7 characters", id));
    uint32_t value = 0;
    for (size_t i = 0; i < 3; ++i) {
        if (id[i] < 'A' || id[i] > 'Z')
            bug(fmt::format("EISA ID '{}' does not begin with three letters", id));
        value = (value << 5) | static_cast<uint32_t>(id[i] - 'A' + 1);
    }
    for (size_t i = 3; i < 7; ++i) {
        const char c = id[i];
        uint32_t digit = 0;
        if (c >= '0' && c <= '9')
            digit = static_cast<uint32_t>(c - '0');
        else if (c >= 'A' && c <= 'F')
            digit = static_cast<uint32_t>(c - 'A' + 10);
        else
            bug(fmt::format("EISA ID '{}' does not end with four hex digits", id));
        value = (value << 4) | digit;
    }
    // `value` is now the big-endian reading (bit 31 reserved 0); AML stores it little-endian
    // in memory, so swap the bytes to keep the text order.
    const uint32_t swapped = ((value & 0xff) << 24) | ((value & 0xff00) << 8) | ((value >> 8) & 0xff00) | (value >> 24);
    return integer(swapped);
}

Bytes name(std::string_view path, const Bytes& object) {
    Bytes out;
    put(out, k_name_op);
    append(out, name_string(path));
    append(out, object);
    return out;
}

Bytes scope(std::string_view path, const std::vector<Bytes>& terms) { return named_package({k_scope_op}, path, terms); }

Bytes device(std::string_view path, const std::vector<Bytes>& terms) {
    return named_package({k_ext_op_prefix, k_device_op}, path, terms);
}

Bytes package(const std::vector<Bytes>& elements) {
    if (elements.size() > 255)
        bug(fmt::format("a Package of {} elements (NumElements is one byte)", elements.size()));
    Bytes body;
    put(body, static_cast<uint8_t>(elements.size()));
    for (const auto& element : elements)
        append(body, element);
    Bytes out;
    put(out, k_package_op);
    append(out, with_pkg_length(body));
    return out;
}

Bytes buffer(const Bytes& data) {
    Bytes body = integer(data.size());
    append(body, data);
    Bytes out;
    put(out, k_buffer_op);
    append(out, with_pkg_length(body));
    return out;
}

ResourceTemplate& ResourceTemplate::memory32_fixed(MemoryAccess access, uint32_t base, uint32_t size) {
    put(m_descriptors, k_tag_memory32_fixed);
    put_le(m_descriptors, 9, 2);  // length of what follows the 3-byte large-item header
    put(m_descriptors, access == MemoryAccess::ReadWrite ? 1 : 0);
    put_le(m_descriptors, base, 4);
    put_le(m_descriptors, size, 4);
    return *this;
}

ResourceTemplate& ResourceTemplate::interrupt(Trigger trigger, Polarity polarity, Sharing sharing, uint32_t gsi) {
    // Flags: bit 0 consumer, bit 1 edge (else level), bit 2 active low (else high), bit 3 shared.
    uint8_t flags = 0x01;
    if (trigger == Trigger::Edge)
        flags |= 0x02;
    if (polarity == Polarity::ActiveLow)
        flags |= 0x04;
    if (sharing == Sharing::Shared)
        flags |= 0x08;
    put(m_descriptors, k_tag_interrupt);
    put_le(m_descriptors, 6, 2);  // flags, table length, one 32-bit interrupt number
    put(m_descriptors, flags);
    put(m_descriptors, 1);
    put_le(m_descriptors, gsi, 4);
    return *this;
}

ResourceTemplate& ResourceTemplate::io(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length) {
    put(m_descriptors, k_tag_io);
    put(m_descriptors, 1);  // decodes 16 address bits
    put_le(m_descriptors, min, 2);
    put_le(m_descriptors, max, 2);
    put(m_descriptors, alignment);
    put(m_descriptors, length);
    return *this;
}

Bytes ResourceTemplate::to_buffer() const {
    Bytes data = m_descriptors;
    put(data, k_tag_end);
    put(data, 0);
    return buffer(data);
}

}  // namespace colod::core::acpi
