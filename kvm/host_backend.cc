// SPDX-License-Identifier: GPL-2.0-or-later
// The host backend: handles over real /dev/kvm file descriptors.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <string>

#include "base/fd.h"
#include "kvm/handle.h"

namespace colod::kvm {
namespace {

class FdHandle final : public Handle {
public:
    explicit FdHandle(base::Fd fd) : m_fd(std::move(fd)) {}

    int ioctl(unsigned long request, unsigned long arg) override {
        // SAFETY: the caller passes the argument type that `request` defines (linux/kvm.h).
        return ::ioctl(m_fd.get(), request, arg);
    }

    base::Result<std::unique_ptr<Handle>> create(unsigned long request, unsigned long arg) override {
        int fd = ::ioctl(m_fd.get(), request, arg);
        if (fd < 0)
            return base::Error::from_errno(request == KVM_CREATE_VM ? "KVM_CREATE_VM" : "KVM_CREATE_VCPU");
        return std::unique_ptr<Handle>(new FdHandle(base::Fd(fd)));
    }

    base::Result<kvm_run*> map_run(size_t mmap_size) override {
        if (!m_run.valid()) {
            void* addr = ::mmap(nullptr, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, m_fd.get(), 0);
            if (addr == MAP_FAILED)
                return base::Error::from_errno("mmap(vcpu kvm_run)");
            m_run = base::Mapping(addr, mmap_size);
        }
        // SAFETY: the first page of a vCPU mapping is a struct kvm_run (KVM API, KVM_RUN).
        return reinterpret_cast<kvm_run*>(m_run.data());
    }

private:
    base::Fd m_fd;
    base::Mapping m_run;
};

class HostBackend final : public Backend {
public:
    explicit HostBackend(std::string device) : m_device(std::move(device)) {}
    std::string_view name() const override { return "kvm"; }

    base::Result<std::unique_ptr<Handle>> open_system() override {
        int fd = ::open(m_device.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return base::Error::from_errno("open " + m_device);
        return std::unique_ptr<Handle>(new FdHandle(base::Fd(fd)));
    }

private:
    std::string m_device;
};

}  // namespace

std::unique_ptr<Backend> make_host_backend(std::string device) {
    return std::make_unique<HostBackend>(std::move(device));
}

}  // namespace colod::kvm
