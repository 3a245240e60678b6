"""Published TeaCache rescaling polynomials (numpy.poly1d order, highest power first).

Source: ali-vilab/TeaCache (TeaCache4FLUX/teacache_flux.py, TeaCache4HunyuanVideo/teacache_sample_video.py,
TeaCache4LTX-Video/teacache_ltx.py, TeaCache4Mochi/teacache_mochi.py, TeaCache4Wan2.1/teacache_generate.py,
TeaCache4CogVideoX1.5/teacache_sample_video.py) and welltop-cn/ComfyUI-TeaCache nodes.py (flux-kontext), as
collected in ../shared/reference/teacache-coefficients.md. Recommended thresholds are from the TeaCache README
(speedups measured there on A800 / H100, not by us).

Keys are profile names answered by the model adapters (``ModelAdapter.teacache_profile``); Wan profiles have a
``normal`` and a ``retention`` set.
"""

from __future__ import annotations

COEFFICIENTS: dict[str, dict[str, list[float]]] = {
    "flux": {"normal": [4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01]},
    "flux-kontext": {"normal": [-1.04655119e03, 3.12563399e02, -1.69500694e01, 4.10995971e-01, 3.74537863e-02]},
    "hunyuanvideo": {"normal": [7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02]},
    "ltx-video": {"normal": [2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03]},
    "mochi": {"normal": [-3.51241319e03, 8.11675948e02, -6.09400215e01, 2.42429681e00, 3.05291719e-03]},
    "wan2.1-t2v-1.3b": {
        "normal": [2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01],
        "retention": [-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02],
    },
    "wan2.1-t2v-14b": {
        "normal": [-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404],
        "retention": [-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01],
    },
    "wan2.1-i2v-480p": {
        "normal": [-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01],
        "retention": [2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01],
    },
    "wan2.1-i2v-720p": {
        "normal": [-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683],
        "retention": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
    },
    "cogvideox-2b": {"normal": [-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03]},
    "cogvideox-5b": {"normal": [-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02]},
    "cogvideox1.5-5b": {"normal": [2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02]},
    "cogvideox1.5-i2v": {"normal": [1.22842302e02, -1.04088754e02, 2.62981677e01, -3.06009921e-01, 3.71213220e-02]},
}

#: Fallback for models without published coefficients: the identity polynomial, i.e. the raw relative L1
#: change is accumulated. Thresholds then mean "sum of relative changes"; tune them per model (or fit
#: coefficients with `dynaccel calibrate` once available).
IDENTITY = [0.0, 0.0, 0.0, 1.0, 0.0]

#: Recommended thresholds and the speedups the TeaCache README reports for them (their hardware, not ours).
RECOMMENDED: dict[str, tuple[float, str]] = {
    "flux": (0.4, "1.8x on A800 (TeaCache README); 0.25 -> 1.5x, 0.6 -> 2.0x, 0.8 -> 2.25x"),
    "wan2.1-t2v-1.3b": (0.08, "2.0x on A800 (TeaCache README)"),
    "wan2.1-t2v-14b": (0.2, "2.0x on A800 (TeaCache README)"),
    "wan2.1-i2v-480p": (0.26, "2.45x on A800 (TeaCache README)"),
    "hunyuanvideo": (0.15, "2.2x on A800 (TeaCache README); 0.1 -> 1.6x"),
    "ltx-video": (0.05, "2.0x on A800 (TeaCache README)"),
    "mochi": (0.09, "2.1x on A800 (TeaCache README)"),
    "cogvideox1.5-5b": (0.3, "2.3x on H100 (TeaCache README)"),
}


def lookup(profile: str | None, mode: str) -> tuple[list[float], str]:
    """Coefficients for ``profile`` in ``mode`` and where they come from ('published:<profile>' or 'fallback')."""
    if profile is not None and profile in COEFFICIENTS:
        sets = COEFFICIENTS[profile]
        if mode in sets:
            return sets[mode], f"published:{profile}:{mode}"
    return IDENTITY, "fallback:identity"
