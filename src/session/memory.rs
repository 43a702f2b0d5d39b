//! How much heap a session may still take, and the refusal that names the figures when something will not fit.

use crate::{Error, Result};

/// Memory a wasm32 instance can address.
pub const WASM_LIMIT: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

/// The heap a session plans for: a limit (4 GiB in wasm32, or less when asked), what the heap has grown to, and the
/// live bytes the counting allocator measures.
#[derive(Clone, Copy)]
pub struct MemoryBudget {
    limit: f64,
    /// The size the heap has grown to (wasm memory's size in the browser; the live bytes natively).
    heap: fn() -> f64,
}

fn live() -> f64 {
    crate::alloc::live_bytes() as f64
}

impl MemoryBudget {
    /// A budget of `limit` bytes; `heap` tells the size the heap has grown to (which a wasm instance never gives
    /// back), or `None` when only live bytes count.
    pub fn new(limit: f64, heap: Option<fn() -> f64>) -> Self {
        Self { limit: limit.clamp(0.0, f64::MAX), heap: heap.unwrap_or(live) }
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }

    pub fn set_limit(&mut self, limit: f64) {
        self.limit = limit.max(0.0);
    }

    /// Heap bytes still available under the limit: what the heap has not grown to yet, plus what the allocator holds
    /// free inside it.
    pub fn free_bytes(&self) -> f64 {
        let heap = (self.heap)();
        (self.limit - heap).max(0.0) + (heap - live()).max(0.0)
    }

    /// Whether `bytes` more can be allocated while `share` of the free heap is the most it may take (the rest is for
    /// the work around it: loading reads each tensor and converts it, so it keeps more room).
    pub fn fits(&self, bytes: f64, share: f64) -> bool {
        bytes <= share * self.free_bytes()
    }

    /// `Ok` when `bytes` fit (see [`MemoryBudget::fits`]), else the refusal for `what`, with what can still be done.
    pub fn check(&self, what: &str, bytes: f64, share: f64, still: &str) -> Result<()> {
        if self.fits(bytes, share) {
            Ok(())
        } else {
            Err(self.no_room(what, bytes, still))
        }
    }

    /// The error for `what` needing `bytes` that do not fit, and what can still be done.
    pub fn no_room(&self, what: &str, bytes: f64, still: &str) -> Error {
        Error::Memory(format!(
            "{what} needs about {}, and only {} of this tab's {} is free; {still}",
            human(bytes),
            human(self.free_bytes()),
            human(self.limit)
        ))
    }
}

/// Bytes as GiB, or MiB below one GiB (so a small figure still says something).
pub fn human(x: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if x >= 1024.0 * MIB {
        format!("{:.2} GiB", x / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", x / MIB)
    }
}
