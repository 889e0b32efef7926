//! The backend of `examples/minimal_backend.rs` (the one PORTING.md walks through) passes the
//! HAL conformance suite, allocations counted.

#[path = "../examples/minimal_backend.rs"]
mod minimal_backend;

use detflow_hal::conformance::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[test]
fn the_minimal_backend_conforms() {
    minimal_backend::conforms(Some(CountingAllocator::thread_allocations)).unwrap();
}

#[test]
fn the_minimal_backend_is_short() {
    let lines = include_str!("../examples/minimal_backend.rs")
        .lines()
        .count();
    assert!(lines < 300, "{lines} lines");
}
