#!/usr/bin/env bash
# Noise projection the paper's way (issue 30): reward models, the tau choice on TRAIN prompts, the paper-style
# projectors, then the preregistered held-out replication (PREREGISTRATION.md), one job at a time (2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results/noise_projection_paper

# 1. noise reward models: shapes-one-step (768 train prompts x 8 seeds, preview = the generation; ~8 min) and shapes
#    (384 x 8, a 4-step DDIM preview of the 20-step sampler; ~20 min)
latentalign train noise-reward --model shapes-one-step --out runs/noise_reward_one_step
latentalign train noise-reward --model shapes --prompts 384 --out runs/noise_reward_shapes

# 2. tau on TRAIN prompts: one paper-style projector per KL weight through shapes-one-step (~6 min each), then a
#    train-split bench of each beside plain (seeds from 60 000 000)
for KL in 0.01 0.001 0.0001; do
  latentalign train projector --model shapes-one-step --recipe paper \
    --noise-reward runs/noise_reward_one_step/noise_reward --steps 500 --warmup-steps 150 --kl-weight $KL \
    --out runs/projector_paper_one_step_kl$KL
done
latentalign bench --config benchmarks/configs/projection_kl_choice_one_step.toml --out $R/kl_choice_one_step
# the chosen one is shipped (see docs/noise_projection.md for which and why)
