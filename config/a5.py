# A5 — the full distillation method: feature MSE + affinity KL + contrastive.
# 1 GPU: python train.py config/a5.py   (same cache and cost as config/a1.py)
# eval: python eval.py --cache=cache/coco-L/test --ckpt=out/a5
# tables: python report.py --runs_dir=out
out_dir = 'out/a5'
lambda_contrast = 1.0
lambda_feat = 1.0
lambda_affinity = 1.0
