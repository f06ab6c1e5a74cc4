# The demo teacher: trained from scratch on the large synthetic "web" split (20k images), standing in for a
# SigLIP 2 checkpoint trained on billions of pairs. Then cached like any teacher (demo.sh).
#   python train.py config/shapes_teacher.py      (~4 min on 2 CPU cores)
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
max_iters = 800
warmup_iters = 50
learning_rate = 2e-3
min_lr = 1e-4
eval_interval = 400
log_interval = 50
device = 'cpu'
dtype = 'float32'
