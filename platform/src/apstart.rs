//! The INIT-SIPI-SIPI sequence, over small traits so it is tested on the host.
//!
//! SDM Vol. 3A, "Typical BSP Initialization Sequence" and "MP Initialization Protocol
//! Algorithm for MP Systems": the BSP sends INIT (level assert), waits 10 ms, sends a
//! Start-up IPI whose vector names the 4 KiB start page below 1 MiB, waits 200 µs, and sends
//! a second SIPI. We de-assert INIT after the assert on xAPIC systems (the sequence older
//! processors need; later ones ignore it) and skip the de-assert in x2APIC mode, where that
//! message type does not exist.
//!
//! Each INIT is preceded by a Start-up IPI naming the same page. A processor that is not in
//! wait-for-SIPI ignores it (SDM), so on hardware it does nothing; but QEMU's TCG latches a SIPI
//! that reaches a running CPU and replays it, with the *newest* vector, right after the CPU's
//! next INIT. Observed here: the second SIPI of one start, latched while the AP ran, replayed
//! after the INIT that stopped it, restarted the old trampoline page (whose TSS was already
//! busy) and triple-faulted the machine. Naming the intended page first makes any replay go
//! where the manager wants the CPU anyway.
//!
//! Every target is sent each step before the next step starts, so all APs start together and
//! no AP waits for another. The 10 ms INIT wait follows Linux's rule (`smp_quirk_init_udelay`):
//! processors that do not need it (Intel family 6 and later, AMD/Hygon family 0Fh and later)
//! skip it, as does any CPU running under a hypervisor, which does not model the delay.
//!
//! Refusals come before any IPI: [`check_targets`] rejects a page that is not a valid SIPI
//! page and an APIC ID listed twice, and the caller has already checked every CPU against the
//! inventory (absent, disabled, the BSP).

use alloc::vec::Vec;
use core::fmt;

/// Wait after INIT assert (SDM: "10-millisecond delay").
pub const INIT_ASSERT_DELAY_US: u64 = 10_000;
/// Wait after each SIPI (SDM: "200-microsecond delay").
pub const SIPI_DELAY_US: u64 = 200;

/// Sends interprocessor interrupts through the local APIC (xAPIC MMIO or x2APIC MSRs).
pub trait Ipi {
    fn send_init_assert(&mut self, apic_id: u32) -> Result<(), IpiError>;
    /// A no-op where the mode has no INIT de-assert (x2APIC).
    fn send_init_deassert(&mut self, apic_id: u32) -> Result<(), IpiError>;
    fn send_startup(&mut self, apic_id: u32, vector: u8) -> Result<(), IpiError>;
}

pub trait Delay {
    fn delay_us(&mut self, us: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiError {
    /// The ICR's delivery-status bit stayed set past the bound (xAPIC only).
    DeliveryTimeout { apic_id: u32 },
    /// The APIC ID cannot be addressed in the mode in force (above 254 in xAPIC mode).
    Unaddressable { apic_id: u32 },
}

impl fmt::Display for IpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpiError::DeliveryTimeout { apic_id } => {
                write!(f, "the local APIC never reported the IPI to APIC {apic_id} as delivered")
            }
            IpiError::Unaddressable { apic_id } => write!(
                f,
                "APIC ID {apic_id} cannot be addressed in xAPIC mode (IDs above 254 need x2APIC)"
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub apic_id: u32,
    /// Physical address of the AP's start page.
    pub page: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Not a 4 KiB page in 0x1000..0x100000 outside the reserved vectors A0h–BFh.
    BadPage {
        apic_id: u32,
        page: u64,
    },
    /// The same CPU appears twice in one start request.
    Duplicate {
        apic_id: u32,
    },
    Ipi(IpiError),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::BadPage { apic_id, page } => {
                write!(f, "start page {page:#x} for APIC {apic_id} is not a valid SIPI page")
            }
            TargetError::Duplicate { apic_id } => {
                write!(f, "APIC {apic_id} was asked to start twice")
            }
            TargetError::Ipi(e) => e.fmt(f),
        }
    }
}

/// The SIPI vector for a start page, if the page is valid (SDM: vectors A0h–BFh reserved).
pub fn sipi_vector(page: u64) -> Option<u8> {
    let valid = page.is_multiple_of(4096) && (0x1000..0x10_0000).contains(&page);
    let vector = (page >> 12) as u8;
    (valid && !(0xA0..=0xBF).contains(&vector)).then_some(vector)
}

/// CPU vendors, from CPUID leaf 0's vendor string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Hygon,
    Other,
}

impl Vendor {
    pub fn from_cpuid(ebx: u32, edx: u32, ecx: u32) -> Vendor {
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&ebx.to_le_bytes());
        s[4..8].copy_from_slice(&edx.to_le_bytes());
        s[8..12].copy_from_slice(&ecx.to_le_bytes());
        match &s {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            _ => Vendor::Other,
        }
    }
}

/// Linux's rule for whether the 10 ms INIT wait is needed (see the module docs).
pub fn init_delay_needed(vendor: Vendor, family: u32, hypervisor: bool) -> bool {
    if hypervisor {
        return false;
    }
    match vendor {
        Vendor::Intel => family < 6,
        Vendor::Amd | Vendor::Hygon => family < 0xF,
        Vendor::Other => true,
    }
}

/// Targets that passed [`check_targets`], each with its SIPI vector.
pub type Valid = Vec<(Target, u8)>;
/// Targets refused by [`check_targets`], each with the reason.
pub type Refused = Vec<(Target, TargetError)>;

/// Checks targets before any IPI; returns the valid ones and a refusal for each other one.
pub fn check_targets(targets: &[Target]) -> (Valid, Refused) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.apic_id == t.apic_id) {
            bad.push((*t, TargetError::Duplicate { apic_id: t.apic_id }));
            continue;
        }
        match sipi_vector(t.page) {
            Some(v) => ok.push((*t, v)),
            None => bad.push((*t, TargetError::BadPage { apic_id: t.apic_id, page: t.page })),
        }
    }
    (ok, bad)
}

/// Sends INIT-SIPI-SIPI to every target, each step to all targets before the next step.
///
/// Returns one result per target, in order. A target whose IPI failed is dropped from the
/// later steps; the others go on.
pub fn start_all(
    ipi: &mut impl Ipi,
    delay: &mut impl Delay,
    targets: &[Target],
    init_delay: bool,
) -> Vec<(Target, Result<(), TargetError>)> {
    let (valid, refused) = check_targets(targets);
    let mut failed: Vec<(u32, IpiError)> = Vec::new();
    let live = |failed: &Vec<(u32, IpiError)>, id: u32| !failed.iter().any(|(f, _)| *f == id);

    // A SIPI before the INIT: ignored by a processor that is not waiting for one (SDM), but it
    // makes sure an emulator that latched an earlier SIPI and replays it after the INIT (QEMU's
    // TCG does) sends the CPU to *this* page. See the module docs.
    for (t, v) in &valid {
        if let Err(e) = ipi.send_startup(t.apic_id, *v) {
            failed.push((t.apic_id, e));
        }
    }
    for (t, _) in &valid {
        if live(&failed, t.apic_id) {
            if let Err(e) = ipi.send_init_assert(t.apic_id) {
                failed.push((t.apic_id, e));
            }
        }
    }
    if init_delay {
        delay.delay_us(INIT_ASSERT_DELAY_US);
    }
    for (t, _) in &valid {
        if live(&failed, t.apic_id) {
            if let Err(e) = ipi.send_init_deassert(t.apic_id) {
                failed.push((t.apic_id, e));
            }
        }
    }
    for _ in 0..2 {
        for (t, v) in &valid {
            if live(&failed, t.apic_id) {
                if let Err(e) = ipi.send_startup(t.apic_id, *v) {
                    failed.push((t.apic_id, e));
                }
            }
        }
        delay.delay_us(SIPI_DELAY_US);
    }

    targets
        .iter()
        .map(|t| {
            if let Some((_, e)) = refused.iter().find(|(r, _)| r == t) {
                return (*t, Err(*e));
            }
            match failed.iter().find(|(id, _)| *id == t.apic_id) {
                Some((_, e)) => (*t, Err(TargetError::Ipi(*e))),
                None => (*t, Ok(())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Ev {
        Init(u32),
        Deassert(u32),
        Sipi(u32, u8),
        Delay(u64),
    }

    #[derive(Default)]
    struct Fake {
        log: Vec<Ev>,
        stuck: Option<u32>,
    }

    impl Ipi for Fake {
        fn send_init_assert(&mut self, id: u32) -> Result<(), IpiError> {
            self.log.push(Ev::Init(id));
            if self.stuck == Some(id) {
                return Err(IpiError::DeliveryTimeout { apic_id: id });
            }
            Ok(())
        }
        fn send_init_deassert(&mut self, id: u32) -> Result<(), IpiError> {
            self.log.push(Ev::Deassert(id));
            Ok(())
        }
        fn send_startup(&mut self, id: u32, v: u8) -> Result<(), IpiError> {
            self.log.push(Ev::Sipi(id, v));
            Ok(())
        }
    }

    struct D<'a>(&'a mut Vec<Ev>);
    impl Delay for D<'_> {
        fn delay_us(&mut self, us: u64) {
            self.0.push(Ev::Delay(us));
        }
    }

    #[test]
    fn every_step_goes_to_every_cpu_before_the_next() {
        let mut ipi = Fake::default();
        let mut delays = Vec::new();
        let t = [Target { apic_id: 1, page: 0x8000 }, Target { apic_id: 2, page: 0x9000 }];
        let r = start_all(&mut ipi, &mut D(&mut delays), &t, true);
        assert!(r.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(
            ipi.log,
            vec![
                Ev::Sipi(1, 8),
                Ev::Sipi(2, 9),
                Ev::Init(1),
                Ev::Init(2),
                Ev::Deassert(1),
                Ev::Deassert(2),
                Ev::Sipi(1, 8),
                Ev::Sipi(2, 9),
                Ev::Sipi(1, 8),
                Ev::Sipi(2, 9)
            ]
        );
        assert_eq!(delays, vec![Ev::Delay(10_000), Ev::Delay(200), Ev::Delay(200)]);
    }

    #[test]
    fn the_init_wait_is_skipped_when_not_needed() {
        let mut ipi = Fake::default();
        let mut delays = Vec::new();
        start_all(&mut ipi, &mut D(&mut delays), &[Target { apic_id: 3, page: 0x1000 }], false);
        assert_eq!(delays, vec![Ev::Delay(200), Ev::Delay(200)]);
    }

    #[test]
    fn refused_targets_get_no_ipi_and_a_stuck_one_does_not_stop_the_others() {
        let mut ipi = Fake { stuck: Some(2), ..Fake::default() };
        let mut delays = Vec::new();
        let t = [
            Target { apic_id: 1, page: 0x8000 },
            Target { apic_id: 2, page: 0x9000 },
            Target { apic_id: 5, page: 0xA_0000 }, // reserved vector A0h
            Target { apic_id: 1, page: 0xB000 },   // duplicate
            Target { apic_id: 6, page: 0x8800 },   // not page-aligned
        ];
        let r = start_all(&mut ipi, &mut D(&mut delays), &t, false);
        assert_eq!(r[0].1, Ok(()));
        assert_eq!(r[1].1, Err(TargetError::Ipi(IpiError::DeliveryTimeout { apic_id: 2 })));
        assert_eq!(r[2].1, Err(TargetError::BadPage { apic_id: 5, page: 0xA_0000 }));
        assert_eq!(r[3].1, Err(TargetError::Duplicate { apic_id: 1 }));
        assert!(matches!(r[4].1, Err(TargetError::BadPage { apic_id: 6, .. })));
        assert!(!ipi.log.iter().any(|e| matches!(e, Ev::Init(5) | Ev::Init(6))));
        // APIC 2's INIT failed: it gets no SIPI after it (only the one that precedes every INIT).
        let init2 = ipi.log.iter().position(|e| *e == Ev::Init(2)).unwrap();
        assert!(!ipi.log[init2..].iter().any(|e| matches!(e, Ev::Sipi(2, _))));
        assert_eq!(ipi.log.iter().filter(|e| matches!(e, Ev::Sipi(1, 8))).count(), 3);
    }

    #[test]
    fn linux_init_delay_rule() {
        assert!(!init_delay_needed(Vendor::Intel, 6, false));
        assert!(init_delay_needed(Vendor::Intel, 5, false));
        assert!(!init_delay_needed(Vendor::Amd, 0xF, false));
        assert!(init_delay_needed(Vendor::Amd, 6, false));
        assert!(!init_delay_needed(Vendor::Other, 0, true));
        assert!(init_delay_needed(Vendor::Other, 0, false));
        let v = Vendor::from_cpuid(
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ineI"),
            u32::from_le_bytes(*b"ntel"),
        );
        assert_eq!(v, Vendor::Intel);
    }

    #[test]
    fn sipi_vectors() {
        assert_eq!(sipi_vector(0x8000), Some(8));
        assert_eq!(sipi_vector(0x9f000), Some(0x9f));
        assert_eq!(sipi_vector(0xC0000), Some(0xC0));
        assert_eq!(sipi_vector(0xBF000), None);
        assert_eq!(sipi_vector(0), None);
        assert_eq!(sipi_vector(0x100000), None);
    }
}
