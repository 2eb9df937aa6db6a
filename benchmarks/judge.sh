#!/usr/bin/env bash
# The latent judge (issue 23): training, then every benchmark of it, one job at a time (2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
A="accelerate launch --multi_gpu --num_processes 2"

# the first shapes-judge (archived: results/archive/shapes-judge_run1): 1 536 train prompts x 8 seeds, 2 000 steps
# $A -m latentalign.cli train judge --model shapes --prompts 1536 --seeds-per-prompt 8 --steps 2000 --out runs/judge_final
# the shipped second run: 1 536 train prompts x 16 seeds, 3 000 steps (the command's defaults; 44 min recording and
# dense targets, 26.5 min training, 2 processes)
$A -m latentalign.cli train judge --model shapes --prompts 1536 --seeds-per-prompt 16 --steps 3000 --out runs/judge_v2
python -c "from latentalign.scorers.factory import ship_scorer; print(ship_scorer('runs/judge_v2/judge', 'shapes-judge'))"
# the second run against the first on the kept-aside TRAIN prompts (its rule: alone > 0.762 + 0.01, beside pixel CLIP
# >= 0.785 - 0.01; about 4 min; first run as --judge runs/judge_v2/judge before shipping, the table rewritten after)
python benchmarks/judge_with_pixel.py --stage train --judge shapes-judge --out benchmarks/results/judge_v2_with_pixel_train
# held out, once: the study (about 17 min) and the replay with the weight chosen above
$A benchmarks/judge_study.py --judge shapes-judge --out benchmarks/results/judge_v2_heldout
python benchmarks/judge_with_pixel.py --stage heldout --train-out benchmarks/results/judge_v2_with_pixel_train \
  --judge-heldout benchmarks/results/judge_v2_heldout --out benchmarks/results/judge_v2_with_pixel_heldout

# Below: the first judge's runs, as they were made (their folders hold its numbers; to remake one, pass the archived
# folder benchmarks/results/archive/shapes-judge_run1/judge as --judge / --latent-scorer)

# held out: detection per step, Best-of-N and early exit at N in {4, 8, 16}, honesty (about 10 min)
$A benchmarks/judge_study.py --out benchmarks/results/judge_heldout
# the evidence for the Best-of-N default: Best-of-8 on the train prompts the judge kept aside (seconds)
(cd benchmarks && python judge_defaults.py --data ../runs/judge_final/data --out results/judge_train)
# ReNO on shapes-one-step: the judge (the "latent" column) against pixel CLIP, 11 iterations, with steering
python benchmarks/noise_optimization.py --model shapes-one-step --per-suite 16 --seeds 1 --iterations 11 \
  --steering-prompts 0 --latent-scorer shapes-judge --out benchmarks/results/judge_reno_one_step
# sample grids of ReNO with the judge as reward, inspected for adversarial images
python benchmarks/judge_grids.py --per-suite 2 --out benchmarks/results/judge_reno_one_step/grids
