//! Helpers shared by the commands: loading models and data, running
//! batches over threads, progress bars, tables and number formatting.

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shiftnn_converter::ir;
use shiftnn_runtime::{Model, Session};
use std::path::Path;

/// Import an ONNX model into the float IR.
pub fn load_onnx(path: &Path) -> Result<ir::Graph> {
    shiftnn_converter::onnx::load_file(path).map_err(|e| match e {
        e @ shiftnn_converter::onnx::OnnxError::Io { .. } => anyhow!("{e}"),
        e => anyhow!("{}: {e}", path.display()),
    })
}

/// Open (memory-map) a `.shift` model.
pub fn open_model(path: &Path) -> Result<Model<'static>> {
    if !path.exists() {
        bail!("cannot read {}: no such file", path.display());
    }
    Model::open(path).map_err(|e| anyhow!("{}: not a valid .shift model: {e}", path.display()))
}

/// A runtime error as an `anyhow` error.
pub fn rt(e: shiftnn_runtime::Error) -> anyhow::Error {
    anyhow!("{e}")
}

/// Number of threads to use when the user gave none.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A progress bar on stderr (hidden when stderr is not a terminal, or when
/// `quiet`).
pub fn progress(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Split a batch array of shape `(N, ...)` into `N` samples of `per` values
/// each; `what` names the array for errors.
pub fn batch(
    shape: &[usize],
    len: usize,
    per: usize,
    expected_shape: &[usize],
    what: &str,
) -> Result<usize> {
    let n = *shape.first().ok_or_else(|| {
        anyhow!(
            "{what}: a scalar is not a batch; expected shape (N, {})",
            dims(&expected_shape[1.min(expected_shape.len())..])
        )
    })?;
    if n == 0 {
        bail!("{what}: the batch is empty");
    }
    if per == 0 || len != n * per {
        let tail: Vec<usize> = if expected_shape.first() == Some(&1) {
            expected_shape[1..].to_vec()
        } else {
            expected_shape.to_vec()
        };
        bail!(
            "{what}: shape {} does not match the model input {} ({} values per sample); expected (N, {})",
            dims_paren(shape),
            dims_paren(expected_shape),
            per,
            dims(&tail)
        );
    }
    Ok(n)
}

/// `1, 28, 28`.
pub fn dims(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(1, 28, 28)`.
pub fn dims_paren(s: &[usize]) -> String {
    if s.len() == 1 {
        format!("({},)", s[0])
    } else {
        format!("({})", dims(s))
    }
}

/// `[1x16x14x14]`.
pub fn dims_x(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    )
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > bv {
            best = i;
            bv = x;
        }
    }
    best
}

/// Run output 0 of `model` for `n` samples of `x`, splitting the samples
/// over `threads` threads with one session each (or, for one sample, using
/// `threads` inside the session). Results do not depend on `threads`.
pub fn run_batch(
    model: &Model,
    x: &[f32],
    n: usize,
    threads: usize,
    pb: &ProgressBar,
) -> Result<Vec<f32>> {
    let g = model.graph();
    if g.inputs.len() != 1 {
        bail!(
            "the model has {} inputs; only single-input models are supported here",
            g.inputs.len()
        );
    }
    let in_len = model.input_len(0);
    let out_lens: Vec<usize> = (0..g.outputs.len()).map(|i| model.output_len(i)).collect();
    let out_len = out_lens[0];
    if in_len == 0 || out_len == 0 {
        bail!("the model's first input or output is empty");
    }
    let mut y = vec![0f32; n * out_len];
    let threads = threads.max(1);
    let work = |x: &[f32], y: &mut [f32], intra: usize| -> Result<()> {
        let mut s = Session::new(model).map_err(rt)?;
        s.set_threads(intra).map_err(rt)?;
        let mut extra: Vec<Vec<f32>> = out_lens[1..].iter().map(|&l| vec![0f32; l]).collect();
        for (xi, yi) in x.chunks_exact(in_len).zip(y.chunks_exact_mut(out_len)) {
            let mut outs: Vec<&mut [f32]> = Vec::with_capacity(out_lens.len());
            outs.push(yi);
            outs.extend(extra.iter_mut().map(|v| v.as_mut_slice()));
            s.run(&[xi], &mut outs).map_err(rt)?;
            pb.inc(1);
        }
        Ok(())
    };
    if threads == 1 || n == 1 {
        work(x, &mut y, if n == 1 { threads } else { 1 })?;
    } else {
        let per = n.div_ceil(threads);
        std::thread::scope(|sc| -> Result<()> {
            let handles: Vec<_> = x
                .chunks(per * in_len)
                .zip(y.chunks_mut(per * out_len))
                .map(|(xc, yc)| sc.spawn(|| work(xc, yc, 1)))
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow!("a worker thread panicked"))??;
            }
            Ok(())
        })?;
    }
    Ok(y)
}

/// Run the float reference executor on `n` samples over `threads` threads;
/// returns output 0 of each sample, concatenated.
pub fn run_reference(
    g: &ir::Graph,
    x: &[f32],
    n: usize,
    threads: usize,
    pb: &ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    let (name, shape) = g
        .inputs
        .first()
        .ok_or_else(|| anyhow!("the ONNX model has no inputs"))?;
    if g.inputs.len() != 1 {
        bail!(
            "the ONNX model has {} inputs; only single-input models are supported",
            g.inputs.len()
        );
    }
    let per: usize = shape.iter().product();
    if per == 0 || x.len() != n * per {
        bail!(
            "the ONNX model's input \"{name}\" has shape {}, which does not match the data",
            dims_paren(shape)
        );
    }
    let one = |xi: &[f32]| -> Result<Vec<f32>> {
        let mut out = shiftnn_converter::reference::run(g, &[(name.as_str(), xi)])
            .map_err(|e| anyhow!("reference executor: {e}"))?;
        pb.inc(1);
        if out.is_empty() {
            bail!("the ONNX model has no outputs");
        }
        Ok(out.swap_remove(0))
    };
    let threads = threads.clamp(1, n.max(1));
    let chunk = n.div_ceil(threads);
    let results: Vec<Result<Vec<Vec<f32>>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = x
            .chunks(chunk * per)
            .map(|xc| sc.spawn(move || xc.chunks_exact(per).map(one).collect::<Result<Vec<_>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a worker thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

/// SQNR in dB of `x` against `reference` (`None` when identical) and the
/// largest absolute difference.
pub fn sqnr(reference: &[f32], x: &[f32]) -> (Option<f64>, f64) {
    let (mut sig, mut err, mut max) = (0f64, 0f64, 0f64);
    for (&r, &v) in reference.iter().zip(x) {
        let d = (r as f64 - v as f64).abs();
        sig += (r as f64) * (r as f64);
        err += d * d;
        max = max.max(d);
    }
    if err == 0.0 {
        (None, 0.0)
    } else if sig == 0.0 {
        (Some(f64::NEG_INFINITY), max)
    } else {
        (Some(10.0 * (sig / err).log10()), max)
    }
}

/// `12.3` or `exact`.
pub fn fmt_db(db: Option<f64>) -> String {
    match db {
        None => "exact".into(),
        Some(d) if d.is_finite() => format!("{d:.1}"),
        Some(_) => "-inf".into(),
    }
}

/// A float in 4 significant digits, scientific only when very small or large.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        format!("{x:.digits$}")
    } else {
        format!("{x:.3e}")
    }
}

/// `1234 B`, `12.1 KiB`, `3.4 MiB`.
pub fn fmt_bytes(n: usize) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.2} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// `1,234,567`.
pub fn fmt_int(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A plain-text table: columns are left-aligned unless marked numeric.
pub struct Table {
    head: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns: `(title, right_aligned)`.
    pub fn new(cols: &[(&'static str, bool)]) -> Table {
        Table {
            head: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: vec![],
        }
    }
    /// Add one row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    /// Print to stdout.
    pub fn print(&self) {
        let mut w: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                if self.right[i] {
                    s.push_str(&format!("{c:>0$}", w[i]));
                } else if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<0$}", w[i]));
                }
            }
            outln!("{}", s.trim_end());
        };
        line(self.head.clone());
        let total: usize = w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        outln!("{}", "-".repeat(total));
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
    }
}

/// Peak resident set size of this process in bytes (VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Write one line to stdout; a closed pipe ends the process with status 0,
/// any other write error with status 1.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{args}").and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Print a JSON value to stdout.
pub fn print_json(v: &serde_json::Value) -> Result<()> {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding JSON")?
    );
    Ok(())
}
