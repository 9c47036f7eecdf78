#!/usr/bin/env python3
"""shiftnn against ONNX Runtime, ncnn and tract on the same models, same run.

Steps (see README.md):
  1. make the ONNX models (make_models.py) if they are missing;
  2. convert each with `shiftnn convert` (4-bit, int8 and float modes,
     calibration on random inputs), quantize it with ONNX Runtime (static
     QDQ: uint8 activations, per-channel int8 weights; dynamic int8 for the
     linear models) and convert it to ncnn with pnnx;
  3. per model, for R rounds: every engine at every thread count runs a
     block of timed iterations, in an order rotated each round, so machine
     load drifting over the run hits all engines alike. An engine's figure
     is the median over rounds of its per-round median latency;
  4. print a markdown table of medians (ms), ratios to ORT int8 and ORT
     fp32 at the same thread count, MACs and MAC/cycle.

Every failure (a conversion shiftnn rejects, pnnx failing on a model) is
recorded with its command and error and shown in the table, never hidden.
This is a manual benchmark: nothing here runs in CI.
"""

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODELS = ["resnet18", "resnet20", "mobilenetv2", "linear_b1", "linear_b64", "mlp4_b1"]
LINEAR = {"linear_b1", "linear_b64", "mlp4_b1"}
# shiftnn families forced per mode; None is the default per-layer choice.
INT8_FAMILIES = [None, "dot", "shift", "lut"]
FLOAT_FAMILIES = [None, "fexp"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run_cmd(cmd, timeout=None):
    """Run a command; return (ok, stdout, stderr)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "", f"timed out after {timeout} s"
    except OSError as e:
        return False, "", str(e)
    return p.returncode == 0, p.stdout, p.stderr


def first_line(ex):
    """An exception's message without the backtrace some bindings append."""
    return (str(ex).strip().splitlines() or [""])[0][:400]


def tail(s, n=6):
    lines = [ln for ln in s.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def cpu_info():
    """Model name and clock (GHz) from /proc/cpuinfo (highest `cpu MHz`)."""
    name, mhz = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                k, _, v = ln.partition(":")
                k = k.strip()
                if k == "model name":
                    name = v.strip()
                elif k == "cpu MHz":
                    mhz.append(float(v))
    except OSError:
        pass
    return name, (max(mhz) / 1e3 if mhz else None)


# A chain of dependent adds runs at one add per cycle: timed, it gives the
# clock a busy core actually runs at. /proc/cpuinfo gives the nominal one
# (2.6 GHz on the Zen4 VM these figures were first taken on, which runs at
# 3.6 GHz under load), which made every MAC/cycle figure 1.4x too high.
CLOCK_C = r"""
#include <stdio.h>
#include <stdint.h>
#include <time.h>
int main(void) {
    const uint64_t n = 1000000000ull;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        struct timespec a, b;
        uint64_t x = 0;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (uint64_t i = 0; i < n / 10; i++)
            __asm__ volatile(
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                : "+r"(x));
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
        if (s < best) best = s;
    }
    /* Ten dependent adds per iteration, one cycle each; the loop's own
       counter runs beside them. */
    printf("%.4f\n", n / best / 1e9);
    return 0;
}
"""


def measured_ghz():
    """The clock under load, from a timed chain of dependent adds compiled
    with the system C compiler (x86-64 only); None where that fails."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "clock.c"), os.path.join(d, "clock")
        with open(src, "w") as f:
            f.write(CLOCK_C)
        ok, _, _ = run_cmd(["cc", "-O1", "-o", exe, src])
        if not ok:
            return None
        ok, so, _ = run_cmd([exe])
        try:
            return float(so.strip()) if ok else None
        except ValueError:
            return None


# ---------------------------------------------------------------------------
# MAC counts from the ONNX graph.


def count_macs(model_path):
    """Multiply-accumulates of Conv, MatMul and Gemm nodes (batch included)."""
    m = onnx.shape_inference.infer_shapes(onnx.load(model_path, load_external_data=False))
    g = m.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    macs = 0
    for n in g.node:
        if n.op_type == "Conv":
            w, y = shapes[n.input[1]], shapes[n.output[0]]
            macs += int(np.prod(y)) * int(np.prod(w[1:]))
        elif n.op_type in ("MatMul", "Gemm"):
            a, y = shapes[n.input[0]], shapes[n.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if trans_a else a[-1]
            macs += int(np.prod(y)) * k
    return macs


# ---------------------------------------------------------------------------
# Preparation: calibration data, conversions.


def input_shape(model_path):
    m = onnx.load(model_path, load_external_data=False)
    return [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]


def calib_samples(shape, n, seed):
    """n random model inputs, N(0, 1) like make_models.py's trace (ImageNet-normalized scale)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def shiftnn_calib(samples, shape):
    """The (N, ...) array `shiftnn convert --calib` expects: a batch of model inputs.

    A model whose batch is 1 takes (N, C, H, W) / (N, K); a batch-B model
    takes (N, B, K).
    """
    arr = np.stack(samples)
    if shape[0] == 1:
        arr = arr.reshape((len(samples),) + tuple(shape[1:]))
    return arr


def convert_shiftnn(a, name, onnx_path, calib_npy, mode, out):
    # Written beside and renamed, so an interrupted run leaves no partial file to reuse.
    part = out[: -len(".shift")] + ".partial.shift"
    cmd = [a.shiftnn, "convert", onnx_path, "-o", part, "--bits", str(a.bits), "--mode", mode]
    if mode == "int8":
        cmd += ["--calib", calib_npy]
    if not a.keep_default:
        cmd += ["--no-keep"]
    cmd += ["--json"]
    if os.path.exists(out) and not a.reconvert:
        return {"ok": True, "cmd": shlex.join(cmd), "cached": True}
    log(f"  shiftnn convert {name} ({mode})")
    t0 = time.perf_counter()
    ok, so, se = run_cmd(cmd)
    secs = round(time.perf_counter() - t0, 1)
    if ok:
        os.replace(part, out)
    return {"ok": ok, "cmd": shlex.join(cmd), "seconds": secs, "error": None if ok else tail(se or so)}


def ort_quantize(name, onnx_path, samples, out_static, out_dynamic, reconvert):
    """ORT static QDQ (uint8 activations, per-channel int8 weights) and dynamic int8."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    res = {}
    pre = out_static.replace(".onnx", ".pre.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    if not os.path.exists(out_static) or reconvert:
        log(f"  ORT quantize_static {name}")
        try:
            quant_pre_process(onnx_path, pre, skip_symbolic_shape=True)
            quantize_static(
                pre,
                out_static,
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
            res["static"] = {"ok": True}
        except Exception as e:  # report, don't stop the run
            res["static"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    else:
        res["static"] = {"ok": True, "cached": True}
    if name in LINEAR:
        if not os.path.exists(out_dynamic) or reconvert:
            log(f"  ORT quantize_dynamic {name}")
            try:
                quantize_dynamic(onnx_path, out_dynamic, weight_type=QuantType.QInt8, per_channel=True)
                res["dynamic"] = {"ok": True}
            except Exception as e:
                res["dynamic"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        else:
            res["dynamic"] = {"ok": True, "cached": True}
    return res


def pnnx_binary():
    """The pnnx executable inside the PyPI wheel (the wheel's Python wrapper imports torch; the binary does not need it)."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(list(spec.submodule_search_locations)[0], "pnnx")
    return p if os.access(p, os.X_OK) else None


def convert_ncnn(name, onnx_path, shape, work, reconvert):
    param, binf = os.path.join(work, name + ".ncnn.param"), os.path.join(work, name + ".ncnn.bin")
    exe = pnnx_binary()
    if exe is None:
        return {"ok": False, "error": "pnnx not installed (pip install pnnx)"}
    cmd = [
        exe,
        onnx_path,
        "inputshape=[" + ",".join(map(str, shape)) + "]",
        "pnnxparam=" + os.path.join(work, name + ".pnnx.param"),
        "pnnxbin=" + os.path.join(work, name + ".pnnx.bin"),
        "pnnxpy=" + os.path.join(work, name + "_pnnx.py"),
        "pnnxonnx=" + os.path.join(work, name + ".pnnx.onnx"),
        "ncnnparam=" + param,
        "ncnnbin=" + binf,
        "ncnnpy=" + os.path.join(work, name + "_ncnn.py"),
        "fp16=0",
    ]
    if os.path.exists(param) and os.path.exists(binf) and not reconvert:
        return {"ok": True, "cmd": shlex.join(cmd), "param": param, "bin": binf, "cached": True}
    log(f"  pnnx {name}")
    t0 = time.perf_counter()
    ok, so, se = run_cmd(cmd, timeout=1800)
    secs = round(time.perf_counter() - t0, 1)
    ok = ok and os.path.exists(param) and os.path.exists(binf)
    return {"ok": ok, "cmd": shlex.join(cmd), "param": param, "bin": binf, "seconds": secs, "error": None if ok else tail(se + so)}


# ---------------------------------------------------------------------------
# Engines. Each has .setup() (load, warm up) and .block(iters) -> list of ms.


class ShiftnnEngine:
    """`shiftnn bench --json`, one process per block (the model is mmapped, loading is cheap)."""

    def __init__(self, a, path, threads, family):
        self.a, self.path, self.threads, self.family = a, path, threads, family
        self.kernels, self.last_ms, self.min_ms = None, None, None

    def setup(self):
        self.block(1, warmup=1)

    def block(self, iters, warmup=None):
        # A slow engine (seconds per inference) gets one warm-up, not --warmup.
        warmup = min(self.a.warmup, iters) if warmup is None else warmup
        cmd = [self.a.shiftnn, "bench", self.path, "--threads", str(self.threads)]
        cmd += ["--iters", str(iters), "--warmup", str(warmup), "--profile-iters", "1", "--json"]
        if self.family:
            cmd += ["--kernel", self.family]
        ok, so, se = run_cmd(cmd, timeout=3600)
        if not ok:
            raise RuntimeError(f"{shlex.join(cmd)}: {tail(se or so)}")
        r = json.loads(so)
        weighted = [ly for ly in r["layers"] if ly["macs"] > 0]
        self.kernels = sorted({ly["kernel"] for ly in weighted})
        self.macs = r["macs"]
        self.cmd = shlex.join(cmd)
        # `bench` reports percentiles, not samples: the block contributes its p50.
        self.last_ms = r["p50_ms"]
        self.min_ms = min(self.min_ms or r["min_ms"], r["min_ms"])
        return [r["p50_ms"]]


class PyEngine:
    """An in-process engine: `run()` is one inference; `to_np` turns its result into the output array."""

    def __init__(self, make, to_np):
        self.make, self.to_np, self.run, self.output = make, to_np, None, None
        self.last_ms, self.min_ms = None, None

    def setup(self):
        self.run = self.make()
        # Kept to check the conversion against ORT fp32: a fast wrong answer is no result.
        self.output = np.asarray(self.to_np(self.run()), np.float32)
        self.block(2)

    def block(self, iters):
        out = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.run()
            out.append((time.perf_counter() - t0) * 1e3)
        self.last_ms = statistics.median(out)
        self.min_ms = min([self.min_ms or out[0]] + out)
        return [self.last_ms]


def block_iters(e, a):
    """Iterations of one block: about --block-seconds of work, between 1 and --iters."""
    if not e.last_ms:
        return a.iters
    return max(1, min(a.iters, int(a.block_seconds * 1e3 / e.last_ms)))


def ort_engine(path, x, threads):
    def make():
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        return lambda: s.run(None, feed)

    return PyEngine(make, lambda r: r[0])


def ncnn_engine(param, binf, x, threads):
    def make():
        import ncnn

        net = ncnn.Net()
        net.opt.num_threads = threads
        net.opt.use_vulkan_compute = False
        net.opt.use_fp16_packed = False
        net.opt.use_fp16_storage = False
        net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
        if net.load_param(param) != 0 or net.load_model(binf) != 0:
            raise RuntimeError(f"ncnn could not load {param}")
        # ncnn's Mat drops the batch axis; pnnx names blobs in0/out0.
        mat = ncnn.Mat(np.ascontiguousarray(x.reshape(x.shape[1:]) if x.shape[0] == 1 else x))

        def run():
            ex = net.create_extractor()  # threads come from net.opt
            ex.input("in0", mat)
            ret, out = ex.extract("out0")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            return out

        run.net = net  # keep alive
        return run

    return PyEngine(make, np.array)


def tract_engine(path, x):
    def make():
        import tract

        m = tract.onnx().load(path)
        m.set_input_fact(0, ",".join(map(str, x.shape)) + ",f32")
        r = m.into_model().into_runnable()
        return lambda: r.run([x])

    return PyEngine(make, lambda r: r[0].to_numpy())


# ---------------------------------------------------------------------------


def rel_err(y, ref):
    """||y - ref|| / ||ref||, or a note when the shapes differ."""
    if y is None or ref is None:
        return None
    y = np.asarray(y, np.float64).reshape(-1)
    ref = np.asarray(ref, np.float64).reshape(-1)
    if y.size != ref.size:
        return f"output has {y.size} values, ORT fp32 {ref.size}"
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def shiftnn_output(a, path, x, work):
    """One `shiftnn run` on the benchmark input, for the accuracy check."""
    xi, yo = os.path.join(work, "check.x.npy"), os.path.join(work, "check.y.npy")
    # `shiftnn run` takes a batch of model inputs: (N, ...) for a batch-1
    # model, (N, B, ...) for a batch-B one.
    np.save(xi, x if x.shape[0] == 1 else x[None])
    ok, so, se = run_cmd([a.shiftnn, "run", path, "--input", xi, "--output", yo])
    if not ok:
        return f"shiftnn run failed: {tail(se or so, 2)}"
    return np.load(yo)


def fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.2f}")


def fmt_ratio(v, base):
    return "-" if (v is None or base is None) else f"{v / base:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model (default 5)")
    ap.add_argument("--iters", type=int, default=20, help="most timed iterations per engine per round (default 20)")
    ap.add_argument(
        "--block-seconds",
        type=float,
        default=1.0,
        help="target time of one engine's block per round; fewer than --iters iterations when slower (default 1)",
    )
    ap.add_argument("--warmup", type=int, default=3, help="shiftnn bench warm-up iterations per round")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument(
        "--keep-default",
        action="store_true",
        help="convert with shiftnn's default --keep (first conv and last layer int8) instead of --no-keep",
    )
    ap.add_argument("--shiftnn", default=None, help="path of the shiftnn binary (default: $CARGO_TARGET_DIR or target/, release)")
    ap.add_argument("--models-dir", default=os.path.join(HERE, "models"))
    ap.add_argument("--work", default=os.path.join(HERE, "out"), help="converted models and results")
    ap.add_argument(
        "--ghz",
        type=float,
        default=None,
        help="clock for MAC/cycle (default: measured with a chain of dependent adds, else /proc/cpuinfo)",
    )
    ap.add_argument("--skip", default="", help="comma-separated engines to skip: ncnn,tract,ort,shiftnn")
    ap.add_argument("--reconvert", action="store_true", help="redo conversions even if outputs exist")
    ap.add_argument("--calib-n", type=int, default=8, help="random calibration samples")
    a = ap.parse_args()

    names = [n for n in a.models.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad:
        sys.exit(f"unknown model(s) {bad}; known: {','.join(MODELS)}")
    threads = [int(t) for t in a.threads.split(",") if t]
    skip = {s for s in a.skip.split(",") if s}
    if a.shiftnn is None:
        tdir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        a.shiftnn = os.path.join(tdir, "release", "shiftnn")
    if "shiftnn" not in skip and not os.access(a.shiftnn, os.X_OK):
        sys.exit(f"{a.shiftnn}: not found; build it with `cargo build --release -p shiftnn-converter` or pass --shiftnn")
    cpu, ghz_proc = cpu_info()
    ghz, ghz_src = a.ghz, "--ghz"
    if not ghz:
        ghz, ghz_src = measured_ghz(), "measured under load"
    if not ghz:
        ghz, ghz_src = ghz_proc, "/proc/cpuinfo"
    os.makedirs(a.work, exist_ok=True)

    missing = [n for n in names if not os.path.exists(os.path.join(a.models_dir, n + ".onnx"))]
    if missing:
        log(f"making models {missing}")
        ok, so, se = run_cmd([sys.executable, os.path.join(HERE, "make_models.py"), "--out", a.models_dir, "--only", ",".join(missing)])
        if not ok:
            sys.exit("make_models.py failed: " + tail(se or so))

    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "ghz": ghz, "ghz_source": ghz_src, "args": vars(a), "models": {}}
    for name in names:
        onnx_path = os.path.join(a.models_dir, name + ".onnx")
        shape = input_shape(onnx_path)
        macs = count_macs(onnx_path)
        log(f"== {name} {shape}, {macs / 1e6:.1f} M MACs")
        samples = calib_samples(shape, a.calib_n, 1)
        x = calib_samples(shape, 1, 2)[0]
        calib_npy = os.path.join(a.work, name + ".calib.npy")
        np.save(calib_npy, shiftnn_calib(samples, shape))
        mres = {"shape": shape, "macs": macs, "prep": {}, "rows": []}
        ref = None
        if "ort" not in skip:
            e = ort_engine(onnx_path, x, 1)
            e.setup()
            ref = e.output
            del e
        shift_out = {}
        results["models"][name] = mres

        # name -> (engine factory per thread count, note); None factory: failed to prepare.
        engines = {}
        if "shiftnn" not in skip:
            for mode, fams in (("int8", INT8_FAMILIES), ("float", FLOAT_FAMILIES)):
                out = os.path.join(a.work, f"{name}.b{a.bits}.{mode}.shift")
                c = convert_shiftnn(a, name, onnx_path, calib_npy, mode, out)
                mres["prep"][f"shiftnn {mode}"] = c
                if c["ok"]:
                    shift_out[mode] = shiftnn_output(a, out, x, a.work)
                for fam in fams:
                    label = f"shiftnn {mode} {fam or 'default'}"
                    engines[label] = (lambda t, out=out, fam=fam: ShiftnnEngine(a, out, t, fam)) if c["ok"] else None
        if "ort" not in skip:
            engines["ORT fp32"] = lambda t: ort_engine(onnx_path, x, t)
            st = os.path.join(a.work, name + ".ort.qdq.onnx")
            dy = os.path.join(a.work, name + ".ort.dyn.onnx")
            q = ort_quantize(name, onnx_path, samples, st, dy, a.reconvert)
            mres["prep"].update({f"ORT {k}": v for k, v in q.items()})
            engines["ORT int8"] = (lambda t: ort_engine(st, x, t)) if q["static"]["ok"] else None
            if "dynamic" in q:
                engines["ORT dyn int8"] = (lambda t: ort_engine(dy, x, t)) if q["dynamic"]["ok"] else None
        if "ncnn" not in skip:
            c = convert_ncnn(name, onnx_path, shape, a.work, a.reconvert)
            mres["prep"]["ncnn"] = c
            engines["ncnn fp32"] = (lambda t: ncnn_engine(c["param"], c["bin"], x, t)) if c["ok"] else None
        if "tract" not in skip:
            # The Python bindings expose no thread setting: tract runs single-threaded.
            engines["tract fp32"] = lambda t: tract_engine(onnx_path, x) if t == 1 else None

        # Instantiate (load + warm up) every engine x thread count.
        inst = {}
        for label, make in engines.items():
            for t in threads:
                key = (label, t)
                if make is None:
                    inst[key] = "conversion failed"
                    continue
                e = make(t)
                if e is None:
                    inst[key] = "n/a"
                    continue
                try:
                    e.setup()
                    inst[key] = e
                except Exception as ex:
                    inst[key] = f"load failed: {type(ex).__name__}: {first_line(ex)}"
        live = [k for k, v in inst.items() if not isinstance(v, str)]
        samples_ms = {k: [] for k in live}
        for r in range(a.rounds):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            log(f"  round {r + 1}/{a.rounds}")
            for k in order:
                e = inst[k]
                if isinstance(e, str):
                    continue
                try:
                    samples_ms[k] += e.block(block_iters(e, a))
                except Exception as ex:
                    inst[k] = f"run failed: {first_line(ex)}"
        for (label, t), e in inst.items():
            row = {"engine": label, "threads": t}
            if isinstance(e, str):
                row["status"] = e
            else:
                y = e.output if isinstance(e, PyEngine) else shift_out.get(label.split()[1])
                err = y if isinstance(y, str) else rel_err(y, ref)
                if err is not None:
                    row["rel_err"] = err
                row["median_ms"] = statistics.median(samples_ms[(label, t)])
                row["rounds_ms"] = samples_ms[(label, t)]
                row["min_ms"] = e.min_ms
                if isinstance(e, ShiftnnEngine):
                    row["kernels"] = e.kernels
                    row["shiftnn_macs"] = e.macs
                    row["cmd"] = e.cmd
            mres["rows"].append(row)
        # Release the sessions before the next model (the MLP's are large).
        inst.clear()

    path = os.path.join(a.work, "results-" + time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(report(results, a))
    log(f"results: {path}")


def summary(res):
    """One row per model and thread count: the peers and shiftnn's best per kind of kernel."""
    lines = [
        "## Summary (median ms; ratios at the same thread count)",
        "",
        "| model | thr | ORT int8 | ORT fp32 | ncnn fp32 | tract fp32 | shiftnn best int8 | vs ORT int8 "
        "| best mult-free int8 (shift/lut) | vs ORT fp32 | fexp | vs ORT fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    speedups = []
    for name, m in res["models"].items():
        by = {(r["engine"], r["threads"]): r.get("median_ms") for r in m["rows"]}
        kern = {(r["engine"], r["threads"]): r.get("kernels") or [] for r in m["rows"]}
        best_by_t = {}
        for t in sorted({r["threads"] for r in m["rows"]}):

            def best(fams, t=t):
                c = [(by[(f"shiftnn int8 {f}", t)], f) for f in fams if by.get((f"shiftnn int8 {f}", t))]
                # A forced family that fell back to another kernel is not that family.
                # Kernel names end with their family: avx512/shift, avx512/gemm-shift, neon/dot.
                fam = lambda k: k.rsplit("/", 1)[-1].rsplit("-", 1)[-1]
                c = [(v, f) for v, f in c if f == "default" or any(fam(k) == f for k in kern[(f"shiftnn int8 {f}", t)])]
                return min(c) if c else (None, None)

            bi, bf = best(["default", "dot", "shift", "lut"])
            mi, mf = best(["shift", "lut"])
            fx = by.get(("shiftnn float fexp", t))
            oi, of = by.get(("ORT int8", t)), by.get(("ORT fp32", t))
            best_by_t[t] = bi
            lines.append(
                f"| {name} | {t} | {fmt_ms(oi)} | {fmt_ms(of)} | {fmt_ms(by.get(('ncnn fp32', t)))} | "
                f"{fmt_ms(by.get(('tract fp32', t)))} | {fmt_ms(bi)}{f' ({bf})' if bf else ''} | {fmt_ratio(bi, oi)} | "
                f"{fmt_ms(mi)}{f' ({mf})' if mf else ''} | {fmt_ratio(mi, of)} | {fmt_ms(fx)} | {fmt_ratio(fx, of)} |"
            )
        if best_by_t.get(1) and best_by_t.get(2):
            o1, o2 = by.get(("ORT int8", 1)), by.get(("ORT int8", 2))
            ort = f", ORT int8 {o1 / o2:.2f}x" if (o1 and o2) else ""
            speedups.append(f"- {name}: 1 -> 2 threads, shiftnn best int8 {best_by_t[1] / best_by_t[2]:.2f}x{ort}")
    return lines + [""] + speedups + [""]


def report(res, a):
    ghz = res["ghz"]
    lines = [
        f"# shiftnn vs peers, {res['date']}",
        "",
        (
            f"CPU: {res['cpu']}, clock used for MAC/cycle: {ghz:.3f} GHz ({res.get('ghz_source', '?')})"
            if ghz
            else f"CPU: {res['cpu']}, clock unknown"
        ),
        f"Median over {a.rounds} interleaved rounds of the per-round median of up to {a.iters} iterations "
        f"(about {a.block_seconds} s per engine per round); "
        f"shiftnn {a.bits}-bit, {'default --keep' if a.keep_default else '--no-keep'}. "
        "MAC/cycle (of the median) is the whole machine's (all threads), MACs counted from the ONNX graph; "
        "min ms is the fastest single iteration (shiftnn: fastest of the bench runs), a hint of the unloaded speed. "
        "err: ||y - y_ORT_fp32|| / ||y_ORT_fp32|| on the benchmark input (shiftnn: one `shiftnn run`, default kernels).",
        "",
    ]
    lines += summary(res)
    for name, m in res["models"].items():
        lines += [f"## {name} {m['shape']}, {m['macs'] / 1e6:.1f} M MACs", ""]
        lines += [
            "| engine | threads | median ms | min ms | MAC/cycle | vs ORT int8 | vs ORT fp32 | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = {}
        for r in m["rows"]:
            if r["engine"] in ("ORT int8", "ORT fp32") and "median_ms" in r:
                base[(r["engine"], r["threads"])] = r["median_ms"]
        for r in sorted(m["rows"], key=lambda r: (r["threads"],)):
            t = r["threads"]
            v = r.get("median_ms")
            mpc = f"{m['macs'] / (v * 1e-3) / (ghz * 1e9):.1f}" if (v and ghz) else "-"
            notes = [r["status"]] if "status" in r else []
            if "kernels" in r:
                notes.append(", ".join(r["kernels"]))
            err = r.get("rel_err")
            if err is not None:
                notes.append(f"err {err:.1e}" if isinstance(err, float) else str(err))
            note = "; ".join(notes)
            lines.append(
                f"| {r['engine']} | {t} | {fmt_ms(v)} | {fmt_ms(r.get('min_ms'))} | {mpc} | {fmt_ratio(v, base.get(('ORT int8', t)))} | "
                f"{fmt_ratio(v, base.get(('ORT fp32', t)))} | {note} |"
            )
        fails = [(k, p) for k, p in m["prep"].items() if not p.get("ok")]
        if fails:
            lines.append("")
            for k, p in fails:
                lines.append(f"- {k} failed: `{p.get('cmd', '')}`: {p.get('error')}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
