"""Pilot for the world's training recipe (issue 3): fine-tune a copy of the shipped UNet and text encoder with
timesteps from [TMIN, TMAX) only, and measure plain generation before and after.

Nothing is saved but one JSON line. A pilot, not a shipped model: no EMA, one run, small samples.
- `--eval relation` (the first pilot): held-out relation (160) and two-object (80) prompts, relation-heavy data.
- `--eval shapes`: TRAIN-split single-object prompts x 8 seeds (circles reported apart) and 80 train relation
  prompts, standard data mix: does low-noise training sharpen shapes, and what does it cost relations?
- `--eval train`: every suite on TRAIN-split prompts (24 per suite x seeds 0-3, as the guidance sweep), standard
  data mix (`--mix relation` for the relation-heavy one): a high-noise polish after `train world`, judged
  without touching held-out prompts.

python benchmarks/relation_pilot.py --tmin 500 --steps 400                      # first pilot (was: 500 400 eps)
python benchmarks/relation_pilot.py --tmin 0 --tmax 500 --steps 400 --eval shapes
python benchmarks/relation_pilot.py --tmin 500 --steps 400 --eval train
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

import latentalign
from latentalign.pipeline import shapes_scheduler_config
from latentalign.training.world import WorldTrainConfig, _captions, _to_tensor
from latentalign.world import SUITE_NAMES, check, suite
from latentalign.world.dataset import build_dataset

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--tmin", type=int, default=500)
ap.add_argument("--tmax", type=int, default=1000)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--mode", choices=("eps", "x0"), default="eps")
ap.add_argument("--eval", choices=("relation", "shapes", "train"), default="relation")
ap.add_argument("--mix", choices=("standard", "relation"), default=None, help="data mix (default: by --eval)")
ap.add_argument("--lr", type=float, default=2e-4)
ap.add_argument("--model", default="shapes", help="the pipeline to polish a copy of: 'shapes' or a pipeline folder")
args = ap.parse_args()
if not 0 <= args.tmin < args.tmax <= 1000 or args.steps < 1:
    ap.error("need 0 <= tmin < tmax <= 1000 and steps >= 1")
tmin, tmax, steps, mode = args.tmin, args.tmax, args.steps, args.mode
torch.manual_seed(0)
pipe = latentalign.load_pipeline(args.model)


def accuracy(prompts, seeds):
    ok = []
    for i in range(0, len(prompts), 40):
        r = latentalign.generate(pipe, prompts[i : i + 40], seed=seeds[i : i + 40])
        ok += [check(im, p).ok for im, p in zip(r.images, prompts[i : i + 40], strict=True)]
    return ok


def evaluate(tag):
    out = {}
    if args.eval == "relation":
        for name, n in [("relation", 160), ("two_objects", 80)]:
            ps = random.Random(1).sample(suite(name, "heldout"), n)
            out[name] = sum(accuracy(ps, list(range(n)))) / n
    elif args.eval == "train":
        for name in SUITE_NAMES:
            ps = random.Random(1).sample(suite(name, "train"), min(24, len(suite(name, "train"))))
            ps = [p for p in ps for _ in range(4)]
            out[name] = sum(accuracy(ps, [k % 4 for k in range(len(ps))])) / len(ps)
    else:
        ps = [p for p in suite("single_object", "train") for _ in range(8)]
        ok = accuracy(ps, [k % 8 for k in range(len(ps))])
        out["single_object"] = sum(ok) / len(ok)
        circles = [o for o, p in zip(ok, ps, strict=True) if p.endswith("circle")]
        out["single_circles"] = sum(circles) / len(circles)
        ps = random.Random(1).sample(suite("relation", "train"), 80)
        out["relation_train"] = sum(accuracy(ps, list(range(80)))) / 80
    print(tag, out, flush=True)
    return out


before = evaluate("before")
relation_mix = args.mix == "relation" or (args.mix is None and args.eval == "relation")
mix = [0.05, 0.15, 0.65, 0.15] if relation_mix else list(WorldTrainConfig().category_weights)
imgs, prompts = build_dataset(6000, seed=5, split="train", weights=mix, progress=False)
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
opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
g = torch.Generator().manual_seed(0)
t0 = time.time()
for step in range(steps):
    idx = torch.randint(0, len(mean), (64,), generator=g)
    z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * s
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(tmin, tmax, (64,), generator=g)
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
after = evaluate(f"after tmin={tmin} tmax={tmax} steps={steps} mode={mode}")
out = Path("benchmarks/results/relation_pilot")
out.mkdir(parents=True, exist_ok=True)
with (out / "runs.jsonl").open("a") as f:
    f.write(
        json.dumps(
            {
                "tmin": tmin,
                "tmax": tmax,
                "eval": args.eval,
                "mix": "relation" if relation_mix else "standard",
                "lr": args.lr,
                "steps": steps,
                "mode": mode,
                "before": before,
                "after": after,
                "seconds": round(time.time() - t0),
            }
        )
        + "\n"
    )
