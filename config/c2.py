# C2 — CNN student mobilenetv3_large_100 (pooled 1280-d, feature map as decoder tokens),
# teacher SigLIP 2 L (cache/coco-L, as config/a1.py), full method (A5 losses). CNN towers cannot
# use TIPS masking.
# 1 GPU: python train.py config/c2.py ; eval: python eval.py --cache=cache/coco-L/test --ckpt=out/c2
exec(open('config/a5.py').read())
out_dir = 'out/c2'
image_model = 'mobilenetv3_large_100'
