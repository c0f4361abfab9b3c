// SPDX-License-Identifier: GPL-2.0-or-later
#include "config/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>

#include <boost/program_options.hpp>

#include "base/bzimage.h"
#include "base/fd.h"

namespace colod::config {

namespace po = boost::program_options;

namespace {

// ---- The schema: every key the file may hold. --------------------------------------------

enum class Presence {
    Required,   // no default: the file must set it
    Defaulted,  // default_value below
    Derived,    // the default depends on other keys (vm.name, the control sockets)
    Optional,   // no default; absent means "not used" (vm.image or vm.kernel: one of the two)
};

struct KeySpec {
    std::string_view section;
    std::string_view key;
    Presence presence;
    std::string_view default_value;
};

constexpr std::array<std::string_view, 4> k_sections{"vm", "replication", "primary", "secondary"};

constexpr std::array<KeySpec, 31> k_keys{{
    {"vm", "name", Presence::Derived, ""},
    {"vm", "memory", Presence::Required, ""},
    {"vm", "vcpus", Presence::Defaulted, "1"},
    {"vm", "image", Presence::Optional, ""},
    {"vm", "kernel", Presence::Optional, ""},
    {"vm", "initrd", Presence::Optional, ""},
    {"vm", "cmdline", Presence::Defaulted, ""},
    {"vm", "console-clients", Presence::Defaulted, "16"},
    {"vm", "accelerator", Presence::Defaulted, "auto"},
    {"vm", "net-tap", Presence::Optional, ""},
    {"vm", "mac", Presence::Optional, ""},
    {"vm", "disk", Presence::Optional, ""},
    {"replication", "mode", Presence::Defaulted, "checkpoint"},
    {"replication", "checkpoint-interval", Presence::Defaulted, "100ms"},
    {"replication", "heartbeat-interval", Presence::Defaulted, "50ms"},
    {"replication", "heartbeat-timeout", Presence::Defaulted, "300ms"},
    {"replication", "fence-command", Presence::Defaulted, ""},
    {"replication", "auth-key-file", Presence::Required, ""},
    {"replication", "auth-key-file-next", Presence::Optional, ""},
    {"replication", "max-held-output", Presence::Defaulted, "1M"},
    {"replication", "connect-retry", Presence::Defaulted, "1s"},
    {"replication", "link-security", Presence::Defaulted, "encrypted"},
    // Replaced by link-security: known only so that a file setting it hears what to write now.
    {"replication", "frame-auth", Presence::Optional, ""},
    {"primary", "replication", Presence::Required, ""},
    {"primary", "console", Presence::Required, ""},
    {"primary", "control", Presence::Derived, ""},
    {"primary", "metrics", Presence::Optional, ""},
    {"secondary", "replication", Presence::Required, ""},
    {"secondary", "console", Presence::Required, ""},
    {"secondary", "control", Presence::Derived, ""},
    {"secondary", "metrics", Presence::Optional, ""},
}};

std::string full_key(std::string_view section, std::string_view key) { return fmt::format("{}.{}", section, key); }

// Beyond this many problems the file is probably not a config file at all.
constexpr size_t k_max_problems = 50;
constexpr size_t k_max_file_size = 1 << 20;
// A Linux command line: COMMAND_LINE_SIZE on x86 is 2048 bytes with the NUL.
constexpr size_t k_max_kernel_cmdline = 2047;

// ---- Problems, each one line. ----------------------------------------------------------------

enum class Origin { File, Default, Derived };

// One key's value and where it came from.
struct Setting {
    std::string value;
    int line = 0;  // 0 when not from the file
    Origin origin = Origin::File;
};

class Problems {
public:
    explicit Problems(std::string file) : m_file(std::move(file)) {}

    // "FILE:LINE: WHAT: RULE" (no ":LINE" when line is 0).
    void add(int line, std::string_view what, std::string_view rule) {
        const std::string where = line > 0 ? fmt::format("{}:{}", m_file, line) : m_file;
        m_problems.push_back({line, fmt::format("{}: {}: {}", where, what, rule)});
    }

    // "FILE:LINE: KEY = VALUE: RULE", saying where a value not in the file came from.
    void add(std::string_view key, const Setting& setting, std::string_view rule) {
        std::string what = fmt::format("{} = {}", key, setting.value.empty() ? "\"\"" : setting.value);
        if (setting.origin == Origin::Default)
            what += " (default)";
        else if (setting.origin == Origin::Derived)
            what += " (derived)";
        add(setting.line, what, rule);
    }

    bool empty() const { return m_problems.empty(); }

    // All problems in file order (problems without a line last), one per line.
    std::string text() {
        std::stable_sort(m_problems.begin(), m_problems.end(), [](const auto& a, const auto& b) {
            return (a.line > 0 ? a.line : INT_MAX) < (b.line > 0 ? b.line : INT_MAX);
        });
        std::string out;
        for (size_t i = 0; i < m_problems.size() && i < k_max_problems; ++i) {
            if (i > 0)
                out += '\n';
            out += m_problems[i].message;
        }
        if (m_problems.size() > k_max_problems)
            out += fmt::format("\n{}: {} more problems not shown", m_file, m_problems.size() - k_max_problems);
        return out;
    }

private:
    struct Problem {
        int line;
        std::string message;
    };
    std::string m_file;
    std::vector<Problem> m_problems;
};

// ---- Lines. ----------------------------------------------------------------------------------

std::string_view trim(std::string_view text) {
    constexpr std::string_view blanks = " \t\r";
    const size_t first = text.find_first_not_of(blanks);
    if (first == std::string_view::npos)
        return {};
    const size_t last = text.find_last_not_of(blanks);
    return text.substr(first, last - first + 1);
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

bool is_known_section(std::string_view section) {
    return std::find(k_sections.begin(), k_sections.end(), section) != k_sections.end();
}

const KeySpec* find_key(std::string_view section, std::string_view key) {
    for (const auto& spec : k_keys) {
        if (spec.section == section && spec.key == key)
            return &spec;
    }
    return nullptr;
}

// Why `key` is not a key of `section`, with the likeliest intended key.
std::string unknown_key_rule(std::string_view section, std::string_view key) {
    for (const auto& spec : k_keys) {
        if (spec.key == key && spec.section != section)
            return fmt::format("unknown key ({} belongs in [{}])", key, spec.section);
    }
    const KeySpec* nearest = nullptr;
    size_t nearest_distance = 3;  // suggest only what a typo could explain
    std::vector<std::string_view> known;
    for (const auto& spec : k_keys) {
        if (spec.section != section)
            continue;
        known.push_back(spec.key);
        const size_t distance = edit_distance(key, spec.key);
        if (distance < nearest_distance) {
            nearest = &spec;
            nearest_distance = distance;
        }
    }
    if (nearest)
        return fmt::format("unknown key (did you mean {}.{}?)", section, nearest->key);
    return fmt::format("unknown key (known in [{}]: {})", section, fmt::join(known, ", "));
}

struct Scanned {
    std::map<std::string, int> lines;  // full key -> the line that set it
    std::string normalized;            // what Boost reads: known keys, once, no comments
};

// Splits the text into sections and keys, line by line; Boost.Program_options then reads only
// the lines this pass accepted. The pass exists because Boost's reader does not say on which
// line a key was, stops at the first problem instead of reporting them all, and treats '#'
// inside a line differently across versions (1.74 cuts the value there). Here '#' always
// starts a comment, wherever it is, and Boost never sees one.
Scanned scan(std::string_view text, Problems& problems) {
    Scanned scanned;
    std::map<std::string, std::map<std::string, std::string>> sections;  // section -> key -> value
    std::string section;
    bool section_known = false;
    int line_number = 0;
    while (!text.empty()) {
        ++line_number;
        const size_t end = text.find('\n');
        const std::string_view raw = text.substr(0, end);
        text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);

        const std::string_view line = trim(raw.substr(0, raw.find('#')));
        if (line.empty())
            continue;
        if (line.front() == '[') {
            if (line.back() != ']' || line.size() < 3) {
                problems.add(line_number, fmt::format("\"{}\"", line), "not a valid [section] header");
                section_known = false;
                section.clear();
                continue;
            }
            section = trim(line.substr(1, line.size() - 2));
            section_known = is_known_section(section);
            if (!section_known)
                problems.add(line_number, fmt::format("[{}]", section),
                             fmt::format("unknown section (known: {})", fmt::join(k_sections, ", ")));
            continue;
        }
        const size_t equals = line.find('=');
        if (equals == std::string_view::npos || trim(line.substr(0, equals)).empty()) {
            problems.add(line_number, fmt::format("\"{}\"", line),
                         "expected \"key = value\", a [section] header or a # comment");
            continue;
        }
        const std::string key(trim(line.substr(0, equals)));
        const std::string value(trim(line.substr(equals + 1)));
        if (section.empty()) {
            problems.add(line_number, fmt::format("{} = {}", key, value.empty() ? "\"\"" : value),
                         "key outside of any section");
            continue;
        }
        if (!section_known)
            continue;  // the unknown section was reported; its keys would only add noise
        const std::string name = full_key(section, key);
        const std::string shown = fmt::format("{} = {}", name, value.empty() ? "\"\"" : value);
        if (!find_key(section, key)) {
            problems.add(line_number, shown, unknown_key_rule(section, key));
            continue;
        }
        if (auto it = scanned.lines.find(name); it != scanned.lines.end()) {
            problems.add(line_number, shown, fmt::format("duplicate key (first set on line {})", it->second));
            continue;
        }
        scanned.lines.emplace(name, line_number);
        sections[section][key] = value;
    }
    for (const auto& [name, keys] : sections) {
        scanned.normalized += fmt::format("[{}]\n", name);
        for (const auto& [key, value] : keys)
            scanned.normalized += fmt::format("{} = {}\n", key, value);
    }
    return scanned;
}

// Reads the scanned text with Boost.Program_options against the schema; defaults come from
// the schema. Keys the file does not set and that have no static default are absent.
base::Result<std::map<std::string, Setting>> read_settings(const Scanned& scanned) {
    po::options_description description;
    std::vector<std::string> names;  // add_options keeps pointers to these
    names.reserve(k_keys.size());
    for (const auto& spec : k_keys) {
        names.push_back(full_key(spec.section, spec.key));
        auto* semantic = po::value<std::string>();
        if (spec.presence == Presence::Defaulted)
            semantic->default_value(std::string(spec.default_value));
        description.add_options()(names.back().c_str(), semantic);
    }
    po::variables_map variables;
    try {
        std::istringstream in(scanned.normalized);
        po::store(po::parse_config_file(in, description, false), variables);
        po::notify(variables);
    } catch (const std::exception& error) {
        // The scanner hands Boost only lines it accepts, so this is a bug, not a bad file.
        return base::Error(base::Errc::Invalid, fmt::format("reading the config: {}", error.what()));
    }
    std::map<std::string, Setting> settings;
    for (const auto& name : names) {
        if (!variables.count(name))
            continue;
        const auto& variable = variables[name];
        Setting setting{variable.as<std::string>(), 0, Origin::Default};
        if (!variable.defaulted()) {
            setting.origin = Origin::File;
            if (auto it = scanned.lines.find(name); it != scanned.lines.end())
                setting.line = it->second;
        }
        settings.emplace(name, std::move(setting));
    }
    return settings;
}

// ---- Values. ---------------------------------------------------------------------------------

std::optional<uint64_t> parse_count(std::string_view text, uint64_t min, uint64_t max) {
    if (text.empty() || text.size() > 12)
        return std::nullopt;
    uint64_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9')
            return std::nullopt;
        value = value * 10 + static_cast<uint64_t>(c - '0');
    }
    if (value < min || value > max)
        return std::nullopt;
    return value;
}

bool is_valid_name(std::string_view name) {
    if (name.empty() || name.size() > 64)
        return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
               c == '.' || c == '-';
    });
}

constexpr std::string_view k_builtin_prefix = "builtin:";

// Two listening endpoints collide on one host when they share a port and an address, where a
// wildcard address shares every address.
bool overlaps(const Endpoint& a, const Endpoint& b) {
    return a.port == b.port && (a.host == b.host || a.is_wildcard() || b.is_wildcard());
}

class Validator {
public:
    Validator(std::map<std::string, Setting> settings, Problems& problems, std::filesystem::path base_dir,
              const std::vector<std::string>& builtin_images)
        : m_settings(std::move(settings)), m_problems(problems), m_base_dir(std::move(base_dir)),
          m_builtin_images(builtin_images) {}

    // Fills `config`; every problem goes to the Problems list.
    void run(std::string_view file_stem, PairConfig& config) {
        vm(file_stem, config.vm);
        replication(config.replication);
        host(Role::Primary, config.vm.name, config.primary);
        host(Role::Secondary, config.vm.name, config.secondary);
        relations(config);
    }

private:
    // The setting of a key, or nullptr (after reporting a missing required key).
    const Setting* setting(std::string_view section, std::string_view key) {
        const std::string name = full_key(section, key);
        if (auto it = m_settings.find(name); it != m_settings.end())
            return &it->second;
        if (find_key(section, key)->presence == Presence::Required)
            m_problems.add(0, name, "required key is missing");
        return nullptr;
    }

    void fail(std::string_view section, std::string_view key, std::string_view rule) {
        const std::string name = full_key(section, key);
        m_failed.push_back(name);
        m_problems.add(name, m_settings.at(name), rule);
    }

    bool failed(std::string_view section, std::string_view key) const {
        return std::find(m_failed.begin(), m_failed.end(), full_key(section, key)) != m_failed.end();
    }

    template <typename T>
    std::optional<T> value_of(std::string_view section, std::string_view key, base::Result<T> result) {
        if (result.ok())
            return std::move(result).value();
        fail(section, key, result.error().message());
        return std::nullopt;
    }

    std::filesystem::path resolve(std::string_view text) const {
        const std::filesystem::path path(text);
        return (path.is_absolute() ? path : m_base_dir / path).lexically_normal();
    }

    void vm(std::string_view file_stem, VmConfig& vm) {
        if (!m_settings.count("vm.name")) {
            if (file_stem.empty())
                m_problems.add(0, "vm.name", "required key is missing (the file name gives no default)");
            else
                m_settings["vm.name"] = Setting{std::string(file_stem), 0, Origin::Derived};
        }
        if (const Setting* name = setting("vm", "name")) {
            if (is_valid_name(name->value))
                vm.name = name->value;
            else
                fail("vm", "name", "must be 1 to 64 characters from A-Z a-z 0-9 _ . -");
        }

        if (const Setting* memory = setting("vm", "memory")) {
            if (auto bytes = value_of("vm", "memory", parse_size(memory->value))) {
                if (*bytes < (uint64_t{16} << 20) || *bytes > (uint64_t{1} << 40))
                    fail("vm", "memory", "must be between 16M and 1T");
                else if (*bytes % 4096 != 0)
                    fail("vm", "memory", "must be a multiple of 4K");
                else
                    vm.memory_bytes = *bytes;
            }
        }

        if (const Setting* vcpus = setting("vm", "vcpus")) {
            if (auto count = parse_count(vcpus->value, 1, 64))
                vm.vcpus = static_cast<uint32_t>(*count);
            else
                fail("vm", "vcpus", "must be a whole number between 1 and 64");
        }

        const Setting* image = setting("vm", "image");
        const Setting* kernel = setting("vm", "kernel");
        const Setting* initrd = setting("vm", "initrd");
        if (image && kernel) {
            fail("vm", "kernel", "set either image (an ELF64 guest) or kernel (a Linux bzImage), not both");
        } else if (!image && !kernel) {
            m_problems.add(0, "vm.image", "required key is missing (or set vm.kernel for a Linux guest)");
        } else if (image) {
            this->image(image->value, vm.image);
            if (initrd)
                fail("vm", "initrd", "is for Linux guests: it needs vm.kernel, not vm.image");
        } else {
            linux_kernel(kernel->value, initrd, vm);
        }

        if (const Setting* cmdline = setting("vm", "cmdline")) {
            const bool has_control = std::any_of(cmdline->value.begin(), cmdline->value.end(), [](char c) {
                return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
            });
            const size_t max = kernel ? k_max_kernel_cmdline : 255;
            if (cmdline->value.size() > max)
                fail("vm", "cmdline", fmt::format("must be at most {} bytes", max));
            else if (has_control)
                fail("vm", "cmdline", "must not contain control characters");
            else
                vm.cmdline = cmdline->value;
        }

        if (const Setting* clients = setting("vm", "console-clients")) {
            if (auto count = parse_count(clients->value, 1, 1024))
                vm.console_clients = static_cast<uint32_t>(*count);
            else
                fail("vm", "console-clients", "must be a whole number between 1 and 1024");
        }

        if (const Setting* accelerator = setting("vm", "accelerator")) {
            if (accelerator->value == "auto" || accelerator->value == "kvm" || accelerator->value == "soft")
                vm.accelerator = accelerator->value;
            else
                fail("vm", "accelerator", "must be auto, kvm or soft");
            if (accelerator->value == "soft" && kernel)
                fail("vm", "accelerator",
                     "Linux guests need KVM: the software backend runs only colod's own guests (set kvm or auto)");
        }

        network(setting("vm", "net-tap"), setting("vm", "mac"), kernel != nullptr, vm);

        // vm.disk: the path of a raw image, for a Linux guest only. Whether it is a usable
        // image (there, a regular file, writable, a whole number of sectors) is checked when
        // the daemon opens it at start-up, on the host that uses it.
        if (const Setting* disk = setting("vm", "disk")) {
            if (disk->value.empty())
                fail("vm", "disk", "must be the path of a raw disk image (or leave the key out)");
            else if (!kernel)
                fail("vm", "disk", "is for Linux guests: it needs vm.kernel (the embedded guest has no disk)");
            else
                vm.disk = resolve(disk->value);
        }
    }

    // vm.net-tap: a network interface name as Linux accepts one (1 to 15 bytes, not "." or
    // "..", no '/', ':' or white space), for a Linux guest only (the embedded guest has no
    // network device). vm.mac: the guest's one MAC address, the same in both hosts' files,
    // required with net-tap and of no use without it; a unicast address, not all zeros.
    void network(const Setting* tap, const Setting* mac, bool is_linux, VmConfig& vm) {
        if (tap) {
            const std::string& name = tap->value;
            const bool bad_char = std::any_of(name.begin(), name.end(), [](char c) {
                return c == '/' || c == ':' || std::isspace(static_cast<unsigned char>(c)) ||
                       static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
            });
            if (name.empty() || name.size() > 15 || name == "." || name == ".." || bad_char)
                fail("vm", "net-tap", "must be a network interface name: 1 to 15 bytes, no '/', ':' or white space");
            else if (!is_linux)
                fail("vm", "net-tap", "is for Linux guests: it needs vm.kernel (the embedded guest has no network)");
            else
                vm.net_tap = name;
            if (!mac)
                m_problems.add(tap->line, "vm.mac",
                               "required with vm.net-tap: the guest's MAC address, the same on both hosts "
                               "(e.g. 52:54:00:12:34:56)");
        }
        if (mac) {
            auto parsed = parse_mac(mac->value);
            if (!parsed)
                fail("vm", "mac", parsed.error().message());
            else if (!tap)
                fail("vm", "mac", "has no use without vm.net-tap");
            else
                vm.mac = *parsed;
        }
    }

    // A regular file at `text` (resolved): its absolute path, or nullopt after reporting why not.
    std::optional<std::filesystem::path> regular_file(std::string_view key, const std::string& text) {
        const std::filesystem::path file = resolve(text);
        const std::string resolved = file.string() == text ? std::string() : fmt::format(" ({})", file.string());
        std::error_code error;
        const auto status = std::filesystem::status(file, error);
        if (status.type() == std::filesystem::file_type::not_found) {
            fail("vm", key, fmt::format("no such file{}", resolved));
            return std::nullopt;
        }
        if (error) {
            fail("vm", key, fmt::format("cannot be examined{}: {}", resolved, error.message()));
            return std::nullopt;
        }
        if (status.type() != std::filesystem::file_type::regular) {
            fail("vm", key, fmt::format("not a regular file{}", resolved));
            return std::nullopt;
        }
        return file;
    }

    // vm.kernel must be a Linux bzImage colod can boot through the 64-bit boot protocol, in
    // the guest's memory; vm.initrd, when set, a non-empty regular file.
    void linux_kernel(const std::string& text, const Setting* initrd, VmConfig& vm) {
        if (text.empty()) {
            fail("vm", "kernel", "must be the path of a Linux bzImage");
            return;
        }
        if (text.starts_with(k_builtin_prefix)) {
            fail("vm", "kernel", "must be the path of a Linux bzImage (builtin: images go in vm.image)");
            return;
        }
        auto file = regular_file("kernel", text);
        if (!file)
            return;
        base::Fd fd(::open(file->c_str(), O_RDONLY | O_CLOEXEC));
        struct stat info {};
        if (!fd || ::fstat(fd.get(), &info) != 0) {
            fail("vm", "kernel", fmt::format("cannot be read ({}): {}", file->string(), std::strerror(errno)));
            return;
        }
        std::vector<std::byte> head(4096);
        ssize_t n = ::pread(fd.get(), head.data(), head.size(), 0);
        if (n < 0) {
            fail("vm", "kernel", fmt::format("cannot be read ({}): {}", file->string(), std::strerror(errno)));
            return;
        }
        head.resize(static_cast<size_t>(n));
        auto bz = base::BzImage::parse(head, static_cast<uint64_t>(info.st_size));
        if (!bz) {
            fail("vm", "kernel", fmt::format("{} is not a kernel colod can boot: {}", file->string(), bz.error().message()));
            return;
        }
        vm.kernel = *file;
        if (initrd) {
            if (initrd->value.empty()) {
                fail("vm", "initrd", "must be the path of an initramfs (or leave the key out)");
            } else if (auto initrd_file = regular_file("initrd", initrd->value)) {
                std::error_code error;
                if (std::filesystem::file_size(*initrd_file, error) == 0 || error)
                    fail("vm", "initrd", fmt::format("{} is empty", initrd_file->string()));
                else
                    vm.initrd = *initrd_file;
            }
        }
        // Whether it fits the guest's memory (low memory: RAM below the 3 GiB hole).
        if (vm.memory_bytes != 0) {
            if (auto fits = bz->check_fits(std::min<uint64_t>(vm.memory_bytes, uint64_t{3} << 30)); !fits)
                fail("vm", "memory", fits.error().message());
        }
    }

    void image(const std::string& text, Image& image) {
        if (text.empty()) {
            fail("vm", "image", "must be builtin:NAME or the path of an ELF64 guest");
            return;
        }
        if (text.starts_with(k_builtin_prefix)) {
            const std::string name = text.substr(k_builtin_prefix.size());
            if (std::find(m_builtin_images.begin(), m_builtin_images.end(), name) == m_builtin_images.end()) {
                fail("vm", "image",
                     fmt::format("unknown built-in image (known: {})", fmt::join(m_builtin_images, ", ")));
                return;
            }
            image.builtin = name;
            return;
        }
        if (auto file = regular_file("image", text))
            image.file = *file;
    }

    std::optional<std::chrono::microseconds> duration(std::string_view key, std::chrono::microseconds min,
                                                      std::chrono::microseconds max) {
        const Setting* text = setting("replication", key);
        if (!text)
            return std::nullopt;
        auto value = value_of("replication", key, parse_duration(text->value));
        if (!value)
            return std::nullopt;
        if (*value < min || *value > max) {
            fail("replication", key,
                 fmt::format("must be between {} and {}", format_duration(min), format_duration(max)));
            return std::nullopt;
        }
        return value;
    }

    void replication(ReplicationConfig& replication) {
        using namespace std::chrono_literals;
        if (const Setting* mode = setting("replication", "mode")) {
            if (mode->value == "checkpoint")
                replication.mode = Mode::Checkpoint;
            else if (mode->value == "colo")
                replication.mode = Mode::Colo;
            else
                fail("replication", "mode", "must be checkpoint or colo");
        }

        if (auto interval = duration("checkpoint-interval", 1ms, 60s))
            replication.checkpoint_interval = *interval;
        const auto heartbeat_interval = duration("heartbeat-interval", 1ms, 10s);
        if (heartbeat_interval)
            replication.heartbeat_interval = *heartbeat_interval;
        if (const Setting* timeout_text = setting("replication", "heartbeat-timeout")) {
            if (auto timeout = value_of("replication", "heartbeat-timeout", parse_duration(timeout_text->value))) {
                if (*timeout > 60s)
                    fail("replication", "heartbeat-timeout", "must be at most 60s");
                else if (heartbeat_interval && *timeout <= 2 * *heartbeat_interval)
                    // One late heartbeat must not look like a dead peer.
                    fail("replication", "heartbeat-timeout",
                         fmt::format("must be more than twice heartbeat-interval ({})",
                                     format_duration(*heartbeat_interval)));
                else
                    replication.heartbeat_timeout = *timeout;
            }
        }

        if (const Setting* fence = setting("replication", "fence-command"))
            replication.fence_command = fence->value;

        if (const Setting* key_file = setting("replication", "auth-key-file")) {
            if (key_file->value.empty())
                fail("replication", "auth-key-file", "must not be empty: the pair authenticates with this key");
            else
                replication.auth_key_file = resolve(key_file->value);
        }
        if (const Setting* next = setting("replication", "auth-key-file-next")) {
            if (next->value.empty())
                fail("replication", "auth-key-file-next",
                     "must not be empty: name the file of the key that replaces auth-key-file, or leave the key out");
            else if (resolve(next->value) == replication.auth_key_file)
                fail("replication", "auth-key-file-next",
                     "must differ from auth-key-file: it names the key that replaces it (leave it out when no key "
                     "is being replaced)");
            else
                replication.auth_key_file_next = resolve(next->value);
        }

        if (const Setting* held = setting("replication", "max-held-output")) {
            if (auto bytes = value_of("replication", "max-held-output", parse_size(held->value))) {
                if (*bytes < 4096 || *bytes > (uint64_t{1} << 30))
                    fail("replication", "max-held-output", "must be between 4K and 1G");
                else
                    replication.max_held_output = *bytes;
            }
        }

        if (auto retry = duration("connect-retry", 10ms, 10min))
            replication.connect_retry = *retry;

        if (const Setting* security = setting("replication", "link-security")) {
            if (security->value == "encrypted")
                replication.link_security = LinkSecurity::Encrypted;
            else if (security->value == "authenticated")
                replication.link_security = LinkSecurity::Authenticated;
            else if (security->value == "none")
                replication.link_security = LinkSecurity::None;
            else
                fail("replication", "link-security", "must be encrypted, authenticated or none");
        }
        // frame-auth = off used to be the default and meant "CRC only": carrying it over as
        // link-security = none would quietly drop the encryption that is the default now, and
        // carrying frame-auth = on over as authenticated would keep a file below the default
        // without anyone having chosen that. So neither is guessed: the file must say it.
        if (const Setting* frame_auth = setting("replication", "frame-auth")) {
            std::string_view meant = frame_auth->value == "on"    ? "link-security = authenticated"
                                     : frame_auth->value == "off" ? "link-security = none"
                                                                  : "";
            fail("replication", "frame-auth",
                 meant.empty()
                     ? std::string("was replaced by link-security (encrypted, authenticated or none; default "
                                   "encrypted): remove this line")
                     : fmt::format("was replaced by link-security (default encrypted: every frame encrypted and "
                                   "authenticated): remove this line; what it said is now {}, which is weaker "
                                   "than the default",
                                   meant));
        }
    }

    void host(Role role, const std::string& vm_name, HostConfig& host) {
        const std::string_view section = role_name(role);
        if (const Setting* text = setting(section, "replication")) {
            if (auto endpoint = value_of(section, "replication", parse_endpoint(text->value))) {
                if (endpoint->is_wildcard())
                    fail(section, "replication", "must be a specific address, not a wildcard: the peer connects to it");
                else
                    host.replication = *endpoint;
            }
        }
        const Setting* console = setting(section, "console");
        if (console) {
            if (auto address = value_of(section, "console", parse_console_address(console->value)))
                host.console = *address;
        }

        if (const Setting* text = setting(section, "metrics")) {
            // Any address, a wildcard too: the endpoint only reads figures (docs/config.md).
            if (text->value.empty())
                fail(section, "metrics", "must be ADDRESS:PORT (e.g. 10.0.0.1:9464), or leave the key out for no metrics");
            else if (auto endpoint = value_of(section, "metrics", parse_endpoint(text->value)))
                host.metrics = *endpoint;
        }

        const std::string control_key = full_key(section, "control");
        if (!m_settings.count(control_key)) {
            if (vm_name.empty())
                return;  // vm.name is wrong and was reported; the default would be too
            m_settings[control_key] =
                Setting{fmt::format("/run/colod/{}-{}.sock", vm_name, section), 0, Origin::Derived};
        }
        const Setting& control = m_settings.at(control_key);
        if (control.value.empty() || control.value.front() != '/')
            fail(section, "control", "must be an absolute path");
        else if (control.value.size() > k_max_socket_path)
            fail(section, "control",
                 fmt::format("must be at most {} bytes (the limit of a unix socket address)", k_max_socket_path));
        else
            host.control = std::filesystem::path(control.value).lexically_normal();

        if (console && host.console.is_unix())
            console_directory(section, host);
    }

    // The directory of a unix console socket must exist: the daemon creates the socket, not
    // the directories on the way to it, so a mistyped directory is caught here and not by a
    // daemon that already booted its guest. The exception is the control socket's directory,
    // which the daemon creates (the units provide /run/colod, which exists only while one runs).
    void console_directory(std::string_view section, const HostConfig& host) {
        const std::filesystem::path directory = host.console.unix_path.parent_path();
        if (directory == host.control.parent_path())
            return;
        std::error_code error;
        if (std::filesystem::is_directory(directory, error))
            return;
        if (host.control.empty())
            fail(section, "console", fmt::format("directory {} does not exist", directory.string()));
        else
            fail(section, "console",
                 fmt::format("directory {} does not exist (create it, or put the socket in the control socket's "
                             "directory, {}, which the daemon creates)",
                             directory.string(), host.control.parent_path().string()));
    }

    // Checks between keys, each reported once, on the later key. Only keys that passed their
    // own rule take part, so that one mistake is not reported twice.
    void relations(const PairConfig& config) {
        auto usable = [this](std::string_view section, std::string_view key) {
            return m_settings.count(full_key(section, key)) && !failed(section, key);
        };
        // Reports `section.key` (at `endpoint`) if it collides with `other` on one host.
        auto check_overlap = [&](std::string_view section, std::string_view key, const Endpoint& endpoint,
                                 std::string_view other_key, const Endpoint& other) {
            if (usable(section, key) && overlaps(endpoint, other))
                fail(section, key,
                     fmt::format("must not use the same port as {} ({}) on the same host", other_key,
                                 other.to_string()));
        };
        // The same for a console, which may be a unix socket: it collides with a TCP endpoint
        // through its port, with a socket path (a console or a control socket) through its path.
        auto check_console = [&](std::string_view section, const ConsoleAddress& console, std::string_view other_key,
                                 const Endpoint& other) {
            if (!console.is_unix())
                check_overlap(section, "console", console.tcp, other_key, other);
        };
        auto check_console_path = [&](std::string_view section, const ConsoleAddress& console,
                                      std::string_view other_key, const std::filesystem::path& other) {
            if (usable(section, "console") && console.is_unix() && console.unix_path == other)
                fail(section, "console", fmt::format("must not be the same socket as {} on the same host", other_key));
        };
        const HostConfig& primary = config.primary;
        const HostConfig& secondary = config.secondary;

        // Within one host, its console must not take its replication port or control socket.
        if (usable("primary", "replication"))
            check_console("primary", primary.console, "primary.replication", primary.replication);
        if (usable("secondary", "replication"))
            check_console("secondary", secondary.console, "secondary.replication", secondary.replication);
        if (usable("primary", "control"))
            check_console_path("primary", primary.console, "primary.control", primary.control);
        if (usable("secondary", "control"))
            check_console_path("secondary", secondary.console, "secondary.control", secondary.control);
        // Nor its metrics endpoint either of them.
        for (Role role : {Role::Primary, Role::Secondary}) {
            const std::string_view section = role_name(role);
            const HostConfig& host = config.host(role);
            if (!host.metrics)
                continue;
            if (usable(section, "replication"))
                check_overlap(section, "metrics", *host.metrics, full_key(section, "replication"), host.replication);
            if (usable(section, "console") && !host.console.is_unix())
                check_overlap(section, "metrics", *host.metrics, full_key(section, "console"), host.console.tcp);
        }

        if (usable("primary", "replication") && usable("secondary", "replication")) {
            const Endpoint& a = primary.replication;
            const Endpoint& b = secondary.replication;
            // Both on one machine (the demo over loopback, a test): then every endpoint of one
            // side must also stay clear of every endpoint of the other.
            const bool same_host = a.host == b.host || (a.is_loopback() && b.is_loopback());
            if (a == b) {
                fail("secondary", "replication", fmt::format("must differ from primary.replication ({})", a.to_string()));
            } else if (same_host) {
                const bool primary_console = usable("primary", "console");
                if (primary_console && !primary.console.is_unix())
                    check_overlap("secondary", "replication", b, "primary.console", primary.console.tcp);
                check_console("secondary", secondary.console, "primary.replication", a);
                if (primary_console && !primary.console.is_unix())
                    check_console("secondary", secondary.console, "primary.console", primary.console.tcp);
                if (primary_console && primary.console.is_unix()) {
                    check_console_path("secondary", secondary.console, "primary.console", primary.console.unix_path);
                    if (usable("secondary", "control") && secondary.control == primary.console.unix_path)
                        fail("secondary", "control", "must not be the same socket as primary.console on the same host");
                }
                if (usable("primary", "control"))
                    check_console_path("secondary", secondary.console, "primary.control", primary.control);
                if (primary.metrics && usable("primary", "metrics")) {
                    check_overlap("secondary", "replication", b, "primary.metrics", *primary.metrics);
                    check_console("secondary", secondary.console, "primary.metrics", *primary.metrics);
                }
                if (secondary.metrics) {
                    check_overlap("secondary", "metrics", *secondary.metrics, "primary.replication", a);
                    if (primary_console && !primary.console.is_unix())
                        check_overlap("secondary", "metrics", *secondary.metrics, "primary.console", primary.console.tcp);
                    if (primary.metrics && usable("primary", "metrics"))
                        check_overlap("secondary", "metrics", *secondary.metrics, "primary.metrics", *primary.metrics);
                }
            }
        }

        if (usable("primary", "control") && usable("secondary", "control") && primary.control == secondary.control)
            fail("secondary", "control", fmt::format("must differ from primary.control ({})", primary.control.string()));
    }


    std::map<std::string, Setting> m_settings;
    Problems& m_problems;
    std::filesystem::path m_base_dir;
    const std::vector<std::string>& m_builtin_images;
    std::vector<std::string> m_failed;
};

}  // namespace

std::string_view mode_name(Mode mode) {
    switch (mode) {
    case Mode::Checkpoint: return "checkpoint";
    case Mode::Colo: return "colo";
    }
    return "?";
}

std::string_view link_security_name(LinkSecurity security) {
    switch (security) {
    case LinkSecurity::Encrypted: return "encrypted";
    case LinkSecurity::Authenticated: return "authenticated";
    case LinkSecurity::None: return "none";
    }
    return "?";
}

std::string_view role_name(Role role) {
    switch (role) {
    case Role::Primary: return "primary";
    case Role::Secondary: return "secondary";
    }
    return "?";
}

base::Result<Role> parse_role(std::string_view text) {
    if (text == "primary")
        return Role::Primary;
    if (text == "secondary")
        return Role::Secondary;
    return base::Error::make(base::Errc::Invalid, "role {}: must be primary or secondary", text);
}

Role peer_of(Role role) { return role == Role::Primary ? Role::Secondary : Role::Primary; }

base::Result<Mac> parse_mac(std::string_view text) {
    auto bad = [&] {
        return base::Error::make(base::Errc::Invalid, "must be a MAC address: six two-digit hex octets separated by "
                                                      "':' (e.g. 52:54:00:12:34:56)");
    };
    if (text.size() != 17)
        return bad();
    Mac mac{};
    for (size_t i = 0; i < mac.size(); ++i) {
        if (i > 0 && text[i * 3 - 1] != ':')
            return bad();
        unsigned value = 0;
        for (char c : text.substr(i * 3, 2)) {
            const int digit = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                              : (c >= 'a' && c <= 'f')                   ? c - 'a' + 10
                              : (c >= 'A' && c <= 'F')                   ? c - 'A' + 10
                                                                         : -1;
            if (digit < 0)
                return bad();
            value = value * 16 + static_cast<unsigned>(digit);
        }
        mac[i] = static_cast<uint8_t>(value);
    }
    if (mac[0] & 1)
        return base::Error::make(base::Errc::Invalid,
                                 "is a multicast address (the low bit of the first octet is set): a NIC's address "
                                 "must be unicast, e.g. 52:54:00:12:34:56");
    if (std::all_of(mac.begin(), mac.end(), [](uint8_t octet) { return octet == 0; }))
        return base::Error::make(base::Errc::Invalid, "must not be all zeros");
    return mac;
}

std::string format_mac(const Mac& mac) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

std::string Image::to_string() const {
    if (is_builtin())
        return fmt::format("{}{}", k_builtin_prefix, builtin);
    return file.string();
}

std::vector<SchemaKey> schema_keys() {
    std::vector<SchemaKey> keys;
    keys.reserve(k_keys.size());
    for (const auto& spec : k_keys)
        keys.push_back({spec.section, spec.key});
    return keys;
}

const std::vector<std::string>& known_builtin_images() {
    static const std::vector<std::string> images{"kvstore"};
    return images;
}

base::Result<PairConfig> parse(std::string_view text, std::string_view file_name, const ParseOptions& options) {
    Problems problems{std::string(file_name)};
    const Scanned scanned = scan(text, problems);
    auto settings = read_settings(scanned);
    if (!settings.ok())
        return std::move(settings).error().context(file_name);

    std::filesystem::path base_dir = options.base_dir;
    if (base_dir.empty())
        base_dir = std::filesystem::path(file_name).parent_path();
    if (base_dir.empty())
        base_dir = ".";
    std::error_code error;
    const std::filesystem::path absolute_base = std::filesystem::absolute(base_dir, error);
    if (error)
        return base::Error::make(base::Errc::Invalid, "{}: resolving {}: {}", file_name, base_dir.string(),
                                 error.message());

    PairConfig config;
    config.file = std::filesystem::path(file_name);
    const auto& images = options.builtin_images.empty() ? known_builtin_images() : options.builtin_images;
    Validator validator(std::move(settings).value(), problems, absolute_base, images);
    validator.run(std::filesystem::path(file_name).stem().string(), config);
    if (!problems.empty())
        return base::Error(base::Errc::Invalid, problems.text());
    return config;
}

base::Result<PairConfig> load(const std::filesystem::path& path, const ParseOptions& options) {
    const std::string name = path.string();
    base::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd)
        return base::Error::from_errno(name);
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0)
        return base::Error::from_errno(name);
    if (!S_ISREG(info.st_mode))
        return base::Error::make(base::Errc::Invalid, "{}: not a regular file", name);
    if (static_cast<uint64_t>(info.st_size) > k_max_file_size)
        return base::Error::make(base::Errc::Invalid, "{}: larger than {} bytes; not a config file", name,
                                 k_max_file_size);
    std::string text;
    char buffer[8192];
    for (;;) {
        const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return base::Error::from_errno(name);
        if (n == 0)
            break;
        text.append(buffer, static_cast<size_t>(n));
        if (text.size() > k_max_file_size)
            return base::Error::make(base::Errc::Invalid, "{}: larger than {} bytes; not a config file", name,
                                     k_max_file_size);
    }
    return parse(text, name, options);
}

std::string to_config_text(const PairConfig& config) {
    std::string out;
    out += "[vm]\n";
    out += fmt::format("name = {}\n", config.vm.name);
    out += fmt::format("memory = {}\n", format_size(config.vm.memory_bytes));
    out += fmt::format("vcpus = {}\n", config.vm.vcpus);
    if (config.vm.is_linux()) {
        out += fmt::format("kernel = {}\n", config.vm.kernel.string());
        if (!config.vm.initrd.empty())
            out += fmt::format("initrd = {}\n", config.vm.initrd.string());
    } else {
        out += fmt::format("image = {}\n", config.vm.image.to_string());
    }
    out += fmt::format("cmdline = {}\n", config.vm.cmdline);
    out += fmt::format("console-clients = {}\n", config.vm.console_clients);
    out += fmt::format("accelerator = {}\n", config.vm.accelerator);
    if (config.vm.has_network()) {
        out += fmt::format("net-tap = {}\n", config.vm.net_tap);
        out += fmt::format("mac = {}\n", format_mac(config.vm.mac));
    }
    if (config.vm.has_disk())
        out += fmt::format("disk = {}\n", config.vm.disk.string());
    const auto& replication = config.replication;
    out += "[replication]\n";
    out += fmt::format("mode = {}\n", mode_name(replication.mode));
    out += fmt::format("checkpoint-interval = {}\n", format_duration(replication.checkpoint_interval));
    out += fmt::format("heartbeat-interval = {}\n", format_duration(replication.heartbeat_interval));
    out += fmt::format("heartbeat-timeout = {}\n", format_duration(replication.heartbeat_timeout));
    out += fmt::format("fence-command = {}\n", replication.fence_command);
    out += fmt::format("auth-key-file = {}\n", replication.auth_key_file.string());
    if (!replication.auth_key_file_next.empty())
        out += fmt::format("auth-key-file-next = {}\n", replication.auth_key_file_next.string());
    out += fmt::format("max-held-output = {}\n", format_size(replication.max_held_output));
    out += fmt::format("connect-retry = {}\n", format_duration(replication.connect_retry));
    out += fmt::format("link-security = {}\n", link_security_name(replication.link_security));
    for (Role role : {Role::Primary, Role::Secondary}) {
        const HostConfig& host = config.host(role);
        out += fmt::format("[{}]\n", role_name(role));
        out += fmt::format("replication = {}\n", host.replication.to_string());
        out += fmt::format("console = {}\n", host.console.to_string());
        out += fmt::format("control = {}\n", host.control.string());
        if (host.metrics)
            out += fmt::format("metrics = {}\n", host.metrics->to_string());
    }
    return out;
}

}  // namespace colod::config
