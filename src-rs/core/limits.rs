//! Limits: what one peer may make this process hold, and what all peers together may.
//!
//! Two of a connection's limits are announced to the peer in HELLO (regions and payload
//! bytes per message); the others are local policy, which the peer learns only by being
//! disconnected with `ERR_SHMLINK_LIMIT_EXCEEDED` on this side (`docs/PROTOCOL.md` §7).
//! The process-wide limits bound what every peer together can make this process map,
//! so that many connections cannot exhaust the address space where one could not.

use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicU64, Ordering};
use crate::wire;

const GIB: u64 = 1 << 30;

/// What this side of one connection accepts from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most regions in one message (1 to 253). Announced in HELLO.
    pub max_regions: u16,
    /// The largest inline payload in bytes (at most 65536). Announced in HELLO.
    pub max_payload: u32,
    /// The largest region the peer may send.
    pub max_region_size: u64,
    /// The most of the peer's regions bound at once (each holds a descriptor and a mapping).
    pub max_bound_regions: u32,
    /// The most bytes of the peer's regions mapped at once.
    pub max_mapped_bytes: u64,
}

impl Default for Limits {
    /// 32 regions and 64 KiB per message; regions up to 16 GiB; 1024 regions and 16 GiB
    /// mapped per connection.
    fn default() -> Self {
        Limits {
            max_regions: 32,
            max_payload: wire::MAX_PAYLOAD_CEILING,
            max_region_size: 16 * GIB,
            max_bound_regions: 1024,
            max_mapped_bytes: 16 * GIB,
        }
    }
}

impl Limits {
    /// The most regions any connection may accept in one message (`max_regions` at most):
    /// as many descriptors as one `sendmsg` can carry (`SCM_MAX_FD`).
    pub const MOST_REGIONS: u16 = wire::MAX_REGIONS_CEILING;

    /// What HELLO announces.
    pub(crate) fn announced(&self) -> wire::Announced {
        wire::Announced {
            max_regions: self.max_regions,
            max_payload: self.max_payload,
        }
    }

    pub(crate) fn validate(&self, op: &'static str) -> Result<()> {
        if !self.announced().is_valid() {
            return Err(Error::invalid(
                op,
                format!(
                    "limits must allow 1 to {} regions and at most {} payload bytes per message",
                    wire::MAX_REGIONS_CEILING,
                    wire::MAX_PAYLOAD_CEILING
                ),
            ));
        }
        if self.max_region_size == 0 || self.max_bound_regions == 0 || self.max_mapped_bytes == 0 {
            return Err(Error::invalid(
                op,
                "maxRegionSize, maxBoundRegions and maxMappedBytes must be positive",
            ));
        }
        Ok(())
    }
}

/// What every peer together may make this process hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// The most bytes of regions received from peers mapped at once.
    pub max_mapped_bytes: u64,
    /// The most regions received from peers alive at once.
    pub max_regions: u64,
}

impl Default for ProcessLimits {
    /// 64 GiB and 16 384 regions (each a descriptor and a mapping; Linux allows 65 530
    /// mappings per process by default, `vm.max_map_count`).
    fn default() -> Self {
        ProcessLimits {
            max_mapped_bytes: 64 * GIB,
            max_regions: 16_384,
        }
    }
}

/// How much of the process-wide limits is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessUsage {
    /// Bytes of received regions mapped now.
    pub mapped_bytes: u64,
    /// Received regions alive now.
    pub regions: u64,
}

static PROCESS_LIMITS: Mutex<ProcessLimits> = Mutex::new(ProcessLimits {
    max_mapped_bytes: 64 * GIB,
    max_regions: 16_384,
});
static MAPPED_BYTES: AtomicU64 = AtomicU64::new(0);
static REGIONS: AtomicU64 = AtomicU64::new(0);

fn process_limits_lock() -> std::sync::MutexGuard<'static, ProcessLimits> {
    PROCESS_LIMITS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The process-wide limits in force.
pub fn process_limits() -> ProcessLimits {
    *process_limits_lock()
}

/// Sets the process-wide limits. Regions already mapped stay; new ones are refused while
/// the usage is over the new limits.
pub fn set_process_limits(limits: ProcessLimits) -> Result<()> {
    if limits.max_mapped_bytes == 0 || limits.max_regions == 0 {
        return Err(Error::invalid(
            "setProcessLimits",
            "maxMappedBytes and maxRegions must be positive",
        ));
    }
    *process_limits_lock() = limits;
    Ok(())
}

/// What received regions use of the process-wide limits now.
pub fn process_usage() -> ProcessUsage {
    ProcessUsage {
        mapped_bytes: MAPPED_BYTES.load(Ordering::Relaxed),
        regions: REGIONS.load(Ordering::Relaxed),
    }
}

/// A received region's share of the process-wide limits, given back when it drops.
#[derive(Debug)]
pub(crate) struct Charge {
    bytes: u64,
}

impl Charge {
    /// Reserves `bytes` and one region, or fails with [`ErrorKind::LimitExceeded`].
    pub(crate) fn reserve(bytes: u64, op: &'static str) -> Result<Charge> {
        let limits = process_limits();
        let over = |counter: &AtomicU64, amount: u64, max: u64| {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(amount).filter(|total| *total <= max)
                })
                .is_err()
        };
        if over(&REGIONS, 1, limits.max_regions) {
            return Err(exceeded(
                op,
                format!(
                    "this process already holds {} regions from peers (process limit maxRegions)",
                    limits.max_regions
                ),
            ));
        }
        if over(&MAPPED_BYTES, bytes, limits.max_mapped_bytes) {
            REGIONS.fetch_sub(1, Ordering::AcqRel);
            return Err(exceeded(
                op,
                format!(
                    "a {bytes}-byte region would take this process over {} bytes mapped from \
                     peers (process limit maxMappedBytes)",
                    limits.max_mapped_bytes
                ),
            ));
        }
        Ok(Charge { bytes })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        MAPPED_BYTES.fetch_sub(self.bytes, Ordering::AcqRel);
        REGIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn exceeded(op: &'static str, detail: String) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        op,
        format!("{detail}; the connection was closed (raise the limit if the peer is trusted)"),
    )
}
