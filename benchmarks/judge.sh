#!/usr/bin/env bash
# The latent judge (issue 23): training, then every benchmark of it, one job at a time (2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
A="accelerate launch --multi_gpu --num_processes 2"

# the shipped shapes-judge: 1 536 train prompts x 8 seeds, 2 000 steps (about 33 min with the data)
$A -m latentalign.cli train judge --model shapes --prompts 1536 --steps 2000 --out runs/judge_final
python -c "from latentalign.scorers.factory import ship_scorer; print(ship_scorer('runs/judge_final/judge', 'shapes-judge'))"

# held out: detection per step, Best-of-N and early exit at N in {4, 8, 16}, honesty (about 10 min)
$A benchmarks/judge_study.py --out benchmarks/results/judge_heldout
# the evidence for the Best-of-N default: Best-of-8 on the train prompts the judge kept aside (seconds)
(cd benchmarks && python judge_defaults.py --data ../runs/judge_final/data --out results/judge_train)
# ReNO on shapes-one-step: the judge (the "latent" column) against pixel CLIP, 11 iterations, with steering
python benchmarks/noise_optimization.py --model shapes-one-step --per-suite 16 --seeds 1 --iterations 11 \
  --steering-prompts 0 --latent-scorer shapes-judge --out benchmarks/results/judge_reno_one_step
# sample grids of ReNO with the judge as reward, inspected for adversarial images
python benchmarks/judge_grids.py --per-suite 2 --out benchmarks/results/judge_reno_one_step/grids
