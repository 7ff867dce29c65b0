//! The fences at the two sync points, in one place (as iceoryx2 keeps its atomics), so
//! that a model checker such as loom can substitute its own.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering, fence};
