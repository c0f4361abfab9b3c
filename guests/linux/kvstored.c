/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kvstored: the kvstore protocol engine (guests/kvstore/kvstore.c, the very file the embedded
 * guest runs) as a static Linux program, the workload of the Linux test guest. It serves the
 * console protocol of docs/kvstore.md on a serial tty, byte for byte what builtin:kvstore
 * answers, so every test written against the embedded guest runs against a Linux guest too.
 *
 *   kvstored [--tty PATH] [--scratch-mib N] [--tcp-port N] [--sink-port N] [--data-dir DIR]
 *
 * --tty PATH        the console (default /dev/ttyS0); the unit test passes a pty
 * --scratch-mib N   scratch memory for DIRTY/CHURN (default: half of the RAM, at least 4 MiB)
 * --tcp-port N      also serve the protocol on this TCP port, all IPv4 addresses (default 4555;
 *                   0: no TCP service)
 * --sink-port N     a bulk sink on this TCP port (default 4556; 0: none): it reads each
 *                   connection to its end and then replies with the number of bytes it read
 *                   (a decimal line), one connection at a time, on a thread of its own that
 *                   never touches the engine. Benchmarks measure bulk throughput with it.
 * --data-dir DIR    where APPEND, RECORDS and RECORD keep their records (DIR/records); /init
 *                   passes the guest's disk, mounted on /data, when it has one. Without it those
 *                   commands answer `ERR no disk`.
 *
 * What differs from the embedded guest, and why:
 * - ticks= counts 10 ms steps of CLOCK_MONOTONIC since kvstored started (100 Hz, like the
 *   guest's PIT), not interrupts.
 * - Scratch memory is one anonymous private mapping (MAP_NORESERVE: only pages DIRTY/CHURN
 *   write ever get memory), registered with the engine as its one span.
 * - CHURN runs on every CPU this process may run on: one worker thread per CPU, pinned to it,
 *   each writing its share of the n pages of a tick into its own part of the scratch mapping
 *   (kv_set_extension() hands CHURN to this file). The engine itself stays single-threaded:
 *   only the main thread calls into it; the workers talk to it through atomics.
 * - POWEROFF (an extension; the engine answers `ERR unknown command` to it): replies `OK`,
 *   waits until the reply has left the tty, sync()s and ends kvstored with status 0. The
 *   initramfs /init that started kvstored then powers the machine off (`poweroff -f`). Only
 *   when kvstored is itself PID 1 (booted with rdinit=/bin/kvstored) does it call
 *   reboot(RB_POWER_OFF) directly, since nobody else could: a kvstored started by hand on a
 *   host (the unit test, often as root) must never power that host off.
 * - REBOOT (an extension, like POWEROFF): replies `OK`, waits for the reply to leave, sync()s
 *   and ends kvstored with status 3, on which /init reboots the machine (`reboot -f`; as PID 1
 *   kvstored calls reboot(RB_AUTOBOOT) itself). The kernel reboots through the ACPI reset
 *   register, and colod reboots the guest in place.
 * - HWRNG n (an extension, 1 <= n <= 64): reads n bytes from /dev/hwrng (the virtio-rng) and
 *   replies with them in lower-case hex, or `ERR hwrng: REASON`. Tests use it to see that a
 *   COLO secondary's guest gets the very bytes the primary's did.
 * - APPEND token, RECORDS, RECORD n (extensions; tests of the disk use them): numbered records
 *   in the file DIR/records of --data-dir, one line `<n> <token>` each, n counting from 1.
 *   APPEND (a token of 1 to 64 printable bytes, no space) writes the next line and fsync()s the
 *   file, and replies `OK n` only after fsync returned: an acknowledged record is on the disk.
 *   RECORDS replies `<count> <last n>` (`0 0` for none), read from the file each time; RECORD n
 *   replies record n's line or `ERR no record n`. Any failure (no --data-dir, an I/O error)
 *   is an `ERR ...` line, never an OK. A partial last line (a write cut short by a crash, never
 *   acknowledged) is cut off before the next APPEND.
 * - DISKSYNC n, DISKCHURN n (extensions; the disk benchmark uses them): DISKSYNC writes n
 *   blocks of 4 KiB one after the other, each synchronous (O_DIRECT | O_DSYNC), into DIR/bench
 *   and replies `OK n p50_us p99_us max_us total_us direct` (each write's latency as the guest
 *   saw it); DISKCHURN n has a thread write n blocks of 4 KiB (O_DIRECT, not synchronous) into
 *   DIR/churn every 10 ms tick until `DISKCHURN 0`, and replies `OK writes-done-so-far`. Both
 *   files are 4 MiB, allocated and written in full at first use, then overwritten in place.
 * - The same protocol on TCP (--tcp-port): one line per request, one reply line per request,
 *   up to TCP_CLIENTS_MAX clients at once beside the console. One thread serves them all: the
 *   main loop polls the tty, the listening socket and the clients (non-blocking sockets), so the
 *   engine keeps its one caller. Every source has its own partial line (struct line_buffer) and
 *   hands the engine whole lines only, so lines of different sources never mix; the engine's
 *   reply goes to the source whose line it answers (g_reply_to). A client's replies that its
 *   socket does not take at once wait in its own buffer; a client that lets more than
 *   TCP_OUTPUT_MAX bytes pile up there (it does not read) is dropped, so it never stalls the
 *   console or the other clients. The console itself is written blocking, as ever. The service
 *   is optional: a listener that cannot be set up is reported once on the console
 *   (`kvstored: tcp: ...`), and the console goes on alone.
 *
 * It writes nothing to the tty but protocol replies and that one `kvstored: tcp:` line, and
 * nothing to stderr but the one line of a fatal start-up error (exit status 1); after start-up
 * it never exits on its own.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../kvstore/kvstore.h"

#define TICK_NS 10000000ll /* 100 Hz, the embedded guest's PIT rate */
#define NS_PER_S 1000000000ll
#define MIN_SCRATCH_BYTES (4ull << 20)

static int g_tty = -1;
static struct timespec g_start; /* CLOCK_MONOTONIC at start-up: tick 0 */

static _Noreturn void fatal(const char *what, const char *detail)
{
    fprintf(stderr, "kvstored: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

/* ---- time ------------------------------------------------------------------------------- */

static int64_t ns_since_start(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - g_start.tv_sec) * NS_PER_S + (now.tv_nsec - g_start.tv_nsec);
}

static uint64_t ticks_now(void)
{
    return (uint64_t)(ns_since_start() / TICK_NS);
}

/* Sleeps until tick `tick` begins. An absolute deadline, so a late wake-up does not push the
 * following ticks later (no drift), and EINTR just sleeps again. */
static void sleep_until_tick(uint64_t tick)
{
    int64_t ns = (int64_t)tick * TICK_NS;
    struct timespec at = {g_start.tv_sec + ns / NS_PER_S, g_start.tv_nsec + ns % NS_PER_S};
    if (at.tv_nsec >= NS_PER_S) {
        at.tv_sec++;
        at.tv_nsec -= NS_PER_S;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR) {
    }
}

/* ---- sources of lines: the console and the TCP clients ---------------------------------- */

#define TCP_CLIENTS_MAX 16          /* clients served at once; one more is closed at once */
#define TCP_OUTPUT_MAX (256u << 10) /* replies a client may leave unread in kvstored, in bytes */
#define TCP_DRAIN_NS (5 * NS_PER_S) /* how long a POWEROFF/REBOOT over TCP waits for its OK */
#define READ_CHUNK 4096

/* Bytes kept of a line: the engine's longest line, its '\r', and one byte more, which is all the
 * engine needs to see that a line is too long (it answers `ERR line too long` to any line
 * longer than the first two together). Bytes beyond are dropped here. */
#define LINE_KEEP (KV_LINE_MAX + 2u)

/* One source's line so far. The engine only ever gets whole lines, one kv_feed() each, so its
 * own partial line is always empty between two of them and sources never mix. */
struct line_buffer {
    char bytes[LINE_KEEP + 1]; /* + the '\n' handed to the engine */
    size_t len;
};

struct client {
    int fd;                 /* -1: a free slot */
    int dropped;            /* a send failed or too much output piled up: closed by the loop */
    int input_closed;       /* the client sent its FIN: closed once its replies are out */
    struct line_buffer line;
    char *out;              /* replies its socket has not taken yet: out[out_start, out_end) */
    size_t out_start, out_end;
};

static struct line_buffer g_console_line;
static struct client g_clients[TCP_CLIENTS_MAX];
static int g_listener = -1;
/* The client whose line the engine is answering; NULL while it answers the console. */
static struct client *g_reply_to;

static size_t client_pending(const struct client *c)
{
    return c->out_end - c->out_start;
}

/* Sends what the socket takes now, without waiting. A hard error drops the client. */
static void client_flush(struct client *c)
{
    while (!c->dropped && client_pending(c) != 0) {
        ssize_t n = send(c->fd, c->out + c->out_start, client_pending(c),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_start += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            c->dropped = 1;
        }
    }
    if (client_pending(c) == 0)
        c->out_start = c->out_end = 0;
}

/* A reply for client c: straight to its socket when nothing of it is waiting, the rest queued
 * behind. Past TCP_OUTPUT_MAX queued bytes the client is dropped: it is not reading, and
 * neither the console nor the other clients may wait for it. */
static void client_write(struct client *c, const char *bytes, size_t len)
{
    if (c->dropped)
        return;
    if (client_pending(c) == 0) {
        while (len != 0) {
            ssize_t n = send(c->fd, bytes, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                bytes += n;
                len -= (size_t)n;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else {
                c->dropped = 1;
                return;
            }
        }
        if (len == 0)
            return;
    }
    if (client_pending(c) + len > TCP_OUTPUT_MAX) {
        c->dropped = 1;
        return;
    }
    if (c->out == NULL && (c->out = malloc(TCP_OUTPUT_MAX)) == NULL) {
        c->dropped = 1;
        return;
    }
    if (c->out_end + len > TCP_OUTPUT_MAX) {
        memmove(c->out, c->out + c->out_start, client_pending(c));
        c->out_end -= c->out_start;
        c->out_start = 0;
    }
    memcpy(c->out + c->out_end, bytes, len);
    c->out_end += len;
}

static void client_close(struct client *c)
{
    close(c->fd);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* Appends bytes to a source's line and hands the engine each line they complete, its replies
 * going to `source` (NULL: the console). Stops early once that client is dropped. */
static void feed_lines(struct line_buffer *line, struct client *source, const uint8_t *bytes,
                       size_t len)
{
    while (len != 0 && (source == NULL || !source->dropped)) {
        const uint8_t *nl = memchr(bytes, '\n', len);
        size_t part = nl != NULL ? (size_t)(nl - bytes) : len;
        size_t keep = LINE_KEEP - line->len;
        if (keep > part)
            keep = part;
        memcpy(line->bytes + line->len, bytes, keep);
        line->len += keep;
        if (nl == NULL)
            return;
        line->bytes[line->len++] = '\n';
        g_reply_to = source;
        kv_feed((const uint8_t *)line->bytes, line->len);
        g_reply_to = NULL;
        line->len = 0;
        bytes += part + 1;
        len -= part + 1;
    }
}

/* ---- the engine's platform -------------------------------------------------------------- */

/* A reply for a TCP client goes to client_write(). One for the console: the whole reply,
 * however the tty takes it: partial writes continue, EINTR retries, EAGAIN
 * (should the tty be non-blocking) waits for room. Any other error means the console is gone
 * (a hung-up pty): the reply cannot be delivered, and kvstored keeps serving whoever comes. */
void kv_platform_write(const char *bytes, size_t len)
{
    if (g_reply_to != NULL) {
        client_write(g_reply_to, bytes, len);
        return;
    }
    while (len != 0) {
        ssize_t n = write(g_tty, bytes, len);
        if (n > 0) {
            bytes += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = g_tty, .events = POLLOUT};
            (void)poll(&p, 1, 100);
        } else {
            return;
        }
    }
}

uint64_t kv_platform_ticks(void)
{
    return ticks_now();
}

/* ---- CHURN on every CPU ----------------------------------------------------------------- */

/* Worker 0 is the leader: it alone keeps time, sleeping with clock_nanosleep(TIMER_ABSTIME)
 * to each tick, and opens a round there; the other workers wait for the round on a futex. A
 * round is n pages in all, each worker writing its share into its own part of the scratch.
 * The leader opens no round while the last one is still running (it skips that tick), so a
 * CHURN too large for the machine slows itself down, like the engine's own rounds, and INFO's
 * pages grows by exactly n for every round: rounds are counted once all shares are written. */
struct worker {
    pthread_t thread;
    unsigned index;
    int cpu;
    uint64_t *base;   /* first word of its part of the scratch */
    uint64_t pages;   /* pages in its part */
    uint64_t cursor;  /* next page of its part to write; wraps */
    uint64_t stamp;   /* values it writes: its own tag in the top bits, then a running count */
};

static struct worker *g_workers;
static unsigned g_worker_count;

static _Atomic uint64_t g_churn;          /* pages per tick asked for; 0 = off (main writes) */
static _Atomic uint32_t g_churn_wake;     /* futex word: bumped when g_churn changes */
static _Atomic uint32_t g_round;          /* futex word: bumped by the leader to open a round */
static _Atomic uint64_t g_round_pages;    /* n of the open round (published before g_round) */
static _Atomic uint32_t g_round_open;     /* 1 from opening a round until it is counted */
static _Atomic uint32_t g_round_unfinished; /* workers whose share of the round is not written */
static _Atomic uint32_t g_leader_deciding;  /* the leader is between reading g_churn and opening */
static _Atomic uint64_t g_churn_done;     /* pages of the rounds counted so far */

static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
    /* SAFETY: word is a naturally aligned 32-bit atomic that lives as long as the process;
     * FUTEX_WAIT only sleeps if it still holds `expected`, so a wake between the caller's
     * check and this call is not lost. */
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Writes this worker's share of an n-page round: n / workers pages, one more for the first
 * n % workers workers. Its part is split the same way from the whole scratch, and n never
 * exceeds the scratch (the engine refuses that), so a share fits its part: the pages of one
 * round are distinct. Each page gets a value it never held before, as the engine does it.
 * DIRTY (the engine, on the main thread) walks the same mapping; when both write one page at
 * once, either value will do: what matters is that the page changed. */
static void write_share(struct worker *w, uint64_t n)
{
    uint64_t share = n / g_worker_count + (w->index < n % g_worker_count ? 1 : 0);
    for (; share != 0; share--) {
        volatile uint64_t *word = w->base + w->cursor * (KV_PAGE_SIZE / sizeof(uint64_t));
        *word = ++w->stamp;
        if (++w->cursor == w->pages)
            w->cursor = 0;
    }
}

/* The last worker to finish counts the round, then closes it: churn_start() waits for the
 * close, so the round is in INFO's pages by the time the OK of CHURN goes out. */
static void finish_share(uint64_t n)
{
    if (atomic_fetch_sub(&g_round_unfinished, 1) == 1) {
        atomic_fetch_add(&g_churn_done, n);
        atomic_store(&g_round_open, 0);
    }
}

static void pin(const struct worker *w)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    /* A failure (the CPU went away) leaves the worker unpinned: slower, not wrong, and there is
     * nowhere to report it that is not the protocol console. */
    (void)sched_setaffinity(0, sizeof set, &set);
}

static void leader(struct worker *w)
{
    for (;;) {
        /* CHURN off: sleep until the main thread changes it. */
        for (;;) {
            uint32_t wake = atomic_load(&g_churn_wake);
            if (atomic_load(&g_churn) != 0)
                break;
            futex_wait(&g_churn_wake, wake);
        }
        /* The first round belongs to the next tick, as in the engine. */
        uint64_t tick = ticks_now() + 1;
        for (;;) {
            sleep_until_tick(tick);
            /* Dekker with churn_start(): either it sees g_leader_deciding / g_round_open set
             * and waits for this round, or this load sees its new g_churn. */
            atomic_store(&g_leader_deciding, 1);
            uint64_t n = atomic_load(&g_churn);
            if (n == 0) {
                atomic_store(&g_leader_deciding, 0);
                break;
            }
            if (atomic_load(&g_round_open) == 0) {
                atomic_store(&g_round_pages, n);
                atomic_store(&g_round_unfinished, g_worker_count);
                atomic_store(&g_round_open, 1);
                atomic_fetch_add(&g_round, 1);
                atomic_store(&g_leader_deciding, 0);
                futex_wake_all(&g_round);
                write_share(w, n);
                finish_share(n);
            } else {
                /* The last round is still being written: this tick is skipped, not queued. */
                atomic_store(&g_leader_deciding, 0);
            }
            uint64_t now = ticks_now();
            tick = tick + 1 > now ? tick + 1 : now + 1;
        }
    }
}

static void follower(struct worker *w)
{
    uint32_t seen = 0; /* rounds start at 1; the leader opens none before every share is done */
    for (;;) {
        uint32_t round = atomic_load(&g_round);
        if (round == seen) {
            futex_wait(&g_round, seen);
            continue;
        }
        seen = round;
        uint64_t n = atomic_load(&g_round_pages);
        write_share(w, n);
        finish_share(n);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pin(w);
    if (w->index == 0)
        leader(w);
    else
        follower(w);
    return NULL;
}

/* kv_extension.churn_start: called by the engine (main thread) for a valid CHURN n. Returns
 * once no round of the previous n can still be running or uncounted, so that after `CHURN 0`
 * and its OK, INFO's pages no longer moves. A round is at most a few milliseconds of work. */
static void churn_start(uint64_t pages)
{
    atomic_store(&g_churn, pages);
    atomic_fetch_add(&g_churn_wake, 1);
    futex_wake_all(&g_churn_wake);
    while (atomic_load(&g_leader_deciding) != 0 || atomic_load(&g_round_open) != 0) {
        struct timespec pause = {0, 50000};
        nanosleep(&pause, NULL);
    }
}

static uint64_t churn_pages(void)
{
    return atomic_load(&g_churn_done);
}

/* One worker per CPU in this process's affinity mask (the online CPUs it may run on), each
 * with its part of the scratch. */
static void start_workers(uint8_t *scratch, uint64_t scratch_pages)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) == 0) {
        CPU_ZERO(&set);
        CPU_SET(0, &set);
    }
    g_worker_count = (unsigned)CPU_COUNT(&set);
    g_workers = calloc(g_worker_count, sizeof *g_workers);
    if (g_workers == NULL)
        fatal("cannot allocate the CHURN workers", strerror(errno));

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024); /* they call nothing deep */
    uint64_t first = 0;
    unsigned index = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && index < g_worker_count; cpu++) {
        if (!CPU_ISSET(cpu, &set))
            continue;
        struct worker *w = &g_workers[index];
        w->index = index;
        w->cpu = cpu;
        w->pages = scratch_pages / g_worker_count;
        if (index < scratch_pages % g_worker_count)
            w->pages++;
        w->base = (uint64_t *)(void *)(scratch + first * KV_PAGE_SIZE);
        w->stamp = (uint64_t)(index + 1) << 48;
        first += w->pages;
        index++;
    }
    for (index = 0; index < g_worker_count; index++) {
        int err = pthread_create(&g_workers[index].thread, &attr, worker_main, &g_workers[index]);
        if (err != 0)
            fatal("cannot start a CHURN worker", strerror(err));
    }
    pthread_attr_destroy(&attr);
}

/* ---- POWEROFF, REBOOT, HWRNG -------------------------------------------------------------- */

/* kvstored's exit status after REBOOT: the initramfs /init then reboots the machine. */
#define KVSTORED_EXIT_REBOOT 3

static int is_word(const char *p, size_t len, const char *upper)
{
    if (len != strlen(upper))
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - ('a' - 'A'));
        if (c != upper[i])
            return 0;
    }
    return 1;
}

/* HWRNG n: n bytes of /dev/hwrng in hex (see the top of this file). */
static void hwrng_command(const char *arg, size_t len)
{
    char text[8];
    unsigned long n = 0;
    if (len > 0 && len < sizeof text) {
        memcpy(text, arg, len);
        text[len] = '\0';
        char *stop;
        n = strtoul(text, &stop, 10);
        if (*stop != '\0')
            n = 0;
    }
    if (n < 1 || n > 64) {
        static const char usage[] = "ERR usage: HWRNG n (1..64)\n";
        kv_platform_write(usage, sizeof usage - 1);
        return;
    }
    unsigned char bytes[64];
    size_t got = 0;
    int err = 0;
    int fd = open("/dev/hwrng", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        err = errno;
    while (err == 0 && got < n) {
        ssize_t r = read(fd, bytes + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            err = errno;
        else if (r == 0)
            err = EIO;
        else
            got += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    char reply[160];
    int at;
    if (err != 0) {
        at = snprintf(reply, sizeof reply, "ERR hwrng: %s\n", strerror(err));
    } else {
        static const char hex[] = "0123456789abcdef";
        at = 0;
        for (size_t i = 0; i < n; i++) {
            reply[at++] = hex[bytes[i] >> 4];
            reply[at++] = hex[bytes[i] & 15];
        }
        reply[at++] = '\n';
    }
    kv_platform_write(reply, (size_t)at);
}

/* ---- APPEND, RECORDS, RECORD: numbered records on the disk ------------------------------- */

#define RECORD_TOKEN_MAX 64

static const char *g_data_dir;     /* --data-dir; NULL: no disk */
static int g_records_fd = -1;      /* DIR/records, O_APPEND, once opened */
static uint64_t g_records = 0;     /* complete records in the file, when g_records_known */
static int g_records_known = 0;

static void reply_error(const char *what, int err)
{
    char reply[160];
    int at = snprintf(reply, sizeof reply, "ERR %s: %s\n", what, strerror(err));
    kv_platform_write(reply, (size_t)at);
}

/* Reads the whole records file into a malloc'd buffer (*len bytes); NULL with errno set on
 * failure. An absent file reads as empty. */
static char *read_records(size_t *len)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/records", g_data_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        *len = 0;
        return calloc(1, 1);
    }
    if (fd < 0)
        return NULL;
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (used == cap) {
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                errno = ENOMEM;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + used, cap - used);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            free(buf);
            buf = NULL;
            errno = err;
            break;
        }
        if (r == 0)
            break;
        used += (size_t)r;
    }
    int err = errno;
    close(fd);
    errno = err;
    *len = used;
    return buf;
}

/* Opens DIR/records for appending (once), and counts its complete records (after a failure,
 * again), cutting off a partial last line. 0, or an errno value. */
static int records_open(void)
{
    if (g_records_fd < 0) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/records", g_data_dir);
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return errno;
        /* The file's name must be as durable as its lines. */
        int dir = open(g_data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0 || fsync(dir) != 0) {
            int err = errno;
            if (dir >= 0)
                close(dir);
            close(fd);
            return err;
        }
        close(dir);
        g_records_fd = fd;
        g_records_known = 0;
    }
    if (!g_records_known) {
        size_t len;
        char *buf = read_records(&len);
        if (buf == NULL)
            return errno;
        size_t complete = len;
        while (complete > 0 && buf[complete - 1] != '\n')
            complete--;
        uint64_t count = 0;
        for (size_t i = 0; i < complete; i++)
            count += buf[i] == '\n';
        free(buf);
        if (complete != len && ftruncate(g_records_fd, (off_t)complete) != 0)
            return errno;
        g_records = count;
        g_records_known = 1;
    }
    return 0;
}

static void append_command(const char *token, size_t len)
{
    int ok_token = len >= 1 && len <= RECORD_TOKEN_MAX;
    for (size_t i = 0; ok_token && i < len; i++)
        ok_token = token[i] > ' ' && token[i] < 0x7f;
    if (!ok_token) {
        static const char usage[] = "ERR usage: APPEND token (1..64 printable bytes, no space)\n";
        kv_platform_write(usage, sizeof usage - 1);
        return;
    }
    if (g_data_dir == NULL) {
        kv_platform_write("ERR no disk\n", 12);
        return;
    }
    int err = records_open();
    if (err != 0) {
        reply_error("append", err);
        return;
    }
    char line[96];
    uint64_t n = g_records + 1;
    int at = snprintf(line, sizeof line, "%llu %.*s\n", (unsigned long long)n, (int)len, token);
    size_t done = 0;
    while (done < (size_t)at) {
        ssize_t w = write(g_records_fd, line + done, (size_t)at - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        done += (size_t)w;
    }
    while (err == 0 && fsync(g_records_fd) != 0) {
        if (errno != EINTR)
            err = errno;
    }
    if (err != 0) {
        /* What reached the file is unknown: count again (and cut a partial line) next time. */
        g_records_known = 0;
        reply_error("append", err);
        return;
    }
    g_records = n;
    char reply[32];
    at = snprintf(reply, sizeof reply, "OK %llu\n", (unsigned long long)n);
    kv_platform_write(reply, (size_t)at);
}

/* RECORDS (want == 0) or RECORD want. */
static void records_command(uint64_t want)
{
    if (g_data_dir == NULL) {
        kv_platform_write("ERR no disk\n", 12);
        return;
    }
    size_t len;
    char *buf = read_records(&len);
    if (buf == NULL) {
        reply_error("records", errno);
        return;
    }
    uint64_t count = 0, last = 0;
    const char *found = NULL;
    size_t found_len = 0;
    for (size_t start = 0; start < len;) {
        const char *nl = memchr(buf + start, '\n', len - start);
        if (nl == NULL)
            break; /* a partial last line is no record */
        count++;
        last = strtoull(buf + start, NULL, 10);
        if (count == want) {
            found = buf + start;
            found_len = (size_t)(nl - (buf + start));
        }
        start = (size_t)(nl - buf) + 1;
    }
    char reply[128];
    int at;
    if (want == 0)
        at = snprintf(reply, sizeof reply, "%llu %llu\n", (unsigned long long)count, (unsigned long long)last);
    else if (found != NULL && found_len < sizeof reply - 1)
        at = snprintf(reply, sizeof reply, "%.*s\n", (int)found_len, found);
    else
        at = snprintf(reply, sizeof reply, "ERR no record %llu\n", (unsigned long long)want);
    free(buf);
    kv_platform_write(reply, (size_t)at);
}

/* RECORD's n: 1 up to 2^63; 0 when it is not one. */
static uint64_t parse_record_number(const char *arg, size_t len)
{
    if (len == 0 || len > 19)
        return 0;
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (arg[i] < '0' || arg[i] > '9')
            return 0;
        n = n * 10 + (uint64_t)(arg[i] - '0');
    }
    return n;
}

/* ---- DISKSYNC, DISKCHURN: the disk benchmark's load --------------------------------------- */

#define BENCH_BLOCK 4096
#define BENCH_FILE_BLOCKS 1024 /* 4 MiB per file, written in full once: no allocation later */
#define DISKSYNC_MAX 100000
#define DISKCHURN_MAX 1000

/* Opens DIR/NAME for 4 KiB writes that bypass the page cache (O_DIRECT, and O_DSYNC when
 * `sync`), creating it first with every block allocated and written, so that the writes being
 * measured overwrite blocks in place (no file-system allocation in them). Where the file system
 * refuses O_DIRECT (tmpfs on older kernels) the file is opened without it and *direct says so.
 * A descriptor, or -errno. */
static int bench_file_open(const char *name, int sync, int *direct)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", g_data_dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    struct stat st;
    int err = fstat(fd, &st) == 0 ? 0 : errno;
    if (err == 0 && st.st_size != (off_t)BENCH_FILE_BLOCKS * BENCH_BLOCK) {
        static const char zero[BENCH_BLOCK];
        for (off_t i = 0; err == 0 && i < BENCH_FILE_BLOCKS; i++) {
            ssize_t w = pwrite(fd, zero, BENCH_BLOCK, i * BENCH_BLOCK);
            if (w != BENCH_BLOCK)
                err = w < 0 ? errno : EIO;
        }
        if (err == 0 && fsync(fd) != 0)
            err = errno;
    }
    close(fd);
    if (err != 0)
        return -err;
    int flags = O_RDWR | O_CLOEXEC | (sync ? O_DSYNC : 0);
    *direct = 1;
    fd = open(path, flags | O_DIRECT);
    if (fd < 0 && errno == EINVAL) {
        *direct = 0;
        fd = open(path, flags);
    }
    return fd < 0 ? -errno : fd;
}

/* n from "n" (0..max); -1 when it is not one. */
static long parse_count(const char *arg, size_t len, long max)
{
    if (len == 0 || len > 7)
        return -1;
    long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (arg[i] < '0' || arg[i] > '9')
            return -1;
        n = n * 10 + (arg[i] - '0');
    }
    return n <= max ? n : -1;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* DISKSYNC n: n synchronous 4 KiB writes one after the other (O_DIRECT | O_DSYNC: each returns
 * once the disk has it), at consecutive blocks of DIR/bench; replies
 * `OK n p50_us p99_us max_us total_us direct|buffered`. */
static void disksync_command(const char *arg, size_t len)
{
    long n = parse_count(arg, len, DISKSYNC_MAX);
    if (n < 1) {
        static const char usage[] = "ERR usage: DISKSYNC n (1..100000)\n";
        kv_platform_write(usage, sizeof usage - 1);
        return;
    }
    if (g_data_dir == NULL) {
        kv_platform_write("ERR no disk\n", 12);
        return;
    }
    int direct = 0;
    int fd = bench_file_open("bench", 1, &direct);
    if (fd < 0) {
        reply_error("disksync", -fd);
        return;
    }
    uint64_t *lat = malloc((size_t)n * sizeof *lat);
    unsigned char *block = aligned_alloc(BENCH_BLOCK, BENCH_BLOCK);
    int err = lat == NULL || block == NULL ? ENOMEM : 0;
    int64_t started = ns_since_start();
    for (long i = 0; err == 0 && i < n; i++) {
        memset(block, (int)(i & 0xff), BENCH_BLOCK);
        memcpy(block, &i, sizeof i);
        int64_t t0 = ns_since_start();
        ssize_t w = pwrite(fd, block, BENCH_BLOCK, (off_t)(i % BENCH_FILE_BLOCKS) * BENCH_BLOCK);
        if (w < 0 && errno == EINTR) {
            i--;
            continue;
        }
        if (w != BENCH_BLOCK)
            err = w < 0 ? errno : EIO;
        lat[i] = (uint64_t)(ns_since_start() - t0) / 1000;
    }
    int64_t total_us = (ns_since_start() - started) / 1000;
    close(fd);
    free(block);
    if (err != 0) {
        free(lat);
        reply_error("disksync", err);
        return;
    }
    qsort(lat, (size_t)n, sizeof *lat, compare_u64);
    char reply[160];
    int at = snprintf(reply, sizeof reply, "OK %ld %llu %llu %llu %lld %s\n", n,
                      (unsigned long long)lat[(size_t)(n - 1) * 50 / 100],
                      (unsigned long long)lat[(size_t)(n - 1) * 99 / 100], (unsigned long long)lat[n - 1],
                      (long long)total_us, direct ? "direct" : "buffered");
    free(lat);
    kv_platform_write(reply, (size_t)at);
}

/* DISKCHURN n: a thread writes n 4 KiB blocks every 10 ms tick (O_DIRECT, not synchronous:
 * the guest's disk requests, not their flushes) at consecutive blocks of DIR/churn; a tick
 * whose writes are not done by the next is skipped, not queued. `DISKCHURN 0` stops it.
 * Replies `OK writes` (every write done so far), or `ERR diskchurn: REASON` when a write
 * failed (the thread then stops). */
static _Atomic uint64_t g_disk_churn;       /* writes per tick asked for; 0 = off */
static _Atomic uint32_t g_disk_churn_wake;  /* futex word: bumped when g_disk_churn changes */
static _Atomic uint64_t g_disk_churn_done;  /* writes done so far */
static _Atomic int g_disk_churn_err;        /* errno of a failed write; the thread then stops */
static int g_disk_churn_fd = -1;

static void *disk_churn_main(void *arg)
{
    (void)arg;
    unsigned char *block = aligned_alloc(BENCH_BLOCK, BENCH_BLOCK);
    if (block == NULL) {
        atomic_store(&g_disk_churn_err, ENOMEM);
        return NULL;
    }
    uint64_t cursor = 0;
    for (;;) {
        uint32_t wake = atomic_load(&g_disk_churn_wake);
        if (atomic_load(&g_disk_churn) == 0) {
            futex_wait(&g_disk_churn_wake, wake);
            continue;
        }
        uint64_t tick = ticks_now() + 1;
        uint64_t n;
        while ((n = atomic_load(&g_disk_churn)) != 0) {
            sleep_until_tick(tick);
            for (uint64_t i = 0; i < n; i++, cursor++) {
                memset(block, (int)(cursor & 0xff), BENCH_BLOCK);
                memcpy(block, &cursor, sizeof cursor);
                ssize_t w = pwrite(g_disk_churn_fd, block, BENCH_BLOCK,
                                   (off_t)(cursor % BENCH_FILE_BLOCKS) * BENCH_BLOCK);
                if (w < 0 && errno == EINTR) {
                    i--, cursor--;
                    continue;
                }
                if (w != BENCH_BLOCK) {
                    atomic_store(&g_disk_churn_err, w < 0 ? errno : EIO);
                    atomic_store(&g_disk_churn, 0);
                    free(block);
                    return NULL;
                }
                atomic_fetch_add(&g_disk_churn_done, 1);
            }
            uint64_t now = ticks_now();
            tick = tick + 1 > now ? tick + 1 : now + 1;
        }
    }
}

static void diskchurn_command(const char *arg, size_t len)
{
    long n = parse_count(arg, len, DISKCHURN_MAX);
    if (n < 0) {
        static const char usage[] = "ERR usage: DISKCHURN n (0..1000)\n";
        kv_platform_write(usage, sizeof usage - 1);
        return;
    }
    if (g_data_dir == NULL) {
        kv_platform_write("ERR no disk\n", 12);
        return;
    }
    int err = atomic_load(&g_disk_churn_err);
    if (err == 0 && n > 0 && g_disk_churn_fd < 0) {
        int direct = 0;
        int fd = bench_file_open("churn", 0, &direct);
        pthread_t thread;
        if (fd < 0)
            err = -fd;
        else if ((err = pthread_create(&thread, NULL, disk_churn_main, NULL)) != 0)
            close(fd);
        else
            g_disk_churn_fd = fd;
    }
    if (err != 0) {
        reply_error("diskchurn", err);
        return;
    }
    atomic_store(&g_disk_churn, (uint64_t)n);
    atomic_fetch_add(&g_disk_churn_wake, 1);
    futex_wake_all(&g_disk_churn_wake);
    char reply[48];
    int at = snprintf(reply, sizeof reply, "OK %llu\n", (unsigned long long)atomic_load(&g_disk_churn_done));
    kv_platform_write(reply, (size_t)at);
}

/* Before POWEROFF and REBOOT end kvstored: the OK, and every reply before it, must be out, or
 * they never arrive once /init has powered the machine off.
 * - Asked on the console: waits until the tty has sent everything (tcdrain), as ever.
 * - Asked by a TCP client: waits until its replies are in its socket and the peer has
 *   acknowledged them all (SIOCOUTQ: bytes not sent or not acknowledged yet), then until the
 *   tty's output queue is empty (TIOCOUTQ), all within TCP_DRAIN_NS: a console nobody reads
 *   must not hold up a POWEROFF that came over the network.
 * Other clients get what their sockets take at once. */
static void drain_replies(void)
{
    struct client *asker = g_reply_to;
    for (unsigned i = 0; i < TCP_CLIENTS_MAX; i++)
        if (g_clients[i].fd >= 0 && &g_clients[i] != asker)
            client_flush(&g_clients[i]);
    if (asker == NULL) {
        (void)tcdrain(g_tty);
        return;
    }
    int64_t deadline = ns_since_start() + TCP_DRAIN_NS;
    while (!asker->dropped && client_pending(asker) != 0 && ns_since_start() < deadline) {
        struct pollfd p = {.fd = asker->fd, .events = POLLOUT};
        (void)poll(&p, 1, 10);
        client_flush(asker);
    }
    const struct timespec pause = {0, 1000000};
    int queued = 0;
    while (!asker->dropped && ioctl(asker->fd, SIOCOUTQ, &queued) == 0 && queued > 0 &&
           ns_since_start() < deadline)
        nanosleep(&pause, NULL);
    while (ioctl(g_tty, TIOCOUTQ, &queued) == 0 && queued > 0 && ns_since_start() < deadline)
        nanosleep(&pause, NULL);
}

/* kv_extension.command: the kvstored-only POWEROFF, REBOOT, HWRNG, APPEND, RECORDS, RECORD,
 * DISKSYNC and DISKCHURN (see the top of this file). The line follows the engine's grammar:
 * case-insensitive name, spaces around it ignored. */
static int extra_command(const char *line, size_t len)
{
    const char *end = line + len;
    while (line < end && *line == ' ')
        line++;
    const char *name = line;
    while (line < end && *line != ' ')
        line++;
    size_t name_len = (size_t)(line - name);
    if (is_word(name, name_len, "APPEND") || is_word(name, name_len, "RECORDS") ||
        is_word(name, name_len, "RECORD")) {
        while (line < end && *line == ' ')
            line++;
        const char *arg_end = end;
        while (arg_end > line && arg_end[-1] == ' ')
            arg_end--;
        size_t arg_len = (size_t)(arg_end - line);
        if (is_word(name, name_len, "APPEND")) {
            append_command(line, arg_len);
        } else if (is_word(name, name_len, "RECORDS")) {
            if (arg_len != 0)
                kv_platform_write("ERR usage: RECORDS\n", 19);
            else
                records_command(0);
        } else {
            uint64_t n = parse_record_number(line, arg_len);
            if (n == 0 || n > (1ull << 63))
                kv_platform_write("ERR usage: RECORD n (n >= 1)\n", 29);
            else
                records_command(n);
        }
        return 1;
    }
    if (is_word(name, name_len, "HWRNG") || is_word(name, name_len, "DISKSYNC") ||
        is_word(name, name_len, "DISKCHURN")) {
        while (line < end && *line == ' ')
            line++;
        const char *arg_end = end;
        while (arg_end > line && arg_end[-1] == ' ')
            arg_end--;
        if (is_word(name, name_len, "HWRNG"))
            hwrng_command(line, (size_t)(arg_end - line));
        else if (is_word(name, name_len, "DISKSYNC"))
            disksync_command(line, (size_t)(arg_end - line));
        else
            diskchurn_command(line, (size_t)(arg_end - line));
        return 1;
    }
    int power_off = is_word(name, (size_t)(line - name), "POWEROFF");
    if (!power_off && !is_word(name, (size_t)(line - name), "REBOOT"))
        return 0;
    while (line < end && *line == ' ')
        line++;
    if (line != end) {
        const char *usage = power_off ? "ERR usage: POWEROFF\n" : "ERR usage: REBOOT\n";
        kv_platform_write(usage, strlen(usage));
        return 1;
    }
    kv_platform_write("OK\n", 3);
    drain_replies(); /* the OK is out before the machine goes */
    sync();
    if (getpid() == 1)
        (void)reboot(power_off ? RB_POWER_OFF : RB_AUTOBOOT);
    exit(power_off ? 0 : KVSTORED_EXIT_REBOOT);
}

/* ---- start-up --------------------------------------------------------------------------- */

static void open_tty(const char *path)
{
    g_tty = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (g_tty < 0)
        fatal(path, strerror(errno));
    struct termios t;
    if (tcgetattr(g_tty, &t) != 0)
        fatal(path, strerror(errno));
    /* Raw: no echo, no line editing, no CR/NL translation on either side, no signals from
     * input bytes, no flow control; a read returns as soon as one byte is there. CLOCAL so
     * the modem lines of a serial port do not matter. 115200 8N1 like the embedded guest
     * (an emulated UART ignores the rate anyway). Bytes that arrived before are kept. */
    cfmakeraw(&t);
    t.c_lflag &= (tcflag_t)~TOSTOP;
    t.c_cflag |= CLOCAL | CREAD;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    cfsetispeed(&t, B115200);
    cfsetospeed(&t, B115200);
    if (tcsetattr(g_tty, TCSANOW, &t) != 0)
        fatal(path, strerror(errno));
}

/* A listening TCP socket on every IPv4 address (`flags`: SOCK_NONBLOCK or 0), or -1 after one
 * console line naming `what`, the port, the step that failed and why. Listeners are optional:
 * without one kvstored serves the console alone. Without a network interface the bind still
 * works; nobody can connect then. */
static int listen_tcp(const char *what, unsigned port, int flags, int backlog)
{
    const char *step = "socket";
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
    if (fd >= 0) {
        int one = 1;
        /* A kvstored started again at once binds even while old connections linger. */
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in address = {
            .sin_family = AF_INET,
            .sin_port = htons((uint16_t)port),
            .sin_addr.s_addr = htonl(INADDR_ANY),
        };
        step = "bind";
        if (bind(fd, (const struct sockaddr *)&address, sizeof address) == 0) {
            step = "listen";
            if (listen(fd, backlog) == 0)
                return fd;
        }
    }
    int err = errno;
    if (fd >= 0)
        close(fd);
    char line[160];
    int len = snprintf(line, sizeof line, "kvstored: %s: port %u: %s: %s\n", what, port, step,
                       strerror(err));
    kv_platform_write(line, (size_t)len);
    return -1;
}

/* The protocol's TCP listener (--tcp-port). */
static void open_listener(unsigned port)
{
    g_listener = listen_tcp("tcp", port, SOCK_NONBLOCK, TCP_CLIENTS_MAX);
}

/* The bulk sink (--sink-port): reads each connection to its end, replies with the byte count,
 * closes it; one at a time. A failure to listen is one console line, as for the protocol port. */
static void *sink_main(void *arg)
{
    int listener = (int)(intptr_t)arg;
    static char buffer[256 * 1024];
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        unsigned long long total = 0;
        for (;;) {
            ssize_t n = read(fd, buffer, sizeof buffer);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            total += (unsigned long long)n;
        }
        char line[32];
        int len = snprintf(line, sizeof line, "%llu\n", total);
        (void)!write(fd, line, (size_t)len);
        close(fd);
    }
}

static void start_sink(unsigned port)
{
    int fd = listen_tcp("sink", port, 0, 4);
    if (fd < 0)
        return;
    pthread_t thread;
    int err = pthread_create(&thread, NULL, sink_main, (void *)(intptr_t)fd);
    if (err != 0) {
        close(fd);
        char line[160];
        int len = snprintf(line, sizeof line, "kvstored: sink: port %u: thread: %s\n", port,
                           strerror(err));
        kv_platform_write(line, (size_t)len);
    }
}

/* Takes every waiting connection; past TCP_CLIENTS_MAX clients a new one is closed at once. */
static void accept_clients(void)
{
    for (;;) {
        int fd = accept4(g_listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN: none left; anything else: try again at the next poll */
        }
        struct client *c = NULL;
        for (unsigned i = 0; i < TCP_CLIENTS_MAX && c == NULL; i++)
            if (g_clients[i].fd < 0)
                c = &g_clients[i];
        if (c == NULL) {
            close(fd);
            continue;
        }
        /* One reply is one small send: out at once, not held for the previous one's ACK. */
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd = fd;
    }
}

/* A client's socket is readable: its lines go to the engine. End of input (the client closed,
 * perhaps mid-line: that partial line is dropped unanswered) closes it once its replies are out;
 * an error drops it. */
static void client_read(struct client *c)
{
    uint8_t buf[READ_CHUNK];
    ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0)
        feed_lines(&c->line, c, buf, (size_t)n);
    else if (n == 0)
        c->input_closed = 1;
    else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
        c->dropped = 1;
}

/* The one loop: console input, new connections, client input and client output, as poll()
 * reports them. Only this thread calls the engine. */
static _Noreturn void serve(void)
{
    struct pollfd fds[2 + TCP_CLIENTS_MAX];
    int64_t console_resume = 0; /* ns_since_start() at which to look at a silent console again */
    for (;;) {
        int timeout = -1;
        int64_t now = ns_since_start();
        fds[0] = (struct pollfd){.fd = g_tty, .events = POLLIN};
        if (now < console_resume) {
            fds[0].fd = -1;
            timeout = (int)((console_resume - now + 999999) / 1000000);
        }
        fds[1] = (struct pollfd){.fd = g_listener, .events = POLLIN};
        for (unsigned i = 0; i < TCP_CLIENTS_MAX; i++) {
            struct client *c = &g_clients[i];
            short events = 0;
            if (!c->input_closed)
                events |= POLLIN;
            if (client_pending(c) != 0)
                events |= POLLOUT;
            fds[2 + i] = (struct pollfd){.fd = c->fd, .events = events};
        }
        if (poll(fds, 2 + TCP_CLIENTS_MAX, timeout) < 0)
            continue; /* EINTR */

        if (fds[0].revents != 0) {
            uint8_t buf[READ_CHUNK];
            ssize_t n = read(g_tty, buf, sizeof buf);
            if (n > 0) {
                feed_lines(&g_console_line, NULL, buf, (size_t)n);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                /* End of file or an error: the other end of a pty went away, or the port hung
                 * up. kvstored does not exit on its own; it looks again a little later. */
                console_resume = ns_since_start() + NS_PER_S / 10;
            }
        }
        if (fds[1].revents != 0)
            accept_clients();
        for (unsigned i = 0; i < TCP_CLIENTS_MAX; i++) {
            struct client *c = &g_clients[i];
            /* A slot taken by accept_clients() above had fd -1 in this poll: revents 0. */
            if (c->fd < 0)
                continue;
            if ((fds[2 + i].revents & POLLOUT) != 0)
                client_flush(c);
            if ((fds[2 + i].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !c->input_closed)
                client_read(c);
            if (c->dropped || (c->input_closed && client_pending(c) == 0))
                client_close(c);
        }
    }
}

static unsigned parse_port(const char *flag, const char *text)
{
    char *end;
    errno = 0;
    unsigned long port = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || port > 65535)
    {
        char what[96];
        snprintf(what, sizeof what, "%s wants a port number from 0 (none) to 65535", flag);
        fatal(what, text);
    }
    return (unsigned)port;
}

static uint64_t default_scratch_bytes(void)
{
    struct sysinfo si;
    uint64_t bytes = 0;
    if (sysinfo(&si) == 0)
        bytes = (uint64_t)si.totalram * si.mem_unit / 2;
    return bytes < MIN_SCRATCH_BYTES ? MIN_SCRATCH_BYTES : bytes;
}

static uint64_t parse_mib(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long mib = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || mib == 0 || mib > (1ull << 30))
        fatal("--scratch-mib wants a number of MiB from 1 up", text);
    return (uint64_t)mib << 20;
}

int main(int argc, char **argv)
{
    const char *tty = "/dev/ttyS0";
    uint64_t scratch_bytes = 0;
    unsigned tcp_port = 4555;
    unsigned sink_port = 4556;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tty") == 0 && i + 1 < argc)
            tty = argv[++i];
        else if (strcmp(argv[i], "--scratch-mib") == 0 && i + 1 < argc)
            scratch_bytes = parse_mib(argv[++i]);
        else if (strcmp(argv[i], "--tcp-port") == 0 && i + 1 < argc)
            tcp_port = parse_port("--tcp-port", argv[++i]);
        else if (strcmp(argv[i], "--sink-port") == 0 && i + 1 < argc)
            sink_port = parse_port("--sink-port", argv[++i]);
        else if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc && argv[i + 1][0] != '\0')
            g_data_dir = argv[++i];
        else
            fatal("usage: kvstored [--tty PATH] [--scratch-mib N] [--tcp-port N] [--sink-port N] "
                  "[--data-dir DIR]; "
                  "unexpected",
                  argv[i]);
    }
    if (scratch_bytes == 0)
        scratch_bytes = default_scratch_bytes();
    uint64_t scratch_pages = scratch_bytes / KV_PAGE_SIZE;

    clock_gettime(CLOCK_MONOTONIC, &g_start);
    for (unsigned i = 0; i < TCP_CLIENTS_MAX; i++)
        g_clients[i].fd = -1;
    open_tty(tty);
    if (tcp_port != 0)
        open_listener(tcp_port);
    if (sink_port != 0)
        start_sink(sink_port);

    void *scratch = mmap(NULL, scratch_pages * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (scratch == MAP_FAILED)
        fatal("cannot map the scratch memory", strerror(errno));

    kv_reset();
    if (kv_scratch_add(scratch, scratch_pages) != 0)
        fatal("the engine refused the scratch memory", NULL);
    start_workers(scratch, scratch_pages);
    struct kv_extension ext = {
        .churn_start = churn_start,
        .churn_pages = churn_pages,
        .command = extra_command,
    };
    kv_set_extension(&ext);
    serve();
}
