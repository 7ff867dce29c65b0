//! Rings (`docs/PROTOCOL.md` §9): per direction, a single-producer single-consumer queue
//! of frames in a memory file that the producer creates and seals and the consumer checks
//! and maps like any region. Small messages travel through it without a system call;
//! messages that carry descriptors, or do not fit, still go over the socket, and each
//! entry says how many socket frames come before it, so the two paths form one ordered
//! stream.
//!
//! ```text
//! offset 0    tail     u32  bytes the producer has published (mod 2^32); only it writes
//! offset 64   head     u32  bytes the consumer has taken (mod 2^32); only it writes
//! offset 128  waiting  u32  bit 0: a thread sleeps on the futex of this word; bit 1: an
//!                           event loop waits for a WAKE frame. The consumer sets bits; the
//!                           producer takes them all (swaps in 0) after every publication
//! offset 192  cpu      u32  advisory: the CPU the consumer last waited on, plus one (0:
//!                           unknown); only it writes. Its peer reads it to decide whether
//!                           spinning for a reply can pay (not when both share one CPU)
//! offset 256  entries  `capacity` bytes (a power of two); at `head % capacity`, 8-aligned:
//!                      len u32, socket_before u32, `len` bytes of frame, padding to 8.
//!                      len 0: the rest of the area is padding, go on at its start
//! ```
//!
//! Everything read from the ring is the peer's word and is checked before use: a wrong
//! index or length is a protocol violation, never a read outside the mapping or a wait
//! that cannot end. The sleep/wake handshake and its proof are in `docs/MEMORY-MODEL.md`
//! §10; the [`Memory`] trait lets `loom` check the same code (the `model` tests below).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::region::Region;
use crate::sync::Ordering;
use crate::sys;

/// Bytes before the entry area.
pub(crate) const HEADER_LEN: usize = 256;
/// The smallest and largest entry area a consumer accepts (§9).
pub(crate) const MIN_CAPACITY: u32 = 4096;
pub(crate) const MAX_CAPACITY: u32 = 1 << 20;
/// The entry area of the rings this side creates: room for a few hundred small messages.
pub(crate) const CAPACITY: u32 = 64 << 10;
/// Bytes of an entry's header (`len`, `socket_before`).
const ENTRY_HEADER: u32 = 8;
/// `waiting` bit: a thread sleeps on the futex of `waiting` itself. Sleeping on `tail`
/// would lose the wake-up a socket frame sends, which changes no word of the ring (the
/// `loom` model found it); the producer's swap changes `waiting` whatever it published.
pub(crate) const PARKED: u32 = 1;
/// `waiting` bit: an event loop waits for a WAKE frame on the socket.
pub(crate) const LOOP: u32 = 2;

/// The three words of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Word {
    Tail,
    Head,
    Waiting,
    ConsumerCpu,
}

impl Word {
    const fn offset(self) -> usize {
        match self {
            Word::Tail => 0,
            Word::Head => 64,
            Word::Waiting => 128,
            Word::ConsumerCpu => 192,
        }
    }
}

/// What the ring algorithm needs of the shared memory: atomic words, copies in and out
/// of the entry area, and a futex on `waiting`. The mapping implements it for real; the
/// `loom` model implements it with loom's atomics, cells and a condition variable, so the
/// model checks this module's code, not a copy of it.
pub(crate) trait Memory {
    fn load(&self, word: Word, order: Ordering) -> u32;
    fn store(&self, word: Word, value: u32, order: Ordering);
    fn swap(&self, word: Word, value: u32, order: Ordering) -> u32;
    fn fetch_or(&self, word: Word, bits: u32, order: Ordering) -> u32;
    fn fetch_and(&self, word: Word, bits: u32, order: Ordering) -> u32;
    /// Copies `src` into the entry area at `at`; the caller keeps it in bounds.
    fn write(&self, at: usize, src: Bytes<'_>);
    /// Copies the entry area at `at` into `dst`; the caller keeps it in bounds.
    fn read(&self, at: usize, dst: &mut [u8]);
    /// Sleeps while `waiting` holds `expected`, up to `timeout` (a futex wait).
    fn park(&self, expected: u32, timeout: Duration);
    /// Wakes whoever sleeps in [`Memory::park`].
    fn unpark(&self);
}

/// `len` rounded up to a multiple of 8, in 64 bits so that no peer-given length overflows.
fn align8(len: u32) -> u64 {
    u64::from(len).div_ceil(8) * 8
}

fn corrupt(op: &'static str, text: impl std::fmt::Display) -> Error {
    Error::protocol(op, format!("the peer's ring is corrupt: {text}"))
}

/// The producing end: this side's own ring.
#[derive(Debug)]
pub(crate) struct Producer<M> {
    memory: M,
    capacity: u32,
    tail: u32,
    /// The consumer's `head` as this side last read (and checked) it. The shared word is
    /// read again only when an entry does not fit before this one: each read pulls its
    /// cache line away from the consumer, which writes it after every entry, and a round
    /// trip across CPUs paid for that line twice per message.
    head_seen: u32,
    /// Frames sent on the socket since the last entry; the next entry says so.
    socket_before: u32,
}

impl<M: Memory> Producer<M> {
    /// A producer over fresh (zeroed) memory with an entry area of `capacity` bytes.
    pub(crate) fn new(memory: M, capacity: u32) -> Self {
        Producer {
            memory,
            capacity,
            tail: 0,
            head_seen: 0,
            socket_before: 0,
        }
    }

    /// The longest frame this side puts in the ring: a quarter of it, so that a few
    /// large messages cannot crowd out many small ones. Longer frames take the socket.
    pub(crate) fn max_frame(&self) -> usize {
        (self.capacity / 4 - ENTRY_HEADER) as usize
    }

    /// Appends one entry holding the frame `parts` and publishes it; `Ok(false)` when
    /// the ring has no room now (the frame then goes on the socket). Fails when the
    /// consumer has moved `head` somewhere it cannot be.
    pub(crate) fn push(&mut self, parts: &[Bytes<'_>]) -> Result<bool> {
        const OP: &str = "send";
        let len: usize = parts.iter().map(Bytes::len).sum();
        let len = u32::try_from(len).map_err(|_| Error::invalid(OP, "frame too long"))?;
        let size = u64::from(ENTRY_HEADER) + align8(len);
        let at = self.tail & (self.capacity - 1);
        let to_end = self.capacity - at;
        let skip = if size > u64::from(to_end) { to_end } else { 0 };
        let fits = |used: u32| u64::from(skip) + size <= u64::from(self.capacity - used);
        if !fits(self.tail.wrapping_sub(self.head_seen)) {
            // SYNC POINT: acquire (MEMORY-MODEL.md §10.2). The consumer's reads of the
            // entries it took happen-before this side writes over them.
            let head = self.memory.load(Word::Head, Ordering::Acquire);
            let used = self.tail.wrapping_sub(head);
            if used > self.capacity || !used.is_multiple_of(8) {
                return Err(corrupt(
                    OP,
                    format!("its head is {used} bytes behind this side's tail, outside the ring"),
                ));
            }
            self.head_seen = head;
            if !fits(used) {
                return Ok(false);
            }
        }
        // Fits in the ring, so in 32 bits.
        let size = size as u32;
        if skip > 0 {
            self.put_header(at, 0, 0);
            self.tail = self.tail.wrapping_add(skip);
        }
        let at = self.tail & (self.capacity - 1);
        self.put_header(at, len, self.socket_before);
        let mut offset = (at + ENTRY_HEADER) as usize;
        for part in parts {
            self.memory.write(offset, *part);
            offset += part.len();
        }
        self.tail = self.tail.wrapping_add(size);
        self.socket_before = 0;
        // SYNC POINT: release (MEMORY-MODEL.md §10.1). The entry's bytes happen-before the
        // consumer's reads of them after it sees this tail.
        self.memory.store(Word::Tail, self.tail, Ordering::Release);
        Ok(true)
    }

    fn put_header(&self, at: u32, len: u32, socket_before: u32) {
        let mut header = [0u8; ENTRY_HEADER as usize];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&socket_before.to_le_bytes());
        self.memory.write(at as usize, Bytes::from(&header));
    }

    /// A frame of this direction left on the socket: the next entry comes after it.
    pub(crate) fn sent_on_socket(&mut self) {
        self.socket_before = self.socket_before.saturating_add(1);
    }

    /// After publishing an entry: takes the consumer's `waiting` bits, wakes a thread
    /// parked on the futex, and returns the bits taken: with [`LOOP`] an event loop was
    /// waiting (the caller then rings it with WAKE).
    pub(crate) fn wake(&self) -> u32 {
        // SYNC POINT: acquire-release (MEMORY-MODEL.md §10.3). An RMW on `waiting`: either
        // it sees the consumer's announcement, or the consumer's announcing RMW reads this
        // one's 0 and then sees the tail published before it.
        let waiting = self.memory.swap(Word::Waiting, 0, Ordering::AcqRel);
        if waiting & PARKED != 0 {
            self.memory.unpark();
        }
        waiting
    }

    /// After sending a frame on the socket: wakes a thread parked on the futex, which then
    /// looks at the socket. An event loop's announcement stays: the record wakes the loop
    /// by itself, but by the time this runs the loop may have taken the record and
    /// announced itself again, and that announcement is for the next entry (taking it here
    /// lost that entry's wake-up; `model::a_socket_frame_then_an_entry_ring_the_loop`).
    /// Returns whether a thread was parked.
    pub(crate) fn wake_parked(&self) -> bool {
        // SYNC POINT: acquire-release (MEMORY-MODEL.md §10.4), as in `wake`.
        let waiting = self
            .memory
            .fetch_and(Word::Waiting, !PARKED, Ordering::AcqRel);
        if waiting & PARKED != 0 {
            self.memory.unpark();
        }
        waiting & PARKED != 0
    }

    /// The CPU the consumer last waited on, as it said (advisory, and the peer's word:
    /// used only to choose whether to spin).
    pub(crate) fn consumer_cpu(&self) -> Option<u32> {
        // Relaxed: a hint; nothing is read on its strength.
        self.memory
            .load(Word::ConsumerCpu, Ordering::Relaxed)
            .checked_sub(1)
    }
}

/// The consuming end: the peer's ring, mapped here.
#[derive(Debug)]
pub(crate) struct Consumer<M> {
    memory: M,
    capacity: u32,
    head: u32,
    /// The longest frame this side accepts (its announced limits).
    max_frame: u32,
    /// The bytes the entry last peeked occupies, until it is taken.
    peeked: Option<u32>,
}

impl<M: Memory> Consumer<M> {
    /// A consumer of a ring with an entry area of `capacity` bytes (a power of two).
    pub(crate) fn new(memory: M, capacity: u32, max_frame: usize) -> Self {
        Consumer {
            memory,
            capacity,
            head: 0,
            max_frame: u32::try_from(max_frame).unwrap_or(u32::MAX),
            peeked: None,
        }
    }

    /// Copies the next entry's frame into `out` and returns how many socket frames come
    /// before it; `None` when nothing is published. The entry stays until
    /// [`Consumer::take`]. Every index and length is checked against the ring first.
    pub(crate) fn peek(&mut self, out: &mut Vec<u8>) -> Result<Option<u32>> {
        const OP: &str = "recv";
        loop {
            // SYNC POINT: acquire (MEMORY-MODEL.md §10.1). Pairs with the producer's
            // release of `tail`: the entries before it are complete.
            let tail = self.memory.load(Word::Tail, Ordering::Acquire);
            let published = tail.wrapping_sub(self.head);
            if published == 0 {
                return Ok(None);
            }
            if published > self.capacity || !published.is_multiple_of(8) {
                return Err(corrupt(
                    OP,
                    format!(
                        "its tail claims {published} unread bytes in a ring of {}",
                        self.capacity
                    ),
                ));
            }
            let at = self.head & (self.capacity - 1);
            let mut header = [0u8; ENTRY_HEADER as usize];
            self.memory.read(at as usize, &mut header);
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let socket_before = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if len == 0 {
                let skip = self.capacity - at;
                if at == 0 || socket_before != 0 || skip > published {
                    return Err(corrupt(OP, "a wrap entry that cannot be one"));
                }
                self.head = self.head.wrapping_add(skip);
                continue;
            }
            let size = u64::from(ENTRY_HEADER) + align8(len);
            if len < crate::wire::HEADER_LEN as u32
                || len > self.max_frame
                || size > u64::from(self.capacity - at)
                || size > u64::from(published)
            {
                return Err(corrupt(
                    OP,
                    format!(
                        "an entry of {len} bytes at {at} of {} ({published} published)",
                        self.capacity
                    ),
                ));
            }
            out.clear();
            out.resize(len as usize, 0);
            self.memory.read((at + ENTRY_HEADER) as usize, out);
            self.peeked = Some(size as u32);
            return Ok(Some(socket_before));
        }
    }

    /// Takes the entry last peeked: the producer may write over it.
    pub(crate) fn take(&mut self) {
        if let Some(size) = self.peeked.take() {
            self.head = self.head.wrapping_add(size);
            // SYNC POINT: release (MEMORY-MODEL.md §10.2). This side's reads of the entry
            // happen-before the producer writes over it.
            self.memory.store(Word::Head, self.head, Ordering::Release);
        }
    }

    /// Whether something is published that has not been taken.
    pub(crate) fn has_data(&self) -> bool {
        self.memory.load(Word::Tail, Ordering::Acquire) != self.head
    }

    /// Tells the producer which CPU this side waits on now (see [`Producer::consumer_cpu`]).
    pub(crate) fn publish_cpu(&self, cpu: Option<u32>) {
        let word = cpu.map_or(0, |cpu| cpu.saturating_add(1));
        // Relaxed: a hint. Stored only when it changes, so waiting on one CPU writes the
        // line once, not at every wait.
        if self.memory.load(Word::ConsumerCpu, Ordering::Relaxed) != word {
            self.memory
                .store(Word::ConsumerCpu, word, Ordering::Relaxed);
        }
    }
}

impl<M: Memory + Clone> Consumer<M> {
    /// What a thread needs to wait for this ring without holding the consumer (the
    /// endpoint's lock): a handle on the memory and the position it waits past.
    pub(crate) fn waiter(&self) -> Waiter<M> {
        Waiter {
            memory: self.memory.clone(),
            head: self.head,
        }
    }
}

/// Waits for a consumer: spins on `tail`, announces itself, parks.
#[derive(Debug, Clone)]
pub(crate) struct Waiter<M> {
    memory: M,
    head: u32,
}

impl<M: Memory> Waiter<M> {
    /// Whether something was published past the consumer's position.
    pub(crate) fn has_data(&self) -> bool {
        self.memory.load(Word::Tail, Ordering::Acquire) != self.head
    }

    /// Announces that this side is about to wait (`bit`: [`PARKED`] or [`LOOP`]); true
    /// when data was published meanwhile, so the caller must look again instead.
    pub(crate) fn announce(&self, bit: u32) -> bool {
        self.announce_for(bit).1
    }

    /// [`Waiter::announce`], also returning what `waiting` holds after it.
    fn announce_for(&self, bit: u32) -> (u32, bool) {
        // SYNC POINT: acquire-release (MEMORY-MODEL.md §10.3), the other half of
        // `Producer::wake`.
        let waiting = self.memory.fetch_or(Word::Waiting, bit, Ordering::AcqRel) | bit;
        (waiting, self.has_data())
    }

    /// Withdraws an announcement (the caller found work after all, or woke up).
    pub(crate) fn withdraw(&self, bit: u32) {
        self.memory
            .fetch_and(Word::Waiting, !bit, Ordering::Relaxed);
    }

    /// Parks the thread until the producer publishes, `timeout` passes, or (checked
    /// after announcing, so nothing is missed) `elsewhere` says there is something to
    /// look at besides the ring (the socket). Returns at once if anything is there.
    pub(crate) fn park(&self, timeout: Duration, elsewhere: &mut dyn FnMut() -> bool) {
        let (waiting, published) = self.announce_for(PARKED);
        if !published && !elsewhere() {
            // The producer's swap changes the word before it wakes: a wake that comes
            // before this sleeps makes it return at once.
            self.memory.park(waiting, timeout);
        }
        self.withdraw(PARKED);
    }

    /// Wakes a thread of this process parked here (the connection ended under it).
    pub(crate) fn unpark(&self) {
        self.memory.unpark();
    }
}

/// A ring in a memory file, mapped in this process.
#[derive(Debug)]
pub(crate) struct Mapped {
    map: MmapRaw,
    capacity: usize,
}

impl Mapped {
    /// A new ring of `capacity` entry bytes, sealed against shrinking and growing, and
    /// its memory file to send.
    pub(crate) fn create(capacity: u32) -> Result<(Mapped, OwnedFd)> {
        let size = HEADER_LEN + capacity as usize;
        let fd = sys::create_memory_file(size, "ring")?;
        let map = MmapOptions::new()
            .len(size)
            .map_raw(&fd)
            .map_err(|e| Error::new(crate::ErrorKind::Os, "ring", format!("mmap: {e}")))?;
        Ok((
            Mapped {
                map,
                capacity: capacity as usize,
            },
            fd,
        ))
    }

    /// Maps the peer's ring after the checks every region passes (`docs/PROTOCOL.md`
    /// §5.3: a sealed memfd on shmem, not write-sealed, of exactly the stated size).
    pub(crate) fn adopt(fd: &OwnedFd, capacity: u32) -> Result<Mapped> {
        let size = HEADER_LEN + capacity as usize;
        Region::inspect(fd.as_fd(), size as u64, false)?;
        let map = MmapOptions::new().len(size).map_raw(fd).map_err(|e| {
            Error::new(
                crate::ErrorKind::Os,
                "recv",
                format!("mmap of the peer's ring: {e}"),
            )
        })?;
        Ok(Mapped {
            map,
            capacity: capacity as usize,
        })
    }

    fn word(&self, word: Word) -> &AtomicU32 {
        let at = self
            .map
            .as_mut_ptr()
            .wrapping_add(word.offset())
            .cast::<u32>();
        // SAFETY: `at` lies in the header of this mapping (offsets below HEADER_LEN), which
        // is page-aligned, so the word is 4-aligned; the mapping lives as long as `self`.
        // Every access to the word, by this process or (P6, MEMORY-MODEL.md §10) the
        // peer, is atomic.
        unsafe { AtomicU32::from_ptr(at) }
    }

    fn entries(&self, at: usize, len: usize) -> *mut u8 {
        debug_assert!(
            at + len <= self.capacity,
            "the caller keeps copies in bounds"
        );
        self.map.as_mut_ptr().wrapping_add(HEADER_LEN + at)
    }
}

impl Memory for Mapped {
    fn load(&self, word: Word, order: Ordering) -> u32 {
        self.word(word).load(order)
    }
    fn store(&self, word: Word, value: u32, order: Ordering) {
        self.word(word).store(value, order);
    }
    fn swap(&self, word: Word, value: u32, order: Ordering) -> u32 {
        self.word(word).swap(value, order)
    }
    fn fetch_or(&self, word: Word, bits: u32, order: Ordering) -> u32 {
        self.word(word).fetch_or(bits, order)
    }
    fn fetch_and(&self, word: Word, bits: u32, order: Ordering) -> u32 {
        self.word(word).fetch_and(bits, order)
    }
    fn write(&self, at: usize, src: Bytes<'_>) {
        let dst = self.entries(at, src.len());
        // SAFETY: `dst` is valid for `src.len()` bytes of the mapping (the caller keeps
        // `at + len` within the entry area); `src` is valid for reads of its length
        // (`Bytes`' contract); `copy` is a memmove, so overlap would do no harm. No
        // reference to either side is formed (MEMORY-MODEL.md P1).
        unsafe { std::ptr::copy(src.as_ptr(), dst, src.len()) };
    }
    fn read(&self, at: usize, dst: &mut [u8]) {
        let src = self.entries(at, dst.len());
        // SAFETY: `src` is valid for `dst.len()` bytes of the mapping (in bounds, as
        // above); `dst` is this process's own memory. The peer may write the source
        // meanwhile; then the copy holds garbage, which is checked before use, and no
        // reference to the shared bytes is formed.
        unsafe { std::ptr::copy(src, dst.as_mut_ptr(), dst.len()) };
    }
    fn park(&self, expected: u32, timeout: Duration) {
        sys::futex_wait(self.word(Word::Waiting), expected, timeout);
    }
    fn unpark(&self) {
        sys::futex_wake(self.word(Word::Waiting));
    }
}

impl Memory for Arc<Mapped> {
    fn load(&self, word: Word, order: Ordering) -> u32 {
        (**self).load(word, order)
    }
    fn store(&self, word: Word, value: u32, order: Ordering) {
        (**self).store(word, value, order);
    }
    fn swap(&self, word: Word, value: u32, order: Ordering) -> u32 {
        (**self).swap(word, value, order)
    }
    fn fetch_or(&self, word: Word, bits: u32, order: Ordering) -> u32 {
        (**self).fetch_or(word, bits, order)
    }
    fn fetch_and(&self, word: Word, bits: u32, order: Ordering) -> u32 {
        (**self).fetch_and(word, bits, order)
    }
    fn write(&self, at: usize, src: Bytes<'_>) {
        (**self).write(at, src);
    }
    fn read(&self, at: usize, dst: &mut [u8]) {
        (**self).read(at, dst);
    }
    fn park(&self, expected: u32, timeout: Duration) {
        (**self).park(expected, timeout);
    }
    fn unpark(&self) {
        (**self).unpark();
    }
}

/// Whether a capacity announced in a RING frame is one this side accepts.
pub(crate) fn valid_capacity(capacity: u32) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// Where the peer ran when it last waited, against where this thread runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Both on one CPU: the peer cannot run while this thread spins.
    SameCpu,
    /// On different CPUs: the peer can answer while this thread spins.
    OtherCpus,
    /// The peer does not say (its library does not publish its CPU) or this kernel does not.
    Unknown,
}

/// How long a waiting consumer spins before it parks. When the peer publishes its CPU
/// (the ring's `cpu` word), the answer is direct: not at all when both share one CPU (the
/// peer only runs once this thread stops), the whole window otherwise. When it does not,
/// the budget adapts to what spinning earned lately (an idea from adaptive mutexes and
/// Aeron's idle strategies): a wait that ended while spinning restores the whole window; a
/// spin that found nothing halves it, down to none, after which one wait in
/// [`Spin::PROBE_EVERY`] spins the whole window again to find out whether the peer has
/// become fast again. A spin that found nothing after this side woke a sleeping peer
/// (futex or WAKE) proves nothing about spinning, since the peer first had to be
/// scheduled, and does not count: counting it let a few idle moments (a garbage
/// collection, a pause between bursts) halve the budget to nothing on two idle CPUs, after
/// which both sides parked at every message and every probe lost the race against the
/// peer's wake-up. On a machine with one CPU online it never spins at all.
#[derive(Debug, Clone)]
pub(crate) struct Spin {
    budget: Duration,
    max: Duration,
    waits: u32,
    single_cpu: bool,
}

impl Spin {
    const PROBE_EVERY: u32 = 32;
    const FLOOR: Duration = Duration::from_micros(1);

    /// A policy that never spins longer than `max`.
    pub(crate) fn new(max: Duration) -> Spin {
        Spin {
            budget: max,
            max,
            waits: 0,
            single_cpu: sys::single_cpu(),
        }
    }

    /// How long the next wait may spin, the peer being where `placement` says.
    pub(crate) fn budget(&mut self, placement: Placement) -> Duration {
        if self.single_cpu || self.max.is_zero() {
            return Duration::ZERO;
        }
        match placement {
            Placement::SameCpu => Duration::ZERO,
            Placement::OtherCpus => self.max,
            Placement::Unknown => {
                self.waits = self.waits.wrapping_add(1);
                if self.budget.is_zero() && self.waits.is_multiple_of(Self::PROBE_EVERY) {
                    return self.max;
                }
                self.budget
            }
        }
    }

    /// What the last spin earned: data within it, or nothing; `woke_peer`: this side had
    /// woken the peer from sleep since its previous wait.
    pub(crate) fn record(&mut self, found: bool, woke_peer: bool) {
        if found {
            self.budget = self.max;
        } else if !woke_peer {
            self.budget /= 2;
            if self.budget < Self::FLOOR {
                self.budget = Duration::ZERO;
            }
        }
    }
}

/// Polls `ready` between reads of the clock while spinning.
const POLLS_PER_CLOCK_READ: u32 = 32;

/// Spins until `ready` or `budget` passes; whether it was ready.
///
/// The clock is first read after [`POLLS_PER_CLOCK_READ`] polls (about 1 µs with the
/// ~28 ns `pause` of this project's AMD EPYC machine), and `budget` counts from there: a
/// message that comes sooner, as most do in a conversation, costs no clock read (25 ns
/// here, a tenth of a Rust round trip through the ring).
pub(crate) fn spin_until(budget: Duration, ready: &mut dyn FnMut() -> bool) -> bool {
    spin_until_timed(budget, ready).0
}

/// [`spin_until`], also returning when the budget started counting, if the clock was read.
pub(crate) fn spin_until_timed(
    budget: Duration,
    ready: &mut dyn FnMut() -> bool,
) -> (bool, Option<Instant>) {
    if budget.is_zero() {
        return (ready(), None);
    }
    let mut started = None;
    loop {
        for _ in 0..POLLS_PER_CLOCK_READ {
            if ready() {
                return (true, started);
            }
            std::hint::spin_loop();
        }
        let since = *started.get_or_insert_with(Instant::now);
        if since.elapsed() >= budget {
            return (false, started);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The ring's own checks, on plain memory: entries round-trip across the end of the
    //! area, and every corruption a peer could write is refused.
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::ErrorKind;

    /// Plain process memory standing in for the mapping; `tail` and `head` can be
    /// overwritten as a hostile peer would.
    struct Plain {
        words: [Cell<u32>; 4],
        entries: RefCell<Vec<u8>>,
    }

    impl Plain {
        fn new(capacity: usize) -> Plain {
            Plain {
                words: Default::default(),
                entries: RefCell::new(vec![0; capacity]),
            }
        }
        fn index(word: Word) -> usize {
            word.offset() / 64
        }
    }

    impl Memory for &Plain {
        fn load(&self, word: Word, _: Ordering) -> u32 {
            self.words[Plain::index(word)].get()
        }
        fn store(&self, word: Word, value: u32, _: Ordering) {
            self.words[Plain::index(word)].set(value);
        }
        fn swap(&self, word: Word, value: u32, _: Ordering) -> u32 {
            self.words[Plain::index(word)].replace(value)
        }
        fn fetch_or(&self, word: Word, bits: u32, _: Ordering) -> u32 {
            let old = self.words[Plain::index(word)].get();
            self.words[Plain::index(word)].set(old | bits);
            old
        }
        fn fetch_and(&self, word: Word, bits: u32, _: Ordering) -> u32 {
            let old = self.words[Plain::index(word)].get();
            self.words[Plain::index(word)].set(old & bits);
            old
        }
        fn write(&self, at: usize, src: Bytes<'_>) {
            let src = src.to_vec();
            self.entries.borrow_mut()[at..at + src.len()].copy_from_slice(&src);
        }
        fn read(&self, at: usize, dst: &mut [u8]) {
            let len = dst.len();
            dst.copy_from_slice(&self.entries.borrow()[at..at + len]);
        }
        fn park(&self, _: u32, _: Duration) {}
        fn unpark(&self) {}
    }

    fn frame(n: u8, len: usize) -> Vec<u8> {
        let mut f = vec![n; len];
        f[..8].copy_from_slice(&[2, 0, 0, 0, (len - 8) as u8, 0, 0, 0]);
        f
    }

    #[test]
    fn entries_round_trip_in_order_across_the_end_of_the_area() {
        let memory = Plain::new(256);
        let mut producer = Producer::new(&memory, 256);
        let mut consumer = Consumer::new(&memory, 256, 1024);
        let mut out = Vec::new();
        for round in 0..40u8 {
            let len = 8 + usize::from(round % 7) * 5;
            assert!(producer.push(&[Bytes::from(&frame(round, len))]).unwrap());
            if round % 3 == 0 {
                producer.sent_on_socket();
            }
            let before = consumer.peek(&mut out).unwrap().unwrap();
            assert_eq!(before, u32::from(round % 3 == 1), "round {round}");
            assert_eq!(out, frame(round, len));
            consumer.take();
        }
        assert!(consumer.peek(&mut out).unwrap().is_none());
    }

    #[test]
    fn an_entry_is_laid_out_as_the_protocol_example_shows() {
        let memory = Plain::new(64);
        let mut producer = Producer::new(&memory, 64);
        let mut hello = vec![2, 0, 0, 0, 5, 0, 0, 0];
        hello.extend_from_slice(b"hello");
        assert!(producer.push(&[Bytes::from(&hello)]).unwrap());
        // docs/PROTOCOL.md §9.6
        assert_eq!(
            memory.entries.borrow()[..24],
            [
                0x0d, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0x05, 0, 0, 0, b'h', b'e', b'l', b'l',
                b'o', 0, 0, 0
            ]
        );
        assert_eq!(memory.words[0].get(), 24);
    }

    #[test]
    fn a_full_ring_refuses_until_the_consumer_takes() {
        let memory = Plain::new(64);
        let mut producer = Producer::new(&memory, 64);
        let mut consumer = Consumer::new(&memory, 64, 1024);
        let f = frame(1, 24);
        assert!(producer.push(&[Bytes::from(&f)]).unwrap());
        assert!(producer.push(&[Bytes::from(&f)]).unwrap());
        assert!(
            !producer.push(&[Bytes::from(&f)]).unwrap(),
            "64 bytes hold two entries of 32"
        );
        let mut out = Vec::new();
        consumer.peek(&mut out).unwrap();
        assert!(
            !producer.push(&[Bytes::from(&f)]).unwrap(),
            "peeked is not taken"
        );
        consumer.take();
        assert!(producer.push(&[Bytes::from(&f)]).unwrap());
    }

    fn refused(tail: u32, header: [u8; 8], at: usize) -> ErrorKind {
        let memory = Plain::new(64);
        memory.entries.borrow_mut()[at..at + 8].copy_from_slice(&header);
        memory.words[0].set(tail);
        let mut consumer = Consumer::new(&memory, 64, 40);
        consumer.peek(&mut Vec::new()).unwrap_err().kind()
    }

    #[test]
    fn every_corrupt_index_or_length_is_a_violation() {
        let entry = |len: u32, before: u32| {
            let mut h = [0u8; 8];
            h[..4].copy_from_slice(&len.to_le_bytes());
            h[4..].copy_from_slice(&before.to_le_bytes());
            h
        };
        // tail beyond the ring, or not aligned
        assert_eq!(refused(72, entry(8, 0), 0), ErrorKind::Protocol);
        assert_eq!(refused(u32::MAX, entry(8, 0), 0), ErrorKind::Protocol);
        assert_eq!(refused(12, entry(8, 0), 0), ErrorKind::Protocol);
        // a frame shorter than a header, longer than this side accepts, longer than
        // what was published, or running past the end of the area
        assert_eq!(refused(16, entry(4, 0), 0), ErrorKind::Protocol);
        assert_eq!(refused(64, entry(48, 0), 0), ErrorKind::Protocol);
        assert_eq!(refused(16, entry(16, 0), 0), ErrorKind::Protocol);
        assert_eq!(refused(64, entry(u32::MAX, 0), 0), ErrorKind::Protocol);
        // a wrap entry at the start of the area
        assert_eq!(refused(64, entry(0, 0), 0), ErrorKind::Protocol);
    }

    #[test]
    fn a_head_the_consumer_moved_outside_the_ring_is_a_violation() {
        // The producer reads `head` when its last look says an entry does not fit, so the
        // corrupt word is found then: before the ring is reported full, and before
        // anything is written past what the last good `head` freed.
        let memory = Plain::new(64);
        let mut producer = Producer::new(&memory, 64);
        memory.words[1].set(1000);
        let outcome = (0..10)
            .map(|_| producer.push(&[Bytes::from(&frame(1, 8))]))
            .find(|pushed| !matches!(pushed, Ok(true)));
        let error = outcome
            .expect("the producer read head within ten entries")
            .expect_err("a corrupt head, not a full ring");
        assert_eq!(error.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn without_the_peers_cpu_the_spin_budget_follows_what_spinning_earned() {
        let unknown = Placement::Unknown;
        let mut spin = Spin::new(Duration::from_micros(64));
        spin.single_cpu = false;
        assert_eq!(spin.budget(unknown), Duration::from_micros(64));
        for _ in 0..10 {
            spin.record(false, true);
        }
        assert_eq!(
            spin.budget(unknown),
            Duration::from_micros(64),
            "a miss after waking a sleeping peer does not count"
        );
        for _ in 0..10 {
            spin.record(false, false);
        }
        assert_eq!(spin.budget, Duration::ZERO, "misses halve it to nothing");
        let probes = (0..64).filter(|_| !spin.budget(unknown).is_zero()).count();
        assert_eq!(probes, 2, "one wait in 32 probes");
        spin.record(true, false);
        assert_eq!(
            spin.budget(unknown),
            Duration::from_micros(64),
            "a success restores the window"
        );
        spin.single_cpu = true;
        assert_eq!(spin.budget(unknown), Duration::ZERO);
    }

    #[test]
    fn with_the_peers_cpu_the_spin_budget_is_all_or_nothing() {
        let mut spin = Spin::new(Duration::from_micros(64));
        spin.single_cpu = false;
        for _ in 0..10 {
            spin.record(false, false);
        }
        assert_eq!(spin.budget(Placement::OtherCpus), Duration::from_micros(64));
        spin.record(true, false);
        assert_eq!(spin.budget(Placement::SameCpu), Duration::ZERO);
    }

    #[test]
    fn the_consumers_cpu_reaches_the_producer_as_a_hint() {
        let memory = Plain::new(64);
        let producer = Producer::new(&memory, 64);
        let consumer = Consumer::new(&memory, 64, 1024);
        assert_eq!(producer.consumer_cpu(), None);
        consumer.publish_cpu(Some(0));
        assert_eq!(producer.consumer_cpu(), Some(0));
        consumer.publish_cpu(Some(u32::MAX));
        assert_eq!(
            producer.consumer_cpu(),
            Some(u32::MAX - 1),
            "saturates, never wraps to unknown"
        );
        consumer.publish_cpu(None);
        assert_eq!(producer.consumer_cpu(), None);
    }
}

#[cfg(test)]
mod model {
    //! `loom` explores every interleaving of the producer and the consumer (the peer
    //! process is modelled as a thread of this one, MEMORY-MODEL.md §1) for the two things
    //! that can go wrong with a ring: a lost wake-up (loom reports a deadlock when the
    //! consumer sleeps and nobody will wake it) and a payload read before it is complete or
    //! overwritten before it was read (loom's cells report the race).
    use loom::sync::atomic::AtomicU32;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    use super::*;

    /// The ring's memory, with a futex as Linux defines it: the value check and the
    /// sleep are atomic with respect to a wake.
    struct Model {
        words: [AtomicU32; 4],
        entries: Vec<loom::cell::UnsafeCell<u8>>,
        futex: Mutex<()>,
        sleepers: Condvar,
    }

    impl Model {
        fn new(capacity: usize) -> Arc<Model> {
            Arc::new(Model {
                words: [
                    AtomicU32::new(0),
                    AtomicU32::new(0),
                    AtomicU32::new(0),
                    AtomicU32::new(0),
                ],
                entries: (0..capacity)
                    .map(|_| loom::cell::UnsafeCell::new(0))
                    .collect(),
                futex: Mutex::new(()),
                sleepers: Condvar::new(),
            })
        }
        fn word(&self, word: Word) -> &AtomicU32 {
            &self.words[word.offset() / 64]
        }
    }

    impl Memory for Arc<Model> {
        fn load(&self, word: Word, order: Ordering) -> u32 {
            self.word(word).load(order)
        }
        fn store(&self, word: Word, value: u32, order: Ordering) {
            self.word(word).store(value, order);
        }
        fn swap(&self, word: Word, value: u32, order: Ordering) -> u32 {
            self.word(word).swap(value, order)
        }
        fn fetch_or(&self, word: Word, bits: u32, order: Ordering) -> u32 {
            self.word(word).fetch_or(bits, order)
        }
        fn fetch_and(&self, word: Word, bits: u32, order: Ordering) -> u32 {
            self.word(word).fetch_and(bits, order)
        }
        fn write(&self, at: usize, src: Bytes<'_>) {
            for (i, byte) in src.to_vec().into_iter().enumerate() {
                // SAFETY: loom's cell checks this write against every other access; a
                // race fails the model instead of being undefined.
                self.entries[at + i].with_mut(|p| unsafe { *p = byte });
            }
        }
        fn read(&self, at: usize, dst: &mut [u8]) {
            for (i, byte) in dst.iter_mut().enumerate() {
                // SAFETY: as in `write`.
                *byte = self.entries[at + i].with(|p| unsafe { *p });
            }
        }
        fn park(&self, expected: u32, _timeout: Duration) {
            // No timeout in the model: a lost wake-up must show as a deadlock.
            let guard = self.futex.lock().unwrap();
            if self.word(Word::Waiting).load(Ordering::Relaxed) == expected {
                drop(self.sleepers.wait(guard).unwrap());
            }
        }
        fn unpark(&self) {
            let _guard = self.futex.lock().unwrap();
            self.sleepers.notify_all();
        }
    }

    const CAPACITY: u32 = 32;

    fn frame(n: u8) -> [u8; 8] {
        [n; 8]
    }

    fn builder() -> loom::model::Builder {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder
    }

    /// Runs `produce` in a thread of the model, on a producer of `memory`, with the
    /// connection's `socket`.
    fn producing(
        memory: &Arc<Model>,
        socket: &Arc<Socket>,
        produce: impl FnOnce(&mut Producer<Arc<Model>>, &Socket) + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let (memory, socket) = (Arc::clone(memory), Arc::clone(socket));
        thread::spawn(move || produce(&mut Producer::new(memory, CAPACITY), &socket))
    }

    /// After publishing: wakes as `Rings::push` does, a WAKE record if a loop waits.
    fn wake(producer: &Producer<Arc<Model>>, socket: &Socket) {
        if producer.wake() & LOOP != 0 {
            socket.send();
        }
    }

    /// A synchronous consumer parks on the futex; the producer publishes three entries
    /// (the third over the first's bytes) and wakes it when it announced itself.
    #[test]
    fn a_parked_consumer_is_always_woken_and_reads_complete_entries() {
        builder().check(|| {
            let memory = Model::new(CAPACITY as usize);
            let producer = producing(&memory, &Socket::new(), |producer, _| {
                for n in 0..3u8 {
                    while !producer.push(&[Bytes::from(&frame(n))]).unwrap() {
                        thread::yield_now();
                    }
                    producer.wake();
                }
            });
            let mut consumer = Consumer::new(memory, CAPACITY, 64);
            let mut out = Vec::new();
            for n in 0..3u8 {
                while consumer.peek(&mut out).unwrap().is_none() {
                    consumer.waiter().park(Duration::MAX, &mut || false);
                }
                assert_eq!(out, frame(n));
                consumer.take();
            }
            producer.join().unwrap();
        });
    }

    /// The socket, as MEMORY-MODEL.md §1 models it: a queue behind the kernel's lock.
    struct Socket {
        records: Mutex<u32>,
        readable: Condvar,
    }

    impl Socket {
        fn new() -> Arc<Socket> {
            Arc::new(Socket {
                records: Mutex::new(0),
                readable: Condvar::new(),
            })
        }
        fn send(&self) {
            *self.records.lock().unwrap() += 1;
            self.readable.notify_all();
        }
        fn has(&self, seen: u32) -> bool {
            *self.records.lock().unwrap() > seen
        }
        fn wait(&self, seen: u32) {
            let mut records = self.records.lock().unwrap();
            while *records <= seen {
                records = self.readable.wait(records).unwrap();
            }
        }
    }

    /// An event loop announces itself and sleeps on the socket; the producer rings WAKE
    /// only when it took the announcement.
    #[test]
    fn an_event_loop_is_always_rung_when_it_waits() {
        builder().check(|| {
            let memory = Model::new(CAPACITY as usize);
            let socket = Socket::new();
            let producer = producing(&memory, &socket, |producer, socket| {
                for n in 0..2u8 {
                    assert!(producer.push(&[Bytes::from(&frame(n))]).unwrap());
                    wake(producer, socket);
                }
            });
            let mut consumer = Consumer::new(memory, CAPACITY, 64);
            let (mut out, mut got, mut seen) = (Vec::new(), 0u8, 0u32);
            while got < 2 {
                if consumer.peek(&mut out).unwrap().is_some() {
                    assert_eq!(out, frame(got));
                    consumer.take();
                    got += 1;
                    continue;
                }
                let waiter = consumer.waiter();
                if waiter.announce(LOOP) {
                    waiter.withdraw(LOOP);
                    continue;
                }
                socket.wait(seen);
                seen += 1;
            }
            producer.join().unwrap();
        });
    }

    /// A frame that goes on the socket (it carries descriptors) wakes a consumer parked
    /// on the futex: it checks the socket after announcing, and the producer checks the
    /// announcement after sending.
    #[test]
    fn a_socket_frame_wakes_a_parked_consumer() {
        builder().check(|| {
            let memory = Model::new(CAPACITY as usize);
            let socket = Socket::new();
            let producer = producing(&memory, &socket, |producer, socket| {
                socket.send();
                producer.sent_on_socket();
                producer.wake_parked();
            });
            let consumer = Consumer::new(memory, CAPACITY, 64);
            while !socket.has(0) {
                consumer.waiter().park(Duration::MAX, &mut || socket.has(0));
            }
            producer.join().unwrap();
        });
    }

    /// An event loop takes a socket frame (a message with a new region), announces itself
    /// again, and must be rung for the entry the producer publishes next, however late the
    /// producer gets round to its wake-up for the socket frame.
    #[test]
    fn a_socket_frame_then_an_entry_ring_the_loop() {
        builder().check(|| {
            let memory = Model::new(CAPACITY as usize);
            let socket = Socket::new();
            let producer = producing(&memory, &socket, |producer, socket| {
                socket.send();
                producer.sent_on_socket();
                producer.wake_parked();
                assert!(producer.push(&[Bytes::from(&frame(1))]).unwrap());
                wake(producer, socket);
            });
            let mut consumer = Consumer::new(memory, CAPACITY, 64);
            let (mut out, mut seen, mut entry) = (Vec::new(), 0u32, false);
            loop {
                if consumer.peek(&mut out).unwrap().is_some() {
                    consumer.take();
                    entry = true;
                }
                // The socket frame (and any WAKE) is taken as soon as it is there.
                while socket.has(seen) {
                    seen += 1;
                }
                if entry && seen >= 1 {
                    break;
                }
                let waiter = consumer.waiter();
                if waiter.announce(LOOP) {
                    waiter.withdraw(LOOP);
                    continue;
                }
                socket.wait(seen);
            }
            producer.join().unwrap();
        });
    }
}
