/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kvstore guest's platform glue: boot info, scratch memory, and the main loop that feeds
 * console bytes to the engine, runs CHURN rounds and halts when there is nothing to do.
 */
#include "../abi.h"
#include "io.h"
#include "irq.h"
#include "kvstore.h"
#include "libc.h"
#include "serial.h"

/* First byte after the image, from the linker script (page-aligned). */
extern char __image_end[];

/* Bytes handed to the engine in one go: bounds how long a flood of input can delay a CHURN
 * round (and the reverse: a round runs between two chunks, never inside a line's reply). */
#define FEED_CHUNK 256u

#define PAGE_MASK 0xfffull

/* A copy of the boot info: the original lives in the monitor's boot area, which this guest
 * treats as read-only and otherwise leaves alone. */
static struct colod_boot_info g_boot;

_Noreturn void kvstore_main(uint64_t boot_info_address);

void kv_platform_write(const char *bytes, size_t len)
{
    serial_write(bytes, len);
}

uint64_t kv_platform_ticks(void)
{
    return g_ticks;
}

/* Hands every RAM page above the image to the engine as scratch. The regions may reach above
 * 4 GiB; the monitor identity-maps all RAM, so a guest-physical address is a pointer. */
static void add_scratch(uint64_t image_end)
{
    uint32_t count = g_boot.region_count;
    if (count > COLOD_BOOT_MAX_REGIONS)
        count = COLOD_BOOT_MAX_REGIONS;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t start = (g_boot.regions[i].start + PAGE_MASK) & ~PAGE_MASK;
        uint64_t end = (g_boot.regions[i].start + g_boot.regions[i].size) & ~PAGE_MASK;
        if (start < image_end)
            start = image_end;
        /* The ABI says the hole is never RAM; a region that claims it is cut, not trusted. */
        if (start < COLOD_MMIO_HOLE_END && end > COLOD_MMIO_HOLE_START) {
            if (start < COLOD_MMIO_HOLE_START) {
                (void)kv_scratch_add((void *)(uintptr_t)start,
                                     (COLOD_MMIO_HOLE_START - start) / KV_PAGE_SIZE);
            }
            start = COLOD_MMIO_HOLE_END;
        }
        if (end > start)
            (void)kv_scratch_add((void *)(uintptr_t)start, (end - start) / KV_PAGE_SIZE);
    }
}

_Noreturn void kvstore_main(uint64_t boot_info_address)
{
    /* SAFETY: RDI at entry holds the guest-physical address of the boot info (guests/abi.h),
     * identity mapped; it is read once, here, and checked before any field is used. */
    memcpy(&g_boot, (const void *)(uintptr_t)boot_info_address, sizeof g_boot);

    serial_init();
    if (g_boot.magic != COLOD_BOOT_MAGIC || g_boot.abi_version != COLOD_ABI_VERSION)
        panic("bad boot info (magic or ABI version)", 1);

    irq_init();

    kv_reset();
    uint64_t image_end = ((uint64_t)(uintptr_t)__image_end + PAGE_MASK) & ~PAGE_MASK;
    if (g_boot.image_end > image_end)
        image_end = (g_boot.image_end + PAGE_MASK) & ~PAGE_MASK;
    add_scratch(image_end);

    sti();
    for (;;) {
        uint64_t now = g_ticks;
        if (kv_churn_due(now))
            kv_churn(now);

        const uint8_t *bytes;
        size_t len = serial_rx_peek(&bytes);
        if (len != 0) {
            if (len > FEED_CHUNK)
                len = FEED_CHUNK;
            kv_feed(bytes, len);
            serial_rx_consume(len);
            continue;
        }

        /* Decide to sleep with interrupts off, so nothing can arrive between the check and
         * the HLT; sti_hlt() then sleeps until the next interrupt, even one already pending. */
        cli();
        serial_poll();
        if (serial_rx_peek(&bytes) == 0 && !kv_churn_due(g_ticks))
            sti_hlt();
        else
            sti();
    }
}
