# A7 — the seed's Table 2 row "w/o Contrastive": feature MSE + affinity KL to the
# teacher, no pairs loss (A2 drops affinity too; A7 is A5 minus its contrastive term).
# The student's logit scale is still learned, through the affinity rows it must match.
# 1 GPU: python train.py config/a7.py   (same cache and cost as config/a1.py)
out_dir = 'out/a7'
lambda_contrast = 0.0
lambda_feat = 1.0
lambda_affinity = 1.0
