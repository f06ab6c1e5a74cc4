"""
Speed / memory of the loss terms, measured in one run and printed as ratios (no timed tests anywhere).

    python bench.py                                   # GPU: ViT-S/16 @ 224, batch 128, Gemma-size vocab 256k
    python bench.py --device=cpu --dtype=float32 --image_model=vit_tiny_patch16_224 --image_size=64 --batch_size=16 --vocab=32000

Prints (1) peak memory + time of the chunked decoder cross-entropy vs the naive one that builds [tokens, V]
logits, and (2) the train-step time of each SigLIP 2 / distillation term relative to sigmoid-only.
"""
import os, time
import torch
import torch.nn.functional as F
from model import Student, StudentConfig, LoccaDecoder, DINOHead
from loss import SigLIP2Loss, chunked_cross_entropy, feature_loss, affinity_loss

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
dino_dim = 16384
iters = 10
config_keys = [k for k,v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
cuda = device.startswith('cuda')
autocast = torch.autocast(device_type='cuda' if cuda else 'cpu', dtype=getattr(torch, dtype), enabled=dtype != 'float32')
def sync():
    if cuda: torch.cuda.synchronize()
def measure(fn, n=iters): # -> (ms per call, peak MiB above the start on GPU)
    fn(); sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
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
print(f"decoder CE, {N} tokens x V={vocab}: naive {tn:.1f} ms, {mn:.0f} MiB | chunked {tc:.1f} ms, {mc:.0f} MiB "
      f"| memory ratio naive/chunked {mn / mc:.1f}x, time ratio chunked/naive {tc / tn:.2f}x")
del h, W, y

# 2) train-step time of each term relative to sigmoid-only (student fwd + bwd + AdamW step)
cfg = StudentConfig(image_model=image_model, image_size=image_size, text_width=width, text_depth=6, text_heads=6,
                    kept_ids=list(range(vocab)), embed_dim=embed_dim, image_mean=[0.5] * 3, image_std=[0.5] * 3)
student = Student(cfg).to(device)
x = torch.randn(batch_size, 3, image_size, image_size, device=device)
ids = torch.randint(5, 1000, (batch_size, seq_len), device=device)
t_img, t_txt = torch.randn(batch_size, embed_dim, device=device), torch.randn(batch_size, embed_dim, device=device)
seq = torch.randint(5, 1000, (batch_size, seq_len), device=device)
locca = {'cap': (seq, torch.full((batch_size,), 2, device=device)),
         'aref': (seq, torch.full((batch_size,), 2, device=device), torch.ones(batch_size, dtype=torch.bool, device=device)),
         'gcap': (seq, torch.full((batch_size,), 2, device=device), torch.ones(batch_size, dtype=torch.bool, device=device))}
def setup(locca_w=0.0, silc=0.0, tips=0.0, distill=False):
    v = student.visual
    dec = LoccaDecoder(vocab, width, 3, 6, 4 * width, v.enc_dim).to(device) if locca_w else None
    sh = DINOHead(v.pool_dim, dino_dim).to(device) if silc else None
    th = DINOHead(v.enc_dim, dino_dim).to(device) if tips else None
    fn = SigLIP2Loss(v, v.patch_embed_proj, decoder=dec, silc_head=sh, tips_head=th, mask_id=vocab, locca_weight=locca_w,
                     gamma=1.0 if (silc or tips) else 0.0, silc_weight=silc, tips_weight=tips, switch=0.0).to(device)
    fn.maybe_switch(1.0)
    params = [p for p in list(student.parameters()) + list(fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    def step():
        with autocast:
            img, txt, tok = student(x, ids)
            total, _ = fn(x, img.float(), txt.float(), tok, student.logit_scale.exp(), student.logit_bias, 0.9,
                          locca=locca if locca_w else None)
            if distill:
                total = total + feature_loss(img.float(), t_img) + feature_loss(txt.float(), t_txt) + affinity_loss(
                    F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1), F.normalize(t_img, dim=-1),
                    F.normalize(t_txt, dim=-1), student.logit_scale.exp(), 100.0)
        total.backward(); opt.step(); opt.zero_grad(set_to_none=True); fn.after_step()
    return step
rows = [('sigmoid only', {}), ('+ feature + affinity (A5)', dict(distill=True)), ('+ LocCa (3 decoder passes)', dict(locca_w=1.0)),
        ('+ SILC (8 local crops)', dict(silc=1.0)), ('+ TIPS (masked view)', dict(tips=0.25)),
        ('all SigLIP 2 terms', dict(locca_w=1.0, silc=1.0, tips=0.25))]
base = None
print(f"train step, {image_model} @ {image_size}, batch {batch_size}, {dtype} on {device}:")
for name, kw in rows:
    ms, mem = measure(setup(**kw))
    base = base or ms
    print(f"  {name:28s} {ms:8.1f} ms  {ms / base:5.2f}x  peak {mem:8.0f} MiB")
