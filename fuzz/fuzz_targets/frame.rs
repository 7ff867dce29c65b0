//! The frame decoder alone: any bytes, as one received record (`wire::parse` and
//! `wire::parse_first`, `docs/PROTOCOL.md` §2, §3 and §7 rules 5–6).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmlink::fuzzing::frame(data));
