//! The region table of one connection: which ids are bound in each namespace
//! (`docs/PROTOCOL.md` §5.2, §6), kept in step in one place.
//!
//! This side's namespace maps ids to the regions it sent (so it knows what the peer has
//! mapped and can RELEASE it), without keeping them alive: a region the application has
//! let go of everywhere is released to the peer (`Session::release_dropped`), where an
//! id held it for nothing, since nothing here can send it again. The peer's namespace
//! maps the peer's ids to the regions they resolved to, each with its own reference to the memory file so that a region
//! this process closed can be mapped again if the peer refers to it once more. The table
//! also counts what the peer's bindings hold, for the connection's limits.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::region::Region;

/// A region bound in the peer's namespace.
#[derive(Debug, Clone)]
pub(crate) struct PeerBinding {
    pub(crate) region: Region,
    /// The memory file, kept while the binding lasts (the region itself lets go of its
    /// file when closed).
    pub(crate) file: Arc<OwnedFd>,
}

/// How many of the peer's bindings name one memory file, and its size.
#[derive(Debug, Clone, Copy)]
struct Held {
    bindings: u32,
    size: u64,
}

#[derive(Debug)]
pub(crate) struct RegionTable {
    /// This side's bound ids (`own_by_serial` maps the other way).
    own: HashSet<u32>,
    own_by_serial: HashMap<u64, u32>,
    next_id: u32,
    peer: HashMap<u32, PeerBinding>,
    held: HashMap<(u64, u64), Held>,
    held_bytes: u64,
}

impl Default for RegionTable {
    fn default() -> Self {
        RegionTable {
            own: HashSet::new(),
            own_by_serial: HashMap::new(),
            next_id: 1,
            peer: HashMap::new(),
            held: HashMap::new(),
            held_bytes: 0,
        }
    }
}

impl RegionTable {
    /// This side's id for `region`, if the peer has it bound.
    pub(crate) fn own_id(&self, region: &Region) -> Option<u32> {
        self.own_by_serial.get(&region.serial()).copied()
    }

    /// The next unbound id at or after the one last handed out, skipping 0 and `taken`
    /// (ids planned for the same frame). Ids are not reused until all 2^32 − 1 have been.
    pub(crate) fn next_free_id(&self, taken: &[u32]) -> u32 {
        let mut id = self.next_id;
        loop {
            if id != 0 && !self.own.contains(&id) && !taken.contains(&id) {
                return id;
            }
            id = id.wrapping_add(1);
        }
    }

    /// Binds `id` to `region` in this side's namespace.
    pub(crate) fn bind_own(&mut self, id: u32, region: &Region) {
        self.own_by_serial.insert(region.serial(), id);
        self.own.insert(id);
        self.next_id = id.wrapping_add(1);
    }

    /// Forgets this side's id for the region with `serial`; returns the id, for the
    /// RELEASE frame.
    pub(crate) fn unbind_own(&mut self, serial: u64) -> Option<u32> {
        let id = self.own_by_serial.remove(&serial)?;
        self.own.remove(&id);
        Some(id)
    }

    /// The peer's binding of `id`.
    pub(crate) fn peer(&self, id: u32) -> Option<&PeerBinding> {
        self.peer.get(&id)
    }

    /// Whether the peer's `id` is bound.
    pub(crate) fn is_peer_bound(&self, id: u32) -> bool {
        self.peer.contains_key(&id)
    }

    /// Bytes the peer's bindings would hold with a region of `identity` and `size` added.
    pub(crate) fn held_bytes_with(&self, identity: (u64, u64), size: u64) -> u64 {
        if self.held.contains_key(&identity) {
            self.held_bytes
        } else {
            self.held_bytes.saturating_add(size)
        }
    }

    /// Number of this side's ids bound now.
    pub(crate) fn own_bound(&self) -> usize {
        self.own.len()
    }

    /// Number of the peer's ids bound now.
    pub(crate) fn peer_bound(&self) -> usize {
        self.peer.len()
    }

    /// Bytes of distinct regions the peer's bindings hold now.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Binds the peer's `id` (which must be unbound) to `binding`.
    pub(crate) fn bind_peer(&mut self, id: u32, binding: PeerBinding) {
        let size = binding.region.size() as u64;
        let held = self
            .held
            .entry(binding.region.identity())
            .or_insert(Held { bindings: 0, size });
        if held.bindings == 0 {
            self.held_bytes += size;
        }
        held.bindings += 1;
        if let Some(old) = self.peer.insert(id, binding) {
            self.forget_held(&old);
        }
    }

    /// Replaces the region a binding resolves to (a closed region mapped again).
    pub(crate) fn rebind_peer(&mut self, id: u32, region: Region) {
        if let Some(binding) = self.peer.get_mut(&id) {
            binding.region = region;
        }
    }

    /// Drops the peer's binding of `id`.
    pub(crate) fn unbind_peer(&mut self, id: u32) -> Option<PeerBinding> {
        let binding = self.peer.remove(&id)?;
        self.forget_held(&binding);
        Some(binding)
    }

    fn forget_held(&mut self, binding: &PeerBinding) {
        if let Entry::Occupied(mut held) = self.held.entry(binding.region.identity()) {
            held.get_mut().bindings -= 1;
            if held.get().bindings == 0 {
                self.held_bytes -= held.get().size;
                held.remove();
            }
        }
    }

    /// Forgets everything (the connection ended).
    pub(crate) fn clear(&mut self) {
        self.own.clear();
        self.own_by_serial.clear();
        self.peer.clear();
        self.held.clear();
        self.held_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    fn binding(region: &Region) -> PeerBinding {
        let file: Arc<OwnedFd> = region.file().unwrap();
        PeerBinding {
            region: region.clone(),
            file,
        }
    }

    #[test]
    fn own_ids_count_up_skip_bound_and_planned_ones_and_never_zero() {
        let mut table = RegionTable::default();
        let (a, b) = (Region::create(64).unwrap(), Region::create(64).unwrap());
        assert_eq!(table.next_free_id(&[]), 1);
        assert_eq!(table.next_free_id(&[1, 2]), 3);
        table.bind_own(1, &a);
        assert_eq!(table.own_id(&a), Some(1));
        assert_eq!(table.next_free_id(&[]), 2);
        table.bind_own(u32::MAX, &b);
        assert_eq!(
            table.next_free_id(&[]),
            2,
            "wraps past 0 to the first free id"
        );
        assert_eq!(table.unbind_own(a.serial()), Some(1));
        assert_eq!(table.unbind_own(a.serial()), None);
        assert_eq!(table.own_id(&a), None);
        assert_eq!(table.own_bound(), 1);
        table.clear();
        assert_eq!(table.own_bound(), 0);
    }

    #[test]
    fn peer_bindings_count_distinct_files_once() {
        let mut table = RegionTable::default();
        let a = Region::create(4096).unwrap();
        let b = Region::create(8192).unwrap();
        table.bind_peer(7, binding(&a));
        table.bind_peer(8, binding(&a));
        assert_eq!(table.held_bytes(), 4096, "two ids of one file hold it once");
        assert_eq!(table.held_bytes_with(a.identity(), 4096), 4096);
        assert_eq!(table.held_bytes_with(b.identity(), 8192), 4096 + 8192);
        table.bind_peer(9, binding(&b));
        assert_eq!((table.peer_bound(), table.held_bytes()), (3, 4096 + 8192));
        assert!(table.unbind_peer(7).is_some());
        assert_eq!(table.held_bytes(), 4096 + 8192);
        assert!(table.unbind_peer(8).is_some());
        assert_eq!(table.held_bytes(), 8192);
        assert!(table.unbind_peer(8).is_none());
        assert!(table.is_peer_bound(9) && !table.is_peer_bound(7));
        table.clear();
        assert_eq!((table.peer_bound(), table.held_bytes()), (0, 0));
    }

    #[test]
    fn a_rebound_peer_id_resolves_to_the_new_region() {
        let mut table = RegionTable::default();
        let a = Region::create(4096).unwrap();
        table.bind_peer(3, binding(&a));
        let again = Region::create(4096).unwrap();
        table.rebind_peer(3, again.clone());
        assert!(table.peer(3).unwrap().region.same_as(&again));
    }
}
