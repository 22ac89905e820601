//! RegNet's design space (Radosavovic et al.), as timm's `generate_regnet` and
//! `adjust_widths_groups_comp` turn a model's four numbers into its stages: block `j` gets the
//! continuous width `w0 + wa·j`, quantized to `w0·wm^round(log_wm(·/w0))` rounded to a multiple
//! of 8; equal widths make a stage; each stage's width is then rounded to a multiple of its
//! group width. timm computes in float32 (torch tensors), and so does this, operation for
//! operation, so that every rounding lands where timm's does.

/// One stage: output width, blocks, and the channels per group of its 3×3.
pub type Stage = (usize, usize, usize);

/// timm's `generate_regnet(wa, w0, wm, depth, group_size)` then `adjust_widths_groups_comp`
/// with a bottleneck ratio of 1: the stages, or `None` when they are not four (timm asserts).
pub fn stages(w0: usize, wa: f64, wm: f64, depth: usize, group_size: usize) -> Option<[Stage; 4]> {
    const QUANT: f32 = 8.0;
    // torch: arange(depth, float32) * wa + w0, the Python floats taken as float32.
    let (w0f, waf, wmf) = (w0 as f32, wa as f32, wm as f32);
    let log_wm = wm.ln() as f32;
    let mut widths: Vec<usize> = (0..depth)
        .map(|j| {
            let cont = j as f32 * waf + w0f;
            let exp = ((cont / w0f).ln() / log_wm).round_ties_even();
            ((w0f * wmf.powf(exp)) / QUANT).round_ties_even() as usize * QUANT as usize
        })
        .collect();
    let mut out: Vec<Stage> = Vec::new();
    // torch.unique (sorted) with counts.
    widths.sort_unstable();
    for w in widths {
        match out.last_mut() {
            Some(last) if last.0 == w => last.1 += 1,
            _ => out.push((w, 1, group_size)),
        }
    }
    // adjust_widths_groups_comp: the group width at most the stage's, the stage width a
    // multiple of it (`int(round(w / g) * g)`).
    for stage in &mut out {
        let g = stage.2.min(stage.0);
        let w = ((stage.0 as f64 / g as f64).round_ties_even() * g as f64) as usize;
        *stage = (w, stage.1, g);
    }
    out.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_regnety_has_timms_stages() {
        // timm 1.0.31: RegNet._get_stage_args(model_cfgs[name]): (out_chs, depth, group_size).
        let timm: [(&str, [Stage; 4]); 11] = [
            (
                "regnety_002",
                [(24, 1, 8), (56, 1, 8), (152, 4, 8), (368, 7, 8)],
            ),
            (
                "regnety_004",
                [(48, 1, 8), (104, 3, 8), (208, 6, 8), (440, 6, 8)],
            ),
            (
                "regnety_006",
                [(48, 1, 16), (112, 3, 16), (256, 7, 16), (608, 4, 16)],
            ),
            (
                "regnety_008",
                [(64, 1, 16), (128, 3, 16), (320, 8, 16), (768, 2, 16)],
            ),
            (
                "regnety_016",
                [(48, 2, 24), (120, 6, 24), (336, 17, 24), (888, 2, 24)],
            ),
            (
                "regnety_032",
                [(72, 2, 24), (216, 5, 24), (576, 13, 24), (1512, 1, 24)],
            ),
            (
                "regnety_040",
                [(128, 2, 64), (192, 6, 64), (512, 12, 64), (1088, 2, 64)],
            ),
            (
                "regnety_064",
                [(144, 2, 72), (288, 7, 72), (576, 14, 72), (1296, 2, 72)],
            ),
            (
                "regnety_080",
                [(168, 2, 56), (448, 4, 56), (896, 10, 56), (2016, 1, 56)],
            ),
            (
                "regnety_120",
                [(224, 2, 112), (448, 5, 112), (896, 11, 112), (2240, 1, 112)],
            ),
            (
                "regnety_160",
                [
                    (224, 2, 112),
                    (448, 4, 112),
                    (1232, 11, 112),
                    (3024, 1, 112),
                ],
            ),
        ];
        for (name, want) in timm {
            let (w0, wa, wm, group, depth) = super::super::design(name).expect(name);
            assert_eq!(stages(w0, wa, wm, depth, group), Some(want), "{name}");
        }
    }
}
