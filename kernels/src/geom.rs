//! Convolution geometry shared by every conv kernel.

/// A 2-D convolution over one CHW image (batch is looped by the caller).
/// Linear layers are the 1x1 case on a 1x1 image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Conv2dGeom {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (y, x).
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Dilation (y, x).
    pub dilation: [usize; 2],
    /// Groups; `c_in` and `c_out` are multiples of it.
    pub groups: usize,
}

/// Why a geometry is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeomError {
    /// A size, stride, dilation or group count is zero.
    Zero,
    /// Channels are not divisible by groups.
    Groups,
    /// The (padded) input is smaller than the dilated kernel.
    KernelTooLarge,
    /// A size overflows `usize`.
    Overflow,
}

impl Conv2dGeom {
    /// A linear layer `k -> n` as a 1x1 convolution on a 1x1 image.
    pub const fn linear(k: usize, n: usize) -> Self {
        Conv2dGeom {
            c_in: k,
            h: 1,
            w: 1,
            c_out: n,
            kh: 1,
            kw: 1,
            stride: [1, 1],
            pads: [0; 4],
            dilation: [1, 1],
            groups: 1,
        }
    }

    /// Check that the geometry is usable and every derived size fits.
    pub fn validate(&self) -> Result<(), GeomError> {
        let all = [
            self.c_in,
            self.h,
            self.w,
            self.c_out,
            self.kh,
            self.kw,
            self.stride[0],
            self.stride[1],
            self.dilation[0],
            self.dilation[1],
            self.groups,
        ];
        if all.contains(&0) {
            return Err(GeomError::Zero);
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return Err(GeomError::Groups);
        }
        let ph = self
            .h
            .checked_add(self.pads[0])
            .and_then(|v| v.checked_add(self.pads[2]));
        let pw = self
            .w
            .checked_add(self.pads[1])
            .and_then(|v| v.checked_add(self.pads[3]));
        let ekh = (self.kh - 1).checked_mul(self.dilation[0]).map(|v| v + 1);
        let ekw = (self.kw - 1).checked_mul(self.dilation[1]).map(|v| v + 1);
        match (ph, pw, ekh, ekw) {
            (Some(ph), Some(pw), Some(ekh), Some(ekw)) => {
                if ekh > ph || ekw > pw {
                    return Err(GeomError::KernelTooLarge);
                }
            }
            _ => return Err(GeomError::Overflow),
        }
        let sizes = [
            self.c_in
                .checked_mul(self.h)
                .and_then(|v| v.checked_mul(self.w)),
            self.c_out
                .checked_mul(self.out_h())
                .and_then(|v| v.checked_mul(self.out_w())),
            self.k().checked_mul(self.c_out),
        ];
        if sizes.iter().any(|s| s.is_none()) {
            return Err(GeomError::Overflow);
        }
        Ok(())
    }

    /// Input channels per group.
    #[inline]
    pub const fn c_in_g(&self) -> usize {
        self.c_in / self.groups
    }
    /// Output channels per group.
    #[inline]
    pub const fn c_out_g(&self) -> usize {
        self.c_out / self.groups
    }
    /// Weights per output channel (`c_in/groups * kh * kw`).
    #[inline]
    pub const fn k(&self) -> usize {
        self.c_in_g() * self.kh * self.kw
    }
    /// Output height.
    #[inline]
    pub const fn out_h(&self) -> usize {
        (self.h + self.pads[0] + self.pads[2] - (self.kh - 1) * self.dilation[0] - 1)
            / self.stride[0]
            + 1
    }
    /// Output width.
    #[inline]
    pub const fn out_w(&self) -> usize {
        (self.w + self.pads[1] + self.pads[3] - (self.kw - 1) * self.dilation[1] - 1)
            / self.stride[1]
            + 1
    }
    /// Elements of one input image.
    #[inline]
    pub const fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
    /// Elements of one output plane.
    #[inline]
    pub const fn out_plane(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Elements of one output image.
    #[inline]
    pub const fn out_len(&self) -> usize {
        self.c_out * self.out_plane()
    }
    /// Multiply-accumulates per image.
    #[inline]
    pub const fn macs(&self) -> usize {
        self.out_len() * self.k()
    }

    /// Call `f(input_index, k_index)` for every in-bounds tap of output
    /// `(oc, oy, ox)`; padded taps are skipped (their input is zero).
    /// `k_index` runs over `(ic_in_group, ky, kx)` in that order, the
    /// weight layout of ONNX (`[c_out, c_in/groups, kh, kw]`).
    #[inline]
    pub fn for_each_tap(&self, oc: usize, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        let g = oc / self.c_out_g();
        let cig = self.c_in_g();
        for ic in 0..cig {
            let c = g * cig + ic;
            for ky in 0..self.kh {
                let iy =
                    (oy * self.stride[0] + ky * self.dilation[0]) as isize - self.pads[0] as isize;
                if iy < 0 || iy >= self.h as isize {
                    continue;
                }
                for kx in 0..self.kw {
                    let ix = (ox * self.stride[1] + kx * self.dilation[1]) as isize
                        - self.pads[1] as isize;
                    if ix < 0 || ix >= self.w as isize {
                        continue;
                    }
                    f(
                        (c * self.h + iy as usize) * self.w + ix as usize,
                        (ic * self.kh + ky) * self.kw + kx,
                    );
                }
            }
        }
    }
}
