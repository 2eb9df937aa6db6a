#!/usr/bin/env bash
# Generative semantic nursing on the Shapes world (issue 25): every command behind docs/gsn.md's numbers, in order.
set -euo pipefail
R=benchmarks/results/gsn
# 1. the step curve on TRAIN prompts (two objects + relation, 16 prompts x 2 seeds a suite = 64 images a step):
#    one IterRef at each even step, Attend-and-Excite's loss, two step sizes; then the other losses at the better one
for size in 20 5; do
  latentalign select-steps --model shapes --loss attend-and-excite --candidates 0,2,4,6,8,10,12,14,16,18 \
      --step-size "$size" --out "$R/select_attend-and-excite_step$size"
done
for loss in iou syngen; do
  latentalign select-steps --model shapes --loss "$loss" --candidates 0,2,4,6,8,10,12,14,16,18 \
      --step-size "${SIZE:?the better step size of step 1}" --out "$R/select_$loss"
done
# (run above with SIZE=5: step size 5 beat 20 on train for Attend-and-Excite; the IoU loss at 20 is also committed)
# 2. record the best train configuration (A&E, step size 5, step 4) in shapes' latentalign.json (resumes: no new image)
latentalign select-steps --model shapes --loss attend-and-excite --candidates 0,2,4,6,8,10,12,14,16,18 \
    --step-size 5 --out "$R/select_attend-and-excite_step5" --record
# 3. held out, two objects + relation, 24 prompts x 4 seeds a suite (192 images a row), same prompts and seeds
H=(--model shapes --suite two_objects --suite relation --seeds 4 --limit-prompts 24)
latentalign bench "${H[@]}" --out "$R/heldout/plain"
latentalign bench "${H[@]}" --method attention-refinement --out "$R/heldout/attend-and-excite-schedule"
latentalign bench "${H[@]}" --method iterref --out "$R/heldout/iterref-selected"   # step 4, A&E, size 5 (recorded)
latentalign bench "${H[@]}" --method iterref --loss syngen --at-steps 6 --step-size 5 --out "$R/heldout/iterref-syngen"
latentalign bench "${H[@]}" --method gsn-guidance --at-steps 4 --step-size 5 --out "$R/heldout/gsn-guidance"
latentalign bench "${H[@]}" --method best-of-n --n 2 --out "$R/heldout/best-of-2"
latentalign report "$R"/heldout/{plain,attend-and-excite-schedule,iterref-selected,iterref-syngen,gsn-guidance,best-of-2} \
    --out "$R/heldout/frontier"
# 4. the maps that explain it (train prompts)
latentalign attention "a red circle and a blue square" --model shapes --out "$R/grids/two_objects"
latentalign attention "a red circle left of a blue square" --model shapes --out "$R/grids/relation"
# 5. the curve on shapes-flow's train prompts (all 10 steps), then IterRef at its chosen step beside the other methods
latentalign select-steps --model shapes-flow --loss attend-and-excite --step-size 5 \
    --out "$R/select_flow_attend-and-excite_step5"
latentalign bench --model shapes-flow --suite all --seeds 2 --limit-prompts 16 --method iterref --at-steps 5 \
    --step-size 5 --out benchmarks/results/methods/shapes-flow/iterref-selected
