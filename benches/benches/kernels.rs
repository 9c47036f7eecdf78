//! Every registered kernel this CPU runs (`shiftnn_kernels::dispatch`),
//! compared on the same layer shapes in one run, with the multiply-based
//! scalar references (int8 weights, f32 weights) beside them. Throughput
//! is in MACs (criterion's "elements"): MAC/cycle = Melem/s / clock MHz.
//!
//! `cargo bench -p shiftnn-benches --bench kernels -- gemv` (a filter);
//! `SHIFTNN_BENCH_BITS=2,3,4` chooses code widths (default 2,3,4);
//! `SHIFTNN_BENCH_SCALAR=0` skips the (slow) scalar kernels.
//!
//! Shapes: GEMV 4096x4096 (batch-1 linear), conv-as-GEMM 784x1152x128 (a
//! 1x1 conv: 784 pixels, k = 1152, 128 channels), a 3x3 conv of the same
//! GEMM size (128x28x28, k = 1152, patches gathered with padding), a
//! ResNet-18 layer1 3x3 conv, its last stage's 3x3 conv (k = 4608 on 7x7
//! pixels), a stride-2 3x3 conv, a depthwise 3x3, a pointwise expansion
//! and a 7x7 stride-2 stem. The pixel-lane GEMM (`avx512/gemm-dot`) runs on
//! rows decoded beforehand, as the runtime decodes them at load. Kernels run only on the layers they are registered
//! for (`Kernel::layers`). Int8-weight kernels
//! (`*/w8`, kept layers) run on the same shapes with random int8 weights.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shiftnn_kernels::codes::pack;
use shiftnn_kernels::dispatch::{self, KernelFn};
use shiftnn_kernels::gemm;
use shiftnn_kernels::lists;
use shiftnn_kernels::scalar::{conv_f32, Affine};
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
        ("gemv_4096x4096", Conv2dGeom::linear(4096, 4096)),
        ("gemm_784x1152x128", conv(1152, 28, 128, 1, 1, 1)),
        ("conv3x3_128x28x28", conv(128, 28, 128, 3, 1, 1)),
        ("conv3x3_64x56x56", conv(64, 56, 64, 3, 1, 1)),
        // ResNet-18's last stage and a stride-2 downsampling conv.
        ("conv3x3_512x7x7", conv(512, 7, 512, 3, 1, 1)),
        ("conv3x3s2_128x28x28_256", conv(128, 28, 256, 3, 2, 1)),
        ("dw3x3_64x56x56", conv(64, 56, 64, 3, 1, 64)),
        // MobileNetV2's first expansion and ResNet-18's stem: the
        // pixel-lane kernels' layers (`avx2/pw-dot`, `avx2/px-dot`).
        ("pw1x1_16x112x112_96", conv(16, 112, 96, 1, 1, 1)),
        ("stem7x7s2_3x224x224_64", conv(3, 224, 64, 7, 2, 1)),
    ]
}

fn bits_list() -> Vec<Bits> {
    std::env::var("SHIFTNN_BENCH_BITS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|v| v.trim().parse().ok().and_then(Bits::new))
                .collect()
        })
        .unwrap_or_else(|| vec![Bits::B2, Bits::B3, Bits::B4])
}

fn bench(c: &mut Criterion) {
    let with_scalar = std::env::var("SHIFTNN_BENCH_SCALAR").map_or(true, |v| v != "0");
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(2));
    for (name, g) in shapes() {
        group.throughput(Throughput::Elements(g.macs() as u64));
        let xi: Vec<i8> = (0..g.in_len())
            .map(|i| (i * 31 % 255) as u8 as i8)
            .collect();
        let xf: Vec<f32> = xi.iter().map(|&v| v as f32 / 64.0).collect();
        let rq = vec![Requant::from_real(1.0 / 256.0, 0.0, -128, 127); g.c_out];
        let ep = vec![Affine::IDENTITY; g.c_out];
        let mut oi = vec![0i8; g.out_len()];
        let mut of = vec![0f32; g.out_len()];
        for bits in bits_list() {
            let b = bits.get();
            let codes: Vec<u8> = (0..g.c_out * g.k())
                .map(|i| ((i * 7 + i / 13) % (1 << b)) as u8)
                .collect();
            let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
            pack(&codes, bits, g.c_out, g.k(), &mut packed);
            let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
            let n = g.c_out;
            let (mut li, mut la) = (vec![0u16; n * g.k()], vec![0u32; lists::offsets_len(&w)]);
            lists::decode(&w, &mut li, &mut la);
            let l = lists::ExpLists::new(&li, &la, n, g.k(), bits).unwrap();
            for k in dispatch::kernels() {
                if !k.available()
                    || !k.layers.fits(&g)
                    || (k.isa == dispatch::Isa::Scalar && !with_scalar)
                {
                    continue;
                }
                let id = BenchmarkId::new(k.name, format!("{name}/b{b}"));
                match k.f {
                    KernelFn::ShiftI8(f) => {
                        group.bench_function(id, |bn| bn.iter(|| f(&g, &xi, &w, 0, &rq, &mut oi)))
                    }
                    KernelFn::ShiftF32(f) | KernelFn::ShiftF16(f) => {
                        group.bench_function(id, |bn| bn.iter(|| f(&g, &xf, &w, 0, &ep, &mut of)))
                    }
                    // Rows decoded at load (`gemm::decode`, `lists::decode`,
                    // not timed).
                    KernelFn::DecodedI8(f) => {
                        let order = k.decoded_order(&g);
                        let (dw, corr, sh, at, fix) = decode_rows(&w, order);
                        let d = gemm::DecodedRows::new(&dw, &corr, &sh, &at, &fix, g.k(), order)
                            .unwrap();
                        group.bench_function(id, |bn| bn.iter(|| f(&g, &xi, &d, 0, &rq, &mut oi)))
                    }
                    KernelFn::ListsI8(f) => {
                        group.bench_function(id, |bn| bn.iter(|| f(&g, &xi, &l, 0, &rq, &mut oi)))
                    }
                    _ => continue,
                };
            }
            // The FMA baseline of the `fexp` target: same driver, layout
            // and decode as `avx512/fexp`, a multiply-add per weight.
            #[cfg(target_arch = "x86_64")]
            if dispatch::Isa::Avx512.available() && !shiftnn_kernels::depthwise::applies(&g) {
                let id = BenchmarkId::new("avx512/fma-baseline", format!("{name}/b{b}"));
                group.bench_function(id, |bn| {
                    bn.iter(|| {
                        shiftnn_kernels::x86_64::avx512::conv_fma_f32(&g, &xf, &w, 0, &ep, &mut of)
                    })
                });
            }
            // The FMA baseline of `avx512/gemm-fexp` (registered, so run
            // above on its layers): same blocks, panel and decode, a
            // multiply-add per weight.
            #[cfg(target_arch = "x86_64")]
            if dispatch::Isa::Avx512.available() && gemm::applies(&g) {
                let id = BenchmarkId::new("avx512/gemm-fma-baseline", format!("{name}/b{b}"));
                group.bench_function(id, |bn| {
                    bn.iter(|| {
                        shiftnn_kernels::x86_64::gemm_fexp::conv_gemm_fma_f32(
                            &g, &xf, &w, 0, &ep, &mut of,
                        )
                    })
                });
            }
        }
        // Int8 weights (kept layers): the registered w8 kernels, and the
        // multiply-based float reference.
        let w8: Vec<i8> = (0..g.c_out * g.k())
            .map(|i| (i * 7 % 255) as u8 as i8)
            .collect();
        for k in dispatch::kernels() {
            let KernelFn::W8I8(f) = k.f else { continue };
            if !k.isa.available()
                || !k.layers.fits(&g)
                || (k.isa == dispatch::Isa::Scalar && !with_scalar)
            {
                continue;
            }
            group.bench_function(BenchmarkId::new(k.name, name), |bn| {
                bn.iter(|| f(&g, &xi, &w8, 0, &rq, &mut oi))
            });
        }
        if with_scalar {
            let wf: Vec<f32> = w8.iter().map(|&v| v as f32).collect();
            group.bench_function(BenchmarkId::new("scalar/f32", name), |bn| {
                bn.iter(|| conv_f32(&g, &xf, &wf, 0, &ep, &mut of))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The parts of decoded rows: weights, corrections, forms, fix index
/// and fixes ([`gemm::decode`]).
type Decoded = (Vec<i8>, Vec<i32>, Vec<u8>, Vec<u32>, Vec<gemm::Fix>);

/// `w` decoded in `order` (the layout the runtime builds at load).
fn decode_rows(w: &PackedRows, order: gemm::Order) -> Decoded {
    let n = w.rows();
    let (mut dw, mut corr) = (vec![0i8; n * order.kp(w.k())], vec![0i32; n]);
    let (mut sh, mut at) = (vec![0u8; n], vec![0u32; n + 1]);
    let mut fix = vec![gemm::Fix::default(); gemm::fix_count(w, order)];
    gemm::decode(w, order, &mut dw, &mut corr, &mut sh, &mut at, &mut fix);
    (dw, corr, sh, at, fix)
}
