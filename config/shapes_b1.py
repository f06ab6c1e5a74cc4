# Table B in miniature, B1: the demo's SigLIP 2 B stand-in (data/shapes/teacher-b) x the
# ViT-Tiny stand-in (config/shapes_tiny.py), full method (A5 losses).
# Its caches: demo.sh's step 3 with --teacher=data/shapes/teacher-b --out_dir=cache/shapes-b.
#   python train.py config/shapes_b1.py      (FULL=1 bash demo.sh runs it)
exec(open('config/b1.py').read())
exec(open('config/shapes.py').read())
exec(open('config/shapes_tiny.py').read())
out_dir = 'out/shapes/b1'
train_cache = 'cache/shapes-b/train'
val_cache = 'cache/shapes-b/val'
