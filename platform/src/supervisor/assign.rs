//! Which CPUs each instance gets: checked against the MADT inventory before anything else
//! happens, so a CPU that does not exist, is disabled, is the BSP or is named twice refuses
//! that instance alone, before any IPI.

use alloc::string::String;
use alloc::vec::Vec;

use crate::madt::Inventory;

use super::error::CpuProblem;

/// What an instance asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuRequest {
    /// These APIC IDs, in this order (the first is the boot CPU).
    Explicit(Vec<u32>),
    /// This many free startable CPUs, in inventory order.
    Any(usize),
}

/// Assigns CPUs to each request, in order, explicit requests first (so "any" never takes a CPU
/// someone named). `max_per_instance` bounds one instance's CPUs (the boot info's room).
pub fn assign(
    requests: &[(&str, CpuRequest)],
    inventory: Option<&Inventory>,
    max_per_instance: usize,
) -> Vec<Result<Vec<u32>, CpuProblem>> {
    let mut out: Vec<Result<Vec<u32>, CpuProblem>> =
        requests.iter().map(|_| Err(CpuProblem::NoInventory)).collect();
    let Some(inv) = inventory else { return out };
    let listed: Vec<u32> = inv.cpus.iter().map(|c| c.apic_id).collect();
    let asked: usize = requests
        .iter()
        .map(|(_, r)| match r {
            CpuRequest::Explicit(ids) => ids.len(),
            CpuRequest::Any(n) => *n,
        })
        .sum();
    let startable = inv.startable_cpus().count();
    let mut taken: Vec<(u32, String)> = Vec::new();
    let too_many = |n: usize| {
        (n > max_per_instance).then_some(CpuProblem::TooMany { wanted: n, max: max_per_instance })
    };
    for (i, (name, req)) in requests.iter().enumerate() {
        let CpuRequest::Explicit(ids) = req else { continue };
        out[i] = (|| {
            if let Some(p) = too_many(ids.len()) {
                return Err(p);
            }
            for &id in ids {
                if let Some((_, owner)) = taken.iter().find(|(t, _)| *t == id) {
                    return Err(CpuProblem::Taken { apic_id: id, owner: owner.clone() });
                }
                if let Err(refusal) = inv.check_startable(id) {
                    return Err(CpuProblem::Refused { refusal, listed: listed.clone() });
                }
                if ids.iter().filter(|&&x| x == id).count() > 1 {
                    return Err(CpuProblem::Taken { apic_id: id, owner: String::from(*name) });
                }
            }
            for &id in ids {
                taken.push((id, String::from(*name)));
            }
            Ok(ids.clone())
        })();
    }
    for (i, (name, req)) in requests.iter().enumerate() {
        let CpuRequest::Any(n) = *req else { continue };
        out[i] = (|| {
            if let Some(p) = too_many(n) {
                return Err(p);
            }
            let free: Vec<u32> = inv
                .startable_cpus()
                .map(|c| c.apic_id)
                .filter(|id| !taken.iter().any(|(t, _)| t == id))
                .collect();
            if free.len() < n || n == 0 {
                let (wanted, free) = (n.max(1), free.len());
                return Err(CpuProblem::NoneLeft { wanted, free, asked, startable });
            }
            let got: Vec<u32> = free[..n].to_vec();
            for &id in &got {
                taken.push((id, String::from(*name)));
            }
            Ok(got)
        })();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::madt::CpuRefusal;
    use alloc::string::ToString;
    use alloc::vec;

    fn inventory(ids: &[u32]) -> Inventory {
        crate::madt::test_inventory(ids, &[7])
    }

    #[test]
    fn explicit_cpus_first_then_any_in_inventory_order() {
        let inv = inventory(&[0, 1, 2, 3]);
        let r = assign(
            &[
                ("a", CpuRequest::Any(1)),
                ("b", CpuRequest::Explicit(vec![1])),
                ("c", CpuRequest::Any(2)),
            ],
            Some(&inv),
            256,
        );
        assert_eq!(
            r,
            vec![
                Ok(vec![2]),
                Ok(vec![1]),
                Ok(vec![3]).and(Err(CpuProblem::NoneLeft {
                    wanted: 2,
                    free: 1,
                    asked: 4,
                    startable: 3
                }))
            ]
        );
    }

    #[test]
    fn refusals_are_specific_and_stop_only_their_instance() {
        let inv = inventory(&[0, 1, 2, 7]);
        let r = assign(
            &[
                ("bsp", CpuRequest::Explicit(vec![0])),
                ("ghost", CpuRequest::Explicit(vec![9])),
                ("off", CpuRequest::Explicit(vec![7])),
                ("first", CpuRequest::Explicit(vec![2])),
                ("second", CpuRequest::Explicit(vec![2])),
                ("twice", CpuRequest::Explicit(vec![1, 1])),
                ("many", CpuRequest::Any(300)),
            ],
            Some(&inv),
            256,
        );
        assert_eq!(
            r[0],
            Err(CpuProblem::Refused {
                refusal: CpuRefusal::IsBsp { apic_id: 0 },
                listed: vec![0, 1, 2, 7]
            })
        );
        assert_eq!(
            r[1].as_ref().unwrap_err().to_string(),
            "CPU 9 does not exist: the MADT lists APIC IDs 0, 1, 2, 7"
        );
        assert!(matches!(
            r[2],
            Err(CpuProblem::Refused { refusal: CpuRefusal::Disabled { apic_id: 7 }, .. })
        ));
        assert_eq!(r[3], Ok(vec![2]));
        assert_eq!(
            r[4].as_ref().unwrap_err().to_string(),
            "CPU 2 is already given to instance 'first'"
        );
        assert!(matches!(r[5], Err(CpuProblem::Taken { apic_id: 1, .. })));
        assert_eq!(
            r[6].as_ref().unwrap_err().to_string(),
            "it asks for 300 CPUs; one instance can have at most 256"
        );
    }

    #[test]
    fn without_an_inventory_nobody_gets_a_cpu() {
        let r = assign(&[("a", CpuRequest::Any(1))], None, 256);
        assert_eq!(
            r[0].as_ref().unwrap_err().to_string(),
            "no CPU inventory (the MADT could not be read); no AP can be started"
        );
    }

    #[test]
    fn long_cpu_lists_are_shortened_in_messages() {
        let ids: Vec<u32> = (0..300).collect();
        let inv = inventory(&ids);
        let r = assign(&[("x", CpuRequest::Explicit(vec![999]))], Some(&inv), 256);
        let msg = r[0].as_ref().unwrap_err().to_string();
        assert!(msg.contains("0, 1, 2, 3, 4, 5, 6, 7, ... (284 more), 292,"), "{msg}");
        assert!(msg.ends_with("299"), "{msg}");
    }
}
