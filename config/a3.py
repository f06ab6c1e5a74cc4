# A3 — feature distillation + the student's own contrastive (sigmoid) loss.
# 1 GPU: python train.py config/a3.py   (same cache and cost as config/a1.py)
out_dir = 'out/a3'
lambda_contrast = 1.0
lambda_feat = 1.0
lambda_affinity = 0.0
