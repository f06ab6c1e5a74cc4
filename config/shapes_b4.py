# Table B in miniature, B4: the demo's SigLIP 2 L stand-in (data/shapes/teacher-l) x the
# ViT-Small stand-in (config/shapes.py's student, a5's), full method (A5 losses). The seed's B4 is
# A5; here Table B's L is its own family's (config/shapes_teacher_b.py), so B4 is its own run.
# Its caches: demo.sh's step 3 with --teacher=data/shapes/teacher-l --out_dir=cache/shapes-l.
#   python train.py config/shapes_b4.py      (FULL=1 bash demo.sh runs it)
exec(open('config/b4.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/b4'
train_cache = 'cache/shapes-l/train'
val_cache = 'cache/shapes-l/val'
