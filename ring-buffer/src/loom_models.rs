//! loom models of grant / commit / release: one producer with a lossless and a lossy consumer,
//! a worker pool releasing out of order, and the sleep/wake handshakes.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p detflow-ring --release --lib`. Write grants
//! hold `get_mut` and lossless read grants and claims hold `get` on their slot's token cell for
//! their whole life, so loom reports any overlap of a writer and a lossless reader on one slot
//! as a data race. Lossy reads go through the seqlock on atomic metadata words, which loom
//! explores under its weak memory model; their payload copies are raw memory that loom does
//! not model, so the lossy checks assert on metadata only.

use std::time::Duration;

use crate::{LossyError, NextError, Producer, Ring, RingConfig, SlotMeta};

const FOREVER: Duration = Duration::from_secs(3600);

/// Runs `f` under loom with at most two preemptions per execution (the bound crossbeam's CI
/// uses), unless `LOOM_MAX_PREEMPTIONS` says otherwise.
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(2, f);
}

/// As [`model`] with at most `preemptions` preemptions by default.
fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

/// Frame `id`: its id in two metadata words (`frame_id`, `width`) and in byte 0, so a torn
/// read shows as a mismatch.
fn meta(id: u8) -> SlotMeta {
    SlotMeta {
        frame_id: id.into(),
        width: id.into(),
        len: 1,
        ..SlotMeta::default()
    }
}

fn new_ring(slots: usize) -> (Producer, Ring) {
    Ring::new(RingConfig::new(slots, 8)).unwrap()
}

/// Commits frames `0 .. frames` with blocking grants, then drops the producer.
fn produce(mut producer: Producer, frames: u8) {
    for id in 0..frames {
        let mut slot = producer.grant_timeout(FOREVER).unwrap();
        slot.bytes_mut()[0] = id;
        slot.commit(meta(id));
    }
}

/// One producer, one lossless consumer, one lossy consumer, one slot, two frames (so the
/// second frame reuses the slot while the lossy consumer may be reading the first): the
/// lossless consumer gets every frame in order with its bytes and metadata, the producer never
/// writes the slot while the lossless consumer holds it, and whatever the lossy consumer
/// accepts is one whole frame, in increasing order, every frame counted once as consumed or
/// lagged.
///
/// Three threads and the lossy reader's seven atomic loads make this model large: with two
/// preemptions it runs for many minutes, so it uses one; the seqlock alone is checked with two
/// in `lossy_reader_never_accepts_a_torn_frame`.
#[test]
fn lossless_and_lossy_consumers_share_one_producer() {
    model_bounded(1, || {
        const FRAMES: u8 = 2;
        let (producer, ring) = new_ring(1);
        let mut lossless = ring.lossless("writer").unwrap();
        let mut lossy = ring.lossy("preview").unwrap();
        let writer = loom::thread::spawn(move || produce(producer, FRAMES));
        let preview = loom::thread::spawn(move || {
            let mut last = None;
            for _ in 0..2 {
                match lossy.try_next() {
                    Ok(frame) => {
                        let m = *frame.meta();
                        assert_eq!(m.frame_id, frame.sequence(), "whole metadata");
                        assert_eq!(u64::from(m.width), m.frame_id, "not torn");
                        assert!(last < Some(m.frame_id), "in order");
                        last = Some(m.frame_id);
                    }
                    Err(LossyError::Lagged(n)) => assert!(n >= 1),
                    Err(LossyError::Timeout | LossyError::Closed) => {}
                }
            }
            let seen = lossy.consumed() + lossy.lagged();
            assert_eq!(seen, lossy.next_sequence(), "each frame counted once");
        });
        for expected in 0..FRAMES {
            let frame = lossless.next_timeout(FOREVER).unwrap();
            assert_eq!(frame.bytes(), &[expected]);
            assert_eq!(*frame.meta(), meta(expected));
        }
        assert_eq!(
            lossless.next_timeout(FOREVER).unwrap_err(),
            NextError::Closed
        );
        writer.join().unwrap();
        preview.join().unwrap();
    });
}

/// The seqlock with two preemptions: a producer rewriting the only slot while a lossy
/// consumer reads it. An accepted frame is whole (its two id words agree) and each frame is
/// counted once.
#[test]
fn lossy_reader_never_accepts_a_torn_frame() {
    model(|| {
        let (mut producer, ring) = new_ring(1);
        let mut lossy = ring.lossy("preview").unwrap();
        let writer = loom::thread::spawn(move || {
            for id in 1..3 {
                // No lossless consumer: the slot is always free.
                let mut slot = producer.try_grant().unwrap();
                slot.bytes_mut()[0] = id;
                slot.commit(meta(id));
            }
        });
        let mut accepted = 0;
        for _ in 0..2 {
            match lossy.try_next() {
                Ok(frame) => {
                    let m = *frame.meta();
                    assert_eq!(
                        m.frame_id,
                        frame.sequence() + 1,
                        "the frame of its sequence"
                    );
                    assert_eq!(u64::from(m.width), m.frame_id, "not torn");
                    accepted += 1;
                }
                Err(LossyError::Lagged(n)) => assert!(n >= 1),
                Err(LossyError::Timeout | LossyError::Closed) => {}
            }
        }
        assert_eq!(lossy.consumed(), accepted);
        assert_eq!(lossy.consumed() + lossy.lagged(), lossy.next_sequence());
        writer.join().unwrap();
    });
}

/// A worker pool of two threads, each claiming one of two committed frames and releasing it
/// whenever it finishes, so releases come in either order: each frame is claimed once with its
/// bytes, and once every claim is released the gate has moved over both, whichever thread did
/// the releasing (a lost gate advance would leave the producer held back forever).
#[test]
fn worker_pool_releases_out_of_order_without_losing_the_gate() {
    model(|| {
        const FRAMES: u8 = 2;
        let (mut producer, ring) = new_ring(2);
        let claimer = ring.worker_pool("compress").unwrap();
        // Admit the pool before the threads start, so its start is sequence 0.
        let first = producer.try_grant().unwrap();
        drop(first);
        let writer = loom::thread::spawn(move || {
            for id in 0..FRAMES {
                let mut slot = producer.try_grant().expect("two slots, two frames");
                slot.bytes_mut()[0] = id;
                slot.commit(meta(id));
            }
            producer
        });
        let work = |claimer: crate::Claimer| {
            move || {
                // At most one claim per thread, released at the end of this call.
                let claim = claimer.try_claim()?;
                let seq = claim.sequence();
                assert_eq!(claim.bytes(), &[seq as u8]);
                assert_eq!(claim.meta().frame_id, seq);
                Some(seq)
            }
        };
        let other = loom::thread::spawn(work(claimer.clone()));
        let ours = work(claimer.clone())();
        let theirs = other.join().unwrap();
        let producer = writer.join().unwrap();
        assert!(ours.is_none() || ours != theirs, "each frame claimed once");
        // Single-threaded from here: claim what the threads did not get.
        while let Some(claim) = claimer.try_claim() {
            drop(claim);
        }
        assert_eq!(claimer.consumed(), u64::from(FRAMES));
        assert_eq!(
            ring.stats().occupancy(),
            0,
            "the gate moved over every release"
        );
        drop(producer);
    });
}

/// The blocking calls of the producer and a lossless consumer: no lost wake-up, and `Closed`
/// only after the last frame.
#[test]
fn blocking_calls_neither_lose_a_wakeup_nor_a_frame() {
    model(|| {
        let (mut producer, ring) = new_ring(1);
        let mut consumer = ring.lossless("writer").unwrap();
        let writer = loom::thread::spawn(move || {
            for id in 0..2 {
                let mut slot = producer.grant_timeout(FOREVER).unwrap();
                slot.bytes_mut()[0] = id;
                slot.commit(meta(id));
            }
        });
        for expected in 0..2 {
            let frame = consumer.next_timeout(FOREVER).unwrap();
            assert_eq!(frame.bytes(), &[expected]);
        }
        assert_eq!(
            consumer.next_timeout(FOREVER).unwrap_err(),
            NextError::Closed
        );
        writer.join().unwrap();
    });
}

/// The blocking calls of the producer and a pool claimer: a release that frees the slot wakes
/// the producer, a commit wakes the claimer, and the claimer sees `Closed` after the last one.
#[test]
fn blocking_claims_neither_lose_a_wakeup_nor_a_frame() {
    model(|| {
        let (mut producer, ring) = new_ring(1);
        let claimer = ring.worker_pool("compress").unwrap();
        let writer = loom::thread::spawn(move || {
            for id in 0..2 {
                let mut slot = producer.grant_timeout(FOREVER).unwrap();
                slot.bytes_mut()[0] = id;
                slot.commit(meta(id));
            }
        });
        for expected in 0..2 {
            let claim = claimer.claim_timeout(FOREVER).unwrap();
            assert_eq!(claim.bytes(), &[expected]);
        }
        assert_eq!(
            claimer.claim_timeout(FOREVER).unwrap_err(),
            NextError::Closed
        );
        writer.join().unwrap();
    });
}
