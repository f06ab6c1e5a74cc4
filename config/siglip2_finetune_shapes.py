# The synthetic-world twin of config/siglip2_finetune_coco.py: a tiny random Siglip2Model
# (data/shapes/prepare.py make_tiny_hf_teacher) trained with the complete objective on a
# --teacher=none cache made with its processor; from a fresh clone, the world first:
#   python data/shapes/prepare.py
#   python -c "import sys; sys.path.insert(0, 'data/shapes'); from prepare import \
#       make_tiny_hf_teacher; make_tiny_hf_teacher('out/hf-tiny', 'data/shapes/processor', \
#       kind='siglip2')"
#   for s in train val; do python cache_teacher.py --data_dir=data/shapes --split=$s \
#       --teacher=none --processor=out/hf-tiny --out_dir=cache/shapes-hf; done
#   python train.py config/siglip2_finetune_shapes.py
exec(open('config/siglip2_finetune_coco.py').read())
out_dir = 'out/shapes/siglip2_finetune'
hf_model = 'out/hf-tiny'
train_cache = 'cache/shapes-hf/train'
val_cache = 'cache/shapes-hf/val'
val_images = 500
dino_dim = 256 # small DINO heads, as config/shapes.py
dino_hidden = 256
dino_bottleneck = 64
n_local = 4
# a random tiny model learns from scratch: the demo's student lr, not a fine-tuning one
learning_rate = 2e-3
min_lr = 1e-4
batch_size = 32
max_iters = 300
warmup_iters = 10
eval_interval = 100
log_interval = 50
device = 'cpu'
dtype = 'float32'
num_threads = 1
