# A1 — no distillation: the student learns from COCO pairs alone (sigmoid loss),
# the ablation's floor.
# 1 GPU: python train.py config/a1.py
# cache (then the same with --split=val and --split=test):
#   python cache_teacher.py --data_dir=/data/coco --karpathy=/data/coco/dataset_coco.json \
#       --split=train+restval --teacher=google/siglip2-large-patch16-256 \
#       --out_dir=cache/coco-L --device=cuda --dtype=bfloat16
# Student ViT-Small/16 @ 224 px (train.py's default; the cache stores 256) + 6×384 text
# tower; 5000 iters × 256 ≈ 11 epochs. Cost: bench.py's docstring (measured step times).
# eval: python eval.py --cache=cache/coco-L/test --ckpt=out/a1
out_dir = 'out/a1'
lambda_contrast = 1.0
lambda_feat = 0.0
lambda_affinity = 0.0
