//! Property test: random interleavings of grant / commit / abandon / next / release on one
//! thread behave like a bounded `VecDeque` of frames.

#![cfg(not(loom))]

use std::collections::VecDeque;

use std::time::Duration;

use detflow_ring::{GrantError, LossyError, Policy, Ring, RingConfig, SlotMeta, ring};
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
        let (mut producer, mut consumer) = ring(RingConfig::new(slots, slot_bytes)).unwrap();
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
            prop_assert_eq!(stats.snapshot().consumers[0].consumed, released);
            prop_assert_eq!(stats.occupancy(), model.len() as u64);
            prop_assert_eq!(stats.high_water(), high_water);
        }
    }
}

/// One step of the fan-out model.
#[derive(Clone, Debug)]
enum FanOp {
    /// A frame arrives: `Producer::grant` under the policy, then commit (or count a drop).
    Frame,
    /// The lossless consumer reads and releases one frame.
    Write,
    /// The lossy consumer tries to read one frame.
    Preview,
}

fn fan_op() -> impl Strategy<Value = FanOp> {
    prop_oneof![
        4 => Just(FanOp::Frame),
        2 => Just(FanOp::Write),
        2 => Just(FanOp::Preview),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A lossless and a lossy consumer under either policy, against a model: the lossless
    /// consumer sees a bounded queue, the lossy one sees frames or `Lagged(n)` exactly as the
    /// ring's window says, and `offered = produced + dropped` after every step.
    #[test]
    fn fan_out_under_both_policies_matches_the_model(
        slots in 1usize..5,
        drop_newest in any::<bool>(),
        ops in proptest::collection::vec(fan_op(), 1..200),
    ) {
        let policy = if drop_newest { Policy::DropNewest } else { Policy::Block };
        let (mut producer, ring) =
            Ring::new(RingConfig { policy, ..RingConfig::new(slots, 8) }).unwrap();
        let mut writer = ring.lossless("writer").unwrap();
        let mut preview = ring.lossy("preview").unwrap();
        let stats = ring.stats();

        let mut queue: VecDeque<u64> = VecDeque::new(); // frame ids the writer has not read
        let (mut offered, mut produced, mut lossy_cursor) = (0u64, 0u64, 0u64);
        let (mut lossy_consumed, mut lossy_lagged) = (0u64, 0u64);
        let mut written = Vec::new();
        for op in ops {
            match op {
                FanOp::Frame => {
                    let id = offered;
                    offered += 1;
                    match producer.grant(Duration::ZERO) {
                        Ok(mut slot) => {
                            prop_assert!(queue.len() < slots);
                            slot.bytes_mut().copy_from_slice(&id.to_le_bytes());
                            slot.commit(SlotMeta { frame_id: id, len: 8, ..SlotMeta::default() });
                            queue.push_back(id);
                            produced += 1;
                        }
                        Err(GrantError::Dropped) => {
                            prop_assert!(drop_newest && queue.len() == slots);
                        }
                        Err(GrantError::Timeout) => {
                            prop_assert!(!drop_newest && queue.len() == slots);
                            producer.record_dropped(1); // the sensor moved on
                        }
                    }
                }
                FanOp::Write => {
                    let got = writer.try_next().map(|f| (f.meta().frame_id, f.bytes().to_vec()));
                    prop_assert_eq!(got.as_ref().map(|g| g.0), queue.pop_front());
                    if let Some((id, bytes)) = got {
                        prop_assert_eq!(bytes, id.to_le_bytes().to_vec());
                        written.push(id);
                    }
                }
                FanOp::Preview => {
                    let expected = if lossy_cursor >= produced {
                        Err(LossyError::Timeout)
                    } else if produced - lossy_cursor > slots as u64 {
                        Err(LossyError::Lagged(produced - slots as u64 - lossy_cursor))
                    } else {
                        Ok(lossy_cursor)
                    };
                    let mut buf = Vec::new();
                    let got = preview.try_next().map(|mut f| {
                        f.read_into(&mut buf).unwrap();
                        f.sequence()
                    });
                    prop_assert_eq!(got, expected);
                    match got {
                        Ok(seq) => {
                            lossy_cursor = seq + 1;
                            lossy_consumed += 1;
                            prop_assert_eq!(buf.len(), 8);
                        }
                        Err(LossyError::Lagged(n)) => {
                            lossy_cursor += n;
                            lossy_lagged += n;
                        }
                        Err(_) => {}
                    }
                }
            }
            let c = stats.snapshot();
            prop_assert_eq!(c.produced, produced);
            prop_assert_eq!(c.produced + c.dropped, offered, "offered = produced + dropped");
            prop_assert_eq!(c.consumers[0].consumed, written.len() as u64);
            prop_assert_eq!((c.consumers[1].consumed, c.consumers[1].lagged),
                (lossy_consumed, lossy_lagged));
            prop_assert_eq!(stats.occupancy(), queue.len() as u64);
        }
        // Ids are sequence numbers of committed frames only when nothing was dropped; the
        // writer's ids always increase.
        prop_assert!(written.windows(2).all(|w| w[0] < w[1]));
    }
}
