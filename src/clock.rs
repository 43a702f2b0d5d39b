//! Seconds from a monotonic clock, for the timings reports and benchmarks print (`Date.now()` in the browser,
//! millisecond resolution). Below everything, like [`crate::error`].

/// Seconds since an arbitrary start.
pub fn now() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now() / 1000.0
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
    }
}
