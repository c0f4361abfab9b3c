/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * memset/memcpy/memcmp/strlen for the freestanding guest. memset and memcpy are single REP
 * string instructions: under an instruction-by-instruction emulator one REP instruction costs
 * far less than a loop, and writing them in asm also keeps gcc from turning a C loop here back
 * into a call to memset itself.
 */
#include "libc.h"

#include <stdint.h>

void *memset(void *dst, int value, size_t len)
{
    void *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(len) : "a"(value) : "memory");
    return dst;
}

void *memcpy(void *__restrict dst, const void *__restrict src, size_t len)
{
    void *d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(len) : : "memory");
    return dst;
}

int memcmp(const void *a, const void *b, size_t len)
{
    typedef uint64_t word __attribute__((aligned(1), may_alias));
    const uint8_t *x = a;
    const uint8_t *y = b;
    /* Equal words are skipped eight bytes at a time; the byte loop then finds the difference. */
    while (len >= 8 && *(const word *)x == *(const word *)y) {
        x += 8;
        y += 8;
        len -= 8;
    }
    for (size_t i = 0; i < len; i++) {
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}
