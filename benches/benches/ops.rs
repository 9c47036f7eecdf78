//! The non-conv int8 ops of ResNet-18 at its sizes: the scalar reference
//! beside the fast exact version at every level this CPU runs
//! (`shiftnn_kernels::elementwise`, `shiftnn_kernels::pool`). Throughput
//! is in output elements.
//!
//! `cargo bench -p shiftnn-benches --bench ops -- add` (a filter).
//!
//! Shapes: the input quantize (1x3x224x224 f32), the first stage's
//! residual add (64x56x56) and the stem's 3x3 stride-2 pad-1 max pool
//! (64x112x112 -> 64x56x56).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shiftnn_kernels::dispatch::Isa;
use shiftnn_kernels::scalar::{self, AddRequant, PoolGeom};
use shiftnn_kernels::{elementwise, pool};

fn levels() -> impl Iterator<Item = Isa> {
    Isa::ALL.into_iter().filter(|i| i.available())
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ops");
    group.sample_size(20);
    group.warm_up_time(std::time::Duration::from_millis(300));
    group.measurement_time(std::time::Duration::from_secs(1));

    // Input quantize: values of a normalized image, scale 1/40.
    let n = 3 * 224 * 224;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 1001) as f32 - 500.0) / 211.0)
        .collect();
    let mut q = vec![0i8; n];
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("quantize_3x224x224", "reference"), |b| {
        b.iter(|| scalar::quantize_i8(&x, 40.0, &mut q))
    });
    for isa in levels() {
        group.bench_function(BenchmarkId::new("quantize_3x224x224", isa.name()), |b| {
            b.iter(|| elementwise::quantize_i8_at(isa, &x, 40.0, &mut q))
        });
    }

    // Residual add of two tensors at different scales, fused ReLU.
    let n = 64 * 56 * 56;
    let a: Vec<i8> = (0..n).map(|i| (i * 31 % 255) as u8 as i8).collect();
    let bb: Vec<i8> = (0..n).map(|i| (i * 17 % 253) as u8 as i8).collect();
    let rq = AddRequant::from_real(0.71, 1.3, 0, 127);
    let mut o = vec![0i8; n];
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("add_64x56x56", "reference"), |b| {
        b.iter(|| scalar::add_i8(&a, &bb, &rq, &mut o))
    });
    for isa in levels() {
        group.bench_function(BenchmarkId::new("add_64x56x56", isa.name()), |b| {
            b.iter(|| elementwise::add_i8_at(isa, &a, &bb, &rq, &mut o))
        });
    }

    // The stem's max pool.
    let g = PoolGeom {
        c: 64,
        h: 112,
        w: 112,
        kh: 3,
        kw: 3,
        stride: [2, 2],
        pads: [1; 4],
        dilation: [1, 1],
        out_h: 56,
        out_w: 56,
        count_include_pad: false,
    };
    let x: Vec<i8> = (0..g.in_len())
        .map(|i| (i * 29 % 251) as u8 as i8)
        .collect();
    let mut o = vec![0i8; g.out_len()];
    group.throughput(Throughput::Elements(g.out_len() as u64));
    group.bench_function(
        BenchmarkId::new("maxpool3x3s2_64x112x112", "reference"),
        |b| b.iter(|| scalar::maxpool(&g, &x, i8::MIN, &mut o)),
    );
    for isa in levels() {
        group.bench_function(
            BenchmarkId::new("maxpool3x3s2_64x112x112", isa.name()),
            |b| b.iter(|| pool::maxpool_i8_at(isa, &g, &x, &mut o)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
