#!/usr/bin/env python3
"""Train a DenseShift (zero-free power-of-two) Fashion-MNIST model and export it to ONNX.

    nice -n 19 /work/venv/bin/python python/train_denseshift.py --bits 3 --epochs 15
    nice -n 19 /work/venv/bin/python python/train_denseshift.py --bits 3 --epochs 15 --naive-ste
    nice -n 10 /work/venv/bin/python python/train_denseshift.py --bits 3 --epochs 8 --lr 1e-3 \
        --init-from examples/fmnist/fmnist_fp32.onnx --init-mag 1e-2     # transfer setting

Same network as the FP32 example (shiftnn_train.models.FmnistResNet). All inner convolutions
(3x3 and 1x1 shortcuts) are shift layers (shiftnn_train.denseshift); the first conv and the
last linear layer stay full precision unless --quantize-first-last. The ONNX file keeps
BatchNormalization separate and every shift weight is exactly s*2^p (times a per-output-channel
float scale where one is used: --channel-scale, the naive baseline, or a quantized classifier).
The graph's metadata_props["shiftnn.shift_layers"] is JSON: {initializer name: {"bits": b,
"scale": [per-output-channel float32 values] or null}}.

--init-from starts from the trained FP32 network (DenseShift's transfer setting): stem, head and
BatchNorms are copied, each shift layer's codes are the per-output-channel least-squares fit
s*2^p of the FP32 weights (the scale goes into the following BatchNorm's statistics), encoded in
latents of magnitude --init-mag, and the BatchNorm statistics are re-estimated on training images.

Each run appends a JSON line to python/results/runs.jsonl and re-renders python/RESULTS.md.
"""
import argparse
import os

# Busy-waiting OpenMP threads collapse under CPU contention (measured 6.3 s/step vs 0.06 s/step
# with 2 threads on 2 cores shared with compilers); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import json
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shiftnn_train.common import (REPO, Timer, load_fmnist, load_onnx_weights, train_epoch,  # noqa: E402
                                  evaluate_torch, evaluate_onnx)
from shiftnn_train.models import FmnistResNet, export_onnx, default_conv, default_linear  # noqa: E402
from shiftnn_train import denseshift as ds  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "python", "results")


def build(args):
    conv, linear = ds.factories(args.bits, naive=args.naive_ste, encoding=args.encoding,
                                channel_scale=args.channel_scale, init_std=args.init_std)
    first = conv if args.quantize_first_last else default_conv
    last = linear if args.quantize_first_last else default_linear
    return FmnistResNet(conv=conv, stem_conv=first, head_linear=last)


@torch.no_grad()
def following_bn(model, name):
    """The BatchNorm2d that directly follows shift conv `name` in FmnistResNet (conv1->bn1,
    conv2->bn2, shortcut.0->shortcut.1, stem.0->stem.1), or None."""
    mods = dict(model.named_modules())
    parent, _, leaf = name.rpartition(".")
    cand = {"conv1": "bn1", "conv2": "bn2", "0": "1"}.get(leaf)
    if cand is None:
        return None
    bn = mods.get(f"{parent}.{cand}" if parent else cand)
    return bn if isinstance(bn, torch.nn.BatchNorm2d) else None


@torch.no_grad()
def init_from_float(model, path, magnitude, seed=0):
    """DenseShift transfer setting: start from a trained FP32 FmnistResNet (ONNX).

    Stem, head, every BatchNorm (parameters and running statistics) are copied. Each shift layer
    gets, per output channel c, the scale a_c and codes (s, p) minimising ||w_c - a_c s 2^p||
    (ds.fit_codes), encoded in latents of size ~magnitude (ds.set_codes). The shift layer then
    computes about (FP32 conv output) / a_c, so the following BatchNorm's running mean and
    variance are divided by a_c and a_c^2 (batch statistics in train mode are invariant to it);
    with a per-channel scale (--channel-scale, or a shift classifier) a_c goes there instead.
    Returns {layer: relative weight error ||w - a q|| / ||w||}."""
    fp = load_onnx_weights(FmnistResNet(), path)
    fsd = fp.state_dict()
    shift = dict(ds.shift_modules(model))
    sd = model.state_dict()
    n_copied = 0
    for k in sd:
        mod = k.rsplit(".", 1)[0]
        if mod in shift or any(k.startswith(m + ".") for m in shift):
            continue
        sd[k] = fsd[k].clone()
        n_copied += 1
    model.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(seed)
    rel = {}
    for name, m in shift.items():
        w = fsd[name + ".weight"].float()
        if isinstance(m, ds._NaiveMixin):
            m.weight.copy_(w)
            rel[name] = float((m.export_weight() - w).norm() / w.norm())
            continue
        a, s, p = ds.fit_codes(w, m.bits)
        ds.set_codes(m, s, p, magnitude=magnitude, generator=g)
        av = a.view(-1, *([1] * (w.dim() - 1)))
        rel[name] = float((w - av * s * torch.pow(2.0, p)).norm() / w.norm())
        if m.log_scale is not None:
            m.log_scale.copy_(a.log())
        else:
            bn = following_bn(model, name)
            assert bn is not None, f"{name}: no per-channel scale and no BatchNorm after it"
            bn.running_mean.div_(a)
            bn.running_var.div_(a * a)
    print(f"init from {path}: {n_copied} float tensors copied; shift layers' relative weight error "
          + ", ".join(f"{k} {v:.3f}" for k, v in rel.items()))
    return rel


@torch.no_grad()
def reestimate_bn(model, x, n=10240, batch=256):
    """Replace every BatchNorm's running statistics by their average over the first n training
    images (no augmentation, train-mode forward passes, no parameter update)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i in range(0, min(n, x.shape[0]), batch):
        model(x[i:i + batch].contiguous(memory_format=torch.channels_last))
    for m, mom in zip(bns, saved):
        m.momentum = mom


@torch.no_grad()
def to_plain(model):
    """FP32 FmnistResNet carrying the exact exported shift weights (for ONNX export)."""
    plain = FmnistResNet()
    shift = dict(ds.shift_modules(model))
    sd = {}
    for k, v in model.state_dict().items():
        mod = k.rsplit(".", 1)[0]
        if mod in shift or any(k.startswith(m + ".t_") or k.startswith(m + ".log_scale") for m in shift):
            continue
        sd[k] = v
    meta = {}
    for name, m in shift.items():
        sd[name + ".weight"] = m.export_weight()
        if getattr(m, "bias", None) is not None:
            sd[name + ".bias"] = m.bias.detach().clone()
        sc = m.export_scale()
        meta[name + ".weight"] = {"bits": m.bits,
                                  "scale": None if sc is None else [float(x) for x in sc.numpy()]}
    plain.load_state_dict(sd, strict=True)
    return plain, meta


def verify_onnx_shift_weights(path, meta):
    """Check every shift weight in the ONNX file is exactly scale[o] * (+-2^p), p in range."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    hist = {}
    for name, info in meta.items():
        w = inits[name].astype(np.float32)
        pmax = 2 ** (info["bits"] - 1) - 1
        sc = np.ones(w.shape[0], np.float32) if info["scale"] is None else np.array(info["scale"], np.float32)
        r = w / sc.reshape(-1, *([1] * (w.ndim - 1)))
        a = np.abs(r)
        p = np.log2(a)
        ok = (a > 0) & (p == np.round(p)) & (p >= 0) & (p <= pmax)
        assert ok.all(), f"{name}: {np.size(ok) - ok.sum()} weights are not s*2^p"
        assert np.array_equal(r.astype(np.float32) * sc.reshape(-1, *([1] * (w.ndim - 1))), w), name
        for v, c in zip(*np.unique(np.sign(r) * (2 ** np.round(p)), return_counts=True)):
            hist[int(v)] = hist.get(int(v), 0) + int(c)
    m.metadata_props.add(key="shiftnn.shift_layers", value=json.dumps(meta))
    onnx.save(m, path)
    return dict(sorted(hist.items()))


class CodeTracker:
    """Tracks which shift-weight codes change at any step of the current epoch."""

    def __init__(self, model):
        self.mods = [m for _, m in ds.shift_modules(model)]
        self.total = sum(m.codes().numel() for m in self.mods)
        self.start_epoch()

    def start_epoch(self):
        self.prev = [m.codes() for m in self.mods]
        self.start = [c.clone() for c in self.prev]
        self.changed = [torch.zeros_like(c, dtype=torch.bool) for c in self.prev]

    def step(self):
        for i, m in enumerate(self.mods):
            c = m.codes()
            self.changed[i] |= c != self.prev[i]
            self.prev[i] = c

    def shares(self):
        any_change = sum(int(c.sum()) for c in self.changed) / self.total
        net = sum(int((p != s).sum()) for p, s in zip(self.prev, self.start)) / self.total
        return any_change, net


def render_results(path_md):
    runs = []
    p = os.path.join(RESULTS_DIR, "runs.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    # failed / interrupted runs stay in runs.jsonl but have no table row
    runs = [r for r in runs if r.get("status", "ok") == "ok"]
    head = open(os.path.join(RESULTS_DIR, "header.md")).read() if os.path.exists(
        os.path.join(RESULTS_DIR, "header.md")) else "# DenseShift results\n\n"
    lines = [head.rstrip() + "\n", "",
             "| run | bits | method | epochs | ORT top-1 | torch top-1 | train time | codes changed in last epoch (any step / net) | ONNX |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r['tag']} | {r['bits']} | {r['method']} | {r['epochs']} | {100 * r['ort_top1']:.2f}% | "
            f"{100 * r['torch_top1']:.2f}% | {r['train_time_s'] / 60:.1f} min | "
            f"{100 * r['last_epoch_changed_any']:.2f}% / {100 * r['last_epoch_changed_net']:.2f}% | "
            f"`{os.path.relpath(r['onnx'], REPO)}` |")
    lines.append("")
    lines.append("Per-run details (code histograms, per-epoch share of changing codes, full flags) are in "
                 "`python/results/runs.jsonl`.")
    notes = os.path.join(RESULTS_DIR, "notes.md")
    if os.path.exists(notes):
        lines += ["", open(notes).read().rstrip()]
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=3, choices=[2, 3, 4])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--naive-ste", action="store_true", help="naive round-to-power-of-two STE baseline")
    ap.add_argument("--encoding", default="recursive", choices=["recursive", "binary"])
    ap.add_argument("--channel-scale", action="store_true", help="learnable per-channel scale in shift convs")
    ap.add_argument("--quantize-first-last", action="store_true")
    ap.add_argument("--init-std", type=float, default=1e-3)
    ap.add_argument("--init-from", default=None,
                    help="trained FP32 FmnistResNet ONNX (e.g. examples/fmnist/fmnist_fp32.onnx): copy its "
                         "stem, head and BatchNorms, set the shift codes to its per-channel best fit")
    ap.add_argument("--init-mag", type=float, default=None,
                    help="with --init-from: latent magnitude encoding the fitted codes (default --init-std)")
    ap.add_argument("--no-bn-reestimate", action="store_true",
                    help="with --init-from: keep the rescaled FP32 BN statistics (default: re-estimate them "
                         "on 10240 training images before training)")
    ap.add_argument("--pct-start", type=float, default=0.2, help="one-cycle warm-up share")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam(W) peak LR, one-cycle schedule")
    ap.add_argument("--wd", type=float, default=1e-4, help="weight decay on full-precision weights only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", default=None,
                    help="FP32 FmnistResNet ONNX (e.g. examples/fmnist/fmnist_fp32.onnx) for logit distillation")
    ap.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the distillation term")
    ap.add_argument("--kd-temp", type=float, default=4.0, help="distillation temperature")
    ap.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=None, help="ONNX path (default: examples/fmnist/fmnist_denseshift_b3.onnx "
                                                "for the default 3-bit run, python/results/fmnist_TAG.onnx otherwise)")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    try:
        run(args)
    except BaseException as e:  # record failed / interrupted runs too, then re-raise
        if not args.no_record:
            os.makedirs(RESULTS_DIR, exist_ok=True)
            with open(os.path.join(RESULTS_DIR, "runs.jsonl"), "a") as f:
                f.write(json.dumps({"status": "failed", "error": repr(e), "elapsed_s": time.time() - t0,
                                    "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
        raise


def run(args):
    method = "naive-STE" if args.naive_ste else f"DenseShift ({args.encoding})"
    if args.channel_scale and not args.naive_ste:
        method += " + channel scale"
    if args.init_from:
        method += ", init from FP32"
    if args.teacher:
        method += f" + KD (a={args.kd_alpha}, T={args.kd_temp})"
    tag = args.tag or (f"b{args.bits}-" + ("naive" if args.naive_ste else "denseshift")
                       + ("-scale" if args.channel_scale else "") + ("-binenc" if args.encoding == "binary" else "") + ("-ft" if args.init_from else "")
                       + ("-kd" if args.teacher else ""))
    if args.out is None:
        default_variant = args.bits == 3 and not args.naive_ste and not args.channel_scale \
            and args.encoding == "recursive" and not args.quantize_first_last \
            and not args.init_from and not args.teacher
        args.out = (os.path.join(REPO, f"examples/fmnist/fmnist_denseshift_b{args.bits}.onnx") if default_variant
                    else os.path.join(RESULTS_DIR, f"fmnist_{tag}.onnx"))

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    trx, try_, tex, tey = load_fmnist(args.src)
    model = build(args).to(memory_format=torch.channels_last)
    print(model)
    init = None
    if args.init_from:
        rel = init_from_float(model, args.init_from, args.init_std if args.init_mag is None else args.init_mag,
                              seed=args.seed)
        init = {"rel_weight_error": rel, "top1_rescaled_bn": evaluate_torch(model, tex, tey)}
        if not args.no_bn_reestimate:
            reestimate_bn(model, trx)
        init["top1"] = evaluate_torch(model, tex, tey)
        init_codes = [m.codes() for _, m in ds.shift_modules(model)]
        print(f"after init from FP32, before training: torch top-1 {init['top1_rescaled_bn']:.4f} with the FP32 "
              f"BN statistics divided by a_c, {init['top1']:.4f} after BN re-estimation", flush=True)
    teacher = None
    if args.teacher:
        teacher = load_onnx_weights(FmnistResNet(), args.teacher).eval().to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        print(f"teacher {args.teacher}: torch top-1 {evaluate_torch(teacher, tex, tey):.4f}")

    latent = {id(p) for _, m in ds.shift_modules(model) for p in m.latent_parameters()}
    decay = [p for n, p in model.named_parameters() if id(p) not in latent and p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if id(p) not in latent and p.dim() <= 1]
    lat = [p for n, p in model.named_parameters() if id(p) in latent]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0},
                             {"params": lat, "weight_decay": 0.0}], lr=args.lr)
    steps = args.epochs * ((trx.shape[0] + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=args.pct_start)

    tracker = CodeTracker(model)
    print(f"{tag}: {tracker.total} shift weights in {len(tracker.mods)} layers")
    timer = Timer()
    per_epoch = []
    for ep in range(args.epochs):
        tracker.start_epoch()
        loss, acc = train_epoch(model, opt, sched, trx, try_, args.batch, after_step=tracker.step,
                                teacher=teacher, kd_alpha=args.kd_alpha, kd_temp=args.kd_temp)
        any_c, net_c = tracker.shares()
        tacc = evaluate_torch(model, tex, tey)
        per_epoch.append({"epoch": ep + 1, "loss": loss, "train": acc, "test": tacc,
                          "changed_any": any_c, "changed_net": net_c, "t": timer()})
        print(f"epoch {ep + 1}/{args.epochs} loss {loss:.4f} train {acc:.4f} test {tacc:.4f} "
              f"codes changed: {100 * any_c:.2f}% any-step, {100 * net_c:.2f}% net [{timer():.0f}s]", flush=True)
    train_time = timer()
    torch_acc = evaluate_torch(model, tex, tey)
    if init is not None:
        fin = [m.codes() for _, m in ds.shift_modules(model)]
        init["codes_changed_since_init"] = sum(int((a != b).sum()) for a, b in zip(fin, init_codes)) / tracker.total
        print(f"codes different from the FP32 fit at the end: {100 * init['codes_changed_since_init']:.2f}%")

    model = model.to(memory_format=torch.contiguous_format).eval()
    plain, meta = to_plain(model)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    ops = export_onnx(plain, args.out)
    assert "BatchNormalization" in ops
    hist = verify_onnx_shift_weights(args.out, meta)
    ort_acc = evaluate_onnx(args.out, tex, tey)
    print(f"{tag}: ORT top-1 {ort_acc:.4f} (torch {torch_acc:.4f}); train {train_time:.0f}s; "
          f"last epoch codes changed {100 * per_epoch[-1]['changed_any']:.2f}% (net "
          f"{100 * per_epoch[-1]['changed_net']:.2f}%); code histogram {hist}; {args.out} "
          f"{os.path.getsize(args.out)} bytes")

    if not args.no_record:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        rec = {"status": "ok", "tag": tag, "bits": args.bits, "method": method, "epochs": args.epochs,
               "ort_top1": ort_acc, "torch_top1": torch_acc, "train_time_s": train_time,
               "last_epoch_changed_any": per_epoch[-1]["changed_any"],
               "last_epoch_changed_net": per_epoch[-1]["changed_net"],
               "n_shift_weights": tracker.total, "code_histogram": hist, "onnx": args.out,
               "per_epoch": per_epoch, "init": init, "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M")}
        with open(os.path.join(RESULTS_DIR, "runs.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        render_results(os.path.join(REPO, "python", "RESULTS.md"))


if __name__ == "__main__":
    main()
