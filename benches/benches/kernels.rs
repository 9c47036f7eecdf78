//! Kernel families on representative layer shapes, compared in one run:
//! the multiplication-free int8 shift kernel, the int8-weight kernel (the
//! multiply-based peer), the float exponent-add kernel and an f32 kernel.
//! Throughput is reported in MACs so ratios read directly.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shiftnn_kernels::codes::pack;
use shiftnn_kernels::scalar::{conv_f32, conv_shift_f32, conv_shift_i8, conv_w8_i8, Affine};
use shiftnn_kernels::{Bits, Conv2dGeom, PackedRows, Requant};

fn shapes() -> Vec<(&'static str, Conv2dGeom)> {
    let conv = |c_in, h, c_out, k, s, groups| Conv2dGeom {
        c_in,
        h,
        w: h,
        c_out,
        kh: k,
        kw: k,
        stride: [s, s],
        pads: [k / 2; 4],
        dilation: [1, 1],
        groups,
    };
    vec![
        ("conv3x3_32x14x14", conv(32, 14, 32, 3, 1, 1)),
        ("conv1x1_64x7x7", conv(64, 7, 64, 1, 1, 1)),
        ("dw3x3_64x14x14", conv(64, 14, 64, 3, 1, 64)),
        ("gemv_1024x1024", Conv2dGeom::linear(1024, 1024)),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(20);
    for (name, g) in shapes() {
        group.throughput(Throughput::Elements(g.macs() as u64));
        let bits = Bits::B4;
        let codes: Vec<u8> = (0..g.c_out * g.k()).map(|i| (i * 7 % 16) as u8).collect();
        let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
        pack(&codes, bits, g.c_out, g.k(), &mut packed);
        let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
        let w8: Vec<i8> = codes.iter().map(|&c| bits.value(c).clamp(-127, 127) as i8).collect();
        let wf: Vec<f32> = codes.iter().map(|&c| bits.value(c) as f32).collect();
        let xi: Vec<i8> = (0..g.in_len()).map(|i| (i * 31 % 255) as i8).collect();
        let xf: Vec<f32> = xi.iter().map(|&v| v as f32 / 64.0).collect();
        let rq = vec![Requant::from_real(1.0 / 256.0, 0.0, -128, 127); g.c_out];
        let ep = vec![Affine::IDENTITY; g.c_out];
        let mut oi = vec![0i8; g.out_len()];
        let mut of = vec![0f32; g.out_len()];
        group.bench_function(BenchmarkId::new("scalar/shift-i8", name), |b| {
            b.iter(|| conv_shift_i8(&g, &xi, &w, 0, &rq, &mut oi))
        });
        group.bench_function(BenchmarkId::new("scalar/w8-i8", name), |b| {
            b.iter(|| conv_w8_i8(&g, &xi, &w8, 0, &rq, &mut oi))
        });
        group.bench_function(BenchmarkId::new("scalar/shift-f32", name), |b| {
            b.iter(|| conv_shift_f32(&g, &xf, &w, 0, &ep, &mut of))
        });
        group.bench_function(BenchmarkId::new("scalar/f32", name), |b| b.iter(|| conv_f32(&g, &xf, &wf, 0, &ep, &mut of)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
