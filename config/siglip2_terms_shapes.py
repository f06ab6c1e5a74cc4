# What each SigLIP 2 term adds, on the synthetic world (NOTES.md "What each term adds"; run by
# TERMS=1 bash demo.sh): a small random Siglip2Model (NaFlex, 32 px as 8 x 8 patches of 4 px,
# 64 wide, 4 layers per tower) is trained once with the sigmoid loss alone (terms-base), then
# trained on from that base at equal steps with each objective:
#   python train.py config/siglip2_terms_shapes.py --lambda_locca=0 --gamma=0 \
#       --hf_model=out/shapes/terms-base --out_dir=out/shapes/terms-sigmoid-s0     # sigmoid only
#   ... --gamma=0                      # + LocCa (Cap + ARef + GCap, parallel prediction)
#   ... --lambda_locca=0               # + SILC/TIPS (EMA teacher from the arm's first step)
#   ...                                # the complete objective
# The base plays the paper's first 80 % (sigmoid + ...), the arms its last 20 %, where SILC/TIPS
# switch on (§2.3): hence switch = 0. The LocCa decoder is new in each arm (see NOTES.md).
exec(open('config/siglip2_finetune_shapes.py').read())
hf_model = 'out/shapes/terms-base' # the base run (an HF dir); demo.sh passes it
train_cache = 'cache/shapes-terms/web' # 20k images: the arms do not run out of pairs
val_cache = 'cache/shapes-terms/val'
out_dir = 'out/shapes/terms-complete-s0'
switch = 0.0
gamma = 0.25 # §2.3: the smallest model's γ (B), as config/a6.py for the ViT-S student
batch_size = 64
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 20
max_iters = 600
eval_interval = 600
log_interval = 50
val_images = 500
