//! Builds small `.shift` models by hand for the runtime's tests, without
//! the converter: the runtime must stand on the file format alone.
#![allow(dead_code)]

use safetensors::Dtype;
use shiftnn_runtime::format::{self, TensorData, FORMAT_NAME, FORMAT_VERSION};
use shiftnn_runtime::graph::{DType, Graph, Mode, Node, Op, Value};
use shiftnn_runtime::planner;
use std::borrow::Cow;

/// Deterministic xorshift generator.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn i8(&mut self) -> i8 {
        self.next() as i8
    }
}

pub struct Builder {
    pub mode: Mode,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub tensors: Vec<TensorData<'static>>,
}

impl Builder {
    pub fn new(mode: Mode) -> Self {
        Builder {
            mode,
            values: vec![],
            nodes: vec![],
            tensors: vec![],
        }
    }
    pub fn value(&mut self, name: &str, shape: &[usize], dtype: DType, scale: f32) -> usize {
        self.values.push(Value {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            scale,
        });
        self.values.len() - 1
    }
    pub fn node(&mut self, name: &str, op: Op, inputs: &[usize], output: usize) {
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.to_vec(),
            output,
        });
    }
    pub fn f32(&mut self, name: &str, shape: &[usize], data: &[f32]) {
        self.raw(name, Dtype::F32, shape, bytemuck::cast_slice(data).to_vec());
    }
    pub fn i8(&mut self, name: &str, shape: &[usize], data: &[i8]) {
        self.raw(name, Dtype::I8, shape, bytemuck::cast_slice(data).to_vec());
    }
    pub fn u8(&mut self, name: &str, shape: &[usize], data: &[u8]) {
        self.raw(name, Dtype::U8, shape, data.to_vec());
    }
    pub fn raw(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) {
        self.tensors.push(TensorData {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: Cow::Owned(data),
        });
    }
    pub fn graph(&self, inputs: &[usize], outputs: &[usize]) -> Graph {
        let mut g = Graph {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            mode: self.mode,
            values: self.values.clone(),
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            nodes: self.nodes.clone(),
            arena_bytes: 0,
            fingerprint: String::new(),
        };
        g.arena_bytes = planner::plan(&g).arena_bytes;
        g
    }
    pub fn finish(&self, inputs: &[usize], outputs: &[usize]) -> Vec<u8> {
        format::write(&self.graph(inputs, outputs), &self.tensors).expect("write")
    }
}
