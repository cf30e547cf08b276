/*
 * multikernel.h: the boot protocol between the multikernel manager and the kernels it starts,
 * for payloads written in C.
 *
 * This header mirrors bootproto/src/lib.rs (BootInfo, StatusBlock, ConsoleRing, the state
 * constants, the shared-page layout) and docs/boot-protocol.md; the Rust crate is the
 * reference. Every offset and size that lib.rs asserts is asserted here too, so a drift between
 * the two fails the C build.
 *
 * State at entry (protocol version 2): 64-bit long mode, interrupts off, the instance's region
 * identity-mapped, RSP = 16-byte aligned top - 8 (entered as if called), RDI = the boot info,
 * RSI = the index of the entering CPU in bi->cpus (every CPU of the instance enters). The
 * entry point is therefore
 *
 *     void _start(const struct mk_boot_info *bi, uint64_t cpu_index);   // never returns
 *
 * The console ring is the only output channel: single producer (the instance), single consumer
 * (the manager), never blocking; bytes that do not fit are dropped and counted in `dropped`.
 * Fields shared with the manager are accessed only through the __atomic builtins below.
 *
 * Freestanding: needs only <stdint.h> and <stddef.h> (both provided by the compiler).
 */
#ifndef MULTIKERNEL_H
#define MULTIKERNEL_H

#include <stddef.h>
#include <stdint.h>

/* "MKBOOTIN", little-endian. */
#define MK_BOOT_INFO_MAGIC 0x4e49544f4f424b4dULL
/* The protocol version this header describes; each version only appends to the previous. */
#define MK_PROTOCOL_VERSION 2u
/* sizeof(struct mk_boot_info) in version 1 (up to and including acpi_rsdp). */
#define MK_BOOT_INFO_V1_SIZE 384u

#define MK_NAME_LEN 32
#define MK_ARGS_LEN 256

/* Instance states, written into mk_status_block.state. */
#define MK_STATE_NONE 0u    /* nothing written yet (the manager zeroes the block) */
#define MK_STATE_RUNNING 1u /* the payload reached its entry and reported in */
#define MK_STATE_EXITED 2u  /* the payload ended on purpose; exit_code holds its code */
#define MK_STATE_FAULTED 3u /* the CPU took an unhandled exception; the fault record is valid */

/* Shared-page layout at the top of a region, from the top down (bootproto::layout). */
#define MK_PAGE 4096u
#define MK_BOOT_INFO_PAGES 1u
#define MK_STATUS_PAGES 1u
#define MK_CONSOLE_PAGES 4u
#define MK_CONSOLE_CAPACITY 8192u
#define MK_DEFAULT_STACK_BYTES (64u * 1024u)

/* What the manager tells an instance at entry. Read-only for the instance. */
struct mk_boot_info {
    uint64_t magic;   /* MK_BOOT_INFO_MAGIC */
    uint32_t version; /* MK_PROTOCOL_VERSION */
    uint32_t size;    /* sizeof(struct mk_boot_info) as the manager knows it */
    char name[MK_NAME_LEN]; /* UTF-8, NUL-padded (not NUL-terminated when full) */
    uint32_t apic_id;
    uint32_t _reserved0;
    uint64_t region_base; /* the instance's region, identity-mapped */
    uint64_t region_size;
    uint64_t checksum_base; /* FNV-1a 64 of the loaded executable segments */
    uint64_t checksum_len;
    uint64_t checksum;
    char args[MK_ARGS_LEN]; /* UTF-8, NUL-padded */
    uint64_t console;       /* address of the struct mk_console_ring */
    uint64_t status;        /* address of the struct mk_status_block */
    uint64_t tsc_hz;        /* 0 if unknown */
    uint64_t acpi_rsdp;     /* 0 if none; not mapped for the instance */
    /* ---- version 2 ---- */
    uint32_t cpu_count;      /* entries of cpus */
    uint32_t _reserved1;
    uint64_t cpus;           /* address of cpu_count uint32_t APIC IDs; CPU i enters with RSI = i */
    uint64_t lapic_base;     /* local APIC page, identity-mapped uncached; 0 if not mapped */
    uint64_t lapic_timer_hz; /* the local APIC timer's input clock; 0 if unknown */
    uint64_t acpi_view;      /* this instance's private RSDP (mapped); 0 if none */
    uint32_t channel_count;  /* entries of channels */
    uint32_t _reserved2;
    uint64_t channels;       /* address of channel_count struct mk_channel_info */
};

/* One shared-memory channel to another instance (version 2). */
struct mk_channel_info {
    char name[MK_NAME_LEN];      /* UTF-8, NUL-padded */
    char peer_name[MK_NAME_LEN]; /* the peer instance's name */
    uint64_t base;               /* the channel's pages, identity-mapped read/write, no-execute */
    uint64_t size;
    uint32_t peer_apic_id;       /* the peer's first CPU: the doorbell's destination */
    uint32_t peer_cpu_count;
    uint32_t doorbell_vector;    /* the vector both sides use for this channel's doorbell */
    uint32_t side;               /* 0: this instance is the channel's first side, 1: second */
};

/* Per-instance status, written by the instance, read by the manager. */
struct mk_status_block {
    uint32_t state; /* MK_STATE_* */
    uint32_t exit_code;
    uint64_t heartbeat; /* incremented while alive */
    uint64_t result;    /* a value the payload reports */
    uint64_t fault_vector;
    uint64_t fault_error_code;
    uint64_t fault_rip;
    uint64_t fault_cr2;
    uint64_t fault_rsp;
    /* ---- version 2 ---- */
    uint32_t fault_apic_id; /* the CPU that faulted */
    uint32_t _reserved;
};

/*
 * The console ring header; `capacity` data bytes (a power of two) follow it. head and tail are
 * free-running byte counters (wrapping at 2^32); stream byte i lives at data[i % capacity].
 * The producer writes data, then stores head with release; the consumer loads head with
 * acquire, copies, then stores tail with release.
 */
struct mk_console_ring {
    uint32_t head;
    uint32_t tail;
    uint32_t capacity;
    uint32_t _reserved;
    uint64_t dropped;
};

#define MK_CONSOLE_DATA_OFFSET (sizeof(struct mk_console_ring))

/* The offsets and sizes bootproto/src/lib.rs asserts. */
_Static_assert(offsetof(struct mk_boot_info, magic) == 0, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, version) == 8, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, size) == 12, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, name) == 16, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, apic_id) == 48, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, region_base) == 56, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, region_size) == 64, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, checksum_base) == 72, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, checksum_len) == 80, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, checksum) == 88, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, args) == 96, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, console) == 352, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, status) == 360, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, tsc_hz) == 368, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, acpi_rsdp) == 376, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, cpu_count) == MK_BOOT_INFO_V1_SIZE, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, cpus) == 392, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, lapic_base) == 400, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, lapic_timer_hz) == 408, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, acpi_view) == 416, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, channel_count) == 424, "boot info layout");
_Static_assert(offsetof(struct mk_boot_info, channels) == 432, "boot info layout");
_Static_assert(sizeof(struct mk_boot_info) == 440, "boot info layout");
_Static_assert(offsetof(struct mk_channel_info, base) == 64, "channel info layout");
_Static_assert(offsetof(struct mk_channel_info, peer_apic_id) == 80, "channel info layout");
_Static_assert(offsetof(struct mk_channel_info, side) == 92, "channel info layout");
_Static_assert(sizeof(struct mk_channel_info) == 96, "channel info layout");
_Static_assert(offsetof(struct mk_status_block, state) == 0, "status block layout");
_Static_assert(offsetof(struct mk_status_block, exit_code) == 4, "status block layout");
_Static_assert(offsetof(struct mk_status_block, heartbeat) == 8, "status block layout");
_Static_assert(offsetof(struct mk_status_block, result) == 16, "status block layout");
_Static_assert(offsetof(struct mk_status_block, fault_vector) == 24, "status block layout");
_Static_assert(offsetof(struct mk_status_block, fault_error_code) == 32, "status block layout");
_Static_assert(offsetof(struct mk_status_block, fault_rip) == 40, "status block layout");
_Static_assert(offsetof(struct mk_status_block, fault_cr2) == 48, "status block layout");
_Static_assert(offsetof(struct mk_status_block, fault_rsp) == 56, "status block layout");
_Static_assert(offsetof(struct mk_status_block, fault_apic_id) == 64, "status block layout");
_Static_assert(sizeof(struct mk_status_block) == 72, "status block layout");
_Static_assert(offsetof(struct mk_console_ring, head) == 0, "console ring layout");
_Static_assert(offsetof(struct mk_console_ring, tail) == 4, "console ring layout");
_Static_assert(offsetof(struct mk_console_ring, capacity) == 8, "console ring layout");
_Static_assert(offsetof(struct mk_console_ring, dropped) == 16, "console ring layout");
_Static_assert(sizeof(struct mk_console_ring) == 24, "console ring layout");
_Static_assert((MK_CONSOLE_CAPACITY & (MK_CONSOLE_CAPACITY - 1)) == 0, "capacity: power of two");
_Static_assert(MK_CONSOLE_DATA_OFFSET + MK_CONSOLE_CAPACITY <= MK_CONSOLE_PAGES * MK_PAGE,
               "console ring fits its pages");

/*
 * Whether the boot info is one this header can read (magic, and at least the version 1 fields).
 * A kernel that reads version 2 fields checks mk_boot_info_has_v2() too.
 */
static inline int mk_boot_info_valid(const struct mk_boot_info *bi) {
    return bi != NULL && bi->magic == MK_BOOT_INFO_MAGIC && bi->version >= 1u &&
           bi->size >= MK_BOOT_INFO_V1_SIZE;
}

/* Whether the version 2 fields (cpus, lapic_base, ..., channels) are there. */
static inline int mk_boot_info_has_v2(const struct mk_boot_info *bi) {
    return bi->version >= 2u && bi->size >= sizeof(struct mk_boot_info);
}

static inline struct mk_console_ring *mk_console(const struct mk_boot_info *bi) {
    return (struct mk_console_ring *)(uintptr_t)bi->console;
}

static inline struct mk_status_block *mk_status(const struct mk_boot_info *bi) {
    return (struct mk_status_block *)(uintptr_t)bi->status;
}

/*
 * Writes n bytes to the ring, as many as fit; never waits. Returns the number of bytes dropped
 * (also added to ring->dropped). An unusable ring (capacity not a power of two, or a tail that
 * claims more pending bytes than the ring holds) drops everything. Single producer only.
 */
static inline uint64_t mk_ring_write(struct mk_console_ring *ring, const void *bytes, size_t n) {
    const uint8_t *src = (const uint8_t *)bytes;
    uint8_t *data = (uint8_t *)ring + MK_CONSOLE_DATA_OFFSET;
    uint32_t capacity = ring->capacity;
    uint32_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
    uint32_t tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    uint32_t used = head - tail;
    uint32_t free_bytes = 0;
    if (capacity != 0 && (capacity & (capacity - 1)) == 0 && used <= capacity) {
        free_bytes = capacity - used;
    }
    /* A message that does not fit whole is dropped whole (lines arrive intact); only one
     * larger than the whole ring is cut to what fits. */
    size_t written = n <= free_bytes ? n : (n > capacity ? free_bytes : 0);
    for (size_t i = 0; i < written; i++) {
        /* volatile: the manager reads these from another CPU after the head store. */
        ((volatile uint8_t *)data)[(head + (uint32_t)i) & (capacity - 1)] = src[i];
    }
    if (written > 0) {
        __atomic_store_n(&ring->head, head + (uint32_t)written, __ATOMIC_RELEASE);
    }
    uint64_t dropped = (uint64_t)(n - written);
    if (dropped > 0) {
        __atomic_fetch_add(&ring->dropped, dropped, __ATOMIC_RELAXED);
    }
    return dropped;
}

/* Writes a NUL-terminated string to the ring; returns the number of bytes dropped. */
static inline uint64_t mk_ring_puts(struct mk_console_ring *ring, const char *s) {
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    return mk_ring_write(ring, s, n);
}

static inline void mk_set_state(struct mk_status_block *st, uint32_t state) {
    __atomic_store_n(&st->state, state, __ATOMIC_RELEASE);
}

/* Proves the instance alive. */
static inline void mk_heartbeat(struct mk_status_block *st) {
    __atomic_fetch_add(&st->heartbeat, 1, __ATOMIC_RELAXED);
}

static inline void mk_set_result(struct mk_status_block *st, uint64_t value) {
    __atomic_store_n(&st->result, value, __ATOMIC_RELEASE);
}

/* Halts the CPU forever with interrupts off. */
static inline __attribute__((noreturn)) void mk_park(void) {
    for (;;) {
        __asm__ volatile("cli; hlt" ::: "memory");
    }
}

/* Ends the instance: records the code, sets the state to EXITED, halts forever. */
static inline __attribute__((noreturn)) void mk_exit(struct mk_status_block *st, uint32_t code) {
    __atomic_store_n(&st->exit_code, code, __ATOMIC_RELAXED);
    __atomic_store_n(&st->state, MK_STATE_EXITED, __ATOMIC_RELEASE);
    mk_park();
}

/* The time stamp counter. */
static inline uint64_t mk_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif /* MULTIKERNEL_H */
