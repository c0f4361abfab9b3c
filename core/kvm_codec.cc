// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/kvm_codec.h"

#include "core/state_io.h"

namespace colod::core {

namespace {

constexpr uint32_t k_max_msrs = 1024;
constexpr uint32_t k_max_xsave_words = 64 * 1024 / 4;

// One description of each struct serves both directions: Io is Put (encode) or Get (decode).
struct Put {
    StateWriter& w;
    template <typename T>
    void operator()(T& v) {
        w.put(v);
    }
    void raw(void* data, size_t size) { w.put_raw(data, size); }
};

struct Get {
    StateReader& r;
    template <typename T>
    void operator()(T& v) {
        v = r.get<T>();
    }
    void raw(void* data, size_t size) { r.get_raw(data, size); }
};

template <typename Io>
void visit(Io& io, kvm_regs& r) {
    for (auto* f : {&r.rax, &r.rbx, &r.rcx, &r.rdx, &r.rsi, &r.rdi, &r.rsp, &r.rbp, &r.r8, &r.r9, &r.r10, &r.r11,
                    &r.r12, &r.r13, &r.r14, &r.r15, &r.rip, &r.rflags})
        io(*f);
}

template <typename Io>
void visit(Io& io, kvm_segment& s) {
    io(s.base), io(s.limit), io(s.selector), io(s.type), io(s.present), io(s.dpl), io(s.db), io(s.s), io(s.l),
        io(s.g), io(s.avl), io(s.unusable);
}

template <typename Io>
void visit(Io& io, kvm_dtable& t) {
    io(t.base), io(t.limit);
}

template <typename Io>
void visit(Io& io, kvm_sregs& s) {
    for (auto* seg : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt})
        visit(io, *seg);
    visit(io, s.gdt), visit(io, s.idt);
    for (auto* f : {&s.cr0, &s.cr2, &s.cr3, &s.cr4, &s.cr8, &s.efer, &s.apic_base})
        io(*f);
    for (auto& word : s.interrupt_bitmap)
        io(word);
}

template <typename Io>
void visit(Io& io, kvm_debugregs& d) {
    for (auto& db : d.db)
        io(db);
    io(d.dr6), io(d.dr7), io(d.flags);
}

template <typename Io>
void visit(Io& io, kvm_vcpu_events& e) {
    io(e.exception.injected), io(e.exception.nr), io(e.exception.has_error_code), io(e.exception.pending),
        io(e.exception.error_code);
    io(e.interrupt.injected), io(e.interrupt.nr), io(e.interrupt.soft), io(e.interrupt.shadow);
    io(e.nmi.injected), io(e.nmi.pending), io(e.nmi.masked);
    io(e.sipi_vector), io(e.flags);
    io(e.smi.smm), io(e.smi.pending), io(e.smi.smm_inside_nmi), io(e.smi.latched_init);
    io(e.triple_fault.pending);
    io(e.exception_has_payload), io(e.exception_payload);
}

template <typename Io>
void visit(Io& io, kvm_pic_state& p) {
    for (auto* f : {&p.last_irr, &p.irr, &p.imr, &p.isr, &p.priority_add, &p.irq_base, &p.read_reg_select, &p.poll,
                    &p.special_mask, &p.init_state, &p.auto_eoi, &p.rotate_on_auto_eoi, &p.special_fully_nested_mode,
                    &p.init4, &p.elcr, &p.elcr_mask})
        io(*f);
}

template <typename Io>
void visit(Io& io, kvm_ioapic_state& a) {
    io(a.base_address), io(a.ioregsel), io(a.id), io(a.irr);
    for (auto& entry : a.redirtbl)
        io(entry.bits);
}

template <typename Io>
void visit(Io& io, kvm_pit_state2& p) {
    for (auto& c : p.channels) {
        io(c.count), io(c.latched_count), io(c.count_latched), io(c.status_latched), io(c.status), io(c.read_state),
            io(c.write_state), io(c.write_latch), io(c.rw_mode), io(c.mode), io(c.bcd), io(c.gate),
            io(c.count_load_time);
    }
    io(p.flags);
}

template <typename Io>
void visit_irqchip(Io& io, kvm::VmState& s) {
    visit(io, s.pic_master);
    visit(io, s.pic_slave);
    visit(io, s.ioapic);
}

template <typename Io>
void visit_clock(Io& io, kvm::VmState& s) {
    io(s.clock.clock), io(s.clock.flags), io(s.clock.realtime);
}

// Encodes one part of a VmState with `visitor`.
template <typename Visitor>
std::vector<std::byte> encode_part(const kvm::VmState& in, Visitor visitor) {
    kvm::VmState s = in;
    StateWriter w;
    Put io{w};
    visitor(io, s);
    return w.take();
}

// Decodes one part into a copy and commits it to `out` only when the whole body was valid.
template <typename Visitor>
base::Result<void> decode_part(std::string_view what, uint16_t version, uint16_t expected,
                               std::span<const std::byte> bytes, kvm::VmState& out, Visitor visitor) {
    if (version != expected)
        return base::Error::make(base::Errc::Unsupported, "{} state version {} (this build reads {})", what, version,
                                 expected);
    kvm::VmState s = out;
    StateReader r(bytes);
    Get io{r};
    visitor(io, s);
    TRY(r.finish(what));
    out = s;
    return base::ok();
}

}  // namespace

std::vector<std::byte> encode_vcpu_state(const kvm::VcpuState& in) {
    kvm::VcpuState s = in;  // the visitors take mutable references
    StateWriter w;
    Put io{w};
    visit(io, s.regs);
    visit(io, s.sregs);
    w.put(static_cast<uint32_t>(s.xsave.size()));
    for (auto& word : s.xsave)
        io(word);
    w.put(s.xcrs.nr_xcrs), w.put(s.xcrs.flags);
    for (uint32_t i = 0; i < s.xcrs.nr_xcrs && i < KVM_MAX_XCRS; ++i)
        w.put(s.xcrs.xcrs[i].xcr), w.put(s.xcrs.xcrs[i].value);
    visit(io, s.debugregs);
    visit(io, s.events);
    w.put(s.mp_state.mp_state);
    w.put_raw(s.lapic.regs, sizeof(s.lapic.regs));
    w.put(static_cast<uint32_t>(s.msrs.size()));
    for (const auto& msr : s.msrs)
        w.put(msr.index), w.put(msr.data);
    w.put(s.tsc_khz);
    return w.take();
}

base::Result<kvm::VcpuState> decode_vcpu_state(uint16_t version, std::span<const std::byte> bytes) {
    if (version != k_vcpu_state_version)
        return base::Error::make(base::Errc::Unsupported, "vCPU state version {} (this build reads {})", version,
                                 k_vcpu_state_version);
    kvm::VcpuState s;
    StateReader r(bytes);
    Get io{r};
    visit(io, s.regs);
    visit(io, s.sregs);
    uint32_t words = r.get<uint32_t>();
    if (words > k_max_xsave_words)
        r.fail(fmt::format("XSAVE area of {} words is over the limit", words));
    else
        s.xsave.resize(words);
    for (auto& word : s.xsave)
        io(word);
    io(s.xcrs.nr_xcrs), io(s.xcrs.flags);
    if (s.xcrs.nr_xcrs > KVM_MAX_XCRS)
        r.fail(fmt::format("{} XCRs (at most {})", s.xcrs.nr_xcrs, KVM_MAX_XCRS));
    for (uint32_t i = 0; i < s.xcrs.nr_xcrs && i < KVM_MAX_XCRS; ++i)
        io(s.xcrs.xcrs[i].xcr), io(s.xcrs.xcrs[i].value);
    visit(io, s.debugregs);
    visit(io, s.events);
    io(s.mp_state.mp_state);
    r.get_raw(s.lapic.regs, sizeof(s.lapic.regs));
    uint32_t msrs = r.get<uint32_t>();
    if (msrs > k_max_msrs)
        r.fail(fmt::format("{} MSRs (at most {})", msrs, k_max_msrs));
    else
        s.msrs.resize(msrs);
    for (auto& msr : s.msrs)
        io(msr.index), io(msr.data);
    io(s.tsc_khz);
    TRY(r.finish("vCPU state"));
    return s;
}

std::vector<std::byte> encode_irqchip_state(const kvm::VmState& state) {
    return encode_part(state, [](Put& io, kvm::VmState& s) { visit_irqchip(io, s); });
}
std::vector<std::byte> encode_pit_state(const kvm::VmState& state) {
    return encode_part(state, [](Put& io, kvm::VmState& s) { visit(io, s.pit); });
}
std::vector<std::byte> encode_clock_state(const kvm::VmState& state) {
    return encode_part(state, [](Put& io, kvm::VmState& s) { visit_clock(io, s); });
}

base::Result<void> decode_irqchip_state(uint16_t version, std::span<const std::byte> bytes, kvm::VmState& state) {
    return decode_part("irqchip", version, k_irqchip_state_version, bytes, state,
                       [](Get& io, kvm::VmState& s) { visit_irqchip(io, s); });
}
base::Result<void> decode_pit_state(uint16_t version, std::span<const std::byte> bytes, kvm::VmState& state) {
    return decode_part("PIT", version, k_pit_state_version, bytes, state,
                       [](Get& io, kvm::VmState& s) { visit(io, s.pit); });
}
base::Result<void> decode_clock_state(uint16_t version, std::span<const std::byte> bytes, kvm::VmState& state) {
    return decode_part("clock", version, k_clock_state_version, bytes, state,
                       [](Get& io, kvm::VmState& s) { visit_clock(io, s); });
}

}  // namespace colod::core
