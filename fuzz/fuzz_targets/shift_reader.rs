//! Fuzz the `.shift` reader and, when a mutated file still loads, the
//! executor on it: neither may panic or read out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shiftnn_runtime::{Model, Session};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Model::from_vec(data) else { return };
    // Refuse to allocate absurd arenas in the fuzzer; the runtime itself
    // caps value sizes at load.
    if model.arena_bytes() > 64 << 20 {
        return;
    }
    let Ok(mut s) = Session::new(&model) else { return };
    let inputs: Vec<Vec<f32>> = (0..model.graph().inputs.len()).map(|i| vec![0.25; model.input_len(i)]).collect();
    let mut outputs: Vec<Vec<f32>> = (0..model.graph().outputs.len()).map(|i| vec![0.0; model.output_len(i)]).collect();
    let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(|v| v.as_mut_slice()).collect();
    let _ = s.run(&ins, &mut outs);
});
