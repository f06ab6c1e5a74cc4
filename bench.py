"""
Speed / memory of the loss terms, measured in one run and printed as ratios (no timed tests
anywhere).

    python bench.py      # GPU: ViT-S/16 @ 224, batch 128, Gemma-size vocab 256k
    python bench.py --device=cpu --dtype=float32 --image_model=vit_tiny_patch16_224 \
        --image_size=64 --batch_size=16 --vocab=32000
    # + the data plane: train.py on a memory-mapped cache vs a bare student step;
    # RSS after loading caches of 2 sizes
    python bench.py --device=cpu --dtype=float32 --image_model=vit_tiny_patch16_224 \
        --image_size=64 --batch_size=64 --vocab=1000 --embed_dim=32 \
        --cache=cache/shapes-raw/web --val_cache=cache/shapes-raw/val --rss_caches=c2k/web,c8k/web

Prints (1) peak memory + time of the chunked decoder cross-entropy vs the naive one that builds
[tokens, V] logits, (2) the train-step time of each SigLIP 2 / distillation term relative to
sigmoid-only, and with --cache (3) train.py's step (rows gathered from the memory maps by its
prefetch thread) / a bare student step on tensors already in place, and RSS after loading each
of --rss_caches (it should not grow with the cache), and with --teacher (4) cache_teacher.py's
image pass (decode, preprocess, embed; both --preprocess paths) / the teacher's bare image
forward on inputs already on the device:
    python bench.py --device=cuda --teacher=google/siglip2-base-patch16-224 \
        --teacher_data=/data/coco --teacher_split=val --cache_images=5000 --num_workers=16 \
        --batch_size=256

With --hf_b16 (5) alone: each term's train step on a randomly initialised HF Siglip2Model
shaped as google/siglip2-base-patch16-naflex (no download), wrapped and given its LocCa decoder and
DINO heads as train.py does; ms and peak memory as ratios to sigmoid-only, each row measured in
a fresh child process (peak RSS on CPU, the allocator's peak on a GPU):
    python bench.py --hf_b16=True --device=cpu --dtype=float32    # batch 4, 1 timed step
    python bench.py --hf_b16=True                                 # GPU: bf16, batch 64, 10 steps

The GPU check (its figures: below): (1)-(2) at two sizes, then (4) with a randomly initialised
SigLIP B/16-shaped teacher (no download) on a 20k-image synthetic world at 64 px:
    python bench.py
    python bench.py --batch_size=256 --image_size=256
    python data/shapes/prepare.py --out_dir=/tmp/w --n_web=20000 --n_train=10 --n_val=10 \
        --n_test=10 --image_size=64
    python bench.py --teacher=random-b16 --teacher_data=/tmp/w --cache_images=20000 \
        --batch_size=256 --num_workers=12
    python bench.py --hf_b16=True    # and (5)

With --speed (6) alone: img/s and txt/s of a trained student and of the teacher its --cache was
made with (the manifest's), the same cached images and captions, median of alternating rounds,
float32; written as the 'speed' field of <ckpt>/eval.json (report.py's Table 1 column):
    python bench.py --speed=True --ckpt=out/shapes/a5 --cache=cache/shapes/test --device=cpu
    python bench.py --speed=True --ckpt=out/a5 --cache=cache/coco-L/test --device=cuda

With --dist_loss (7) alone: the sigmoid loss step (all-gather + forward + backward) on each DDP
rank, for each global batch B of --dist_batches: every rank's full B x B matrix (train.py before
issue 27) vs its own b x B rows (b = B / world; one block, or chunked by size past 64M logits) vs
chunks of --dist_chunk rows. Peak memory and ms, the max over ranks, as ratios to the full
matrix and times world (the aim: memory <= ~1, time <= ~1.2). Outside torchrun it relaunches
itself under torchrun with --dist_world CPU ranks (gloo); on GPUs launch it with torchrun (NCCL,
one GPU per rank, the allocator's peak):
    python bench.py --dist_loss=True --device=cpu --dtype=float32 --iters=3
    torchrun --standalone --nproc_per_node=8 bench.py --dist_loss=True --dist_batches=8192,32768

Measured. (1)-(2) on one H100, `python bench.py` (ViT-S/16, bf16; ratios printed in one run):

    step (fwd + bwd + AdamW), batch 128 @ 224       ms  x sigmoid-only  peak GiB
    sigmoid only                                  45.2            1.00       4.8
    + feature + affinity (A5)                     50.2            1.11       4.8
    + LocCa (3 decoder passes, 256k-vocab head)  280.4            6.21       9.9
    + SILC (8 local crops at 112 px)             110.0            2.43      13.4
    + TIPS (masked global view)                   88.4            1.96      12.6
    all SigLIP 2 terms                           392.8            8.70      23.0

Decoder cross-entropy over 8,192 tokens x 256k vocab (forward + backward): naive 24.2 GB,
chunked 3.4 GB (7.1x less; 14.2x at 16,384 tokens with `--batch_size=256 --image_size=256`:
48.2 GB vs 3.4 GB), 1.6x the time. The LocCa row uses the full 256k output layer; a student's
compact vocabulary (a few thousand ids on COCO) makes it far cheaper. Cache throughput with a
random SigLIP-B/16-sized teacher (real dims, 256k vocab, bf16, 12 workers) on the H100:
362 images/s including 5 captions per image and shard writing (20k images, 55 s).

(5) on a 2-core CPU, `python bench.py --hf_b16=True --device=cpu --dtype=float32` (200 s): random
weights from a config at real sizes (width 768, 12 layers, 256 patches at 256 px, a 256k text
vocabulary, 375M parameters), its LocCa decoder (6 layers over a 16k-id compact vocabulary, an
estimate for COCO) and DINO heads (K = 16384) as train.py builds them for
config/siglip2_finetune_coco.py; batch 4, one timed step after one warm-up, fp32. "step peak" is
the peak RSS above the weights + AdamW state (GPU: the allocator's peak above the same):

    step, batch 4, CPU fp32       s   x sig.  step peak GiB   x   process peak GiB   x
    sigmoid only                 7.3  1.00        3.34       1.00       8.26       1.00
    + LocCa (3 decoder passes)  10.6  1.45        3.84       1.15       9.69       1.17
    + SILC (8 local crops)      16.0  2.19        4.86       1.46      10.31       1.25
    + TIPS (masked view)        13.7  1.87        4.29       1.28       9.73       1.18
    complete objective          24.8  3.40        5.67       1.70      12.19       1.47

On a CPU a fixed cost per step (AdamW over 375M parameters, half of them the 256k-row token table)
compresses the ratios, and one timed step is only as steady as the machine's load.

(7) on the 2-core CPU, `python bench.py --dist_loss=True --device=cpu --dtype=float32 --iters=3`
(4 gloo ranks of 1 thread each, D = 64, fp32; one run, 75 s; peak RSS above the state before):

    loss step per rank, 4 ranks          ms  x full  x world | peak MiB  x full  x world
    B=4096 (b=1024) full B x B         1710    1.00     4.00 |    279.4   1.000     4.00
      own rows b x B (one block)        489    0.29     1.14 |     75.2   0.269     1.08
      own rows, chunks of 256           784    0.46     1.83 |     26.5   0.095     0.38
    B=8192 (b=2048) full B x B         7764    1.00     4.00 |   1102.1   1.000     4.00
      own rows b x B (one block)       1684    0.22     0.87 |    285.9   0.259     1.04
      own rows, chunks of 256          3067    0.40     1.58 |     60.2   0.055     0.22

Both figures of merit met by the own rows: memory 1.04-1.08 / world of the full matrix's, time
0.87-1.14 / world. Memory is ~17.5 bytes per logit (fp32 logits, the signed logits, logsigmoid's
output and buffer, the bool mask, backward's gradients), so B = 16384 needs 4.6 GiB per rank for
the full matrix (18 GiB for 4 ranks, more than this shared machine had free): not run. Chunks
cut memory to one chunk's (256 rows: 0.055x at 8k) for 1.4-1.8x the time of one block (each
chunk's forward runs again in backward), so by size chunks only past 64M logits (~1.1 GiB).

(3)-(4) on a 2-core CPU, `python bench.py --teacher=...` (one run): a random SigLIP-B/16-shaped
teacher (width 768, 12 layers, 224 px) over 128 JPEGs of 480 px, batch 32, 2 workers: the cache
pass / the bare image forward is 1.08x with the per-image processor in the workers, 0.99x with
--preprocess=batch (the model dominates on a CPU, ~5 images/s). The batched path is for a GPU
(target: >= 0.85x of the bf16 forward on an H100, the GPU check's (4)). Same run: train.py's step
from the memory-mapped cache / a bare student step 1.08x (target <= 1.15).
"""
import os, sys, time, json, ctypes, subprocess
import torch
import torch.nn.functional as F
from model import (Student, StudentConfig, LoccaDecoder, DINOHead, HFSiglip, HFConfig,
                   locca_decoder_args)
from loss import (SigLIP2Loss, DistillLoss, chunked_cross_entropy, sigmoid_loss, sigmoid_chunk,
                  rank_rows)

# -----------------------------------------------------------------------------
device = 'cuda'
dtype = 'bfloat16'
image_model = 'vit_small_patch16_224'
image_size = 224
batch_size = 128
vocab = 256000 # Gemma: the decoder's output layer is [V, W]
width = 384 # text tower / decoder width
seq_len = 64
embed_dim = 1024 # SigLIP 2 L
# the distillation rows' affinity targets: a teacher's scale and bias (SigLIP's init, §3.2)
teacher_scale = 10.0
teacher_bias = -10.0
dino_dim = 16384
iters = 10
# a train cache (teacher=none is enough): adds (3),
# train.py from the memory-mapped cache vs a bare step
cache = ''
val_cache = '' # its val split (train.py needs one)
# comma-separated train caches of different sizes: train.py's RSS after loading each
rss_caches = ''
# an HF SigLIP (2) name/dir or one of our runs: adds (4),
# the cache pass / the teacher's bare forward; 'random-b16': a randomly initialised SigLIP
# B/16 (768 wide, 12 layers, 256k vocab, 224 px) with teacher_data's tokenizer, built here
teacher = ''
teacher_data = 'data/shapes' # ... over the first cache_images images of this COCO-layout split
teacher_split = 'web'
cache_images = 2048
num_workers = 2 # cache_teacher.py's decoding workers
# (5) alone: an HF Siglip2Model shaped as google/siglip2-base-patch16-naflex, random weights
hf_b16 = False
# 0: 64 on a GPU; 4 on CPU, where a sigmoid-only step took 7.3 s and the whole section 200 s
# (2 quiet cores)
hf_batch_size = 0
hf_iters = 0 # timed steps per row (+ 1 warm-up, untimed); 0: 10 on a GPU, 1 on CPU
# both towers (heads = width / 64, MLP = 4 x width: B/16's 12 and 3072); text length = seq_len
hf_width = 768
hf_depth = 12
# NaFlex: train.py trains on the cache's p·sqrt(max_num_patches) = 16·16 = 256 px square
# (cache_teacher.py), the full 16 x 16 grid of 256 patches that the processor makes of any
# square image, 224 px included
hf_image_size = 256
hf_vocab = 256000 # the text tower's Gemma vocabulary (its own, not compacted)
# the LocCa decoder's compact vocabulary (train.py: the ids in the training captions + LocCa
# targets). COCO is the fine-tuning set (config/siglip2_finetune_coco.py); its captioning
# vocabularies are ~10k words seen >= 5 times, and Gemma's pieces count case and leading-space
# forms apart and split the rare tail: ~16k ids is our estimate (no Gemma tokenizer offline)
hf_kept = 16000
hf_row = -1 # internal: >= 0 in the child process that measures row hf_row of (5)
# (6) alone: img/s, txt/s of the trained student --ckpt and of --cache's teacher (its
# manifest's), on --cache's images and captions (a paired cache split, e.g. the test split)
speed = False
ckpt = '' # a train.py out_dir (or an HF SigLIP dir / hub name, with --out)
speed_seconds = 2.0 # timing budget per tower (rounds alternate student and teacher)
speed_batch = 256 # images and captions per timed call (at most the cache's)
out = '' # the eval.json that gets the 'speed' field; '' = <ckpt>/eval.json
# (7) alone: the sigmoid loss step (all-gather + forward + backward) per rank under DDP: every
# rank's full B x B matrix (before issue 27) vs its own b x B rows, one block and chunked by size;
# dist_world gloo ranks on CPU started here, or the ranks of a torchrun launch (NCCL on GPUs)
dist_loss = False
dist_world = 4
dist_batches = '4096,8192' # global batches B; b = B / world rows per rank
dist_dim = 64
dist_chunk = 256 # the chunked row's image rows per chunk (by size chunks only past 64M logits)
config_keys = [k for k,v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
cuda = device.startswith('cuda')
if cuda and not torch.cuda.is_available():
    sys.exit(f"bench.py: device={device!r} but torch sees no CUDA device here: pass "
             f"--device=cpu (with --dtype=float32)")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if cuda else 'cpu'}")
autocast = torch.autocast(device_type='cuda' if cuda else 'cpu', dtype=getattr(torch, dtype),
                          enabled=dtype != 'float32')
def sync():
    if cuda:
        torch.cuda.synchronize()
def proc_mib(field): # this process's VmRSS (resident now) or VmHWM (peak) in MiB (Linux)
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024 # kB
# -> (ms per call, peak MiB above the state after a warm-up call: on GPU; on CPU with rss, the
# peak RSS, else nan)
def measure(fn, n=iters, rss=False):
    fn()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    elif rss:
        # freed heap pages go back to the OS first, so the base is what is live (weights,
        # optimizer state) and the timed calls fault in what they use again
        ctypes.CDLL(None).malloc_trim(0)
        # '5' resets the kernel's peak RSS (VmHWM) to the current RSS: the calls' own peak
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = proc_mib('VmRSS')
    t = time.time()
    for _ in range(n):
        fn()
    sync()
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = proc_mib('VmHWM') - base if rss else float('nan')
    return (time.time() - t) / n * 1000, peak

# random inputs of one train step: images (B, 3, S, S), captions (B, L) in the tower's vocab
# (n_ids), LocCa targets (B, L) in the decoder's (n_dec), teacher embeddings (B, D)
def random_batch(B, S, L, D, n_ids, n_dec):
    x = torch.randn(B, 3, S, S, device=device)
    ids = torch.randint(5, min(1000, n_ids), (B, L), device=device)
    t_img, t_txt = torch.randn(B, D, device=device), torch.randn(B, D, device=device)
    seq = torch.randint(5, min(1000, n_dec), (B, L), device=device)
    prefix = torch.full((B,), 2, device=device)
    region = torch.ones(B, dtype=torch.bool, device=device) # every example has a box
    locca = dict(cap_ids=seq, cap_prefix=prefix, aref_ids=seq, aref_prefix=prefix,
                 gcap_ids=seq, gcap_prefix=prefix, has_region=region)
    return x, ids, t_img, t_txt, locca

# model (Student or HFSiglip) + the terms -> one train step (fwd + losses + bwd + AdamW);
# the decoder and heads as train.py builds them: decoder from the text tower (n_dec ids),
# DINO heads of dino_dim prototypes
def setup(model, batch, n_dec, locca_w=0.0, silc=0.0, tips=0.0, gamma=1.0, distill=False):
    x, ids, t_img, t_txt, locca = batch
    v = model.visual
    dec = LoccaDecoder(**locca_decoder_args(model, n_dec)).to(device) if locca_w else None
    sh = DINOHead(v.pool_dim, dino_dim).to(device) if silc else None
    th = DINOHead(v.enc_dim, dino_dim).to(device) if tips else None
    fn = SigLIP2Loss(v, v.patch_embed_proj, decoder=dec, silc_head=sh, tips_head=th,
                     mask_id=n_dec, locca_weight=locca_w,
                     gamma=gamma if (silc or tips) else 0.0,
                     silc_weight=silc, tips_weight=tips, switch=0.0).to(device)
    fn.maybe_switch(1.0)
    # train.py's distillation objective (A5: feature + affinity); weight 0 leaves it out
    weight = 1.0 if distill else 0.0
    distill_fn = DistillLoss(teacher_scale, teacher_bias, feat=weight, affinity=weight)
    params = [p for p in list(model.parameters()) + list(fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    def step():
        with autocast:
            img, txt, tok = model(x, ids)
            siglip_total, _ = fn(x, img.float(), txt.float(), tok, model.logit_scale,
                                 model.logit_bias, 0.9, locca=locca if locca_w else None)
            distill_total, _ = distill_fn(img, txt, img.float(), txt.float(), t_img, t_txt,
                                          model.logit_scale, model.logit_bias)
        (siglip_total + distill_total).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        fn.after_step()
    return step

# 5) with --hf_b16, alone (its sizes are its own keys, so it runs before (1) and exits): each
# SigLIP 2 term's train step on an HF Siglip2Model shaped as google/siglip2-base-patch16-naflex,
# built from a config (random weights) and wrapped as train.py does (HFSiglip.load with
# hf_from_config); the LocCa decoder (6 layers = half of 12) and DINO heads as train.py builds
# them for config/siglip2_finetune_coco.py (dino_dim 16384, γ 0.25). Each row runs in a fresh
# child process (this script with --hf_row), so its peak is its own
hf_rows = [('sigmoid only', {}),
           ('+ LocCa (3 decoder passes)', dict(locca_w=1.0)),
           ('+ SILC (8 local crops)', dict(silc=1.0)),
           ('+ TIPS (masked view)', dict(tips=0.25)),
           ('complete objective', dict(locca_w=1.0, silc=1.0, tips=0.25))]
# (5)'s sizes, each checked against what builds a model and a timing (heads = width / 64)
if hf_b16 or hf_row >= 0:
    for k, ok, valid in [('hf_iters', hf_iters >= 0, '>= 0 (0: 10 on a GPU, 1 on CPU)'),
                         ('hf_batch_size', hf_batch_size >= 0, '>= 0 (0: 64 on a GPU, 4 on CPU)'),
                         ('hf_width', hf_width >= 64 and hf_width % 64 == 0,
                          'a positive multiple of 64 (heads = width / 64)'),
                         ('hf_depth', hf_depth >= 1, '>= 1'),
                         ('hf_image_size', hf_image_size >= 16 and hf_image_size % 16 == 0,
                          'a positive multiple of the patch size, 16'),
                         ('hf_vocab', hf_vocab >= 5, '>= 5 (the special ids 0..4)'),
                         ('hf_kept', 5 <= hf_kept <= hf_vocab, f'in [5, hf_vocab={hf_vocab}]'),
                         ('hf_row', -1 <= hf_row < len(hf_rows), f'in [-1, {len(hf_rows) - 1}]'),
                         ('seq_len', seq_len >= 1, '>= 1')]:
        if not ok:
            sys.exit(f"bench.py: {k}={globals()[k]!r} must be {valid}")
hf_batch_size = hf_batch_size or (64 if cuda else 4)
hf_iters = hf_iters or (10 if cuda else 1)
if hf_row >= 0: # the child: one row -> one 'hf_row {json}' line
    import tempfile
    import transformers as T
    torch.manual_seed(0)
    tower = dict(hidden_size=hf_width, intermediate_size=4 * hf_width,
                 num_hidden_layers=hf_depth, num_attention_heads=hf_width // 64)
    n_patches = (hf_image_size // 16) ** 2 # NaFlex's max_num_patches (256 at 256 px)
    hf_cfg = HFConfig(kept_ids=list(range(hf_kept)), image_size=hf_image_size,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3, text_length=seq_len)
    with tempfile.TemporaryDirectory() as hf_dir: # config.json only: train.py's loading path
        T.Siglip2Config(text_config=dict(vocab_size=hf_vocab, max_position_embeddings=seq_len,
                                         **tower),
                        vision_config=dict(patch_size=16, num_patches=n_patches, **tower)
                        ).save_pretrained(hf_dir)
        model = HFSiglip.load(hf_dir, hf_cfg, from_config=True).to(device)
    batch = random_batch(hf_batch_size, hf_image_size, seq_len, hf_width, hf_vocab, hf_kept)
    step = setup(model, batch, hf_kept, gamma=0.25, **hf_rows[hf_row][1])
    ms, step_mib = measure(step, hf_iters, rss=True)
    # the absolute peak over the timed steps: weights, AdamW state, the step's own
    total_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else proc_mib('VmHWM')
    print('hf_row', json.dumps(dict(ms=ms, step_mib=step_mib, total_mib=total_mib,
                                    params=sum(p.numel() for p in model.parameters()))))
    sys.exit()
if hf_b16:
    what = 'allocated (torch.cuda)' if cuda else 'RSS (/proc/self VmHWM)'
    print(f"train step (fwd + loss + bwd + AdamW), HF Siglip2Model from a config: width "
          f"{hf_width}, {hf_depth} layers, {(hf_image_size // 16) ** 2} patches of 16 px "
          f"({hf_image_size} px), text vocab {hf_vocab}, length {seq_len};\n"
          f"  LocCa decoder {max(hf_depth // 2, 1)} layers over {hf_kept} ids, DINO heads "
          f"K={dino_dim}; batch {hf_batch_size}, {dtype} on {device}, {hf_iters} timed steps "
          f"after 1 warm-up, each row in a fresh process;\n"
          f"  step peak: peak {what} over the timed steps above the state after the warm-up "
          f"(weights + AdamW state); process peak: the absolute peak over the timed steps")
    ratio = lambda a, b: a / b if b > 0 else float('nan')
    base = None
    for i, (name, _) in enumerate(hf_rows):
        p = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                            f'--hf_row={i}'], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"bench.py: the {name!r} row failed:\n{p.stdout[-2000:]}\n"
                     f"{p.stderr[-2000:]}")
        line = [l for l in p.stdout.splitlines() if l.startswith('hf_row ')][-1]
        r = json.loads(line[len('hf_row '):])
        base = base or r
        if i == 0:
            print(f"  ({r['params'] / 1e6:.1f}M params in the model)")
        print(f"  {name:28s} {r['ms']:8.1f} ms {ratio(r['ms'], base['ms']):5.2f}x | "
              f"step peak {r['step_mib']:8.1f} MiB "
              f"{ratio(r['step_mib'], base['step_mib']):5.2f}x | "
              f"process peak {r['total_mib']:8.1f} MiB "
              f"{ratio(r['total_mib'], base['total_mib']):5.2f}x")
    sys.exit()

# 7) with --dist_loss, alone: per-rank peak memory and time of the sigmoid loss step, full
# matrix vs the rank's own rows. Outside torchrun it relaunches itself under torchrun with
# dist_world CPU ranks (gloo); under torchrun with --device=cuda each rank takes its GPU (NCCL)
if dist_loss and 'RANK' not in os.environ:
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                f'--nproc_per_node={dist_world}', os.path.abspath(__file__), *sys.argv[1:]]
    # a fixed mmap threshold: glibc then maps every tensor over 1 MiB and unmaps it when freed
    # (its default threshold rises to 32 MiB after the first big free, and blocks below it
    # stay in the heap), so the ranks' RSS follows the live tensors
    env = dict(os.environ, OMP_NUM_THREADS='1', MALLOC_MMAP_THRESHOLD_=str(2**20))
    sys.exit(subprocess.run(torchrun, env=env).returncode)
if dist_loss:
    import torch.distributed as dist, torch.distributed.nn
    dist.init_process_group('nccl' if cuda else 'gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    # the train.py step's sigmoid term on this rank: (name, chunk rows or None = full matrix)
    def loss_step(img, txt, chunk):
        img_all = torch.cat(torch.distributed.nn.functional.all_gather(img)) # (B, D)
        txt_all = torch.cat(torch.distributed.nn.functional.all_gather(txt))
        if chunk is None: # every rank the whole B x B matrix
            loss = sigmoid_loss(img_all, txt_all, 10.0, -10.0)
        else: # its b rows against all B texts
            rows = rank_rows(len(img))
            ids = torch.arange(len(img_all), device=device)
            loss = sigmoid_loss(img_all[rows], txt_all, 10.0, -10.0, ids[rows], ids, chunk)
        loss.backward()
    # -> the max over ranks of x (ms, MiB): the slowest rank sets the step
    def rank_max(*x):
        t = torch.tensor(x, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()
    if rank == 0:
        what = 'allocated (torch.cuda)' if cuda else 'RSS above the state before (VmHWM)'
        print(f"sigmoid loss step (all-gather + fwd + bwd) per rank, {world} ranks "
              f"({'NCCL' if cuda else 'gloo'}), D={dist_dim}, fp32 on {device}; peak {what} "
              f"and mean ms of {iters} steps after 1 warm-up, max over ranks:")
    for B in [int(x) for x in dist_batches.split(',')]:
        b = B // world
        g = torch.Generator().manual_seed(rank)
        img, txt = [F.normalize(torch.randn(b, dist_dim, generator=g), dim=-1).to(device)
                    .requires_grad_() for _ in range(2)]
        chunk = sigmoid_chunk(b, B)
        modes = [('full B x B', None),
                 (f"own rows b x B, by size ({chunk or 'one block'})", chunk),
                 (f'own rows, chunks of {dist_chunk}', dist_chunk)]
        res = [rank_max(*measure(lambda: loss_step(img, txt, c), n=iters, rss=True))
               for _, c in modes]
        (t0, m0) = res[0]
        if rank == 0:
            print(f"  B={B} (b={b}): full matrix {B * B / 2**20:.2f}M logits per rank, "
                  f"own rows {b * B / 2**20:.2f}M")
            for (name, _), (t, m) in zip(modes, res):
                print(f"    {name:36s} {t:7.0f} ms {t / t0:5.2f}x (x world {t / t0 * world:4.2f})"
                      f" | peak {m:8.1f} MiB {m / m0:6.3f}x (x world {m / m0 * world:4.2f})")
    dist.destroy_process_group()
    sys.exit()

# 6) with --speed, alone: images/s and texts/s of --ckpt and of the teacher that --cache was
# made with, the same cached images and captions, inputs prepared beforehand, only the forward
# passes timed; float32 whatever --dtype says (as eval.py scores). -> the 'speed' field of the
# model's eval.json, report.py's Table 1 column
def throughput(fns, n, seconds):
    """{name: fn} each processing n items -> {name: items/s}: the median over rounds that call
    every fn in turn, so a load change on a shared machine hits the student and the teacher
    alike."""
    import statistics
    times = {k: [] for k in fns}
    for f in fns.values(): # warm-up
        f()
    end = time.time() + seconds
    while time.time() < end or len(times[next(iter(fns))]) < 3:
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: n / statistics.median(v) for k, v in times.items()}
if speed:
    from PIL import Image
    from cache import load_cache
    from cache_teacher import Teacher
    from eval import update_eval_json, eval_json_of
    if not (ckpt and cache):
        sys.exit("bench.py: --speed needs --ckpt and --cache (a paired cache split)")
    enc = Teacher(ckpt, device)
    out, run = eval_json_of(ckpt, out, 'bench.py')
    data, man = load_cache(cache, verify=False)
    if 'input_ids' not in data or 'pixels' not in data:
        sys.exit(f"bench.py: --speed needs a paired cache (images and captions); "
                 f"{cache} is not")
    teacher = Teacher(man['teacher'], device) # gone: Teacher names it
    n = min(speed_batch, len(data['pixels']))
    ims = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in data['pixels'][:n]]
    ids = data['input_ids'][:n]
    x_s, x_t = enc.prep(ims), teacher.prep(ims)
    fns = dict(img=lambda: enc.images(x_s), txt=lambda: enc.texts(ids),
               teacher_img=lambda: teacher.images(x_t), teacher_txt=lambda: teacher.texts(ids))
    r = throughput(fns, n, 4 * speed_seconds)
    sp = {f'{k}_per_s': v for k, v in r.items()}
    sp.update(img_ratio=r['img'] / r['teacher_img'], txt_ratio=r['txt'] / r['teacher_txt'])
    sp.update(batch=n, device=device, threads=torch.get_num_threads(), teacher=man['teacher'],
              params=enc.params['total'], teacher_params=teacher.params['total'])
    update_eval_json(out, speed=sp, run=run)
    print(f"{run}: {sp['img_per_s']:.0f} img/s, {sp['txt_per_s']:.0f} txt/s | "
          f"teacher {sp['teacher']}: {sp['teacher_img_per_s']:.0f} img/s, "
          f"{sp['teacher_txt_per_s']:.0f} txt/s | student/teacher "
          f"x{sp['img_ratio']:.2f} images, x{sp['txt_ratio']:.2f} texts "
          f"(batch {sp['batch']}, {device}, {sp['threads']} threads) -> {out}")
    sys.exit()

# 1) decoder cross-entropy at vocab V: chunked (never [N, V] logits at once) vs naive
N = batch_size * seq_len
h = torch.randn(N, width, device=device, requires_grad=True)
W = torch.nn.Parameter(torch.randn(vocab, width, device=device) * 0.02)
y = torch.randint(0, vocab, (N,), device=device)
def naive():
    with autocast:
        F.cross_entropy(F.linear(h, W).float(), y).backward()
def chunked():
    with autocast:
        chunked_cross_entropy(h, W, None, y).mean().backward()
(tn, mn), (tc, mc) = measure(naive, 3), measure(chunked, 3)
print(f"decoder CE, {N} tokens x V={vocab}: "
      f"naive {tn:.1f} ms, {mn:.0f} MiB | chunked {tc:.1f} ms, {mc:.0f} MiB "
      f"| memory ratio naive/chunked {mn / mc:.1f}x, "
      f"time ratio chunked/naive {tc / tn:.2f}x")
del h, W, y

# 2) train-step time of each term relative to sigmoid-only (student fwd + bwd + AdamW step)
cfg = StudentConfig(image_model=image_model, image_size=image_size,
                    text_width=width, text_depth=6, text_heads=6,
                    kept_ids=list(range(vocab)), embed_dim=embed_dim,
                    image_mean=[0.5] * 3, image_std=[0.5] * 3)
student = Student(cfg).to(device)
batch = random_batch(batch_size, image_size, seq_len, embed_dim, vocab, vocab)
rows = [('sigmoid only', {}),
        ('+ feature + affinity (A5)', dict(distill=True)),
        ('+ LocCa (3 decoder passes)', dict(locca_w=1.0)),
        ('+ SILC (8 local crops)', dict(silc=1.0)),
        ('+ TIPS (masked view)', dict(tips=0.25)),
        ('all SigLIP 2 terms', dict(locca_w=1.0, silc=1.0, tips=0.25))]
base = None
print(f"train step, {image_model} @ {image_size}, batch {batch_size}, {dtype} on {device}:")
for name, kw in rows:
    ms, mem = measure(setup(student, batch, vocab, **kw))
    base = base or ms
    print(f"  {name:28s} {ms:8.1f} ms  {ms / base:5.2f}x  peak {mem:8.0f} MiB")

# 3) data plane: train.py (sigmoid only) from a memory-mapped cache
# vs the same student stepped on in-place tensors
import re, ast, tempfile
# -> (stdout, out_dir) of a train.py run with this script's student settings
def train(train_cache, *extra):
    out = tempfile.mkdtemp()
    args = [sys.executable, 'train.py', f'--train_cache={train_cache}',
            f'--val_cache={val_cache}', f'--out_dir={out}',
            f'--image_model={image_model}', f'--image_size={image_size}',
            f'--batch_size={batch_size}', f'--text_width={width}',
            f'--embed_dim={embed_dim}', f'--device={device}', f'--dtype={dtype}',
            '--log_interval=1', '--val_images=50', *extra]
    p = subprocess.run(args, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    if p.returncode:
        sys.exit(f"bench.py: train.py failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout, out
if cache:
    n = 3 + iters # the first steps warm up (and the first one includes the iter-0 eval): skipped
    _, out = train(cache, f'--max_iters={n}', f'--eval_interval={10 * n}', '--warmup_iters=1')
    rows = [json.loads(l) for l in open(os.path.join(out, 'log.jsonl'))]
    dts = sorted(r['dt_ms'] for r in rows if 'dt_ms' in r and r['iter'] > 3)
    step_ms = dts[len(dts) // 2] # median
    # the trained student's shape, text length included (config.json)
    cfg = StudentConfig(**json.load(open(os.path.join(out, 'config.json'))))
    student = Student(cfg).to(device)
    fn = SigLIP2Loss(student.visual, student.visual.patch_embed_proj).to(device)
    params = [p for p in list(student.parameters()) + list(fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    ids = torch.randint(0, len(cfg.kept_ids), (batch_size, cfg.text_length), device=device)
    def bare(): # what train.py does per step, minus the data: fwd + loss + bwd + clip + AdamW
        with autocast:
            img, txt, tok = student(x, ids)
            total, _ = fn(x, img.float(), txt.float(), tok,
                          student.logit_scale, student.logit_bias, 0.0)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    bare_ms, _ = measure(bare)
    print(f"data plane: train.py step from the memory-mapped {cache} "
          f"{step_ms:.1f} ms (median) / bare student step "
          f"{bare_ms:.1f} ms = {step_ms / bare_ms:.3f}x (target <= 1.15)")
for c in filter(None, rss_caches.split(',')):
    log, _ = train(c, '--max_iters=0')
    mem = ast.literal_eval(
        re.search(r'memory after loading the caches \(MiB\): (\{.*\})', log).group(1))
    size = sum(os.path.getsize(os.path.join(c, f))
               for f in os.listdir(c) if f.endswith('.safetensors')) / 2**20
    print(f"RSS after loading {c} ({size:.0f} MiB of shards): {mem}")

# 4) cache pass: cache_teacher.py's image pass
# (decode + preprocess + teacher, an image-only cache) / bare forward
if teacher == 'random-b16': # SigLIP B/16's shapes, random weights: no download
    import transformers as T
    torch.manual_seed(0)
    tok = T.AutoTokenizer.from_pretrained(os.path.join(teacher_data, 'processor'))
    b16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12)
    siglip = T.SiglipModel(T.SiglipConfig(
        text_config=dict(vocab_size=256000, max_position_embeddings=64, **b16),
        vision_config=dict(patch_size=16, image_size=224, **b16)))
    teacher = tempfile.mkdtemp()
    siglip.save_pretrained(teacher)
    improc = T.SiglipImageProcessor(size={'height': 224, 'width': 224})
    T.SiglipProcessor(image_processor=improc, tokenizer=tok).save_pretrained(teacher)
    del siglip
if teacher:
    import numpy as np
    from PIL import Image
    from cache_teacher import Teacher
    rates = {}
    # batch: workers decode, the processor runs per batch on the device
    for pre in ('worker', 'batch'):
        args = [sys.executable, 'cache_teacher.py',
                f'--data_dir={teacher_data}', f'--split={teacher_split}',
                f'--teacher={teacher}', '--captions=False',
                f'--max_images={cache_images}', f'--batch_size={batch_size}',
                f'--num_workers={num_workers}', f'--device={device}', f'--dtype={dtype}',
                f'--preprocess={pre}', f'--out_dir={tempfile.mkdtemp()}']
        p = subprocess.run(args, capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.abspath(__file__)))
        if p.returncode:
            sys.exit(f"bench.py: cache_teacher.py failed:\n"
                     f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        n, secs = re.search(r'rank 0: (\d+) images in ([\d.]+)s', p.stdout).groups()
        rates[pre] = int(n) / float(secs)
    # the bare forward: the same Teacher wrapper cache_teacher.py embeds with, on inputs
    # prepared beforehand (random 256 px images through its own preprocessing)
    t = Teacher(teacher, device, dtype=dtype)
    ims = [Image.fromarray(a) for a in np.random.default_rng(0).integers(
        0, 256, (batch_size, 256, 256, 3), dtype=np.uint8)]
    inputs = t.prep(ims)
    forward = lambda: t.images(inputs)
    ms, _ = measure(forward)
    bare = batch_size / ms * 1000
    for pre, rate in rates.items():
        print(f"cache pass ({pre} preprocessing, {num_workers} workers) {rate:.3g} img/s "
              f"/ bare teacher forward {bare:.3g} img/s = {rate / bare:.2f}x "
              f"(target >= 0.85 on a GPU, batch path)")
