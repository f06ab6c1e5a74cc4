# A6 — A5 + the SigLIP 2 terms on the student: LocCa decoder (§2.2) and SILC/TIPS from 80 %
# (§2.3).
# 1 GPU: python train.py config/a6.py   (same cache as config/a1.py; several times the A5 step:
#   the decoder's passes and the SILC/TIPS views, step-time ratios in bench.py's docstring)
exec(open('config/a5.py').read())
out_dir = 'out/a6'
lambda_locca = 1.0 # §2.2: equal weight with the sigmoid loss
# §2.3 size factor: a ViT-S student takes the smallest model's γ (NOTES.md, U25)
gamma = 0.25
# NOTES.md, U14: DINOv2's 65,536 prototypes are sized for 100M-image runs; COCO is small
dino_dim = 16384
