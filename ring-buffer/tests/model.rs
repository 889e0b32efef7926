//! Property test: random interleavings of grant / commit / abandon / next / release on one
//! thread behave like a bounded `VecDeque` of frames.

#![cfg(not(loom))]

use std::collections::VecDeque;

use detflow_ring::{RingConfig, SlotMeta, ring};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// `try_grant` if no grant is held.
    Grant,
    /// Fill the held grant's first `len % (slot_bytes + 1)` bytes with `fill` and commit.
    Commit { fill: u8, len: usize },
    /// Scribble on the held grant and drop it.
    Abandon { fill: u8 },
    /// `try_next` if no read grant is held.
    Next,
    /// Drop the held read grant.
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Grant),
        3 => (any::<u8>(), any::<usize>()).prop_map(|(fill, len)| Op::Commit { fill, len }),
        1 => any::<u8>().prop_map(|fill| Op::Abandon { fill }),
        3 => Just(Op::Next),
        3 => Just(Op::Release),
    ]
}

/// A committed, unreleased frame as the model sees it.
#[derive(Debug)]
struct Frame {
    seq: u64,
    meta: SlotMeta,
    fill: u8,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ring_behaves_like_a_bounded_queue(
        slots in 1usize..6,
        slot_bytes in 1usize..300,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let (mut producer, mut consumer) = ring(RingConfig { slots, slot_bytes }).unwrap();
        let stats = producer.ring_stats();

        let mut model: VecDeque<Frame> = VecDeque::new();
        let mut next_seq = 0u64;
        let mut released = 0u64;
        let mut high_water = 0u64;

        let mut write = None;
        let mut read = None;
        for op in ops {
            match &op {
                Op::Grant => {
                    if write.is_none() {
                        write = producer.try_grant();
                        prop_assert_eq!(write.is_some(), model.len() < slots);
                        if let Some(slot) = &write {
                            prop_assert_eq!(slot.sequence(), next_seq);
                        }
                    }
                }
                Op::Commit { fill, len } => {
                    if let Some(mut slot) = write.take() {
                        let len = len % (slot_bytes + 1);
                        let fill = *fill;
                        slot.bytes_mut()[..len].fill(fill);
                        let meta = SlotMeta {
                            frame_id: next_seq * 3 + 1,
                            width: fill.into(),
                            len: len as u64,
                            ..SlotMeta::default()
                        };
                        slot.commit(meta);
                        model.push_back(Frame { seq: next_seq, meta, fill });
                        next_seq += 1;
                        high_water = high_water.max(model.len() as u64);
                    }
                }
                Op::Abandon { fill } => {
                    if let Some(mut slot) = write.take() {
                        slot.bytes_mut().fill(*fill);
                    }
                }
                Op::Next | Op::Release => {}
            }
            // `read` is moved out and re-assigned each step, so a new read grant never
            // overlaps the borrow of the one it replaces.
            let held = read;
            read = match op {
                Op::Next if held.is_none() => {
                    drop(held);
                    let got = consumer.try_next();
                    prop_assert_eq!(got.is_some(), !model.is_empty());
                    if let Some(frame) = &got {
                        let expected = &model[0];
                        prop_assert_eq!(frame.sequence(), expected.seq);
                        prop_assert_eq!(frame.meta(), &expected.meta);
                        prop_assert_eq!(frame.bytes().len() as u64, expected.meta.len);
                        prop_assert!(frame.bytes().iter().all(|&b| b == expected.fill));
                    }
                    got
                }
                Op::Release => {
                    if let Some(frame) = held {
                        drop(frame);
                        model.pop_front();
                        released += 1;
                    }
                    None
                }
                _ => held,
            };
            prop_assert_eq!(stats.produced(), next_seq);
            prop_assert_eq!(stats.consumed(), released);
            prop_assert_eq!(stats.occupancy(), model.len() as u64);
            prop_assert_eq!(stats.high_water(), high_water);
        }
    }
}
