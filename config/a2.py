# A2 — feature distillation only: MSE of normalised student vs teacher embeddings, both towers, no
# pairs loss.
# 1 GPU: python train.py config/a2.py   (same cache and cost as config/a1.py)
out_dir = 'out/a2'
lambda_contrast = 0.0
lambda_feat = 1.0
lambda_affinity = 0.0
