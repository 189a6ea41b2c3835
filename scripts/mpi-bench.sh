#!/usr/bin/env bash
# Two ranks of one thread against one process of two threads, on one machine, side by side:
# the answerer's tuning epoch (the warm start's data-parallel training path) and the first RL
# steps of a run that starts from another run's warm start. Prints a table. With the preset's
# 8 shards the two set-ups sum gradients in a different order, so their runs drift apart by
# rounding and then by sampling: the table compares throughput, not identical steps.
#
# Usage: scripts/mpi-bench.sh WARM_RUN [ROUNDS]
#   WARM_RUN  a run directory with a warm start (checkpoints/sft), e.g. from
#             `memr2 train --sft-epochs 1 --stop-after-steps 0 --run-dir runs/warm`
#   ROUNDS    alternating rounds of the two set-ups (default 1)
# Needs `cargo build --release -p memr2-trainer --features mpi` and Open MPI's mpirun.
set -euo pipefail
warm="${1:?usage: scripts/mpi-bench.sh WARM_RUN [ROUNDS]}"
rounds="${2:-1}"
memr2="${MEMR2:-target/release/memr2}"
steps="${STEPS:-6}"
out="$(mktemp -d)"
args=(train --init-from "$warm" --answerer-epochs 1 --stop-after-steps "$steps")
for r in $(seq 1 "$rounds"); do
    echo "round $r: 1 process x 2 threads" >&2
    "$memr2" "${args[@]}" --run-dir "$out/one-$r" 2>"$out/one-$r.log" >/dev/null
    echo "round $r: 2 ranks x 1 thread" >&2
    mpirun --allow-run-as-root -np 2 --bind-to core --mca btl_vader_single_copy_mechanism none \
        "$memr2" "${args[@]}" --run-dir "$out/two-$r" 2>"$out/two-$r.log" >/dev/null
done
python3 - "$out" "$rounds" <<'PY'
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(kind):
    rows = []
    for r in range(1, rounds + 1):
        run = f"{out}/{kind}-{r}"
        lines = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
        log = open(f"{run}.log").read()
        m = re.search(r'corpus="answerer" examples=(\d+) prompt_tokens=(\d+) completion_tokens=(\d+)', log)
        tokens = int(m.group(2)) + int(m.group(3)) if m else float("nan")
        epoch = next(l for l in lines if "answerer_epoch" in l)
        steps = [l for l in lines if "step_s" in l]
        # Steps whose groups all had equal rewards train nothing: update figures from the others.
        updating = [s for s in steps if s["update"]["minibatches"] > 0] or steps
        med = lambda xs: statistics.median(list(xs))
        rows.append(dict(
            epoch_s=epoch["epoch_s"], epoch_tok=tokens / epoch["epoch_s"],
            epoch_coll=epoch.get("collective_s", 0.0),
            step_s=med(s["step_s"] for s in updating),
            rollout_tok=med(s["rollout_tokens_per_s"] for s in steps),
            update_tok=med(s["update_tokens_per_s"] for s in updating),
            coll=med(s.get("collective_s", 0.0) for s in updating),
            steps=len(steps), updating=len(updating)))
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}
one, two = load("one"), load("two")
print("| | 1 process x 2 threads | 2 ranks x 1 thread | ratio |")
print("|---|---:|---:|---:|")
for key, label in [("epoch_s", "answerer epoch, s"), ("epoch_tok", "answerer epoch, tokens/s"),
                   ("epoch_coll", "of the epoch in collectives, s"),
                   ("rollout_tok", "RL rollout, generated tokens/s"),
                   ("step_s", "RL step that updates, s"), ("update_tok", "RL update, tokens/s"),
                   ("coll", "of such a step in collectives, s")]:
    a, b = one[key], two[key]
    # Speed-up of the 2 ranks: time over time, or tokens/s over tokens/s.
    if "coll" in key or not a or not b:
        ratio = ""
    else:
        ratio = f"{a / b:.2f}x" if key.endswith("_s") else f"{b / a:.2f}x"
    print(f"| {label} | {a:.2f} | {b:.2f} | {ratio} |")
print(f"\nRL steps (updating): 1 process {one['steps']} ({one['updating']}), 2 ranks {two['steps']} ({two['updating']})")
print(f"\nrun directories: {out}")
PY
