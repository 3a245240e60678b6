"""How concentrated is tiny-wan's self-attention? The share of attention mass an oracle keeps with the top 25, 50
and 75% of key blocks (16-token 1x4x4 tiles) per query block, over all layers, heads and steps of one dense
generation (the outputs are unchanged: the probe returns dense attention).

    python scripts/tiny_wan_attention_mass.py
"""
import torch, dynaccel, dynaccel.zoo
from diffusers import WanPipeline
from dynaccel.plugins.adapters.diffusers_attention import WanSparseProcessor
from dynaccel.plugins.sparse_attention.masks import tile_order
torch.set_num_threads(1)
pipe = WanPipeline.from_pretrained(dynaccel.zoo.path("tiny-wan"))
pipe.set_progress_bar_config(disable=True)
call = dynaccel.zoo.generation_defaults("tiny-wan")
order = tile_order((5, 8, 8), (1, 4, 4))
rec = {0.25: [], 0.5: [], 0.75: []}
class Router:
    def sparse_now(self): return True
    def attend(self, index, q, k, v, **kw):
        qo, ko = q[:, order].transpose(1, 2).float(), k[:, order].transpose(1, 2).float()
        p = torch.softmax(qo @ ko.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)  # (B,H,320,320)
        b, h, n, _ = p.shape
        mass = p.reshape(b, h, 20, 16, 20, 16).sum((3, 5)) / 16  # (B,H,20,20) per query block, rows sum to 1
        srt = mass.sort(-1, descending=True).values.cumsum(-1)
        for d in rec:
            rec[d].append(srt[..., int(d * 20) - 1].mean().item())
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
for i, blk in enumerate(pipe.transformer.blocks):
    blk.attn1.set_processor(WanSparseProcessor(blk.attn1.processor, Router(), i))
pipe("a red ball bouncing", output_type="latent", **{k: v for k, v in call.items() if k != "output_type"})
for d, v in rec.items():
    print(f"top {d:.0%} of key blocks hold {sum(v)/len(v):.1%} of the attention mass on average (min {min(v):.1%})")
