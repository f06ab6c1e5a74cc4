# Table B in miniature, B5: the demo's SigLIP 2 So400m stand-in (data/shapes/teacher-so) x the
# ViT-Small stand-in (config/shapes.py's student, a5's), full method (A5 losses).
# Its caches: demo.sh's step 3 with --teacher=data/shapes/teacher-so --out_dir=cache/shapes-so.
#   python train.py config/shapes_b5.py      (FULL=1 bash demo.sh runs it)
exec(open('config/b5.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/b5'
train_cache = 'cache/shapes-so/train'
val_cache = 'cache/shapes-so/val'
