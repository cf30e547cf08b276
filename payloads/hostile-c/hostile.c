/*
 * hostile-c: a kernel that lies to the manager, written in C against the public header
 * bootproto/include/multikernel.h, so the test suite can prove that nothing an instance writes
 * into shared memory, and nothing it does to its own CPU, takes the manager or a neighbour down.
 *
 * The first argument word chooses the misbehaviour. Each one first marks the instance running
 * and prints what it is about to do, heartbeats for about WARMUP_MS, then does it:
 *
 *   state=N          writes N into the status block's `state` (N > 3 is no state at all)
 *   fault-vector=N   writes a fault record with vector N and state FAULTED
 *   dropped=max      sets the console ring's `dropped` to 2^64-1, then exits with code 1
 *   head=N           writes N into the console ring's `head` (garbage indices)
 *   capacity=N       rewrites the console ring's `capacity` field
 *   exit=N           exits with code N at once (no warm-up): with a restart policy, a storm
 *   cli-spin         disables interrupts and spins forever without a heartbeat
 *   idt-fault        installs its own IDT whose handlers halt silently, then page-faults
 *   channel-garbage  opens its first channel and writes impossible indices and lengths into
 *                    its ring (claims 1000 pending messages, a 999-byte one), then keeps
 *                    heartbeating: its peer must call the channel broken, the manager must
 *                    not care
 *   triple-fault     loads an empty IDT and faults: the CPU shuts down, which on a PC (and
 *                    QEMU) resets the whole machine -- the documented limit of isolation
 *                    without a hypervisor (docs/isolation.md)
 *
 * Anything else prints an error and exits with code 2.
 */
#include "multikernel.h"

#define WARMUP_MS 50u
#define HEARTBEAT_INTERVAL_MS 10u
/* Canonical, but mapped in no instance's page tables. */
#define UNMAPPED_ADDR 0x7fff00000000ull

static void wait_ms(uint64_t ms) {
    mk_wait_ms(ms);
}

static int starts_with(const char *s, const char *prefix) {
    while (*prefix != '\0') {
        if (*s++ != *prefix++) {
            return 0;
        }
    }
    return 1;
}

/* Parses a decimal number or "max"; stops at the first non-digit. */
static uint64_t number(const char *s) {
    if (starts_with(s, "max")) {
        return ~0ull;
    }
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10u + (uint64_t)(*s++ - '0');
    }
    return v;
}

static void say(struct mk_console_ring *ring, const char *what, const char *arg) {
    mk_ring_puts(ring, "hostile: about to ");
    mk_ring_puts(ring, what);
    mk_ring_puts(ring, arg);
    mk_ring_puts(ring, "\n");
}

/* The handler every gate of our own IDT points to: halt, telling nobody. */
extern char hostile_halt[];
__asm__(".text\n"
        ".globl hostile_halt\n"
        "hostile_halt:\n"
        "  cli\n"
        "1: hlt\n"
        "  jmp 1b\n");

struct idt_pointer {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

static uint64_t idt[2 * 32] __attribute__((aligned(16)));

static void install_silent_idt(void) {
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    uint64_t handler = (uint64_t)(uintptr_t)hostile_halt;
    for (int v = 0; v < 32; v++) {
        /* 64-bit interrupt gate (SDM Vol. 3A, "IDT Descriptors"), present, DPL 0, no IST. */
        idt[2 * v] = (handler & 0xffffull) | ((uint64_t)cs << 16) | (0x8eull << 40) |
                     ((handler >> 16) & 0xffffull) << 48;
        idt[2 * v + 1] = handler >> 32;
    }
    struct idt_pointer p = {sizeof idt - 1, (uint64_t)(uintptr_t)idt};
    mk_apic_write(0x380u, 0u); /* no timer interrupt into the silent IDT */
    __asm__ volatile("lidt %0" ::"m"(p));
}

static void page_fault(void) {
    __asm__ volatile("movq $0, (%0)" ::"r"(UNMAPPED_ADDR) : "memory");
}

__attribute__((noreturn)) void _start(const struct mk_boot_info *bi, uint64_t cpu_index) {
    if (!mk_boot_info_valid(bi) || cpu_index != 0) {
        mk_park();
    }
    struct mk_status_block *st = mk_status(bi);
    struct mk_console_ring *ring = mk_console(bi);
    mk_irq_init(bi);
    mk_set_state(st, MK_STATE_RUNNING);
    const char *args = bi->args;

    if (starts_with(args, "exit=")) {
        say(ring, "exit at once with code ", args + 5);
        mk_exit(st, (uint32_t)number(args + 5));
    }
    for (uint64_t t = 0; t < WARMUP_MS; t += HEARTBEAT_INTERVAL_MS) {
        mk_heartbeat(st);
        wait_ms(HEARTBEAT_INTERVAL_MS);
    }
    if (starts_with(args, "state=")) {
        say(ring, "write into status.state: ", args + 6);
        __atomic_store_n(&st->state, (uint32_t)number(args + 6), __ATOMIC_RELEASE);
    } else if (starts_with(args, "fault-vector=")) {
        say(ring, "report a fault with vector ", args + 13);
        st->fault_vector = number(args + 13);
        st->fault_rip = 0x1234;
        mk_set_state(st, MK_STATE_FAULTED);
        mk_park();
    } else if (starts_with(args, "dropped=")) {
        say(ring, "set console.dropped to ", args + 8);
        __atomic_store_n(&ring->dropped, number(args + 8), __ATOMIC_RELEASE);
        wait_ms(HEARTBEAT_INTERVAL_MS);
        mk_exit(st, 1);
    } else if (starts_with(args, "head=")) {
        say(ring, "write into console.head: ", args + 5);
        __atomic_store_n(&ring->head, (uint32_t)number(args + 5), __ATOMIC_RELEASE);
    } else if (starts_with(args, "capacity=")) {
        say(ring, "rewrite console.capacity: ", args + 9);
        ring->capacity = (uint32_t)number(args + 9);
    } else if (starts_with(args, "channel-garbage")) {
        const struct mk_channel_info *rec = (const struct mk_channel_info *)(uintptr_t)bi->channels;
        struct mk_channel ch;
        if (!mk_boot_info_has_v2(bi) || bi->channel_count == 0 || mk_channel_open(&ch, rec) != 0) {
            mk_ring_puts(ring, "hostile: no channel to spoil\n");
            mk_exit(st, 2);
        }
        say(ring, "write garbage into channel ", rec->name);
        uint32_t me = ch.side;
        uint8_t *slot = mk_channel_slot(&ch, me, ch.h->head[me].value);
        slot[0] = 0xe7; /* length 999 */
        slot[1] = 0x03;
        __atomic_store_n(&ch.h->head[me].value, ch.h->head[me].value + 1000u, __ATOMIC_RELEASE);
        mk_channel_ring(&ch);
    } else if (starts_with(args, "cli-spin")) {
        say(ring, "spin with interrupts off, without a heartbeat", "");
        for (;;) {
            __asm__ volatile("cli; pause");
        }
    } else if (starts_with(args, "idt-fault")) {
        say(ring, "install a silent IDT of my own and page-fault", "");
        wait_ms(HEARTBEAT_INTERVAL_MS);
        install_silent_idt();
        page_fault();
    } else if (starts_with(args, "triple-fault")) {
        say(ring, "load an empty IDT and fault (the machine will reset)", "");
        wait_ms(HEARTBEAT_INTERVAL_MS);
        struct idt_pointer none = {0, 0};
        __asm__ volatile("lidt %0" ::"m"(none));
        page_fault();
    } else {
        mk_ring_puts(ring, "hostile: unknown args; see payloads/hostile-c/hostile.c\n");
        mk_exit(st, 2);
    }
    /* Whatever the manager made of it, keep heartbeating. */
    for (;;) {
        mk_heartbeat(st);
        wait_ms(HEARTBEAT_INTERVAL_MS);
    }
}
