# TinySigLIP — the recipe (Table 1's "Student (TinySigLIP)"): feature + affinity
# distillation, fed like MobileCLIP's reinforced data (DataCompDR: stored augmented
# views, each with its teacher embedding) plus unpaired data (DIME-FM):
#   - COCO Karpathy train+restval pairs, K = 8 teacher views per image
#     (view 0 the full image);
#   - COCO unlabeled2017 (123k images, no captions) as unpaired images, K = 8 each;
#   - a caption corpus as unpaired texts (one caption per line, e.g. CC3M's).
# caches (one GPU, once; the val/test caches as for config/a1.py), teacher flags
#   T="--teacher=google/siglip2-large-patch16-256 --device=cuda --dtype=bfloat16":
#   python cache_teacher.py --data_dir=/data/coco --karpathy=/data/coco/dataset_coco.json \
#       --split=train+restval --views=8 --out_dir=cache/coco-L $T
#   python cache_teacher.py --data_dir=/data/coco --split=unlabeled --views=8 \
#       --out_dir=cache/coco-L-img $T
#   python cache_teacher.py --caption_file=/data/cc3m/captions.txt --split=cc3m \
#       --out_dir=cache/coco-L-txt $T
# 1 GPU: python train.py config/tinysiglip.py
# eval:  python eval.py --cache=cache/coco-L/test --ckpt=out/tinysiglip
# Cost: 3 student batches a step (pairs, unpaired images, unpaired captions).
# The demo twin is config/shapes_tinysiglip.py.
exec(open('config/a5.py').read())
out_dir = 'out/tinysiglip'
# MobileCLIP's (w_CLIP, w_distill) = (0, 1) on DataCompDR-12M: the teacher is the
# only target (on the demo too: NOTES.md, "Reinforced distillation")
lambda_contrast = 0.0
# MobileCLIP stores 10-30 views per image; 8 keeps COCO's view embeddings at
# ~1.9 GB (113k images x 8 x D=1024 x fp16)
views = 8
extra_image_cache = 'cache/coco-L-img/unlabeled'
extra_text_cache = 'cache/coco-L-txt/cc3m'
lambda_extra_feat = 1.0
lambda_extra_affinity = 1.0
# DIME-FM's cross-modal similarity distillation: the affinity term on unpaired images x unpaired
# captions
lambda_extra_cross = 1.0
max_iters = 20000 # 4x A5: the unpaired sets are larger than the paired one
