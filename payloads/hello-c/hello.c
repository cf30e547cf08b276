/*
 * hello-c: a payload written in C against bootproto/include/multikernel.h, to show (and test)
 * that the boot protocol is not Rust-specific.
 *
 * Built freestanding as a static PIE (ET_DYN, R_X86_64_RELATIVE relocations only) so the
 * manager's loader can place it anywhere in the instance's region; see xtask/src/payloads.rs
 * for the exact compiler flags. It prints one line, "hello from C: name <name> apic <id>", to
 * the console ring, marks itself running and heartbeats forever, about every 50 ms, halting
 * in between (mk_irq_init, mk_wait_ms). An invalid boot info parks the CPU without
 * writing anything. The greeting is reached through a relocated pointer, so the line also
 * shows that the loader applied the image's relocations.
 */
#include "multikernel.h"

#define HEARTBEAT_INTERVAL_MS 50u

/*
 * The greeting is reached through a pointer stored in writable data, so the image carries an
 * R_X86_64_RELATIVE relocation: if the loader did not relocate the image, this pointer would
 * hold the link-time address and the line would come out wrong (or fault). `volatile` keeps the
 * compiler from folding the pointer away.
 */
static const char *volatile greeting = "hello from C";

/* Appends a NUL-terminated string to buf at *len (never past cap). */
static void append(char *buf, size_t cap, size_t *len, const char *s) {
    while (*s != '\0' && *len < cap) {
        buf[(*len)++] = *s++;
    }
}

/* Appends a field that is NUL-padded but may fill its whole length. */
static void append_field(char *buf, size_t cap, size_t *len, const char *field, size_t field_len) {
    for (size_t i = 0; i < field_len && field[i] != '\0' && *len < cap; i++) {
        buf[(*len)++] = field[i];
    }
}

static void append_u32(char *buf, size_t cap, size_t *len, uint32_t v) {
    char digits[10];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0 && *len < cap) {
        buf[(*len)++] = digits[--n];
    }
}

__attribute__((noreturn)) void _start(const struct mk_boot_info *bi, uint64_t cpu_index) {
    if (!mk_boot_info_valid(bi) || cpu_index != 0) {
        mk_park();
    }
    mk_irq_init(bi);
    struct mk_status_block *st = mk_status(bi);
    struct mk_console_ring *ring = mk_console(bi);
    mk_set_state(st, MK_STATE_RUNNING);

    char line[96];
    size_t len = 0;
    append(line, sizeof line, &len, greeting);
    append(line, sizeof line, &len, ": name ");
    append_field(line, sizeof line, &len, bi->name, MK_NAME_LEN);
    append(line, sizeof line, &len, " apic ");
    append_u32(line, sizeof line, &len, bi->apic_id);
    append(line, sizeof line, &len, "\n");
    mk_ring_write(ring, line, len);

    for (;;) {
        mk_heartbeat(st);
        mk_wait_ms(HEARTBEAT_INTERVAL_MS);
    }
}
