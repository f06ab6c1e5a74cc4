# The demo teacher: trained from scratch on the large synthetic "web" split (20k
# images), standing in for a SigLIP 2 checkpoint trained on billions of pairs, to
# convergence (its curve: log.jsonl beside it). Trained once, kept in
# the repo as data/shapes/teacher (weights, log.jsonl with the curve) and cached like any
# teacher by demo.sh, so every machine distils from the same ceiling. To retrain it:
#   RETRAIN_TEACHER=1 bash demo.sh
# (packs web + val with --max_length=32, then this config)
out_dir = 'out/shapes/teacher'
train_cache = 'cache/shapes-raw/web'
val_cache = 'cache/shapes-raw/val'
val_images = 500
image_size = 32 # the world's own resolution, not train.py's 224 student default
embed_dim = 128
image_model = 'vit_tiny_patch16_224'
image_kwargs = {'patch_size': 8, 'embed_dim': 128, 'depth': 3, 'num_heads': 4}
text_width = 128
text_depth = 2
text_heads = 4
lambda_contrast = 1.0
batch_size = 128
# long enough to leave the b = -10 plateau on any seed
max_iters = 4000
# cosine to min_lr by 3000, then 1000 flat steps: the curve must be flat at the end
lr_decay_iters = 3000
warmup_iters = 50
learning_rate = 2e-3
min_lr = 1e-4
eval_interval = 250
log_interval = 50
device = 'cpu'
dtype = 'float32'
num_threads = 1 # runs beside other jobs: 1 thread each, not 2 competing
