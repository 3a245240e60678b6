"""Write the example ComfyUI workflows in comfy_nodes/workflows/ (API format and UI format) from one description.

    python scripts/make_comfy_workflows.py

Wan 2.1 T2V 1.3B text-to-video with a dynaccel node (TeaCache, the preset node, SlidingTile) between the model
loader and the sampler, and the stats node after the sampler. Model file names are those of ComfyUI's own Wan 2.1 example (put them in models/diffusion_models,
models/text_encoders and models/vae).
"""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "comfy_nodes" / "workflows"

# node id -> (class_type, [(widget name, value)], [(input name, type, (from id, from slot))], [(output name, type)])
def wan_t2v(accel_type: str, accel_widgets: list) -> dict:
    return {
        1: ("UNETLoader", [("unet_name", "wan2.1_t2v_1.3B_fp16.safetensors"), ("weight_dtype", "default")], [], [("MODEL", "MODEL")]),
        2: (accel_type, accel_widgets, [("model", "MODEL", (1, 0))], [("MODEL", "MODEL")]),
        3: ("CLIPLoader", [("clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), ("type", "wan"), ("device", "default")], [], [("CLIP", "CLIP")]),
        4: ("CLIPTextEncode", [("text", "a red fox running through fresh snow, golden hour")], [("clip", "CLIP", (3, 0))], [("CONDITIONING", "CONDITIONING")]),
        5: ("CLIPTextEncode", [("text", "blurry, static, low quality")], [("clip", "CLIP", (3, 0))], [("CONDITIONING", "CONDITIONING")]),
        6: ("EmptyHunyuanLatentVideo", [("width", 832), ("height", 480), ("length", 33), ("batch_size", 1)], [], [("LATENT", "LATENT")]),
        7: ("KSampler", [("seed", 42), (None, "fixed"), ("steps", 30), ("cfg", 6.0), ("sampler_name", "uni_pc"), ("scheduler", "simple"), ("denoise", 1.0)],
            [("model", "MODEL", (2, 0)), ("positive", "CONDITIONING", (4, 0)), ("negative", "CONDITIONING", (5, 0)), ("latent_image", "LATENT", (6, 0))],
            [("LATENT", "LATENT")]),
        8: ("Dynaccel_Stats", [], [("model", "MODEL", (2, 0)), ("latent", "LATENT", (7, 0))], [("latent", "LATENT"), ("stats", "STRING")]),
        9: ("VAELoader", [("vae_name", "wan_2.1_vae.safetensors")], [], [("VAE", "VAE")]),
        10: ("VAEDecode", [], [("samples", "LATENT", (8, 0)), ("vae", "VAE", (9, 0))], [("IMAGE", "IMAGE")]),
        11: ("SaveAnimatedWEBP", [("filename_prefix", "dynaccel"), ("fps", 16.0), ("lossless", False), ("quality", 90), ("method", "default")],
             [("images", "IMAGE", (10, 0))], []),
    }


def api(nodes: dict) -> dict:
    out = {}
    for nid, (ctype, widgets, inputs, _) in nodes.items():
        values = {k: v for k, v in widgets if k is not None}
        values.update({name: [str(src[0]), src[1]] for name, _, src in inputs})
        out[str(nid)] = {"class_type": ctype, "inputs": values}
    return out


def ui(nodes: dict) -> dict:
    links, out_links = [], {}
    for nid, (_, _, inputs, _) in nodes.items():
        for slot, (_, typ, (src, src_slot)) in enumerate(inputs):
            lid = len(links) + 1
            links.append([lid, src, src_slot, nid, slot, typ])
            out_links.setdefault((src, src_slot), []).append(lid)
    ui_nodes = []
    for order, (nid, (ctype, widgets, inputs, outputs)) in enumerate(nodes.items()):
        in_ids = {(l[3], l[4]): l[0] for l in links}
        ui_nodes.append({
            "id": nid, "type": ctype, "pos": [60 + 330 * (order % 4), 60 + 260 * (order // 4)], "size": [300, 140],
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": in_ids[(nid, i)]} for i, (n, t, _) in enumerate(inputs)],
            "outputs": [{"name": n, "type": t, "links": out_links.get((nid, i), []), "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": ctype},
            "widgets_values": [v for _, v in widgets],
        })
    return {"last_node_id": max(nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


EXAMPLES = {
    # TeaCache with the published Wan2.1-T2V-1.3B coefficients (chosen by the adapter) at its recommended threshold
    "wan21_t2v_teacache": wan_t2v("Dynaccel_teacache", [("threshold", 0.08), ("start", 0.0), ("end", 1.0), ("compute_last", True), ("cfg_sync", True), ("mode", "normal"), ("retention_steps", 5), ("coefficients", "")]),
    # the same through the preset node
    "wan21_t2v_preset": wan_t2v("Dynaccel_Preset", [("preset", "teacache-wan2.1-t2v-1.3b")]),
    # sparse attention: sliding tiles of 1x8x8 tokens (one 64-token kernel block each) on the (9, 30, 52) token grid of
    # 832x480x33, the first 10 of 30 steps dense. An example of the node's use, not a setting measured on the real model
    "wan21_t2v_sliding_tile": wan_t2v("Dynaccel_sliding_tile", [("block_size", 64), ("dense_steps", 10), ("backend", "auto"), ("remainder", "drop"), ("tile_frames", 1), ("tile_height", 8), ("tile_width", 8), ("radius_frames", 3), ("radius_height", 2), ("radius_width", 3)]),
}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, nodes in EXAMPLES.items():
        (OUT / f"{name}.api.json").write_text(json.dumps(api(nodes), indent=1) + "\n")
        (OUT / f"{name}.ui.json").write_text(json.dumps(ui(nodes), indent=1) + "\n")
        print("wrote", name)
