//! A fresh session fed a sequence of records as a hostile peer could send them, with
//! real memory files (and pipes) attached (`docs/PROTOCOL.md` §3–§7). The input format
//! is documented on `shmlink::fuzzing::session`; `fuzz/make-seeds.py` writes seeds in it.
//!
//! Besides panics, two oracles: once the session is gone, every descriptor it received
//! is closed (`/proc/self/fd` counts the same as before, §5.4 rule 2) and every region
//! it mapped has given back its share of the process-wide limits (`process_usage()` is
//! zero, as it was before).
#![no_main]

use libfuzzer_sys::fuzz_target;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fuzz_target!(|data: &[u8]| {
    let fds = open_fds();
    shmlink::fuzzing::session(data);
    assert_eq!(open_fds(), fds, "descriptors leaked by the session");
    assert_eq!(
        shmlink::process_usage(),
        shmlink::ProcessUsage::default(),
        "regions still charged to the process after the session ended"
    );
});
