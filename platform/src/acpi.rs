//! ACPI table arithmetic shared by everything that reads or writes tables: the one checksum.
//!
//! ACPI 6.5, "System Description Table Header": every table (and the RSDP, over its first 20
//! bytes and, from revision 2, over its whole length) sums to zero modulo 256, the checksum byte
//! included.

/// The sum of `bytes` modulo 256; a valid table sums to 0.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, &b| acc.wrapping_add(b))
}

/// Sets the checksum byte at `at` so that `table` sums to 0. Does nothing if `at` is outside.
pub fn set_checksum(table: &mut [u8], at: usize) {
    if let Some(b) = table.get_mut(at) {
        *b = 0;
    } else {
        return;
    }
    let sum = checksum(table);
    if let Some(b) = table.get_mut(at) {
        *b = 0u8.wrapping_sub(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_checksum_makes_the_table_sum_to_zero() {
        let mut t = [1u8, 2, 3, 0, 250];
        set_checksum(&mut t, 3);
        assert_eq!(checksum(&t), 0);
        assert_eq!(t[3], 0u8.wrapping_sub(6u8.wrapping_add(250)));
        set_checksum(&mut t, 99);
        assert_eq!(checksum(&t), 0);
    }
}
