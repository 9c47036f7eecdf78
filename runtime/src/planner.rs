//! The memory planner: one arena for every activation, sized exactly.
//!
//! Each value lives from the node that writes it to the last node that
//! reads it (graph inputs from the start, graph outputs to the end). A
//! `Reshape` output shares its input's storage, so the two form one
//! lifetime. Storage blocks are placed largest first, each at the lowest
//! [`ALIGN`]-aligned offset that does not overlap a block alive at the same
//! time (greedy by size, the strategy TFLite Micro's planner also uses).
//! The result is deterministic, so the converter records the arena size in
//! the file and the runtime checks it at load.

use crate::graph::{Graph, Op};
use alloc::{vec, vec::Vec};

/// Alignment of every activation in the arena (a cache line, and enough
/// for any SIMD load).
pub const ALIGN: usize = 64;

/// Offsets of every value in the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Byte offset of each value, by value id.
    pub offsets: Vec<usize>,
    /// Total arena bytes.
    pub arena_bytes: usize,
}

/// Plan `graph`. The graph must already be validated (ids in range, nodes
/// in topological order).
pub fn plan(graph: &Graph) -> Plan {
    let nv = graph.values.len();
    // Storage root of each value (Reshape aliases its input).
    let mut root: Vec<usize> = (0..nv).collect();
    for node in &graph.nodes {
        if matches!(node.op, Op::Reshape) {
            root[node.output] = root[node.inputs[0]];
        }
    }
    let end = graph.nodes.len() + 1;
    let mut first = vec![usize::MAX; nv];
    let mut last = vec![0usize; nv];
    let mut bytes = vec![0usize; nv];
    let touch = |v: usize, t: usize, first: &mut Vec<usize>, last: &mut Vec<usize>| {
        let r = root[v];
        first[r] = first[r].min(t);
        last[r] = last[r].max(t);
    };
    for &i in &graph.inputs {
        touch(i, 0, &mut first, &mut last);
    }
    for (t, node) in graph.nodes.iter().enumerate() {
        for &i in &node.inputs {
            touch(i, t + 1, &mut first, &mut last);
        }
        touch(node.output, t + 1, &mut first, &mut last);
    }
    for &o in &graph.outputs {
        touch(o, end, &mut first, &mut last);
    }
    for (v, val) in graph.values.iter().enumerate() {
        let r = root[v];
        bytes[r] = bytes[r].max(val.numel() * val.dtype.size());
    }
    let mut order: Vec<usize> = (0..nv)
        .filter(|&v| root[v] == v && first[v] != usize::MAX)
        .collect();
    // Largest first; ties by id for determinism.
    order.sort_by(|&a, &b| bytes[b].cmp(&bytes[a]).then(a.cmp(&b)));
    let mut offsets = vec![0usize; nv];
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (offset, size, first, last)
    let mut arena = 0usize;
    for v in order {
        let size = bytes[v].next_multiple_of(ALIGN);
        let mut live: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.2 <= last[v] && first[v] <= p.3)
            .map(|p| (p.0, p.0 + p.1))
            .collect();
        live.sort_unstable();
        let mut off = 0;
        for (s, e) in live {
            if off + size <= s {
                break;
            }
            off = off.max(e);
        }
        placed.push((off, size, first[v], last[v]));
        offsets[v] = off;
        arena = arena.max(off + size);
    }
    for v in 0..nv {
        offsets[v] = offsets[root[v]];
    }
    Plan {
        offsets,
        arena_bytes: arena,
    }
}
