//! Fuzz target: `madt::parse` on arbitrary bytes never panics or hangs, and any inventory it
//! returns keeps its promises: no placeholder or duplicate APIC IDs, and marking a listed CPU as
//! the BSP succeeds while an unlisted one is refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::madt;

fuzz_target!(|data: &[u8]| {
    // Half the inputs get their checksum fixed up, so mutations reach the entry walk and the
    // interpretation instead of stopping at the checksum.
    let mut fixed = data.to_vec();
    if fixed.len() >= 36 && data[0] & 1 == 1 {
        let len = (u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) as usize).min(fixed.len());
        platform::acpi::set_checksum(&mut fixed[..len], 9);
    }
    let Ok(mut inv) = madt::parse(&fixed) else { return };
    let mut ids: Vec<u32> = inv.cpus.iter().map(|c| c.apic_id).collect();
    assert!(!ids.contains(&u32::MAX), "a placeholder x2APIC ID became a CPU");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), inv.cpus.len(), "an APIC ID is listed twice");
    if let Some(first) = inv.cpus.first().map(|c| c.apic_id) {
        inv.mark_bsp(first).expect("a listed CPU can be the BSP");
        assert!(inv.check_startable(first).is_err(), "the BSP must not be startable");
    }
    let absent = (0..=u32::MAX).find(|id| !ids.contains(id)).unwrap_or(0);
    assert!(inv.check_startable(absent).is_err());
});
