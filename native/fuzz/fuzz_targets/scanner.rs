//! The scanner on any bytes: no panic, no out-of-bounds access, every line accounted for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // the first byte picks a block size (tiny blocks cut records apart often)
    let (block, data) = match data.split_first() {
        Some((&b, rest)) => (1 + usize::from(b) * 16, rest),
        None => (1 << 20, data),
    };
    if let Err(e) = p11lens_core::check_accounting(data, block) {
        panic!("accounting: {e}");
    }
});
