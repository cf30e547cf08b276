//! Local APIC mode, decoded from plain register values.
//!
//! The manager must know whether the bootstrap processor's local APIC is off, in xAPIC mode
//! (MMIO registers, 8-bit APIC IDs) or in x2APIC mode (MSR registers, 32-bit IDs) before it reads
//! its own APIC ID or sends INIT-SIPI-SIPI, and it must refuse to start a CPU whose APIC ID it
//! cannot address in the current mode. The kernel reads `IA32_APIC_BASE` and CPUID; this module
//! only decodes the values, so every combination is tested on the host.
//!
//! # Spec
//! - SDM Vol. 3A, "Local APIC Status and Location" (the `IA32_APIC_BASE` MSR layout: BSP flag
//!   bit 8, EXTD bit 10, EN bit 11, APIC base from bit 12 up to MAXPHYADDR-1).
//! - SDM Vol. 3A, "x2APIC Operating Modes" (EN/EXTD: 00 disabled, 10 xAPIC, 11 x2APIC, 01
//!   invalid).
//! - SDM Vol. 2A, CPUID, "Feature Information Returned in the ECX Register" (leaf 1 ECX bit 21,
//!   x2APIC) and "Feature Information Returned in the EDX Register" (leaf 1 EDX bit 9, APIC on
//!   chip); "Initial APIC ID" in leaf 1 EBX bits 31:24.
//! - SDM Vol. 3A, "Local APIC ID" (the xAPIC ID register holds the ID in bits 31:24).

/// `IA32_APIC_BASE` (SDM Vol. 4, "Model-Specific Registers", address 1BH).
pub const IA32_APIC_BASE_MSR: u32 = 0x1B;
/// `IA32_APIC_BASE` bit 8: this processor is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// `IA32_APIC_BASE` bit 10: x2APIC mode enable (EXTD).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// `IA32_APIC_BASE` bit 11: APIC global enable (EN).
pub const APIC_BASE_EN: u64 = 1 << 11;
/// `IA32_APIC_BASE` bits 12..MAXPHYADDR-1: the APIC base (page frame). MAXPHYADDR is at most
/// 52 (SDM Vol. 3A, "Physical Address Space"), so bits 12..=51 cover every processor; higher
/// bits are reserved and zero.
pub const APIC_BASE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// The power-on default APIC base (SDM Vol. 3A, "Local APIC Status and Location").
pub const DEFAULT_APIC_BASE: u64 = 0xFEE0_0000;

/// CPUID leaf 1, ECX bit 21: the processor supports x2APIC.
pub const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID leaf 1, EDX bit 9: the processor has an on-chip APIC.
pub const CPUID_1_EDX_APIC: u32 = 1 << 9;

/// The highest APIC ID addressable in xAPIC mode (8-bit IDs; 0xFF is the broadcast ID).
pub const XAPIC_MAX_ID: u32 = 0xFE;

/// The local APIC's operating mode (SDM Vol. 3A, "x2APIC Operating Modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0, EXTD = 0: the local APIC is globally disabled.
    Disabled,
    /// EN = 1, EXTD = 0: xAPIC mode, registers in the MMIO page at the base address.
    XApic,
    /// EN = 1, EXTD = 1: x2APIC mode, registers are MSRs.
    X2Apic,
    /// EN = 0, EXTD = 1: an invalid state the SDM says software must never create.
    Invalid,
}

/// `IA32_APIC_BASE`, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicBase {
    pub mode: ApicMode,
    /// Physical address of the xAPIC register page (meaningful in xAPIC mode).
    pub base: u64,
    /// This processor is the bootstrap processor.
    pub bsp: bool,
}

impl ApicBase {
    /// Decodes a raw `IA32_APIC_BASE` value.
    pub const fn from_msr(value: u64) -> ApicBase {
        let en = value & APIC_BASE_EN != 0;
        let extd = value & APIC_BASE_EXTD != 0;
        let mode = match (en, extd) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => ApicMode::Invalid,
        };
        ApicBase { mode, base: value & APIC_BASE_ADDRESS_MASK, bsp: value & APIC_BASE_BSP != 0 }
    }

    /// Whether a CPU with `apic_id` can be the destination of an IPI in this mode: any 32-bit
    /// ID in x2APIC mode, IDs up to 0xFE in xAPIC mode (the ICR's destination field is 8 bits,
    /// SDM Vol. 3A, "Interrupt Command Register (ICR)"), none when disabled or invalid.
    pub const fn can_address(&self, apic_id: u32) -> bool {
        match self.mode {
            ApicMode::X2Apic => true,
            ApicMode::XApic => apic_id <= XAPIC_MAX_ID,
            ApicMode::Disabled | ApicMode::Invalid => false,
        }
    }
}

/// CPUID leaf 1 ECX bit 21: x2APIC supported.
pub const fn x2apic_supported(cpuid1_ecx: u32) -> bool {
    cpuid1_ecx & CPUID_1_ECX_X2APIC != 0
}

/// CPUID leaf 1 EDX bit 9: an on-chip local APIC exists.
pub const fn apic_present(cpuid1_edx: u32) -> bool {
    cpuid1_edx & CPUID_1_EDX_APIC != 0
}

/// CPUID leaf 1 EBX bits 31:24: the initial (8-bit) APIC ID of the executing processor.
pub const fn initial_apic_id(cpuid1_ebx: u32) -> u32 {
    cpuid1_ebx >> 24
}

/// The APIC ID held in the xAPIC Local APIC ID register (bits 31:24; x2APIC mode reads the
/// full 32-bit ID from MSR 802H instead).
pub const fn xapic_id_from_register(id_register: u32) -> u32 {
    id_register >> 24
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_en_and_extd() {
        let base = DEFAULT_APIC_BASE;
        assert_eq!(ApicBase::from_msr(base).mode, ApicMode::Disabled);
        assert_eq!(ApicBase::from_msr(base | APIC_BASE_EN).mode, ApicMode::XApic);
        assert_eq!(ApicBase::from_msr(base | APIC_BASE_EN | APIC_BASE_EXTD).mode, ApicMode::X2Apic);
        assert_eq!(ApicBase::from_msr(base | APIC_BASE_EXTD).mode, ApicMode::Invalid);
    }

    #[test]
    fn typical_bsp_value_decodes() {
        // What QEMU's BSP reads at reset: 0xFEE00900 (base, EN, BSP).
        let b = ApicBase::from_msr(0xFEE0_0900);
        assert_eq!(b, ApicBase { mode: ApicMode::XApic, base: 0xFEE0_0000, bsp: true });
        // An AP in x2APIC mode at a relocated base above 4 GiB.
        let ap = ApicBase::from_msr(0x0000_0012_3456_7000 | APIC_BASE_EN | APIC_BASE_EXTD);
        assert_eq!(ap, ApicBase { mode: ApicMode::X2Apic, base: 0x12_3456_7000, bsp: false });
    }

    #[test]
    fn base_ignores_flags_and_reserved_bits() {
        let b = ApicBase::from_msr(u64::MAX);
        assert_eq!(b.base, APIC_BASE_ADDRESS_MASK);
        assert!(b.bsp);
        assert_eq!(b.mode, ApicMode::X2Apic);
        assert_eq!(ApicBase::from_msr(0xFFF).base, 0);
    }

    #[test]
    fn addressable_ids_depend_on_mode() {
        let x = ApicBase::from_msr(DEFAULT_APIC_BASE | APIC_BASE_EN);
        assert!(x.can_address(0) && x.can_address(0xFE));
        assert!(!x.can_address(0xFF) && !x.can_address(300));
        let x2 = ApicBase::from_msr(DEFAULT_APIC_BASE | APIC_BASE_EN | APIC_BASE_EXTD);
        assert!(x2.can_address(300) && x2.can_address(0xFFFF_FFFE));
        assert!(!ApicBase::from_msr(0).can_address(0));
        assert!(!ApicBase::from_msr(APIC_BASE_EXTD).can_address(0));
    }

    #[test]
    fn cpuid_helpers() {
        assert!(x2apic_supported(1 << 21));
        assert!(!x2apic_supported(!(1 << 21)));
        assert!(apic_present(1 << 9));
        assert!(!apic_present(0));
        assert_eq!(initial_apic_id(0x0304_0800), 3);
        assert_eq!(xapic_id_from_register(0x0500_0000), 5);
    }
}
