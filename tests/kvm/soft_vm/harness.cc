// SPDX-License-Identifier: GPL-2.0-or-later
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "tests/support/backend.h"

namespace colod::softvm_test {

namespace {

void kick_handler(int) {
    // The kicker sets immediate_exit before it signals; the signal only interrupts a blocked
    // KVM_RUN.
}

void install_kick_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action {};
        action.sa_handler = kick_handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = 0;  // no SA_RESTART
        sigaction(SIGUSR1, &action, nullptr);
    });
}

// Every wait on a vCPU thread ends well inside the CTest timeout (300 s), however slow the run:
// a stuck vCPU is then reported, not killed unexplained.
constexpr int64_t k_wait_limit_ns = 120'000'000'000;
constexpr int64_t k_kick_limit_ns = 30'000'000'000;

// The kernel's view of this process's threads (state, wait channel, stack where readable): what
// a vCPU that does not come back from KVM_RUN is doing.
std::string kernel_threads() {
    std::ostringstream out;
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
        auto read = [&](const char* name) {
            std::ifstream in(task.path() / name);
            return std::string(std::istreambuf_iterator<char>(in), {});
        };
        std::string status = read("status"), state;
        if (auto at = status.find("State:"); at != std::string::npos)
            state = status.substr(at, status.find('\n', at) - at);
        out << "thread " << task.path().filename().string() << ": " << state << ", wchan " << read("wchan") << "\n"
            << read("stack");
    }
    return out.str();
}

// Says at once on stderr that a vCPU thread is stuck (`what`), with the kernel's view of the
// threads (a Catch report comes at the end of the test case, which may never come); returns it.
std::string report_stuck(const std::string& what) {
    std::string threads = kernel_threads();
    std::fprintf(stderr, "soft_vm harness: %s; this process's threads in the kernel:\n%s\n", what.c_str(),
                 threads.c_str());
    std::fflush(stderr);
    return threads;
}

template <typename T>
unsigned long ptr(T* p) {
    return reinterpret_cast<unsigned long>(p);
}

}  // namespace

int64_t now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool nested_tcg() {
    const char* env = std::getenv("COLOD_NESTED_TCG");
    return env && std::string(env) == "1";
}

base::Mapping anonymous_memory(size_t bytes) {
    void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(addr != MAP_FAILED);
    return base::Mapping(addr, bytes);
}

std::vector<BackendCase> available_backends() {
    std::vector<BackendCase> cases;
    // COLOD_TEST_BACKEND narrows the run to one backend (the nested-KVM run covers only "kvm";
    // the software backend is covered by the run on the host).
    const char* only = std::getenv("COLOD_TEST_BACKEND");
    std::string forced = only ? only : "";
    if (forced.empty() || forced == "soft")
        cases.push_back({"soft", kvm::make_soft_backend()});
    if (forced == "soft")
        return cases;
    auto host = kvm::make_host_backend();
    auto probe = host->open_system();
    if (probe) {
        cases.push_back({"kvm", std::move(host)});
    } else {
        static std::once_flag once;
        std::call_once(once, [&] {
            WARN("host backend skipped: " << probe.error().message());
        });
    }
    return cases;
}

std::vector<uint8_t> guest_binary(const std::string& name) {
    std::string path = std::string(SOFTVM_GUEST_DIR) + "/" + name + ".bin";
    std::ifstream in(path, std::ios::binary);
    INFO("guest binary " << path);
    REQUIRE(in.good());
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

Machine::Machine(kvm::Backend& backend, MachineOptions options) {
    install_kick_handler();
    auto system = backend.open_system();
    REQUIRE(system);
    m_system = std::move(system).value();
    int mmap_size = m_system->ioctl(KVM_GET_VCPU_MMAP_SIZE, 0);
    REQUIRE(mmap_size >= static_cast<int>(sizeof(kvm_run)));
    m_mmap_size = static_cast<size_t>(mmap_size);
    auto vm = m_system->create(KVM_CREATE_VM, 0);
    REQUIRE(vm);
    m_vm = std::move(vm).value();
    REQUIRE(m_vm->ioctl(KVM_SET_TSS_ADDR, 0xfffbd000ul) == 0);
    if (options.irqchip)
        REQUIRE(m_vm->ioctl(KVM_CREATE_IRQCHIP, 0) == 0);
    if (options.pit) {
        kvm_pit_config pit{};
        pit.flags = KVM_PIT_SPEAKER_DUMMY;
        REQUIRE(m_vm->ioctl(KVM_CREATE_PIT2, ptr(&pit)) == 0);
    }
    m_low = anonymous_memory(k_low_size);
    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.guest_phys_addr = 0;
    region.memory_size = k_low_size;
    region.userspace_addr = reinterpret_cast<uint64_t>(m_low.data());
    REQUIRE(m_vm->ioctl(KVM_SET_USER_MEMORY_REGION, ptr(&region)) == 0);
}

uint64_t Machine::read64(uint64_t gpa) {
    return __atomic_load_n(reinterpret_cast<uint64_t*>(low() + gpa), __ATOMIC_SEQ_CST);
}

void Machine::write64(uint64_t gpa, uint64_t value) {
    __atomic_store_n(reinterpret_cast<uint64_t*>(low() + gpa), value, __ATOMIC_SEQ_CST);
}

void Machine::load_guest(const std::string& name) {
    uint8_t* mem = low();
    // Identity map of the first 4 GiB with 2 MiB pages: PML4 at 0x1000, PDPT at 0x2000, four
    // page directories at 0x3000-0x6fff.
    auto put = [&](uint64_t gpa, uint64_t value) { std::memcpy(mem + gpa, &value, 8); };
    put(0x1000, 0x2000 | 3);
    for (uint64_t i = 0; i < 4; ++i) {
        put(0x2000 + i * 8, (0x3000 + i * 0x1000) | 3);
        for (uint64_t j = 0; j < 512; ++j)
            put(0x3000 + i * 0x1000 + j * 8, ((i * 512 + j) << 21) | 0x83);
    }
    // GDT at 0x500: null, 64-bit code (0x08), data (0x10).
    put(0x500, 0);
    put(0x508, 0x00af9a000000ffffull);
    put(0x510, 0x00cf92000000ffffull);
    auto code = guest_binary(name);
    REQUIRE(code.size() < 0x10000);
    std::memcpy(mem + k_entry, code.data(), code.size());
}

std::vector<uint64_t> Machine::vcpu_cpuid() {
    std::vector<uint64_t> buffer((kvm::abi::k_cpuid2_header + 256 * sizeof(kvm_cpuid_entry2)) / 8);
    auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buffer.data());
    cpuid->nent = 256;
    REQUIRE(m_system->ioctl(KVM_GET_SUPPORTED_CPUID, ptr(cpuid)) == 0);
    // As a VMM does: KVM emulates TSC-deadline when the capability says so, but leaves the
    // CPUID bit for userspace to set.
    if (m_system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0) {
        auto* entries = kvm::abi::cpuid_entries(cpuid);
        for (uint32_t i = 0; i < cpuid->nent; ++i)
            if (entries[i].function == 1)
                entries[i].ecx |= 1u << 24;
    }
    return buffer;
}

Vcpu& Machine::add_vcpu(uint32_t id, uint64_t rdi, uint64_t rsi, uint64_t rdx) {
    auto handle = m_vm->create(KVM_CREATE_VCPU, id);
    REQUIRE(handle);
    Vcpu vcpu;
    vcpu.handle = std::move(handle).value();
    auto run = vcpu.handle->map_run(m_mmap_size);
    REQUIRE(run);
    vcpu.run = run.value();

    auto buffer = vcpu_cpuid();
    REQUIRE(vcpu.handle->ioctl(KVM_SET_CPUID2, ptr(buffer.data())) == 0);

    kvm_sregs sregs{};
    REQUIRE(vcpu.handle->ioctl(KVM_GET_SREGS, ptr(&sregs)) == 0);
    kvm_segment code{};
    code.base = 0;
    code.limit = 0xffffffff;
    code.selector = 0x08;
    code.type = 0xb;
    code.present = 1;
    code.s = 1;
    code.l = 1;
    code.g = 1;
    kvm_segment data = code;
    data.selector = 0x10;
    data.type = 3;
    data.l = 0;
    data.db = 1;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.tr = {};
    sregs.tr.limit = 0x67;
    sregs.tr.type = 0xb;
    sregs.tr.present = 1;
    sregs.gdt.base = 0x500;
    sregs.gdt.limit = 23;
    sregs.idt.base = 0x8000;
    sregs.idt.limit = 0xfff;
    sregs.cr0 = 0x80050033;  // PG WP NE ET MP PE
    sregs.cr3 = 0x1000;
    sregs.cr4 = 0x20;        // PAE
    sregs.efer = 0x500;      // LME LMA
    REQUIRE(vcpu.handle->ioctl(KVM_SET_SREGS, ptr(&sregs)) == 0);

    kvm_regs regs{};
    regs.rip = k_entry;
    regs.rsp = k_stack_top - 0x1000 * id;
    regs.rflags = 0x2;
    regs.rdi = rdi;
    regs.rsi = rsi;
    regs.rdx = rdx;
    REQUIRE(vcpu.handle->ioctl(KVM_SET_REGS, ptr(&regs)) == 0);
    if (id != 0) {
        kvm_mp_state mp{KVM_MP_STATE_RUNNABLE};
        REQUIRE(vcpu.handle->ioctl(KVM_SET_MP_STATE, ptr(&mp)) == 0);
    }
    m_vcpus.push_back(std::move(vcpu));
    return m_vcpus.back();
}

Runner::Runner(Vcpu& vcpu) : m_vcpu(vcpu) {
    __atomic_store_n(&m_vcpu.run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    m_thread = std::thread([this] {
        int result = m_vcpu.handle->ioctl(KVM_RUN, 0);
        m_errno = errno;
        m_result = result;
        m_returned_at.store(now_ns());
    });
}

Runner::~Runner() {
    if (m_thread.joinable())
        kick_and_join();
}

int64_t Runner::kick_and_join() {
    int64_t kicked_at = now_ns();
    __atomic_store_n(&m_vcpu.run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pthread_kill(m_thread.native_handle(), SIGUSR1);
    while (m_returned_at.load() == 0 && now_ns() - kicked_at < k_kick_limit_ns)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (m_returned_at.load() == 0) {
        // A kick that did not end KVM_RUN: reported, then kicked again until it returns.
        std::string what = "KVM_RUN did not return within " + std::to_string(k_kick_limit_ns / 1'000'000'000) +
                           " s of a kick (immediate_exit + SIGUSR1)";
        std::string threads = report_stuck(what);
        FAIL_CHECK(what << "; kernel view:\n" << threads);
        while (m_returned_at.load() == 0) {
            pthread_kill(m_thread.native_handle(), SIGUSR1);
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    m_thread.join();
    __atomic_store_n(&m_vcpu.run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    return m_returned_at.load() - kicked_at;
}

void Runner::join(int seconds) {
    int64_t deadline = now_ns() + std::min(int64_t{seconds} * 1'000'000'000 * test::time_scale(), k_wait_limit_ns);
    while (m_returned_at.load() == 0 && now_ns() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    bool returned = m_returned_at.load() != 0;
    if (!returned) {
        report_stuck("KVM_RUN did not return by itself within " + std::to_string(seconds) + " s (scaled, at most " +
                     std::to_string(k_wait_limit_ns / 1'000'000'000) + " s)");
        kick_and_join();
    } else {
        m_thread.join();
    }
    INFO("the vCPU's KVM_RUN did not return by itself within " << seconds << " s (scaled)");
    REQUIRE(returned);
}

}  // namespace colod::softvm_test
