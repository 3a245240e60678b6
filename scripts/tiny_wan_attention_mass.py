"""How concentrated is tiny-wan's self-attention? The share of attention mass an oracle keeps with the top 25, 50
and 75% of key blocks per query block, over all layers, heads and steps of one dense generation (the outputs are
unchanged: the probe returns dense attention). Blocks are ``block`` consecutive tokens in tile-major order of
``tile`` (frames x height x width) tiles; several (block, tile) layouts are measured in the same generation.

    python scripts/tiny_wan_attention_mass.py                       # 16-token 1x4x4 tiles (the first measurement)
    python scripts/tiny_wan_attention_mass.py 16:1x4x4 16:1x2x8 8:1x2x4 8:1x4x2 8:2x2x2 8:1x1x8
"""
import sys

import torch, dynaccel, dynaccel.zoo
from diffusers import WanPipeline
from dynaccel.plugins.adapters.diffusers_attention import WanSparseProcessor
from dynaccel.plugins.sparse_attention.masks import tile_order
torch.set_num_threads(1)
GRID = (5, 8, 8)
layouts = []
for arg in sys.argv[1:] or ["16:1x4x4"]:
    bs, tile = arg.split(":")
    layouts.append((int(bs), tuple(int(t) for t in tile.split("x"))))
pipe = WanPipeline.from_pretrained(dynaccel.zoo.path("tiny-wan"))
pipe.set_progress_bar_config(disable=True)
call = dynaccel.zoo.generation_defaults("tiny-wan")
orders = {lay: tile_order(GRID, lay[1]) for lay in layouts}
rec = {lay: {0.25: [], 0.5: [], 0.75: []} for lay in layouts}
class Router:
    def sparse_now(self): return True
    def attend(self, index, q, k, v, **kw):
        for (bs, tile), order in orders.items():
            qo, ko = q[:, order].transpose(1, 2).float(), k[:, order].transpose(1, 2).float()
            p = torch.softmax(qo @ ko.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)  # (B,H,320,320)
            b, h, n, _ = p.shape
            nb = n // bs
            mass = p.reshape(b, h, nb, bs, nb, bs).sum((3, 5)) / bs  # (B,H,nb,nb) per query block, rows sum to 1
            srt = mass.sort(-1, descending=True).values.cumsum(-1)
            for d in rec[(bs, tile)]:
                rec[(bs, tile)][d].append(srt[..., int(d * nb) - 1].mean().item())
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
for i, blk in enumerate(pipe.transformer.blocks):
    blk.attn1.set_processor(WanSparseProcessor(blk.attn1.processor, Router(), i))
pipe("a red ball bouncing", output_type="latent", generator=torch.Generator().manual_seed(0),
     **{k: v for k, v in call.items() if k != "output_type"})
for (bs, tile), r in rec.items():
    print(f"block {bs}, {'x'.join(map(str, tile))} tiles ({320 // bs} blocks):")
    for d, v in r.items():
        print(f"  top {d:.0%} of key blocks hold {sum(v)/len(v):.1%} of the attention mass on average (min {min(v):.1%})")
