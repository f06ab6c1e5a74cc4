# B1 — teacher SigLIP 2 B (google/siglip2-base-patch16-224)
#   × student ViT-Tiny (vit_tiny_patch16_224), full method (A5 losses).
# Seed plan B: B1 Base×Tiny, B2 Large×Tiny, B3 Base×Small, B4 Large×Small, B5 So400m×Small.
# The student trains at 224 px (train.py's default) whatever size the cache stores (NOTES.md).
# needs the cache (and the same with --split=val, --split=test):
#   python cache_teacher.py --data_dir=/data/coco --karpathy=/data/coco/dataset_coco.json \
#   --split=train+restval --teacher=google/siglip2-base-patch16-224 \
#   --out_dir=cache/coco-B --device=cuda --dtype=bfloat16
# 1 GPU: python train.py config/b1.py
# eval: python eval.py --cache=cache/coco-B/test --ckpt=out/b1
exec(open('config/a5.py').read())
out_dir = 'out/b1'
train_cache = 'cache/coco-B/train+restval'
val_cache = 'cache/coco-B/val'
image_model = 'vit_tiny_patch16_224'
