//! Frame rate of whole acquisitions: simulated detector -> ring -> HDF5 file, per codec.
//!
//! `cargo bench --bench pipeline` writes into the system temp directory; each iteration is
//! one acquisition of `FRAMES` frames of 1024x1024 u16 (peaks with noise), as fast as the
//! pipeline goes. Throughput is reported in frames/s ("elem/s") of the whole run, file
//! creation and close included.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_engine::{Acquisition, Config};

const FRAMES: u64 = 50;

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut group = c.benchmark_group("acquire_1024x1024_u16");
    group.sample_size(10);
    group.throughput(Throughput::Elements(FRAMES));
    for codec in ["none", "deflate:1"] {
        group.bench_function(codec, |b| {
            b.iter(|| {
                let mut cfg = Config::default();
                cfg.detector.frames = FRAMES;
                cfg.writer.path = dir.path().to_string_lossy().into_owned();
                cfg.writer.codec = codec.parse().expect("a codec");
                cfg.writer.auto_increment = false;
                cfg.writer.overwrite = true;
                let mut run = Acquisition::builder(cfg)
                    .start()
                    .expect("acquisition starts");
                run.wait();
                let summary = run.summary();
                assert_eq!(summary.status.frames_written, FRAMES);
                summary
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
