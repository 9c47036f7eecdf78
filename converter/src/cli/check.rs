//! `shiftnn check`: which ONNX nodes the converter supports.

use super::common::Table;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::PathBuf;

/// Arguments of `shiftnn check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ONNX model to check.
    pub input: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `shiftnn check`.
pub fn main(a: Args) -> Result<()> {
    let bytes =
        std::fs::read(&a.input).with_context(|| format!("cannot read {}", a.input.display()))?;
    let r = shiftnn_converter::onnx::check(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    let bad = r.unsupported().count();
    if a.json {
        let nodes: Vec<_> = r
            .nodes
            .iter()
            .map(|n| json!({"name": n.name, "op_type": n.op_type, "supported": n.supported, "reason": n.reason}))
            .collect();
        super::common::print_json(&json!({
            "input": a.input.display().to_string(),
            "opset": r.opset,
            "ir_version": r.ir_version,
            "producer": r.producer,
            "nodes": nodes,
            "graph_errors": r.graph_errors,
            "unsupported": bad,
            "ok": r.is_ok(),
        }))?;
    } else {
        outln!(
            "{}: opset {}, IR version {}, producer {:?}, {} nodes",
            a.input.display(),
            r.opset,
            r.ir_version,
            r.producer,
            r.nodes.len()
        );
        outln!();
        let mut t = Table::new(&[
            ("node", false),
            ("op", false),
            ("status", false),
            ("reason", false),
        ]);
        for n in &r.nodes {
            t.row(vec![
                n.name.clone(),
                n.op_type.clone(),
                if n.supported { "ok" } else { "UNSUPPORTED" }.into(),
                n.reason.clone().unwrap_or_default(),
            ]);
        }
        t.print();
        for e in &r.graph_errors {
            outln!("graph: {e}");
        }
        outln!();
        if r.is_ok() {
            outln!("all {} nodes supported", r.nodes.len());
        }
    }
    if !r.is_ok() {
        let mut what = Vec::new();
        if bad > 0 {
            what.push(format!("{bad} of {} nodes unsupported", r.nodes.len()));
        }
        if !r.graph_errors.is_empty() {
            what.push(format!("{} graph-level problems", r.graph_errors.len()));
        }
        bail!("{}: {}", a.input.display(), what.join(", "));
    }
    Ok(())
}
