"""DenseShift layers (zero-free power-of-two weights) for PyTorch, after Li et al., ICCV 2023.

A b-bit code = 1 sign bit + (b-1) exponent bits; weight  w = s * 2^p,  s in {-1,+1},
p in {0 .. 2^(b-1)-1}  (b=2: +-1,+-2;  b=3: +-1..+-8;  b=4: +-1..+-128). No code means zero.

Sign-scale decomposition (DenseShift):
  * sign   s   = sign(t_s)  (0 maps to +1), one latent tensor t_s;
  * exponent p built recursively from n latent binary tensors t_1..t_n, c_i = (sign(t_i)+1)/2:
        p_1 = c_1,  p_i = (p_{i-1} + 1) * c_i,  p = p_n
    e.g. 3 bits: p = ((c_1 + 1) c_2 + 1) c_3 in {0,1,2,3}. This recursion needs
    n = 2^(b-1) - 1 variables to reach every exponent (b=2: 1, b=3: 3, b=4: 7); it is
    the form of the authors' 3-bit code. encoding="binary" instead uses n = b-1 variables,
    p = sum_i 2^(i-1) c_i (same code set, fewer latents).
  * straight-through estimators for sign() and c_i (identity gradient);
  * forward uses s * 2^p exactly; backward differentiates the smooth surrogate
    s * sqrt(p + 1) instead (value s*2^p, gradient of s*sqrt(p+1));
  * latents initialised N(0, init_std^2), init_std = 1e-3 (low-variance init).
Optional per-output-channel scale (learnable, > 0): w = scale[o] * s * 2^p. Needed where no
BatchNorm follows (e.g. a quantized classifier).

NaiveShiftConv2d / NaiveShiftLinear: the comparison baseline. One float latent weight w,
per-output-channel scale a[o] = max|w[o]| / 2^pmax (not trained), forward
q = a[o] * sign(w) * 2^clamp(round(log2(|w|/a[o])), 0, pmax), identity STE (dq/dw = 1).

Every module exposes export_weight() (float32 tensor whose entries are exactly
scale[o] * s * 2^p) and codes() (int8 tensor: sign in bit 7, p in the low bits; used to
measure how many codes still change late in training).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))

    @staticmethod
    def backward(ctx, g):
        return g


class _Bit01STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return (t >= 0).to(t.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


sign_ste = _SignSTE.apply
bit01_ste = _Bit01STE.apply


def n_exp_vars(bits, encoding):
    if bits < 2:
        raise ValueError("DenseShift needs b >= 2 (1 sign bit + >= 1 exponent bit)")
    return (2 ** (bits - 1) - 1) if encoding == "recursive" else (bits - 1)


def compose_exponent(bits01, encoding):
    """bits01: list of {0,1} tensors (with STE gradients). Returns p (float tensor)."""
    if encoding == "recursive":
        p = bits01[0]
        for c in bits01[1:]:
            p = (p + 1) * c
        return p
    p = torch.zeros_like(bits01[0])
    for i, c in enumerate(bits01):
        p = p + (2 ** i) * c
    return p


class DenseShiftMixin:
    """Shared latent parameters and weight computation (conv and linear)."""

    def _init_shift(self, shape, out_channels, bits, encoding, channel_scale, init_std, scale_init):
        self.bits, self.encoding = bits, encoding
        self.pmax = 2 ** (bits - 1) - 1
        n = n_exp_vars(bits, encoding)
        self.t_sign = nn.Parameter(torch.randn(shape) * init_std)
        self.t_exp = nn.ParameterList([nn.Parameter(torch.randn(shape) * init_std) for _ in range(n)])
        if channel_scale:
            self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(scale_init)))
        else:
            self.register_parameter("log_scale", None)

    def _s_p(self):
        s = sign_ste(self.t_sign)
        p = compose_exponent([bit01_ste(t) for t in self.t_exp], self.encoding)
        return s, p

    def channel_scale(self):
        return None if self.log_scale is None else self.log_scale.exp()

    def shift_weight(self):
        """Training weight: value s*2^p (times scale), gradient of s*sqrt(p+1)."""
        s, p = self._s_p()
        surrogate = s * torch.sqrt(p + 1)
        exact = (s * torch.pow(2.0, p)).detach()
        w = surrogate + (exact - surrogate).detach()
        sc = self.channel_scale()
        if sc is not None:
            w = w * sc.view(-1, *([1] * (w.dim() - 1)))
        return w

    @torch.no_grad()
    def export_weight(self):
        s, p = self._s_p()
        w = (s * torch.pow(2.0, p)).float()
        sc = self.channel_scale()
        if sc is not None:
            w = w * sc.float().view(-1, *([1] * (w.dim() - 1)))  # exact: x * 2^p
        return w

    @torch.no_grad()
    def export_scale(self):
        sc = self.channel_scale()
        return None if sc is None else sc.float().clone()

    @torch.no_grad()
    def codes(self):
        s, p = self._s_p()
        return ((s < 0).to(torch.int16) * 128 + p.to(torch.int16)).to(torch.int16)

    def latent_parameters(self):
        return [self.t_sign, *self.t_exp]


class DenseShiftConv2d(DenseShiftMixin, nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, bias=False, bits=3,
                 encoding="recursive", channel_scale=False, init_std=1e-3):
        super().__init__()
        self.stride, self.padding, self.groups = stride, padding, groups
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, (k, k)
        self._init_shift((cout, cin // groups, k, k), cout, bits, encoding, channel_scale, init_std,
                         scale_init=1.0 / math.sqrt(cin // groups * k * k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.shift_weight(), self.bias, self.stride, self.padding, 1, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, stride={self.stride}, "
                f"bits={self.bits}, encoding={self.encoding}, scale={self.log_scale is not None}")


class DenseShiftLinear(DenseShiftMixin, nn.Module):
    def __init__(self, cin, cout, bias=True, bits=3, encoding="recursive", channel_scale=True,
                 init_std=1e-3):
        super().__init__()
        self.in_features, self.out_features = cin, cout
        # no BatchNorm after a classifier: the per-channel scale is on by default here
        self._init_shift((cout, cin), cout, bits, encoding, channel_scale, init_std,
                         scale_init=1.0 / (math.sqrt(cin) * 2 ** ((2 ** (bits - 1) - 1) / 2)))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x):
        return F.linear(x, self.shift_weight(), self.bias)


class _NaiveMixin:
    def _init_naive(self, bits):
        self.bits = bits
        self.pmax = 2 ** (bits - 1) - 1

    def _quant(self, w):
        dims = tuple(range(1, w.dim()))
        with torch.no_grad():
            a = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / (2.0 ** self.pmax)
            a = torch.pow(2.0, torch.round(torch.log2(a)))  # keep a a power of two: simpler, exact
            p = torch.clamp(torch.round(torch.log2(w.abs().clamp_min(1e-30) / a)), 0, self.pmax)
            s = torch.where(w >= 0, 1.0, -1.0)
        return a, s, p

    def shift_weight(self):
        a, s, p = self._quant(self.weight)
        q = a * s * torch.pow(2.0, p)
        return self.weight + (q - self.weight).detach()  # identity STE

    @torch.no_grad()
    def export_weight(self):
        a, s, p = self._quant(self.weight)
        return (a * s * torch.pow(2.0, p)).float()

    @torch.no_grad()
    def export_scale(self):
        a, _, _ = self._quant(self.weight)
        return a.flatten().float()

    @torch.no_grad()
    def codes(self):
        _, s, p = self._quant(self.weight)
        return ((s < 0).to(torch.int16) * 128 + p.to(torch.int16)).to(torch.int16)

    def latent_parameters(self):
        return [self.weight]


class NaiveShiftConv2d(_NaiveMixin, nn.Conv2d):
    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, bias=False, bits=3):
        nn.Conv2d.__init__(self, cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias)
        self._init_naive(bits)

    def forward(self, x):
        return F.conv2d(x, self.shift_weight(), self.bias, self.stride, self.padding, 1, self.groups)


class NaiveShiftLinear(_NaiveMixin, nn.Linear):
    def __init__(self, cin, cout, bias=True, bits=3):
        nn.Linear.__init__(self, cin, cout, bias=bias)
        self._init_naive(bits)

    def forward(self, x):
        return F.linear(x, self.shift_weight(), self.bias)


SHIFT_TYPES = (DenseShiftMixin, _NaiveMixin)


def shift_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SHIFT_TYPES)]


def factories(bits, naive=False, encoding="recursive", channel_scale=False, init_std=1e-3):
    """(conv, linear) factories with the FmnistResNet factory signatures."""
    if naive:
        return (lambda cin, cout, k, stride=1, padding=0: NaiveShiftConv2d(cin, cout, k, stride, padding, bits=bits),
                lambda cin, cout: NaiveShiftLinear(cin, cout, bits=bits))
    return (lambda cin, cout, k, stride=1, padding=0: DenseShiftConv2d(
                cin, cout, k, stride, padding, bits=bits, encoding=encoding,
                channel_scale=channel_scale, init_std=init_std),
            lambda cin, cout: DenseShiftLinear(cin, cout, bits=bits, encoding=encoding,
                                               channel_scale=True, init_std=init_std))


# ---------------------------------------------------------------------------------------------
# Transfer setting: initialise shift layers from a trained full-precision weight.

@torch.no_grad()
def fit_codes(w, bits, grid=81, lloyd_iters=4):
    """Per output channel, find a > 0, s in {-1,+1}, p in 0..pmax minimising ||w - a*s*2^p||^2.

    Returns (a [C], s, p) with s, p shaped like w. For a fixed a the best code is the nearest
    of the zero-free levels a*{1,2,..,2^pmax} in the linear domain (thresholds at the
    midpoints 1.5*2^(k-1)); a is searched on a log grid from max|w|/2^pmax * 2^-4 to
    max|w|/2^pmax * 2, then refined by a few Lloyd steps (a = <|w|,2^p> / <2^p,2^p>).
    """
    pmax = 2 ** (bits - 1) - 1
    c = w.shape[0]
    wf = w.reshape(c, -1).double()
    aw = wf.abs()
    s = torch.where(wf >= 0, 1.0, -1.0).double()

    def quant(a):  # a: [..., C, 1] -> p
        x = aw / a
        p = torch.zeros_like(x)
        for k in range(1, pmax + 1):
            p = p + (x > 1.5 * 2.0 ** (k - 1)).double()
        return p

    def err(a, p):
        return ((aw - a * torch.pow(2.0, p)) ** 2).sum(-1)

    a0 = aw.amax(1, keepdim=True).clamp_min(1e-12) / 2.0 ** pmax  # [C,1]
    mult = torch.pow(2.0, torch.linspace(-4.0, 1.0, grid, dtype=torch.float64)).view(-1, 1, 1)
    cand = a0.unsqueeze(0) * mult  # [G,C,1]
    pc = quant(cand)
    e = err(cand, pc)  # [G,C]
    best = e.argmin(0)
    a = cand[best, torch.arange(c)]  # [C,1]
    p = quant(a)
    be = err(a, p)
    for _ in range(lloyd_iters):
        l = torch.pow(2.0, p)
        a_new = ((aw * l).sum(1, keepdim=True) / (l * l).sum(1, keepdim=True)).clamp_min(1e-12)
        p_new = quant(a_new)
        e_new = err(a_new, p_new)
        better = (e_new < be).view(-1, 1)
        a = torch.where(better, a_new, a)
        p = torch.where(better, p_new, p)
        be = torch.minimum(e_new, be)
    return a.view(-1).float(), s.view_as(w).float(), p.view_as(w).float()


@torch.no_grad()
def set_codes(m, s, p, magnitude=1e-3, noise=0.1, generator=None):
    """Set a DenseShift module's latents so that it encodes exactly the codes (s, p), with small
    magnitudes: each latent = (needed sign) * magnitude * (1 + noise*|N(0,1)|), i.e. every
    latent sits just on the required side of 0 (the low-variance spirit of the DenseShift init).
    Recursive encoding: c_i = 1 iff i > n - p (the last p bits set, the free ones 0, so that one
    flip moves p to a neighbour); binary encoding: c_i = bit i-1 of p."""
    def lat(sign_pos):
        r = torch.randn(sign_pos.shape, generator=generator).abs()
        mag = magnitude * (1 + noise * r)
        return torch.where(sign_pos, mag, -mag)

    m.t_sign.copy_(lat(s > 0))
    n = len(m.t_exp)
    pi = p.round().long()
    for i, t in enumerate(m.t_exp, start=1):
        if m.encoding == "recursive":
            bit = pi > (n - i)
        else:
            bit = ((pi >> (i - 1)) & 1) == 1
        t.copy_(lat(bit))
    s2, p2 = m._s_p()
    assert torch.equal(s2, s) and torch.equal(p2, p.round()), "latent encoding does not reproduce the codes"
