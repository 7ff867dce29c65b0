//! Region pools: a fixed set of regions of one size, handed out, sent, and given back for
//! reuse, so a stream of frames maps and faults in its memory once instead of per frame.
//!
//! A region sent to a peer before stays bound on that connection (`docs/PROTOCOL.md` §5.2):
//! sending it again costs an id, not a descriptor, a `mmap` and a page fault per 64 KiB on
//! each side. Reuse is what makes large streams run at memory speed; the pool makes it the
//! default instead of bookkeeping each program writes for itself.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::region::{Realm, Region};

/// How often a blocking [`Pool::acquire`] looks again for regions it can take back from
/// connections a peer ended: that happens without a [`Pool::release`] to wake it.
const RECLAIM_RECHECK: Duration = Duration::from_millis(20);

/// A set of at most `capacity` regions of `size` bytes each.
///
/// [`Pool::try_acquire`] hands out a free region (reused, with its pages and its bindings
/// on every connection it was sent over) or creates one while the pool holds fewer than
/// `capacity`. A region goes back with [`Pool::release`]; one transferred to a peer whose
/// connection then ended is taken back by the next acquire (as [`Region::reclaim`] would).
/// A pooled region the program closes leaves the pool and frees its place; a frozen one
/// (frozen memory cannot be written again) leaves when it is released, closed.
///
/// Clones share the pool. The contents of a reused region are what was last written.
///
/// ```
/// use shmlink::{Attach, Endpoint, Pool};
///
/// # fn main() -> Result<(), shmlink::Error> {
/// let (producer, consumer) = Endpoint::pair()?;
/// let pool = Pool::new(1 << 20, 2)?;
/// for frame in 0..4u8 {
///     let region = pool.acquire(None)?;
///     region.write(0, &[frame])?;
///     producer.send_blocking(b"frame", &[Attach::transfer(&region)], None)?;
///     // The consumer reads the frame and hands the region back.
///     let message = consumer.recv_timeout(None)?;
///     let regions: Vec<_> = message.regions.iter().map(|r| Attach::transfer(&r.region)).collect();
///     consumer.send_blocking(b"done", &regions, None)?;
///     let back = producer.recv_timeout(None)?;
///     pool.release(&back.regions[0].region)?;
/// }
/// assert_eq!(pool.stats().created, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    size: usize,
    capacity: usize,
    realm: Realm,
    state: Mutex<State>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Every region of the pool, by serial, handed out or free.
    members: HashMap<u64, Region>,
    /// The serials of the free ones, most recently released last (reused first: its
    /// pages are the likeliest to be in cache).
    free: Vec<u64>,
    created: u64,
    reused: u64,
    closed: bool,
}

/// What a pool holds and has done ([`Pool::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// The size of each region in bytes.
    pub size: usize,
    /// The most regions the pool holds at once.
    pub capacity: usize,
    /// Regions the pool holds now, handed out or free.
    pub regions: usize,
    /// Regions waiting in the pool to be handed out again.
    pub free: usize,
    /// Regions the pool has created since it was made.
    pub created: u64,
    /// Acquires served by a region the pool had before.
    pub reused: u64,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every critical section leaves the state consistent before anything can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// A pool of at most `capacity` regions of `size` bytes each; none is created yet.
    pub fn new(size: usize, capacity: usize) -> Result<Pool> {
        Self::new_in(size, capacity, Realm::default())
    }

    /// [`Pool::new`] whose regions are created in `realm` (see [`Realm`]).
    pub fn new_in(size: usize, capacity: usize, realm: Realm) -> Result<Pool> {
        const OP: &str = "RegionPool";
        if size == 0 || isize::try_from(size).is_err() {
            return Err(Error::invalid(
                OP,
                format!(
                    "size must be between 1 and {} bytes, not {size}",
                    isize::MAX
                ),
            ));
        }
        if capacity == 0 {
            return Err(Error::invalid(OP, "capacity must be at least 1"));
        }
        Ok(Pool {
            inner: Arc::new(Inner {
                size,
                capacity,
                realm,
                state: Mutex::new(State::default()),
                released: Condvar::new(),
            }),
        })
    }

    /// A region for the caller, or `None` when all `capacity` regions are handed out
    /// (and none can be taken back from an ended connection).
    pub fn try_acquire(&self) -> Result<Option<Region>> {
        const OP: &str = "RegionPool.acquire";
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(closed_error(OP));
        }
        state.members.retain(|_, region| !region.is_closed());
        let State { members, free, .. } = &mut *state;
        free.retain(|serial| members.contains_key(serial));
        let reused = free.pop();
        if let Some(serial) = reused
            && let Some(region) = state.members.get(&serial).cloned()
        {
            state.reused += 1;
            return Ok(Some(region));
        }
        if state.members.len() < self.inner.capacity {
            let region =
                Region::create_in(self.inner.size, self.inner.realm).map_err(|e| e.during(OP))?;
            state.members.insert(region.serial(), region.clone());
            state.created += 1;
            return Ok(Some(region));
        }
        let taken_back = state
            .members
            .values()
            .find(|region| region.is_transferred() && region.reclaim().is_ok())
            .cloned();
        if taken_back.is_some() {
            state.reused += 1;
        }
        Ok(taken_back)
    }

    /// A region for the caller, waiting while all are handed out: until one is released
    /// or can be taken back from a connection its peer ended, or `timeout` passes
    /// ([`ErrorKind::TimedOut`]). `None` waits without limit.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Region> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(region) = self.try_acquire()? {
                return Ok(region);
            }
            let wait = match deadline {
                None => RECLAIM_RECHECK,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::new(
                            ErrorKind::TimedOut,
                            "RegionPool.acquire",
                            format!(
                                "all {} regions stayed handed out; release regions when their \
                                 frames are done, or make the pool larger",
                                self.inner.capacity
                            ),
                        ));
                    }
                    left.min(RECLAIM_RECHECK)
                }
            };
            let state = lock(&self.inner.state);
            if state.free.is_empty() && !state.closed {
                let _ = self
                    .inner
                    .released
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
    }

    /// Gives `region` back for the next acquire. The region must be one of this pool's,
    /// handed out, and here (not transferred away). A frozen region cannot be written
    /// again: it is closed and leaves the pool instead. After the pool is closed, a
    /// released region is closed.
    pub fn release(&self, region: &Region) -> Result<()> {
        const OP: &str = "RegionPool.release";
        let mut state = lock(&self.inner.state);
        let serial = region.serial();
        if !state.members.contains_key(&serial) {
            return Err(Error::invalid(
                OP,
                if region.is_closed() {
                    "the region is closed; a closed region leaves its pool"
                } else {
                    "the region does not belong to this pool"
                },
            ));
        }
        if state.free.contains(&serial) {
            return Err(Error::invalid(OP, "the region is already back in the pool"));
        }
        if region.is_transferred() {
            return Err(Error::new(
                ErrorKind::RegionTransferred,
                OP,
                "the region is with a peer; release it once the peer has sent it back (or the \
                 connection has ended)",
            ));
        }
        if region.is_frozen() || state.closed {
            state.members.remove(&serial);
            drop(state);
            region.close();
        } else {
            state.free.push(serial);
            drop(state);
        }
        self.inner.released.notify_one();
        Ok(())
    }

    /// Closes the free regions now and every handed-out one when it is released;
    /// acquiring fails with [`ErrorKind::RegionClosed`] from now on. Idempotent.
    pub fn close(&self) {
        let free: Vec<Region> = {
            let mut state = lock(&self.inner.state);
            state.closed = true;
            let serials = std::mem::take(&mut state.free);
            serials
                .iter()
                .filter_map(|serial| state.members.remove(serial))
                .collect()
        };
        for region in free {
            region.close();
        }
        self.inner.released.notify_all();
    }

    /// What the pool holds and has done.
    pub fn stats(&self) -> PoolStats {
        let state = lock(&self.inner.state);
        let live = state.members.values().filter(|r| !r.is_closed()).count();
        PoolStats {
            size: self.inner.size,
            capacity: self.inner.capacity,
            regions: live,
            free: state
                .free
                .iter()
                .filter(|serial| state.members.get(serial).is_some_and(|r| !r.is_closed()))
                .count(),
            created: state.created,
            reused: state.reused,
        }
    }

    /// Whether `region` is one of this pool's regions.
    pub fn contains(&self, region: &Region) -> bool {
        lock(&self.inner.state)
            .members
            .get(&region.serial())
            .is_some_and(|member| member.same_as(region))
    }
}

fn closed_error(op: &'static str) -> Error {
    Error::new(
        ErrorKind::RegionClosed,
        op,
        "the pool is closed; make a new one",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attach, Endpoint};

    #[test]
    fn hands_out_up_to_capacity_and_reuses_what_comes_back() {
        let pool = Pool::new(4096, 2).unwrap();
        let a = pool.try_acquire().unwrap().unwrap();
        let b = pool.try_acquire().unwrap().unwrap();
        assert!(!a.same_as(&b));
        assert!(pool.try_acquire().unwrap().is_none());
        a.write(0, b"kept").unwrap();
        pool.release(&a).unwrap();
        let again = pool.try_acquire().unwrap().unwrap();
        assert!(again.same_as(&a));
        let mut head = [0u8; 4];
        again.read(0, &mut head).unwrap();
        assert_eq!(&head, b"kept");
        let stats = pool.stats();
        assert_eq!(
            (stats.created, stats.reused, stats.regions, stats.free),
            (2, 1, 2, 0)
        );
    }

    #[test]
    fn refuses_what_it_cannot_take_back() {
        let pool = Pool::new(4096, 1).unwrap();
        let stranger = Region::create(4096).unwrap();
        let kind = |r: Result<()>| r.unwrap_err().kind();
        assert_eq!(kind(pool.release(&stranger)), ErrorKind::InvalidArgument);
        let region = pool.try_acquire().unwrap().unwrap();
        pool.release(&region).unwrap();
        assert_eq!(kind(pool.release(&region)), ErrorKind::InvalidArgument);
        let region = pool.try_acquire().unwrap().unwrap();
        let (here, peer) = Endpoint::pair().unwrap();
        here.send_blocking(b"", &[Attach::transfer(&region)], None)
            .unwrap();
        assert_eq!(kind(pool.release(&region)), ErrorKind::RegionTransferred);
        // The peer sends it back: it can go back to the pool.
        let message = peer.recv_timeout(None).unwrap();
        peer.send_blocking(b"", &[Attach::transfer(&message.regions[0].region)], None)
            .unwrap();
        here.recv_timeout(None).unwrap();
        pool.release(&region).unwrap();
    }

    #[test]
    fn closed_and_frozen_regions_leave_and_free_their_place() {
        let pool = Pool::new(4096, 1).unwrap();
        let region = pool.try_acquire().unwrap().unwrap();
        region.close();
        let fresh = pool.try_acquire().unwrap().unwrap();
        assert!(!fresh.same_as(&region));
        fresh.freeze().unwrap();
        pool.release(&fresh).unwrap();
        assert!(fresh.is_closed());
        assert_eq!(pool.stats().regions, 0);
        assert_eq!(pool.stats().created, 2);
    }

    #[test]
    fn takes_back_a_region_whose_peer_ended_the_connection() {
        let pool = Pool::new(4096, 1).unwrap();
        let region = pool.try_acquire().unwrap().unwrap();
        let (here, peer) = Endpoint::pair().unwrap();
        here.send_blocking(b"", &[Attach::transfer(&region)], None)
            .unwrap();
        assert!(pool.try_acquire().unwrap().is_none());
        drop(peer.recv_timeout(None).unwrap());
        peer.close();
        assert!(matches!(
            here.recv_timeout(None).map(|_| ()).unwrap_err().kind(),
            ErrorKind::PeerClosed
        ));
        let back = pool.acquire(Some(Duration::from_secs(5))).unwrap();
        assert!(back.same_as(&region));
        assert!(!back.is_transferred());
    }

    #[test]
    fn a_blocking_acquire_wakes_on_release_and_times_out_otherwise() {
        let pool = Pool::new(4096, 1).unwrap();
        let region = pool.acquire(None).unwrap();
        assert_eq!(
            pool.acquire(Some(Duration::from_millis(30)))
                .unwrap_err()
                .kind(),
            ErrorKind::TimedOut
        );
        let releaser = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                pool.release(&region).unwrap();
            })
        };
        assert!(pool.acquire(Some(Duration::from_secs(5))).is_ok());
        releaser.join().unwrap();
    }

    #[test]
    fn closing_closes_free_regions_now_and_handed_out_ones_on_release() {
        let pool = Pool::new(4096, 2).unwrap();
        let out = pool.try_acquire().unwrap().unwrap();
        let free = pool.try_acquire().unwrap().unwrap();
        pool.release(&free).unwrap();
        pool.close();
        assert!(free.is_closed());
        assert!(!out.is_closed());
        assert_eq!(
            pool.try_acquire().unwrap_err().kind(),
            ErrorKind::RegionClosed
        );
        pool.release(&out).unwrap();
        assert!(out.is_closed());
    }

    #[test]
    fn refuses_sizes_and_capacities_it_cannot_hold() {
        assert!(Pool::new(0, 1).is_err());
        assert!(Pool::new(4096, 0).is_err());
        assert!(Pool::new(usize::MAX, 1).is_err());
    }
}
