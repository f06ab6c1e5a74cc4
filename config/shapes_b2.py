# Table B in miniature, B2: the demo's SigLIP 2 L stand-in (data/shapes/teacher-l) x the
# ViT-Tiny stand-in (config/shapes_tiny.py), full method (A5 losses).
# Its caches: demo.sh's step 3 with --teacher=data/shapes/teacher-l --out_dir=cache/shapes-l.
#   python train.py config/shapes_b2.py      (FULL=1 bash demo.sh runs it)
exec(open('config/b2.py').read())
exec(open('config/shapes.py').read())
exec(open('config/shapes_tiny.py').read())
out_dir = 'out/shapes/b2'
train_cache = 'cache/shapes-l/train'
val_cache = 'cache/shapes-l/val'
