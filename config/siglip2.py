# SigLIP 2 recipe without a distillation teacher: sigmoid + LocCa from the start, SILC + TIPS from
# 80% (paper §2.1-2.3: Adam 1e-3, decoupled wd 1e-4, clip 1, cosine). The cache only needs pixels +
# tokens:
#   python cache_teacher.py --data_dir=/data/coco --split=train --teacher=none \
#       --processor=<siglip2 dir> --out_dir=cache/coco-raw
#   python train.py config/siglip2.py
#   on the synthetic world (a --teacher=none cache, as demo.sh packs it):
#   python train.py config/siglip2.py config/shapes.py --train_cache=cache/shapes-raw/web \
#       --val_cache=cache/shapes-raw/val --out_dir=out/shapes/siglip2
out_dir = 'out/siglip2'
train_cache = 'cache/coco-raw/train'
val_cache = 'cache/coco-raw/val'
embed_dim = 768
lambda_contrast = 1.0
lambda_locca = 1.0
gamma = 0.25 # §2.3 γ for B-size models
image_model = 'vit_base_patch16_224'
text_width = 768
text_depth = 12
text_heads = 12
learning_rate = 1e-3
weight_decay = 0.1 # = decoupled 1e-4 at lr 1e-3 in torch's lr-coupled AdamW
beta2 = 0.999 # Adam defaults in the paper (big_vision scale_by_adam)
warmup_iters = 1000
