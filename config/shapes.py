# Synthetic "shapes" world on a laptop CPU (add after an A/B/C config): tiny towers,
# 32 px, 5,000 paired student images (data/shapes/prepare.py), 2,000 steps: the setting that
# puts the no-KD student (A1) at 0.5-0.75x of its teacher, as the seed's (README, "The demo
# world"), each run flat on val over its last 20 % (report.py's convergence table).
#   python train.py config/a5.py config/shapes.py --out_dir=out/shapes/a5
# Run by demo.sh after it has cached the demo teacher (data/shapes/teacher).
train_cache = 'cache/shapes/train'
val_cache = 'cache/shapes/val'
val_images = 500
image_size = 32 # the world's own resolution (the A/B/C configs' students use train.py's 224)
image_model = 'vit_tiny_patch16_224'
# ≈ 1/6 of the demo teacher
image_kwargs = {'patch_size': 8, 'embed_dim': 64, 'depth': 2, 'num_heads': 2}
text_width = 64
text_depth = 1
text_heads = 2
batch_size = 128
max_iters = 2000
warmup_iters = 50
learning_rate = 2e-3
min_lr = 1e-4
eval_interval = 200
log_interval = 50
device = 'cpu'
dtype = 'float32'
num_threads = 1 # demo.sh runs two students side by side on 2 cores
dino_dim = 256 # A6 on the demo: small DINO heads
dino_hidden = 256
dino_bottleneck = 64
n_local = 4
