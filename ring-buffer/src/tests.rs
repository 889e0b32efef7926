//! Unit tests of the single-producer, single-consumer protocol through the public API.

use std::thread;
use std::time::{Duration, Instant};

use crate::{NextError, RingConfig, RingError, SLOT_ALIGN, SlotMeta, ring};

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(20);

fn cfg(slots: usize, slot_bytes: usize) -> RingConfig {
    RingConfig::new(slots, slot_bytes)
}

fn meta(frame_id: u64, len: u64) -> SlotMeta {
    SlotMeta {
        frame_id,
        len,
        ..SlotMeta::default()
    }
}

#[test]
fn bad_config_is_refused_naming_the_value() {
    let err = ring(cfg(0, 16)).unwrap_err();
    assert_eq!(err, RingError::InvalidSlots { slots: 0 });
    assert_eq!(err.to_string(), "ring slots 0: must be at least 1");

    let err = ring(cfg(4, 0)).unwrap_err();
    assert_eq!(err.to_string(), "ring slot_bytes 0: must be at least 1");

    let err = ring(cfg(usize::MAX, 1)).unwrap_err();
    assert_eq!(
        err,
        RingError::TooLarge {
            slots: usize::MAX,
            slot_bytes: 1
        }
    );
    assert!(err.to_string().contains("overflows"), "{err}");
    // Rounding the slot size up to a page overflows on its own.
    assert!(matches!(
        ring(cfg(1, usize::MAX)),
        Err(RingError::TooLarge { .. })
    ));
    // Fits usize but not a Layout (> isize::MAX).
    assert!(matches!(
        ring(cfg(2, usize::MAX / 2)),
        Err(RingError::TooLarge { .. })
    ));
}

#[test]
fn slots_are_page_aligned_and_contiguous() {
    let (mut producer, mut consumer) = ring(cfg(3, 5000)).unwrap();
    let mut addresses = Vec::new();
    for i in 0..3 {
        let mut slot = producer.try_grant().unwrap();
        assert_eq!(slot.bytes_mut().len(), 5000);
        addresses.push(slot.bytes_mut().as_ptr() as usize);
        slot.commit(meta(i, 0));
    }
    assert!(addresses.iter().all(|a| a % SLOT_ALIGN == 0));
    assert_eq!(addresses[2] - addresses[0], 2 * 8192);
    assert_eq!(addresses[1] - addresses[0], 8192);
    assert_eq!(addresses[2] - addresses[1], 8192);
    // Lap two reuses slot 0.
    drop(consumer.try_next().unwrap());
    let mut slot = producer.try_grant().unwrap();
    assert_eq!(slot.bytes_mut().as_ptr() as usize, addresses[0]);
}

#[test]
fn full_ring_refuses_grant_until_a_release() {
    let (mut producer, mut consumer) = ring(cfg(3, 8)).unwrap();
    for i in 0..3 {
        producer.try_grant().unwrap().commit(meta(i, 0));
    }
    assert!(producer.try_grant().is_none());
    let started = Instant::now();
    assert!(producer.grant_timeout(SHORT).is_none());
    assert!(started.elapsed() >= SHORT);

    let frame = consumer.try_next().unwrap();
    assert_eq!(frame.sequence(), 0);
    // A frame being read still occupies its slot.
    assert!(producer.try_grant().is_none());
    drop(frame);
    let slot = producer.try_grant().unwrap();
    assert_eq!(slot.sequence(), 3);
}

#[test]
fn frames_come_out_in_commit_order_across_laps() {
    let (mut producer, mut consumer) = ring(cfg(4, 8)).unwrap();
    let mut next_expected = 0u64;
    for burst in 1..=7u64 {
        for _ in 0..burst.min(4) {
            let mut slot = producer.try_grant().unwrap();
            let id = slot.sequence();
            slot.bytes_mut().copy_from_slice(&id.to_le_bytes());
            slot.commit(meta(id * 10, 8));
        }
        while let Some(frame) = consumer.try_next() {
            assert_eq!(frame.sequence(), next_expected);
            assert_eq!(frame.meta().frame_id, next_expected * 10);
            assert_eq!(frame.bytes(), &next_expected.to_le_bytes());
            next_expected += 1;
        }
    }
    assert_eq!(next_expected, 1 + 2 + 3 + 4 + 4 + 4 + 4);
}

#[test]
fn abandoned_grant_publishes_nothing_and_is_granted_again() {
    let (mut producer, mut consumer) = ring(cfg(2, 16)).unwrap();
    let stats = producer.ring_stats();
    let address = {
        let mut slot = producer.try_grant().unwrap();
        slot.bytes_mut()[0] = 0xAB;
        slot.bytes_mut().as_ptr()
    }; // dropped without commit: abandoned

    assert!(consumer.try_next().is_none());
    assert_eq!(
        consumer.next_timeout(SHORT).unwrap_err(),
        NextError::Timeout
    );
    assert_eq!(stats.produced(), 0);
    assert_eq!(producer.next_sequence(), 0);

    let mut slot = producer.try_grant().unwrap();
    assert_eq!(slot.sequence(), 0);
    assert_eq!(slot.bytes_mut().as_ptr(), address);
    // The abandoned bytes are still there: the ring does not clear slots.
    assert_eq!(slot.bytes_mut()[0], 0xAB);
    slot.commit(meta(1, 1));
    assert_eq!(consumer.try_next().unwrap().bytes(), &[0xAB]);
}

#[test]
fn metadata_round_trips() {
    let (mut producer, mut consumer) = ring(cfg(2, 4096)).unwrap();
    let sent = SlotMeta {
        frame_id: u64::MAX - 1,
        epics_sec: 1_100_000_000,
        epics_nsec: 999_999_999,
        unix_time_s: 1_731_000_000.25,
        width: 2048,
        height: 1,
        pixel_type: 3,
        color_mode: 2,
        len: 4096,
    };
    producer.try_grant().unwrap().commit(sent);
    let frame = consumer.try_next().unwrap();
    assert_eq!(*frame.meta(), sent);
    assert_eq!(std::mem::size_of::<SlotMeta>(), 48);
}

#[test]
fn bytes_are_exactly_meta_len_long() {
    let (mut producer, mut consumer) = ring(cfg(4, 100)).unwrap();
    for len in [0u64, 1, 99, 100] {
        let mut slot = producer.try_grant().unwrap();
        slot.bytes_mut().fill(len as u8);
        slot.commit(meta(len, len));
        let frame = consumer.try_next().unwrap();
        assert_eq!(frame.bytes().len() as u64, len);
        assert!(frame.bytes().iter().all(|&b| b == len as u8));
    }
}

#[test]
#[should_panic(expected = "len 101 does not fit a ring slot of 100 bytes")]
fn commit_longer_than_the_slot_panics() {
    let (mut producer, _consumer) = ring(cfg(1, 100)).unwrap();
    producer.try_grant().unwrap().commit(meta(0, 101));
}

#[test]
fn closed_only_after_drain() {
    let (mut producer, mut consumer) = ring(cfg(4, 8)).unwrap();
    producer.try_grant().unwrap().commit(meta(1, 0));
    producer.try_grant().unwrap().commit(meta(2, 0));
    assert!(!consumer.is_closed());
    drop(producer);
    assert!(consumer.is_closed());
    assert_eq!(consumer.next_timeout(SHORT).unwrap().meta().frame_id, 1);
    assert_eq!(consumer.next_timeout(SHORT).unwrap().meta().frame_id, 2);
    let started = Instant::now();
    assert_eq!(consumer.next_timeout(LONG).unwrap_err(), NextError::Closed);
    assert!(started.elapsed() < LONG / 2);
    assert!(consumer.try_next().is_none());
}

#[test]
fn counters_are_exact() {
    let (mut producer, mut consumer) = ring(cfg(4, 8)).unwrap();
    let stats = consumer.ring_stats();
    let other_thread_stats = stats.clone();
    let empty = stats.snapshot();
    assert_eq!(
        (
            empty.produced,
            empty.dropped,
            empty.high_water,
            empty.slots,
            empty.slot_bytes
        ),
        (0, 0, 0, 4, 8)
    );
    assert_eq!(empty.consumers.len(), 1);
    assert_eq!(empty.consumers[0].name, "writer");
    for i in 0..3 {
        producer.try_grant().unwrap().commit(meta(i, 0));
    }
    let _ = producer.try_grant(); // abandoned: not counted
    assert_eq!(
        (stats.produced(), consumer.consumed(), stats.occupancy()),
        (3, 0, 3)
    );
    assert_eq!(stats.high_water(), 3);
    drop(consumer.try_next());
    drop(consumer.try_next());
    assert_eq!(
        (stats.produced(), consumer.consumed(), stats.occupancy()),
        (3, 2, 1)
    );
    producer.try_grant().unwrap().commit(meta(3, 0));
    assert_eq!(stats.high_water(), 3, "occupancy was 2 after this commit");
    for i in 4..6 {
        producer.try_grant().unwrap().commit(meta(i, 0));
    }
    assert_eq!(stats.high_water(), 4);
    assert!(producer.try_grant().is_none());
    assert!(!stats.is_closed());
    drop(producer);
    while consumer.try_next().is_some() {}
    let counters = thread::spawn(move || other_thread_stats.snapshot())
        .join()
        .unwrap();
    assert_eq!(counters.produced, 6);
    assert_eq!(counters.consumers[0].consumed, 6);
    assert_eq!(counters.high_water, 4);
    assert!(stats.is_closed());
    assert_eq!(stats.occupancy(), 0);
    drop(consumer);
    let after = stats.snapshot();
    assert_eq!(after.consumers.len(), 1);
    assert!(!after.consumers[0].attached);
    assert_eq!(
        after.consumers[0].consumed, 6,
        "final count kept after detach"
    );
}

#[test]
fn ends_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<crate::Producer>();
    assert_send::<crate::Consumer>();
    assert_send::<crate::LossyConsumer>();
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<crate::RingStats>();
    assert_send_sync::<crate::Ring>();
    assert_send_sync::<crate::Claimer>();
    assert_send_sync::<crate::Claim>();
    fn assert_static<T: 'static>() {}
    assert_static::<crate::Claim>();
}

#[test]
fn parked_consumer_is_woken_by_a_commit() {
    let (mut producer, mut consumer) = ring(cfg(2, 8)).unwrap();
    let shared = producer.shared();
    let reader = thread::spawn(move || {
        let started = Instant::now();
        let id = consumer.next_timeout(LONG).unwrap().meta().frame_id;
        (id, started.elapsed())
    });
    wait_until_asleep(&shared.consumer_wait, "the reader");
    producer.try_grant().unwrap().commit(meta(42, 0));
    let (id, waited) = reader.join().unwrap();
    assert_eq!(id, 42);
    assert!(waited < LONG / 2, "woken by the commit, not the timeout");
}

#[test]
fn parked_consumer_is_woken_by_close() {
    let (producer, mut consumer) = ring(cfg(2, 8)).unwrap();
    let shared = producer.shared();
    let reader = thread::spawn(move || consumer.next_timeout(LONG).map(|_| ()));
    wait_until_asleep(&shared.consumer_wait, "the reader");
    drop(producer);
    assert_eq!(reader.join().unwrap(), Err(NextError::Closed));
}

#[test]
fn parked_producer_is_woken_by_a_release() {
    let (mut producer, mut consumer) = ring(cfg(1, 8)).unwrap();
    producer.try_grant().unwrap().commit(meta(0, 0));
    let writer = thread::spawn(move || {
        let started = Instant::now();
        let seq = producer.grant_timeout(LONG).map(|slot| slot.sequence());
        (seq, started.elapsed())
    });
    wait_until_asleep(&consumer.shared().producer_wait, "the producer");
    drop(consumer.try_next().unwrap());
    let (seq, waited) = writer.join().unwrap();
    assert_eq!(seq, Some(1));
    assert!(waited < LONG / 2);
}

#[test]
fn parked_producer_proceeds_when_the_last_lossless_consumer_is_dropped() {
    let (mut producer, consumer) = ring(cfg(1, 8)).unwrap();
    producer.try_grant().unwrap().commit(meta(0, 0));
    assert!(!producer.is_consumer_gone());
    let writer = thread::spawn(move || {
        let started = Instant::now();
        let granted = producer.grant_timeout(LONG).is_some();
        (granted, producer.is_consumer_gone(), started.elapsed())
    });
    wait_until_asleep(&consumer.shared().producer_wait, "the producer");
    drop(consumer);
    let (granted, gone, waited) = writer.join().unwrap();
    assert!(granted && gone, "nobody holds the slot any more");
    assert!(waited < LONG / 2);
}

// ---- fan-out, policies, pools, shared memory ----

use crate::{ConsumerKind, GrantError, LossyError, Overwritten, Policy, Reorder, Ring, ShmReader};

fn with_policy(slots: usize, slot_bytes: usize, policy: Policy) -> RingConfig {
    RingConfig {
        policy,
        ..cfg(slots, slot_bytes)
    }
}

fn commit_id(producer: &mut crate::Producer, id: u64) {
    let mut slot = producer.try_grant().expect("a free slot");
    slot.bytes_mut()[..8].copy_from_slice(&id.to_le_bytes());
    slot.commit(meta(id, 8));
}

#[test]
fn every_lossless_consumer_sees_every_frame_and_the_slowest_gates() {
    let (mut producer, ring) = Ring::new(cfg(2, 8)).unwrap();
    let mut fast = ring.lossless("fast").unwrap();
    let mut slow = ring.lossless("slow").unwrap();
    commit_id(&mut producer, 0);
    commit_id(&mut producer, 1);
    assert!(producer.try_grant().is_none());
    drop(fast.try_next().unwrap());
    drop(fast.try_next().unwrap());
    assert!(
        producer.try_grant().is_none(),
        "the slow consumer holds slot 0"
    );
    let frame = slow.try_next().unwrap();
    assert_eq!(frame.bytes(), &0u64.to_le_bytes());
    drop(frame);
    commit_id(&mut producer, 2);
    for consumer in [&mut fast, &mut slow] {
        while let Some(frame) = consumer.try_next() {
            let id = frame.meta().frame_id;
            assert_eq!(frame.bytes(), &id.to_le_bytes());
        }
    }
    assert_eq!((fast.consumed(), slow.consumed()), (3, 3));
    let counters = ring.stats().snapshot();
    let names: Vec<_> = counters.consumers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fast", "slow"]);
}

#[test]
fn lossy_consumer_never_holds_the_producer_back_and_counts_what_it_missed() {
    let (mut producer, ring) = Ring::new(cfg(2, 8)).unwrap();
    let mut preview = ring.lossy("preview").unwrap();
    assert_eq!(preview.try_next().unwrap_err(), LossyError::Timeout);
    for id in 0..5 {
        commit_id(&mut producer, id); // never blocks: no lossless consumer
    }
    assert_eq!(preview.try_next().unwrap_err(), LossyError::Lagged(3));
    let mut buf = Vec::new();
    for id in 3..5 {
        let mut frame = preview.try_next().unwrap();
        assert_eq!(frame.sequence(), id);
        assert_eq!(frame.meta().frame_id, id);
        frame.read_into(&mut buf).unwrap();
        assert_eq!(buf, id.to_le_bytes());
        assert!(frame.is_intact());
    }
    assert_eq!(preview.try_next().unwrap_err(), LossyError::Timeout);
    drop(producer);
    assert_eq!(preview.next_timeout(LONG).unwrap_err(), LossyError::Closed);
    assert_eq!((preview.consumed(), preview.lagged()), (2, 3));
    let c = &ring.stats().snapshot().consumers[0];
    assert_eq!((c.kind, c.consumed, c.lagged), (ConsumerKind::Lossy, 2, 3));
}

#[test]
fn lossy_copy_of_a_slot_being_rewritten_is_refused_and_counted_as_lagged() {
    let (mut producer, ring) = Ring::new(cfg(1, 8)).unwrap();
    let mut preview = ring.lossy("preview").unwrap();
    commit_id(&mut producer, 0);
    let mut frame = preview.try_next().unwrap();
    let mut buf = Vec::new();
    frame.read_into(&mut buf).unwrap();
    let mut next = producer.try_grant().unwrap(); // same slot: the seqlock goes odd
    next.bytes_mut()[0] = 0xFF;
    assert!(!frame.is_intact());
    assert_eq!(frame.read_into(&mut buf), Err(Overwritten { sequence: 0 }));
    drop(frame);
    next.commit(meta(1, 8));
    assert_eq!((preview.consumed(), preview.lagged()), (0, 1));
    assert_eq!(preview.try_next().unwrap().meta().frame_id, 1);
}

#[test]
fn lossy_reader_of_a_slot_being_granted_lags_by_one_and_moves_on() {
    let (mut producer, ring) = Ring::new(cfg(2, 8)).unwrap();
    let mut preview = ring.lossy("preview").unwrap();
    commit_id(&mut producer, 0);
    commit_id(&mut producer, 1);
    let _writing = producer.try_grant().unwrap(); // sequence 2, in slot 0
    assert_eq!(preview.try_next().unwrap_err(), LossyError::Lagged(1));
    assert_eq!(preview.try_next().unwrap().sequence(), 1);
}

#[test]
fn drop_newest_refuses_at_once_and_counts_every_refused_frame() {
    let (mut producer, mut consumer) = ring(with_policy(2, 8, Policy::DropNewest)).unwrap();
    let stats = producer.ring_stats();
    let mut offered = 0;
    for id in 0..5u64 {
        offered += 1;
        let started = Instant::now();
        match producer.grant(LONG) {
            Ok(slot) => slot.commit(meta(id, 0)),
            Err(e) => {
                assert_eq!(e, GrantError::Dropped);
                assert!(started.elapsed() < LONG / 2, "never waits");
            }
        }
    }
    let c = stats.snapshot();
    assert_eq!((c.produced, c.dropped), (2, 3));
    assert_eq!(c.produced + c.dropped, offered);
    assert_eq!(c.policy, Policy::DropNewest);
    let ids: Vec<_> =
        std::iter::from_fn(|| consumer.try_next().map(|f| f.meta().frame_id)).collect();
    assert_eq!(ids, [0, 1], "the newest frames were the ones dropped");
}

#[test]
fn block_waits_and_counts_nothing_on_timeout() {
    let (mut producer, _consumer) = ring(with_policy(1, 8, Policy::Block)).unwrap();
    producer.grant(SHORT).unwrap().commit(meta(0, 0));
    let started = Instant::now();
    assert_eq!(producer.grant(SHORT).unwrap_err(), GrantError::Timeout);
    assert!(started.elapsed() >= SHORT);
    let stats = producer.ring_stats();
    assert_eq!(stats.dropped(), 0);
    producer.record_dropped(2); // the sensor moved on
    let slot = producer.try_grant();
    assert!(slot.is_none());
    assert_eq!((stats.produced(), stats.dropped()), (1, 2));
}

#[test]
fn discarded_grant_counts_one_drop_and_publishes_nothing() {
    let (mut producer, mut consumer) = ring(cfg(2, 8)).unwrap();
    producer.try_grant().unwrap().discard();
    let stats = producer.ring_stats();
    assert_eq!((stats.produced(), stats.dropped()), (0, 1));
    assert!(consumer.try_next().is_none());
}

#[test]
fn late_lossless_consumer_starts_at_the_next_grant_and_gates_from_then_on() {
    let (mut producer, ring) = Ring::new(cfg(2, 8)).unwrap();
    for id in 0..5 {
        commit_id(&mut producer, id);
    }
    let mut late = ring.lossless("late").unwrap();
    assert!(
        late.try_next().is_none(),
        "not admitted before the next grant"
    );
    commit_id(&mut producer, 5);
    commit_id(&mut producer, 6);
    assert!(
        producer.try_grant().is_none(),
        "the late consumer gates now"
    );
    assert_eq!(late.try_next().unwrap().meta().frame_id, 5);
    commit_id(&mut producer, 7);
    assert_eq!(late.try_next().unwrap().meta().frame_id, 6);
}

#[test]
fn late_lossless_consumer_sleeping_for_admission_is_woken() {
    let (mut producer, ring) = Ring::new(cfg(2, 8)).unwrap();
    commit_id(&mut producer, 0);
    let mut late = ring.lossless("late").unwrap();
    let shared = producer.shared();
    let reader = thread::spawn(move || late.next_timeout(LONG).map(|f| f.meta().frame_id));
    wait_until_asleep(&shared.consumer_wait, "the late consumer");
    commit_id(&mut producer, 1);
    assert_eq!(reader.join().unwrap(), Ok(1));
}

#[test]
fn worker_pool_gate_advances_only_over_the_released_prefix() {
    let (mut producer, ring) = Ring::new(cfg(3, 8)).unwrap();
    let claimer = ring.worker_pool("compress").unwrap();
    for id in 0..3 {
        commit_id(&mut producer, id);
    }
    assert_eq!(claimer.start_sequence(), Some(0));
    let claims: Vec<_> = (0..3).map(|_| claimer.try_claim().unwrap()).collect();
    assert!(claimer.try_claim().is_none());
    let [c0, c1, c2] = <[_; 3]>::try_from(claims).unwrap();
    assert_eq!([c0.sequence(), c1.sequence(), c2.sequence()], [0, 1, 2]);
    assert_eq!(c1.bytes(), &1u64.to_le_bytes());
    drop(c2);
    drop(c1);
    assert!(producer.try_grant().is_none(), "0 is still claimed");
    assert_eq!(ring.stats().occupancy(), 3);
    drop(c0);
    assert_eq!(ring.stats().occupancy(), 0);
    for id in 3..6 {
        commit_id(&mut producer, id);
    }
    assert_eq!(claimer.consumed(), 3);
}

#[test]
fn claims_are_read_and_released_on_other_threads_and_reordered() {
    let (mut producer, ring) = Ring::new(cfg(4, 64)).unwrap();
    let claimer = ring.worker_pool("compress").unwrap();
    let (to_writer, from_pool) = std::sync::mpsc::sync_channel(4);
    const FRAMES: u64 = 2000;
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let claimer = claimer.clone();
            let to_writer = to_writer.clone();
            thread::spawn(move || {
                while let Ok(claim) = claimer.claim_timeout(LONG) {
                    let id = u64::from_le_bytes(claim.bytes()[..8].try_into().unwrap());
                    assert_eq!(id, claim.meta().frame_id);
                    if (id + w) % 3 == 0 {
                        // "codec none": the writer writes from the slot and releases it.
                        to_writer.send((claim.sequence(), Err(claim))).unwrap();
                    } else {
                        // Compress into our own buffer, release the slot before the write.
                        let seq = claim.sequence();
                        let out = claim.bytes().to_vec();
                        drop(claim);
                        to_writer.send((seq, Ok(out))).unwrap();
                    }
                }
            })
        })
        .collect();
    drop((to_writer, claimer));
    let writer = thread::spawn(move || {
        let mut order = Reorder::with_capacity(0, 4);
        let mut written = 0u64;
        for (seq, item) in from_pool {
            order.push(seq, item);
            while let Some((seq, item)) = order.pop() {
                let bytes = match &item {
                    Ok(out) => out.clone(),
                    Err(claim) => claim.bytes().to_vec(),
                };
                assert_eq!(bytes[..8], seq.to_le_bytes(), "written in sequence order");
                written += 1;
            }
        }
        assert_eq!(order.pending(), 0);
        written
    });
    for id in 0..FRAMES {
        let mut slot = producer.grant(LONG).unwrap();
        slot.bytes_mut()[..8].copy_from_slice(&id.to_le_bytes());
        slot.commit(meta(id, 8));
    }
    drop(producer);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(writer.join().unwrap(), FRAMES);
    let c = ring.stats().snapshot();
    assert_eq!(c.consumers[0].kind, ConsumerKind::WorkerPool);
    assert_eq!(c.consumers[0].consumed, FRAMES);
    assert!(!c.consumers[0].attached, "detached with its last claimer");
}

#[test]
fn reorder_restores_sequence_order() {
    let mut order = Reorder::new(5);
    for seq in [7, 6, 9] {
        order.push(seq, seq * 10);
    }
    assert_eq!(order.pop(), None);
    order.push(5, 50);
    let got: Vec<_> = std::iter::from_fn(|| order.pop()).collect();
    assert_eq!(got, [(5, 50), (6, 60), (7, 70)]);
    assert_eq!((order.next_sequence(), order.pending()), (8, 1));
}

#[test]
#[should_panic(expected = "sequence 3 pushed twice")]
fn reorder_refuses_a_duplicate() {
    let mut order = Reorder::new(0);
    order.push(3, ());
    order.push(3, ());
}

#[test]
fn consumers_beyond_the_table_are_refused_and_records_are_reused() {
    let (_producer, ring) = Ring::new(cfg(2, 8)).unwrap();
    let mut held: Vec<_> = (0..crate::MAX_CONSUMERS)
        .map(|i| ring.lossy(&format!("c{i}")).unwrap())
        .collect();
    let err = ring.lossless("one too many").unwrap_err();
    assert_eq!(err, RingError::TooManyConsumers { max: 16 });
    assert_eq!(err.to_string(), "ring has 16 consumers attached already");
    held.pop();
    let _again = ring.lossless("reused").unwrap();
}

#[test]
fn policy_names_round_trip() {
    for policy in [Policy::Block, Policy::DropNewest] {
        assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
    }
    assert_eq!(
        "drop-oldest".parse::<Policy>().unwrap_err().to_string(),
        "ring policy \"drop-oldest\": expected block or drop-newest"
    );
}

/// A fresh path for a shared-memory file (under /dev/shm when there is one).
pub(crate) fn shm_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "detflow-ring-unit-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

#[test]
fn shared_memory_file_has_the_documented_layout() {
    let path = shm_path("layout");
    let (mut producer, ring) = Ring::new(RingConfig {
        shm: Some(path.clone()),
        policy: Policy::DropNewest,
        ..cfg(3, 5000)
    })
    .unwrap();
    assert_eq!(ring.shm_path(), Some(path.as_path()));
    let sent = SlotMeta {
        frame_id: 0x1122_3344_5566_7788,
        epics_sec: 7,
        epics_nsec: 8,
        unix_time_s: 1.5,
        width: 50,
        height: 25,
        pixel_type: 3,
        color_mode: 0,
        len: 2500,
    };
    let mut slot = producer.try_grant().unwrap();
    slot.bytes_mut()[..2500].fill(0xA5);
    slot.commit(sent);
    producer.record_dropped(4);

    let file = std::fs::read(&path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
    assert_eq!(&file[..8], b"DFLWRING");
    assert_eq!((u32_at(8), u32_at(12)), (1, 256));
    assert_eq!((u64_at(16), u64_at(24), u64_at(32)), (3, 5000, 8192));
    assert_eq!((u64_at(40), u64_at(48), u64_at(56)), (256, 64, 4096));
    assert_eq!(u64_at(64), 1, "policy drop-newest");
    assert_eq!((u64_at(128), u64_at(136), u64_at(152)), (1, 4, 0));
    assert_eq!(file.len(), 4096 + 3 * 8192);
    let h = 256; // slot header 0
    assert_eq!(u64_at(h), 2, "stamp of committed sequence 0");
    assert_eq!(u64_at(h + 8), sent.frame_id);
    assert_eq!((u32_at(h + 16), u32_at(h + 20)), (7, 8));
    assert_eq!(f64::from_bits(u64_at(h + 24)), 1.5);
    assert_eq!((u32_at(h + 32), u32_at(h + 36)), (50, 25));
    assert_eq!((u32_at(h + 40), u32_at(h + 44)), (3, 0));
    assert_eq!(u64_at(h + 48), 2500);
    assert!(file[4096..4096 + 2500].iter().all(|&b| b == 0xA5));
    assert_eq!(u64_at(256 + 64), 0, "slot 1 never written");

    let reader = ShmReader::open(&path).unwrap();
    let mut buf = Vec::new();
    let frame = reader.latest(&mut buf).unwrap();
    assert_eq!((frame.sequence, frame.meta), (0, sent));
    assert_eq!(buf.len(), 2500);
    assert_eq!((reader.produced(), reader.dropped()), (1, 4));
    drop(producer);
    assert!(reader.is_closed());
    drop(ring);
    assert!(path.exists(), "the file is left in place");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn shm_reader_refuses_what_is_not_a_ring() {
    let path = shm_path("bad");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let err = ShmReader::open(&path).unwrap_err();
    assert!(matches!(err, RingError::BadLayout { .. }), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = ShmReader::open(&path).unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
}

/// Wait until a thread sleeps on `queue` (registered, so only a notify wakes it), with a
/// deadline: a test of waking a parked thread must not start before it parks.
fn wait_until_asleep(queue: &crate::shared::WaitQueue, who: &str) {
    let t = Instant::now();
    while queue.sleepers() == 0 {
        assert!(t.elapsed() < LONG, "{who} never went to sleep");
        thread::sleep(Duration::from_millis(1));
    }
}
