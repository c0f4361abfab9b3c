/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The four C library functions the guest provides for itself (libc.c), declared here so the
 * engine needs no hosted <string.h>. On the host the same declarations resolve to the C library.
 * gcc may also emit calls to memcpy/memset on its own (struct copies), which is why they exist
 * even where the source never names them.
 */
#ifndef COLOD_GUESTS_KVSTORE_LIBC_H
#define COLOD_GUESTS_KVSTORE_LIBC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void *memset(void *dst, int value, size_t len);
void *memcpy(void *__restrict dst, const void *__restrict src, size_t len);
int memcmp(const void *a, const void *b, size_t len);
size_t strlen(const char *s);

#ifdef __cplusplus
}
#endif

#endif
