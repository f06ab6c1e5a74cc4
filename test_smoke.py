"""
TinySigLIP tests, CPU only (~4 min on 2 cores):  python test_smoke.py   or   python -m pytest -q test_smoke.py
Unit tests call model.py / loss.py / eval.py directly; the rest runs the scripts through their command line.
"""
import os, sys, json, math, re, time, shutil, hashlib, subprocess
import pytest, torch
import torch.nn.functional as F
REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)
from model import Student, StudentConfig, LoccaDecoder, DINOHead, box_to_text, text_to_box, box_iou
from loss import (sigmoid_loss, infonce_loss, feature_loss, affinity_loss, chunked_cross_entropy, locca_inputs, locca_loss,
                  random_patch_mask, random_resized_crops, SigLIP2Loss)
from eval import retrieval_metrics

def tiny_student(**kw):
    cfg = dict(image_model='vit_tiny_patch16_224', image_size=32, image_kwargs=dict(patch_size=8, embed_dim=32, depth=1, num_heads=2),
               text_width=32, text_depth=1, text_heads=2, kept_ids=list(range(40)), embed_dim=16)
    return Student(StudentConfig(**{**cfg, **kw}))

# ----------------------------------------------------------------------------- losses: values, gradients, chunking
def test_sigmoid_loss_hand_computed_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cos = [[1, .6], [0, .8]]; logits = 10·cos - 10 = [[0, -4], [-10, -2]]; labels [[+,-],[-,+]]
    ls = lambda z: math.log(1 / (1 + math.exp(-z)))
    want = -(ls(0) + ls(4) + ls(10) + ls(-2)) / 2
    assert sigmoid_loss(img, txt, 10.0, -10.0).item() == pytest.approx(want, rel=1e-6)

def test_sigmoid_loss_multi_positive_3x3_brute_force():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(3, 4, generator=g), dim=-1), F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    img_ids, txt_ids = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 2]) # caption 1 is a second caption of image 0
    want = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if img_ids[i] == txt_ids[j] else -1.0
            want -= math.log(torch.sigmoid(torch.tensor(z * (5.0 * float(img[i] @ txt[j]) - 2.0))).item())
    assert sigmoid_loss(img, txt, 5.0, -2.0, img_ids, txt_ids).item() == pytest.approx(want / 3, rel=1e-5)

def test_gradients_match_autograd_float64():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: F.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    a, b, c, d = r(4, 3), r(4, 3), r(4, 3), r(4, 3)
    assert torch.autograd.gradcheck(lambda x, y: sigmoid_loss(x, y, 3.0, -1.0, chunk_size=3), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: feature_loss(x, y), (a, b))
    for kind in ('softmax', 'sigmoid'):
        assert torch.autograd.gradcheck(lambda x, y: affinity_loss(x, y, c, d, 4.0, 8.0, -1.0, -2.0, kind=kind), (a, b))

def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    img, txt = [F.normalize(torch.randn(10, 8, generator=g), dim=-1).requires_grad_() for _ in range(2)]
    ga = torch.autograd.grad(sigmoid_loss(img, txt, 10.0, -10.0), (img, txt))
    l2 = sigmoid_loss(img, txt, 10.0, -10.0, chunk_size=3)
    assert l2.item() == pytest.approx(sigmoid_loss(img, txt, 10.0, -10.0).item(), rel=1e-6)
    for x, y in zip(ga, torch.autograd.grad(l2, (img, txt))):
        assert torch.allclose(x, y, atol=1e-6)
    h, W, b = torch.randn(50, 8, generator=g, requires_grad=True), torch.randn(37, 8, generator=g, requires_grad=True), torch.randn(37, generator=g, requires_grad=True)
    y = torch.randint(0, 37, (50,), generator=g)
    ref = F.cross_entropy(F.linear(h, W, b), y, reduction='none')
    got = chunked_cross_entropy(h, W, b, y, chunk_size=16) # 50 tokens: chunks of 16, 16, 16, 2
    assert torch.allclose(ref, got, atol=1e-6)
    w = torch.randn(50, generator=g)
    for x, z in zip(torch.autograd.grad((ref * w).sum(), (h, W, b)), torch.autograd.grad((got * w).sum(), (h, W, b))):
        assert torch.allclose(x, z, atol=1e-5)

def test_infonce_and_distillation_minima():
    g = torch.Generator().manual_seed(3)
    img, txt = F.normalize(torch.randn(6, 5, generator=g), dim=-1), F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    logits = 7.0 * img @ txt.T
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert infonce_loss(img, txt, 7.0).item() == pytest.approx(ref.item(), rel=1e-6)
    assert feature_loss(img, img).item() == pytest.approx(0.0, abs=1e-6) and feature_loss(img, txt).item() > 0.1
    for kind in ('softmax', 'sigmoid'): # 0 when the student equals the teacher (same scale), > 0 otherwise
        assert affinity_loss(img, txt, img, txt, 7.0, 7.0, -3.0, -3.0, kind=kind).item() == pytest.approx(0.0, abs=1e-5)
        assert affinity_loss(img, txt, txt, img, 7.0, 7.0, -3.0, -3.0, kind=kind).item() > 1e-3

# ----------------------------------------------------------------------------- LocCa decoder
def test_decoder_masks_by_perturbation_and_cross_attention():
    torch.manual_seed(0)
    dec = LoccaDecoder(vocab_size=20, width=32, depth=2, heads=2, mlp_dim=64, enc_dim=24)
    torch.nn.init.normal_(dec.head.weight) # zero-init head: logits all 0 before training
    ids, enc = torch.randint(0, 20, (2, 6)), torch.randn(2, 5, 24)
    causal = torch.tensor([True, False]) # example 0 autoregressive, example 1 parallel, in one batch
    h = dec(ids, enc, causal)
    ids2 = ids.clone(); ids2[:, 4] = (ids[:, 4] + 1) % 20 # change a later token
    h2 = dec(ids2, enc, causal)
    assert torch.allclose(h[0, :4], h2[0, :4], atol=1e-6) and not torch.allclose(h[0, 4:], h2[0, 4:])  # causal: earlier unaffected
    assert not torch.allclose(h[1, :4], h2[1, :4])                                                    # parallel: everything sees it
    assert not torch.allclose(dec(ids, enc + 1, causal), h) # cross-attention reads the image tokens
    assert (LoccaDecoder(20, 32, 1, 2, 64, 24).head(h) == 0).all()

def test_locca_inputs_and_loss_masking():
    seq = torch.tensor([[7, 8, 9, 1, 0], [7, 5, 6, 1, 0]]); pre = torch.tensor([1, 2])
    inp, causal = locca_inputs(seq, pre, torch.tensor([False, True]), mask_id=20)
    assert inp[0].tolist() == [0, 7, 8, 9, 1] and causal.tolist() == [True, False]    # AR: shift right, BOS 0
    assert inp[1].tolist() == [7, 5, 20, 20, 20]                                      # parallel: prefix kept, rest masked
    torch.manual_seed(0)
    dec = LoccaDecoder(21, 16, 1, 2, 32, 8); torch.nn.init.normal_(dec.head.weight)
    enc = torch.randn(2, 3, 8)
    l = locca_loss(dec, enc, seq, pre, torch.tensor([False, False]), 20)
    seq2 = seq.clone(); seq2[1, 0] = 3 # a prefix target: not in the loss ... but it is the input of position 1
    seq3 = seq.clone(); seq3[:, 4] = 0 # pads stay pads
    assert l.item() == pytest.approx(locca_loss(dec, enc, seq3, pre, torch.tensor([False, False]), 20).item())
    # per-sequence normalisation: the loss equals the mean over examples of the mean CE over their target tokens
    hidden = dec(*locca_inputs(seq, pre, torch.tensor([False, False]), 20)[:1], enc, torch.tensor([True, True]))
    ce = F.cross_entropy(dec.head(hidden).transpose(1, 2), seq, reduction='none')
    want = (ce[0, 1:4].mean() + ce[1, 2:4].mean()) / 2
    assert l.item() == pytest.approx(want.item(), rel=1e-5)

def test_box_text_round_trip():
    for box in ([0.0, 0.1, 0.5, 1.0], [0.123, 0.456, 0.789, 0.999]):
        back = text_to_box(box_to_text(box))
        assert max(abs(a - b) for a, b in zip(box, back)) <= 0.5 / 499 + 1e-9
    assert box_to_text([0, 0, 1, 1]) == '0 0 499 499' and text_to_box('12 40') is None
    assert box_iou(torch.tensor([[0, 0, .5, .5]]), torch.tensor([[0, 0, .5, 1.]])).item() == pytest.approx(0.5)

# ----------------------------------------------------------------------------- SILC / TIPS / EMA
def sd_setup(**kw):
    torch.manual_seed(0)
    st = tiny_student()
    v = st.visual
    fn = SigLIP2Loss(v, v.patch_embed_proj, decoder=LoccaDecoder(40, 32, 1, 2, 64, v.enc_dim), silc_head=DINOHead(v.pool_dim, 64, 32, 16),
                     tips_head=DINOHead(v.enc_dim, 64, 32, 16), mask_id=40, gamma=1.0, n_local=2, switch=0.5, **kw)
    return st, fn

def test_mask_token_replaces_patches_before_pos_embed():
    st, fn = sd_setup()
    fn.maybe_switch(0.6)
    with torch.no_grad():
        fn.mask_token.fill_(3.0)
    seen = {}
    h = st.visual.net.pos_drop.register_forward_hook(lambda m, i, o: seen.__setitem__('x', o)) # after pos-emb + cls
    x = torch.randn(2, 3, 32, 32)
    mask = random_patch_mask(2, 16, 0.5)
    fn._masked_forward(x, mask)
    h.remove()
    net = st.visual.net
    pos = net.pos_embed[:, net.num_prefix_tokens:] # learned pos-emb of the 16 patches
    patches = seen['x'][:, net.num_prefix_tokens:] - pos
    assert torch.allclose(patches[mask], torch.full_like(patches[mask], 3.0), atol=1e-5)       # masked: token, then + pos
    clean = net.patch_embed(x)
    assert torch.allclose(patches[~mask], clean.flatten(1, 2)[~mask] if clean.dim() == 4 else clean[~mask], atol=1e-5)
    assert mask.sum(1).tolist() == [8, 8]

def test_switch_ema_and_gradients_reach_the_right_parameters():
    st, fn = sd_setup()
    x, ids = torch.randn(4, 3, 32, 32), torch.randint(0, 40, (4, 8))
    seq, pre, ok = torch.randint(5, 40, (4, 8)), torch.full((4,), 1), torch.ones(4, dtype=torch.bool)
    locca = {'cap': (seq, pre), 'aref': (seq, pre, ok), 'gcap': (seq, pre, ok)}
    assert fn.maybe_switch(0.4) == [] and not fn.switched
    fresh = fn.maybe_switch(0.5)
    assert set(map(id, fresh)) == set(map(id, fn.new_params())) and fn.maybe_switch(0.9) == [] # once
    assert all(torch.equal(a, b) for a, b in zip(fn.teacher.state_dict().values(), st.visual.state_dict().values()))
    img, txt, tok = st(x, ids)
    total, terms = fn(x, img, txt, tok, st.logit_scale.exp(), st.logit_bias, 0.6, locca=locca)
    assert {'sigmoid', 'locca', 'silc', 'tips'} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    total.backward()
    assert all(p.grad is None for p in fn.teacher.parameters()) and all(p.grad is None for p in fn.silc_head_t.parameters())
    learners = list(st.parameters()) + list(fn.decoder.parameters()) + list(fn.silc_head.parameters()) + list(fn.tips_head.parameters()) + [fn.mask_token]
    missing = [n for n, p in list(st.named_parameters()) + list(fn.named_parameters()) if p.requires_grad and p.grad is None]
    assert not missing, missing
    # EMA: after one step, teacher = m·teacher + (1 - m)·student, exactly
    before = [p.clone() for p in fn.teacher.parameters()]
    with torch.no_grad():
        for p in st.visual.parameters(): p.add_(0.1)
    fn.after_step()
    for t0, t1, s in zip(before, fn.teacher.parameters(), st.visual.parameters()):
        assert torch.allclose(t1, 0.996 * t0 + 0.004 * s, atol=1e-6)
    sd = fn.state_dict()
    _, fn2 = sd_setup(); fn2.load_state_dict(sd)
    assert bool(fn2.switched) and int(fn2.step) == 1 and torch.equal(fn2.silc_center, fn.silc_center)

def test_crops_and_mask_shapes():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(random_resized_crops(x, 1, (1.0, 1.0), 16, flip=False, ratio=(1, 1)), x, atol=1e-5) # identity crop
    assert random_resized_crops(x, 4, (0.05, 0.4), 8).shape == (8, 3, 8, 8)
    with pytest.raises(ValueError, match='ViT'):
        SigLIP2Loss(tiny_student(image_model='resnet18', image_kwargs={}).visual, None, tips_head=DINOHead(8, 8, 8, 8), gamma=1.0)

# ----------------------------------------------------------------------------- student + retrieval
def test_student_vocab_map_save_load(tmp_path):
    st = tiny_student(kept_ids=[0, 1, 2, 3, 4, 10, 500]).eval()
    assert st.map_ids(torch.tensor([0, 3, 10, 500, 11, 99999])).tolist() == [0, 3, 5, 6, 3, 3] # unknown -> UNK row
    st.save_pretrained(str(tmp_path))
    st2 = Student.from_pretrained(str(tmp_path))
    x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 600, (2, 64))
    assert torch.equal(st.encode_image(x), st2.encode_image(x)) and torch.equal(st.encode_text(ids), st2.encode_text(ids))
    ids2 = ids.clone(); ids2[:, -1] = 4 # SigLIP pools the last position
    assert not torch.equal(st.encode_text(ids), st.encode_text(ids2))
    cnn = tiny_student(image_model='resnet18', image_kwargs={}).eval()
    tok, pooled = cnn.visual(torch.randn(2, 3, 64, 64))
    assert tok.shape == (2, 4, 512) and pooled.shape == (2, 512) and cnn.visual.patch_embed_proj is None

def test_retrieval_metrics_vs_brute_force():
    g = torch.Generator().manual_seed(4)
    counts = [1, 7, 3, 5, 2, 6, 4, 1, 5, 5]
    index = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    img, txt = torch.randn(10, 6, generator=g), torch.randn(len(index), 6, generator=g)
    sim = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T
    want = {}
    for k in (1, 5, 10):
        want[f't2i_r{k}'] = 100 * sum(int(index[t]) in sim[t].topk(k).indices.tolist() for t in range(len(index))) / len(index)
        want[f'i2t_r{k}'] = 100 * sum(any(int(index[t]) == i for t in sim[:, i].topk(k).indices.tolist()) for i in range(10)) / 10
    got = retrieval_metrics(img, txt, index, chunk=3)
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    perfect = retrieval_metrics(torch.eye(10), torch.eye(10)[index], index)
    assert perfect['i2t_r1'] == perfect['t2i_r1'] == 100.0
    tie = retrieval_metrics(torch.eye(3), torch.tensor([[1.0, 1.0, 0], [1.0, 1.0, 0], [0, 0, 1.0]]), torch.tensor([0, 1, 2]))
    assert tie['i2t_r1'] == tie['t2i_r1'] == pytest.approx(100 / 3) and tie['i2t_r5'] == 100.0 # 0, 1 share a caption: no hit

def test_configurator(tmp_path):
    script = tmp_path / 's.py'
    script.write_text("import os\nlearning_rate = 1e-3\nmax_iters = 10\nlr_decay_iters = 0\ncompile = True\nname = 'x'\nopt = None\n"
                      "config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]\n"
                      f"exec(open({os.path.join(REPO, 'configurator.py')!r}).read())\nprint(repr((learning_rate, max_iters, lr_decay_iters, compile, name, opt)))\n")
    cfg = tmp_path / 'c.py'
    cfg.write_text("import math\nmax_iters = 20\nlr_decay_iters = max_iters * 2\n")
    r = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True)
    p = r(str(cfg), '--learning_rate=1', '--name=a=b', '--opt=(1,2)')
    assert p.returncode == 0 and p.stdout.strip().endswith("(1.0, 20, 40, True, 'a=b', (1, 2))"), p.stderr
    assert r('--name=123').stdout.strip().endswith("'123', None)")
    for args, msg in [(['--lr=3'], "unknown config key 'lr'"), (['--compile=false'], 'expected bool'),
                      (['--max_iters=1.5'], 'expected int')]:
        p = r(*args)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    cfg.write_text("learnign_rate = 5e-4\n")
    p = r(str(cfg))
    assert p.returncode != 0 and 'learnign_rate' in p.stderr and str(cfg) in p.stderr
    cfg.write_text("compile = 'no'\n") # a config file's values are type-checked against the defaults too
    p = r(str(cfg))
    assert p.returncode != 0 and 'expected bool' in p.stderr and str(cfg) in p.stderr
ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')

def run(*args, ok=True, timeout=600, env=None):
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p

@pytest.fixture(scope='session')
def demo(tmp_path_factory):
    """The quick demo once (world -> teacher -> cache -> A1-A5 -> eval -> report); other tests reuse its caches.
    TEST_DEMO_DIR=<dir> reuses a `DEMO_DIR=<dir> bash demo.sh --quick` made by this same code (faster iterations)."""
    if os.environ.get('TEST_DEMO_DIR'):
        import pathlib
        return pathlib.Path(os.environ['TEST_DEMO_DIR'])
    d = tmp_path_factory.mktemp('demo')
    t = time.time()
    p = subprocess.run(['bash', 'demo.sh', '--quick'], cwd=REPO, env=dict(ENV, DEMO_DIR=str(d), PY=sys.executable),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    print(f"quick demo: {time.time() - t:.0f}s")
    return d

def test_demo_quick_writes_tables(demo):
    report = open(demo / 'out/shapes/report.md').read()
    assert 'Table 1' in report and 'Table 2' in report
    t = json.load(open(demo / 'cache/shapes/test/eval.json')) # the quick teacher is too short to learn: quality is
    assert t['n_images'] == 100 and t['n_captions'] == 500   # the full demo's job (README), here the plumbing
    assert '(missing: ' in report # --quick trains only A1 and A5: the other rows must show as gaps
    for a in ('a1', 'a5'):
        e = json.load(open(demo / f'out/shapes/{a}/eval.json'))
        assert e['fingerprint'] == t['fingerprint'] and 0 <= e['metrics']['t2i_r1'] <= 100
    m = json.load(open(demo / 'cache/shapes/train/manifest.json'))
    assert m['embed_dim'] == 128 and m['counts']['images'] == 300 and m['teacher_kind'] == 'ours'
    assert os.path.exists(demo / 'out/shapes/a5/curves.png') and os.path.exists(demo / 'out/shapes/ablation.png')

def tiny_world(tmp, **kw):
    args = dict(n_web=20, n_train=40, n_val=20, n_test=20, **kw)
    run('data/shapes/prepare.py', f'--out_dir={tmp}', *[f'--{k}={v}' for k, v in args.items()])
    return tmp

@pytest.mark.parametrize('kind', ['siglip', 'siglip2'])
def test_cache_matches_direct_hf_teacher(tmp_path, kind):
    """Cached embeddings of a tiny random SiglipModel / Siglip2Model == direct get_*_features (cos >= 0.999)."""
    from transformers import AutoModel, AutoProcessor
    from PIL import Image
    sys.path.insert(0, os.path.join(REPO, 'data', 'shapes'))
    from prepare import make_tiny_hf_teacher
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'), kind=kind)
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={tmp_path / "t"}', f'--out_dir={tmp_path / "c"}',
        '--num_workers=0', '--batch_size=7', '--shard_size=8')
    from eval import load_cache
    c, man = load_cache(str(tmp_path / 'c' / 'val'))
    assert len(man['shards']) == 3 and man['teacher_kind'] == kind
    model, proc = AutoModel.from_pretrained(str(tmp_path / 't')).eval(), AutoProcessor.from_pretrained(str(tmp_path / 't'))
    caps = json.load(open(w / 'annotations/captions_val2017.json'))
    files = {im['id']: im['file_name'] for im in caps['images']}
    texts = [a['caption'].lower() for a in sorted(caps['annotations'], key=lambda a: (a['image_id'], a['id']))]
    with torch.no_grad():
        imgs = [Image.open(w / 'val2017' / files[int(i)]).convert('RGB') for i in c['image_ids']]
        img = model.get_image_features(**proc.image_processor(imgs, return_tensors='pt')).pooler_output
        ids = proc.tokenizer(texts, padding='max_length', max_length=64, truncation=True, return_tensors='pt')['input_ids']
        txt = model.get_text_features(input_ids=ids).pooler_output
    assert torch.equal(ids.int(), c['input_ids'])
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    assert cos(img, c['image_embeds']).min() >= 0.999 and cos(txt, c['text_embeds']).min() >= 0.999

def test_cache_bad_inputs_and_resume(tmp_path):
    """Missing file -> clear error; corrupt/grayscale/CMYK/long caption/box outside -> counted; resume keeps shards."""
    from PIL import Image
    w = tiny_world(tmp_path / 'w')
    caps_f, inst_f = w / 'annotations/captions_val2017.json', w / 'annotations/instances_val2017.json'
    caps, inst = json.load(open(caps_f)), json.load(open(inst_f))
    ims = caps['images']
    (w / 'val2017' / ims[0]['file_name']).write_bytes(b'not a jpeg at all')                  # corrupt
    Image.open(w / 'val2017' / ims[1]['file_name']).convert('L').save(w / 'val2017' / ims[1]['file_name'])     # grayscale
    Image.open(w / 'val2017' / ims[2]['file_name']).convert('CMYK').save(w / 'val2017' / ims[2]['file_name'])  # CMYK JPEG
    caps['annotations'][5]['caption'] = ' '.join(['red circle'] * 60)                       # > 64 tokens
    json.dump(caps, open(caps_f, 'w'))
    inst['annotations'][0]['bbox'] = [1000, 1000, 5, 5]                                     # entirely outside
    inst['annotations'][1]['bbox'] = [-4, -4, 10, 10]                                       # partly outside: clipped
    json.dump(inst, open(inst_f, 'w'))
    args = [f'--data_dir={w}', '--split=val', '--teacher=none', f'--processor={w / "processor"}', f'--out_dir={tmp_path / "c"}',
            '--num_workers=0', '--shard_size=8']
    os.remove(w / 'val2017' / ims[3]['file_name'])
    p = run('cache_teacher.py', *args, ok=False)
    assert p.returncode != 0 and ims[3]['file_name'] in p.stderr + p.stdout and 'skip_missing' in p.stderr + p.stdout
    run('cache_teacher.py', *args, '--skip_missing=True')
    m = json.load(open(tmp_path / 'c/val/manifest.json'))
    assert m['counts']['missing_images'] == 1 and m['counts']['skipped_images'] == 1 and m['counts']['images'] == 18
    assert m['counts']['truncated_captions'] == 1 and m['counts']['dropped_boxes'] == 1
    assert m['skipped'][0]['image_id'] == ims[0]['id']
    # resume: drop the manifest and one shard (as after a crash), leave a half-written temp file; rerun
    first = os.path.getmtime(tmp_path / 'c/val/val-00000.safetensors')
    os.remove(tmp_path / 'c/val/manifest.json'); os.remove(tmp_path / 'c/val/val-00001.safetensors')
    (tmp_path / 'c/val/val-00001.safetensors.tmp').write_bytes(b'half')
    from eval import load_cache
    with pytest.raises(SystemExit, match='manifest'):
        load_cache(str(tmp_path / 'c/val'))
    out = run('cache_teacher.py', *args, '--skip_missing=True').stdout
    assert '2 done before' in out and os.path.getmtime(tmp_path / 'c/val/val-00000.safetensors') == first
    assert json.load(open(tmp_path / 'c/val/manifest.json'))['fingerprint'] == m['fingerprint']
    p = run('cache_teacher.py', *args, '--skip_missing=True', '--image_size=16', ok=False) # other settings: refuse to mix
    assert p.returncode != 0 and 'other settings' in p.stderr
    p = run('cache_teacher.py', *args, '--shard_sise=8', ok=False)
    assert p.returncode != 0 and 'shard_sise' in p.stderr + p.stdout

def test_cache_karpathy_split_keeps_every_caption(tmp_path):
    """The Karpathy reader (dataset_coco.json format): split selection incl. 'a+b', every caption kept."""
    w = tiny_world(tmp_path / 'w')
    k = json.load(open(w / 'annotations/dataset_shapes.json'))
    k['images'][-1]['sentences'].append({'raw': 'a sixth caption', 'tokens': []}) # COCO has images with 6-7
    json.dump(k, open(w / 'annotations/dataset_shapes.json', 'w'))
    args = lambda out: ['cache_teacher.py', f'--data_dir={w}', f'--karpathy={w}/annotations/dataset_shapes.json', '--split=val+test',
                        '--teacher=none', f'--processor={w / "processor"}', f'--out_dir={tmp_path / out}', '--num_workers=0', '--shard_size=8']
    run(*args('c'))
    m = json.load(open(tmp_path / 'c/val+test/manifest.json'))
    assert m['counts']['images'] == 40 and m['counts']['captions'] == 201 and m['dataset']['reader'] == 'karpathy'
    # torchrun: 2 ranks split the 5 shards (r, r+2, ...), rank 0 writes the manifest -> the same cache, byte for byte
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args('c2'))
    m2 = json.load(open(tmp_path / 'c2/val+test/manifest.json'))
    assert len(m2['shards']) == 5 and m2['counts'] == m['counts'] and m2['fingerprint'] == m['fingerprint']
    assert [s['sha256'] for s in m['shards']] == [s['sha256'] for s in m2['shards']]

def student_args(demo, out, *extra):
    return ['train.py', 'config/a5.py', 'config/shapes.py', f'--train_cache={demo}/cache/shapes/train',
            f'--val_cache={demo}/cache/shapes/val', f'--out_dir={out}', '--batch_size=16', '--val_images=50',
            '--log_interval=1', '--warmup_iters=2', *extra]

def last_row(out):
    rows = [json.loads(l) for l in open(os.path.join(out, 'log.jsonl'))]
    return [r for r in rows if 'loss' in r][-1], [r for r in rows if 'val/i2t_r1' in r][-1]

@pytest.mark.parametrize('max_iters', [30, 20]) # switch at iter 15 (after the checkpoint) / 10 (exactly at it)
def test_train_resume_after_kill_is_exact_across_the_switch(demo, tmp_path, max_iters):
    """A6 (A5 + LocCa + SILC/TIPS, switch at half the run): SIGKILL right after the iter-10 checkpoint, resume across
    (or exactly at) the switch point, and get the same losses and val numbers as the uninterrupted run."""
    common = [f'--max_iters={max_iters}', '--eval_interval=10', '--switch=0.5']
    args = lambda out, *a: ['train.py', 'config/a6.py', *student_args(demo, out, *common, *a)[2:]]
    run(*args(tmp_path / 'full'))
    p = subprocess.Popen([sys.executable, *args(tmp_path / 'killed')], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    for line in p.stdout: # kill right after the iter-10 checkpoint was written
        if line.startswith('iter 11:'):
            p.kill(); break
    p.wait()
    assert json.load(open(tmp_path / 'killed/meta.json'))['iter_num'] == 10
    run(*args(tmp_path / 'killed', '--init_from=resume'))
    (a, va), (b, vb) = last_row(tmp_path / 'full'), last_row(tmp_path / 'killed')
    assert a['iter'] == b['iter'] == max_iters and {'loss/silc', 'loss/tips', 'loss/locca'} <= set(a)
    for k in a:
        if k.startswith('loss'):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    assert va == pytest.approx(vb, rel=1e-5, abs=1e-6)

def test_siglip2_terms_decrease(demo, tmp_path):
    """Every SigLIP 2 term goes down on the synthetic world (SILC/TIPS from the switch on); eval.json gets ARef numbers."""
    out = tmp_path / 'a6'
    run(*['train.py', 'config/a6.py', *student_args(demo, out, '--max_iters=150', '--eval_interval=150', '--switch=0.4',
                                                      '--batch_size=32', '--learning_rate=3e-3')[2:]])
    rows = [json.loads(l) for l in open(out / 'log.jsonl') if '"loss"' in l]
    for k in ('loss/sigmoid', 'loss/locca/cap', 'loss/locca/aref', 'loss/locca/gcap', 'loss/silc', 'loss/tips'):
        v = [r[k] for r in rows if k in r]
        first, last = sum(v[:15]) / 15, sum(v[-15:]) / 15
        assert last < first, (k, first, last)
    run('eval.py', f'--cache={demo}/cache/shapes/test', f'--ckpt={out}')
    e = json.load(open(out / 'eval.json'))
    assert 0 <= e['locca']['aref_acc_iou50'] <= 100 and e['locca']['cap_token_acc'] > 10

def test_ddp_two_cpu_processes_match_one(demo, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, batch 8 each) == 1 process with batch 16 (same global batch)."""
    common = ['--max_iters=5', '--eval_interval=5', '--num_threads=1']
    run(*student_args(demo, tmp_path / 'one', *common))
    args = student_args(demo, tmp_path / 'two', *common)
    args[args.index('--batch_size=16')] = '--batch_size=8'
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args)
    (a, va), (b, vb) = last_row(tmp_path / 'one'), last_row(tmp_path / 'two')
    for k in a:
        if k.startswith('loss'):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    assert va['val/i2t_r1'] == pytest.approx(vb['val/i2t_r1'], abs=1e-6) and json.load(open(tmp_path / 'two/meta.json'))['world_size'] == 2

def test_train_val_subset_matches_an_independent_eval(demo, tmp_path):
    """train.py's periodic val R@1 on the first val_images images (not a multiple of its 256-image chunks) ==
    retrieval_metrics on the same images computed here from the saved student."""
    from eval import load_cache
    run(*student_args(demo, tmp_path / 'v', '--max_iters=3', '--eval_interval=3', '--val_images=37'))
    _, row = last_row(tmp_path / 'v')
    val, _ = load_cache(f'{demo}/cache/shapes/val')
    s = Student.from_pretrained(str(tmp_path / 'v')).eval()
    keep = val['caption_image_ids'] <= val['image_ids'][36]
    with torch.no_grad():
        img, txt = s.encode_image(s.preprocess(val['pixels'][:37])), s.encode_text(val['input_ids'][keep].long())
    m = retrieval_metrics(img, txt, torch.searchsorted(val['image_ids'][:37], val['caption_image_ids'][keep]))
    for k in ('i2t_r1', 't2i_r1', 'i2t_r10', 't2i_r10'):
        assert row[f'val/{k}'] == pytest.approx(m[k], abs=1e-4), k

def test_compile_switch_matches_eager(demo, tmp_path):
    """--compile=True (torch.compile, inductor on CPU) trains like eager mode; the checkpoint holds the uncompiled
    model, so Student.from_pretrained loads it."""
    common = ['--max_iters=4', '--eval_interval=4', '--num_threads=2']
    run(*student_args(demo, tmp_path / 'eager', *common))
    run(*student_args(demo, tmp_path / 'comp', *common, '--compile=True'))
    (a, _), (b, _) = last_row(tmp_path / 'eager'), last_row(tmp_path / 'comp')
    for k in a:
        if k.startswith('loss'):
            assert a[k] == pytest.approx(b[k], rel=1e-3), k
    assert Student.from_pretrained(str(tmp_path / 'comp')).config.embed_dim == 128

def test_train_rejects_bad_config(demo, tmp_path):
    p = run(*student_args(demo, tmp_path / 'x', '--learnign_rate=1'), ok=False)
    assert p.returncode != 0 and 'learnign_rate' in p.stderr + p.stdout
    p = run(*student_args(demo, tmp_path / 'x', '--embed_dim=64'), ok=False)
    assert p.returncode != 0 and 'embed_dim=64' in p.stderr + p.stdout
    p = run(*student_args(demo, tmp_path / 'x', f'--val_cache={demo}/cache/shapes/train'), ok=False) # leak
    assert p.returncode != 0 and 'overlap' in (p.stderr + p.stdout).lower()


def test_readme_snippet_trains_a_tiny_siglip2(tmp_path):
    """The README's 15-line snippet, verbatim, on a tiny random Siglip2Model: every term finite, total going down."""
    from transformers import AutoModel
    sys.path.insert(0, os.path.join(REPO, 'data', 'shapes'))
    from prepare import make_tiny_hf_teacher
    code = re.search(r'<!-- snippet.*?```python\n(.*?)```', open(os.path.join(REPO, 'README.md')).read(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'), kind='siglip2', width=48, image_size=32, patch=8)
    torch.manual_seed(0)
    ns = dict(torch=torch, model=AutoModel.from_pretrained(str(tmp_path / 't')).train())
    exec(code, ns)
    B, V = 8, ns['V']
    pixels, ids = torch.randn(B, 3, 32, 32), torch.randint(5, V, (B, 64))
    seq, pre, ok = torch.randint(5, V, (B, 12)), torch.full((B,), 2), torch.tensor([True] * 6 + [False] * 2)
    locca = {'cap': (seq, pre), 'aref': (seq.flip(1), pre, ok), 'gcap': (seq.roll(3, 1), pre, ok)}
    totals = []
    for step in range(8): # progress crosses the 80% switch at step 2: SILC + TIPS join
        torch.manual_seed(100) # same crops and masks every step: the decrease is not sampling luck
        total, terms = ns['train_step'](pixels, ids, locca, 0.7 + step * 0.025)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        totals.append(total.item())
    assert {'sigmoid', 'locca', 'silc', 'tips'} <= set(terms)
    assert totals[-1] < totals[2] and totals[-1] < totals[0]


# ----------------------------------------------------------------------------- reliability: bad inputs and faults
# (issue 9) every test here reproduced its failure on the code before the fix: a silent wrong result or a traceback
def clean_error(p, *needles): # a one-line error naming what is wrong: non-zero exit, no traceback
    err = p.stderr + p.stdout
    return p.returncode != 0 and 'Traceback' not in err and all(n in err for n in needles)

def test_rel_retrieval_metrics_refuses_nonfinite_and_collapsed():
    """NaN embeddings used to score R@1 = 100 (every comparison false -> rank 0): refused, as is a collapsed model."""
    img, index = torch.eye(4), torch.arange(4)
    for bad in (float('nan'), float('inf')):
        x = img.clone()
        x[2, 1] = bad
        for a, b in ((x, img), (img, x)):
            with pytest.raises(SystemExit, match='non-finite'):
                retrieval_metrics(a, b, index)
    for a, b in ((torch.ones(4, 4), img), (img, torch.ones(4, 4))):
        with pytest.raises(SystemExit, match='collapsed'):
            retrieval_metrics(a, b, index)
    assert retrieval_metrics(img, img, index)['i2t_r1'] == 100.0

def test_rel_report_refuses_nan_stale_and_corrupt(tmp_path):
    """report.py: a NaN run is never 'best', an eval.json of another checkpoint or cache is refused by name (stale),
    a corrupt eval.json / log.jsonl is reported as corrupt; the report is still written."""
    runs = tmp_path / 'out'
    sha = lambda b: hashlib.sha256(b).hexdigest()
    def make(name, r1, scored=b'w', fp='f'):
        d = runs / name
        d.mkdir(parents=True)
        (d / 'model.safetensors').write_bytes(b'w')
        json.dump(dict(iter_num=10, config={}), open(d / 'meta.json', 'w'))
        ev = dict(split='test', n_images=2, n_captions=2, fingerprint=fp, run=name, model='student',
                  checkpoint=dict(iter_num=10, model_sha256=sha(scored)), metrics={k: r1 for k in
                  ('i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10')})
        json.dump(ev, open(d / 'eval.json', 'w'))
        return d
    teacher = dict(split='test', n_images=2, n_captions=2, fingerprint='f', metrics={k: 50.0 for k in
                   ('i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10')})
    json.dump(teacher, open(tmp_path / 'teacher.json', 'w'))
    (make('a1', 10.0) / 'log.jsonl').write_text('{"iter": 1, "loss": 1.0}\n{"iter": 2, "lo')
    make('a2', float('nan'))            # diverged
    make('a3', 20.0, scored=b'old')     # eval.json of an older model.safetensors
    (make('a4', 25.0) / 'eval.json').write_text('{"metrics": ')
    make('a5', 15.0)
    make('a6', 40.0, fp='g')            # scored on another cache / split
    p = run('report.py', f'--runs_dir={runs}', f'--teacher_eval={tmp_path / "teacher.json"}', f'--out={tmp_path / "r.md"}')
    rep = open(tmp_path / 'r.md').read()
    assert 'best distilled (a5)' in rep, rep
    row = lambda n: [l for l in rep.splitlines() if l.startswith(f'| {n} |')][0]
    assert 'non-finite' in row('a2') and all(c.strip() == '—' for c in row('a2').split('|')[3:7])
    assert 'stale' in row('a3') and str(runs / 'a3' / 'eval.json') in row('a3') and '20.0' not in row('a3')
    assert 'corrupt' in row('a4') and str(runs / 'a4' / 'eval.json') in row('a4')
    assert 'another cache' in row('a6') and '40.0' not in row('a6')
    assert 'corrupt' in rep and str(runs / 'a1' / 'log.jsonl') in rep and p.returncode == 0

def test_rel_configurator_syntax_error_names_file_and_line(tmp_path):
    cfg = tmp_path / 'bad.py'
    cfg.write_text("batch_size = 16\nmax_iters = (\n")
    p = run('train.py', str(cfg), ok=False)
    assert clean_error(p, str(cfg), 'line 2'), p.stderr[-2000:]

def test_rel_cache_fingerprint_hashes_content(tmp_path):
    """The teacher fingerprint hashes files, not the path: `<dir>/./t` == `<dir>/t`; retrained weights or edited
    captions at the same paths make a rerun into the old out_dir refuse, saying what changed."""
    from safetensors.torch import load_file, save_file
    sys.path.insert(0, os.path.join(REPO, 'data', 'shapes'))
    from prepare import make_tiny_hf_teacher
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'))
    args = lambda t, out: ['cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={t}', f'--out_dir={out}',
                           '--num_workers=0', '--shard_size=8']
    run(*args(tmp_path / 't', tmp_path / 'c1'))
    run(*args(f'{tmp_path}/./t', tmp_path / 'c2'))
    m1, m2 = [json.load(open(tmp_path / c / 'val/manifest.json')) for c in ('c1', 'c2')]
    assert m1['teacher_fingerprint'] == m2['teacher_fingerprint'] and m1['fingerprint'] == m2['fingerprint']
    caps_f = w / 'annotations/captions_val2017.json'
    good = caps_f.read_text()
    caps = json.loads(good)
    caps['annotations'][0]['caption'] = 'a fixed caption'
    caps_f.write_text(json.dumps(caps))
    p = run(*args(tmp_path / 't', tmp_path / 'c1'), ok=False)
    assert clean_error(p, 'captions_val2017.json') and 'teacher weights' not in p.stderr, p.stderr[-2000:]
    caps_f.write_text(good)
    wf = tmp_path / 't/model.safetensors' # "retrained in place": new weights at the same path
    sd = load_file(str(wf))
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = sd[k] + 1.0
    save_file(sd, str(wf), metadata={'format': 'pt'})
    p = run(*args(tmp_path / 't', tmp_path / 'c2'), ok=False)
    assert clean_error(p, 'teacher weights') and 'captions' not in p.stderr, p.stderr[-2000:]

def test_rel_cache_refuses_foreign_tokenizer(tmp_path):
    """--processor with another vocabulary than the teacher's: refused before any image is read (no shard written),
    for one of our teachers (tokenizer saved beside it) and for an HF teacher with a smaller text vocabulary."""
    from transformers import AutoTokenizer
    sys.path.insert(0, os.path.join(REPO, 'data', 'shapes'))
    from prepare import make_tiny_hf_teacher
    w = tiny_world(tmp_path / 'w')
    foreign = tmp_path / 'foreign'
    shutil.copytree(w / 'processor', foreign)
    tok = AutoTokenizer.from_pretrained(str(w / 'processor'))
    n = len(tok)
    tok.add_tokens(['zzunseen', 'qqunseen'])
    tok.save_pretrained(str(foreign))
    ours = tmp_path / 'ours'
    tiny_student(kept_ids=list(range(n))).save_pretrained(str(ours))
    for f in os.listdir(w / 'processor'): # as train.py does: the teacher's tokenizer travels with it
        shutil.copy(w / 'processor' / f, ours / f)
    make_tiny_hf_teacher(str(tmp_path / 'hf'), str(w / 'processor'))
    for t, needles in ((ours, ['vocabulary', str(foreign)]), (tmp_path / 'hf', [str(n), str(n + 2)])):
        out = tmp_path / f'c-{t.name}'
        p = run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={t}', f'--processor={foreign}',
                f'--out_dir={out}', '--num_workers=0', ok=False)
        assert clean_error(p, *needles), p.stderr[-2000:]
        assert not any(f.endswith('.safetensors') for f in os.listdir(out / 'val'))
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={ours}', f'--out_dir={tmp_path / "ok"}', '--num_workers=0')

def test_rel_cache_writer_error_early_and_truncated_shard(tmp_path):
    """A shard that cannot be written stops the run at the next shard (not after all of them), naming the file;
    a 0-byte or truncated shard left by a power loss is recomputed on rerun (named), giving the same cache."""
    w = tiny_world(tmp_path / 'w')
    c = tmp_path / 'c/val'
    args = ['cache_teacher.py', f'--data_dir={w}', '--split=val', '--teacher=none', f'--processor={w / "processor"}',
            f'--out_dir={tmp_path / "c"}', '--num_workers=0', '--shard_size=4'] # 20 images -> 5 shards
    c.mkdir(parents=True)
    (c / 'val-00000.safetensors.tmp').mkdir() # the writer cannot create shard 0's file (like a full disk)
    p = run(*args, ok=False)
    assert clean_error(p, 'val-00000.safetensors'), p.stderr[-2000:]
    assert not os.path.exists(c / 'val-00002.safetensors') # stopped early: shards 2-4 were never computed
    (c / 'val-00000.safetensors.tmp').rmdir()
    run(*args)
    m = json.load(open(c / 'manifest.json'))
    open(c / 'val-00001.safetensors', 'wb').close()
    data = (c / 'val-00003.safetensors').read_bytes()
    (c / 'val-00003.safetensors').write_bytes(data[:len(data) // 2])
    os.remove(c / 'manifest.json')
    out = run(*args).stdout
    assert 'val-00001.safetensors' in out and 'val-00003.safetensors' in out and '3 done before' in out
    assert json.load(open(c / 'manifest.json'))['fingerprint'] == m['fingerprint']

def test_rel_karpathy_two_instances_files_and_no_boxes_training(tmp_path):
    """Karpathy train+restval spans two COCO instances files: --instances=a.json,b.json finds boxes for every image
    (crowd boxes counted). A Karpathy cache without boxes trains A6 (ARef/GCap skipped, said once), and a resume
    after the captions changed refuses, naming the annotation file."""
    w = tiny_world(tmp_path / 'w')
    kf = w / 'annotations/dataset_shapes.json'
    a = w / 'annotations'
    iv, it = json.load(open(a / 'instances_val2017.json')), json.load(open(a / 'instances_test2017.json'))
    it['annotations'][0]['iscrowd'] = 1
    json.dump(it, open(a / 'instances_test2017.json', 'w'))
    args = lambda split, out, *x: ['cache_teacher.py', f'--data_dir={w}', f'--karpathy={kf}', f'--split={split}', '--teacher=none',
                                   f'--processor={w / "processor"}', f'--out_dir={tmp_path / out}', '--num_workers=0', *x]
    run(*args('val+test', 'b', f'--instances={a / "instances_val2017.json"},{a / "instances_test2017.json"}'))
    from eval import load_cache
    d, m = load_cache(str(tmp_path / 'b/val+test'))
    want = {x['image_id'] for x in iv['annotations'] + it['annotations'][1:]}
    assert set(d['region_image_ids'].tolist()) == want and m['counts']['crowd_boxes'] == 1
    assert m['counts']['regions'] == len(iv['annotations']) + len(it['annotations']) - 1
    for s in ('train', 'val'): # no --instances: no boxes at all
        run(*args(s, 'k'))
    tr = ['train.py', 'config/a6.py', 'config/shapes.py', f'--train_cache={tmp_path}/k/train', f'--val_cache={tmp_path}/k/val',
          f'--out_dir={tmp_path / "o"}', '--lambda_feat=0.0', '--lambda_affinity=0.0', '--embed_dim=32', '--batch_size=8',
          '--val_images=20', '--max_iters=4', '--eval_interval=2', '--log_interval=1', '--switch=0.5', '--warmup_iters=1']
    out = run(*tr).stdout
    assert out.count('no regions') == 1, out
    rows = [json.loads(l) for l in open(tmp_path / 'o/log.jsonl') if '"loss"' in l]
    assert all(r['loss/locca/aref'] == 0 and r['loss/locca/cap'] > 0 and math.isfinite(r['loss']) for r in rows)
    k = json.load(open(kf))
    k['images'][0]['sentences'][0]['raw'] = 'a fixed caption'
    json.dump(k, open(kf, 'w'))
    shutil.rmtree(tmp_path / 'k/train')
    run(*args('train', 'k'))
    p = run(*tr, '--init_from=resume', '--max_iters=6', ok=False)
    assert clean_error(p, 'dataset_shapes.json'), p.stderr[-2000:]

def test_rel_demo_train_stops_on_nonfinite_loss(demo, tmp_path):
    """A diverging run stops at the first non-finite loss, naming the iteration and the terms; ckpt.pt / model.safetensors
    keep the last good (finite) checkpoint and no NaN val row is logged."""
    from safetensors.torch import load_file
    out = tmp_path / 'nan'
    p = run(*student_args(demo, out, '--max_iters=6', '--eval_interval=3', '--learning_rate=1e30'), ok=False)
    err = p.stderr + p.stdout
    assert clean_error(p, 'non-finite') and re.search(r'iter \d+: non-finite', err), err[-2000:]
    assert json.load(open(out / 'meta.json'))['iter_num'] == 0
    assert all(torch.isfinite(v).all() for v in load_file(str(out / 'model.safetensors')).values())
    assert all(math.isfinite(v) for l in open(out / 'log.jsonl') for k, v in json.loads(l).items() if k.startswith('val/'))

def test_rel_demo_lock_and_stale_eval(demo, tmp_path):
    """One train.py per out_dir (a live lock refuses, a dead pid's lock is taken over); eval.json records the checkpoint
    it scored, and report.py refuses it once the run has trained further."""
    out = tmp_path / 'runs/a5'
    run(*student_args(demo, out, '--max_iters=2', '--eval_interval=2'))
    (out / 'lock').write_text(str(os.getpid())) # a live process holds the out_dir
    p = run(*student_args(demo, out, '--max_iters=4', '--eval_interval=2', '--init_from=resume'), ok=False)
    assert clean_error(p, str(os.getpid()), 'lock'), p.stderr[-2000:]
    dead = subprocess.Popen(['true'])
    dead.wait()
    (out / 'lock').write_text(str(dead.pid))
    run('eval.py', f'--cache={demo}/cache/shapes/test', f'--ckpt={out}')
    e = json.load(open(out / 'eval.json'))
    assert e['checkpoint']['iter_num'] == 2 and e['split'] == 'test'
    assert e['checkpoint']['model_sha256'] == hashlib.sha256((out / 'model.safetensors').read_bytes()).hexdigest()
    p = run(*student_args(demo, out, '--max_iters=4', '--eval_interval=2', '--init_from=resume'))
    assert 'stale lock' in p.stdout and not os.path.exists(out / 'lock')
    rep = tmp_path / 'r.md'
    run('report.py', f'--runs_dir={tmp_path / "runs"}', f'--teacher_eval={demo}/cache/shapes/test/eval.json', f'--out={rep}')
    row = [l for l in open(rep) if l.startswith('| a5 |')][0]
    assert 'stale' in row and str(out / 'eval.json') in row, row

def test_rel_demo_one_line_errors(demo, tmp_path):
    """Bad values and broken files get one line naming the key / file, before any training starts."""
    x = tmp_path / 'x'
    for arg, key in [('--eval_interval=0', 'eval_interval'), ('--log_interval=0', 'log_interval'), ('--val_images=0', 'val_images'),
                     ('--grad_accum=0', 'grad_accum'), ('--warmup_iters=-1', 'warmup_iters'), ('--batch_size=100000', 'batch_size'),
                     ('--image_model=vit_nonexistent_patch16', 'vit_nonexistent_patch16')]:
        p = run(*student_args(demo, x, '--max_iters=2', arg), ok=False)
        assert clean_error(p, key), (arg, p.stderr[-2000:])
    f = tmp_path / 'a_file'
    f.write_text('x')
    assert clean_error(run(*student_args(demo, f, '--max_iters=2'), ok=False), str(f))
    vc = tmp_path / 'vc'
    shutil.copytree(f'{demo}/cache/shapes/val', vc)
    (vc / 'manifest.json').write_text((vc / 'manifest.json').read_text()[:100])
    assert clean_error(run(*student_args(demo, x, '--max_iters=2', f'--val_cache={vc}'), ok=False), str(vc / 'manifest.json'))
    r = tmp_path / 'r'
    run(*student_args(demo, r, '--max_iters=1', '--eval_interval=1'))
    data = (r / 'ckpt.pt').read_bytes()
    (r / 'ckpt.pt').write_bytes(data[:len(data) // 2])
    p = run(*student_args(demo, r, '--max_iters=2', '--init_from=resume'), ok=False)
    assert clean_error(p, str(r / 'ckpt.pt')), p.stderr[-2000:]
    os.remove(r / 'model.safetensors')
    p = run('eval.py', f'--cache={demo}/cache/shapes/test', f'--ckpt={r}', ok=False)
    assert clean_error(p, 'model.safetensors'), p.stderr[-2000:]
    p = run('cache_teacher.py', f'--data_dir={demo}/data/shapes', f'--out_dir={x}', '--max_images=-1', ok=False)
    assert clean_error(p, 'max_images'), p.stderr[-2000:]


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))
