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

The GPU check (README, "Speed"): (1)-(2) at two sizes, then (4) with a randomly initialised
SigLIP B/16-shaped teacher (no download) on a 20k-image synthetic world at 64 px:
    python bench.py
    python bench.py --batch_size=256 --image_size=256
    python data/shapes/prepare.py --out_dir=/tmp/w --n_web=20000 --n_train=10 --n_val=10 \
        --n_test=10 --image_size=64
    python bench.py --teacher=random-b16 --teacher_data=/tmp/w --cache_images=20000 \
        --batch_size=256 --num_workers=12
"""
import os, time
import torch
import torch.nn.functional as F
from model import Student, StudentConfig, LoccaDecoder, DINOHead
from loss import SigLIP2Loss, DistillLoss, chunked_cross_entropy

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
config_keys = [k for k,v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
cuda = device.startswith('cuda')
print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if cuda else 'cpu'}")
autocast = torch.autocast(device_type='cuda' if cuda else 'cpu', dtype=getattr(torch, dtype),
                          enabled=dtype != 'float32')
def sync():
    if cuda:
        torch.cuda.synchronize()
def measure(fn, n=iters): # -> (ms per call, peak MiB above the start on GPU)
    fn()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t = time.time()
    for _ in range(n):
        fn()
    sync()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float('nan')
    return (time.time() - t) / n * 1000, peak

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
x = torch.randn(batch_size, 3, image_size, image_size, device=device)
ids = torch.randint(5, 1000, (batch_size, seq_len), device=device)
t_img, t_txt = (torch.randn(batch_size, embed_dim, device=device),
                torch.randn(batch_size, embed_dim, device=device))
seq = torch.randint(5, 1000, (batch_size, seq_len), device=device)
locca = {'cap': (seq, torch.full((batch_size,), 2, device=device)),
         'aref': (seq, torch.full((batch_size,), 2, device=device),
                  torch.ones(batch_size, dtype=torch.bool, device=device)),
         'gcap': (seq, torch.full((batch_size,), 2, device=device),
                  torch.ones(batch_size, dtype=torch.bool, device=device))}
def setup(locca_w=0.0, silc=0.0, tips=0.0, distill=False):
    v = student.visual
    dec = LoccaDecoder(vocab, width, 3, 6, 4 * width, v.enc_dim).to(device) if locca_w else None
    sh = DINOHead(v.pool_dim, dino_dim).to(device) if silc else None
    th = DINOHead(v.enc_dim, dino_dim).to(device) if tips else None
    fn = SigLIP2Loss(v, v.patch_embed_proj, decoder=dec, silc_head=sh, tips_head=th,
                     mask_id=vocab, locca_weight=locca_w,
                     gamma=1.0 if (silc or tips) else 0.0,
                     silc_weight=silc, tips_weight=tips, switch=0.0).to(device)
    fn.maybe_switch(1.0)
    # train.py's distillation objective (A5: feature + affinity); weight 0 leaves it out
    weight = 1.0 if distill else 0.0
    distill_fn = DistillLoss(teacher_scale, teacher_bias, feat=weight, affinity=weight)
    params = [p for p in list(student.parameters()) + list(fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    def step():
        with autocast:
            img, txt, tok = student(x, ids)
            total, terms = fn(x, img.float(), txt.float(), tok,
                              student.logit_scale.exp(), student.logit_bias, 0.9,
                              locca=locca if locca_w else None)
            total, _ = distill_fn(img, txt, img.float(), txt.float(), t_img, t_txt,
                                  student.logit_scale, student.logit_bias,
                                  total=total, terms=terms)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        fn.after_step()
    return step
rows = [('sigmoid only', {}),
        ('+ feature + affinity (A5)', dict(distill=True)),
        ('+ LocCa (3 decoder passes)', dict(locca_w=1.0)),
        ('+ SILC (8 local crops)', dict(silc=1.0)),
        ('+ TIPS (masked view)', dict(tips=0.25)),
        ('all SigLIP 2 terms', dict(locca_w=1.0, silc=1.0, tips=0.25))]
base = None
print(f"train step, {image_model} @ {image_size}, batch {batch_size}, {dtype} on {device}:")
for name, kw in rows:
    ms, mem = measure(setup(**kw))
    base = base or ms
    print(f"  {name:28s} {ms:8.1f} ms  {ms / base:5.2f}x  peak {mem:8.0f} MiB")

# 3) data plane: train.py (sigmoid only) from a memory-mapped cache
# vs the same student stepped on in-place tensors
import re, ast, json, subprocess, sys, tempfile
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
                          student.logit_scale.exp(), student.logit_bias, 0.0)
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
