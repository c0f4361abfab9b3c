/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A freestanding workload for the interpreter's end-to-end test. The same file is built twice:
 * as a guest (the project's guest flags, run by the interpreter, output through port 0xe9) and
 * for the host (linked into the test, output into a buffer). The outputs must match byte for
 * byte. It leans on what compiled C makes of integer code: string and number routines, a hash
 * table, sorting, 64-bit and 128-bit division, variadic formatting, jump tables, recursion,
 * bit tricks and struct copies.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

void program_emit(char c);
void program_main(void);

/* ---- string and memory routines ------------------------------------------------------------ */

static size_t str_len(const char* s) {
    size_t n = 0;
    while (s[n])
        ++n;
    return n;
}

static int str_cmp(const char* a, const char* b) {
    while (*a && *a == *b) {
        ++a;
        ++b;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static void* mem_copy(void* dst, const void* src, size_t n) {
    unsigned char* d = dst;
    const unsigned char* s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

static void* mem_move(void* dst, const void* src, size_t n) {
    unsigned char* d = dst;
    const unsigned char* s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        d += n;
        s += n;
        while (n--)
            *--d = *--s;
    }
    return dst;
}

static void mem_set(void* dst, int c, size_t n) {
    unsigned char* d = dst;
    while (n--)
        *d++ = (unsigned char)c;
}

static void puts_(const char* s) {
    while (*s)
        program_emit(*s++);
}

/* ---- formatting --------------------------------------------------------------------------- */

static char* fmt_u64(char* end, uint64_t v, unsigned base, int upper) {
    const char* digits = upper ? "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               : "0123456789abcdefghijklmnopqrstuvwxyz";
    *--end = 0;
    do {
        *--end = digits[v % base];
        v /= base;
    } while (v);
    return end;
}

static void print(const char* f, ...) {
    va_list ap;
    va_start(ap, f);
    char buf[72];
    for (; *f; ++f) {
        if (*f != '%') {
            program_emit(*f);
            continue;
        }
        ++f;
        int is_long = 0;
        int width = 0;
        while (*f >= '0' && *f <= '9')
            width = width * 10 + (*f++ - '0');
        if (*f == 'l') {
            is_long = 1;
            ++f;
        }
        const char* s = 0;
        switch (*f) {
        case 'd': {
            int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
            uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
            char* p = fmt_u64(buf + sizeof buf, u, 10, 0);
            if (v < 0)
                *--p = '-';
            s = p;
            break;
        }
        case 'u': s = fmt_u64(buf + sizeof buf, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0); break;
        case 'x': s = fmt_u64(buf + sizeof buf, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, 0); break;
        case 'X': s = fmt_u64(buf + sizeof buf, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, 1); break;
        case 'o': s = fmt_u64(buf + sizeof buf, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 8, 0); break;
        case 'b': s = fmt_u64(buf + sizeof buf, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 2, 0); break;
        case 's': s = va_arg(ap, const char*); break;
        case 'c': buf[0] = (char)va_arg(ap, int); buf[1] = 0; s = buf; break;
        case '%': s = "%"; break;
        default: buf[0] = '%'; buf[1] = *f; buf[2] = 0; s = buf; break;
        }
        for (int pad = width - (int)str_len(s); pad > 0; --pad)
            program_emit(' ');
        puts_(s);
    }
    va_end(ap);
}

static int64_t parse_i64(const char* s) {
    int neg = 0;
    int64_t v = 0;
    while (*s == ' ')
        ++s;
    if (*s == '-') {
        neg = 1;
        ++s;
    }
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return neg ? -v : v;
}

/* ---- pseudo-random numbers ---------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* ---- hash table with string keys (open addressing, deletion by tombstones) ------------------ */

#define HT_SLOTS 512
struct entry {
    char key[24];
    int64_t value;
    uint8_t state; /* 0 empty, 1 used, 2 deleted */
};
static struct entry table[HT_SLOTS];

static uint32_t hash_str(const char* s) {
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h;
}

static struct entry* ht_find(const char* key, int for_insert) {
    uint32_t i = hash_str(key) % HT_SLOTS;
    struct entry* tomb = 0;
    for (unsigned probes = 0; probes < HT_SLOTS; ++probes, i = (i + 1) % HT_SLOTS) {
        struct entry* e = &table[i];
        if (e->state == 0)
            return for_insert ? (tomb ? tomb : e) : 0;
        if (e->state == 2) {
            if (!tomb)
                tomb = e;
            continue;
        }
        if (str_cmp(e->key, key) == 0)
            return e;
    }
    return for_insert ? tomb : 0;
}

static void key_for(char* out, uint64_t n) {
    char tmp[24];
    char* s = fmt_u64(tmp + sizeof tmp, n * 2654435761u % 100000, 10, 0);
    out[0] = 'k';
    mem_copy(out + 1, s, str_len(s) + 1);
}

static void test_hash_table(void) {
    char key[24];
    int inserted = 0, found = 0, deleted = 0;
    int64_t sum = 0;
    for (uint64_t n = 0; n < 300; ++n) {
        key_for(key, n);
        struct entry* e = ht_find(key, 1);
        if (e->state != 1) {
            mem_copy(e->key, key, str_len(key) + 1);
            e->state = 1;
            e->value = 0;
            ++inserted;
        }
        e->value += (int64_t)n * 7 - 1000;
    }
    for (uint64_t n = 0; n < 300; n += 3) {
        key_for(key, n);
        struct entry* e = ht_find(key, 0);
        if (e) {
            e->state = 2;
            ++deleted;
        }
    }
    for (uint64_t n = 0; n < 400; ++n) {
        key_for(key, n);
        struct entry* e = ht_find(key, 0);
        if (e) {
            ++found;
            sum += e->value;
        }
    }
    print("hash: inserted=%d deleted=%d found=%d sum=%ld\n", inserted, deleted, found, sum);
}

/* ---- sorting ------------------------------------------------------------------------------ */

static void quick_sort(int64_t* a, long lo, long hi) {
    while (lo < hi) {
        int64_t pivot = a[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot)
                ++i;
            while (a[j] > pivot)
                --j;
            if (i <= j) {
                int64_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                ++i;
                --j;
            }
        }
        if (j - lo < hi - i) {
            quick_sort(a, lo, j);
            lo = i;
        } else {
            quick_sort(a, i, hi);
            hi = j;
        }
    }
}

static int cmp_u32(const void* a, const void* b) {
    uint32_t x = *(const uint32_t*)a, y = *(const uint32_t*)b;
    return (x > y) - (x < y);
}

static void insertion_sort(void* base, size_t n, size_t size, int (*cmp)(const void*, const void*)) {
    unsigned char* b = base;
    unsigned char tmp[16];
    for (size_t i = 1; i < n; ++i) {
        mem_copy(tmp, b + i * size, size);
        size_t j = i;
        while (j > 0 && cmp(b + (j - 1) * size, tmp) > 0) {
            mem_copy(b + j * size, b + (j - 1) * size, size);
            --j;
        }
        mem_copy(b + j * size, tmp, size);
    }
}

static int64_t numbers[2000];
static uint32_t small[200];

static void test_sort(void) {
    for (int i = 0; i < 2000; ++i)
        numbers[i] = (int64_t)rng_next() >> (i % 40);
    quick_sort(numbers, 0, 1999);
    int sorted = 1;
    uint64_t mix = 0;
    for (int i = 1; i < 2000; ++i) {
        sorted &= numbers[i - 1] <= numbers[i];
        mix = (mix * 31) ^ (uint64_t)numbers[i];
    }
    for (int i = 0; i < 200; ++i)
        small[i] = (uint32_t)rng_next();
    insertion_sort(small, 200, sizeof small[0], cmp_u32);
    print("sort: sorted=%d min=%ld max=%ld mix=%lx small[0]=%u small[199]=%u\n", sorted,
          numbers[0], numbers[1999], mix, small[0], small[199]);
}

/* ---- division-heavy arithmetic ------------------------------------------------------------ */

static uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* m < 2^32, so the products fit in 64 bits. */
static uint64_t pow_mod(uint64_t b, uint64_t e, uint64_t m) {
    uint64_t r = 1, x = b % m;
    while (e) {
        if (e & 1)
            r = r * x % m;
        x = x * x % m;
        e >>= 1;
    }
    return r;
}

/* 128-by-64-bit division with DIV itself (libgcc's __udivti3 is not linked: it is built with
 * SSE). Needs hi < d. */
static uint64_t div128(uint64_t hi, uint64_t lo, uint64_t d, uint64_t* rem) {
    uint64_t q, r;
    __asm__("divq %4" : "=a"(q), "=d"(r) : "a"(lo), "d"(hi), "rm"(d));
    *rem = r;
    return q;
}

static uint64_t popcount64(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (x * 0x0101010101010101ull) >> 56;
}

static int is_prime(uint64_t n) {
    if (n < 2)
        return 0;
    for (uint64_t p = 2; p * p <= n; ++p)
        if (n % p == 0)
            return 0;
    return 1;
}

static void test_division(void) {
    /* Accumulated unsigned: signed overflow would be undefined, and the host and guest builds
     * must compute the same thing. Divisors of -1 are avoided (INT_MIN / -1 traps). */
    uint64_t acc = 0, sacc = 0;
    for (int i = 0; i < 20000; ++i) {
        uint64_t a = rng_next(), b = (rng_next() >> (i % 60)) | 1;
        int64_t sa = (int64_t)rng_next() >> (i % 50), sb = ((int64_t)rng_next() >> (i % 61)) | 1;
        if (sb == -1)
            sb = 3;
        int32_t sb32 = (int32_t)sb == -1 ? 5 : (int32_t)sb;
        acc += a / b + a % b;
        sacc += (uint64_t)(sa / sb) - (uint64_t)(sa % sb);
        acc ^= (uint32_t)a / (uint32_t)(b | 3) + (uint16_t)a % (uint16_t)(b | 5);
        sacc += (uint64_t)(int64_t)((int32_t)sa / sb32) + (uint64_t)(int64_t)((int8_t)sa % (int8_t)sb);
    }
    uint64_t g = 0;
    for (int i = 0; i < 500; ++i)
        g += gcd(rng_next() >> 20, rng_next() >> 30);
    int primes = 0;
    for (uint64_t n = 1000000; n < 1002000; ++n)
        primes += is_prime(n);
    unsigned __int128 big = (unsigned __int128)rng_next() * rng_next();
    uint64_t hi = (uint64_t)(big >> 64), r = 0;
    uint64_t q = div128(hi % 1000000007u, (uint64_t)big, 1000000007u, &r) ^ (hi / 1000000007u);
    print("div: acc=%lx sacc=%lx gcd=%lu primes=%d pow=%lu q=%lx r=%lu\n", acc, sacc, g, primes,
          pow_mod(3, 1000000006, 1000000007), q, r);
}

/* ---- bit manipulation --------------------------------------------------------------------- */

static uint32_t crc_table[256];
static uint32_t crc32(const uint8_t* p, size_t n) {
    if (!crc_table[1]) {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k)
                c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    }
    uint32_t c = 0xffffffffu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static uint64_t rotl(uint64_t x, unsigned n) { return (x << (n & 63)) | (x >> ((64 - n) & 63)); }

struct flags {
    unsigned a : 3;
    unsigned b : 7;
    signed c : 5;
    unsigned d : 17;
};

static void test_bits(void) {
    uint64_t x = 0x0123456789abcdefull, pop = 0, lead = 0, trail = 0, rot = 0;
    for (int i = 0; i < 1000; ++i) {
        x = rng_next();
        pop += popcount64(x);
        lead += (uint64_t)__builtin_clzll(x | 1);
        trail += (uint64_t)__builtin_ctzll(x | (1ull << 63));
        rot ^= rotl(x, (unsigned)i) + __builtin_bswap64(x) + __builtin_bswap32((uint32_t)x);
    }
    struct flags f = {0};
    for (int i = 0; i < 100; ++i) {
        f.a += 3;
        f.b ^= (unsigned)i;
        f.c -= 3;
        f.d += (unsigned)i * 1000;
    }
    uint8_t buf[1000];
    for (int i = 0; i < 1000; ++i)
        buf[i] = (uint8_t)(i * 7 + (i >> 3));
    int16_t s16 = -12345;
    uint16_t u16 = (uint16_t)s16 >> 3;
    int8_t s8 = (int8_t)(u16 * 3);
    print("bits: pop=%lu lead=%lu trail=%lu rot=%lx crc=%x f=%u,%u,%d,%u s=%d,%u,%d\n", pop, lead,
          trail, rot, crc32(buf, sizeof buf), f.a, f.b, f.c, f.d, s16 >> 2, u16, s8);
}

/* ---- control flow: switch tables, recursion, function pointers ------------------------------ */

static int classify(int c) {
    switch (c) {
    case 0: return 11;
    case 1: return 23;
    case 2: return 5;
    case 3: return 99;
    case 4: return -7;
    case 5: return 64;
    case 6: return 3;
    case 7: return 41;
    case 8: return 17;
    case 9: return 2;
    default: return c * 2;
    }
}

static uint64_t fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static unsigned ackermann(unsigned m, unsigned n) {
    if (m == 0)
        return n + 1;
    if (n == 0)
        return ackermann(m - 1, 1);
    return ackermann(m - 1, ackermann(m, n - 1));
}

typedef int64_t (*binop)(int64_t, int64_t);
static int64_t op_add(int64_t a, int64_t b) { return a + b; }
static int64_t op_sub(int64_t a, int64_t b) { return a - b; }
static int64_t op_mul(int64_t a, int64_t b) { return a * b; }
static int64_t op_max(int64_t a, int64_t b) { return a > b ? a : b; }
static binop ops[] = {op_add, op_sub, op_mul, op_max};

static void test_control(void) {
    int64_t s = 0;
    for (int i = 0; i < 1000; ++i)
        s += classify(i % 13);
    int64_t v = 1;
    for (int i = 0; i < 100; ++i)
        v = ops[i % 4](v, i + 3) % 1000003;
    print("control: switch=%ld fib=%lu ack=%u ops=%ld\n", s, fib(24), ackermann(2, 300), v);
}

/* ---- structs and text ----------------------------------------------------------------------- */

struct record {
    char name[20];
    int32_t id;
    int64_t balance;
    uint16_t flags;
    uint8_t tag;
};

static struct record make_record(int i) {
    struct record r;
    mem_set(&r, 0, sizeof r);
    char num[24];
    char* s = fmt_u64(num + sizeof num, (uint64_t)i * 37, 36, 0);
    r.name[0] = 'r';
    mem_copy(r.name + 1, s, str_len(s) + 1);
    r.id = i * 11 - 500;
    r.balance = (int64_t)i * i * -1234567;
    r.flags = (uint16_t)(i * 4099);
    r.tag = (uint8_t)i;
    return r;
}

static struct record records[64];

static void test_structs(void) {
    for (int i = 0; i < 64; ++i)
        records[i] = make_record(i);
    struct record best = records[0];
    for (int i = 1; i < 64; ++i)
        if (records[i].balance + records[i].id < best.balance + best.id || records[i].tag == 42)
            best = records[i];
    char text[128] = "the quick brown fox jumps over the lazy dog";
    mem_move(text + 4, text, 20);
    mem_move(text, text + 10, 30);
    int64_t parsed = parse_i64("  -9223372036854775") + parse_i64("123456789");
    print("structs: best=%s id=%d bal=%ld flags=%x text=%s parsed=%ld len=%u\n", best.name, best.id,
          best.balance, best.flags, text, parsed, (unsigned)str_len(text));
}

void program_main(void) {
    puts_("program start\n");
    test_hash_table();
    test_sort();
    test_division();
    test_bits();
    test_control();
    test_structs();
    print("%5d|%3d|%c|%o|%b|%X|%%|%lx\n", 42, -7, 'z', 511u, 10u, 0xbeefu, 0xfedcba9876543210ull);
    puts_("program end\n");
}
