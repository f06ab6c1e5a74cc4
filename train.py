"""
Train a student from a teacher cache: distillation (feature MSE + affinity KL +
contrastive) and/or the complete SigLIP 2 objective (sigmoid + LocCa + SILC/TIPS) —
no teacher runs in the loop.

    # 1 GPU, COCO cache of SigLIP 2 L
    python train.py config/a5.py
    # 8 GPUs (embeddings gathered; each rank its own rows of the loss matrices)
    torchrun --standalone --nproc_per_node=8 train.py config/a5.py
    # laptop smoke
    python train.py config/a5.py --device=cpu --dtype=float32 --max_iters=20 --batch_size=16
    # continue exactly where ckpt.pt stopped
    python train.py config/a5.py --init_from=resume

Writes out_dir/{ckpt.pt, model.safetensors, config.json, processor files, [decoder.*],
meta.json, log.jsonl}.
"""
import os, sys, json, time, math, shutil, atexit, subprocess
from concurrent.futures import ThreadPoolExecutor
import timm
import torch
import torch.distributed as dist
from model import (Student, StudentConfig, LoccaDecoder, DINOHead, HFSiglip, HFConfig,
                   locca_decoder_args, inherit_text_tower, is_trained_dir, load_trained,
                   text_encoder_problem, tokenize, TEXT_ENCODER_DIR)
from loss import SigLIP2Loss, DistillLoss, crop_boxes, rank_rows
from eval import retrieval_metrics, embed_student
from cache import (open_cache, PAIRED, what_changed, atomic_write, write_json, read_json, Rows,
                   hash_files, processor_files, recache_command, sha256, save_problem,
                   SAVE_FILES, check_save, captions, check_captions)
from cache_teacher import local_dir, teacher_files

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out/a5'
eval_interval = 500 # val retrieval + checkpoint every N iters (and at the last one)
log_interval = 10
init_from = 'scratch' # 'scratch' or 'resume' (from out_dir/ckpt.pt)
# data (teacher cache)
train_cache = 'cache/coco-L/train+restval'
val_cache = 'cache/coco-L/val'
val_images = 1000 # fixed val subset (first N images, all their captions) -> deterministic R@1
# reinforced views: each step one of the cache's first `views` stored views per image;
views = 1 # 1 = the full image only
# unpaired images (an image-only cache, same teacher): feature + image-image affinity terms
extra_image_cache = ''
# unpaired captions (a text-only cache, same teacher): feature + text-text affinity terms
extra_text_cache = ''
extra_batch_size = 0 # unpaired images and captions per step, each; 0 = batch_size
# student model
# any timm model: vit_tiny_patch16_224, resnet50, mobilenetv3_large_100, ...
image_model = 'vit_small_patch16_224'
# seed: students at 224x224; cached pixels (the teacher's 256/384) resized on the fly;
image_size = 224 # 0 = the cache's
# extra timm.create_model kwargs (tiny demo towers: patch_size, embed_dim, depth, num_heads)
image_kwargs = {}
pretrained = False # timm ImageNet weights (downloaded from the hub on your machine)
text_width = 384
text_depth = 6
text_heads = 6
text_init = '' # '' = the text tower from scratch; 'teacher' = inherited from the cache's teacher
               # (TinyCLIP's manual inheritance); else an HF text encoder (dir or hub id)
embed_dim = 0 # 0 = the teacher's embedding dim (manifest); set it for a cache without teacher
# a transformers SigLIP / SigLIP 2 as the model trained instead of the student: an HF dir
# or hub name, its cache made with its own processor (cache_teacher.py --processor=<it>);
# the image_* / text_* / embed_dim keys above are then unused
hf_model = ''
hf_from_config = False # True: random weights from hf_model's config.json (from scratch)
# loss: total = λ_feat·L_feat + λ_affinity·L_affinity
#   + SigLIP2Loss(λ_contrast·L_sig + λ_locca·L_LocCa + γ·(...))
contrast = 'sigmoid' # 'sigmoid' (SigLIP) or 'infonce'
# sigmoid loss: each rank's image rows against all ranks' texts (b x B_global logits), in
# checkpointed chunks of loss_chunk rows; 0 = chosen by size (one block up to 64M logits, ~1.1
# GiB, else chunks of 64M: loss.sigmoid_chunk), so it never needs setting
loss_chunk = 0
lambda_contrast = 1.0
lambda_feat = 0.0
lambda_affinity = 0.0
affinity_kind = 'softmax' # 'softmax' (KL over in-batch rows) or 'sigmoid' (per-pair Bernoulli KL)
lambda_extra_feat = 1.0 # on the unpaired batches (DIME-FM): feature MSE to the teacher, per tower
lambda_extra_affinity = 1.0 # ... and KL of the in-batch image-image / text-text similarity rows
# the affinity term on unpaired images x unpaired captions (DIME-FM's cross-modal KD)
lambda_extra_cross = 0.0
lambda_locca = 0.0 # 1.0 = SigLIP 2 (§2.2 equal weight with the sigmoid loss)
decoder_depth = 0 # 0 = text_depth // 2 (SigLIP 2 §2.2)
gamma = 0.0 # SILC/TIPS size factor γ (§2.3: 0.25 B, 0.5 L, 1.0 So400m); 0 = off
lambda_silc = 1.0 # §2.3
lambda_tips = 0.25 # §2.3
switch = 0.8 # SILC/TIPS + EMA teacher from this training fraction on (§2.3)
ema_momentum = 0.996
n_local = 8 # SILC local crops (§2.3)
local_size = 0 # 0 = image_size // 2
dino_dim = 65536 # DINO head prototypes K (NOTES.md, U14; small runs use fewer)
dino_hidden = 2048
dino_bottleneck = 256
# optimizer
# per rank per micro-step; the batch-level losses see batch_size * world_size pairs
batch_size = 256
grad_accum = 1
learning_rate = 1e-3
# torch AdamW (lr-coupled): 0.1 at lr 1e-3 = SigLIP 2's decoupled 1e-4 (§2.1)
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0 # §2.1
# lr schedule
max_iters = 5000
warmup_iters = 250
min_lr = 1e-5
lr_decay_iters = 0 # cosine reaches min_lr here, then stays flat (nanoGPT); 0 = max_iters
# system
device = 'cuda'
dtype = 'bfloat16' # autocast dtype on GPU; 'float32' on CPU
compile = False
seed = 0
# CPU threads (0 = torch default); 1 when running jobs side by side on a small machine
num_threads = 0
config_keys = [k for k,v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str, dict))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------
# distributed + system init
ddp = int(os.environ.get('RANK', -1)) != -1
rank, world = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 1)
if ddp:
    dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    if device.startswith('cuda'):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
master = rank == 0
def print0(*a, **k):
    if master:
        print(*a, **k, flush=True)
if num_threads:
    torch.set_num_threads(num_threads)
device_type = 'cuda' if 'cuda' in device else 'cpu'
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
autocast = torch.autocast(device_type=device_type, dtype=getattr(torch, dtype),
                          enabled=dtype != 'float32')
for k, ok in [('contrast', contrast in ('sigmoid', 'infonce')),
              ('affinity_kind', affinity_kind in ('softmax', 'sigmoid')),
              ('init_from', init_from in ('scratch', 'resume')),
              ('batch_size', batch_size >= 2),
              ('max_iters', max_iters >= 0),
              ('eval_interval', eval_interval > 0),
              ('log_interval', log_interval > 0),
              ('val_images', val_images > 0),
              ('grad_accum', grad_accum > 0),
              ('loss_chunk', loss_chunk >= 0),
              ('warmup_iters', warmup_iters >= 0)]:
    if not ok:
        sys.exit(f"train.py: bad value {k}={globals()[k]!r}")
# SILC/TIPS switch on at the training fraction `switch`: outside [0, 1) they never would
for k, ok, valid in [('gamma', gamma >= 0, '>= 0 (0 = SILC/TIPS off)'),
                     ('switch', not gamma or 0 <= switch < 1, 'in [0, 1) when gamma > 0')]:
    if not ok:
        sys.exit(f"train.py: {k}={globals()[k]!r} must be {valid}")
if text_init and hf_model:
    sys.exit(f"train.py: text_init={text_init!r} builds the student's text tower; "
             f"hf_model={hf_model!r} trains its own: set one of them")
text_encoder_init = text_init not in ('', 'teacher') # an HF text encoder, its own tokenizer
if not hf_model and not timm.is_model(image_model):
    sys.exit(f"train.py: unknown timm model image_model={image_model!r} "
             f"(see timm.list_models('vit_*'))")

# -----------------------------------------------------------------------------
# one train.py per out_dir: an O_EXCL lock file with our pid (two runs would interleave
# log.jsonl, overwrite ckpt.pt)
lock = os.path.join(out_dir, 'lock')
def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError: # someone else's live process
        return True
    return True
if master:
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd = None
        while fd is None:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                txt = open(lock).read().strip()
                # empty: killed between create and write
                pid = int(txt) if txt.isdigit() else None
                if pid is not None and pid_alive(pid):
                    sys.exit(f"train.py: {out_dir} is in use by a run with pid {pid} "
                             f"(lock file {lock}); wait for it or choose another out_dir "
                             f"(delete the lock only if pid {pid} is not a train.py run)")
                print0(f"train.py: taking over the stale lock {lock} of pid {pid}, "
                       f"which is no longer running")
                os.remove(lock)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    except OSError as e: # out_dir is a file, read-only, on a full disk, ...
        sys.exit(f"train.py: cannot use out_dir={out_dir!r}: {e.strerror or e}")
    # on every exit but kill -9, which leaves a stale lock the next run takes over
    def release_lock():
        if os.path.isfile(lock) and open(lock).read() == str(os.getpid()):
            os.remove(lock)
    atexit.register(release_lock)
ckpt, saved_iter, repair = None, None, False
if init_from == 'resume':
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.isfile(path):
        sys.exit(f"train.py: --init_from=resume, but there is no {path}")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        # truncated copy, disk error: name the file instead of a zip-reader traceback
        sys.exit(f"train.py: cannot read {path}, truncated or corrupt "
                 f"({type(e).__name__}: {str(e).splitlines()[0]})")
    saved_iter = ckpt['iter_num']
    # the keys that shape the model and the loss module: the checkpoint's state fits only its
    # own, so a changed one is refused, never ignored (max_iters, lr, ... may change)
    shape_keys = ('hf_model', 'hf_from_config', 'image_model', 'image_size', 'image_kwargs',
                  'text_width', 'text_depth', 'text_heads', 'text_init', 'embed_dim',
                  'lambda_locca', 'decoder_depth', 'gamma', 'lambda_silc', 'lambda_tips',
                  'dino_dim', 'dino_hidden', 'dino_bottleneck')
    changed = [f"{k}={config[k]!r} (ckpt.pt: {ckpt['config'][k]!r})" for k in shape_keys
               if k in ckpt['config'] and ckpt['config'][k] != config[k]]
    if changed:
        sys.exit(f"train.py: --init_from=resume with {', '.join(changed)}: these shape the "
                 f"model and loss saved in {path}; resume with its values, or train into "
                 f"another out_dir")
    # ckpt.pt (moved in first) is whole, but the rest of its save may not be: a kill during
    # the save. Then the resumed run evaluates and saves at its first step, so the dir is one
    # complete save again even when ckpt.pt is the last iter
    problem = save_problem(out_dir)
    repair = problem is not None
    if repair:
        print0(f"train.py: {problem}: resuming from ckpt.pt (iter {saved_iter}) and saving "
               f"it whole again")

# -----------------------------------------------------------------------------
# data: caches memory-mapped (uint8 pixels, fp16 embeddings stay in the shard files; ids
# in memory), checked before any long work; each step gathers its rows, so RSS does not
# grow with the cache and ranks share the pages
# paired caches (an image-only or text-only one trains on nothing it should); the training
# cache of the val cache's teacher, holding none of its images
val, vman = open_cache(val_cache, 'train.py', needs=PAIRED, log=print0)
data, man = open_cache(train_cache, 'train.py', needs=PAIRED, same_teacher=(vman, val_cache),
                       evaluated=(val, vman, val_cache), log=print0)
# content, not paths: `./cache/x` and `cache/x` are one cache
if ckpt and ckpt['fingerprint'] != man['fingerprint']:
    sys.exit(f"train.py: resume: {train_cache} is not the cache {out_dir}/ckpt.pt "
             f"was trained on: {what_changed(ckpt['cache_content'], man['content'])}")
has_teacher = 'image_embeds' in data
if (lambda_feat or lambda_affinity) and not has_teacher:
    sys.exit(f"train.py: lambda_feat/lambda_affinity need teacher embeddings, "
             f"but {train_cache} was cached with teacher=none")
embed_dim = embed_dim or man['embed_dim'] or 0
if not embed_dim and not hf_model:
    sys.exit("train.py: the cache has no teacher: set --embed_dim")
if has_teacher and embed_dim != man['embed_dim'] and not hf_model:
    sys.exit(f"train.py: embed_dim={embed_dim} but the teacher in {train_cache} "
             f"has D={man['embed_dim']}")
# the teacher's own similarity for the affinity targets
t_scale, t_bias = man['logit_scale'], man['logit_bias']
n_views = data['view_embeds'].shape[1] if 'view_embeds' in data else 1
if views < 1 or views > n_views:
    sys.exit(f"train.py: views={views} but {train_cache} stores {n_views} view(s) "
             f"per image (cache_teacher.py --views=K)")

def load_extra(path, keys): # an unpaired cache: same teacher, never the val images
    if not path:
        return None, None
    return open_cache(path, 'train.py', needs=keys, same_teacher=(man, train_cache),
                      evaluated=(val, vman, val_cache), log=print0)
extra_img, _ = load_extra(extra_image_cache, ['pixels', 'image_embeds'])
extra_txt, xman = load_extra(extra_text_cache, ['input_ids', 'text_embeds'])
# views=K draws views of the extra images too: a cache without them must not quietly give
# the full image only
n_extra_views = (extra_img['view_embeds'].shape[1] if extra_img is not None
                 and 'view_embeds' in extra_img else 1)
if extra_img is not None and n_extra_views < views:
    sys.exit(f"train.py: views={views} but {extra_image_cache} stores {n_extra_views} "
             f"view(s) per image: cache it with cache_teacher.py --views={views} "
             f"or train with --views={n_extra_views}")
if lambda_extra_cross and (extra_img is None or extra_txt is None):
    print0("note: lambda_extra_cross needs both extra_image_cache and extra_text_cache: "
           "the cross term is off")

# MiB resident: private (anon) vs file pages (the maps, shared); PSS splits shared
# pages among ranks
def memory():
    out = {}
    # Linux only; elsewhere nothing is printed
    for f in ('/proc/self/status', '/proc/self/smaps_rollup'):
        for line in open(f) if os.path.isfile(f) else []:
            k, *v = line.split()
            if k in ('VmRSS:', 'RssAnon:', 'RssFile:', 'Pss:'):
                out[k[:-1]] = round(int(v[0]) / 1024, 1)
    return out
print(f"rank {rank}: memory after loading the caches (MiB): {memory()}", flush=True)

# rows of a per-caption/per-region table -> (start, count) per image, CSR style
def index(owner, ids):
    # both sorted by image id as written by cache_teacher.py
    pos = torch.searchsorted(ids, owner)
    count = torch.bincount(pos, minlength=len(ids))
    return torch.cumsum(count, 0) - count, count
# a memory-mapped key's per-shard tensors (a plain tensor is its own single shard)
def shards(x):
    return x.parts if isinstance(x, Rows) else [x]
# LocCa targets are stored padded to 64: trim the all-pad tail once (decoder cost ∝ L)
for k in ('cap', 'aref', 'gcap'):
    # shard by shard
    n_used = [int((p != 0).sum(1).max()) for p in shards(data[f'{k}_ids']) if len(p)]
    data[f'{k}_ids'] = data[f'{k}_ids'][:, :max(n_used + [1])]
cap_start, cap_count = index(data['caption_image_ids'], data['image_ids'])
# the caption length the student trains on: a teacher of ours must be cached at it
text_length = data['input_ids'].shape[1]
reg_start, reg_count = index(data['region_image_ids'], data['image_ids'])
N = len(data['image_ids'])
n_regions = len(data['region_image_ids'])
if batch_size * world > N:
    sys.exit(f"train.py: batch_size={batch_size} x {world} ranks > the {N} images "
             f"in {train_cache}")
# LocCa ARef/GCap need a box: images without one get weight 0 there
no_reg = int((reg_count == 0).sum())
if lambda_locca and no_reg:
    print0(f"LocCa: {no_reg} of {N} images in {train_cache} have no regions (boxes): "
           f"their ARef/GCap terms are skipped "
           f"(weight 0)" + ('; cache with --instances for ARef/GCap' if no_reg == N else ''))

# -----------------------------------------------------------------------------
# text_init: an HF text encoder (BERT, MiniLM) as the student's text tower, with its own
# tokenizer. The caches keep the caption strings, so any encoder's tokenizer works without
# re-caching: each cache's captions are tokenised once here into `student_ids` (M, Ls), rows
# aligned with input_ids, right-padded to Ls = the cache's caption length (the teacher's: 64
# for SigLIP 2, 32 on the demo; at most the encoder's positions), truncated there; get_batch
# and evaluate read that key instead of the teacher's ids
text_key, text_tok = 'input_ids', None
if text_encoder_init:
    from transformers import AutoConfig, AutoTokenizer
    # the config first: a vision or seq2seq model is refused by name, not by its tokenizer
    try:
        enc_config = AutoConfig.from_pretrained(text_init)
        problem = text_encoder_problem(enc_config)
        if problem:
            sys.exit(f"train.py: text_init={text_init!r} is {problem}")
        text_tok = AutoTokenizer.from_pretrained(text_init)
    except (OSError, ValueError) as e:
        sys.exit(f"train.py: cannot load text_init={text_init!r}: {str(e).splitlines()[0]}")
    # ids past the embedding table would crash or, on a GPU, read garbage
    if len(text_tok) > enc_config.vocab_size:
        sys.exit(f"train.py: text_init={text_init!r}: its tokenizer writes ids up to "
                 f"{len(text_tok) - 1}, its embedding table has {enc_config.vocab_size} rows "
                 f"(another model's tokenizer?)")
    if text_tok.pad_token_id is None:
        sys.exit(f"train.py: text_init={text_init!r}: its tokenizer has no pad token "
                 f"(the student pads captions and masks the padding)")
    for d, m, path in ((data, man, train_cache), (val, vman, val_cache),
                       (extra_txt, xman, extra_text_cache)):
        if d is not None:
            check_captions(d, m, path, 'train.py')
    text_length = min(text_length, getattr(enc_config, 'max_position_embeddings', text_length))
    for d in (data, val, extra_txt):
        if d is not None:
            d['student_ids'] = tokenize(text_tok, captions(d), text_length)
    text_key = 'student_ids'
    print0(f"text tower: text_init={text_init!r} ({enc_config.model_type}, "
           f"{len(text_tok)} tokens), captions tokenised at {text_length} tokens")

# The seed of one random stream, from (run seed, purpose, step, micro-step, rank): every draw
# depends on where it is made, not on what ran before it, so resume is exact and the prefetch
# thread changes nothing. The constants only keep a run's streams apart (others would do as
# well) and stay as first chosen, since new ones would change every draw and the demo's tables:
# a step takes 101 seeds (micro-steps 0..99, then the switch's at +100), a rank 7919, a run
# seed 1_000_003, the unpaired images and captions 7_777_777 and 2 * 7_777_777. Offset 0 is
# both the batch's and rank 0's losses': two generators drawing different things.
STREAM_OFFSETS = dict(batch=0, losses=0, switch=100, extra_images=7_777_777,
                      extra_captions=2 * 7_777_777)
def stream_seed(seed, purpose, step, micro=0, rank=0):
    return seed * 1_000_003 + step * 101 + micro + rank * 7919 + STREAM_OFFSETS[purpose]

# Everything one micro-step reads, gathered from the memory-mapped caches into CPU tensors (by
# the prefetch thread); the same global batch on every rank (seeded by step), each rank takes
# its B = batch_size rows; L the caption length, Lt a LocCa target's, D the teacher's dim:
#   pixels (B, 3, H, W) uint8, ids (B, L) long: each image and one of its captions
#   t_img, t_txt (B * world, D) float: the teacher's embeddings of all ranks' rows [teacher]
#   box (B, 4) float xyxy in [0, 1], flip (B,) bool: the drawn stored view [views > 1]
#   locca [decoder]: cap_ids (B, Lt) long, cap_prefix (B,) long, and with boxes aref_ids,
#     aref_prefix, gcap_ids, gcap_prefix (the same shapes) and has_region (B,) bool, in the
#     teacher's ids (SigLIP2Loss.forward's `locca` once mapped to the decoder's)
#   extra_img [extra_image_cache]: pixels (n, 3, H, W), t_img (n * world, D) [+ box, flip]
#   extra_txt [extra_text_cache]: ids (n, L), t_txt (n * world, D); n = extra_batch_size
def get_batch(it, micro):
    g = torch.Generator().manual_seed(stream_seed(seed, 'batch', it, micro))
    idx = torch.randperm(N, generator=g)[:batch_size * world]
    # one random caption
    cap = cap_start[idx] + (torch.rand(len(idx), generator=g) * cap_count[idx]).long()
    has_reg = reg_count[idx] > 0
    # one region for ARef,
    aref = reg_start[idx] + (torch.rand(len(idx), generator=g) * reg_count[idx]).long()
    # another for GCap (NOTES.md, U11)
    gcap = reg_start[idx] + (torch.rand(len(idx), generator=g) * reg_count[idx]).long()
    aref, gcap = aref.clamp(max=max(n_regions - 1, 0)), gcap.clamp(max=max(n_regions - 1, 0))
    sl = slice(rank * batch_size, (rank + 1) * batch_size)
    b = dict(pixels=data['pixels'][idx[sl]], ids=data[text_key][cap[sl]].long())
    if has_teacher:
        # global batch: the affinity targets span all ranks
        b['t_img'] = data['image_embeds'][idx].float()
        b['t_txt'] = data['text_embeds'][cap].float()
    if views > 1: # drawn last, so views=1 draws exactly what it always drew
        pick_view(b, data, idx, sl, g)
    if decoder is not None: # the LocCa targets of the drawn caption / regions
        rows = dict(cap=cap[sl], aref=aref[sl], gcap=gcap[sl])
        # no boxes: ARef/GCap are skipped
        tasks = ('cap', 'aref', 'gcap') if n_regions else ('cap',)
        b['locca'] = {f'{k}_{part}': data[f'{k}_{part}'][rows[k]].long()
                      for k in tasks for part in ('ids', 'prefix')}
        if n_regions:
            b['locca']['has_region'] = has_reg[sl]
    streams = (('extra_img', extra_img, 'extra_images'),
               ('extra_txt', extra_txt, 'extra_captions'))
    for key, d, purpose in streams:
        if d is not None:
            b[key] = get_extra(d, it, micro, purpose)
    return b

# one stored view per image: its box + flip (this rank's rows), its teacher embedding (all)
def pick_view(b, d, idx, sl, g):
    v = (torch.rand(len(idx), generator=g) * views).long()
    b['box'] = d['view_boxes'][idx[sl], v[sl]]
    b['flip'] = d['view_flips'][idx[sl], v[sl]].bool()
    b['t_img'] = d['view_embeds'][idx, v].float()

# an unpaired batch ('extra_images' or 'extra_captions'), the same on every rank
def get_extra(d, it, micro, purpose):
    g = torch.Generator().manual_seed(stream_seed(seed, purpose, it, micro))
    n = extra_batch_size or batch_size
    images = purpose == 'extra_images'
    idx = torch.randint(len(d['image_ids']) if images else len(d['input_ids']),
                        (n * world,), generator=g)
    sl = slice(rank * n, (rank + 1) * n)
    if not images:
        return dict(ids=d[text_key][idx[sl]].long(), t_txt=d['text_embeds'][idx].float())
    b = dict(pixels=d['pixels'][idx[sl]], t_img=d['image_embeds'][idx].float())
    if views > 1 and 'view_embeds' in d:
        pick_view(b, d, idx, sl, g)
    return b

# -----------------------------------------------------------------------------
# model: student (+ LocCa decoder and SILC/TIPS heads owned by the loss module)
if ckpt:
    model_args = ckpt['model_args']
else:
    keys = ('input_ids', 'cap_ids', 'aref_ids', 'gcap_ids')
    # shard by shard: no full copy
    texts = [torch.unique(p) for k in keys for p in shards(data[k])]
    # the unpaired captions' words belong to the student's vocabulary too
    if extra_txt is not None:
        texts += [torch.unique(p) for p in shards(extra_txt['input_ids'])]
    kept = torch.unique(torch.cat(texts + [torch.arange(5)]))
    # an HF model: the compact vocabulary is the LocCa decoder's only (its text tower keeps
    # its own); it trains at its own processor's size (the cache's), which AutoProcessor
    # gives it after training (NaFlex: the same patch grid), whatever image_size says
    if hf_model:
        model_args = dict(hf_model=hf_model, hf_from_config=hf_from_config,
                          kept_ids=kept.tolist(), image_size=man['image_size'],
                          image_mean=man['mean'], image_std=man['std'], text_length=text_length)
    else:
        model_args = dict(image_model=image_model, image_size=image_size or man['image_size'],
                          image_kwargs=image_kwargs, pretrained=pretrained,
                          text_width=text_width, text_depth=text_depth, text_heads=text_heads,
                          kept_ids=kept.tolist(), embed_dim=embed_dim,
                          image_mean=man['mean'], image_std=man['std'],
                          text_length=text_length)
        if text_encoder_init: # the HF text encoder, rebuilt from its config (StudentConfig)
            model_args.update(text_encoder=TEXT_ENCODER_DIR, text_pad_id=text_tok.pad_token_id,
                              text_encoder_config=enc_config.to_dict())
# the same seed on every rank: identical initial weights without a broadcast
torch.manual_seed(seed)
if 'hf_model' in model_args:
    # --- an HF SigLIP / SigLIP 2 (the decoder takes its text encoder's shape, half the depth:
    # locca_decoder_args, as the student's)
    hf_config = HFConfig(**{k: v for k, v in model_args.items() if not k.startswith('hf_')})
    name = model_args['hf_model']
    # a path that is not a dir would reach the hub as a malformed repo id
    if not os.path.isdir(name) and (name.startswith(('.', '/', '~')) or name.count('/') != 1
                                    or os.path.isdir(os.path.dirname(name))):
        sys.exit(f"train.py: hf_model={name!r}: no such directory (and not a hub name "
                 f"'org/model'); check the path")
    try:
        student = HFSiglip.load(name, hf_config, model_args['hf_from_config'])
        hf_dir = local_dir(name)
    except (OSError, ValueError) as e:
        sys.exit(f"train.py: cannot load hf_model={name!r}: {str(e).splitlines()[0]}")
    student = student.to(device)
    text_cfg = student.model.config.text_config
    # the cache was tokenised and resized by the model's own processor (cache_teacher.py
    # --processor=<it>), compared by the content hash the manifest keeps (a train.py run dir
    # also matches the one of its training cache, recorded in its meta.json: its processor
    # files are that cache's copy); then the pixel size it implies
    hf_proc = hash_files(processor_files(hf_dir))
    own = [hf_proc, read_json(os.path.join(hf_dir, 'meta.json')).get('processor_fingerprint')]
    # the command that re-caches this split with the model's processor, at its own size, into
    # a new dir (the old one holds shards of other settings)
    new_dir = f"{man['config']['out_dir'].rstrip('/')}-{os.path.basename(os.path.normpath(name))}"
    recache = recache_command({**man, 'config': {**man['config'], 'processor': name,
                                                 'image_size': 0, 'out_dir': new_dir}},
                              train_cache)
    if man['content']['processor'] not in own:
        made_with = man['config'].get('processor') or man['teacher']
        sys.exit(f"train.py: {train_cache} was made with another processor (tokenizer / image "
                 f"settings / patch budget: {made_with}, files {man['content']['processor'][:12]}"
                 f") than hf_model={name!r} has (files {hf_proc[:12]}): re-cache every split "
                 f"with the model's own, e.g. {recache}")
    from transformers import AutoProcessor
    improc = AutoProcessor.from_pretrained(hf_dir).image_processor
    n_max = getattr(improc, 'max_num_patches', None)
    if n_max and math.isqrt(n_max) ** 2 != n_max:
        sys.exit(f"train.py: hf_model={name!r}: its processor's max_num_patches={n_max} is not "
                 f"a square; train.py trains NaFlex on square images of a full sqrt(n) x "
                 f"sqrt(n) grid, which AutoProcessor then reproduces: save the processor with "
                 f"a square budget (e.g. {math.isqrt(n_max) ** 2}) and re-cache")
    size = (improc.patch_size * math.isqrt(n_max) if n_max
            else student.model.config.vision_config.image_size)
    if man['image_size'] != size:
        sys.exit(f"train.py: {train_cache} holds {man['image_size']} px images, "
                 f"hf_model={name!r} takes {size} px "
                 + (f"({n_max} patches of {improc.patch_size})" if n_max else '')
                 + f": re-cache at the model's size, e.g. {recache}")
    if man['processor']['vocab_size'] > text_cfg.vocab_size:
        sys.exit(f"train.py: {train_cache} was tokenised with {man['processor']['vocab_size']} "
                 f"tokens, hf_model={hf_model!r} reads {text_cfg.vocab_size}: cache it with "
                 f"the model's own processor (cache_teacher.py --processor={hf_model})")
    # feature MSE compares vectors, so it needs the teacher's size; the affinity terms compare
    # similarity matrices (B x M), which any two embedding sizes give
    with torch.no_grad():
        model_dim = student.encode_text(torch.zeros(1, 1, dtype=torch.long, device=device))
    model_dim = model_dim.shape[-1]
    has_extra = extra_img is not None or extra_txt is not None
    uses_feat = lambda_feat or (lambda_extra_feat and has_extra)
    if has_teacher and model_dim != man['embed_dim'] and uses_feat:
        sys.exit(f"train.py: hf_model={hf_model!r} embeds in {model_dim} dims, the teacher of "
                 f"{train_cache} in {man['embed_dim']}: feature distillation needs equal "
                 f"sizes; set lambda_feat=0 and lambda_extra_feat=0 (the affinity terms work "
                 f"at any size)")
else:
    student = Student(StudentConfig(**model_args))
    if text_encoder_init and not ckpt: # the encoder's pretrained weights (resume: the checkpoint's)
        from transformers import AutoModel
        pretrained_encoder = AutoModel.from_pretrained(text_init, dtype=torch.float32)
        student.text_model.load_state_dict(pretrained_encoder.state_dict())
        del pretrained_encoder
    student = student.to(device)
# text_init='teacher' on a fresh run (resume loads the trained weights): the text tower from the
# teacher that made the train cache, as its manifest names it (a train.py run dir, the demo
# teacher's too, or an HF SigLIP / SigLIP 2 dir or downloaded hub name)
if text_init == 'teacher' and not ckpt:
    t_path = man['teacher']
    if t_path == 'none':
        sys.exit(f"train.py: text_init=teacher, but {train_cache} was cached with teacher=none: "
                 f"no teacher to inherit the text tower from")
    # loading may draw random inits (transformers): the decoder and heads below must not move
    with torch.random.fork_rng(devices=[]):
        try:
            if is_trained_dir(t_path):
                check_save(t_path, 'train.py')
                teacher = load_trained(t_path)
            else:
                from transformers import AutoModel
                teacher = AutoModel.from_pretrained(t_path, dtype=torch.float32)
            kept_line = inherit_text_tower(student, teacher)
        except OSError as e: # a deleted dir, a hub name not downloaded (offline)
            sys.exit(f"train.py: text_init=teacher: cannot load {train_cache}'s teacher "
                     f"{t_path!r} ({str(e).splitlines()[0]})")
        except ValueError as e:
            sys.exit(f"train.py: text_init=teacher: the student cannot inherit {t_path!r}'s "
                     f"text tower: {e}")
    # the weights the cache's embeddings came from, not a teacher retrained in place since
    if hash_files(teacher_files(t_path, man['teacher_kind'])) != man['content']['teacher']:
        sys.exit(f"train.py: text_init=teacher: {t_path}'s weights or config changed since "
                 f"{train_cache} was cached: re-cache every split with it, or restore it")
    print0(f"text tower inherited from {t_path} (TinyCLIP): {kept_line}")
    del teacher
vocab = len(model_args['kept_ids'])
decoder_args = locca_decoder_args(student, vocab, decoder_depth)
decoder = LoccaDecoder(**decoder_args) if lambda_locca else None
heads = dict(out_dim=dino_dim, hidden_dim=dino_hidden, bottleneck_dim=dino_bottleneck)
silc_head = DINOHead(student.visual.pool_dim, **heads) if gamma and lambda_silc else None
tips_head = DINOHead(student.visual.enc_dim, **heads) if gamma and lambda_tips else None
loss_fn = SigLIP2Loss(student.visual, student.visual.patch_embed_proj, decoder=decoder,
                      silc_head=silc_head, tips_head=tips_head, mask_id=vocab,
                      sig_weight=lambda_contrast, locca_weight=lambda_locca, gamma=gamma,
                      silc_weight=lambda_silc, tips_weight=lambda_tips, switch=switch,
                      ema_momentum=ema_momentum, n_local=n_local,
                      local_size=local_size or None, contrast=contrast,
                      chunk_size=loss_chunk).to(device)
# feature + affinity to the teacher at its own scale and bias (paired and unpaired rows)
distill = DistillLoss(t_scale, t_bias, feat=lambda_feat, affinity=lambda_affinity,
                      extra_feat=lambda_extra_feat, extra_affinity=lambda_extra_affinity,
                      extra_cross=lambda_extra_cross, kind=affinity_kind)
n_params, n_params_nt = student.num_params(), student.num_params(token_table=False)
# an HF model keeps its own token table (the compact vocabulary is the decoder's only)
if 'hf_model' in model_args:
    init = 'random weights from its config.json' if model_args['hf_from_config'] else 'weights'
    print0(f"model: hf_model={model_args['hf_model']!r} ({type(student.model).__name__}, {init},"
           f" logit_scale {student.logit_scale.exp().item():.2f}, logit_bias "
           f"{student.logit_bias.item():.2f})")
    what, rows = 'HF model', text_cfg.vocab_size
elif text_encoder_init: # the HF text encoder's own table
    what, rows = 'student', student.text_model.config.vocab_size
else:
    what, rows = 'student', vocab
print0(f"{what}: {n_params / 1e6:.2f}M params "
       f"({n_params_nt / 1e6:.2f}M without the {rows}-row token table); "
       f"loss module: "
       f"{sum(p.numel() for p in loss_fn.parameters() if p.requires_grad) / 1e6:.2f}M trainable")

# -----------------------------------------------------------------------------
# optimizer: AdamW, weight decay on matrices only (nanoGPT);
# lr schedule: warmup -> cosine -> min_lr
params = [p for p in list(student.parameters()) + list(loss_fn.parameters())
          if p.requires_grad]
optimizer = torch.optim.AdamW(
    [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
     {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
    lr=learning_rate, betas=(beta1, beta2), fused=device_type == 'cuda')
iter_num, best_val = 0, -1.0
if ckpt:
    student.load_state_dict(ckpt['model'])
    loss_fn.load_state_dict(ckpt['loss'])
    optimizer.load_state_dict(ckpt['optimizer'])
    iter_num, best_val = ckpt['iter_num'], ckpt['best_val']
    del ckpt
def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    decay = lr_decay_iters or max_iters
    ratio = min((it - warmup_iters) / max(decay - warmup_iters, 1), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)
# checkpoints always save the uncompiled `student`
model = torch.compile(student) if compile else student

# -----------------------------------------------------------------------------
# one micro-step's inputs on the device: the fetched batch -> what the losses take

# f on every tensor of a batch (get_batch's nested dicts)
def each_tensor(b, f):
    return {k: each_tensor(v, f) if isinstance(v, dict) else f(v) for k, v in b.items()}

# the one place a batch moves to the device; pinned by fetch() on GPU, so the copies overlap
# the compute
def to_device(b):
    return each_tensor(b, lambda x: x.to(device, non_blocking=True))

# uint8 pixels (+ a stored view's box / flip) on the device -> normalised student input
def student_input(b):
    px = b['pixels']
    # re-apply the view's crop to the cached pixels, at the student's resolution (no decode)
    if 'box' in b:
        px = crop_boxes(px.float(), b['box'], b['flip'], student.config.image_size)
    return student.preprocess(px)

# the LocCa targets of the drawn caption / regions: teacher ids -> the decoder's vocabulary
def locca_targets(b):
    if 'locca' not in b:
        return None
    return {k: student.map_ids(v) if k.endswith('_ids') else v for k, v in b['locca'].items()}

# (B, D) per rank -> (B * world, D); backward sums every rank's gradient into the owner's rows,
# so each rank's loss is a mean over its own rows and the averaged gradients are the full loss's.
# An all-gather, not open_clip's ring: (B_global, D) rows are small next to the b x B_global
# logits, and one collective keeps the step as simple as before
def gather(x):
    return torch.cat(torch.distributed.nn.functional.all_gather(x)) if ddp else x

# the unpaired batches through one tower each (DIME-FM) -> per tower None or
# (this rank's student rows, all ranks' rows, the teacher's rows)
def encode_unpaired(b):
    e_img, e_txt = b.get('extra_img'), b.get('extra_txt')
    img = student.encode_image(student_input(e_img)) if e_img is not None else None
    txt = student.encode_text(e_txt['ids']) if e_txt is not None else None
    towers = ((img, e_img, 't_img'), (txt, e_txt, 't_txt'))
    return [(s, gather(s.float()), e[k]) if s is not None else None for s, e, k in towers]

# -----------------------------------------------------------------------------
# eval on a fixed val subset (first val_images images, all their captions) and checkpointing
vn = min(val_images, len(val['image_ids']))
vcap = val['caption_image_ids'] <= val['image_ids'][vn - 1]
@torch.no_grad()
def evaluate():
    student.eval()
    with autocast:
        img, txt = embed_student(student, val['pixels'][:vn], val[text_key][vcap], device)
    student.train()
    img_index = torch.searchsorted(val['image_ids'][:vn], val['caption_image_ids'][vcap])
    return {f'val/{k}': v for k, v in retrieval_metrics(img, txt, img_index).items()}

def git_state():
    try:
        run = lambda *a: subprocess.run(
            ['git', *a], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        return dict(commit=run('rev-parse', 'HEAD'), dirty=bool(run('status', '--porcelain')))
    except OSError:
        return {}

# DDP keeps the ranks' copies equal by construction (same init and seeds, all-reduced gradients,
# the same AdamW math, all-reduced SILC/TIPS centres). Only rank 0 saves and every rank resumes
# from its files, so a drifted rank would vanish silently: checked before every checkpoint
def check_ranks_in_sync():
    state = {**{f'model.{k}': v for k, v in student.state_dict().items()},
             **{f'loss.{k}': v for k, v in loss_fn.state_dict().items()}}
    # BatchNorm statistics are each rank's own (no SyncBatchNorm): rank 0's are saved
    names = [k for k, v in state.items() if v.is_floating_point() and 'running_' not in k]
    sums = torch.stack([state[k].double().sum() for k in names]).to(device) # (T,)
    every = [torch.zeros_like(sums) for _ in range(world)]
    dist.all_gather(every, sums)
    drifted = [names[j] for j in range(len(names))
               if not all(torch.isclose(e[j], every[0][j], rtol=1e-6, atol=1e-9) for e in every)]
    if drifted:
        sys.exit(f"train.py: iter {iter_num}: rank {rank}: the ranks' copies differ in "
                 f"{', '.join(drifted[:3])} ({len(drifted)} tensors): not saved")

def save(metrics):
    """Every file atomically (cache.atomic_write): a failed write (full disk, quota,
    permission) exits non-zero naming the file, and the files of the last good save stay."""
    try:
        write_checkpoint(metrics)
    # OSError from open/close/fsync, RuntimeError from torch.save's writer, safetensors' own
    except Exception as e:
        sys.exit(f"train.py: iter {iter_num}: saving to {out_dir} failed "
                 f"({type(e).__name__}: {str(e).splitlines()[0]}); the last good save "
                 f"(iter {saved_iter}) is kept")

def write_checkpoint(metrics):
    global saved_iter
    if not all(torch.isfinite(p).all()
               for p in list(student.parameters()) + list(loss_fn.parameters())):
        sys.exit(f"train.py: iter {iter_num}: non-finite weights, not saved; "
                 f"{out_dir}/ckpt.pt keeps iter {saved_iter}")
    ck = dict(model=student.state_dict(), loss=loss_fn.state_dict(),
              optimizer=optimizer.state_dict(), model_args=model_args,
              iter_num=iter_num, best_val=best_val, config=config,
              fingerprint=man['fingerprint'], cache_content=man.get('content'))
    # One save = ckpt.pt, config.json + model.safetensors (all that from_pretrained needs), the
    # decoder and the teacher's tokenizer + image settings, written whole into a staging dir (a
    # failed write leaves out_dir as it was), each file moved into place durably, then
    # meta.json last, listing every file with its sha256: readers refuse a dir whose files are
    # not that list (a kill between two moves), and resume writes a complete save again. Not
    # one dir swapped in whole: out_dir itself must stay the transformers dir users load
    staging = os.path.join(out_dir, '.staging')
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    torch.save(ck, os.path.join(staging, 'ckpt.pt'))
    student.save_pretrained(staging)
    if decoder is not None:
        decoder.save_pretrained(staging)
    proc = os.path.join(train_cache, 'processor')
    for f in os.listdir(proc):
        shutil.copyfile(os.path.join(proc, f), os.path.join(staging, f))
    # an HF text tower: its own tokenizer + config.json in its subdir (from_pretrained,
    # eval.py and student.py tokenise with it)
    if text_tok is not None:
        enc_dir = os.path.join(staging, student.config.text_encoder)
        text_tok.save_pretrained(enc_dir)
        student.text_model.config.save_pretrained(enc_dir)
    # paths relative to the save, subdirs included
    files = {os.path.relpath(os.path.join(d, f), staging): sha256(os.path.join(d, f))
             for d, _, names in sorted(os.walk(staging)) for f in sorted(names)}
    for f in files:
        os.makedirs(os.path.dirname(os.path.join(out_dir, f)), exist_ok=True)
        atomic_write(os.path.join(out_dir, f),
                     lambda tmp: os.replace(os.path.join(staging, f), tmp))
    shutil.rmtree(staging)
    # an earlier run's files this save does not write (its decoder, another model's processor
    # files) must not be read as this run's
    old = [os.path.basename(p) for p in processor_files(out_dir)] + list(SAVE_FILES)
    # and an earlier run's text encoder files
    enc_dir = os.path.join(out_dir, TEXT_ENCODER_DIR)
    if os.path.isdir(enc_dir):
        old += [os.path.join(TEXT_ENCODER_DIR, f) for f in os.listdir(enc_dir)]
    for f in set(old) - set(files):
        if os.path.isfile(os.path.join(out_dir, f)):
            os.remove(os.path.join(out_dir, f))
    meta = dict(config=config, model_args=model_args, iter_num=iter_num, metrics=metrics,
                files=files, processor_fingerprint=man['content']['processor'],
                train_cache=train_cache, val_cache=val_cache,
                fingerprint=man['fingerprint'],
                teacher_fingerprint=man['teacher_fingerprint'],
                teacher=man['teacher'],
                teacher_eval=os.path.join(os.path.dirname(val_cache.rstrip('/')),
                                          'test', 'eval.json'),
                params=dict(total=n_params, without_token_table=n_params_nt),
                git=git_state(), world_size=world,
                locca_images_without_regions=no_reg,
                # as in config.json (older readers look here)
                text_length=text_length)
    write_json(os.path.join(out_dir, 'meta.json'), meta)
    saved_iter = iter_num

def log(row):
    with open(os.path.join(out_dir, 'log.jsonl'), 'a') as f:
        f.write(json.dumps(row) + '\n')
def row_iter(line): # a line cut by a kill mid-write parses as nothing: dropped on resume
    try:
        return json.loads(line)['iter']
    except (ValueError, KeyError, TypeError):
        return None
if master:
    logf = os.path.join(out_dir, 'log.jsonl')
    if iter_num == 0 and os.path.exists(logf):
        os.remove(logf)
    elif os.path.exists(logf): # resume: drop rows logged after the checkpoint we continue from
        # (a repairing resume logs its step's val row again)
        rows = [l for l in open(logf) if row_iter(l) is not None and row_iter(l) <= iter_num
                and not (repair and row_iter(l) == iter_num and 'val/i2t_r1' in l)]
        open(logf, 'w').writelines(rows)

# -----------------------------------------------------------------------------
# prefetcher: a thread gathers the next micro-step's rows from the maps while this one
# computes. Every batch comes from its own (step, micro)-seeded generator, so the thread
# changes no draw and resume stays exact
# page-locked host memory on GPU: to_device's non_blocking copies then overlap the compute
def fetch(it, micro):
    b = get_batch(it, micro)
    return each_tensor(b, lambda x: x.pin_memory()) if device_type == 'cuda' else b
prefetcher = ThreadPoolExecutor(1)
def prefetch(it, micro): # submit the micro-step after (it, micro); None past the last step
    it, micro = (it, micro + 1) if micro + 1 < grad_accum else (it + 1, 0)
    return prefetcher.submit(fetch, it, micro) if it < max_iters else None
pending = prefetch(iter_num, -1) # the first micro-step of the first step

# -----------------------------------------------------------------------------
# training loop (runs max_iters + 1 times so the last step evaluates and saves, as nanochat does)
t_start, t_last, start_iter = time.time(), time.time(), iter_num
while True:
    last = iter_num == max_iters
    if ddp and (iter_num % eval_interval == 0 or last):
        check_ranks_in_sync()
    if (master and (iter_num % eval_interval == 0 or last)
            and (iter_num != start_iter or init_from == 'scratch' or repair)):
        metrics = evaluate()
        best_val = max(best_val, metrics['val/i2t_r1'] + metrics['val/t2i_r1'])
        print0(f"iter {iter_num}: val I→T R@1 {metrics['val/i2t_r1']:.2f}  "
               f"T→I R@1 {metrics['val/t2i_r1']:.2f}")
        log({'iter': iter_num, **metrics})
        save(metrics)
    if last:
        break
    progress = iter_num / max(max_iters, 1)
    # the switch's fresh heads are drawn from (seed, step) only, the same on every rank: a
    # checkpoint written exactly at the switch step resumes like the uninterrupted run (the
    # global RNG state there is not saved)
    torch.manual_seed(stream_seed(seed, 'switch', iter_num))
    # SigLIP 2 §2.3: new heads + mask token get fresh optimizer state
    for p in loss_fn.maybe_switch(progress):
        optimizer.state.pop(p, None)
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    terms_sum = {}
    for micro in range(grad_accum):
        b = to_device(pending.result())
        pending = prefetch(iter_num, micro)
        # SigLIP2Loss's draws: exact resume
        torch.manual_seed(stream_seed(seed, 'losses', iter_num, micro, rank))
        x = student_input(b)
        with autocast:
            img, txt, tokens = model(x, b['ids'])
            img_all, txt_all = gather(img.float()), gather(txt.float())
            # the sigmoid term: this rank's image rows vs all texts (b x B_global)
            siglip_total, siglip_terms = loss_fn(x, img_all, txt_all, tokens,
                                                 student.logit_scale, student.logit_bias,
                                                 progress, locca=locca_targets(b),
                                                 rows=rank_rows(len(img)))
            unpaired_img, unpaired_txt = encode_unpaired(b)
            distill_total, distill_terms = distill(img, txt, img_all, txt_all, b.get('t_img'),
                                                   b.get('t_txt'), student.logit_scale,
                                                   student.logit_bias, unpaired_img,
                                                   unpaired_txt)
        total = siglip_total + distill_total
        terms = {**siglip_terms, **distill_terms}
        (total / grad_accum).backward()
        for k, v in [('loss', total)] + list(terms.items()):
            terms_sum[k] = terms_sum.get(k, 0.0) + v.detach() / grad_accum
    # average gradients over ranks in one flat all-reduce (no DDP wrapper: the loss module
    # has params too)
    if ddp:
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= world
        for g, f in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(f.view_as(g))
    vals = torch.stack(list(terms_sum.values())).float()
    # log global means: each rank's terms are means over its own rows (per example, or its
    # rows of a batch-level matrix), so their mean over ranks is the global batch's
    if ddp:
        dist.all_reduce(vals)
        vals /= world
    terms_sum = dict(zip(terms_sum, vals.tolist()))
    # inf: no clipping, norm only
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf).item()
    # same on every rank
    bad = [k for k, v in [*terms_sum.items(), ('grad_norm', grad_norm)] if not math.isfinite(v)]
    # stop before the step: the weights stay finite and ckpt.pt keeps the last good checkpoint
    if bad:
        sys.exit(f"train.py: iter {iter_num}: non-finite {', '.join(bad)} "
                 f"(loss {terms_sum['loss']}); stopped without "
                 f"saving: {out_dir}/ckpt.pt keeps iter {saved_iter}. "
                 f"Lower learning_rate or check the cache" if master else 1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_fn.after_step() # EMA teacher + centres (after the step, as DINO does)
    iter_num += 1
    # logging: every term, step time, throughput, ETA
    t_now = time.time()
    dt, t_last = t_now - t_last, t_now
    if master and (iter_num % log_interval == 0 or iter_num == max_iters):
        sps = batch_size * world * grad_accum / dt
        eta = (t_now - t_start) / (iter_num - start_iter) * (max_iters - iter_num)
        extra = ' '.join(f"{k} {v:.4f}" for k, v in terms_sum.items() if k != 'loss')
        print0(f"iter {iter_num}: loss {terms_sum['loss']:.4f} ({extra}) | lr {lr:.2e} | "
               f"{dt * 1000:.0f}ms | {sps:.0f} samples/s | ETA {eta:.0f}s")
        log({'iter': iter_num, 'lr': lr, 'dt_ms': dt * 1000, 'samples_per_s': sps,
             'grad_norm': grad_norm,
             'scale': student.logit_scale.exp().item(), 'bias': student.logit_bias.item(),
             **{(k if k == 'loss' else f'loss/{k}'): v for k, v in terms_sum.items()}})
print(f"rank {rank}: memory at the end (MiB): {memory()}", flush=True)
prefetcher.shutdown()
print0(f"done: {max_iters} iters, best val R@1 sum {best_val:.2f}, "
       f"{time.time() - t_start:.0f}s")
if ddp:
    dist.destroy_process_group()
