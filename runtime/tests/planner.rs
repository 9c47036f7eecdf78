//! The memory planner on random DAGs: values alive at the same time never
//! share bytes, offsets are aligned, and the arena is no larger than the sum
//! of all values (and no smaller than the largest live set).

mod common;
use common::{Builder, Rng};
use shiftnn_runtime::graph::{Act, DType, Mode, Op};
use shiftnn_runtime::planner::{plan, ALIGN};

#[test]
fn live_values_never_overlap() {
    let mut rng = Rng(77);
    for case in 0..300 {
        let mut b = Builder::new(Mode::Float);
        let n_nodes = 1 + rng.below(25) as usize;
        let x = b.value("x", &[1 + rng.below(500) as usize], DType::F32, 0.0);
        let mut avail = vec![x];
        for i in 0..n_nodes {
            let a = avail[rng.below(avail.len() as u64) as usize];
            let len = b.values[a].shape[0];
            let kind = rng.below(3);
            if kind == 0 && avail.len() > 1 {
                // Add needs equal shapes: make a same-size partner first.
                let y = b.value(&format!("v{i}"), &[len], DType::F32, 0.0);
                b.node(&format!("n{i}"), Op::Add { act: Act::None }, &[a, a], y);
                avail.push(y);
            } else if kind == 1 {
                let y = b.value(&format!("v{i}"), &[len], DType::F32, 0.0);
                b.node(&format!("n{i}"), Op::Reshape, &[a], y);
                avail.push(y);
            } else {
                let y = b.value(
                    &format!("v{i}"),
                    &[1 + rng.below(500) as usize],
                    DType::F32,
                    0.0,
                );
                // Shape changes are irrelevant to the planner; use Act.
                b.node(&format!("n{i}"), Op::Act { act: Act::Relu }, &[a], y);
                avail.push(y);
            }
        }
        let out = *avail.last().unwrap();
        let g = b.graph(&[x], &[out]);
        let p = plan(&g);
        // Lifetimes computed independently; a Reshape output extends its
        // input's storage, so compare storage roots.
        let nv = g.values.len();
        let mut root: Vec<usize> = (0..nv).collect();
        for n in &g.nodes {
            if matches!(n.op, Op::Reshape) {
                root[n.output] = root[n.inputs[0]];
            }
        }
        let mut first = vec![usize::MAX; nv];
        let mut last = vec![0; nv];
        let mut mark = |v: usize, t: usize| {
            let r = root[v];
            first[r] = first[r].min(t);
            last[r] = last[r].max(t);
        };
        mark(x, 0);
        for (t, n) in g.nodes.iter().enumerate() {
            for &i in &n.inputs {
                mark(i, t + 1);
            }
            mark(n.output, t + 1);
        }
        mark(out, g.nodes.len() + 1);
        let size = |v: usize| {
            (0..nv)
                .filter(|&u| root[u] == v)
                .map(|u| g.values[u].numel() * 4)
                .max()
                .unwrap_or(0)
        };
        let roots: Vec<usize> = (0..nv)
            .filter(|&v| root[v] == v && first[v] != usize::MAX)
            .collect();
        let mut total = 0;
        for &a in &roots {
            assert_eq!(p.offsets[a] % ALIGN, 0);
            assert!(p.offsets[a] + size(a) <= p.arena_bytes, "case {case}");
            total += size(a).next_multiple_of(ALIGN);
            for &c in &roots {
                if a < c && first[a] <= last[c] && first[c] <= last[a] {
                    let (sa, sc) = (p.offsets[a], p.offsets[c]);
                    assert!(
                        sa + size(a) <= sc || sc + size(c) <= sa,
                        "case {case}: values {a} and {c} overlap"
                    );
                }
            }
        }
        assert!(p.arena_bytes <= total, "case {case}");
        // Aliases share their root's offset.
        for (v, &r) in root.iter().enumerate() {
            assert_eq!(p.offsets[v], p.offsets[r]);
        }
    }
}
