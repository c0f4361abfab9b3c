// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/uart.h"

using namespace colod::core;

namespace {

struct Harness {
    std::string output;
    std::vector<bool> irq_changes;
    Uart uart{0x3f8, [this](std::span<const std::byte> b) { output.append(reinterpret_cast<const char*>(b.data()), b.size()); },
              [this](bool level) { irq_changes.push_back(level); }};

    uint8_t in(uint16_t offset) {
        std::byte b{};
        uart.pio_read(static_cast<uint16_t>(0x3f8 + offset), std::span(&b, 1));
        return static_cast<uint8_t>(b);
    }
    void out(uint16_t offset, uint8_t value) {
        std::byte b{value};
        uart.pio_write(static_cast<uint16_t>(0x3f8 + offset), std::span(&b, 1));
    }
    size_t push(std::string_view text) { return uart.push_input(std::as_bytes(std::span(text.data(), text.size()))); }
};

}  // namespace

TEST_CASE("UART transmits bytes written to THR") {
    Harness h;
    for (char c : std::string("hello\n"))
        h.out(0, static_cast<uint8_t>(c));
    CHECK(h.output == "hello\n");
    CHECK((h.in(5) & 0x60) == 0x60);  // THRE and TEMT always set
}

TEST_CASE("UART receive raises IRQ only with IER and OUT2, and drops it when drained") {
    Harness h;
    h.push("ab");
    CHECK(h.irq_changes.empty());  // no IER yet
    h.out(1, 0x01);                // IER: receive data available
    CHECK(h.irq_changes.empty());  // OUT2 still off
    h.out(4, 0x08);                // MCR OUT2
    REQUIRE(h.irq_changes == std::vector<bool>{true});
    CHECK((h.in(2) & 0x0f) == 0x04);  // IIR: receive data available
    CHECK((h.in(5) & 0x01) == 0x01);  // LSR.DR
    CHECK(h.in(0) == 'a');
    CHECK(h.in(0) == 'b');
    CHECK((h.in(5) & 0x01) == 0);
    CHECK(h.irq_changes == std::vector<bool>{true, false});
    CHECK((h.in(2) & 0x0f) == 0x01);  // no interrupt pending
}

TEST_CASE("UART input is bounded and reports how much it took") {
    Harness h;
    std::string big(Uart::k_rx_capacity + 100, 'x');
    CHECK(h.push(big) == Uart::k_rx_capacity);
    CHECK(h.uart.input_space() == 0);
    CHECK(h.push("y") == 0);
    h.in(0);
    CHECK(h.uart.input_space() == 1);
}

TEST_CASE("UART space callback fires when the guest reads") {
    Harness h;
    int calls = 0;
    h.uart.set_space_callback([&] { ++calls; });
    h.push("z");
    h.in(5);
    CHECK(calls == 0);
    h.in(0);
    CHECK(calls == 1);
}

TEST_CASE("UART divisor latch and scratch register") {
    Harness h;
    h.out(3, 0x80);  // DLAB
    h.out(0, 0x01);
    h.out(1, 0x00);
    CHECK(h.in(0) == 0x01);
    h.out(3, 0x03);
    h.out(7, 0x5a);
    CHECK(h.in(7) == 0x5a);
    CHECK(h.in(3) == 0x03);
}

TEST_CASE("UART THR-empty interrupt is acknowledged by reading IIR") {
    Harness h;
    h.out(4, 0x08);
    h.out(1, 0x02);  // enable THRE interrupt: raised at once, THR is empty
    REQUIRE(h.irq_changes == std::vector<bool>{true});
    CHECK((h.in(2) & 0x0f) == 0x02);
    CHECK(h.irq_changes == std::vector<bool>{true, false});
}

TEST_CASE("UART state saves and loads in place, save-load-save equal") {
    Harness a;
    a.out(3, 0x03);
    a.out(1, 0x01);
    a.out(4, 0x0b);
    a.out(7, 0x42);
    a.push("pending input");
    DeviceState saved = a.uart.save_state();

    Harness b;
    REQUIRE(b.uart.load_state(saved));
    CHECK(b.uart.save_state().bytes == saved.bytes);
    CHECK(b.in(7) == 0x42);
    CHECK(b.in(0) == 'p');
    // Loading again into the same device replaces everything.
    REQUIRE(b.uart.load_state(saved));
    CHECK(b.in(0) == 'p');
}

TEST_CASE("UART refuses bad state without changing anything") {
    Harness h;
    h.out(7, 0x11);
    DeviceState good = h.uart.save_state();

    DeviceState wrong_version = good;
    wrong_version.version = 99;
    CHECK_FALSE(h.uart.load_state(wrong_version));

    DeviceState truncated = good;
    truncated.bytes.resize(5);
    CHECK_FALSE(h.uart.load_state(truncated));

    DeviceState huge = good;
    // Claim an enormous receive buffer.
    huge.bytes[10] = std::byte{0x7f};
    CHECK_FALSE(h.uart.load_state(huge));

    DeviceState trailing = good;
    trailing.bytes.push_back(std::byte{0});
    CHECK_FALSE(h.uart.load_state(trailing));

    CHECK(h.in(7) == 0x11);
}

TEST_CASE("UART shows its transmitter busy while the output path is full, and drops bytes written then") {
    Harness h;
    bool ready = true;
    h.uart.set_transmit_ready([&] { return ready; });
    h.out(0, 'a');
    CHECK((h.in(5) & 0x60) == 0x60);
    ready = false;
    CHECK((h.in(5) & 0x60) == 0);  // a polling driver waits here
    h.out(0, 'b');                 // a guest that does not wait loses the byte, as on the chip
    CHECK(h.uart.transmit_dropped() == 1);
    ready = true;
    CHECK((h.in(5) & 0x60) == 0x60);
    h.out(0, 'c');
    CHECK(h.output == "ac");
    h.uart.set_transmit_ready(nullptr);
    CHECK((h.in(5) & 0x60) == 0x60);
}

TEST_CASE("UART gives a driver whose bytes were dropped while busy its THR-empty interrupt once the path is free") {
    Harness h;
    bool ready = true;
    h.uart.set_transmit_ready([&] { return ready; });
    h.out(4, 0x08);  // OUT2
    h.out(1, 0x02);  // THRE interrupt on: raised at once
    REQUIRE(h.irq_changes == std::vector<bool>{true});
    CHECK((h.in(2) & 0x0f) == 0x02);  // the driver acknowledges it and writes its burst...
    ready = false;
    h.out(0, 'x');  // ...into a busy transmitter: dropped, and no THR-empty interrupt
    CHECK(h.uart.transmit_dropped() == 1);
    CHECK(h.irq_changes == std::vector<bool>{true, false});
    h.uart.transmitter_ready();  // still busy: nothing yet
    CHECK(h.irq_changes == std::vector<bool>{true, false});
    ready = true;
    h.uart.transmitter_ready();  // free again: the driver is woken to write again
    CHECK(h.irq_changes == std::vector<bool>{true, false, true});
    CHECK((h.in(2) & 0x0f) == 0x02);
    h.out(0, 'y');
    CHECK(h.output == "y");
    CHECK((h.in(2) & 0x0f) == 0x02);  // the accepted byte's THR-empty, acknowledged
    auto changes = h.irq_changes.size();
    h.uart.transmitter_ready();  // nothing was dropped since: no interrupt
    CHECK(h.irq_changes.size() == changes);
    CHECK((h.in(2) & 0x0f) == 0x01);
}
