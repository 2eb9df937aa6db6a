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
python -c "from latentalign.methods.noise_projection import ship_projector as s; \
  print(s('runs/projector_paper_one_step_kl0.001/projector', 'shapes-projector-paper-one-step'))"

# 3. the paper-style projector of shapes, at the chosen tau, against the reward model of shapes (batch 16: each step
#    back-propagates through the 4-step preview; ~15 min)
latentalign train projector --model shapes --recipe paper --noise-reward runs/noise_reward_shapes/noise_reward \
  --batch 16 --out runs/projector_paper_shapes --ship

# 4. the reward models' fidelity on HELD-OUT prompts (reported, never used to choose; seeds from 45 000 000)
python benchmarks/noise_reward_fidelity.py --model shapes-one-step --reward runs/noise_reward_one_step/noise_reward \
  --data runs/fidelity_one_step_data --out $R/fidelity_one_step.json
python benchmarks/noise_reward_fidelity.py --model shapes --reward runs/noise_reward_shapes/noise_reward \
  --data runs/fidelity_shapes_data --out $R/fidelity_shapes.json

# 5. the preregistered held-out replication (PREREGISTRATION.md; seeds 80 000 000-80 000 003, 624 images a row)
latentalign bench --config benchmarks/configs/projection_replication_one_step.toml --out $R/replication_one_step
latentalign bench --config benchmarks/configs/projection_replication_shapes.toml --out $R/replication_shapes

# 6. the narrowing of the noise and the images' diversity, on the replication's images
for M in one_step shapes; do
  MODEL=$([ $M = one_step ] && echo shapes-one-step || echo shapes)
  RUNS="--run best-of-2=$R/replication_$M/best-of-n_n2"
  RUNS="$RUNS --run today=$R/replication_$M/noise-projection_projectorshapes-projector"
  RUNS="$RUNS --run paper-one-step=$R/replication_$M/noise-projection_projectorshapes-projector-paper-one-step"
  PROJ="--projector today=shapes-projector --projector paper-one-step=shapes-projector-paper-one-step"
  if [ $M = shapes ]; then
    RUNS="$RUNS --run paper-shapes=$R/replication_$M/noise-projection_projectorshapes-projector-paper-shapes"
    PROJ="$PROJ --projector paper-shapes=shapes-projector-paper-shapes"
  fi
  python benchmarks/projection_diversity.py --model $MODEL --plain $R/replication_$M/plain $RUNS $PROJ \
    --out $R/diversity_$M.json
done
