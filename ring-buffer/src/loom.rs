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
    /// loom's `Condvar::wait_timeout` never times out: timeouts are not modelled, and a lost
    /// wake-up shows up as a deadlock, which loom reports. Models must therefore use timeouts
    /// they never expect to expire.
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub(crate) use loom::thread::yield_now;

    /// A busy-wait hint. Under loom it yields, so a spinning thread lets the model progress.
    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }
}

#[cfg(not(loom))]
mod std_impl {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub(crate) use std::thread::yield_now;

    use std::marker::PhantomData;

    /// A busy-wait hint (`pause` on x86).
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// loom's `UnsafeCell` as the ring uses it: a per-slot token whose tracked accesses
    /// (`get` for readers, `get_mut` for the writer, held for a whole grant) let loom detect
    /// a writer and a lossless reader overlapping on one slot. The value itself is never
    /// accessed, so with `std` the pointers are zero-sized markers and cost nothing.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(T);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(value)
        }

        /// A marker of shared (read) access.
        pub(crate) fn get(&self) -> ConstPtr<T> {
            ConstPtr(PhantomData)
        }

        /// A marker of exclusive (write) access.
        pub(crate) fn get_mut(&self) -> MutPtr<T> {
            MutPtr(PhantomData)
        }
    }

    /// Shared access to an [`UnsafeCell`] (loom tracks it while it lives).
    #[derive(Debug)]
    pub(crate) struct ConstPtr<T>(PhantomData<*const T>);

    /// Exclusive access to an [`UnsafeCell`] (loom tracks it while it lives).
    #[derive(Debug)]
    pub(crate) struct MutPtr<T>(PhantomData<*mut T>);
}
