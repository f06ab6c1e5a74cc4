# C1 — CNN student resnet50 (pooled 2048-d, feature map as decoder tokens),
# teacher SigLIP 2 L (cache/coco-L, as config/a1.py), full method (A5 losses). CNN towers cannot
# use TIPS masking.
# 1 GPU: python train.py config/c1.py ; eval: python eval.py --cache=cache/coco-L/test --ckpt=out/c1
exec(open('config/a5.py').read())
out_dir = 'out/c1'
image_model = 'resnet50'
