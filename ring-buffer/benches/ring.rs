//! Frame hand-off through the ring, producer and consumers on their own threads.
//!
//! - `handoff/<slot>_<consumers>`: throughput (handoffs/s) with 64-byte and 2 MiB slots and
//!   one or three lossless consumers (each reads every frame's first 8 bytes in place and
//!   releases it). 2 MiB should cost what 64 B costs: nothing is copied.
//! - `latency/<slot>`: one slot, so every frame waits for the previous release: the round
//!   trip grant -> commit -> wake consumer -> read -> release -> wake producer.
//! - `pool/64B_2workers`: a worker pool of two claimers.
//!
//! Run with `cargo bench -p detflow-ring --bench ring`. On a machine with fewer cores than
//! threads (three consumers + producer on two cores) the figures measure the scheduler as much
//! as the ring.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_ring::{Consumer, Producer, Ring, RingConfig, SlotMeta};

const WAIT: Duration = Duration::from_secs(10);
const MIB2: usize = 2 << 20;

fn produce(producer: &mut Producer, frames: u64, slot_bytes: usize) {
    for id in 0..frames {
        let mut slot = producer.grant(WAIT).unwrap();
        slot.bytes_mut()[..8].copy_from_slice(&id.to_le_bytes());
        slot.commit(SlotMeta {
            frame_id: id,
            len: slot_bytes as u64,
            ..SlotMeta::default()
        });
    }
}

fn consume(consumer: &mut Consumer, frames: u64) {
    for _ in 0..frames {
        let frame = consumer.next_timeout(WAIT).unwrap();
        black_box(&frame.bytes()[..8]);
    }
}

/// Passes `frames` frames from `producer` to every consumer; returns the elapsed time.
fn run(producer: &mut Producer, consumers: &mut [Consumer], frames: u64) -> Duration {
    let slot_bytes = producer.slot_bytes();
    let started = Instant::now();
    thread::scope(|s| {
        for consumer in consumers.iter_mut() {
            s.spawn(move || consume(consumer, frames));
        }
        produce(producer, frames, slot_bytes);
    });
    started.elapsed()
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(1));
    for (name, slots, slot_bytes, consumers) in [
        ("64B_x256_1consumer", 256, 64, 1),
        ("64B_x256_3consumers", 256, 64, 3),
        ("2MiB_x64_1consumer", 64, MIB2, 1),
        ("2MiB_x64_3consumers", 64, MIB2, 3),
    ] {
        let (mut producer, ring) = Ring::new(RingConfig::new(slots, slot_bytes)).unwrap();
        let mut consumers: Vec<_> = (0..consumers)
            .map(|i| ring.lossless(&format!("c{i}")).unwrap())
            .collect();
        group.bench_function(name, |b| {
            b.iter_custom(|frames| run(&mut producer, &mut consumers, frames));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("latency");
    group.throughput(Throughput::Elements(1));
    for (name, slot_bytes) in [("64B_1slot", 64), ("2MiB_1slot", MIB2)] {
        let (mut producer, ring) = Ring::new(RingConfig::new(1, slot_bytes)).unwrap();
        let mut consumers = [ring.lossless("writer").unwrap()];
        group.bench_function(name, |b| {
            b.iter_custom(|frames| run(&mut producer, &mut consumers, frames));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(1));
    let (mut producer, ring) = Ring::new(RingConfig::new(256, 64)).unwrap();
    let claimer = ring.worker_pool("compress").unwrap();
    group.bench_function("64B_x256_2workers", |b| {
        b.iter_custom(|frames| {
            let started = Instant::now();
            let target = claimer.consumed() + frames;
            thread::scope(|s| {
                for _ in 0..2 {
                    let claimer = claimer.clone();
                    s.spawn(move || {
                        while claimer.consumed() < target {
                            if let Ok(claim) = claimer.claim_timeout(Duration::from_millis(1)) {
                                black_box(&claim.bytes()[..8]);
                            }
                        }
                    });
                }
                produce(&mut producer, frames, 64);
            });
            started.elapsed()
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = handoff
}
criterion_main!(benches);
