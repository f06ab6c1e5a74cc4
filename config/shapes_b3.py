# Table B in miniature, B3: the demo's SigLIP 2 B stand-in (data/shapes/teacher-b) x the
# ViT-Small stand-in (config/shapes.py's student, a5's), full method (A5 losses).
# Its caches: demo.sh's step 3 with --teacher=data/shapes/teacher-b --out_dir=cache/shapes-b.
#   python train.py config/shapes_b3.py      (FULL=1 bash demo.sh runs it)
exec(open('config/b3.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/b3'
train_cache = 'cache/shapes-b/train'
val_cache = 'cache/shapes-b/val'
