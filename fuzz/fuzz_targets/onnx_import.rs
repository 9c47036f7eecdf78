//! Fuzz target: ONNX import must return an error value, never panic, on any
//! input; when a model imports, `check` must agree and the reference
//! executor must run it (small inputs only).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = shiftnn_converter::onnx::load(data);
    if let Ok(report) = shiftnn_converter::onnx::check(data) {
        assert_eq!(report.is_ok(), loaded.is_ok(), "check and load disagree");
    }
    if let Ok(graph) = loaded {
        if let [(name, shape)] = graph.inputs.as_slice() {
            let n: usize = shape.iter().product();
            let total: usize = graph
                .shapes
                .values()
                .map(|s| s.iter().product::<usize>())
                .sum();
            if n <= 1 << 12 && total <= 1 << 20 && graph.nodes.len() <= 64 {
                let x = vec![0.25f32; n];
                let _ = shiftnn_converter::reference::run(&graph, &[(name.as_str(), &x)]);
            }
        }
    }
});
