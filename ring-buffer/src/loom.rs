//! The concurrency primitives the ring is built from, switched between `std` and loom.
//!
//! Every atomic, cell, lock and thread operation of the ring goes through this module, so a
//! loom model (built with `RUSTFLAGS="--cfg loom"`) explores the same code the detector runs.
//! The `std` side mirrors loom's API (`UnsafeCell::get` / `get_mut` returning tracked
//! pointers) at zero cost, so the ring's code reads the same under both.

#[cfg(loom)]
pub(crate) use loom_impl::*;
#[cfg(not(loom))]
pub(crate) use std_impl::*;

#[cfg(loom)]
mod loom_impl {
    pub(crate) use loom::cell::{ConstPtr, MutPtr, UnsafeCell};
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
    pub(crate) use loom::sync::{Arc, Mutex};
    pub(crate) use loom::thread::{Thread, current as current_thread, yield_now};

    /// A busy-wait hint. Under loom it yields, so a spinning thread lets the model progress.
    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }

    /// loom has no timed park, so this parks until unparked: timeouts are not modelled, and a
    /// lost wake-up shows up as a deadlock, which loom reports. Models must therefore use
    /// timeouts they never expect to expire.
    pub(crate) fn park_timeout(_timeout: std::time::Duration) {
        loom::thread::park();
    }
}

#[cfg(not(loom))]
mod std_impl {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
    pub(crate) use std::sync::{Arc, Mutex};
    pub(crate) use std::thread::{Thread, current as current_thread, park_timeout, yield_now};

    /// A busy-wait hint (`pause` on x86).
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// `std::cell::UnsafeCell` with loom's access API: `get` and `get_mut` return pointers that,
    /// under loom, record the access for as long as they live.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// A pointer for shared (read) access.
        pub(crate) fn get(&self) -> ConstPtr<T> {
            ConstPtr(self.0.get())
        }

        /// A pointer for exclusive (write) access.
        pub(crate) fn get_mut(&self) -> MutPtr<T> {
            MutPtr(self.0.get())
        }
    }

    /// Shared access to an [`UnsafeCell`]'s value (loom tracks it while it lives).
    #[derive(Debug)]
    pub(crate) struct ConstPtr<T>(*const T);

    impl<T> ConstPtr<T> {
        /// # Safety
        ///
        /// No `&mut` to the value may exist while the returned reference lives.
        pub(crate) unsafe fn deref(&self) -> &T {
            // SAFETY: the pointer comes from a live `UnsafeCell` (the cell outlives every
            // pointer the ring takes from it); the caller guarantees no writer exists.
            unsafe { &*self.0 }
        }
    }

    /// Exclusive access to an [`UnsafeCell`]'s value (loom tracks it while it lives).
    #[derive(Debug)]
    pub(crate) struct MutPtr<T>(*mut T);

    impl<T> MutPtr<T> {
        /// # Safety
        ///
        /// No other reference to the value may exist while the returned reference lives.
        #[allow(clippy::mut_from_ref)] // loom's signature; exclusivity is the caller's contract
        pub(crate) unsafe fn deref(&self) -> &mut T {
            // SAFETY: the pointer comes from a live `UnsafeCell`; the caller guarantees
            // exclusive access for the lifetime of the reference.
            unsafe { &mut *self.0 }
        }
    }
}
