//! Frame hand-off between two threads: the producer grants, writes a frame id and commits;
//! the consumer reads the frame in place and releases it.
//!
//! `handoff/64B_x256` measures the protocol's throughput (handoffs/s); `handoff/2MiB_x64`
//! shows the per-frame cost with detector-sized slots, which should match `64B_x64` (same slot
//! count) because nothing is copied. Run with `cargo bench -p detflow-ring --bench handoff`.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_ring::{RingConfig, SlotMeta, ring};

const WAIT: Duration = Duration::from_secs(10);

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(1));
    for (name, slots, slot_bytes) in [
        ("64B_x256", 256, 64),
        ("64B_x64", 64, 64),
        ("2MiB_x64", 64, 2 << 20),
    ] {
        let (mut producer, mut consumer) = ring(RingConfig { slots, slot_bytes }).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|frames| {
                let started = Instant::now();
                thread::scope(|s| {
                    let consumer = &mut consumer;
                    s.spawn(move || {
                        for _ in 0..frames {
                            let frame = consumer.next_timeout(WAIT).unwrap();
                            black_box(&frame.bytes()[..8]);
                        }
                    });
                    for id in 0..frames {
                        let mut slot = producer.grant_timeout(WAIT).unwrap();
                        slot.bytes_mut()[..8].copy_from_slice(&id.to_le_bytes());
                        slot.commit(SlotMeta {
                            frame_id: id,
                            len: slot_bytes as u64,
                            ..SlotMeta::default()
                        });
                    }
                });
                started.elapsed()
            });
        });
    }
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
