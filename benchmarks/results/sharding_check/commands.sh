#!/bin/bash
cd "$(dirname "$0")/../../.."  # repository root
A="--prompts-per-suite 2 --groups 2 --timing-prompts 0"
.venv/bin/python benchmarks/best_of_n.py $A --out runs/shard1 > runs/shard1.log 2>&1
.venv/bin/accelerate launch --multi_gpu --num_processes 2 benchmarks/best_of_n.py $A --out runs/shard2 > runs/shard2.log 2>&1
# interrupted run: kill it once it has written 5 rows, then rerun the same command
.venv/bin/python benchmarks/best_of_n.py $A --out runs/shard3 > runs/shard3a.log 2>&1 &
PID=$!
while [ "$(cat runs/shard3/candidates.rank0.jsonl 2>/dev/null | wc -l)" -lt 5 ]; do sleep 0.5; done
kill -9 $PID; sleep 1
echo "rows before resume: $(wc -l < runs/shard3/candidates.rank0.jsonl)" > runs/shard3.interrupt
.venv/bin/python benchmarks/best_of_n.py $A --out runs/shard3 > runs/shard3b.log 2>&1
.venv/bin/python benchmarks/compare_runs.py runs/shard1 runs/shard2 > runs/compare_1v2.json; echo "exit $?" >> runs/compare_1v2.json
.venv/bin/python benchmarks/compare_runs.py runs/shard1 runs/shard3 > runs/compare_1vresumed.json; echo "exit $?" >> runs/compare_1vresumed.json
echo done > runs/shard_check.done
