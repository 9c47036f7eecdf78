//! Float-mode shift conv against an f64 computation with decoded weights:
//! the exponent-add path is exact per term, so the only difference is f32
//! summation, bounded by `k * eps * sum |terms|` (the standard bound for
//! recursive summation, with `eps = 2^-24`).

use proptest::prelude::*;
use shiftnn_kernels::codes::pack;
use shiftnn_kernels::scalar::{conv_shift_f32, Affine};
use shiftnn_kernels::{Bits, Conv2dGeom, PackedRows};

fn geom() -> impl Strategy<Value = Conv2dGeom> {
    (
        1usize..4,
        1usize..5,
        1usize..9,
        1usize..9,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..2,
        1usize..3,
        prop::bool::ANY,
    )
        .prop_map(|(g, cig, h, w, kh, kw, s, p, d, dw)| {
            let groups = if dw { cig * g } else { g };
            let c_in = cig * g;
            let c_out = if dw { c_in } else { g * 3 };
            Conv2dGeom {
                c_in,
                h: h + kh * d,
                w: w + kw * d,
                c_out,
                kh,
                kw,
                stride: [s, 1 + (s % 2)],
                pads: [p, p, 1 - p, p],
                dilation: [d, 1],
                groups: if dw { groups.min(c_in) } else { g },
            }
        })
        .prop_filter("valid", |g| g.validate().is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn fexp_conv_within_summation_bound(g in geom(), b in 2u32..5, seed in any::<u64>()) {
        let bits = Bits::new(b).unwrap();
        let mut s = seed | 1;
        let mut next = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let codes: Vec<u8> = (0..g.c_out * g.k()).map(|_| (next() % (1 << b)) as u8).collect();
        let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
        pack(&codes, bits, g.c_out, g.k(), &mut packed);
        let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
        let x: Vec<f32> = (0..g.in_len()).map(|_| (next() % 20001) as f32 / 1000.0 - 10.0).collect();
        let ep = vec![Affine::IDENTITY; g.c_out];
        let mut out = vec![0f32; g.out_len()];
        conv_shift_f32(&g, &x, &w, 0, &ep, &mut out);
        let eps = f32::EPSILON as f64 / 2.0;
        for oc in 0..g.c_out {
            for oy in 0..g.out_h() {
                for ox in 0..g.out_w() {
                    let (mut exact, mut abs, mut n) = (0f64, 0f64, 0usize);
                    g.for_each_tap(oc, oy, ox, |xi, ki| {
                        let t = x[xi] as f64 * bits.value(codes[oc * g.k() + ki]) as f64;
                        exact += t;
                        abs += t.abs();
                        n += 1;
                    });
                    let got = out[(oc * g.out_h() + oy) * g.out_w() + ox] as f64;
                    let bound = n as f64 * eps * abs + f64::MIN_POSITIVE;
                    prop_assert!((got - exact).abs() <= bound, "oc {} got {} exact {} bound {}", oc, got, exact, bound);
                }
            }
        }
    }
}
