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

/*
 * Waiting by halting (version 2). A kernel with nothing to do should halt rather than spin: under
 * QEMU's TCG every virtual CPU is a host thread, and on hardware a spinning CPU burns power. Call
 * mk_irq_init() once per CPU (it installs an IDT of its own: exception vectors record the fault
 * and park the CPU like the manager's early IDT, MK_TIMER_VECTOR wakes a halted CPU), then
 * mk_wait_until(deadline_tsc) waits with the local APIC timer armed and `sti; hlt`. Without a
 * usable local APIC or timer rate (a version 1 manager, say) it spins. Interrupts are on only
 * inside the halt.
 */
#define MK_TIMER_VECTOR 0x20u
/* Channel doorbells: channel i of the manifest interrupts on MK_DOORBELL_BASE + i. */
#define MK_DOORBELL_BASE 0x40u
#define MK_MAX_CHANNELS 64u
#define MK_SPURIOUS_VECTOR 0xffu
#define MK_IA32_APIC_BASE 0x1bu

static inline uint64_t mk_rdmsr(uint32_t msr) {
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void mk_wrmsr(uint32_t msr, uint64_t v) {
    __asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

/* This CPU's local APIC: 0 unusable, 1 xAPIC at mk_apic_mmio, 2 x2APIC. */
static int mk_apic_mode;
static volatile uint32_t *mk_apic_mmio;
static uint64_t mk_apic_timer_hz;
static uint64_t mk_tsc_rate;
static struct mk_status_block *mk_fault_status;

static inline uint32_t mk_apic_read(uint32_t reg) {
    if (mk_apic_mode == 1) {
        return mk_apic_mmio[reg / 4];
    }
    return mk_apic_mode == 2 ? (uint32_t)mk_rdmsr(0x800u + reg / 16u) : 0u;
}

static inline void mk_apic_write(uint32_t reg, uint32_t v) {
    if (mk_apic_mode == 1) {
        mk_apic_mmio[reg / 4] = v;
    } else if (mk_apic_mode == 2) {
        mk_wrmsr(0x800u + reg / 16u, v);
    }
}

/* The CPU's APIC ID (CPUID leaf 0Bh where it exists, else leaf 1). */
static inline uint32_t mk_cpu_apic_id(void) {
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0u), "c"(0u));
    if (a >= 0xbu) {
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0xbu), "c"(0u));
        return d;
    }
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1u), "c"(0u));
    return b >> 24;
}

struct mk_interrupt_frame;

/* An interrupt handler. GCC saves only the general registers in one, so the handler itself is
 * compiled without SSE; build the whole payload with -mgeneral-regs-only (as xtask does) so
 * that nothing it calls touches the vector registers either. */
#define MK_ISR __attribute__((interrupt, target("general-regs-only")))

MK_ISR static void mk_timer_isr(struct mk_interrupt_frame *f) {
    (void)f;
    mk_apic_write(0xb0u, 0u); /* EOI */
}

MK_ISR static void mk_spurious_isr(struct mk_interrupt_frame *f) {
    (void)f;
}

/* The CPU-pushed frame (SDM Vol. 3A, "Exception and Interrupt Handling in 64-bit Mode"). */
struct mk_frame_words {
    uint64_t rip, cs, rflags, rsp, ss;
};

static inline __attribute__((noreturn)) void mk_record_fault(uint64_t vector, uint64_t code,
                                                             const void *frame) {
    const struct mk_frame_words *w = (const struct mk_frame_words *)frame;
    struct mk_status_block *st = mk_fault_status;
    if (st != NULL) {
        uint64_t cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        st->fault_vector = vector;
        st->fault_error_code = code;
        st->fault_rip = w->rip;
        st->fault_rsp = w->rsp;
        st->fault_cr2 = cr2;
        st->fault_apic_id = mk_cpu_apic_id();
        mk_set_state(st, MK_STATE_FAULTED);
    }
    mk_park();
}

#define MK_FAULT_PLAIN(v)                                                                        \
    MK_ISR static void mk_fault_##v(struct mk_interrupt_frame *f) {                              \
        mk_record_fault(v, 0, f);                                                                \
    }
#define MK_FAULT_CODE(v)                                                                         \
    MK_ISR static void mk_fault_##v(struct mk_interrupt_frame *f, uint64_t code) {               \
        mk_record_fault(v, code, f);                                                             \
    }
/* Vectors that push an error code: SDM Vol. 3A, "Exception and Interrupt Reference". */
MK_FAULT_PLAIN(0) MK_FAULT_PLAIN(1) MK_FAULT_PLAIN(2) MK_FAULT_PLAIN(3) MK_FAULT_PLAIN(4)
MK_FAULT_PLAIN(5) MK_FAULT_PLAIN(6) MK_FAULT_PLAIN(7) MK_FAULT_CODE(8) MK_FAULT_PLAIN(9)
MK_FAULT_CODE(10) MK_FAULT_CODE(11) MK_FAULT_CODE(12) MK_FAULT_CODE(13) MK_FAULT_CODE(14)
MK_FAULT_PLAIN(15) MK_FAULT_PLAIN(16) MK_FAULT_CODE(17) MK_FAULT_PLAIN(18) MK_FAULT_PLAIN(19)
MK_FAULT_PLAIN(20) MK_FAULT_CODE(21) MK_FAULT_PLAIN(22) MK_FAULT_PLAIN(23) MK_FAULT_PLAIN(24)
MK_FAULT_PLAIN(25) MK_FAULT_PLAIN(26) MK_FAULT_PLAIN(27) MK_FAULT_PLAIN(28) MK_FAULT_CODE(29)
MK_FAULT_CODE(30) MK_FAULT_PLAIN(31)

/* 256 gates of 16 bytes (SDM Vol. 3A, "64-Bit Mode IDT"). */
static uint64_t mk_idt[512] __attribute__((aligned(16)));

/* A present, DPL 0, 64-bit interrupt gate. */
static inline void mk_set_gate(unsigned vector, void *handler, unsigned ist) {
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    uint64_t h = (uint64_t)(uintptr_t)handler;
    mk_idt[2 * vector] = (h & 0xffffull) | ((uint64_t)cs << 16) | ((uint64_t)(ist & 7u) << 32) |
                         (0x8eull << 40) | (((h >> 16) & 0xffffull) << 48);
    mk_idt[2 * vector + 1] = h >> 32;
}

/* Installs the IDT on this CPU and enables its local APIC timer (version 2 managers). */
static inline void mk_irq_init(const struct mk_boot_info *bi) {
    static void *const faults[32] = {
        mk_fault_0,  mk_fault_1,  mk_fault_2,  mk_fault_3,  mk_fault_4,  mk_fault_5,  mk_fault_6,
        mk_fault_7,  mk_fault_8,  mk_fault_9,  mk_fault_10, mk_fault_11, mk_fault_12, mk_fault_13,
        mk_fault_14, mk_fault_15, mk_fault_16, mk_fault_17, mk_fault_18, mk_fault_19, mk_fault_20,
        mk_fault_21, mk_fault_22, mk_fault_23, mk_fault_24, mk_fault_25, mk_fault_26, mk_fault_27,
        mk_fault_28, mk_fault_29, mk_fault_30, mk_fault_31};
    mk_fault_status = mk_status(bi);
    mk_tsc_rate = bi->tsc_hz != 0 ? bi->tsc_hz : 1000000000ull;
    for (unsigned v = 0; v < 32; v++) {
        mk_set_gate(v, faults[v], 1); /* IST1: the slot's exception stack */
    }
    mk_set_gate(MK_TIMER_VECTOR, (void *)mk_timer_isr, 0);
    mk_set_gate(MK_SPURIOUS_VECTOR, (void *)mk_spurious_isr, 0);
    for (unsigned v = MK_DOORBELL_BASE; v < MK_DOORBELL_BASE + MK_MAX_CHANNELS; v++) {
        mk_set_gate(v, (void *)mk_timer_isr, 0); /* a doorbell only wakes the CPU */
    }
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) idtr = {sizeof mk_idt - 1, (uint64_t)(uintptr_t)mk_idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));
    if (!mk_boot_info_has_v2(bi) || bi->lapic_timer_hz == 0) {
        return;
    }
    uint64_t base = mk_rdmsr(MK_IA32_APIC_BASE);
    if ((base & (1ull << 11)) == 0) {
        return; /* globally disabled */
    }
    if (base & (1ull << 10)) {
        mk_apic_mode = 2;
    } else if (bi->lapic_base != 0 && (base & 0xffffffffff000ull) == bi->lapic_base) {
        mk_apic_mmio = (volatile uint32_t *)(uintptr_t)bi->lapic_base;
        mk_apic_mode = 1;
    } else {
        return;
    }
    mk_apic_timer_hz = bi->lapic_timer_hz;
    mk_apic_write(0xf0u, 0x100u | MK_SPURIOUS_VECTOR); /* SVR: software enable */
    mk_apic_write(0x3e0u, 0xbu);                       /* divide by 1 */
    mk_apic_write(0x380u, 0u);                         /* timer stopped */
    mk_apic_write(0x320u, MK_TIMER_VECTOR);            /* LVT timer: one-shot, unmasked */
}

/* Halts once: until any interrupt (a doorbell) or the TSC reaches `deadline`. */
static inline void mk_halt_once_until(uint64_t deadline) {
    uint64_t now = mk_rdtsc();
    if (now >= deadline) {
        return;
    }
    uint64_t left_us = (deadline - now) / (mk_tsc_rate / 1000000u + 1u);
    if (mk_apic_mode == 0 || left_us < 20u) {
        while (mk_rdtsc() < deadline) {
            __asm__ volatile("pause");
        }
        return;
    }
    uint64_t count = left_us * (mk_apic_timer_hz / 1000000u);
    mk_apic_write(0x380u, count > 0xffffffffull ? 0xffffffffu : (uint32_t)(count + 1u));
    __asm__ volatile("sti; hlt; cli" ::: "memory");
    mk_apic_write(0x380u, 0u);
}

/* Waits until the TSC reaches `deadline`, halting where the timer is usable (an interrupt
 * that ends a halt early only starts another). */
static inline void mk_wait_until(uint64_t deadline) {
    while (mk_rdtsc() < deadline) {
        mk_halt_once_until(deadline);
    }
}

/* Waits `ms` milliseconds (call mk_irq_init first for a halting wait). */
static inline void mk_wait_ms(uint64_t ms) {
    if (mk_tsc_rate == 0) {
        mk_tsc_rate = 1000000000ull;
    }
    mk_wait_until(mk_rdtsc() + mk_tsc_rate / 1000u * ms);
}

/* ---- Channels (docs/boot-protocol.md, "Channels"; the same rings as bootproto::channel) ----
 *
 *     const struct mk_channel_info *rec = mk_channel_find(bi, "link");
 *     struct mk_channel ch;
 *     if (!rec || mk_channel_open(&ch, rec) != 0) { ... }
 *     mk_channel_send(&ch, "hi", 2);  mk_channel_ring(&ch);
 *     uint8_t buf[MK_MESSAGE_MAX]; int n = mk_channel_recv(&ch, buf);   // n-1 bytes; 0: none; <0: broken
 */
#define MK_CHANNEL_MAGIC 0x48434b4du /* "MKCH" */
#define MK_CHANNEL_VERSION 1u
#define MK_CHANNEL_HEADER_BYTES 4096u
#define MK_SLOT_BYTES 64u
#define MK_MESSAGE_MAX 60u
#define MK_CHANNEL_MIN_SIZE 8192u

/* Errors of the channel calls (negative). */
#define MK_CHANNEL_FULL (-1)
#define MK_CHANNEL_TOO_LONG (-2)
#define MK_CHANNEL_BROKEN (-3) /* the peer wrote impossible indices or lengths */
#define MK_CHANNEL_NOT_A_CHANNEL (-4)

struct mk_channel_side {
    volatile uint32_t epoch; /* the manager adds 2 before each start of this side */
    uint32_t reserved0;
    volatile uint64_t sent;
    volatile uint64_t received;
    uint64_t pad[5];
};

struct mk_channel_index {
    volatile uint32_t value;
    uint32_t pad[15];
};

struct mk_channel_header {
    uint32_t magic;
    uint32_t version;
    uint64_t size;
    uint32_t slots;
    uint32_t reserved[11];
    struct mk_channel_side side[2];
    struct mk_channel_index head[2]; /* head[s]: ring s's producer index, written by side s */
    struct mk_channel_index tail[2]; /* tail[s]: ring s's consumer index, written by side 1-s */
};
_Static_assert(offsetof(struct mk_channel_header, side) == 0x40, "channel layout");
_Static_assert(offsetof(struct mk_channel_header, head) == 0xc0, "channel layout");
_Static_assert(offsetof(struct mk_channel_header, tail) == 0x140, "channel layout");

/* One side of an open channel. */
struct mk_channel {
    struct mk_channel_header *h;
    uint8_t *base;
    uint32_t side, slots, peer_apic_id, vector, peer_epoch;
    int broken;
};

static inline uint32_t mk_channel_slots_for(uint64_t size) {
    if (size < MK_CHANNEL_MIN_SIZE) {
        return 0;
    }
    uint64_t per_ring = (size - MK_CHANNEL_HEADER_BYTES) / (2u * MK_SLOT_BYTES);
    uint32_t n = 1;
    while ((uint64_t)n * 2u <= per_ring && n < 0x80000000u) {
        n *= 2u;
    }
    return n;
}

static inline uint8_t *mk_channel_slot(const struct mk_channel *c, uint32_t ring, uint32_t index) {
    return c->base + MK_CHANNEL_HEADER_BYTES +
           ((uint64_t)ring * c->slots + (index & (c->slots - 1u))) * MK_SLOT_BYTES;
}

/* The boot info's record of the channel named `name`, or NULL. */
static inline const struct mk_channel_info *mk_channel_find(const struct mk_boot_info *bi,
                                                            const char *name) {
    if (!mk_boot_info_has_v2(bi) || bi->channel_count == 0 || bi->channel_count > 16u) {
        return 0;
    }
    const struct mk_channel_info *recs = (const struct mk_channel_info *)(uintptr_t)bi->channels;
    for (uint32_t i = 0; i < bi->channel_count; i++) {
        int same = 1;
        for (unsigned k = 0; k < MK_NAME_LEN; k++) {
            if (recs[i].name[k] != name[k]) {
                same = 0;
                break;
            }
            if (name[k] == 0) {
                break;
            }
        }
        if (same) {
            return &recs[i];
        }
    }
    return 0;
}

/* Joins the channel as this instance's side: checks the header, continues this side's ring,
 * skips what the peer sent to this side's previous life. 0 or MK_CHANNEL_NOT_A_CHANNEL. */
static inline int mk_channel_open(struct mk_channel *c, const struct mk_channel_info *rec) {
    uint32_t slots = mk_channel_slots_for(rec->size);
    struct mk_channel_header *h = (struct mk_channel_header *)(uintptr_t)rec->base;
    if (slots == 0 || rec->side > 1u || (rec->base & 4095u) != 0 || h->magic != MK_CHANNEL_MAGIC ||
        h->version != MK_CHANNEL_VERSION || h->size != rec->size || h->slots != slots) {
        return MK_CHANNEL_NOT_A_CHANNEL;
    }
    c->h = h;
    c->base = (uint8_t *)h;
    c->side = rec->side;
    c->slots = slots;
    c->peer_apic_id = rec->peer_apic_id;
    c->vector = rec->doorbell_vector;
    c->broken = 0;
    uint32_t me = c->side, peer = 1u - me;
    uint32_t head = h->head[me].value, tail = __atomic_load_n(&h->tail[me].value, __ATOMIC_ACQUIRE);
    if (head - tail > slots) {
        __atomic_store_n(&h->head[me].value, tail, __ATOMIC_RELEASE);
    }
    uint32_t peer_head = __atomic_load_n(&h->head[peer].value, __ATOMIC_ACQUIRE);
    __atomic_store_n(&h->tail[peer].value, peer_head, __ATOMIC_RELEASE);
    c->peer_epoch = __atomic_load_n(&h->side[peer].epoch, __ATOMIC_ACQUIRE);
    return 0;
}

/* Sends `n` bytes (at most MK_MESSAGE_MAX); never waits. 0 or a negative error. */
static inline int mk_channel_send(struct mk_channel *c, const void *msg, uint32_t n) {
    if (c->broken) {
        return MK_CHANNEL_BROKEN;
    }
    if (n > MK_MESSAGE_MAX) {
        return MK_CHANNEL_TOO_LONG;
    }
    struct mk_channel_header *h = c->h;
    uint32_t me = c->side;
    uint32_t head = h->head[me].value;
    uint32_t tail = __atomic_load_n(&h->tail[me].value, __ATOMIC_ACQUIRE);
    if (head - tail > c->slots) {
        c->broken = 1;
        return MK_CHANNEL_BROKEN;
    }
    if (head - tail == c->slots) {
        return MK_CHANNEL_FULL;
    }
    uint8_t *slot = mk_channel_slot(c, me, head);
    uint16_t len = (uint16_t)n, life = (uint16_t)(h->side[me].epoch / 2u);
    volatile uint8_t *v = slot;
    v[0] = (uint8_t)len;
    v[1] = (uint8_t)(len >> 8);
    v[2] = (uint8_t)life;
    v[3] = (uint8_t)(life >> 8);
    for (uint32_t i = 0; i < n; i++) {
        v[4 + i] = ((const uint8_t *)msg)[i];
    }
    __atomic_store_n(&h->head[me].value, head + 1u, __ATOMIC_RELEASE);
    __atomic_fetch_add(&h->side[me].sent, 1u, __ATOMIC_RELAXED);
    return 0;
}

/* Interrupts the peer's first CPU on the channel's vector (wakes it from a halt). */
static inline void mk_channel_ring(const struct mk_channel *c) {
    if (mk_apic_mode == 1) {
        mk_apic_write(0x310u, c->peer_apic_id << 24);
        mk_apic_write(0x300u, c->vector | (1u << 14));
    } else if (mk_apic_mode == 2) {
        mk_wrmsr(0x830u, ((uint64_t)c->peer_apic_id << 32) | c->vector | (1u << 14));
    }
}

/* 1 if the peer was started again since the last call (or since the channel was opened). */
static inline int mk_channel_peer_restarted(struct mk_channel *c) {
    uint32_t e = __atomic_load_n(&c->h->side[1u - c->side].epoch, __ATOMIC_ACQUIRE);
    if (e == c->peer_epoch) {
        return 0;
    }
    c->peer_epoch = e;
    return 1;
}

/* Takes the next message of the peer's current life into `out` (MK_MESSAGE_MAX bytes).
 * Returns its length + 1 (so a 0-byte message is 1), 0 if there is none, or a negative
 * error. Messages of the peer's previous lives are dropped unread. */
static inline int mk_channel_recv(struct mk_channel *c, uint8_t out[MK_MESSAGE_MAX]) {
    if (c->broken) {
        return MK_CHANNEL_BROKEN;
    }
    struct mk_channel_header *h = c->h;
    uint32_t peer = 1u - c->side;
    for (uint32_t tries = 0; tries <= c->slots; tries++) {
        uint32_t head = __atomic_load_n(&h->head[peer].value, __ATOMIC_ACQUIRE);
        uint32_t tail = h->tail[peer].value;
        if (head - tail > c->slots) {
            c->broken = 1;
            return MK_CHANNEL_BROKEN;
        }
        if (head == tail) {
            return 0;
        }
        uint16_t life = (uint16_t)(__atomic_load_n(&h->side[peer].epoch, __ATOMIC_ACQUIRE) / 2u);
        const volatile uint8_t *v = mk_channel_slot(c, peer, tail);
        uint16_t len = (uint16_t)(v[0] | (v[1] << 8)), from = (uint16_t)(v[2] | (v[3] << 8));
        if (len > MK_MESSAGE_MAX) {
            c->broken = 1;
            return MK_CHANNEL_BROKEN;
        }
        for (uint32_t i = 0; i < len; i++) {
            out[i] = v[4 + i];
        }
        __atomic_store_n(&h->tail[peer].value, tail + 1u, __ATOMIC_RELEASE);
        if (from != life) {
            continue;
        }
        __atomic_fetch_add(&h->side[c->side].received, 1u, __ATOMIC_RELAXED);
        return (int)len + 1;
    }
    return 0;
}

#endif /* MULTIKERNEL_H */
