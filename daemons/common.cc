// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/common.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <mutex>

#include "base/log.h"
#include "core/fault.h"
#include "guests/builtin.h"

namespace colod::daemons {

namespace {

std::string g_vm;
std::string g_role;

bool stderr_is_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (!stream)
        return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2)
        return false;
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) < 0)
        return false;
    return st.st_dev == dev && st.st_ino == ino;
}

int syslog_priority(base::Level level) {
    switch (level) {
    case base::Level::Debug: return 7;
    case base::Level::Info: return 6;
    case base::Level::Notice: return 5;
    case base::Level::Warning: return 4;
    case base::Level::Error: return 3;
    }
    return 6;
}

void journal_sink(const base::LogRecord& record) {
    std::vector<std::string> fields;
    fields.reserve(8 + record.fields.size());
    fields.push_back("MESSAGE=" + record.message);
    fields.push_back(fmt::format("PRIORITY={}", syslog_priority(record.level)));
    fields.push_back("COLOD_VM=" + g_vm);
    fields.push_back("COLOD_ROLE=" + g_role);
    if (!record.event.empty())
        fields.push_back(fmt::format("COLOD_EVENT={}", record.event));
    for (const auto& field : record.fields)
        fields.push_back(fmt::format("COLOD_{}={}", field.key, field.value));
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (auto& field : fields)
        iov.push_back(iovec{field.data(), field.size()});
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) < 0)
        base::stderr_sink(record);
}

void stderr_with_context(const base::LogRecord& record) {
    base::LogRecord copy = record;
    copy.message = fmt::format("{} {}: {}", g_role, g_vm, record.message);
    base::stderr_sink(copy);
}

sigset_t termination_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    return set;
}

}  // namespace

std::string version_line(std::string_view program) {
    return fmt::format("{} {}", program, COLOD_VERSION);
}

void setup_logging(std::string_view vm, std::string_view role) {
    g_vm = std::string(vm);
    g_role = std::string(role);
    if (const char* level = std::getenv("COLOD_LOG_LEVEL"); level && std::string_view(level) == "debug")
        base::set_log_level(base::Level::Debug);
    base::set_log_sink(core::fault_log_sink(stderr_is_journal() ? base::LogSink(journal_sink)
                                                                 : base::LogSink(stderr_with_context)));
}

void notify(const std::string& state) { sd_notify(0, state.c_str()); }

uint64_t watchdog_usec() {
    uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}

void block_termination_signals() {
    sigset_t set = termination_signals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    // A peer that vanishes must be an EPIPE, not a dead daemon.
    std::signal(SIGPIPE, SIG_IGN);
}

int wait_for_signal() {
    sigset_t set = termination_signals();
    int signal = 0;
    while (sigwait(&set, &signal) != 0) {
    }
    return signal;
}

int wait_for_signal(uint64_t timeout_ms) {
    sigset_t set = termination_signals();
    timespec timeout{static_cast<time_t>(timeout_ms / 1000), static_cast<long>((timeout_ms % 1000) * 1000000)};
    int signal = sigtimedwait(&set, nullptr, &timeout);
    return signal < 0 ? 0 : signal;
}

namespace {

// Appends a whole file to `out`; at most `max` bytes.
base::Result<void> append_file(const std::filesystem::path& path, uint64_t max, std::string_view what,
                               std::vector<std::byte>& out) {
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file)
        return base::Error::make(base::Errc::Invalid, "cannot open {} {}", what, path.string());
    auto size = static_cast<uint64_t>(file.tellg());
    if (size > max)
        return base::Error::make(base::Errc::Invalid, "{} {} is {} bytes (at most {})", what, path.string(), size, max);
    size_t at = out.size();
    out.resize(at + size);
    file.seekg(0);
    if (!file.read(reinterpret_cast<char*>(out.data() + at), static_cast<std::streamsize>(size)))
        return base::Error::make(base::Errc::Invalid, "cannot read {} {}", what, path.string());
    return base::ok();
}

}  // namespace

base::Result<GuestImage> load_image(const config::VmConfig& vm) {
    GuestImage out;
    if (vm.is_linux()) {
        out.name = vm.kernel.string();
        TRY(append_file(vm.kernel, 256ull << 20, "the kernel", out.owned));
        size_t kernel_size = out.owned.size();
        if (!vm.initrd.empty())
            TRY(append_file(vm.initrd, 2ull << 30, "the initrd", out.owned));
        out.bytes = out.owned;
        out.kernel = out.bytes.first(kernel_size);
        out.initrd = out.bytes.subspan(kernel_size);
        return out;
    }
    const config::Image& image = vm.image;
    out.name = image.to_string();
    if (image.is_builtin()) {
        auto bytes = guests::builtin_image(image.builtin);
        if (!bytes)
            return base::Error::make(base::Errc::Invalid, "no built-in guest image named '{}'", image.builtin);
        out.bytes = *bytes;
        return out;
    }
    TRY(append_file(image.file, 1ull << 30, "guest image", out.owned));
    out.bytes = out.owned;
    return out;
}

}  // namespace colod::daemons

namespace colod::daemons {
base::Result<std::string> choose_backend(const config::VmConfig& vm) {
    if (vm.accelerator != "auto")
        return vm.accelerator;
    if (::access("/dev/kvm", F_OK) == 0)
        return std::string("kvm");
    if (vm.is_linux())
        return base::Error(base::Errc::Unsupported,
                           "Linux guests need KVM, and this host has no /dev/kvm (the software backend runs only "
                           "colod's own guests): load kvm_intel or kvm_amd");
    base::log(base::Level::Warning, base::Event::None,
              "no /dev/kvm on this host: the guest runs on the software backend (an interpreter, much slower than "
              "KVM); set 'accelerator = kvm' in [vm] to refuse to start instead");
    return std::string("soft");
}
}  // namespace colod::daemons
