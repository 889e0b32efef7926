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
    let (mut producer, mut consumer) = ring(RingConfig::new(slots, slot_bytes)).unwrap();
    let stats = producer.ring_stats();

    let writer = thread::spawn(move || {
        for id in 0..FRAMES {
            if id.is_multiple_of(13) {
                // An abandoned grant: scribbled on, never published.
                let mut slot = producer.grant_timeout(WAIT).expect("consumer keeps up");
                slot.bytes_mut().fill(0xEE);
            }
            if id.is_multiple_of(9973) {
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
                if expected.is_multiple_of(97) {
                    let want: Vec<u8> = (0..bytes.len()).map(|i| frame_byte(expected, i)).collect();
                    assert_eq!(bytes, &want[..], "frame {expected}: bytes");
                }
                if expected.is_multiple_of(10007) {
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
    assert_eq!(
        (counters.produced, counters.consumers[0].consumed),
        (FRAMES, FRAMES)
    );
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

/// A detector thread offering frames faster than a slow lossless writer takes them, with a
/// lossy preview and a two-thread worker pool alongside: under either policy every offered
/// frame is committed or counted as dropped, every lossless consumer gets every committed
/// frame, and the preview counts each committed frame once, as read or lagged.
fn fan_out(policy: detflow_ring::Policy) {
    use detflow_ring::{GrantError, LossyError, Ring};
    const OFFERED: u64 = 20_000;
    let (mut producer, ring) = Ring::new(RingConfig {
        policy,
        ..RingConfig::new(4, 256)
    })
    .unwrap();
    let mut writer = ring.lossless("writer").unwrap();
    let claimer = ring.worker_pool("compress").unwrap();
    let mut preview = ring.lossy("preview").unwrap();
    let stats = ring.stats();

    let detector = thread::spawn(move || {
        for id in 0..OFFERED {
            match producer.grant(Duration::from_micros(20)) {
                Ok(mut slot) => {
                    slot.bytes_mut()[..8].copy_from_slice(&id.to_le_bytes());
                    slot.commit(SlotMeta {
                        frame_id: id,
                        len: 8,
                        ..SlotMeta::default()
                    });
                }
                Err(GrantError::Dropped) => {}
                // Block: the sensor does not wait longer than one frame; it counts the loss.
                Err(GrantError::Timeout) => producer.record_dropped(1),
            }
        }
    });
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let claimer = claimer.clone();
            thread::spawn(move || {
                let mut ids = Vec::new();
                while let Ok(claim) = claimer.claim_timeout(WAIT) {
                    let id = u64::from_le_bytes(claim.bytes().try_into().unwrap());
                    assert_eq!(id, claim.meta().frame_id);
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    drop(claimer);
    let previewer = thread::spawn(move || {
        let mut buf = Vec::new();
        loop {
            match preview.next_timeout(WAIT) {
                Ok(mut frame) => {
                    if frame.read_into(&mut buf).is_ok() {
                        assert_eq!(buf, frame.meta().frame_id.to_le_bytes());
                    }
                }
                Err(LossyError::Lagged(_)) => {}
                Err(LossyError::Closed) => break,
                Err(LossyError::Timeout) => panic!("preview starved"),
            }
        }
        (preview.consumed(), preview.lagged())
    });
    let mut last = None;
    let mut written = 0u64;
    loop {
        match writer.next_timeout(WAIT) {
            Ok(frame) => {
                let id = frame.meta().frame_id;
                assert!(last < Some(id), "in order");
                last = Some(id);
                written += 1;
                if written.is_multiple_of(8) {
                    thread::yield_now(); // a writer slower than the detector
                }
            }
            Err(NextError::Closed) => break,
            Err(NextError::Timeout) => panic!("writer starved"),
        }
    }
    detector.join().unwrap();
    let mut pooled: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    pooled.sort_unstable();
    let (read, lagged) = previewer.join().unwrap();

    let c = stats.snapshot();
    assert_eq!(
        c.produced + c.dropped,
        OFFERED,
        "acquired = written + dropped"
    );
    assert_eq!(written, c.produced);
    assert_eq!(pooled.len() as u64, c.produced);
    assert!(
        pooled.windows(2).all(|w| w[0] < w[1]),
        "each frame claimed once"
    );
    assert_eq!(read + lagged, c.produced);
    assert!(c.high_water <= 4);
}

#[test]
fn fan_out_under_block_accounts_for_every_frame() {
    fan_out(detflow_ring::Policy::Block);
}

#[test]
fn fan_out_under_drop_newest_accounts_for_every_frame() {
    fan_out(detflow_ring::Policy::DropNewest);
}
