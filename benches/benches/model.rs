//! Whole-model latency of the bundled Fashion-MNIST example, converted at
//! 4 and 3 bits in both modes, against the float reference executor in the
//! same run. `shiftnn bench` gives percentiles and the per-layer profile.

use criterion::{criterion_group, criterion_main, Criterion};
use shiftnn_converter::lower::{convert, CalibData, CalibMethod, ConvertOptions};
use shiftnn_kernels::Bits;
use shiftnn_runtime::{Mode, Model, Session};

const ONNX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/fmnist/fmnist_fp32.onnx"
);

fn bench(c: &mut Criterion) {
    let graph = shiftnn_converter::onnx::load_file(ONNX).expect("bundled example model");
    let in_len: usize = graph.shapes[&graph.inputs[0].0].iter().product();
    let mut s = 0x1234_5678u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let calib: Vec<f32> = (0..16 * in_len).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..in_len).map(|_| rnd()).collect();
    let mut group = c.benchmark_group("fmnist");
    group.sample_size(30);
    let input_name = graph.inputs[0].0.clone();
    group.bench_function("reference-f32", |b| {
        b.iter(|| {
            shiftnn_converter::reference::run(&graph, &[(input_name.as_str(), x.as_slice())])
                .unwrap()
        })
    });
    for (mode, mname) in [(Mode::Int8, "int8"), (Mode::Float, "float")] {
        for bits in [Bits::B4, Bits::B3] {
            let opts = ConvertOptions {
                bits,
                mode,
                keep: None,
                calib: Some(CalibData {
                    x: calib.clone(),
                    n: 16,
                }),
                calib_method: CalibMethod::MinMax,
                progress: None,
            };
            let (bytes, _) = convert(&graph, &opts).expect("convert");
            let model = Model::from_vec(&bytes).unwrap();
            let mut sess = Session::new(&model).unwrap();
            let mut y = vec![0f32; model.output_len(0)];
            group.bench_function(format!("{mname}-b{}", bits.get()), |b| {
                b.iter(|| sess.run(&[&x], &mut [&mut y]).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
