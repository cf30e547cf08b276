//! Fuzz target: any bytes given as a Linux image get a result from the manager's bzImage code
//! (header checks, placement, zero page, the fit check), never a panic, and what it accepts is
//! consistent: the placement lies inside the window it was asked for, the zero page keeps the
//! sentinel zero and carries the e820 it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::bzimage::{self, BootParams, E820, E820_RAM};
use platform::linuxboot;

fuzz_target!(|data: &[u8]| {
    let Ok(kernel) = bzimage::parse(data) else { return };
    assert!(kernel.protected_mode.0 + kernel.protected_mode.1 == data.len());
    for (start, limit, initrd) in [(0x20_0000, 0x1000_0000, 0), (0x500_0000, 0x2_0000_0000, 1 << 20), (u64::MAX - 4096, u64::MAX, 5)] {
        if let Ok(p) = bzimage::place(&kernel, start, limit, initrd) {
            assert!(p.load >= start && p.window_end <= limit && p.initrd.0 + p.initrd.1 <= limit);
            assert!(p.load.is_multiple_of(kernel.kernel_alignment));
        }
    }
    let e820 = [E820 { addr: 0x10_0000, size: 0x100_0000, kind: E820_RAM }];
    let params = BootParams { cmdline_addr: 0x9000, initrd: (0, 0), rsdp: 0x8000, e820: &e820 };
    if let Ok(z) = bzimage::zero_page(data, &kernel, &params) {
        assert_eq!(z[bzimage::offset::SENTINEL], 0);
        assert_eq!(bzimage::e820_of(&z), e820);
    }
    let fit = linuxboot::Fit { memory: 256 << 20, cpus: 2, initrd_len: 1 << 20, cmdline: "quiet", uart: None };
    let _ = linuxboot::check_fit(&kernel, &fit);
});
