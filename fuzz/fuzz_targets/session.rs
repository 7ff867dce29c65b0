//! A fresh session fed a sequence of records as a hostile peer could send them, with
//! real sealed memory files attached (`docs/PROTOCOL.md` §3–§7). The input format is
//! documented on `shmlink::fuzzing::session`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmlink::fuzzing::session(data));
