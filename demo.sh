#!/usr/bin/env bash
# The whole experiment on the embedded synthetic world, on a laptop CPU (2 cores, ≤ 10 min):
#   prepare the world -> train a demo teacher on the big "web" split -> cache it -> train the A1-A5 students
#   on the small split (two at a time, one thread each) -> eval on the test split (retrieval, zero-shot,
#   speed vs the teacher) -> report.md
#
#   bash demo.sh            # full demo; sets up .venv first if it is missing
#   bash demo.sh --quick    # < 2 min pipeline check on a smaller world, A1/A5 one seed (run by test_smoke.py)
#   DEMO_DIR=/tmp/d bash demo.sh   # where data/, cache/, out/ go (default: this repo)
#   SEEDS="0 1" bash demo.sh       # + a second seed of A1 and A5 (seed spread, ~2 min more)
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${PY:-}" ]; then
    [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
    PY=.venv/bin/python
fi
D=${DEMO_DIR:-.}
W=$D/data/shapes; R=$D/cache/shapes-raw; C=$D/cache/shapes; O=$D/out/shapes
WORLD=(); TEACH=(); STUD=(); SEEDS=${SEEDS:-0}; RUNS="a1 a2 a3 a4 a5"
if [ "${1:-}" = "--quick" ]; then # same pipeline, smaller world and budgets
    WORLD=(--n_web=2000 --n_train=300 --n_val=100 --n_test=100)
    TEACH=(--max_iters=100 --eval_interval=100 --batch_size=64 --val_images=100)
    STUD=(--max_iters=40 --eval_interval=40 --log_interval=20 --batch_size=64 --val_images=100)
    SEEDS="0"; RUNS="a1 a5"
fi
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "1. synthetic world (COCO format + tokenizer)"
$PY data/shapes/prepare.py --out_dir=$W "${WORLD[@]}"
step "2. pack the web + val splits (pixels + tokens, no teacher) and train the demo teacher on web"
for s in web val; do
    $PY cache_teacher.py --data_dir=$W --split=$s --teacher=none --processor=$W/processor --out_dir=$R --num_workers=1
done
$PY train.py config/shapes_teacher.py --train_cache=$R/web --val_cache=$R/val --out_dir=$O/teacher --num_threads=2 "${TEACH[@]}"
step "3. cache the teacher on the student's train / val / test splits; teacher row on test"
for s in train val test; do
    $PY cache_teacher.py --data_dir=$W --split=$s --teacher=$O/teacher --out_dir=$C --num_workers=1
done
$PY eval.py --cache=$C/test
step "4. students A1-A5 (two at a time, one thread each)"
runs=()
student() { # $1 config, $2 run name, $3 seed
    if $PY train.py config/$1.py config/shapes.py --train_cache=$C/train --val_cache=$C/val --out_dir=$O/$2 \
            --seed=$3 "${STUD[@]}" > $O/$2.log 2>&1; then tail -n 1 $O/$2.log | sed "s/^/$2: /"
    else echo "FAILED: $2"; tail -n 20 $O/$2.log; return 1; fi
}
mkdir -p $O
for seed in $SEEDS; do
    for a in $RUNS; do
        [ "$seed" = 0 ] || [ "$a" = a1 ] || [ "$a" = a5 ] || continue # seed spread: A1 and A5 only
        run=$a; [ "$seed" = 0 ] || run=$a-s$seed
        runs+=($run)
        [ $(jobs -rp | wc -l) -lt 2 ] || wait -n
        student $a $run $seed &
    done
done
for p in $(jobs -p); do wait $p; done
step "5. eval every student on the test split, then the tables"
for run in "${runs[@]}"; do # two at a time, like the training runs
    [ $(jobs -rp | wc -l) -lt 2 ] || wait -n
    $PY eval.py --cache=$C/test --ckpt=$O/$run --locca=False &
done
for p in $(jobs -p); do wait $p; done
step "6. zero-shot on the single-object test images (the world's caption templates), student vs teacher speed"
ZS=(--zeroshot=$W/annotations/instances_test2017.json "--templates=a {c}|a picture of a {c}|there is a {c}")
$PY eval.py --ckpt=$O/teacher "${ZS[@]}" --out=$C/test/eval.json
for run in "${runs[@]}"; do # one at a time: the timings share the CPU with nothing of ours
    $PY eval.py --cache=$C/test --ckpt=$O/$run "${ZS[@]}" --speed=True --speed_seconds=0.5
done
$PY report.py --runs_dir=$O --teacher_eval=$C/test/eval.json --out=$O/report.md
step "done in $(( $(date +%s) - t0 ))s: $O/report.md"
