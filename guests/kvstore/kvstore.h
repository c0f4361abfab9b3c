/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kvstore protocol engine: line assembly, parsing, the key table, DIRTY/CHURN and the
 * replies. It touches no hardware: bytes go out through kv_platform_write() and the tick count
 * comes from kv_platform_ticks(), both provided by whoever links the engine (the guest's
 * platform code, or the host unit test). That is what lets the very same file run in the guest
 * and under Catch2 on the host.
 *
 * Not reentrant and not thread-safe: one caller (the guest's main loop) drives it.
 */
#ifndef COLOD_GUESTS_KVSTORE_H
#define COLOD_GUESTS_KVSTORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KV_LINE_MAX 512u          /* longest accepted line, without the \n (and a trailing \r) */
#define KV_TABLE_CAPACITY 4096u   /* keys the table holds; one more is "ERR table full" */
#define KV_PAGE_SIZE 4096u
#define KV_SCRATCH_MAX_SPANS 8u   /* RAM pieces DIRTY/CHURN may use */

/* Supplied by the platform. kv_platform_write() is called once per reply with the whole line,
 * '\n' included; it must not return before the bytes are accepted by the output device. */
void kv_platform_write(const char *bytes, size_t len);
/* Timer interrupts taken since boot (INFO's ticks=). */
uint64_t kv_platform_ticks(void);

/* Forgets every key, every scratch span, the pending partial line, CHURN and the counters.
 * The slot storage itself is not cleared: it is only read after it was written. */
void kv_reset(void);

/* Adds [base, base + pages * KV_PAGE_SIZE) to the scratch memory that DIRTY and CHURN write.
 * base must be page-aligned and the memory must belong to nobody else. Returns 0, or -1 when
 * KV_SCRATCH_MAX_SPANS spans are already registered or base is misaligned. */
int kv_scratch_add(void *base, uint64_t pages);
uint64_t kv_scratch_pages(void);

/* Feeds console input. Every complete line gets exactly one reply, written before this returns;
 * a partial line is kept until its '\n' arrives in a later call. */
void kv_feed(const uint8_t *bytes, size_t len);

/* CHURN support. kv_churn_due() says whether a round is owed for this tick count (CHURN is on
 * and `ticks` differs from the tick of the last round); kv_churn() runs that round. Rounds are
 * not queued: if the platform falls behind by several ticks, one round covers them all, so a
 * CHURN too large for the machine slows itself down instead of starving the console. */
int kv_churn_due(uint64_t ticks);
void kv_churn(uint64_t ticks);

/* Optional platform extension, for a platform with more to offer than the bare-metal guest (the
 * Linux program guests/linux/kvstored.c). Without one (the default, and after kv_reset()) the
 * engine behaves exactly as documented in docs/kvstore.md. Every hook runs on the thread that
 * called kv_feed(), inside it, and may be NULL.
 *
 * churn_start: a valid `CHURN n` calls churn_start(n) before its `OK` instead of arming the
 *   engine's own rounds (kv_churn_due() then stays false): the platform runs the rounds itself,
 *   e.g. on several CPUs. churn_start(0) must stop them before it returns, so that nothing it
 *   started is counted after the `OK`. A refused CHURN does not call it.
 * churn_pages: the pages the platform's rounds have written so far; INFO's pages= and
 *   kv_pages_dirtied() add it to the engine's own count.
 * command: offered every line the engine would answer `ERR unknown command` (the whole line,
 *   printable ASCII, without its '\n' and trailing '\r'); returns 1 if it wrote the line's one
 *   reply through kv_platform_write(), 0 to let the engine answer `ERR unknown command`. */
struct kv_extension {
    void (*churn_start)(uint64_t pages);
    uint64_t (*churn_pages)(void);
    int (*command)(const char *line, size_t len);
};

/* Installs ext (copied; NULL removes the extension). */
void kv_set_extension(const struct kv_extension *ext);

/* Counters behind INFO, for the platform and the tests. */
uint32_t kv_key_count(void);
uint64_t kv_pages_dirtied(void);

#ifdef __cplusplus
}
#endif

#endif
