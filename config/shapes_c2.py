# Table C in miniature, C2: a MobileNet student of the demo teacher, full method (A5 losses),
# beside the ViT student of config/shapes.py (a5): timm's mobilenetv3_small_050, the smallest
# MobileNetV3 timm builds (its width is fixed by the name), 0.57M image params, 5x the ViT's
# 0.11M (most of it the 1024-d head conv).
#   python train.py config/shapes_c2.py      (FULL=1 bash demo.sh runs it)
exec(open('config/c2.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/c2'
image_model = 'mobilenetv3_small_050'
image_kwargs = {}
