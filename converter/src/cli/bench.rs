//! `shiftnn bench`: latency percentiles, memory and a per-layer profile.

use super::common::{self, fmt_bytes, fmt_int, Table};
use super::inspect::{layer_weights, mode_name};
use super::kernels::kernel_name;
use anyhow::{bail, Result};
use serde_json::json;
use shiftnn_runtime::Session;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `shiftnn bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .shift model.
    pub model: PathBuf,
    /// Threads used inside each inference (conv and linear layers).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// With --threads above 1: let the workers sleep between layers
    /// instead of spinning through each inference (less CPU time, slower
    /// layers where waking a thread is slow).
    #[arg(long)]
    pub no_spin: bool,
    /// Timed iterations.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Iterations of the separate profiled pass (per-layer times);
    /// default: min(iters, 50).
    #[arg(long, value_name = "N")]
    pub profile_iters: Option<u64>,
    /// Seed of the random input.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Print results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Kernel choice: --kernel, --isa, --fp16.
    #[command(flatten)]
    pub kernels: super::kernels::KernelArgs,
}

/// Uniform values in [-1, 1) from a seeded xorshift generator.
fn random_input(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run `shiftnn bench`.
pub fn main(a: Args) -> Result<()> {
    a.kernels.apply()?;
    let m = common::open_model(&a.model)?;
    let g = m.graph();
    if g.inputs.len() != 1 {
        bail!(
            "{}: the model has {} inputs; `bench` supports single-input models",
            a.model.display(),
            g.inputs.len()
        );
    }
    let x = random_input(m.input_len(0), a.seed);
    let mut outs: Vec<Vec<f32>> = (0..g.outputs.len())
        .map(|i| vec![0f32; m.output_len(i)])
        .collect();
    let mut s = Session::new(&m).map_err(common::rt)?;
    s.set_threads(a.threads.max(1)).map_err(common::rt)?;
    s.set_spinning(!a.no_spin);

    for _ in 0..a.warmup {
        let mut o: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        s.run(&[&x], &mut o).map_err(common::rt)?;
    }
    let mut lat = Vec::with_capacity(a.iters as usize);
    for _ in 0..a.iters {
        let mut o: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        let t0 = Instant::now();
        s.run(&[&x], &mut o).map_err(common::rt)?;
        lat.push(ms(t0.elapsed()));
    }
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p90, p99) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
    );
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);

    // Profiled pass: the observer runs right after each node, so the time
    // between consecutive calls is that node's time.
    let nn = g.nodes.len();
    let piters = a.profile_iters.unwrap_or(a.iters.min(50)).max(1) as usize;
    let mut per_node: Vec<Vec<f64>> = vec![Vec::with_capacity(piters); nn];
    let mut stamps: Vec<Option<Instant>> = vec![None; nn];
    for _ in 0..piters {
        stamps.iter_mut().for_each(|t| *t = None);
        let mut o: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut obs = |i: usize, _v: shiftnn_runtime::ValueView<'_>| {
            if let Some(t) = stamps.get_mut(i) {
                *t = Some(Instant::now());
            }
        };
        let t0 = Instant::now();
        s.run_observed(&[&x], &mut o, Some(&mut obs))
            .map_err(common::rt)?;
        let mut prev = t0;
        for (i, t) in stamps.iter().enumerate() {
            if let Some(t) = *t {
                per_node[i].push(t.saturating_duration_since(prev).as_secs_f64() * 1e6);
                prev = t;
            }
        }
    }
    let med: Vec<f64> = per_node.iter_mut().map(|v| median(v)).collect();
    let sum_us: f64 = med.iter().sum();
    let peak = common::peak_rss_bytes();

    let mut layers = Vec::new();
    let mut t = Table::new(&[
        ("layer", false),
        ("op", false),
        ("kernel", false),
        ("MACs", true),
        ("median µs", true),
        ("share", true),
    ]);
    let mut total_macs = 0usize;
    for (i, n) in g.nodes.iter().enumerate() {
        let macs = layer_weights(&m, i).map_or(0, |w| w.4);
        total_macs += macs;
        let share = if sum_us > 0.0 {
            med[i] / sum_us * 100.0
        } else {
            0.0
        };
        let kernel = kernel_name(&m, i);
        t.row(vec![
            n.name.clone(),
            n.op.name().into(),
            kernel.clone(),
            if macs > 0 { fmt_int(macs) } else { "-".into() },
            format!("{:.1}", med[i]),
            format!("{share:.1}%"),
        ]);
        layers.push(json!({
            "name": n.name,
            "op": n.op.name(),
            "kernel": kernel,
            "macs": macs,
            "median_us": round3(med[i]),
            "share_pct": round3(share),
        }));
    }
    if a.json {
        return common::print_json(&json!({
            "model": a.model.display().to_string(),
            "mode": mode_name(g.mode),
            "threads": a.threads.max(1),
            "spinning": a.threads > 1 && !a.no_spin,
            "iters": a.iters,
            "warmup": a.warmup,
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "mean_ms": mean,
            "min_ms": min,
            "max_ms": max,
            "throughput_per_s": if mean > 0.0 { 1e3 / mean } else { 0.0 },
            "macs": total_macs,
            "peak_rss_bytes": peak,
            "arena_bytes": m.arena_bytes(),
            "decoded_bytes": m.decoded_bytes(),
            "file_bytes": m.bytes().len(),
            "profile_iters": piters,
            "layers": layers,
        }));
    }
    outln!(
        "model:      {} ({} mode, {} thread{})",
        a.model.display(),
        mode_name(g.mode),
        a.threads.max(1),
        if a.threads > 1 { "s" } else { "" }
    );
    outln!("iterations: {} timed after {} warm-up", a.iters, a.warmup);
    outln!("latency:    p50 {p50:.3} ms   p90 {p90:.3} ms   p99 {p99:.3} ms   mean {mean:.3} ms   (min {min:.3}, max {max:.3})");
    if mean > 0.0 {
        outln!(
            "throughput: {:.1} inferences/s, {:.2} GMAC/s",
            1e3 / mean,
            total_macs as f64 / (mean * 1e-3) / 1e9
        );
    }
    outln!(
        "peak RSS:   {}",
        peak.map_or("unknown".into(), |b| fmt_bytes(b as usize))
    );
    outln!("arena:      {}", fmt_bytes(m.arena_bytes()));
    if m.decoded_bytes() > 0 {
        outln!(
            "decoded:    {} (codes repacked at load for the GEMM kernels)",
            fmt_bytes(m.decoded_bytes())
        );
    }
    outln!();
    outln!("per-layer profile (median of {piters} profiled runs, {sum_us:.1} µs total):");
    t.print();
    Ok(())
}
