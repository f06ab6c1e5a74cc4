#!/usr/bin/env bash
# The seed's experiment on the embedded synthetic world, on a laptop CPU (2 cores):
#   prepare the world -> cache the demo teacher (data/shapes/teacher, kept in the repo like a google/siglip2-*
#   checkpoint) on the student's splits -> train the students of Tables 1 and 2 (A1, A3, A4, A5, A7; 2 seeds each;
#   two at a time, one thread each) -> eval on the 5k test split (retrieval, zero-shot, speed vs the teacher)
#   -> report.md: the findings, each delta marked resolved or not
#
#   bash demo.sh            # Tables 1 + 2 (~15 min on 2 cores: ~11 of it the 10 student runs of ~2 min each);
#                           #   sets up .venv first if it is missing
#   bash demo.sh --quick    # < 4 min pipeline check on a smaller world, A1/A5/recipe one seed (run by test_smoke.py)
#   DEMO_DIR=/tmp/d bash demo.sh   # where data/, cache/, out/ go (default: this repo)
#   WORLD_SEED=1 bash demo.sh      # another draw of the world (README: do the findings hold?)
#   SEEDS="0 1 2" bash demo.sh     # seeds of every run (default 0 1)
#   RECIPE=1 bash demo.sh          # + the TinySigLIP recipe: the web split cached as unpaired images (K views) and
#                                  #   unpaired captions, 4,000 steps beside the A runs
#   FULL=1 bash demo.sh            # + Table B (the kept B / L / So400m stand-ins x Tiny / Small students), Table C
#                                  #   (ResNet, MobileNet students) and the recipe (RECIPE=1) against A5 on 500 / 2,000 /
#                                  #   5,000 pairs, 2 seeds each (3,556 s on a quiet 2-core CPU: README)
#   PARTS=1 bash demo.sh           # + what each part of the recipe adds (views / unpaired images / texts), 2 seeds
#   RETRAIN_TEACHER=1 bash demo.sh # train the demo teacher from scratch first (config/shapes_teacher.py, ~60 min)
#   TEXT=1 bash demo.sh            # + the text tower's start: from scratch / inherited from the teacher / a BERT
#                                  #   pretrained by MLM on the web captions, for a1 and a5, 3 seeds: 14 more runs of
#                                  #   ~2.5 min, two at a time, after ~1 min of MLM pretraining (2,308 s in all: README)
#   TERMS=1 bash demo.sh           # + what each SigLIP 2 term adds to a small HF Siglip2Model: a sigmoid-only base, then
#                                  #   sigmoid / + LocCa / + SILC/TIPS / all at equal steps, 2 seeds (~30 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${PY:-}" ]; then
    [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
    PY=.venv/bin/python
fi
D=${DEMO_DIR:-.}
W=$D/data/shapes; R=$D/cache/shapes-raw; C=$D/cache/shapes; O=$D/out/shapes
WORLD=(--seed=${WORLD_SEED:-0}); TEACH=(); STUD=(); RECIPE_ARGS=(); SEEDS=${SEEDS:-0 1}; K=8
RUNS="a1 a3 a4 a5 a7" # Table 1 (No KD = a1, the best distilled on val) and Table 2 (a5 a4 a3 a7)
PAIRS="" # the recipe's data-efficiency sweep: a5 and the recipe on the first N of the 5,000 pairs
TBASE=(); TARM=() # the terms study's base and arms (--quick: shorter)
TEXT_SEEDS="0 1 2"; MLM=() # the text-start study's seeds; pretrain_text.py's flags (--quick: shorter)
if [ -n "${FULL:-}" ]; then # the longest runs first, so that the last pair of jobs is short
    RECIPE=1; PAIRS="500 2000" # Table C: config/shapes_c*.py; Table B: config/shapes_b*.py
    RUNS="tinysiglip-p500 tinysiglip-p2000 tinysiglip c2 c1 a5-p500 a5-p2000 $RUNS b5 b4 b3 b2 b1"
fi
[ -z "${PARTS:-}" ] || RECIPE=1 # the parts table compares against the recipe
[ -z "${RECIPE:-}" ] || [[ $RUNS = *tinysiglip* ]] || RUNS="tinysiglip $RUNS" # first: the longest run
if [ "${1:-}" = "--quick" ]; then # same pipeline, smaller world and budgets
    WORLD=(--seed=${WORLD_SEED:-0} --n_web=2000 --n_train=300 --n_val=100 --n_test=100)
    TEACH=(--max_iters=100 --eval_interval=100 --batch_size=64 --val_images=100)
    STUD=(--max_iters=40 --eval_interval=40 --log_interval=20 --batch_size=64 --val_images=100)
    RECIPE_ARGS=(--max_iters=40 --eval_interval=40)
    SEEDS="0"; RUNS="tinysiglip a1 a5"; K=3; RECIPE=1
    TEXT_SEEDS="0"; MLM=(--iters=50)
    [ -z "${FULL:-}" ] || { PAIRS="100"; RUNS="tinysiglip-p100 a5-p100 $RUNS c2 c1 b5 b4 b3 b2 b1"; }
    TBASE=(--max_iters=40 --eval_interval=40 --val_images=100); TARM=(--max_iters=10 --eval_interval=10 --val_images=100)
fi
# the web split feeds only the teacher's retraining, the recipe's unpaired caches and the terms study
[ -n "${RECIPE:-}${RETRAIN_TEACHER:-}${TERMS:-}${TEXT:-}" ] || [ "${1:-}" = "--quick" ] || WORLD+=(--n_web=0)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }
cache() { $PY cache_teacher.py --data_dir=$W --teacher=$T --num_workers=1 "$@" 2>&1 | { grep -v "img/s\]" || true; }; }

step "1. synthetic world (COCO format + tokenizer)"
$PY data/shapes/prepare.py --out_dir=$W "${WORLD[@]}"
T=data/shapes/teacher # trained once by the command below (log.jsonl beside it); cached like any SigLIP 2 checkpoint
if [ -n "${RETRAIN_TEACHER:-}" ]; then
    step "2. retrain the demo teacher on the web split (pixels + tokens packed without a teacher)"
    for s in web val; do
        $PY cache_teacher.py --data_dir=$W --split=$s --teacher=none --processor=$W/processor --out_dir=$R \
            --max_length=32 --num_workers=1
    done
    $PY train.py config/shapes_teacher.py --train_cache=$R/web --val_cache=$R/val --out_dir=$O/teacher "${TEACH[@]}"
    T=$O/teacher
fi
VIEWS=1; [ -z "${RECIPE:-}" ] || VIEWS=$K # the A runs see only view 0 (the full image)
step "3. cache the teacher: train split with $VIEWS view(s), val, test (two at a time)"
cache --split=train --out_dir=$C --views=$VIEWS &
train_job=$!
for s in val test; do cache --split=$s --out_dir=$C; done
wait $train_job
if [ -n "${RECIPE:-}" ]; then
    echo "   + the web split as unpaired images (K=$K views) and unpaired captions, for the recipe"
    cache --split=web --out_dir=$D/cache/shapes-img --captions=False --views=$K & # the two web caches side by side
    img_job=$!
    cache --split=web --out_dir=$D/cache/shapes-txt --images=False
    wait $img_job
fi
for n in $PAIRS; do # the sweep's paired splits: the first n train images, the same K views
    cache --split=train --out_dir=$D/cache/shapes-p$n --views=$VIEWS --max_images=$n
done
if [ -n "${FULL:-}" ]; then
    echo "   + Table B's teachers (the B, L and So400m stand-ins, one family) on train, val, test"
    for t in b l so; do
        [ $(jobs -rp | wc -l) -lt 2 ] || wait -n
        for s in train val test; do
            cache --teacher=data/shapes/teacher-$t --split=$s --out_dir=$D/cache/shapes-$t
        done &
    done
    for p in $(jobs -p); do wait $p; done
    for t in b l so; do $PY eval.py --cache=$D/cache/shapes-$t/test; done
fi
$PY eval.py --cache=$C/test
if [ -n "${TEXT:-}" ]; then
    echo "   + the text tower's pretrained start: a BERT pretrained by MLM on the web captions"
    $PY data/shapes/pretrain_text.py --data_dir=$W --out_dir=$W/bert "${MLM[@]}" | tail -n 1
fi
step "4. students (two at a time, one thread each)"
runs=()
cache_of() { # the caches of run $1: its teacher's (Table B), train cut to its first N pairs (the sweep)
    case $1 in
        b1*|b3*) echo $D/cache/shapes-b;;
        b2*|b4*) echo $D/cache/shapes-l;;
        b5*) echo $D/cache/shapes-so;;
        *) echo $C;;
    esac
}
train_of() {
    local n=${1#*-p}
    if [[ $1 = *-p[0-9]* ]]; then echo $D/cache/shapes-p${n%%-*}/train; else echo $(cache_of $1)/train; fi
}
student() { # $1 config chain, $2 run name, $3 seed, then extra flags
    local cfg=$1 run=$2 seed=$3; shift 3
    if $PY train.py $cfg --train_cache=$(train_of $run) --val_cache=$(cache_of $run)/val --out_dir=$O/$run \
            --seed=$seed "${STUD[@]}" "$@" > $O/$run.log 2>&1; then tail -n 1 $O/$run.log | sed "s/^/$run: /"
    else echo "FAILED: $run"; tail -n 20 $O/$run.log; return 1; fi
}
launch() { # at most two jobs at a time on 2 cores
    [ $(jobs -rp | wc -l) -lt 2 ] || wait -n
    runs+=($2)
    student "$@" &
}
EXTRA=(--extra_image_cache=$D/cache/shapes-img/web --extra_text_cache=$D/cache/shapes-txt/web)
mkdir -p $O
for seed in $SEEDS; do
    for a in $RUNS; do
        run=$a; [ "$seed" = 0 ] || run=$a-s$seed
        if [[ $a = tinysiglip* ]]; then launch config/shapes_tinysiglip.py $run $seed "${EXTRA[@]}" --views=$K "${RECIPE_ARGS[@]}"
        elif [[ $a = [bc][0-9] ]]; then launch config/shapes_$a.py $run $seed
        else launch "config/${a%%-*}.py config/shapes.py" $run $seed; fi
    done
done
if [ -n "${PARTS:-}" ]; then # what each part of the recipe adds, two seeds each (all three = the recipe's seeds)
    [[ " $SEEDS " = *" 1 "* ]] || launch config/shapes_tinysiglip.py tinysiglip-s1 1 "${EXTRA[@]}" --views=$K "${RECIPE_ARGS[@]}"
    for seed in 0 1; do
        P=(config/shapes_tinysiglip.py); NONE=(--extra_image_cache= --extra_text_cache=)
        launch "${P[@]}" parts-none-s$seed $seed --views=1 "${NONE[@]}" "${RECIPE_ARGS[@]}"
        launch "${P[@]}" parts-views-s$seed $seed --views=$K "${NONE[@]}" "${RECIPE_ARGS[@]}"
        launch "${P[@]}" parts-images-s$seed $seed --views=1 "${EXTRA[0]}" --extra_text_cache= "${RECIPE_ARGS[@]}"
        launch "${P[@]}" parts-texts-s$seed $seed --views=1 --extra_image_cache= "${EXTRA[1]}" "${RECIPE_ARGS[@]}"
    done
fi
if [ -n "${TEXT:-}" ]; then # the text tower's start, for No KD (a1) and the full method (a5)
    for seed in $TEXT_SEEDS; do
        sfx=; [ $seed = 0 ] || sfx=-s$seed
        for a in a1 a5; do
            AC="config/$a.py config/shapes.py"
            [[ " $SEEDS " = *" $seed "* && " $RUNS " = *" $a "* ]] || launch "$AC" $a$sfx $seed
            launch "$AC" $a-inherit$sfx $seed --text_init=teacher
            launch "$AC" $a-mlm$sfx $seed --text_init=$W/bert
        done
    done
fi
for p in $(jobs -p); do wait $p; done
step "5. eval every student on the test split, then the tables"
for run in "${runs[@]}"; do # two at a time, like the training runs
    [ $(jobs -rp | wc -l) -lt 2 ] || wait -n
    $PY eval.py --cache=$(cache_of $run)/test --ckpt=$O/$run --locca=False &
done
for p in $(jobs -p); do wait $p; done
step "6. zero-shot on the single-object test images (the world's caption templates), student vs teacher speed"
ZS=(--zeroshot=$W/annotations/instances_test2017.json "--templates=a {c}|a picture of a {c}|there is a {c}")
$PY eval.py --ckpt=$T "${ZS[@]}" --out=$C/test/eval.json
for run in "${runs[@]}"; do # seed 0 of the runs Table 1 can show, one at a time: the timings share the CPU
    [[ $run = a[0-9] || $run = tinysiglip ]] || continue # with nothing of ours
    $PY eval.py --ckpt=$O/$run "${ZS[@]}"
    $PY bench.py --speed=True --ckpt=$O/$run --cache=$(cache_of $run)/test --device=cpu --speed_seconds=0.5
done
if [ -n "${TERMS:-}" ]; then
    step "7. what each SigLIP 2 term adds: a small Siglip2Model, a sigmoid-only base, then each objective, 2 seeds"
    H=$O/terms-model; CT=$D/cache/shapes-terms # random weights; the world cached with its processor (no teacher)
    $PY -c "import sys; sys.path.insert(0, 'data/shapes'); from prepare import make_tiny_hf_teacher as m; \
m('$H', '$W/processor', kind='siglip2', image_size=32, patch=4, width=64, layers=4)"
    for s in web val test; do
        $PY cache_teacher.py --data_dir=$W --split=$s --teacher=none --processor=$H --out_dir=$CT --num_workers=1 \
            2>&1 | { grep -v "img/s\]" || true; }
    done
    TC=(--train_cache=$CT/web --val_cache=$CT/val)
    echo "   the base: 1,500 sigmoid-only steps from random weights (2 threads)"
    $PY train.py config/siglip2_terms_shapes.py "${TC[@]}" --hf_model=$H --out_dir=$O/terms-base --lambda_locca=0 \
        --gamma=0 --max_iters=1500 --learning_rate=2e-3 --warmup_iters=100 --num_threads=2 "${TBASE[@]}" \
        > $O/terms-base.log 2>&1 || { echo "FAILED: terms-base"; tail -n 20 $O/terms-base.log; exit 1; }
    tail -n 1 $O/terms-base.log | sed "s/^/terms-base: /"
    echo "   the arms: each objective from the base, equal steps, two at a time"
    runs=(terms-base)
    for seed in 0 1; do
        sfx=; [ $seed = 0 ] || sfx=-s$seed
        A=("${TC[@]}" --hf_model=$O/terms-base "${TARM[@]}") # after student()'s cache and STUD flags
        launch config/siglip2_terms_shapes.py terms-sigmoid$sfx $seed "${A[@]}" --lambda_locca=0 --gamma=0
        launch config/siglip2_terms_shapes.py terms-locca$sfx $seed "${A[@]}" --gamma=0
        launch config/siglip2_terms_shapes.py terms-silc-tips$sfx $seed "${A[@]}" --lambda_locca=0
        launch config/siglip2_terms_shapes.py terms-complete$sfx $seed "${A[@]}"
    done
    for p in $(jobs -p); do wait $p; done
    for run in "${runs[@]}"; do # retrieval + ARef (runs with a decoder) + the dense probe fitted on val
        [ $(jobs -rp | wc -l) -lt 2 ] || wait -n
        $PY eval.py --cache=$CT/test --ckpt=$O/$run --dense_probe=$CT/val 2>&1 | tail -n 1 &
    done
    for p in $(jobs -p); do wait $p; done
fi
$PY report.py --runs_dir=$O --teacher_eval=$C/test/eval.json --out=$O/report.md
step "done in $(( $(date +%s) - t0 ))s: $O/report.md"
