//! Unit tests of the single-producer, single-consumer protocol through the public API.

use std::thread;
use std::time::{Duration, Instant};

use crate::slot::SlotMemory;
use crate::{NextError, RingConfig, RingError, SLOT_ALIGN, SlotMeta, ring};

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(20);

fn cfg(slots: usize, slot_bytes: usize) -> RingConfig {
    RingConfig { slots, slot_bytes }
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
    let memory = SlotMemory::new(3, 5000).unwrap();
    assert_eq!(memory.stride(), 8192);
    let base = memory.slot_ptr(0).as_ptr() as usize;
    assert_eq!(base % SLOT_ALIGN, 0);
    assert_eq!(memory.slot_ptr(2).as_ptr() as usize, base + 2 * 8192);

    let (mut producer, mut consumer) = ring(cfg(3, 5000)).unwrap();
    let mut addresses = Vec::new();
    for i in 0..3 {
        let mut slot = producer.try_grant().unwrap();
        assert_eq!(slot.bytes_mut().len(), 5000);
        addresses.push(slot.bytes_mut().as_ptr() as usize);
        slot.commit(meta(i, 0));
    }
    assert!(addresses.iter().all(|a| a % SLOT_ALIGN == 0));
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
    assert_eq!(
        stats.snapshot(),
        crate::RingCounters {
            produced: 0,
            consumed: 0,
            high_water: 0,
            slots: 4,
            slot_bytes: 8,
        }
    );
    for i in 0..3 {
        producer.try_grant().unwrap().commit(meta(i, 0));
    }
    let _ = producer.try_grant(); // abandoned: not counted
    assert_eq!(
        (stats.produced(), stats.consumed(), stats.occupancy()),
        (3, 0, 3)
    );
    assert_eq!(stats.high_water(), 3);
    drop(consumer.try_next());
    drop(consumer.try_next());
    assert_eq!(
        (stats.produced(), stats.consumed(), stats.occupancy()),
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
    assert_eq!(counters.consumed, 6);
    assert_eq!(counters.high_water, 4);
    assert!(stats.is_closed());
    assert_eq!(stats.occupancy(), 0);
}

#[test]
fn ends_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<crate::Producer>();
    assert_send::<crate::Consumer>();
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<crate::RingStats>();
}

#[test]
fn parked_consumer_is_woken_by_a_commit() {
    let (mut producer, mut consumer) = ring(cfg(2, 8)).unwrap();
    let reader = thread::spawn(move || {
        let started = Instant::now();
        let id = consumer.next_timeout(LONG).unwrap().meta().frame_id;
        (id, started.elapsed())
    });
    thread::sleep(Duration::from_millis(50)); // long enough for the reader to park
    producer.try_grant().unwrap().commit(meta(42, 0));
    let (id, waited) = reader.join().unwrap();
    assert_eq!(id, 42);
    assert!(waited < LONG / 2, "woken by the commit, not the timeout");
}

#[test]
fn parked_consumer_is_woken_by_close() {
    let (producer, mut consumer) = ring(cfg(2, 8)).unwrap();
    let reader = thread::spawn(move || consumer.next_timeout(LONG).map(|_| ()));
    thread::sleep(Duration::from_millis(50));
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
    thread::sleep(Duration::from_millis(50));
    drop(consumer.try_next().unwrap());
    let (seq, waited) = writer.join().unwrap();
    assert_eq!(seq, Some(1));
    assert!(waited < LONG / 2);
}

#[test]
fn parked_producer_gives_up_when_the_consumer_is_dropped() {
    let (mut producer, consumer) = ring(cfg(1, 8)).unwrap();
    producer.try_grant().unwrap().commit(meta(0, 0));
    let writer = thread::spawn(move || {
        let granted = producer.grant_timeout(LONG).is_some();
        (granted, producer.is_consumer_gone())
    });
    thread::sleep(Duration::from_millis(50));
    drop(consumer);
    assert_eq!(writer.join().unwrap(), (false, true));
}
