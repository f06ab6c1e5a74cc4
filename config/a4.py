# A4 — affinity distillation (KL of in-batch similarity rows, teacher's own scale) + contrastive.
# 1 GPU: python train.py config/a4.py   (same cache and cost as config/a1.py)
out_dir = 'out/a4'
lambda_contrast = 1.0
lambda_feat = 0.0
lambda_affinity = 1.0
