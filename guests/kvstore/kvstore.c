/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kvstore protocol engine (see kvstore.h and docs/kvstore.md). Plain C, no hardware access,
 * no allocation: all state is static, sized at compile time.
 *
 * Cost matters more than usual here: in the guest every instruction of this file is emulated
 * (about 1.5 M instructions/s under KVM on the test machines), so each command is a handful of
 * linear passes over at most one line, and the DIRTY/CHURN loop is a few instructions a page.
 */
#include "kvstore.h"

#include "libc.h"

#ifdef KV_GUEST
/* The slot array is 2 MiB. In the guest it lives in its own NOBITS section that the entry code
 * does not clear (the loader hands over zeroed memory anyway), so boot does not write 536 pages
 * that every first checkpoint would then have to carry. A slot is only read after a write. */
#define KV_TABLE_SECTION __attribute__((section(".bss.kvtable")))
#else
#define KV_TABLE_SECTION
#endif

/* Open addressing with linear probing over twice as many positions as slots: the load factor
 * stays at or below 1/2, so probe runs are short and a free position always exists. */
#define KV_INDEX_SIZE (2u * KV_TABLE_CAPACITY)

/* The largest record a line can create: INCR with a 507-byte key ("INCR " + key = 512 bytes)
 * stores up to 20 digits; SET stores key + value <= 507 bytes ("SET " + key + " " + value). */
#define KV_SLOT_DATA 528u

struct kv_slot {
    uint16_t key_len;
    uint16_t val_len;
    uint32_t hash; /* hash_key() of the key; for a free slot: the next free slot + 1 (0 = end) */
    char data[KV_SLOT_DATA]; /* the key bytes, then the value bytes */
};

_Static_assert(KV_LINE_MAX - 5 + 20 <= KV_SLOT_DATA, "an INCR record must fit a slot");
_Static_assert(KV_TABLE_CAPACITY < 65535u, "index entries are 16-bit slot numbers + 1");
_Static_assert((KV_INDEX_SIZE & (KV_INDEX_SIZE - 1)) == 0, "index size must be a power of two");

static struct kv_slot g_slots[KV_TABLE_CAPACITY] KV_TABLE_SECTION;
static uint16_t g_index[KV_INDEX_SIZE]; /* 0 = empty position, else slot number + 1 */
static uint32_t g_slots_used;           /* slots [0, g_slots_used) were handed out at least once */
static uint32_t g_free_head;            /* first free slot + 1; 0 = the free list is empty */
static uint32_t g_keys;

/* One byte more than the longest line so a full-length line can still carry its \r. */
static char g_line[KV_LINE_MAX + 1];
static uint32_t g_line_len;
static int g_line_overflow;       /* the line grew too long; its further bytes are discarded */
static uint32_t g_line_unprintable; /* bytes outside 0x20..0x7e in the line, '\r' included */

struct kv_span {
    uint8_t *base;
    uint64_t pages;
};

static struct kv_span g_spans[KV_SCRATCH_MAX_SPANS];
static uint32_t g_span_count;
static uint64_t g_scratch_pages;
static uint32_t g_cursor_span; /* DIRTY and CHURN share one cursor that cycles the scratch */
static uint64_t g_cursor_page;
static uint64_t g_pages_dirtied;

static uint64_t g_churn_pages; /* 0 = CHURN off */
static uint64_t g_churn_tick;  /* tick count of the last CHURN round (or of the CHURN command) */

static struct kv_extension g_ext; /* all NULL: no platform extension (kvstore.h) */

/* ---- eight bytes at a time ------------------------------------------------------------- */

/* The long-line paths (scanning, hashing, comparing keys) look at a 64-bit word per step:
 * under emulation that is about a sixth of the instructions of a byte loop. Unaligned loads
 * are fine on x86; the type tells gcc that the access may alias anything. */
typedef uint64_t kv_word __attribute__((aligned(1), may_alias));

#define KV_ONES 0x0101010101010101ull
#define KV_HIGHS 0x8080808080808080ull

static inline uint64_t load_word(const void *p)
{
    return *(const kv_word *)p;
}

/* Non-zero iff some byte of w is below 0x20 or above 0x7e, i.e. not printable ASCII (the
 * classic "has a byte less than n" / "more than n" tests, exact for n <= 128 / n < 128). */
static inline uint64_t word_has_unprintable(uint64_t w)
{
    uint64_t below = (w - KV_ONES * 0x20) & ~w & KV_HIGHS;
    uint64_t above = ((w + KV_ONES * (127 - 0x7e)) | w) & KV_HIGHS;
    return below | above;
}

/* Non-zero iff some byte of w is a space. */
static inline uint64_t word_has_space(uint64_t w)
{
    uint64_t x = w ^ (KV_ONES * ' ');
    return (x - KV_ONES) & ~x & KV_HIGHS;
}

/* ---- replies ---------------------------------------------------------------------------- */

/* Sized for the longest reply, a stored value (at most KV_SLOT_DATA bytes) plus '\n'. */
static char g_out[KV_SLOT_DATA + 64];
static size_t g_out_len;

/* A fixed reply; sizeof counts the NUL, which becomes the '\n'. */
#define REPLY(text) kv_platform_write(text "\n", sizeof(text))

#define OUT_LIT(text) out_bytes(text, sizeof(text) - 1)

static void out_bytes(const char *bytes, size_t len)
{
    memcpy(g_out + g_out_len, bytes, len);
    g_out_len += len;
}

static void out_u64(uint64_t value)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n] = (char)('0' + value % 10);
        value /= 10;
        n++;
    } while (value != 0);
    out_bytes(digits + sizeof digits - n, n);
}

static void out_send(void)
{
    g_out[g_out_len++] = '\n';
    kv_platform_write(g_out, g_out_len);
    g_out_len = 0;
}

/* ---- small parsers ---------------------------------------------------------------------- */

struct kv_token {
    const char *p;
    size_t len;
};

static const char *skip_spaces(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    return p;
}

static struct kv_token next_word(const char **cursor, const char *end)
{
    const char *p = skip_spaces(*cursor, end);
    const char *start = p;
    while (end - p >= 8 && word_has_space(load_word(p)) == 0)
        p += 8;
    while (p < end && *p != ' ')
        p++;
    *cursor = p;
    struct kv_token t = {start, (size_t)(p - start)};
    return t;
}

/* Command names are matched without regard to case: "ping" at a terminal works too. */
static int is_command(struct kv_token t, const char *upper_name, size_t name_len)
{
    if (t.len != name_len)
        return 0;
    for (size_t i = 0; i < name_len; i++) {
        char c = t.p[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - ('a' - 'A'));
        if (c != upper_name[i])
            return 0;
    }
    return 1;
}

#define IS(t, name) is_command((t), name, sizeof(name) - 1)

/* Decimal digits only (no sign, no spaces), at most UINT64_MAX. */
static int parse_u64(struct kv_token t, uint64_t *out)
{
    if (t.len == 0)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < t.len; i++) {
        unsigned d = (unsigned)(t.p[i] - '0');
        if (d > 9)
            return -1;
        if (v > UINT64_MAX / 10 || (v == UINT64_MAX / 10 && d > UINT64_MAX % 10))
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* An optional '-', then decimal digits; the whole text must be the number and fit int64_t. */
static int parse_i64(const char *p, size_t len, int64_t *out)
{
    int negative = len > 0 && p[0] == '-';
    struct kv_token digits = {p + negative, len - (size_t)negative};
    uint64_t magnitude;
    if (parse_u64(digits, &magnitude) != 0)
        return -1;
    if (negative) {
        if (magnitude > (uint64_t)INT64_MAX + 1)
            return -1;
        *out = (int64_t)(0 - magnitude); /* two's complement; INT64_MIN included */
    } else {
        if (magnitude > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)magnitude;
    }
    return 0;
}

/* Formats value into buf (at least 20 bytes), returns the length. */
static size_t format_i64(int64_t value, char *buf)
{
    char digits[20];
    size_t n = 0;
    uint64_t magnitude = value < 0 ? 0 - (uint64_t)value : (uint64_t)value;
    do {
        digits[sizeof digits - 1 - n] = (char)('0' + magnitude % 10);
        magnitude /= 10;
        n++;
    } while (magnitude != 0);
    size_t len = 0;
    if (value < 0)
        buf[len++] = '-';
    memcpy(buf + len, digits + sizeof digits - n, n);
    return len + n;
}

/* ---- the key table ---------------------------------------------------------------------- */

/* A word-at-a-time multiplicative hash with a final avalanche, so that the low bits the index
 * uses depend on every byte of the key. */
static uint32_t hash_key(const char *key, size_t len)
{
    const uint64_t k = 0x9e3779b97f4a7c15ull;
    uint64_t h = k ^ len;
    const char *p = key;
    size_t left = len;
    for (; left >= 8; p += 8, left -= 8) {
        h = (h ^ load_word(p)) * k;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < left; i++)
        tail |= (uint64_t)(uint8_t)p[i] << (8 * i);
    h = (h ^ tail) * k;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* Returns the index position that holds key, or -1 and sets *free_pos to the empty position
 * that ends its probe run (where an insert must go). Terminates because the index always has
 * empty positions (load factor <= 1/2). */
static int32_t table_find(const char *key, size_t len, uint32_t hash, uint32_t *free_pos)
{
    uint32_t pos = hash & (KV_INDEX_SIZE - 1);
    for (;;) {
        uint32_t entry = g_index[pos];
        if (entry == 0) {
            *free_pos = pos;
            return -1;
        }
        const struct kv_slot *s = &g_slots[entry - 1];
        if (s->hash == hash && s->key_len == len && memcmp(s->data, key, len) == 0)
            return (int32_t)pos;
        pos = (pos + 1) & (KV_INDEX_SIZE - 1);
    }
}

/* Takes a slot for a new key at the empty index position pos; NULL when the table is full. */
static struct kv_slot *table_insert(uint32_t pos, const char *key, size_t len, uint32_t hash)
{
    uint32_t slot;
    if (g_free_head != 0) {
        slot = g_free_head - 1;
        g_free_head = g_slots[slot].hash;
    } else if (g_slots_used < KV_TABLE_CAPACITY) {
        slot = g_slots_used++;
    } else {
        return NULL;
    }
    struct kv_slot *s = &g_slots[slot];
    s->key_len = (uint16_t)len;
    s->val_len = 0;
    s->hash = hash;
    memcpy(s->data, key, len);
    g_index[pos] = (uint16_t)(slot + 1);
    g_keys++;
    return s;
}

/* Removes the key at index position pos. Linear probing has no tombstones here: the entries
 * after the hole that could not live there move back (backward-shift deletion), so lookups stay
 * as short after many DELs as after none. */
static void table_remove(uint32_t pos)
{
    const uint32_t mask = KV_INDEX_SIZE - 1;
    uint32_t slot = g_index[pos] - 1u;
    g_slots[slot].hash = g_free_head;
    g_free_head = slot + 1;
    g_keys--;

    uint32_t hole = pos;
    uint32_t next = pos;
    for (;;) {
        next = (next + 1) & mask;
        uint32_t entry = g_index[next];
        if (entry == 0)
            break;
        uint32_t home = g_slots[entry - 1].hash & mask;
        /* The entry may stay if its home lies cyclically in (hole, next]: moving it back
         * would put it before its home, where a probe never looks. */
        int stays = hole <= next ? (hole < home && home <= next) : (hole < home || home <= next);
        if (stays)
            continue;
        g_index[hole] = (uint16_t)entry;
        hole = next;
    }
    g_index[hole] = 0;
}

/* ---- scratch memory --------------------------------------------------------------------- */

/* Writes a new value into the first word of each of the next n scratch pages (n must not exceed
 * the scratch size, so the pages are distinct). The value is the running page count, which is
 * different from whatever the page held before: a replica that missed the write differs. */
static void touch_pages(uint64_t n)
{
    uint64_t counter = g_pages_dirtied;
    while (n != 0) {
        const struct kv_span *span = &g_spans[g_cursor_span];
        uint64_t left = span->pages - g_cursor_page;
        uint64_t run = n < left ? n : left;
        volatile uint64_t *word = (volatile uint64_t *)(span->base + g_cursor_page * KV_PAGE_SIZE);
        n -= run;
        g_cursor_page += run;
        for (; run != 0; run--) {
            *word = ++counter;
            word += KV_PAGE_SIZE / sizeof *word;
        }
        if (g_cursor_page == span->pages) {
            g_cursor_page = 0;
            if (++g_cursor_span == g_span_count)
                g_cursor_span = 0;
        }
    }
    g_pages_dirtied = counter;
}

/* ---- commands --------------------------------------------------------------------------- */

static void cmd_set(struct kv_token key, const char *value, size_t value_len)
{
    uint32_t hash = hash_key(key.p, key.len);
    uint32_t free_pos;
    int32_t pos = table_find(key.p, key.len, hash, &free_pos);
    struct kv_slot *s;
    if (pos >= 0) {
        s = &g_slots[g_index[pos] - 1];
    } else {
        s = table_insert(free_pos, key.p, key.len, hash);
        if (s == NULL) {
            REPLY("ERR table full");
            return;
        }
    }
    memcpy(s->data + s->key_len, value, value_len);
    s->val_len = (uint16_t)value_len;
    REPLY("OK");
}

static void cmd_get(struct kv_token key)
{
    uint32_t free_pos;
    int32_t pos = table_find(key.p, key.len, hash_key(key.p, key.len), &free_pos);
    if (pos < 0) {
        REPLY("NIL");
        return;
    }
    const struct kv_slot *s = &g_slots[g_index[pos] - 1];
    out_bytes(s->data + s->key_len, s->val_len);
    out_send();
}

static void cmd_del(struct kv_token key)
{
    uint32_t free_pos;
    int32_t pos = table_find(key.p, key.len, hash_key(key.p, key.len), &free_pos);
    if (pos >= 0)
        table_remove((uint32_t)pos);
    REPLY("OK");
}

static void cmd_incr(struct kv_token key)
{
    uint32_t hash = hash_key(key.p, key.len);
    uint32_t free_pos;
    int32_t pos = table_find(key.p, key.len, hash, &free_pos);
    int64_t value = 0;
    struct kv_slot *s;
    if (pos >= 0) {
        s = &g_slots[g_index[pos] - 1];
        if (parse_i64(s->data + s->key_len, s->val_len, &value) != 0) {
            REPLY("ERR value is not an integer");
            return;
        }
        if (value == INT64_MAX) {
            REPLY("ERR increment would overflow");
            return;
        }
    } else {
        s = table_insert(free_pos, key.p, key.len, hash);
        if (s == NULL) {
            REPLY("ERR table full");
            return;
        }
    }
    value++;
    s->val_len = (uint16_t)format_i64(value, s->data + s->key_len);
    out_bytes(s->data + s->key_len, s->val_len);
    out_send();
}

/* Parses the page count of DIRTY/CHURN: a decimal number no larger than the scratch memory. */
static int page_count(struct kv_token arg, uint64_t *pages)
{
    if (parse_u64(arg, pages) != 0) {
        REPLY("ERR page count is not a number");
        return -1;
    }
    if (*pages > g_scratch_pages) {
        OUT_LIT("ERR page count exceeds scratch memory of ");
        out_u64(g_scratch_pages);
        OUT_LIT(" pages");
        out_send();
        return -1;
    }
    return 0;
}

static void cmd_dirty(struct kv_token arg)
{
    uint64_t pages;
    if (page_count(arg, &pages) != 0)
        return;
    touch_pages(pages);
    OUT_LIT("OK ");
    out_u64(pages);
    out_send();
}

static void cmd_churn(struct kv_token arg)
{
    uint64_t pages;
    if (page_count(arg, &pages) != 0)
        return;
    if (g_ext.churn_start != NULL) {
        g_ext.churn_start(pages);
        REPLY("OK");
        return;
    }
    g_churn_pages = pages;
    /* The first round belongs to the next tick, not to one that passed before the command. */
    g_churn_tick = kv_platform_ticks();
    REPLY("OK");
}

static void cmd_info(void)
{
    OUT_LIT("ticks=");
    out_u64(kv_platform_ticks());
    OUT_LIT(" keys=");
    out_u64(g_keys);
    OUT_LIT(" pages=");
    out_u64(kv_pages_dirtied());
    out_send();
}

/* Runs one complete line of printable ASCII (without '\n' and a trailing '\r'). Grammar: words separated
 * by runs of spaces; the value of SET is everything after the spaces that follow the key, so it
 * keeps inner and trailing spaces. */
static void execute(const char *line, size_t len)
{
    if (len == 0) {
        REPLY("ERR empty line");
        return;
    }

    const char *end = line + len;
    const char *cursor = line;
    struct kv_token cmd = next_word(&cursor, end);
    struct kv_token arg = next_word(&cursor, end);
    const char *rest = skip_spaces(cursor, end);
    size_t rest_len = (size_t)(end - rest);
    int no_args = arg.len == 0;
    int one_arg = arg.len != 0 && rest_len == 0;

    if (IS(cmd, "PING")) {
        if (no_args)
            REPLY("PONG");
        else
            REPLY("ERR usage: PING");
    } else if (IS(cmd, "GET")) {
        if (one_arg)
            cmd_get(arg);
        else
            REPLY("ERR usage: GET key");
    } else if (IS(cmd, "SET")) {
        if (arg.len != 0 && rest_len != 0)
            cmd_set(arg, rest, rest_len);
        else
            REPLY("ERR usage: SET key value");
    } else if (IS(cmd, "INCR")) {
        if (one_arg)
            cmd_incr(arg);
        else
            REPLY("ERR usage: INCR key");
    } else if (IS(cmd, "DEL")) {
        if (one_arg)
            cmd_del(arg);
        else
            REPLY("ERR usage: DEL key");
    } else if (IS(cmd, "DIRTY")) {
        if (one_arg)
            cmd_dirty(arg);
        else
            REPLY("ERR usage: DIRTY pages");
    } else if (IS(cmd, "CHURN")) {
        if (one_arg)
            cmd_churn(arg);
        else
            REPLY("ERR usage: CHURN pages");
    } else if (IS(cmd, "INFO")) {
        if (no_args)
            cmd_info();
        else
            REPLY("ERR usage: INFO");
    } else if (cmd.len == 0) {
        REPLY("ERR empty line"); /* only spaces */
    } else if (g_ext.command == NULL || !g_ext.command(line, len)) {
        REPLY("ERR unknown command");
    }
}

static void end_line(void)
{
    size_t len = g_line_len;
    int overflow = g_line_overflow;
    uint32_t unprintable = g_line_unprintable;
    g_line_len = 0;
    g_line_overflow = 0;
    g_line_unprintable = 0;
    if (len != 0 && g_line[len - 1] == '\r') {
        len--;
        unprintable--;
    }
    if (overflow || len > KV_LINE_MAX) {
        REPLY("ERR line too long");
        return;
    }
    /* Printable ASCII only: control bytes, DEL and bytes >= 0x80 make the line an error, which
     * keeps keys and values safe to echo on a terminal and every reply a single line. */
    if (unprintable != 0) {
        REPLY("ERR binary data in line");
        return;
    }
    execute(g_line, len);
}

static void line_append(const uint8_t *bytes, size_t len)
{
    size_t room = sizeof g_line - g_line_len;
    if (len > room) {
        g_line_overflow = 1; /* one reply at the '\n', however long the line gets */
        len = room;
    }
    memcpy(g_line + g_line_len, bytes, len);
    g_line_len += (uint32_t)len;
}

/* ---- the interface ---------------------------------------------------------------------- */

/* Scans for the end of each run of printable bytes (a word at a time) and copies the run in
 * one go; '\n' ends the line, any other byte outside the run is kept and counted. */
void kv_feed(const uint8_t *bytes, size_t len)
{
    const uint8_t *p = bytes;
    const uint8_t *end = bytes + len;
    while (p != end) {
        const uint8_t *run_end = p;
        while (end - run_end >= 8 && word_has_unprintable(load_word(run_end)) == 0)
            run_end += 8;
        while (run_end != end && (uint8_t)(*run_end - 0x20) <= 0x7e - 0x20)
            run_end++;
        line_append(p, (size_t)(run_end - p));
        if (run_end == end)
            return;
        p = run_end + 1;
        if (*run_end == '\n') {
            end_line();
        } else {
            g_line_unprintable++;
            line_append(run_end, 1);
        }
    }
}

void kv_reset(void)
{
    memset(g_index, 0, sizeof g_index);
    g_slots_used = 0;
    g_free_head = 0;
    g_keys = 0;
    g_line_len = 0;
    g_line_overflow = 0;
    g_line_unprintable = 0;
    g_span_count = 0;
    g_scratch_pages = 0;
    g_cursor_span = 0;
    g_cursor_page = 0;
    g_pages_dirtied = 0;
    g_churn_pages = 0;
    g_churn_tick = 0;
    g_out_len = 0;
    memset(&g_ext, 0, sizeof g_ext);
}

void kv_set_extension(const struct kv_extension *ext)
{
    if (ext != NULL)
        g_ext = *ext;
    else
        memset(&g_ext, 0, sizeof g_ext);
}

int kv_scratch_add(void *base, uint64_t pages)
{
    if (((uintptr_t)base & (KV_PAGE_SIZE - 1)) != 0 || g_span_count == KV_SCRATCH_MAX_SPANS)
        return -1;
    if (pages == 0)
        return 0;
    g_spans[g_span_count].base = (uint8_t *)base;
    g_spans[g_span_count].pages = pages;
    g_span_count++;
    g_scratch_pages += pages;
    return 0;
}

uint64_t kv_scratch_pages(void)
{
    return g_scratch_pages;
}

int kv_churn_due(uint64_t ticks)
{
    return g_churn_pages != 0 && ticks != g_churn_tick;
}

void kv_churn(uint64_t ticks)
{
    if (!kv_churn_due(ticks))
        return;
    g_churn_tick = ticks;
    touch_pages(g_churn_pages);
}

uint32_t kv_key_count(void)
{
    return g_keys;
}

uint64_t kv_pages_dirtied(void)
{
    if (g_ext.churn_pages != NULL)
        return g_pages_dirtied + g_ext.churn_pages();
    return g_pages_dirtied;
}
