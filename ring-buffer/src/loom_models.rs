//! loom models of the single-producer, single-consumer hand-off.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p detflow-ring --release --lib`. The slot
//! metadata cell is held for the whole of every grant, so loom reports any overlap of a write
//! grant and a read grant on the same slot as a data race.

use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};

use crate::{NextError, RingConfig, SlotMeta, ring};

const FRAMES: u8 = 3;

/// Runs `f` under loom with at most two preemptions per execution (the bound crossbeam's CI
/// uses), unless `LOOM_MAX_PREEMPTIONS` says otherwise.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

fn meta(id: u8) -> SlotMeta {
    SlotMeta {
        frame_id: id.into(),
        len: 1,
        ..SlotMeta::default()
    }
}

/// Non-blocking calls only: frames arrive in order with the bytes and metadata committed.
#[test]
fn try_grant_and_try_next_hand_over_in_order() {
    model(|| {
        let (mut producer, mut consumer) = ring(RingConfig {
            slots: 2,
            slot_bytes: 8,
        })
        .unwrap();
        let writer = loom::thread::spawn(move || {
            for id in 0..FRAMES {
                loop {
                    if let Some(mut slot) = producer.try_grant() {
                        slot.bytes_mut()[0] = id;
                        slot.commit(meta(id));
                        break;
                    }
                    loom::thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        while expected < FRAMES {
            match consumer.try_next() {
                Some(frame) => {
                    assert_eq!(frame.bytes(), &[expected]);
                    assert_eq!(frame.meta().frame_id, u64::from(expected));
                    expected += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        writer.join().unwrap();
    });
}

/// The blocking calls: no lost wake-up, and `Closed` only after the last frame.
#[test]
fn blocking_calls_neither_lose_a_wakeup_nor_a_frame() {
    model(|| {
        let (mut producer, mut consumer) = ring(RingConfig {
            slots: 1,
            slot_bytes: 8,
        })
        .unwrap();
        let forever = Duration::from_secs(3600);
        let done = Arc::new(AtomicBool::new(false));
        let writer_done = Arc::clone(&done);
        let writer = loom::thread::spawn(move || {
            for id in 0..2 {
                let mut slot = producer.grant_timeout(forever).unwrap();
                slot.bytes_mut()[0] = id;
                slot.commit(meta(id));
            }
            drop(producer);
            writer_done.store(true, Ordering::Release);
        });
        for expected in 0..2 {
            let frame = consumer.next_timeout(forever).unwrap();
            assert_eq!(frame.bytes(), &[expected]);
        }
        assert_eq!(
            consumer.next_timeout(forever).unwrap_err(),
            NextError::Closed
        );
        // A late unpark from the producer is legal (std's park allows spurious wake-ups) but
        // loom's `join` asserts it was woken by the thread's exit, so wait for the writer to
        // finish before joining.
        while !done.load(Ordering::Acquire) {
            loom::thread::yield_now();
        }
        writer.join().unwrap();
    });
}
