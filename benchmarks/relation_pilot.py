"""Pilot for a harder world (issue 3): can the shipped UNet learn relations if training stresses high-noise steps?

Fine-tunes the shipped pipeline's UNet and text encoder (a copy in memory; nothing is saved) on relation-heavy
TRAIN-split renders with timesteps drawn from [TMIN, 999] only, then measures plain generation on held-out
relation (160) and two-object (80) prompts, seeds 0.., before and after. A pilot, not a shipped model: no EMA,
one run, small samples (95% intervals about +-0.07 at n=160).

python benchmarks/relation_pilot.py TMIN STEPS [eps|x0]   # e.g. 500 400 eps; appends to
                                                          # benchmarks/results/relation_pilot/runs.jsonl
"""

import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

import latentalign
from latentalign.pipeline import shapes_scheduler_config
from latentalign.training.world import WorldTrainConfig, _captions, _to_tensor
from latentalign.world import check, suite
from latentalign.world.dataset import build_dataset

tmin = int(sys.argv[1])
steps = int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "eps"
torch.manual_seed(0)
pipe = latentalign.load_pipeline("shapes")


def evaluate(tag):
    out = {}
    for name, n in [("relation", 160), ("two_objects", 80)]:
        ps = suite(name, "heldout")
        ps = random.Random(1).sample(ps, n)
        ok = 0
        for i in range(0, n, 40):
            r = latentalign.generate(pipe, ps[i : i + 40], seed=list(range(i, i + 40)))
            ok += sum(check(im, p).ok for im, p in zip(r.images, ps[i : i + 40], strict=True))
        out[name] = ok / n
    print(tag, out, flush=True)
    return out


before = evaluate("before")
imgs, prompts = build_dataset(6000, seed=5, split="train", weights=[0.05, 0.15, 0.65, 0.15], progress=False)
caps = _captions(prompts, WorldTrainConfig())
vae, unet, text, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
with torch.no_grad():
    d = vae.encode(_to_tensor(imgs)).latent_dist
    mean, std = d.mean, d.std
s = vae.config.scaling_factor
ids_all = tok(
    caps, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
).input_ids
ids_empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids[0]
sched = DDPMScheduler(**{k: v for k, v in shapes_scheduler_config().items() if k != "set_alpha_to_one"})
params = list(unet.parameters()) + list(text.parameters())
for p in params:
    p.requires_grad_(True)
unet.train()
text.train()
opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
g = torch.Generator().manual_seed(0)
t0 = time.time()
for step in range(steps):
    idx = torch.randint(0, len(mean), (64,), generator=g)
    z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * s
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(tmin, 1000, (64,), generator=g)
    zt = sched.add_noise(z0, noise, t)
    ids = ids_all[idx].clone()
    ids[torch.rand(64, generator=g) < 0.1] = ids_empty
    pred = unet(zt, t, text(ids).last_hidden_state).sample
    if mode == "x0":  # weight the loss in x0 space (SNR weighting): layout errors count as much as texture
        ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0p = (zt - (1 - ab).sqrt() * pred) / ab.sqrt()
        loss = F.mse_loss(x0p.clamp(-10, 10), z0)
    else:
        loss = F.mse_loss(pred, noise)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if step % 100 == 0:
        print(step, round(loss.item(), 4), round(time.time() - t0), flush=True)
unet.eval()
text.eval()
for p in params:
    p.requires_grad_(False)
after = evaluate(f"after tmin={tmin} steps={steps} mode={mode}")
out = Path("benchmarks/results/relation_pilot")
out.mkdir(parents=True, exist_ok=True)
with (out / "runs.jsonl").open("a") as f:
    f.write(
        json.dumps(
            {
                "tmin": tmin,
                "steps": steps,
                "mode": mode,
                "before": before,
                "after": after,
                "seconds": round(time.time() - t0),
            }
        )
        + "\n"
    )
