//! Fuzz target: `bundle::parse` on arbitrary bytes (a corrupted ramdisk) never panics, and every
//! file it accepts can be fetched without panicking (bounds were checked, checksums are).

#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::bundle;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = bundle::parse(data) else { return };
    for i in 0..parsed.files.len() as u32 + 1 {
        let _ = parsed.file(data, i);
    }
    assert!(parsed.instances.len() <= bundle::MAX_INSTANCES);
});
