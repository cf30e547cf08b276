//! The INIT-SIPI-SIPI sequences that start and stop application processors, over small traits
//! so they are tested on the host.
//!
//! SDM Vol. 3A, "Typical BSP Initialization Sequence" and "MP Initialization Protocol
//! Algorithm for MP Systems": the BSP sends INIT (level assert), waits 10 ms, sends a
//! Start-up IPI whose vector names the 4 KiB start page below 1 MiB, waits 200 µs, and sends
//! a second SIPI. We de-assert INIT after the assert on xAPIC systems (the sequence older
//! processors need; later ones ignore it) and skip the de-assert in x2APIC mode, where that
//! message type does not exist.
//!
//! Every AP is sent to the same start page ([`start_all`]); each finds its own parameters by
//! its APIC ID (see the `trampoline` crate). A CPU is stopped by an INIT followed by a SIPI to
//! the parking page ([`park_all`]), where it records its APIC ID: proof that it took the INIT.
//!
//! Each INIT is preceded by a Start-up IPI naming the page the CPU should go to. A processor
//! that is not in wait-for-SIPI ignores it (SDM), so on hardware it does nothing; but QEMU's TCG
//! latches a SIPI that reaches a running CPU and replays it, with the *newest* vector, right
//! after the CPU's next INIT. Observed here: the second SIPI of one start, latched while the AP
//! ran, replayed after the INIT that stopped it, restarted the start-up code and
//! triple-faulted the machine. Naming the intended page first makes any replay go where the
//! manager wants the CPU anyway.
//!
//! Every target is sent each step before the next step starts, so all APs start (or stop)
//! together and no AP waits for another. The SDM's second SIPI goes only to CPUs that have not
//! shown up after the first ([`second_sipi`], the caller knows who arrived): the first reaches
//! every CPU on any machine of the last twenty years, and under QEMU, where each IPI costs the
//! BSP more as the started APs compete for the host, a second full round doubled the time. The 10 ms INIT wait follows Linux's rule
//! (`smp_quirk_init_udelay`): processors that do not need it (Intel family 6 and later,
//! AMD/Hygon family 0Fh and later) skip it, as does any CPU running under a hypervisor, which
//! does not model the delay; otherwise one 10 ms wait covers every target of the batch.
//!
//! Refusals come before any IPI: the caller has checked every CPU against the inventory
//! (absent, disabled, the BSP) and the pages against the plan; [`start_all`] and [`park_all`]
//! refuse an invalid page or an APIC ID listed twice before sending anything.

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

impl core::error::Error for IpiError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Not a 4 KiB page in 0x1000..0x100000 outside the reserved vectors A0h–BFh.
    BadPage {
        page: u64,
    },
    /// The same CPU appears twice in one request.
    Duplicate {
        apic_id: u32,
    },
    Ipi(IpiError),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::BadPage { page } => {
                write!(f, "start-up page {page:#x} is not a valid SIPI page")
            }
            TargetError::Duplicate { apic_id } => {
                write!(f, "APIC {apic_id} was asked to start twice")
            }
            TargetError::Ipi(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for TargetError {}

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

/// The outcome for each CPU of a batch, in request order.
pub type Results = Vec<(u32, Result<(), TargetError>)>;

/// Refuses a bad page or duplicate IDs before any IPI: `Err` for the whole batch (bad page),
/// or the per-CPU duplicates.
fn check(apic_ids: &[u32], page: u64) -> Result<(u8, Vec<Option<TargetError>>), TargetError> {
    let vector = trampoline::sipi_vector(page).ok_or(TargetError::BadPage { page })?;
    let dup = apic_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            apic_ids[..i].contains(id).then_some(TargetError::Duplicate { apic_id: *id })
        })
        .collect();
    Ok((vector, dup))
}

/// The INIT part shared by starting and parking: a SIPI to `vector` (for the replay quirk), INIT
/// assert to all, the wait if needed, INIT de-assert to all. Returns each CPU's first failure.
fn init_all(
    hw: &mut (impl Ipi + Delay),
    apic_ids: &[u32],
    vector: u8,
    init_delay: bool,
    failed: &mut [Option<TargetError>],
) {
    for (i, &id) in apic_ids.iter().enumerate() {
        if failed[i].is_none() {
            failed[i] = hw.send_startup(id, vector).err().map(TargetError::Ipi);
        }
    }
    for (i, &id) in apic_ids.iter().enumerate() {
        if failed[i].is_none() {
            failed[i] = hw.send_init_assert(id).err().map(TargetError::Ipi);
        }
    }
    if init_delay {
        hw.delay_us(INIT_ASSERT_DELAY_US);
    }
    for (i, &id) in apic_ids.iter().enumerate() {
        if failed[i].is_none() {
            failed[i] = hw.send_init_deassert(id).err().map(TargetError::Ipi);
        }
    }
}

/// Sends one SIPI to `vector` to every CPU not failed yet, then the SDM's 200 µs wait.
fn sipi_all(
    hw: &mut (impl Ipi + Delay),
    apic_ids: &[u32],
    vector: u8,
    failed: &mut [Option<TargetError>],
) {
    for (i, &id) in apic_ids.iter().enumerate() {
        if failed[i].is_none() {
            failed[i] = hw.send_startup(id, vector).err().map(TargetError::Ipi);
        }
    }
    hw.delay_us(SIPI_DELAY_US);
}

fn results(apic_ids: &[u32], failed: Vec<Option<TargetError>>) -> Results {
    apic_ids.iter().zip(failed).map(|(&id, f)| (id, f.map_or(Ok(()), Err))).collect()
}

/// Starts every CPU in `apic_ids` at the start page `page`: a SIPI before the INIT (see the
/// module docs), INIT, the wait if needed, one SIPI and the 200 µs wait; each step to all CPUs
/// before the next. The caller sends [`second_sipi`] to the CPUs that have not arrived.
///
/// A CPU whose IPI failed is dropped from the later steps; the others go on.
pub fn start_all(
    hw: &mut (impl Ipi + Delay),
    apic_ids: &[u32],
    page: u64,
    init_delay: bool,
) -> Result<Results, TargetError> {
    let (vector, mut failed) = check(apic_ids, page)?;
    init_all(hw, apic_ids, vector, init_delay, &mut failed);
    sipi_all(hw, apic_ids, vector, &mut failed);
    Ok(results(apic_ids, failed))
}

/// Stops every CPU in `apic_ids` and sends it to the parking page `page`: a SIPI to the page
/// (see the module docs), INIT, the wait if needed, one SIPI. Whether each CPU arrived is for
/// the caller to check in the park log; [`second_sipi`] sends the SDM's second SIPI to those
/// that have not.
pub fn park_all(
    hw: &mut (impl Ipi + Delay),
    apic_ids: &[u32],
    page: u64,
    init_delay: bool,
) -> Result<Results, TargetError> {
    let (vector, mut failed) = check(apic_ids, page)?;
    init_all(hw, apic_ids, vector, init_delay, &mut failed);
    sipi_all(hw, apic_ids, vector, &mut failed);
    Ok(results(apic_ids, failed))
}

/// The SDM's second SIPI (to `page`, then the 200 µs wait), for the CPUs of a start or a park
/// that have not arrived after the first.
pub fn second_sipi(
    hw: &mut (impl Ipi + Delay),
    apic_ids: &[u32],
    page: u64,
) -> Result<Results, TargetError> {
    let (vector, mut failed) = check(apic_ids, page)?;
    sipi_all(hw, apic_ids, vector, &mut failed);
    Ok(results(apic_ids, failed))
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
        delays: Vec<Ev>,
        stuck: Option<u32>,
    }

    impl Delay for Fake {
        fn delay_us(&mut self, us: u64) {
            self.delays.push(Ev::Delay(us));
        }
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

    #[test]
    fn every_step_goes_to_every_cpu_before_the_next_and_all_share_one_page() {
        let mut ipi = Fake::default();
        let r = start_all(&mut ipi, &[1, 2], 0x8000, true).unwrap();
        assert!(r.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(
            ipi.log,
            vec![
                Ev::Sipi(1, 8),
                Ev::Sipi(2, 8),
                Ev::Init(1),
                Ev::Init(2),
                Ev::Deassert(1),
                Ev::Deassert(2),
                Ev::Sipi(1, 8),
                Ev::Sipi(2, 8),
            ]
        );
        assert_eq!(ipi.delays, vec![Ev::Delay(10_000), Ev::Delay(200)]);
    }

    #[test]
    fn one_init_wait_covers_hundreds_of_cpus_and_is_skipped_when_not_needed() {
        let ids: Vec<u32> = (1..300).collect();
        let mut hw = Fake::default();
        start_all(&mut hw, &ids, 0x1000, true).unwrap();
        assert_eq!(hw.delays.iter().filter(|d| **d == Ev::Delay(10_000)).count(), 1);
        let mut hw = Fake::default();
        start_all(&mut hw, &[3], 0x1000, false).unwrap();
        assert_eq!(hw.delays, vec![Ev::Delay(200)]);
    }

    #[test]
    fn a_bad_page_sends_nothing_and_a_stuck_or_duplicate_cpu_does_not_stop_the_others() {
        let mut ipi = Fake::default();
        assert_eq!(
            start_all(&mut ipi, &[1], 0xA_0000, false),
            Err(TargetError::BadPage { page: 0xA_0000 })
        );
        assert!(ipi.log.is_empty());
        let mut ipi = Fake { stuck: Some(2), ..Fake::default() };
        let r = start_all(&mut ipi, &[1, 2, 1, 3], 0x8000, false).unwrap();
        assert_eq!(r[0], (1, Ok(())));
        assert_eq!(r[1], (2, Err(TargetError::Ipi(IpiError::DeliveryTimeout { apic_id: 2 }))));
        assert_eq!(r[2], (1, Err(TargetError::Duplicate { apic_id: 1 })));
        assert_eq!(r[3], (3, Ok(())));
        // APIC 2's INIT failed: it gets no SIPI after it (only the one that precedes every INIT).
        let init2 = ipi.log.iter().position(|e| *e == Ev::Init(2)).unwrap();
        assert!(!ipi.log[init2..].iter().any(|e| matches!(e, Ev::Sipi(2, _))));
        assert_eq!(ipi.log.iter().filter(|e| matches!(e, Ev::Sipi(1, 8))).count(), 2);
    }

    #[test]
    fn parking_sends_a_sipi_before_the_init_and_one_after() {
        let mut ipi = Fake::default();
        let r = park_all(&mut ipi, &[4, 5], 0x9000, false).unwrap();
        assert!(r.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(
            ipi.log,
            vec![
                Ev::Sipi(4, 9),
                Ev::Sipi(5, 9),
                Ev::Init(4),
                Ev::Init(5),
                Ev::Deassert(4),
                Ev::Deassert(5),
                Ev::Sipi(4, 9),
                Ev::Sipi(5, 9),
            ]
        );
        ipi.log.clear();
        second_sipi(&mut ipi, &[5], 0x9000).unwrap();
        assert_eq!(ipi.log, vec![Ev::Sipi(5, 9)]);
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
}
