/*
 * pong-c: `pong` in C, against bootproto/include/multikernel.h: echoes every message it
 * receives on its first channel, so a Rust `ping` can measure a round trip across languages.
 *
 * args: "mode=poll" (spin while waiting) or "mode=doorbell" (halt until the peer's doorbell,
 * and ring the peer's after each echo). It prints "pong-c: echoing on channel <name> (<mode>)",
 * heartbeats while it waits, and exits with code 4 if the peer breaks the channel.
 */
#include "multikernel.h"

#define BROKEN_EXIT_CODE 4u

static int has_arg(const struct mk_boot_info *bi, const char *arg) {
    for (unsigned i = 0; i < MK_ARGS_LEN && bi->args[i] != 0; i++) {
        unsigned k = 0;
        while (arg[k] != 0 && i + k < MK_ARGS_LEN && bi->args[i + k] == arg[k]) {
            k++;
        }
        if (arg[k] == 0) {
            return 1;
        }
    }
    return 0;
}

static void say(struct mk_console_ring *ring, const char *a, const char *b, const char *c) {
    mk_ring_puts(ring, a);
    mk_ring_puts(ring, b);
    mk_ring_puts(ring, c);
}

__attribute__((noreturn)) void _start(const struct mk_boot_info *bi, uint64_t cpu_index) {
    if (!mk_boot_info_valid(bi) || cpu_index != 0) {
        mk_park();
    }
    mk_irq_init(bi);
    struct mk_status_block *st = mk_status(bi);
    struct mk_console_ring *ring = mk_console(bi);
    mk_set_state(st, MK_STATE_RUNNING);
    int doorbell = has_arg(bi, "mode=doorbell");
    if (!mk_boot_info_has_v2(bi) || bi->channel_count == 0) {
        mk_ring_puts(ring, "pong-c: this instance has no channel\n");
        mk_exit(st, 2u);
    }
    const struct mk_channel_info *rec = (const struct mk_channel_info *)(uintptr_t)bi->channels;
    struct mk_channel ch;
    if (mk_channel_open(&ch, rec) != 0) {
        mk_ring_puts(ring, "pong-c: the channel memory is not a channel\n");
        mk_exit(st, BROKEN_EXIT_CODE);
    }
    say(ring, "pong-c: echoing on channel ", rec->name, doorbell ? " (doorbell)\n" : " (poll)\n");
    uint8_t buf[MK_MESSAGE_MAX];
    uint64_t tick = mk_tsc_rate / 20u; /* heartbeat about every 50 ms */
    uint64_t next_beat = 0;
    for (;;) {
        uint64_t now = mk_rdtsc();
        if (now >= next_beat) {
            mk_heartbeat(st);
            next_beat = now + tick;
        }
        int n = mk_channel_recv(&ch, buf);
        if (n < 0) {
            mk_ring_puts(ring, "pong-c: channel broken\n");
            mk_exit(st, BROKEN_EXIT_CODE);
        }
        if (n == 0) {
            if (doorbell) {
                mk_halt_once_until(mk_rdtsc() + tick);
            } else {
                __asm__ volatile("pause");
            }
            continue;
        }
        int sent;
        while ((sent = mk_channel_send(&ch, buf, (uint32_t)(n - 1))) == MK_CHANNEL_FULL) {
            __asm__ volatile("pause");
        }
        if (sent < 0) {
            mk_ring_puts(ring, "pong-c: channel broken\n");
            mk_exit(st, BROKEN_EXIT_CODE);
        }
        if (doorbell) {
            mk_channel_ring(&ch);
        }
    }
}
