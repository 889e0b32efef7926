//! Two threads pass many frames through small rings; every frame's bytes, length, metadata
//! and sequence are checked on the consumer side.

#![cfg(not(loom))]

use std::thread;
use std::time::Duration;

use detflow_ring::{NextError, RingConfig, SlotMeta, ring};

const FRAMES: u64 = 100_000;
const WAIT: Duration = Duration::from_secs(30);

/// Frame `id`'s length and content: every frame differs in length and bytes.
fn frame_len(id: u64, slot_bytes: usize) -> usize {
    (id.wrapping_mul(7919) % slot_bytes as u64) as usize + 1
}

fn frame_byte(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(31) ^ (i as u64).wrapping_mul(131)) as u8
}

/// FNV-1a, stored in the metadata so the consumer checks it against the bytes it reads.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn run(slots: usize, slot_bytes: usize) {
    let (mut producer, mut consumer) = ring(RingConfig { slots, slot_bytes }).unwrap();
    let stats = producer.ring_stats();

    let writer = thread::spawn(move || {
        for id in 0..FRAMES {
            if id % 13 == 0 {
                // An abandoned grant: scribbled on, never published.
                let mut slot = producer.grant_timeout(WAIT).expect("consumer keeps up");
                slot.bytes_mut().fill(0xEE);
            }
            if id % 9973 == 0 {
                thread::sleep(Duration::from_millis(1)); // let the consumer park
            }
            let mut slot = producer.grant_timeout(WAIT).expect("consumer keeps up");
            assert_eq!(slot.sequence(), id);
            let len = frame_len(id, slot_bytes);
            let bytes = &mut slot.bytes_mut()[..len];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = frame_byte(id, i);
            }
            let sum = checksum(bytes);
            slot.commit(SlotMeta {
                frame_id: id,
                unix_time_s: sum as f64,
                epics_sec: (sum >> 32) as u32,
                epics_nsec: sum as u32,
                len: len as u64,
                ..SlotMeta::default()
            });
        }
    });

    let mut expected = 0u64;
    loop {
        match consumer.next_timeout(WAIT) {
            Ok(frame) => {
                assert_eq!(frame.sequence(), expected);
                let meta = *frame.meta();
                assert_eq!(meta.frame_id, expected);
                let bytes = frame.bytes();
                assert_eq!(bytes.len(), frame_len(expected, slot_bytes));
                let sum = checksum(bytes);
                assert_eq!(
                    (meta.epics_sec, meta.epics_nsec),
                    ((sum >> 32) as u32, sum as u32),
                    "frame {expected}: checksum"
                );
                if expected % 97 == 0 {
                    let want: Vec<u8> = (0..bytes.len()).map(|i| frame_byte(expected, i)).collect();
                    assert_eq!(bytes, &want[..], "frame {expected}: bytes");
                }
                if expected % 10007 == 0 {
                    thread::sleep(Duration::from_millis(1)); // let the producer park
                }
                expected += 1;
            }
            Err(NextError::Closed) => break,
            Err(NextError::Timeout) => panic!("no frame for {WAIT:?} after {expected}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(expected, FRAMES);
    let counters = stats.snapshot();
    assert_eq!((counters.produced, counters.consumed), (FRAMES, FRAMES));
    assert!(counters.high_water >= 1 && counters.high_water <= slots as u64);
}

#[test]
fn one_slot_hands_every_frame_over() {
    run(1, 64);
}

#[test]
fn small_ring_passes_frames_in_order_with_checksums() {
    run(8, 512);
}

#[test]
fn ring_with_odd_slot_count_wraps_correctly() {
    run(5, 5000);
}
