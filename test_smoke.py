"""
TinySigLIP's tests, on CPU. Unit tests call model.py, loss.py and eval.py directly; the rest run
the scripts through their command line, as a user would. Sections follow the file each test
exercises.

    python test_smoke.py                         # the full suite: what the README and CI run
    python test_smoke.py -m fast                 # the inner loop: unit tests + small command lines
    python -m pytest -q -m fast test_smoke.py    # the same
    python -m pytest -q test_smoke.py -k resume  # the tests whose name matches
    DEMO_DIR=/tmp/demo FULL=1 TERMS=1 TEXT=1 bash demo.sh --quick  # then reuse it in every session:
    TEST_DEMO_DIR=/tmp/demo python -m pytest -q test_smoke.py -k demo

Times. The full suite: 90 passed in 1465 s from a clean clone (`bash .ci/run`) on the quiet
2-core CPU (2535 s while a `FULL=1` demo ran beside it);
several minutes of it are the quick demo (FULL=1, TERMS=1) that the tests taking the `demo`
fixture share. The fast subset: 29 passed in 39-46 s (loaded CPU).
"""
import os
import sys
import io
import re
import ast
import json
import math
import time
import shutil
import hashlib
import pathlib
import tarfile
import subprocess
import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.abspath(__file__))
TEACHER = os.path.join(REPO, 'data', 'shapes', 'teacher') # the demo teacher kept in the repo
# CLIP_benchmark's class names and templates, shipped with their provenance
CLIP_BENCHMARK = os.path.join(REPO, 'data', 'clip_benchmark')
sys.path.insert(0, REPO)
# prepare.py: the synthetic world, tiny HF teachers
sys.path.insert(0, os.path.join(REPO, 'data', 'shapes'))
from model import (Student, StudentConfig, LoccaDecoder, DINOHead, box_to_text, text_to_box,
                   box_iou, inherit_text_tower)
from loss import (sigmoid_loss, infonce_loss, feature_loss, affinity_loss, chunked_cross_entropy,
                  locca_inputs, locca_loss, random_patch_mask, random_resized_crops, SigLIP2Loss,
                  crop_boxes)
from cache import load_cache, Rows
from cache_teacher import zeroshot_items
from eval import retrieval_metrics, zeroshot_classify
from prepare import make_tiny_hf_teacher

# -----------------------------------------------------------------------------
# helpers shared by the sections: running a script, tiny worlds and models, the quick demo, tiny
# caches

ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')

# `python *args` in the repo; ok=True: it must succeed
def run(*args, ok=True, timeout=600, env=None):
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env or ENV, capture_output=True,
                       text=True, timeout=timeout)
    if ok and p.returncode != 0:
        tails = f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        raise AssertionError(f"{args} failed ({p.returncode}):\n{tails}")
    return p

def clean_error(p, *needles): # a one-line error naming what is wrong: non-zero exit, no traceback
    err = p.stderr + p.stdout
    return p.returncode != 0 and 'Traceback' not in err and all(n in err for n in needles)

def tiny_student(**kw): # a 1-layer ViT + 1-layer text tower, 40-token vocabulary, 16-d embeddings
    image_kwargs = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2)
    cfg = dict(image_model='vit_tiny_patch16_224', image_size=32, image_kwargs=image_kwargs,
               text_width=32, text_depth=1, text_heads=2, kept_ids=list(range(40)), embed_dim=16)
    return Student(StudentConfig(**{**cfg, **kw}))

def tiny_world(tmp, **kw): # the synthetic world at 20 web / 40 train / 20 val / 20 test images
    args = {**dict(n_web=20, n_train=40, n_val=20, n_test=20), **kw} # kw overrides
    run('data/shapes/prepare.py', f'--out_dir={tmp}', *[f'--{k}={v}' for k, v in args.items()])
    return tmp

def md_table(text, start, prefix='|'):
    """The first run of lines starting with `prefix` ('|': table rows, '- ': list items) from the
    line starting with `start` on."""
    lines = text.split('\n')
    i = next(i for i, l in enumerate(lines) if l.startswith(start))
    while not lines[i].startswith(prefix):
        i += 1
    rows = []
    while i < len(lines) and lines[i].startswith(prefix):
        rows.append(lines[i])
        i += 1
    return rows

@pytest.fixture(scope='session')
def demo(tmp_path_factory):
    """The quick demo once, with every table (world -> teachers -> caches -> A1, A5, the recipe,
    Tables B and C, the sweep -> eval -> the per-term study on a small Siglip2Model -> report);
    other tests reuse its caches. TEST_DEMO_DIR=<dir> reuses a
    `DEMO_DIR=<dir> FULL=1 TERMS=1 TEXT=1 bash demo.sh --quick` made by this same code (faster
    iterations)."""
    if os.environ.get('TEST_DEMO_DIR'):
        return pathlib.Path(os.environ['TEST_DEMO_DIR'])
    d = tmp_path_factory.mktemp('demo')
    t = time.time()
    p = subprocess.run(['bash', 'demo.sh', '--quick'], cwd=REPO,
                       env=dict(ENV, DEMO_DIR=str(d), PY=sys.executable, TERMS='1', FULL='1',
                                TEXT='1'),
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    print(f"quick demo: {time.time() - t:.0f}s")
    return d

def student_args(demo, out, *extra): # train.py on the demo's caches: A5 at the demo's tiny size
    return ['train.py', 'config/a5.py', 'config/shapes.py',
            f'--train_cache={demo}/cache/shapes/train', f'--val_cache={demo}/cache/shapes/val',
            f'--out_dir={out}', '--batch_size=16', '--val_images=50', '--log_interval=1',
            '--warmup_iters=2', *extra]

def last_row(out): # the last training row and the last val row of out/log.jsonl
    rows = [json.loads(l) for l in open(os.path.join(out, 'log.jsonl'))]
    return [r for r in rows if 'loss' in r][-1], [r for r in rows if 'val/i2t_r1' in r][-1]

def resume_after_kill(args, tmp, checkpoint_iter):
    """Runs the train.py command line args(out_dir) twice: straight through into tmp/full, and into
    tmp/killed SIGKILLed right after its iter-`checkpoint_iter` checkpoint, then resumed there
    (--init_from=resume). Asserts both end with the same loss terms and val numbers; returns both
    last training rows and the uninterrupted run's stdout."""
    full_stdout = run(*args(tmp / 'full')).stdout
    p = subprocess.Popen([sys.executable, *args(tmp / 'killed')], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout: # the next iteration's line is printed after the checkpoint was written
        if line.startswith(f'iter {checkpoint_iter + 1}:'):
            p.kill()
            break
    p.wait()
    assert json.load(open(tmp / 'killed/meta.json'))['iter_num'] == checkpoint_iter
    run(*args(tmp / 'killed'), '--init_from=resume')
    (full, full_val), (resumed, resumed_val) = last_row(tmp / 'full'), last_row(tmp / 'killed')
    for k in full:
        if k.startswith('loss'):
            assert full[k] == pytest.approx(resumed[k], rel=1e-5, abs=1e-6), k
    assert full_val == pytest.approx(resumed_val, rel=1e-5, abs=1e-6)
    return full, resumed, full_stdout

@pytest.fixture(scope='session')
def tiny_caches(tmp_path_factory):
    """A tiny world cached with the demo teacher: train (K=2 views), val, web images."""
    tmp = tmp_path_factory.mktemp('tiny_caches')
    w = tiny_world(tmp / 'w')
    common = [f'--data_dir={w}', f'--teacher={TEACHER}', '--num_workers=0',
              f'--out_dir={tmp / "c"}']
    run('cache_teacher.py', *common, '--split=train', '--views=2')
    run('cache_teacher.py', *common, '--split=val')
    run('cache_teacher.py', *common, '--split=web', '--captions=False')
    return tmp

def tiny_train_args(caches, out, *extra): # train.py on tiny_caches: A5, 2 iterations
    return ['train.py', 'config/a5.py', 'config/shapes.py', f'--train_cache={caches / "c/train"}',
            f'--val_cache={caches / "c/val"}', f'--out_dir={out}', '--batch_size=8',
            '--val_images=20', '--log_interval=1', '--warmup_iters=1', '--eval_interval=2',
            '--max_iters=2', *extra]

# -----------------------------------------------------------------------------
# configurator.py and config/*.py: overrides and their errors, what each preset resolves to

@pytest.mark.fast
def test_configurator(tmp_path):
    # a script with train.py's config idiom: defaults, config_keys, then exec(configurator.py)
    script = tmp_path / 's.py'
    script.write_text(
        "import os\nlearning_rate = 1e-3\nmax_iters = 10\nlr_decay_iters = 0\ncompile = True\n"
        "name = 'x'\nopt = None\n"
        "config_keys = [k for k, v in globals().items() if not k.startswith('_') "
        "and isinstance(v, (int, float, bool, str, type(None)))]\n"
        f"exec(open({os.path.join(REPO, 'configurator.py')!r}).read())\n"
        "print(repr((learning_rate, max_iters, lr_decay_iters, compile, name, opt)))\n")
    cfg = tmp_path / 'c.py'
    cfg.write_text("import math\nmax_iters = 20\nlr_decay_iters = max_iters * 2\n")
    run_script = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True,
                                           text=True)
    p = run_script(str(cfg), '--learning_rate=1', '--name=a=b', '--opt=(1,2)')
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("(1.0, 20, 40, True, 'a=b', (1, 2))"), p.stderr
    assert run_script('--name=123').stdout.strip().endswith("'123', None)")
    for args, msg in [(['--lr=3'], "unknown config key 'lr'"),
                      (['--compile=false'], 'expected bool'),
                      (['--max_iters=1.5'], 'expected int')]:
        p = run_script(*args)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    cfg.write_text("learnign_rate = 5e-4\n")
    p = run_script(str(cfg))
    assert p.returncode != 0 and 'learnign_rate' in p.stderr and str(cfg) in p.stderr
    # a config file's values are type-checked against the defaults too
    cfg.write_text("compile = 'no'\n")
    p = run_script(str(cfg))
    assert p.returncode != 0 and 'expected bool' in p.stderr and str(cfg) in p.stderr

@pytest.mark.fast
def test_configurator_syntax_error_names_file_and_line(tmp_path):
    cfg = tmp_path / 'bad.py'
    cfg.write_text("batch_size = 16\nmax_iters = (\n")
    p = run('train.py', str(cfg), ok=False)
    assert clean_error(p, str(cfg), 'line 2'), p.stderr[-2000:]

def config_defaults():
    """train.py's config block, executed: the namespace configurator.py starts from. The block is
    train.py's top-level assignments before `config_keys = ...`, taken with ast (not sliced by text
    markers), so that none of the rest of train.py runs."""
    path = os.path.join(REPO, 'train.py')
    body = ast.parse(open(path).read(), path).body
    ends = [i for i, node in enumerate(body) if isinstance(node, ast.Assign)
            and any(getattr(t, 'id', None) == 'config_keys' for t in node.targets)]
    assert ends, f"{path}: no `config_keys = ...` line after the config block"
    block = [node for node in body[:ends[0]] if isinstance(node, ast.Assign)]
    ns = {}
    exec(compile(ast.Module(body=block, type_ignores=[]), path, 'exec'), ns)
    return ns

def losses_of(c): # a config's losses as the README's experiment table writes them
    on = [('feature', c['lambda_feat']), ('affinity', c['lambda_affinity']),
          ('contrastive', c['lambda_contrast']), ('LocCa', c['lambda_locca']),
          ('SILC/TIPS', c['gamma'])]
    data = [f"{c['views']} views"] if c['views'] > 1 else [] # the recipe's reinforced data
    data += ['unpaired images'] if c['extra_image_cache'] else []
    data += ['unpaired texts'] if c['extra_text_cache'] else []
    return ' + '.join(name for name, w in on if w) + (f" ({', '.join(data)})" if data else '')

# the config/README.md table whose header row starts with `header` -> rows of stripped cells
def readme_table(header):
    rows = md_table(open(os.path.join(REPO, 'config', 'README.md')).read(), header)[2:]
    return [[c.strip() for c in r.strip('|').split('|')] for r in rows]

@pytest.mark.fast
def test_every_config_resolves_to_the_seeds_teacher_and_student(monkeypatch):
    """Each README experiment row (config chain -> teacher -> student -> px -> losses) is what
    exec'ing its configs over train.py's defaults gives (teacher via train_cache -> cache dir ->
    the README's cache table), every config in config/ is in a row, and the seed's plan holds:
    A1-A7 L x ViT-S, B1 B x Tiny, B2 L x Tiny, B3 B x Small, B4 L x Small, B5 So400m x Small,
    C1/C2 L x ResNet-50 / MobileNetV3; every A/B/C student at 224 px."""
    monkeypatch.chdir(REPO) # configs exec 'config/a5.py' relative to the repo, as train.py is run
    L = 'google/siglip2-large-patch16-256'
    B = 'google/siglip2-base-patch16-224'
    So = 'google/siglip2-so400m-patch14-384'
    S, T = 'vit_small_patch16_224', 'vit_tiny_patch16_224'
    full = 'feature + affinity + contrastive'
    seed = {'a1': (L, S, 'contrastive'), 'a2': (L, S, 'feature'),
            'a3': (L, S, 'feature + contrastive'), 'a4': (L, S, 'affinity + contrastive'),
            'a5': (L, S, full), 'a6': (L, S, full + ' + LocCa + SILC/TIPS'),
            'a7': (L, S, 'feature + affinity'),
            'b1': (B, T, full), 'b2': (L, T, full), 'b3': (B, S, full), 'b4': (L, S, full),
            'b5': (So, S, full),
            'c1': (L, 'resnet50', full), 'c2': (L, 'mobilenetv3_large_100', full)}
    caches = {r[0].strip('`'): r[1].split('`')[1] for r in readme_table('| cache dir |')}
    assert caches['cache/coco-L'] == L and caches['cache/coco-B'] == B
    assert caches['cache/coco-So'] == So
    rows = readme_table('| experiment |')
    named = set()
    for exp, chain, teacher, student, px, losses in rows:
        files = re.findall(r'`(\w+)`', chain)
        named |= set(files)
        c = config_defaults()
        for f in files:
            exec(compile(open(f'config/{f}.py').read(), f'config/{f}.py', 'exec'), c)
        cache = os.path.dirname(c['train_cache'])
        assert cache in caches, f"{exp}: {c['train_cache']}: in no cache row of config/README.md"
        got = (caches[cache], c['image_model'], str(c['image_size']), losses_of(c))
        assert got == (teacher.strip('`'), student.strip('`'), px, losses), (exp, got)
        if len(files) == 1 and files[0] in seed:
            assert got[:2] + got[3:] == seed[files[0]] and c['image_size'] == 224, (exp, got)
            assert c['out_dir'] == f'out/{files[0]}' and exp == files[0].upper()
    have = {os.path.basename(f)[:-3] for f in os.listdir('config') if f.endswith('.py')}
    assert set(seed) <= named
    # the rest train a transformers SiglipModel / Siglip2Model (README "Fine-tune SigLIP 2 with
    # the complete loss"): no teacher, the complete objective at the paper's values (§2.2, §2.3)
    section = open('README.md').read().split('## Fine-tune SigLIP 2 with the complete loss')[1]
    for f in sorted(have - named):
        c = config_defaults()
        exec(compile(open(f'config/{f}.py').read(), f'config/{f}.py', 'exec'), c)
        assert c['hf_model'], f"config/{f}.py: in no README experiment row, trains no hf_model"
        assert f'config/{f}.py' in section.split('\n## ')[0], f
        weights = [c[k] for k in ('lambda_contrast', 'lambda_locca', 'lambda_silc', 'lambda_tips',
                                  'switch', 'lambda_feat', 'lambda_affinity')]
        # the per-term study's arms stand for the paper's last 20 %: SILC/TIPS from their start
        switch = 0.0 if f == 'siglip2_terms_shapes' else 0.8
        assert weights == [1.0, 1.0, 1.0, 0.25, switch, 0.0, 0.0] and c['gamma'] > 0, (f, weights)

# -----------------------------------------------------------------------------
# model.py: the LocCa decoder, box text, the student's vocabulary map and save / load

@pytest.mark.fast
def test_decoder_masks_by_perturbation_and_cross_attention():
    torch.manual_seed(0)
    dec = LoccaDecoder(vocab_size=20, width=32, depth=2, heads=2, mlp_dim=64, enc_dim=24)
    torch.nn.init.normal_(dec.head.weight) # zero-init head: logits all 0 before training
    ids, enc = torch.randint(0, 20, (2, 6)), torch.randn(2, 5, 24)
    # example 0 autoregressive, example 1 parallel, in one batch
    causal = torch.tensor([True, False])
    h = dec(ids, enc, causal)
    ids2 = ids.clone()
    ids2[:, 4] = (ids[:, 4] + 1) % 20 # change a later token
    h2 = dec(ids2, enc, causal)
    # causal: the earlier positions are unaffected
    assert torch.allclose(h[0, :4], h2[0, :4], atol=1e-6)
    assert not torch.allclose(h[0, 4:], h2[0, 4:])
    assert not torch.allclose(h[1, :4], h2[1, :4])        # parallel: every position sees it
    # cross-attention reads the image tokens
    assert not torch.allclose(dec(ids, enc + 1, causal), h)
    assert (LoccaDecoder(20, 32, 1, 2, 64, 24).head(h) == 0).all()

@pytest.mark.fast
def test_box_text_round_trip():
    for box in ([0.0, 0.1, 0.5, 1.0], [0.123, 0.456, 0.789, 0.999]):
        back = text_to_box(box_to_text(box))
        assert max(abs(a - b) for a, b in zip(box, back)) <= 0.5 / 499 + 1e-9
    assert box_to_text([0, 0, 1, 1]) == '0 0 499 499' and text_to_box('12 40') is None
    iou = box_iou(torch.tensor([[0, 0, .5, .5]]), torch.tensor([[0, 0, .5, 1.]]))
    assert iou.item() == pytest.approx(0.5)

@pytest.mark.fast
def test_student_vocab_map_save_load(tmp_path):
    st = tiny_student(kept_ids=[0, 1, 2, 3, 4, 10, 500]).eval()
    mapped = st.map_ids(torch.tensor([0, 3, 10, 500, 11, 99999]))
    assert mapped.tolist() == [0, 3, 5, 6, 3, 3] # unknown -> UNK row
    st.save_pretrained(str(tmp_path))
    st2 = Student.from_pretrained(str(tmp_path))
    x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 600, (2, 64))
    assert torch.equal(st.encode_image(x), st2.encode_image(x))
    assert torch.equal(st.encode_text(ids), st2.encode_text(ids))
    ids2 = ids.clone()
    ids2[:, -1] = 4 # SigLIP pools the last position
    assert not torch.equal(st.encode_text(ids), st.encode_text(ids2))
    cnn = tiny_student(image_model='resnet18', image_kwargs={}).eval()
    tok, pooled = cnn.visual(torch.randn(2, 3, 64, 64))
    assert tok.shape == (2, 4, 512) and pooled.shape == (2, 512)
    assert cnn.visual.patch_embed_proj is None

# the text tower inherited from a teacher (model.inherit_text_tower, train.py text_init='teacher')
def text_block(model, i): # block i of a Student's text tower -> {name: tensor}
    return {k: v for k, v in model.blocks[i].state_dict().items()}

@pytest.mark.fast
def test_inherited_text_tower_is_the_demo_teachers_selected_layers_heads_and_rows():
    teacher = Student.from_pretrained(TEACHER) # text 128 wide, 2 layers, 4 heads of 32
    t_kept = teacher.config.kept_ids
    missing = next(i for i in range(1000) if i not in t_kept) # an id the teacher reads as UNK
    kept = [0, 1, 2, 3, 4, t_kept[-1], t_kept[20], missing]
    # config/shapes.py's text tower: 64 wide, 1 layer, 2 heads
    st = tiny_student(text_width=64, text_depth=1, text_heads=2, kept_ids=kept,
                      embed_dim=teacher.config.embed_dim)
    line = inherit_text_tower(st, teacher)
    assert line.startswith('layers [0] of 2, heads 0-1 of 4, width 64 of 128, MLP 256 of 512')
    assert '(1 kept ids the teacher reads as UNK' in line
    t, s = text_block(teacher, 0), text_block(st, 0)
    # k and v are fused in attn.kv (2W, W): the leading 2 heads (64 rows) of each
    assert torch.equal(s['attn.kv.weight'][:64], t['attn.kv.weight'][:64, :64])
    assert torch.equal(s['attn.kv.weight'][64:], t['attn.kv.weight'][128:192, :64])
    assert torch.equal(s['attn.kv.bias'], torch.cat([t['attn.kv.bias'][:64],
                                                     t['attn.kv.bias'][128:192]]))
    for name in ('attn.q.weight', 'attn.out.weight', 'mlp.2.weight'):
        rows, cols = s[name].shape
        assert torch.equal(s[name], t[name][:rows, :cols]), name
    assert torch.equal(s['mlp.0.weight'], t['mlp.0.weight'][:256, :64])
    for name in ('ln1.weight', 'ln1.bias', 'ln3.bias', 'attn.q.bias', 'mlp.0.bias', 'mlp.2.bias'):
        assert torch.equal(s[name], t[name][:len(s[name])]), name
    # the rows of the kept ids: the teacher's compact rows, its UNK row for the missing id
    t_rows = [t_kept.index(i) for i in kept[:-1]] + [t_kept.index(3)]
    assert torch.equal(st.tok_emb.weight, teacher.tok_emb.weight[t_rows, :64])
    assert torch.equal(st.pos_emb, teacher.pos_emb[:, :64])
    assert torch.equal(st.ln_f.weight, teacher.ln_f.weight[:64])
    # txt_proj: the teacher's columns of the kept channels, into the teacher's embedding space
    assert torch.equal(st.txt_proj.weight, teacher.txt_proj.weight[:, :64])
    assert torch.equal(st.txt_proj.bias, teacher.txt_proj.bias)
    # a full-size copy computes the teacher's text embeddings
    twin = tiny_student(text_width=128, text_depth=2, text_heads=4, kept_ids=t_kept,
                        embed_dim=teacher.config.embed_dim).eval()
    inherit_text_tower(twin, teacher)
    ids = torch.randint(0, 300, (4, 32))
    assert torch.allclose(twin.encode_text(ids), teacher.encode_text(ids), atol=1e-5)

@pytest.fixture(scope='session')
def hf_text_teachers(tmp_path_factory):
    """Tiny random Siglip2Models on the tiny world's tokenizer: `deep` (text 32 wide, 4 layers, 2
    heads, MLP 64) and `twin` (1 layer, MLP 128: a full-width Student can inherit all of it)."""
    tmp = tmp_path_factory.mktemp('hf_text')
    w = tiny_world(tmp / 'w')
    make_tiny_hf_teacher(str(tmp / 'deep'), str(w / 'processor'), kind='siglip2', layers=4)
    make_tiny_hf_teacher(str(tmp / 'twin'), str(w / 'processor'), kind='siglip2', layers=1,
                         mlp_ratio=4)
    return tmp

def test_inherited_text_tower_is_the_hf_siglip2_layers_heads_and_rows(hf_text_teachers):
    from transformers import AutoModel
    teacher = AutoModel.from_pretrained(str(hf_text_teachers / 'deep')).eval()
    tm = teacher.text_model
    vocab = tm.embeddings.token_embedding.weight.shape[0]
    kept = [0, 1, 2, 3, 4, 17, vocab - 1]
    # half the width, 1 of the 2 heads (head dim 16 as the teacher's), every other layer
    st = tiny_student(text_width=16, text_depth=2, text_heads=1, kept_ids=kept, embed_dim=32)
    line = inherit_text_tower(st, teacher)
    assert line.startswith('layers [0, 2] of 4, heads 0-0 of 2, width 16 of 32, MLP 64 of 64')
    for j, i in enumerate([0, 2]):
        t, s = tm.encoder.layers[i].state_dict(), text_block(st, j)
        pairs = [('ln1', 'layer_norm1'), ('attn.q', 'self_attn.q_proj'),
                 ('attn.out', 'self_attn.out_proj'), ('ln3', 'layer_norm2'),
                 ('mlp.0', 'mlp.fc1'), ('mlp.2', 'mlp.fc2')]
        for ours, hf in pairs:
            for part in ('weight', 'bias'):
                s_t, t_t = s[f'{ours}.{part}'], t[f'{hf}.{part}']
                assert torch.equal(s_t, t_t[tuple(slice(0, n) for n in s_t.shape)]), (i, ours)
        # the fused kv: k_proj's and v_proj's leading head
        k, v = t['self_attn.k_proj.weight'][:16, :16], t['self_attn.v_proj.weight'][:16, :16]
        assert torch.equal(s['attn.kv.weight'], torch.cat([k, v]))
        assert torch.equal(s['attn.kv.bias'], torch.cat([t['self_attn.k_proj.bias'][:16],
                                                         t['self_attn.v_proj.bias'][:16]]))
    # the kept ids index the full table directly
    assert torch.equal(st.tok_emb.weight, tm.embeddings.token_embedding.weight[kept, :16])
    assert torch.equal(st.pos_emb, tm.embeddings.position_embedding.weight[:, :16])
    assert torch.equal(st.ln_f.bias, tm.final_layer_norm.bias[:16])
    assert torch.equal(st.txt_proj.weight, tm.head.weight[:, :16])
    assert torch.equal(st.txt_proj.bias, tm.head.bias)

def test_a_full_width_copy_of_an_hf_text_tower_is_close_up_to_gelu_and_eps(hf_text_teachers):
    """Our Block has exact GELU and LayerNorm eps 1e-5, SigLIP's HF text tower tanh GELU and eps
    1e-6: with those two swapped in, the copy is the teacher to float error; as it is, close."""
    from transformers import AutoModel
    teacher = AutoModel.from_pretrained(str(hf_text_teachers / 'twin')).eval()
    vocab = teacher.text_model.embeddings.token_embedding.weight.shape[0]
    st = tiny_student(text_width=32, text_depth=1, text_heads=2, kept_ids=list(range(vocab)),
                      embed_dim=32).eval()
    inherit_text_tower(st, teacher)
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (64, 64))
    with torch.no_grad():
        want = teacher.get_text_features(input_ids=ids).pooler_output
        got = st.encode_text(ids)
        cos = F.cosine_similarity(got, want, dim=-1)
        rel = ((got - want).norm(dim=-1) / want.norm(dim=-1)).max()
        for m in st.modules():
            if isinstance(m, torch.nn.GELU):
                m.approximate = 'tanh'
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 1e-6
        exact = st.encode_text(ids)
    # measured: equal to the last bit
    assert torch.allclose(exact, want, atol=1e-6)
    # measured on this random tower: cos >= 0.9999998, relative error 3.3e-4 (tanh GELU is
    # within 1e-3 of exact GELU per unit, the eps moves a unit-variance row by ~5e-6); the
    # bounds leave a margin of 15 (a trained tower's larger activations differ more)
    assert cos.min() > 0.9999 and rel < 5e-3, (cos.min().item(), rel.item())

def test_inherit_text_tower_refuses_by_name(hf_text_teachers):
    from transformers import AutoModel
    demo = Student.from_pretrained(TEACHER)
    hf = AutoModel.from_pretrained(str(hf_text_teachers / 'deep'))
    vocab = hf.text_model.embeddings.token_embedding.weight.shape[0]
    D = demo.config.embed_dim
    cases = [(demo, dict(text_width=64, text_depth=3, text_heads=2, embed_dim=D),
              "text_depth=3: deeper than the teacher's 2 layers"),
             (demo, dict(text_width=256, text_heads=8, embed_dim=D),
              "text_width=256: wider than the teacher's 128"),
             (demo, dict(text_width=128, text_heads=8, embed_dim=D),
              "text_heads=8: more than the teacher's 4"),
             (demo, dict(text_width=64, text_heads=4, embed_dim=D),
              "text_width / text_heads = 64/4: the head dim must be the teacher's 128/4 = 32"),
             (demo, dict(text_width=64, text_heads=2, embed_dim=D, context_length=80),
              "context_length=80: longer than the teacher's 64 positions"),
             (demo, dict(text_width=64, text_heads=2, embed_dim=16),
              "embed_dim=16: the teacher embeds in 128"),
             # the HF MLP is 2x wide, the student's 4x
             (hf, dict(text_width=32, text_heads=2, embed_dim=32),
              "text_width=32: its MLP of 128 is wider than the teacher's 64"),
             (hf, dict(text_width=16, text_heads=1, embed_dim=32, kept_ids=[0, 1, 2, 3, 4, vocab]),
              f"token id {vocab} (the student's kept_ids): beyond the teacher's {vocab}-row")]
    for teacher, kw, needle in cases:
        with pytest.raises(ValueError) as e:
            inherit_text_tower(tiny_student(**kw), teacher)
        assert needle in str(e.value), (kw, str(e.value))

# -----------------------------------------------------------------------------
# loss.py: sigmoid / InfoNCE / distillation values and gradients, LocCa, SILC/TIPS + EMA,
# the README's snippet

@pytest.mark.fast
def test_sigmoid_loss_hand_computed_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cos = [[1, .6], [0, .8]]; logits = 10·cos - 10 = [[0, -4], [-10, -2]]; labels [[+,-],[-,+]]
    log_sigmoid = lambda z: math.log(1 / (1 + math.exp(-z)))
    want = -(log_sigmoid(0) + log_sigmoid(4) + log_sigmoid(10) + log_sigmoid(-2)) / 2
    assert sigmoid_loss(img, txt, 10.0, -10.0).item() == pytest.approx(want, rel=1e-6)

@pytest.mark.fast
def test_sigmoid_loss_multi_positive_3x3_brute_force():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    # caption 1: a 2nd caption of image 0
    img_ids, txt_ids = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 2])
    want = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if img_ids[i] == txt_ids[j] else -1.0
            logit = 5.0 * float(img[i] @ txt[j]) - 2.0
            want -= math.log(torch.sigmoid(torch.tensor(z * logit)).item())
    got = sigmoid_loss(img, txt, 5.0, -2.0, img_ids, txt_ids)
    assert got.item() == pytest.approx(want / 3, rel=1e-5)

@pytest.mark.fast
def test_gradients_match_autograd_float64():
    g = torch.Generator().manual_seed(1)
    unit_rows = lambda *s: F.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)
    a, b, c, d = [unit_rows(4, 3).requires_grad_() for _ in range(4)]
    sigmoid = lambda x, y: sigmoid_loss(x, y, 3.0, -1.0, chunk_size=3)
    assert torch.autograd.gradcheck(sigmoid, (a, b))
    assert torch.autograd.gradcheck(lambda x, y: feature_loss(x, y), (a, b))
    for kind in ('softmax', 'sigmoid'):
        affinity = lambda x, y: affinity_loss(x, y, c, d, 4.0, 8.0, -1.0, -2.0, kind=kind)
        assert torch.autograd.gradcheck(affinity, (a, b))

@pytest.mark.fast
def test_rank_row_blocks_average_to_the_full_loss_and_gradient():
    """What each of 4 DDP ranks computes (its 3 image rows, and for the softmax affinity its 3
    text rows, against all 12), averaged over ranks as train.py averages gradients, == the full
    12 x 12 loss and its gradient; the sigmoid term's blocks also chunked (2 rows: 2 + 1)."""
    from loss import rank_rows
    g = torch.Generator().manual_seed(3)
    img, txt, t_img, t_txt = [F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64),
                                          dim=-1).requires_grad_() for _ in range(4)]
    log_scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-5.0)
    sig = SigLIP2Loss(torch.nn.Identity())
    chunked = SigLIP2Loss(torch.nn.Identity(), chunk_size=2)
    losses = {'sigmoid': lambda fn, r: fn(None, img, txt, None, log_scale, bias, 0.0, rows=r)[0]}
    losses['chunked'] = lambda fn, r: losses['sigmoid'](chunked, r)
    for kind in ('softmax', 'sigmoid'):
        losses[kind] = lambda fn, r, kind=kind: affinity_loss(img, txt, t_img, t_txt, 10.0, 7.0,
                                                              -5.0, -3.0, kind, r, r)
    for name, loss in losses.items():
        full = loss(sig, None)
        # rank r's rows: rank_rows(3) on rank r (one process here: rank 0, so sliced by hand)
        blocks = [loss(sig, slice(r * 3, (r + 1) * 3)) for r in range(4)]
        assert rank_rows(3) == slice(0, 3)
        mean = sum(blocks) / 4
        assert mean.item() == pytest.approx(full.item(), rel=1e-12), name
        assert not any(b.item() == pytest.approx(full.item(), rel=1e-6) for b in blocks), name
        grads = [torch.autograd.grad(loss, (img, txt)) for loss in (full, mean)]
        for x, y in zip(*grads):
            assert torch.allclose(x, y, rtol=1e-10, atol=1e-12), name

@pytest.mark.fast
def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    img, txt = [F.normalize(torch.randn(10, 8, generator=g), dim=-1).requires_grad_()
                for _ in range(2)]
    ga = torch.autograd.grad(sigmoid_loss(img, txt, 10.0, -10.0), (img, txt))
    l2 = sigmoid_loss(img, txt, 10.0, -10.0, chunk_size=3)
    assert l2.item() == pytest.approx(sigmoid_loss(img, txt, 10.0, -10.0).item(), rel=1e-6)
    for x, y in zip(ga, torch.autograd.grad(l2, (img, txt))):
        assert torch.allclose(x, y, atol=1e-6)
    h = torch.randn(50, 8, generator=g, requires_grad=True)
    W = torch.randn(37, 8, generator=g, requires_grad=True)
    b = torch.randn(37, generator=g, requires_grad=True)
    y = torch.randint(0, 37, (50,), generator=g)
    ref = F.cross_entropy(F.linear(h, W, b), y, reduction='none')
    got = chunked_cross_entropy(h, W, b, y, chunk_size=16) # 50 tokens: chunks of 16, 16, 16, 2
    assert torch.allclose(ref, got, atol=1e-6)
    w = torch.randn(50, generator=g)
    ref_grads = torch.autograd.grad((ref * w).sum(), (h, W, b))
    got_grads = torch.autograd.grad((got * w).sum(), (h, W, b))
    for x, z in zip(ref_grads, got_grads):
        assert torch.allclose(x, z, atol=1e-5)

@pytest.mark.fast
def test_infonce_and_distillation_minima():
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    logits = 7.0 * img @ txt.T
    labels = torch.arange(6)
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert infonce_loss(img, txt, 7.0).item() == pytest.approx(ref.item(), rel=1e-6)
    assert feature_loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(img, txt).item() > 0.1
    # 0 when the student equals the teacher (same scale), > 0 otherwise
    for kind in ('softmax', 'sigmoid'):
        same = affinity_loss(img, txt, img, txt, 7.0, 7.0, -3.0, -3.0, kind=kind)
        swapped = affinity_loss(img, txt, txt, img, 7.0, 7.0, -3.0, -3.0, kind=kind)
        assert same.item() == pytest.approx(0.0, abs=1e-5)
        assert swapped.item() > 1e-3

@pytest.mark.fast
def test_each_loss_returns_its_weighted_total_and_unweighted_terms():
    """DistillLoss and SigLIP2Loss each -> (total, terms): total = the sum of weight x term, the
    terms unweighted, named as log.jsonl names them; nothing on -> (0.0, {}). Both take the log
    scale and exp it for their terms."""
    from loss import DistillLoss
    g = torch.Generator().manual_seed(5)
    rows = lambda n: torch.randn(n, 8, generator=g)
    unit = lambda x: F.normalize(x, dim=-1)
    img, txt, t_img, t_txt = rows(4), rows(4), rows(4), rows(4)
    s_img, t_ximg, s_txt, t_xtxt = rows(3), rows(3), rows(5), rows(5) # unpaired
    log_scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-5.0)
    w = dict(feat=0.5, affinity=2.0, extra_feat=3.0, extra_affinity=0.25, extra_cross=4.0)
    distill = DistillLoss(7.0, -3.0, **w)
    total, terms = distill(img, txt, img, txt, t_img, t_txt, log_scale, bias,
                           (s_img, s_img, t_ximg), (s_txt, s_txt, t_xtxt))
    weights = {'feat': 0.5, 'affinity': 2.0, 'extra_img/feat': 3.0,
               'extra_img/affinity': 0.25, 'extra_txt/feat': 3.0,
               'extra_txt/affinity': 0.25, 'extra_cross': 4.0}
    assert list(terms) == list(weights)
    want = sum(weights[k] * v.item() for k, v in terms.items())
    assert total.item() == pytest.approx(want, rel=1e-6)
    assert terms['feat'].item() == (feature_loss(img, t_img) + feature_loss(txt, t_txt)).item()
    affinity = affinity_loss(unit(img), unit(txt), unit(t_img), unit(t_txt), 10.0, 7.0, bias, -3.0)
    assert terms['affinity'].item() == pytest.approx(affinity.item(), rel=1e-6)
    assert DistillLoss(7.0, -3.0)(img, txt, img, txt, t_img, t_txt, log_scale, bias) == (0.0, {})
    # sigmoid only (no decoder, no heads), at weight 2
    fn = SigLIP2Loss(tiny_student().visual, sig_weight=2.0)
    total, terms = fn(None, img, txt, None, log_scale, bias, 0.0)
    assert list(terms) == ['sigmoid']
    sigmoid = sigmoid_loss(unit(img), unit(txt), 10.0, bias)
    assert terms['sigmoid'].item() == pytest.approx(sigmoid.item(), rel=1e-6)
    assert total.item() == pytest.approx(2 * terms['sigmoid'].item(), rel=1e-6)

@pytest.mark.fast
def test_locca_inputs_and_loss_masking():
    seq = torch.tensor([[7, 8, 9, 1, 0], [7, 5, 6, 1, 0]])
    pre = torch.tensor([1, 2])
    inp, causal = locca_inputs(seq, pre, torch.tensor([False, True]), mask_id=20)
    # AR: shift right, BOS 0
    assert inp[0].tolist() == [0, 7, 8, 9, 1] and causal.tolist() == [True, False]
    assert inp[1].tolist() == [7, 5, 20, 20, 20] # parallel: prefix kept, the rest masked
    torch.manual_seed(0)
    dec = LoccaDecoder(21, 16, 1, 2, 32, 8)
    torch.nn.init.normal_(dec.head.weight)
    enc = torch.randn(2, 3, 8)
    l = locca_loss(dec, enc, seq, pre, torch.tensor([False, False]), 20)
    # a prefix target is not in the loss but is the next position's input: not checked by a change
    seq3 = seq.clone()
    seq3[:, 4] = 0 # pads stay pads
    l3 = locca_loss(dec, enc, seq3, pre, torch.tensor([False, False]), 20)
    assert l.item() == pytest.approx(l3.item())
    # per-sequence normalisation: the loss = the mean over examples of the mean CE of their targets
    inp, _ = locca_inputs(seq, pre, torch.tensor([False, False]), 20)
    hidden = dec(inp, enc, torch.tensor([True, True]))
    ce = F.cross_entropy(dec.head(hidden).transpose(1, 2), seq, reduction='none')
    want = (ce[0, 1:4].mean() + ce[1, 2:4].mean()) / 2
    assert l.item() == pytest.approx(want.item(), rel=1e-5)

# a tiny student + SigLIP2Loss with every term (LocCa, SILC, TIPS), switch at 0.5
def tiny_siglip2_loss(**kw):
    torch.manual_seed(0)
    st = tiny_student()
    v = st.visual
    fn = SigLIP2Loss(v, v.patch_embed_proj, decoder=LoccaDecoder(40, 32, 1, 2, 64, v.enc_dim),
                     silc_head=DINOHead(v.pool_dim, 64, 32, 16),
                     tips_head=DINOHead(v.enc_dim, 64, 32, 16),
                     mask_id=40, gamma=1.0, n_local=2, switch=0.5, **kw)
    return st, fn

@pytest.mark.fast
def test_mask_token_replaces_patches_before_pos_embed():
    st, fn = tiny_siglip2_loss()
    fn.maybe_switch(0.6)
    with torch.no_grad():
        fn.mask_token.fill_(3.0)
    seen = {}
    hook = lambda m, i, o: seen.__setitem__('x', o)
    h = st.visual.net.pos_drop.register_forward_hook(hook) # after pos-emb + cls
    x = torch.randn(2, 3, 32, 32)
    mask = random_patch_mask(2, 16, 0.5)
    fn._masked_forward(x, mask)
    h.remove()
    net = st.visual.net
    pos = net.pos_embed[:, net.num_prefix_tokens:] # learned pos-emb of the 16 patches
    patches = seen['x'][:, net.num_prefix_tokens:] - pos
    # masked: the token, then + pos
    assert torch.allclose(patches[mask], torch.full_like(patches[mask], 3.0), atol=1e-5)
    clean = net.patch_embed(x)
    clean = clean.flatten(1, 2) if clean.dim() == 4 else clean
    assert torch.allclose(patches[~mask], clean[~mask], atol=1e-5)
    assert mask.sum(1).tolist() == [8, 8]

@pytest.mark.fast
def test_switch_ema_and_gradients_reach_the_right_parameters():
    st, fn = tiny_siglip2_loss()
    x, ids = torch.randn(4, 3, 32, 32), torch.randint(0, 40, (4, 8))
    seq, pre = torch.randint(5, 40, (4, 8)), torch.full((4,), 1)
    ok = torch.ones(4, dtype=torch.bool)
    locca = dict(cap_ids=seq, cap_prefix=pre, aref_ids=seq, aref_prefix=pre, gcap_ids=seq,
                 gcap_prefix=pre, has_region=ok)
    assert fn.maybe_switch(0.4) == [] and not fn.switched
    fresh = fn.maybe_switch(0.5)
    assert set(map(id, fresh)) == set(map(id, fn.new_params()))
    assert fn.maybe_switch(0.9) == [] # once
    teacher_sd, student_sd = fn.teacher.state_dict(), st.visual.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(teacher_sd.values(), student_sd.values()))
    img, txt, tok = st(x, ids)
    total, terms = fn(x, img, txt, tok, st.logit_scale, st.logit_bias, 0.6, locca=locca)
    assert {'sigmoid', 'locca', 'silc', 'tips'} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    total.backward()
    assert all(p.grad is None for p in fn.teacher.parameters())
    assert all(p.grad is None for p in fn.silc_head_t.parameters())
    named = list(st.named_parameters()) + list(fn.named_parameters())
    missing = [n for n, p in named if p.requires_grad and p.grad is None]
    assert not missing, missing
    # EMA: after one step, teacher = m·teacher + (1 - m)·student, exactly
    before = [p.clone() for p in fn.teacher.parameters()]
    with torch.no_grad():
        for p in st.visual.parameters():
            p.add_(0.1)
    fn.after_step()
    for t0, t1, s in zip(before, fn.teacher.parameters(), st.visual.parameters()):
        assert torch.allclose(t1, 0.996 * t0 + 0.004 * s, atol=1e-6)
    sd = fn.state_dict()
    _, fn2 = tiny_siglip2_loss()
    fn2.load_state_dict(sd)
    assert bool(fn2.switched)
    assert torch.equal(fn2.silc_center, fn.silc_center)
    # the EMA teacher is in the state_dict
    pairs = zip(fn2.teacher.parameters(), fn.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in pairs)

@pytest.mark.fast
def test_crops_and_mask_shapes():
    x = torch.rand(2, 3, 16, 16)
    identity = random_resized_crops(x, 1, (1.0, 1.0), 16, flip=False, ratio=(1, 1))
    assert torch.allclose(identity, x, atol=1e-5)
    assert random_resized_crops(x, 4, (0.05, 0.4), 8).shape == (8, 3, 8, 8)
    cnn = tiny_student(image_model='resnet18', image_kwargs={}).visual
    with pytest.raises(ValueError, match='ViT'):
        SigLIP2Loss(cnn, None, tips_head=DINOHead(8, 8, 8, 8), gamma=1.0)

@pytest.mark.fast
def test_readme_snippet_trains_a_tiny_siglip2(tmp_path):
    """The README's 15-line snippet, verbatim, on a tiny random Siglip2Model: every term finite,
    total going down."""
    from transformers import AutoModel
    readme = open(os.path.join(REPO, 'README.md')).read()
    code = re.search(r'<!-- snippet.*?```python\n(.*?)```', readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'), kind='siglip2', width=48,
                         image_size=32, patch=8)
    torch.manual_seed(0)
    ns = dict(torch=torch, model=AutoModel.from_pretrained(str(tmp_path / 't')).train())
    exec(code, ns)
    B, V = 8, ns['V']
    pixels, ids = torch.randn(B, 3, 32, 32), torch.randint(5, V, (B, 64))
    seq, pre = torch.randint(5, V, (B, 12)), torch.full((B,), 2)
    ok = torch.tensor([True] * 6 + [False] * 2)
    locca = dict(cap_ids=seq, cap_prefix=pre, aref_ids=seq.flip(1), aref_prefix=pre,
                 gcap_ids=seq.roll(3, 1), gcap_prefix=pre, has_region=ok)
    totals = []
    for step in range(8): # progress crosses the 80% switch at step 2: SILC + TIPS join
        torch.manual_seed(100) # same crops and masks every step: the decrease is not sampling luck
        total, terms = ns['train_step'](pixels, ids, locca, 0.7 + step * 0.025)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        totals.append(total.item())
    assert {'sigmoid', 'locca', 'silc', 'tips'} <= set(terms)
    assert totals[-1] < totals[2] and totals[-1] < totals[0]

# -----------------------------------------------------------------------------
# cache.py and cache_teacher.py: what each reader caches (COCO, Karpathy, folders, caption files,
# tars) and what it counts, drops or refuses, resume, fingerprints, and the cache library
# (memory-mapped reads) train.py trains on

@pytest.mark.parametrize('kind', ['siglip', 'siglip2'])
def test_cache_matches_direct_hf_teacher(tmp_path, kind):
    """Cached embeddings of a tiny random SiglipModel / Siglip2Model == direct get_*_features
    (cos >= 0.999)."""
    from transformers import AutoModel, AutoProcessor
    from PIL import Image
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'), kind=kind)
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={tmp_path / "t"}',
        f'--out_dir={tmp_path / "c"}', '--num_workers=0', '--batch_size=7', '--shard_size=8')
    c, man = load_cache(str(tmp_path / 'c' / 'val'))
    assert len(man['shards']) == 3 and man['teacher_kind'] == kind
    model = AutoModel.from_pretrained(str(tmp_path / 't')).eval()
    proc = AutoProcessor.from_pretrained(str(tmp_path / 't'))
    caps = json.load(open(w / 'annotations/captions_val2017.json'))
    files = {im['id']: im['file_name'] for im in caps['images']}
    by_image = sorted(caps['annotations'], key=lambda a: (a['image_id'], a['id']))
    texts = [a['caption'].lower() for a in by_image]
    with torch.no_grad():
        imgs = [Image.open(w / 'val2017' / files[int(i)]).convert('RGB') for i in c['image_ids']]
        pixels = proc.image_processor(imgs, return_tensors='pt')
        img = model.get_image_features(**pixels).pooler_output
        ids = proc.tokenizer(texts, padding='max_length', max_length=64, truncation=True,
                             return_tensors='pt')['input_ids']
        txt = model.get_text_features(input_ids=ids).pooler_output
    assert torch.equal(ids.int(), c['input_ids'])
    count = lambda m: sum(p.numel() for p in m.parameters())
    # Table 1's teacher row
    assert man['teacher_params'] == dict(image=count(model.vision_model), total=count(model))
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    assert cos(img, c['image_embeds']).min() >= 0.999 and cos(txt, c['text_embeds']).min() >= 0.999
    # the batched path (workers decode, the processor runs per batch on the device) vs the
    # reference, with views
    for pre in ('worker', 'batch'):
        run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={tmp_path / "t"}',
            f'--out_dir={tmp_path / pre}', '--num_workers=0', '--batch_size=7', '--views=3',
            f'--preprocess={pre}')
    ref, _ = load_cache(str(tmp_path / 'worker/val'))
    bat, _ = load_cache(str(tmp_path / 'batch/val'))
    assert cos(ref['view_embeds'], bat['view_embeds']).min() >= 0.999
    assert torch.equal(ref['pixels'], bat['pixels'])
    assert torch.equal(ref['view_boxes'], bat['view_boxes'])
    assert torch.equal(ref['view_flips'], bat['view_flips'])
    # the crops are other pixels
    assert not torch.equal(ref['view_embeds'][:, 0], ref['view_embeds'][:, 1])

def test_cache_bad_inputs_and_resume(tmp_path):
    """Missing file -> clear error; corrupt/grayscale/CMYK/long caption/box outside -> counted;
    resume keeps shards."""
    from PIL import Image
    w = tiny_world(tmp_path / 'w')
    caps_f = w / 'annotations/captions_val2017.json'
    inst_f = w / 'annotations/instances_val2017.json'
    caps, inst = json.load(open(caps_f)), json.load(open(inst_f))
    ims = caps['images']
    image_file = lambda i: w / 'val2017' / ims[i]['file_name']
    image_file(0).write_bytes(b'not a jpeg at all') # corrupt
    Image.open(image_file(1)).convert('L').save(image_file(1)) # grayscale
    Image.open(image_file(2)).convert('CMYK').save(image_file(2)) # CMYK JPEG
    caps['annotations'][5]['caption'] = ' '.join(['red circle'] * 60) # > 64 tokens
    json.dump(caps, open(caps_f, 'w'))
    inst['annotations'][0]['bbox'] = [1000, 1000, 5, 5] # entirely outside
    # partly outside: clipped
    inst['annotations'][1]['bbox'] = [-4, -4, 10, 10]
    json.dump(inst, open(inst_f, 'w'))
    args = [f'--data_dir={w}', '--split=val', '--teacher=none', f'--processor={w / "processor"}',
            f'--out_dir={tmp_path / "c"}', '--num_workers=0', '--shard_size=8']
    os.remove(image_file(3))
    p = run('cache_teacher.py', *args, ok=False)
    err = p.stderr + p.stdout
    assert p.returncode != 0 and ims[3]['file_name'] in err and 'skip_missing' in err
    run('cache_teacher.py', *args, '--skip_missing=True')
    m = json.load(open(tmp_path / 'c/val/manifest.json'))
    counts = m['counts']
    assert counts['missing_images'] == 1 and counts['skipped_images'] == 1
    assert counts['images'] == 18
    assert counts['truncated_captions'] == 1 and counts['dropped_boxes'] == 1
    assert m['skipped'][0]['image_id'] == ims[0]['id']
    # resume: drop the manifest and a shard (as after a crash), leave a half-written temp file
    first = os.path.getmtime(tmp_path / 'c/val/val-00000.safetensors')
    os.remove(tmp_path / 'c/val/manifest.json')
    os.remove(tmp_path / 'c/val/val-00001.safetensors')
    (tmp_path / 'c/val/val-00001.safetensors.tmp').write_bytes(b'half')
    with pytest.raises(SystemExit, match='manifest'):
        load_cache(str(tmp_path / 'c/val'))
    out = run('cache_teacher.py', *args, '--skip_missing=True').stdout
    assert '2 done before' in out
    assert os.path.getmtime(tmp_path / 'c/val/val-00000.safetensors') == first
    assert json.load(open(tmp_path / 'c/val/manifest.json'))['fingerprint'] == m['fingerprint']
    # other settings: refuse to mix them into the same cache
    p = run('cache_teacher.py', *args, '--skip_missing=True', '--image_size=16', ok=False)
    assert p.returncode != 0 and 'other settings' in p.stderr
    p = run('cache_teacher.py', *args, '--shard_sise=8', ok=False)
    assert p.returncode != 0 and 'shard_sise' in p.stderr + p.stdout

def test_cache_karpathy_split_keeps_every_caption(tmp_path):
    """The Karpathy reader (dataset_coco.json format): split selection incl. 'a+b', every caption
    kept."""
    w = tiny_world(tmp_path / 'w')
    k = json.load(open(w / 'annotations/dataset_shapes.json'))
    # COCO has images with 6-7
    k['images'][-1]['sentences'].append({'raw': 'a sixth caption', 'tokens': []})
    json.dump(k, open(w / 'annotations/dataset_shapes.json', 'w'))
    args = lambda out: ['cache_teacher.py', f'--data_dir={w}',
                        f'--karpathy={w}/annotations/dataset_shapes.json', '--split=val+test',
                        '--teacher=none', f'--processor={w / "processor"}',
                        f'--out_dir={tmp_path / out}', '--num_workers=0', '--shard_size=8']
    run(*args('c'))
    m = json.load(open(tmp_path / 'c/val+test/manifest.json'))
    assert m['counts']['images'] == 40 and m['counts']['captions'] == 201
    assert m['dataset']['reader'] == 'karpathy'
    # torchrun: 2 ranks split the 5 shards (r, r+2, ...), rank 0 writes the manifest -> the same
    # cache, byte for byte
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args('c2'))
    m2 = json.load(open(tmp_path / 'c2/val+test/manifest.json'))
    assert len(m2['shards']) == 5 and m2['counts'] == m['counts']
    assert m2['fingerprint'] == m['fingerprint']
    assert [s['sha256'] for s in m['shards']] == [s['sha256'] for s in m2['shards']]

@pytest.mark.fast
def test_views_crops_match_the_stored_teacher_embeddings(tmp_path):
    """cache_teacher.py --views=4: view 0 is the full image; the crop train.py cuts from the cached
    pixels with a stored box + flip, re-embedded by the teacher, agrees with that view's stored
    embedding (cos >= 0.99), while the neighbouring view's box does not. Views are seeded by image
    id: a rerun on fewer images draws the same boxes."""
    w = tiny_world(tmp_path / 'w')
    base = ['cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={TEACHER}',
            '--num_workers=0', '--views=4']
    run(*base, f'--out_dir={tmp_path / "c"}')
    run(*base, f'--out_dir={tmp_path / "c5"}', '--max_images=5')
    d, m = load_cache(str(tmp_path / 'c/val'))
    assert m['dataset']['views'] == 4 and d['view_embeds'].shape == (20, 4, 128)
    assert (d['view_boxes'][:, 0] == torch.tensor([0.0, 0.0, 1.0, 1.0])).all()
    assert not d['view_flips'][:, 0].any()
    assert torch.equal(d['view_embeds'][:, 0], d['image_embeds']) and d['view_flips'].any()
    assert torch.equal(load_cache(str(tmp_path / 'c5/val'))[0]['view_boxes'], d['view_boxes'][:5])
    teacher = Student.from_pretrained(TEACHER)
    cos = lambda a, b: F.cosine_similarity(a.float(), b.float(), dim=-1)
    with torch.no_grad():
        for v in range(1, 4):
            boxes, flips = d['view_boxes'][:, v], d['view_flips'][:, v].bool()
            x = crop_boxes(d['pixels'].float(), boxes, flips, 32)
            e = teacher.encode_image(teacher.preprocess(x))
            right, wrong = cos(e, d['view_embeds'][:, v]), cos(e, d['view_embeds'][:, v % 3 + 1])
            assert right.min() >= 0.99, (v, right.min())
            # the check can fail
            assert wrong.mean() < right.mean() - 0.02, (v, wrong.mean(), right.mean())

@pytest.mark.fast
def test_many_views_go_through_the_teacher_in_bounded_chunks_with_the_same_embeddings(tmp_path,
                                                                                     monkeypatch):
    """cache_teacher.embed_views runs the crops VIEW_CHUNK per image at a time, so the teacher's
    activations do not grow with --views (views=2000 on 50 images: 12.9 GB RSS in one forward,
    1.7 GB chunked): with chunks of 2 views, 7 views give the embeddings of one forward."""
    import cache_teacher as ct
    w = tiny_world(tmp_path / 'w', n_web=1, n_train=1, n_val=4, n_test=1)
    files = sorted((w / 'val2017').iterdir())
    recs = [dict(path=str(f), image_id=i) for i, f in enumerate(files)]
    teacher = ct.Teacher(TEACHER)
    ds = ct.Images(recs, teacher, teacher.input_size, 7, 0.35, True, False)
    batch = [ds[i] for i in range(len(recs))]
    rows, images = [], teacher.images
    teacher.images = lambda x: rows.append(len(x)) or images(x) # the rows of each forward
    with torch.no_grad():
        whole = ct.embed_views(teacher, batch, False, 7) # (4, 7, D): 6 crops in one forward
        monkeypatch.setattr(ct, 'VIEW_CHUNK', 2)
        chunked = ct.embed_views(teacher, batch, False, 7) # 3 forwards of 2 crops per image
    assert rows == [4, 24, 4, 8, 8, 8] and whole.shape == (4, 7, teacher.embed_dim)
    assert torch.allclose(whole, chunked, atol=1e-5), (whole - chunked).abs().max()

def test_unpaired_caches_from_a_folder_a_caption_file_and_coco_unlabeled(demo, tmp_path):
    """Image-only caches from a folder of images and from a COCO image_info
    (unlabeled2017-style) file, a text-only cache from a caption file; train.py takes them as
    extra caches (and refuses a cache of the wrong kind). The folder paired by a captions jsonl
    is a train cache (a caption-less image or a bad line: a clear error)."""
    w = tiny_world(tmp_path / 'w')
    (tmp_path / 'f/sub').mkdir(parents=True)
    for i, f in enumerate(sorted(os.listdir(w / 'web2017'))[:6]):
        shutil.copy(w / 'web2017' / f, tmp_path / 'f' / ('sub' if i % 2 else '') / f)
    caption_file = 'a red circle\n\nthree objects: a blue box, a green ring, a bar\n'
    (tmp_path / 'caps.txt').write_text(caption_file)
    caps = json.load(open(w / 'annotations/captions_web2017.json'))
    image_info = w / 'annotations/image_info_unlabeled2017.json'
    json.dump({'images': caps['images']}, open(image_info, 'w'))
    shutil.copytree(w / 'web2017', w / 'unlabeled2017')
    common = [f'--teacher={TEACHER}', '--num_workers=0', f'--out_dir={tmp_path / "c"}']
    run('cache_teacher.py', f'--image_folder={tmp_path / "f"}', '--split=folder', '--views=2',
        *common)
    run('cache_teacher.py', f'--caption_file={tmp_path / "caps.txt"}', '--split=corpus', *common)
    run('cache_teacher.py', f'--data_dir={w}', '--split=unlabeled', *common)
    f, fm = load_cache(str(tmp_path / 'c/folder'))
    t, tm = load_cache(str(tmp_path / 'c/corpus'))
    u, um = load_cache(str(tmp_path / 'c/unlabeled'))
    assert fm['dataset']['contents'] == um['dataset']['contents'] == 'images'
    assert tm['dataset']['contents'] == 'texts'
    assert f['pixels'].shape[0] == 6 and f['view_embeds'].shape[:2] == (6, 2)
    assert 'input_ids' not in f
    assert t['input_ids'].shape[0] == 2 and 'pixels' not in t
    assert t['text_embeds'].shape == (2, 128)
    assert u['pixels'].shape[0] == 20 and 'input_ids' not in u
    extra = [f'--extra_image_cache={tmp_path / "c/folder"}',
             f'--extra_text_cache={tmp_path / "c/corpus"}',
             '--max_iters=2', '--eval_interval=2', '--extra_batch_size=4']
    run(*student_args(demo, tmp_path / 'o', *extra))
    row, _ = last_row(tmp_path / 'o')
    assert {'loss/extra_img/feat', 'loss/extra_txt/affinity'} <= set(row)
    texts_as_images = f'--extra_image_cache={tmp_path / "c/corpus"}'
    p = run(*student_args(demo, tmp_path / 'x', texts_as_images), ok=False)
    assert p.returncode != 0 and 'pixels' in p.stdout + p.stderr
    # the same folder paired by a captions jsonl (a line per caption, paths under the folder): a
    # train cache
    names = sorted(os.path.relpath(os.path.join(d, f), tmp_path / 'f')
                   for d, _, fs in os.walk(tmp_path / 'f') for f in fs)
    lines = [json.dumps(dict(file=n, caption=f'a caption of {n}')) for n in names]
    (tmp_path / 'caps.jsonl').write_text('\n'.join(lines[:5]) + '\n')
    folder = [f'--image_folder={tmp_path / "f"}', f'--folder_captions={tmp_path / "caps.jsonl"}',
              *common]
    p = run('cache_teacher.py', *folder, '--split=paired', ok=False) # the 6th image has no caption
    assert p.returncode != 0 and '1 of 6 images' in p.stderr and 'captions=False' in p.stderr
    more = json.dumps(dict(file=names[0], captions=['two', 'more']))
    (tmp_path / 'caps.jsonl').write_text('\n'.join(lines + [more]))
    run('cache_teacher.py', *folder, '--split=paired')
    d, m = load_cache(str(tmp_path / 'c/paired'))
    assert m['dataset']['contents'] == 'paired'
    assert m['counts'] == dict(m['counts'], images=6, captions=8)
    assert torch.equal(d['pixels'], f['pixels'])
    assert d['caption_image_ids'].tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    run(*student_args(demo, tmp_path / 'p', f'--train_cache={tmp_path / "c/paired"}',
                      '--batch_size=4', '--max_iters=2', '--eval_interval=2'))
    assert math.isfinite(last_row(tmp_path / 'p')[0]['loss'])
    (tmp_path / 'caps.jsonl').write_text(lines[0] + '\n{"file": "nope.jpg", "caption": "x"}\n')
    p = run('cache_teacher.py', *folder, '--split=bad', ok=False)
    assert p.returncode != 0 and 'caps.jsonl, line 2' in p.stderr and 'nope.jpg' in p.stderr

def test_webdataset_tars_cached_and_trained_on(tmp_path):
    """Two img2dataset-style tars (key.jpg|png + key.txt + key.json, one key with only a .txt) from
    the synthetic world, read by a brace list: each image's pixels equal the COCO-reader cache of
    the same file; a missing caption is refused unless --captions=False; train.py trains on the tar
    cache (memory-mapped)."""
    from transformers import AutoTokenizer
    w = tiny_world(tmp_path / 'w')
    caps = json.load(open(w / 'annotations/captions_train2017.json'))
    files = {im['id']: im['file_name'] for im in sorted(caps['images'], key=lambda im: im['id'])}
    first = {}
    for a in sorted(caps['annotations'], key=lambda a: a['id']):
        first.setdefault(a['image_id'], a['caption'])
    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    ids = list(files)
    for t, part in enumerate((ids[:25], ids[25:])):
        with tarfile.open(tmp_path / f'shard-{t:02d}.tar', 'w') as tf:
            for i in part:
                key = f'{i:09d}'
                add(tf, f'{key}.png', (w / 'train2017' / files[i]).read_bytes())
                add(tf, f'{key}.txt', first[i].encode())
                add(tf, f'{key}.json', json.dumps(dict(key=key)).encode())
            add(tf, 'orphan.txt', b'a caption whose download failed') # no image: skipped
    base = ['cache_teacher.py', f'--tars={tmp_path}/shard-{{00..01}}.tar',
            f'--processor={w / "processor"}', '--teacher=none', '--num_workers=0',
            '--shard_size=16', f'--out_dir={tmp_path / "c"}']
    run(*base, '--split=tar')
    run('cache_teacher.py', f'--data_dir={w}', '--split=train', '--teacher=none',
        f'--processor={w / "processor"}', '--num_workers=0', f'--out_dir={tmp_path / "c"}')
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', '--teacher=none',
        f'--processor={w / "processor"}', '--num_workers=0', f'--out_dir={tmp_path / "c"}')
    d, m = load_cache(str(tmp_path / 'c/tar'))
    ref, _ = load_cache(str(tmp_path / 'c/train'))
    assert m['dataset']['reader'] == 'webdataset'
    assert m['counts']['images'] == 40 and m['counts']['captions'] == 40
    # the same images in the same (id) order, decoded from the tars
    assert torch.equal(d['pixels'], ref['pixels'])
    t = AutoTokenizer.from_pretrained(str(w / 'processor'))
    for j in (0, 3, 39): # key order = id order: image j carries its own first caption
        decoded = t.decode(d['input_ids'][j], skip_special_tokens=True).strip()
        assert decoded == ' '.join(first[ids[j]].lower().split())
    with tarfile.open(tmp_path / 'shard-00.tar', 'a') as tf:
        add(tf, 'nocap.png', (w / 'train2017' / files[ids[0]]).read_bytes())
    p = run(*base, '--split=tar2', ok=False)
    assert p.returncode != 0 and '1 of 41' in p.stderr and 'captions=False' in p.stderr
    run(*base, '--split=tar2', '--captions=False')
    d2, m2 = load_cache(str(tmp_path / 'c/tar2'))
    assert m2['dataset']['contents'] == 'images' and len(d2['pixels']) == 41
    assert 'input_ids' not in d2
    out = tmp_path / 'o'
    run('train.py', 'config/a1.py', 'config/shapes.py', f'--train_cache={tmp_path / "c/tar"}',
        f'--val_cache={tmp_path / "c/val"}', f'--out_dir={out}', '--embed_dim=16',
        '--batch_size=16', '--max_iters=3', '--eval_interval=3', '--val_images=20')
    row, val = last_row(out)
    assert row['iter'] == 3 and math.isfinite(row['loss']) and 'val/i2t_r1' in val

def hf_caches(tmp, **world):
    """A tiny world + a tiny random SiglipModel, cached: train (K=3 views, 3 shards), val, web
    images."""
    w = tiny_world(tmp / 'w', **world)
    make_tiny_hf_teacher(str(tmp / 't'), str(w / 'processor'))
    base = ['cache_teacher.py', f'--data_dir={w}', f'--teacher={tmp / "t"}', '--num_workers=0',
            f'--out_dir={tmp / "c"}']
    run(*base, '--split=train', '--views=3', '--shard_size=16')
    run(*base, '--split=val')
    run(*base, '--split=web', '--captions=False', '--views=3', '--shard_size=8')
    return w

def test_mmap_cache_gathers_what_the_loaded_cache_holds_and_training_resumes_exactly(tmp_path):
    """load_cache(mmap=True): every key of a 3-shard cache with views gives, for x[idx], x[idx, v],
    x[mask], x[a:b], x[i], x[:, :L][idx] and .split(n), exactly the loaded tensors; train.py
    (memory-mapped caches, prefetch thread) with views, unpaired images and every SigLIP 2 term,
    SIGKILLed after the iter-4 checkpoint and resumed across the switch (iter 6), equals the
    uninterrupted run. eval.py's teacher row through the maps == loaded tensors."""
    hf_caches(tmp_path)
    a, _ = load_cache(str(tmp_path / 'c/train'))
    b, man = load_cache(str(tmp_path / 'c/train'), mmap=True)
    assert len(man['shards']) == 3
    assert isinstance(b['pixels'], Rows) and isinstance(b['view_embeds'], Rows)
    # 1-D metadata: plain tensors
    assert set(a) == set(b) and torch.equal(a['image_ids'], b['image_ids'])
    g = torch.Generator().manual_seed(0)
    for k in a:
        n = len(a[k])
        idx = torch.randint(n, (50,), generator=g) # crosses shard boundaries, repeats rows
        mask = torch.rand(n, generator=g) < 0.5
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        for key in (idx, mask, slice(5, 23), slice(None, 0), slice(None), -1, 17):
            assert torch.equal(a[k][key], b[k][key]), (k, key)
        if a[k].dim() > 1:
            assert torch.equal(a[k][:, :2][idx], b[k][:, :2][idx]), k
            assert isinstance(b[k][:, :2], Rows), k
            assert torch.equal(torch.cat(list(a[k].split(7))), torch.cat(list(b[k].split(7)))), k
    v = torch.randint(3, (50,), generator=g)
    for k in ('view_embeds', 'view_boxes', 'view_flips'):
        assert torch.equal(a[k][idx, v], b[k][idx, v]), k
    run('eval.py', f'--cache={tmp_path / "c/train"}') # the teacher row, read through the maps
    index = torch.searchsorted(a['image_ids'], a['caption_image_ids'])
    # ... and from the loaded tensors
    want = retrieval_metrics(a['image_embeds'], a['text_embeds'], index)
    got = json.load(open(tmp_path / 'c/train/eval.json'))['metrics']
    assert got == pytest.approx(want, abs=1e-9)
    args = lambda out: ['train.py', 'config/a6.py', 'config/shapes.py',
                        f'--train_cache={tmp_path / "c/train"}',
                        f'--val_cache={tmp_path / "c/val"}',
                        f'--extra_image_cache={tmp_path / "c/web"}', '--views=3',
                        '--extra_batch_size=8', f'--out_dir={out}', '--batch_size=16',
                        '--val_images=20', '--log_interval=1', '--warmup_iters=2', '--max_iters=8',
                        '--eval_interval=4', '--switch=0.75']
    # killed right after the iter-4 checkpoint, while the prefetch thread may be gathering iter 5
    r, q, out = resume_after_kill(args, tmp_path, checkpoint_iter=4)
    assert 'memory after loading the caches' in out
    assert r['iter'] == q['iter'] == 8
    assert {'loss/locca/aref', 'loss/silc', 'loss/extra_img/feat'} <= set(r)

def test_cache_fingerprint_hashes_content(tmp_path):
    """The teacher fingerprint hashes files, not the path: `<dir>/./t` == `<dir>/t`; retrained
    weights or edited captions at the same paths make a rerun into the old out_dir refuse, saying
    what changed."""
    from safetensors.torch import load_file, save_file
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'))
    args = lambda t, out: ['cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={t}',
                           f'--out_dir={out}', '--num_workers=0', '--shard_size=8']
    run(*args(tmp_path / 't', tmp_path / 'c1'))
    run(*args(f'{tmp_path}/./t', tmp_path / 'c2'))
    m1, m2 = [json.load(open(tmp_path / c / 'val/manifest.json')) for c in ('c1', 'c2')]
    assert m1['teacher_fingerprint'] == m2['teacher_fingerprint']
    assert m1['fingerprint'] == m2['fingerprint']
    caps_f = w / 'annotations/captions_val2017.json'
    good = caps_f.read_text()
    caps = json.loads(good)
    caps['annotations'][0]['caption'] = 'a fixed caption'
    caps_f.write_text(json.dumps(caps))
    p = run(*args(tmp_path / 't', tmp_path / 'c1'), ok=False)
    assert clean_error(p, 'captions_val2017.json'), p.stderr[-2000:]
    assert 'teacher weights' not in p.stderr, p.stderr[-2000:]
    caps_f.write_text(good)
    wf = tmp_path / 't/model.safetensors' # "retrained in place": new weights at the same path
    sd = load_file(str(wf))
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = sd[k] + 1.0
    save_file(sd, str(wf), metadata={'format': 'pt'})
    p = run(*args(tmp_path / 't', tmp_path / 'c2'), ok=False)
    assert clean_error(p, 'teacher weights') and 'captions' not in p.stderr, p.stderr[-2000:]

def test_cache_refuses_foreign_tokenizer(tmp_path):
    """--processor with another vocabulary than the teacher's: refused before any image is read
    (no shard written), for one of our teachers (tokenizer saved beside it) and for an HF
    teacher with a smaller text vocabulary."""
    from transformers import AutoTokenizer
    w = tiny_world(tmp_path / 'w')
    foreign = tmp_path / 'foreign'
    shutil.copytree(w / 'processor', foreign)
    tok = AutoTokenizer.from_pretrained(str(w / 'processor'))
    n = len(tok)
    tok.add_tokens(['zzunseen', 'qqunseen'])
    tok.save_pretrained(str(foreign))
    ours = tmp_path / 'ours'
    tiny_student(kept_ids=list(range(n))).save_pretrained(str(ours))
    # as train.py does: the teacher's tokenizer travels with it
    for f in os.listdir(w / 'processor'):
        shutil.copy(w / 'processor' / f, ours / f)
    make_tiny_hf_teacher(str(tmp_path / 'hf'), str(w / 'processor'))
    for t, needles in ((ours, ['vocabulary', str(foreign)]),
                       (tmp_path / 'hf', [str(n), str(n + 2)])):
        out = tmp_path / f'c-{t.name}'
        p = run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={t}',
                f'--processor={foreign}', f'--out_dir={out}', '--num_workers=0', ok=False)
        assert clean_error(p, *needles), p.stderr[-2000:]
        assert not any(f.endswith('.safetensors') for f in os.listdir(out / 'val'))
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={ours}',
        f'--out_dir={tmp_path / "ok"}', '--num_workers=0')

def test_cache_stops_at_a_failed_shard_write_and_recomputes_a_truncated_one(tmp_path):
    """A shard that cannot be written stops the run at the next shard (not after all of them),
    naming the file; a 0-byte or truncated shard left by a power loss is recomputed on rerun
    (named), giving the same cache."""
    w = tiny_world(tmp_path / 'w')
    c = tmp_path / 'c/val'
    args = ['cache_teacher.py', f'--data_dir={w}', '--split=val', '--teacher=none',
            f'--processor={w / "processor"}', f'--out_dir={tmp_path / "c"}', '--num_workers=0',
            '--shard_size=4'] # 20 images -> 5 shards
    c.mkdir(parents=True)
    # the writer cannot create shard 0's file (like a full disk)
    (c / 'val-00000.safetensors.tmp').mkdir()
    p = run(*args, ok=False)
    assert clean_error(p, 'val-00000.safetensors'), p.stderr[-2000:]
    # stopped early: shards 2-4 were never computed
    assert not os.path.exists(c / 'val-00002.safetensors')
    (c / 'val-00000.safetensors.tmp').rmdir()
    run(*args)
    m = json.load(open(c / 'manifest.json'))
    open(c / 'val-00001.safetensors', 'wb').close()
    data = (c / 'val-00003.safetensors').read_bytes()
    (c / 'val-00003.safetensors').write_bytes(data[:len(data) // 2])
    os.remove(c / 'manifest.json')
    out = run(*args).stdout
    assert 'val-00001.safetensors' in out and 'val-00003.safetensors' in out
    assert '3 done before' in out
    assert json.load(open(c / 'manifest.json'))['fingerprint'] == m['fingerprint']

def test_karpathy_boxes_from_two_instances_files_and_training_without_boxes(tmp_path):
    """Karpathy train+restval spans two COCO instances files: --instances=a.json,b.json finds boxes
    for every image (crowd boxes counted). A Karpathy cache without boxes trains A6 (ARef/GCap
    skipped, said once), and a resume after the captions changed refuses, naming the annotation
    file."""
    w = tiny_world(tmp_path / 'w')
    kf = w / 'annotations/dataset_shapes.json'
    a = w / 'annotations'
    iv = json.load(open(a / 'instances_val2017.json'))
    it = json.load(open(a / 'instances_test2017.json'))
    it['annotations'][0]['iscrowd'] = 1
    json.dump(it, open(a / 'instances_test2017.json', 'w'))
    args = lambda split, out, *x: ['cache_teacher.py', f'--data_dir={w}', f'--karpathy={kf}',
                                   f'--split={split}', '--teacher=none',
                                   f'--processor={w / "processor"}', f'--out_dir={tmp_path / out}',
                                   '--num_workers=0', *x]
    instances = f'--instances={a / "instances_val2017.json"},{a / "instances_test2017.json"}'
    run(*args('val+test', 'b', instances))
    d, m = load_cache(str(tmp_path / 'b/val+test'))
    want = {x['image_id'] for x in iv['annotations'] + it['annotations'][1:]}
    assert set(d['region_image_ids'].tolist()) == want and m['counts']['crowd_boxes'] == 1
    assert m['counts']['regions'] == len(iv['annotations']) + len(it['annotations']) - 1
    for s in ('train', 'val'): # no --instances: no boxes at all
        run(*args(s, 'k'))
    tr = ['train.py', 'config/a6.py', 'config/shapes.py', f'--train_cache={tmp_path}/k/train',
          f'--val_cache={tmp_path}/k/val', f'--out_dir={tmp_path / "o"}', '--lambda_feat=0.0',
          '--lambda_affinity=0.0', '--embed_dim=32', '--batch_size=8', '--val_images=20',
          '--max_iters=4', '--eval_interval=2', '--log_interval=1', '--switch=0.5',
          '--warmup_iters=1']
    out = run(*tr).stdout
    assert out.count('no regions') == 1, out
    rows = [json.loads(l) for l in open(tmp_path / 'o/log.jsonl') if '"loss"' in l]
    assert all(r['loss/locca/aref'] == 0 and r['loss/locca/cap'] > 0 for r in rows)
    assert all(math.isfinite(r['loss']) for r in rows)
    k = json.load(open(kf))
    k['images'][0]['sentences'][0]['raw'] = 'a fixed caption'
    json.dump(k, open(kf, 'w'))
    shutil.rmtree(tmp_path / 'k/train')
    run(*args('train', 'k'))
    p = run(*tr, '--init_from=resume', '--max_iters=6', ok=False)
    assert clean_error(p, 'dataset_shapes.json'), p.stderr[-2000:]

def test_old_format_cache_is_refused_with_the_command_that_recaches_it(tmp_path):
    """A manifest of format 1 (no `format` field, no `config`: as every cache before the field was
    stored) -> one line naming the manifest, its format and the cache_teacher.py command built from
    what it records; that command re-caches it (same settings: the shards are kept, the manifest
    is written in the current format) and the cache reads again."""
    import shlex
    w = tiny_world(tmp_path / 'w')
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={TEACHER}',
        '--num_workers=0', f'--out_dir={tmp_path / "c"}')
    path = tmp_path / 'c/val/manifest.json'
    man = json.load(open(path))
    del man['format'], man['config']
    path.write_text(json.dumps(man, indent=1))
    p = run('eval.py', f'--cache={tmp_path / "c/val"}', ok=False)
    assert clean_error(p, str(path), 'cache format 1', 'python cache_teacher.py'), p.stderr
    command = shlex.split(p.stderr.strip().splitlines()[-1].split('re-cache it: ')[1])
    assert command[:2] == ['python', 'cache_teacher.py'] and '--split=val' in command
    run(*command[1:])
    assert json.load(open(path))['fingerprint'] == man['fingerprint']
    run('eval.py', f'--cache={tmp_path / "c/val"}')

def strip_captions(src, dst):
    """A copy of the cache dir src without caption_utf8 / caption_lengths in its shards, its
    manifest re-stamped (shard sha256s, fingerprint): a cache as made before they were kept."""
    from safetensors.torch import load_file, save_file
    from cache import write_manifest
    shutil.copytree(src, dst)
    man = json.load(open(dst / 'manifest.json'))
    for s in man['shards']:
        f = dst / s['file']
        tensors = {k: v for k, v in load_file(str(f)).items() if not k.startswith('caption_u')
                   and k != 'caption_lengths'}
        save_file(tensors, str(f), metadata={'info': json.dumps({})})
        s['sha256'] = hashlib.sha256(f.read_bytes()).hexdigest()
    write_manifest(str(dst / 'manifest.json'), man)
    return dst

def test_cache_keeps_the_raw_captions_and_the_teacher_embeds_them_as_before(tiny_caches):
    """The shards hold each caption's raw annotation string (before the teacher's lowercasing),
    aligned with input_ids over every shard; the teacher's ids and text embeddings per caption
    are what it gives that raw caption on its own (bitwise: the new keys change nothing)."""
    from cache import captions
    from cache_teacher import Teacher
    data, _ = load_cache(str(tiny_caches / 'c/train'))
    anns = json.load(open(tiny_caches / 'w/annotations/captions_train2017.json'))['annotations']
    by_image = sorted(anns, key=lambda a: a['image_id']) # stable: each image's own order
    assert captions(data) == [a['caption'] for a in by_image]
    assert len(captions(data)) == len(data['input_ids'])
    teacher = Teacher(TEACHER)
    # one call on the shard's 200 captions, as cache_shard makes it (4 x batch_size rows)
    ids = teacher.tokenize(captions(data))
    assert torch.equal(ids.int(), data['input_ids'])
    assert torch.equal(teacher.texts(ids).half(), data['text_embeds'])

def tar_of(path, members): # [(name, bytes)] -> an uncompressed tar
    with tarfile.open(path, 'w') as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

def test_user_text_is_validated_where_read(tiny_caches, tmp_path):
    """User-supplied text. Non-UTF-8 bytes in a caption file, a captions jsonl and a tar caption; a
    template without {c} or with another field; an empty or blank query, a missing --query_image,
    --topk=-1: one line naming the file (and line / member) or the setting, no traceback."""
    common = [f'--teacher={TEACHER}', '--num_workers=0', f'--out_dir={tmp_path / "c"}']
    (tmp_path / 'caps.txt').write_bytes(b'a red circle\nbad \xff\xfe bytes\n')
    p = run('cache_teacher.py', f'--caption_file={tmp_path / "caps.txt"}', '--split=t', *common,
            ok=False)
    assert clean_error(p, 'caps.txt, line 2', 'UTF-8')
    (tmp_path / 'f').mkdir()
    shutil.copy(sorted((tiny_caches / 'w/web2017').iterdir())[0], tmp_path / 'f/a.jpg')
    (tmp_path / 'caps.jsonl').write_bytes(b'{"file": "a.jpg", "caption": "caf\xe9"}\n')
    p = run('cache_teacher.py', f'--image_folder={tmp_path / "f"}',
            f'--folder_captions={tmp_path / "caps.jsonl"}', '--split=j', *common, ok=False)
    assert clean_error(p, 'caps.jsonl, line 1', 'UTF-8')
    image = (tmp_path / 'f/a.jpg').read_bytes()
    tar_of(tmp_path / 'a.tar', [('k.jpg', image), ('k.txt', b'\xff')])
    p = run('cache_teacher.py', f'--tars={tmp_path / "a.tar"}', '--split=tar', *common, ok=False)
    assert clean_error(p, 'a.tar, member k.txt', 'UTF-8')
    shutil.copytree(TEACHER, tmp_path / 's')
    (tmp_path / 'zs/a').mkdir(parents=True)
    (tmp_path / 'zs/b').mkdir()
    shutil.copy(tmp_path / 'f/a.jpg', tmp_path / 'zs/a/1.jpg')
    shutil.copy(tmp_path / 'f/a.jpg', tmp_path / 'zs/b/1.jpg')
    for t in ('a photo', 'a {x}', '{c} and {d}'):
        p = run('eval.py', f'--ckpt={tmp_path / "s"}', f'--zeroshot={tmp_path / "zs"}',
                f'--templates={t}', ok=False)
        assert clean_error(p, '--templates', repr(t)) and not (tmp_path / 's/eval.json').exists()
    search = ['student.py', f'--ckpt={tmp_path / "s"}', f'--folder={tmp_path / "f"}']
    for q in ('--query= ', '--query='):
        assert clean_error(run(*search, q, ok=False), '--query', 'empty'), q
    p = run(*search, f'--query_image={tmp_path / "nope.jpg"}', ok=False)
    assert clean_error(p, 'nope.jpg', 'not found')
    assert clean_error(run(*search, '--query=a red circle', '--topk=-1', ok=False), '--topk=-1')

def test_readers_count_what_they_drop_or_merge(tiny_caches, tmp_path):
    """Readers dropping or merging without a count. Duplicate keys in one tar and the same tar
    listed twice; a folder with a .gif, a .txt, a FIFO named .jpg, a dangling symlink, a
    symlinked subfolder (followed) and a link back up the tree (a loop: counted, not followed);
    two sources in one run -> error; truncated tar / not a tar -> one line."""
    from PIL import Image
    webs = sorted((tiny_caches / 'w/web2017').iterdir())
    common = ['--teacher=none', f'--processor={tiny_caches / "w/processor"}', '--num_workers=0',
              f'--out_dir={tmp_path / "c"}']
    jpg = [f.read_bytes() for f in webs[:3]]
    tar_of(tmp_path / 'a.tar', [('k0.jpg', jpg[0]), ('k0.txt', b'one'), ('k1.jpg', jpg[1]),
                                ('k1.txt', b'two'), ('k1.jpg', jpg[2]), ('k1.txt', b'three')])
    out = run('cache_teacher.py', f'--tars={tmp_path}/{{a,a}}.tar', '--split=tar', *common).stdout
    _, m = load_cache(str(tmp_path / 'c/tar'))
    assert m['counts']['images'] == 2 and m['counts']['repeated_tars'] == 1
    assert m['counts']['duplicate_members'] == 2
    assert 'counted in the manifest' in out
    f = tmp_path / 'f'
    (f / 'real').mkdir(parents=True)
    for i, src in enumerate(webs[:3]):
        shutil.copy(src, f / f'{i}.jpg')
    Image.open(webs[3]).save(f / 'real/x.gif')
    Image.open(webs[4]).save(f / 'x.tif')
    (f / 'notes.txt').write_text('not an image')
    os.mkfifo(f / 'pipe.jpg')
    os.symlink(tmp_path / 'gone.jpg', f / 'dangling.jpg')
    (tmp_path / 'outside').mkdir()
    Image.open(webs[5]).save(tmp_path / 'outside/y.gif')
    os.symlink(tmp_path / 'outside', f / 'linked') # followed
    os.symlink(f, f / 'real/up') # a loop: read once
    os.symlink(f / 'real', f / 'again') # the same folder twice: read once
    run('cache_teacher.py', f'--image_folder={f}', '--split=folder', '--captions=False', *common,
        timeout=120)
    _, m = load_cache(str(tmp_path / 'c/folder'))
    assert m['counts']['images'] == 6 # 3 jpg + tif + real/x.gif + linked/y.gif
    assert m['counts']['not_images'] == 1 and m['counts']['not_regular_files'] == 2
    assert m['counts']['repeated_folders'] == 2
    p = run('cache_teacher.py', f'--image_folder={f}', f'--tars={tmp_path / "a.tar"}',
            '--split=two', *common, ok=False)
    assert clean_error(p, 'one source per cache run')
    (tmp_path / 'cut.tar').write_bytes((tmp_path / 'a.tar').read_bytes()[:1500])
    (tmp_path / 'no.tar').write_bytes(b'not a tar at all' * 100)
    for name in ('cut.tar', 'no.tar'):
        p = run('cache_teacher.py', f'--tars={tmp_path / name}', '--split=bad', *common, ok=False)
        assert clean_error(p, name), p.stderr[-1500:]

# -----------------------------------------------------------------------------
# train.py: exact resume after SIGKILL, every term learning, DDP, compile, views, one-line errors,
# the out_dir lock, failed writes, leaks (most train on the quick demo's caches, through the
# `demo` fixture); --hf_model

@pytest.mark.fast
def test_stream_seed_gives_every_draw_its_seed_of_before():
    """train.py's stream_seed, taken from train.py with ast (none of the rest runs), returns the
    seeds of the formulas it replaced at every call site: a new number would change every draw."""
    path = os.path.join(REPO, 'train.py')
    body = ast.parse(open(path).read(), path).body
    names = ('STREAM_OFFSETS', 'stream_seed')
    nodes = [n for n in body if getattr(n, 'name', None) in names
             or any(getattr(t, 'id', None) in names for t in getattr(n, 'targets', []))]
    ns = {}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, 'exec'), ns)
    stream_seed = ns['stream_seed']
    for seed in (0, 1, 7):
        for it in (0, 1, 19_999):
            assert stream_seed(seed, 'switch', it) == seed * 1_000_003 + it * 101 + 100
            for micro in (0, 3):
                base = seed * 1_000_003 + it * 101 + micro
                assert stream_seed(seed, 'batch', it, micro) == base
                assert stream_seed(seed, 'extra_images', it, micro) == base + 1 * 7_777_777
                assert stream_seed(seed, 'extra_captions', it, micro) == base + 2 * 7_777_777
                for rank in (0, 1, 7):
                    want = base + 7919 * rank
                    assert stream_seed(seed, 'losses', it, micro, rank) == want

# switch at iter 15 (after the checkpoint) / 10 (exactly at it)
@pytest.mark.parametrize('max_iters', [30, 20])
def test_train_resume_after_kill_is_exact_across_the_switch(demo, tmp_path, max_iters):
    """A6 (A5 + LocCa + SILC/TIPS, switch at half the run): SIGKILL right after the iter-10
    checkpoint, resume across (or exactly at) the switch point, and get the same losses and val
    numbers as the uninterrupted run."""
    common = [f'--max_iters={max_iters}', '--eval_interval=10', '--switch=0.5']
    args = lambda out: ['train.py', 'config/a6.py', *student_args(demo, out, *common)[2:]]
    a, b, _ = resume_after_kill(args, tmp_path, checkpoint_iter=10)
    assert a['iter'] == b['iter'] == max_iters
    assert {'loss/silc', 'loss/tips', 'loss/locca'} <= set(a)

def test_recipe_resume_after_kill_is_exact_with_views_and_unpaired_batches(demo, tmp_path):
    """The TinySigLIP recipe (K views + unpaired image and caption batches): SIGKILL after the
    iter-6 checkpoint, resume, and every loss term and val number equals the uninterrupted
    run's."""
    extra = [f'--extra_image_cache={demo}/cache/shapes-img/web',
             f'--extra_text_cache={demo}/cache/shapes-txt/web',
             '--views=3', '--max_iters=12', '--eval_interval=6', '--extra_batch_size=8']
    args = lambda out: ['train.py', 'config/shapes_tinysiglip.py',
                        *student_args(demo, out, *extra)[2:]]
    a, b, _ = resume_after_kill(args, tmp_path, checkpoint_iter=6)
    want = {'loss/feat', 'loss/extra_img/feat', 'loss/extra_img/affinity', 'loss/extra_txt/feat',
            'loss/extra_txt/affinity', 'loss/extra_cross'}
    assert a['iter'] == b['iter'] == 12 and want <= set(a)

def test_siglip2_terms_decrease(demo, tmp_path):
    """Every SigLIP 2 term goes down on the synthetic world (SILC/TIPS from the switch on);
    eval.json gets ARef numbers."""
    out = tmp_path / 'a6'
    a6 = student_args(demo, out, '--max_iters=150', '--eval_interval=150', '--switch=0.4',
                      '--batch_size=32', '--learning_rate=3e-3')[2:]
    run('train.py', 'config/a6.py', *a6)
    rows = [json.loads(l) for l in open(out / 'log.jsonl') if '"loss"' in l]
    for k in ('loss/sigmoid', 'loss/locca/cap', 'loss/locca/aref', 'loss/locca/gcap', 'loss/silc',
              'loss/tips'):
        v = [r[k] for r in rows if k in r]
        first, last = sum(v[:15]) / 15, sum(v[-15:]) / 15
        assert last < first, (k, first, last)
    run('eval.py', f'--cache={demo}/cache/shapes/test', f'--ckpt={out}')
    e = json.load(open(out / 'eval.json'))
    assert 0 <= e['locca']['aref_acc_iou50'] <= 100 and e['locca']['cap_token_acc'] > 10

def test_a7_without_contrastive_trains(demo, tmp_path):
    """A7, the seed's "w/o Contrastive": feature + affinity, no sigmoid term. Both terms go down,
    and the student's logit scale still learns (through the affinity rows it must match)."""
    out = tmp_path / 'a7'
    a7 = student_args(demo, out, '--max_iters=30', '--eval_interval=30')[2:]
    run('train.py', 'config/a7.py', *a7)
    rows = [json.loads(l) for l in open(out / 'log.jsonl') if '"loss"' in l]
    assert 'loss/sigmoid' not in rows[0] and {'loss/feat', 'loss/affinity'} <= set(rows[0])
    for k in ('loss/feat', 'loss/affinity'):
        assert sum(r[k] for r in rows[-5:]) < sum(r[k] for r in rows[:5]), k
    assert rows[-1]['scale'] != pytest.approx(10.0, rel=1e-3) # init t = 10 (SigLIP)
    assert json.load(open(out / 'meta.json'))['config']['lambda_contrast'] == 0.0

def test_ddp_two_cpu_processes_match_one(demo, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, batch 8 each) == 1 process with batch 16 (same global
    batch)."""
    common = ['--max_iters=5', '--eval_interval=5', '--num_threads=1']
    run(*student_args(demo, tmp_path / 'one', *common))
    args = student_args(demo, tmp_path / 'two', *common)
    args[args.index('--batch_size=16')] = '--batch_size=8'
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args)
    (a, va), (b, vb) = last_row(tmp_path / 'one'), last_row(tmp_path / 'two')
    for k in a:
        if k.startswith('loss'):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    assert va['val/i2t_r1'] == pytest.approx(vb['val/i2t_r1'], abs=1e-6)
    assert json.load(open(tmp_path / 'two/meta.json'))['world_size'] == 2

def learnt_weights(out):
    """out/model.safetensors without the attention key biases: their true gradient is 0 (a
    softmax ignores a shift shared by a query's logits), so AdamW turns rounding noise into
    steps of up to lr there, and two runs differ by ~lr in them."""
    from safetensors.torch import load_file
    w = load_file(str(out / 'model.safetensors'))
    for k, v in w.items():
        if k.endswith('.qkv.bias'): # [q, k, v]
            w[k] = torch.cat([v[:len(v) // 3], v[2 * len(v) // 3:]])
        elif k.endswith('.kv.bias'): # [k, v]
            w[k] = v[len(v) // 2:]
    return w

def test_ddp_four_ranks_own_loss_rows_match_one_process_chunked_or_not(demo, tmp_path):
    """4 gloo ranks (batch 4 each), each computing only its own image rows of the sigmoid and
    affinity matrices against all 16 texts, == 1 process with batch 16: the same losses (every
    term, unpaired ones included) and weights after 3 steps, with and without chunking
    (--loss_chunk=3 splits each rank's 4 rows into 3 + 1, and the 1 process's 16 into 6)."""
    common = ['--max_iters=3', '--eval_interval=3', '--num_threads=1', '--lambda_extra_cross=1.0',
              f'--extra_image_cache={demo}/cache/shapes-img/web',
              f'--extra_text_cache={demo}/cache/shapes-txt/web', '--extra_batch_size=8']
    run(*student_args(demo, tmp_path / 'one', *common))
    for name, chunk in (('four', '--loss_chunk=0'), ('four_chunked', '--loss_chunk=3')):
        args = student_args(demo, tmp_path / name, *common[:-1], '--extra_batch_size=2', chunk)
        args[args.index('--batch_size=16')] = '--batch_size=4'
        run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=4', *args)
        (a, _), (b, _) = last_row(tmp_path / 'one'), last_row(tmp_path / name)
        assert {'loss/sigmoid', 'loss/affinity', 'loss/extra_cross'} <= set(a)
        # grad_norm: AdamW's step hides a gradient off by a constant factor, the norm does not
        for k in a:
            if k.startswith('loss') or k == 'grad_norm':
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (name, k)
        wa = learnt_weights(tmp_path / 'one')
        wb = learnt_weights(tmp_path / name)
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), (name, k)
        assert json.load(open(tmp_path / name / 'meta.json'))['world_size'] == 4

def test_train_val_subset_matches_an_independent_eval(demo, tmp_path):
    """train.py's periodic val R@1 on the first val_images images (not a multiple of its 256-image
    chunks) == retrieval_metrics on the same images computed here from the saved student."""
    run(*student_args(demo, tmp_path / 'v', '--max_iters=3', '--eval_interval=3',
                      '--val_images=37'))
    _, row = last_row(tmp_path / 'v')
    val, _ = load_cache(f'{demo}/cache/shapes/val')
    s = Student.from_pretrained(str(tmp_path / 'v')).eval()
    keep = val['caption_image_ids'] <= val['image_ids'][36]
    with torch.no_grad():
        img = s.encode_image(s.preprocess(val['pixels'][:37]))
        txt = s.encode_text(val['input_ids'][keep].long())
    index = torch.searchsorted(val['image_ids'][:37], val['caption_image_ids'][keep])
    m = retrieval_metrics(img, txt, index)
    for k in ('i2t_r1', 't2i_r1', 'i2t_r10', 't2i_r10'):
        assert row[f'val/{k}'] == pytest.approx(m[k], abs=1e-4), k

def test_compile_switch_matches_eager(demo, tmp_path):
    """--compile=True (torch.compile, inductor on CPU) trains like eager mode; the checkpoint holds
    the uncompiled model, so Student.from_pretrained loads it."""
    common = ['--max_iters=4', '--eval_interval=4', '--num_threads=2']
    run(*student_args(demo, tmp_path / 'eager', *common))
    run(*student_args(demo, tmp_path / 'comp', *common, '--compile=True'))
    (a, _), (b, _) = last_row(tmp_path / 'eager'), last_row(tmp_path / 'comp')
    for k in a:
        if k.startswith('loss'):
            assert a[k] == pytest.approx(b[k], rel=1e-3), k
    assert Student.from_pretrained(str(tmp_path / 'comp')).config.embed_dim == 128

def test_views_1_trains_exactly_like_a_cache_without_views(demo, tmp_path):
    """The demo's train cache stores K=3 views; with views=1 train.py draws and computes exactly
    what it does on the same split cached without views (view 0 is embedded in the same batches as
    before), to the last bit."""
    run('cache_teacher.py', f'--data_dir={demo}/data/shapes', '--split=train',
        f'--teacher={TEACHER}', f'--out_dir={tmp_path / "c1"}', '--num_workers=1')
    a, b = load_cache(f'{demo}/cache/shapes/train')[0], load_cache(str(tmp_path / 'c1/train'))[0]
    assert a['view_embeds'].shape[1] == 3 and 'view_embeds' not in b
    assert all(torch.equal(a[k], b[k]) for k in b), [k for k in b if not torch.equal(a[k], b[k])]
    common = ['--max_iters=3', '--eval_interval=3']
    run(*student_args(demo, tmp_path / 'k3', *common, '--views=1'))
    k1 = student_args(demo, tmp_path / 'k1', *common)
    # the same, on the cache without views
    run(*k1[:3], f'--train_cache={tmp_path / "c1/train"}', *k1[4:])
    rows = lambda o: [json.loads(l) for l in open(o / 'log.jsonl')]
    timings = ('dt_ms', 'samples_per_s')
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timings} for r in rs]
    assert strip(rows(tmp_path / 'k3')) == strip(rows(tmp_path / 'k1'))

def test_train_rejects_bad_config(demo, tmp_path):
    p = run(*student_args(demo, tmp_path / 'x', '--learnign_rate=1'), ok=False)
    assert p.returncode != 0 and 'learnign_rate' in p.stderr + p.stdout
    p = run(*student_args(demo, tmp_path / 'x', '--embed_dim=64'), ok=False)
    assert p.returncode != 0 and 'embed_dim=64' in p.stderr + p.stdout
    # leak
    train_as_val = f'--val_cache={demo}/cache/shapes/train'
    p = run(*student_args(demo, tmp_path / 'x', train_as_val), ok=False)
    assert p.returncode != 0 and 'overlap' in (p.stderr + p.stdout).lower()

def test_train_stops_on_nonfinite_loss(demo, tmp_path):
    """A diverging run stops at the first non-finite loss, naming the iteration and the terms;
    ckpt.pt / model.safetensors keep the last good (finite) checkpoint and no NaN val row is
    logged."""
    from safetensors.torch import load_file
    out = tmp_path / 'nan'
    diverging = student_args(demo, out, '--max_iters=6', '--eval_interval=3',
                             '--learning_rate=1e30')
    p = run(*diverging, ok=False)
    err = p.stderr + p.stdout
    assert clean_error(p, 'non-finite') and re.search(r'iter \d+: non-finite', err), err[-2000:]
    assert json.load(open(out / 'meta.json'))['iter_num'] == 0
    assert all(torch.isfinite(v).all() for v in load_file(str(out / 'model.safetensors')).values())
    rows = [json.loads(l) for l in open(out / 'log.jsonl')]
    val_numbers = [v for row in rows for k, v in row.items() if k.startswith('val/')]
    assert all(math.isfinite(v) for v in val_numbers)

def test_train_out_dir_lock_and_stale_eval_json(demo, tmp_path):
    """One train.py per out_dir (a live lock refuses, a dead pid's lock is taken over); eval.json
    records the checkpoint it scored, and report.py refuses it once the run has trained further."""
    out = tmp_path / 'runs/a5'
    run(*student_args(demo, out, '--max_iters=2', '--eval_interval=2'))
    (out / 'lock').write_text(str(os.getpid())) # a live process holds the out_dir
    resume = student_args(demo, out, '--max_iters=4', '--eval_interval=2', '--init_from=resume')
    p = run(*resume, ok=False)
    assert clean_error(p, str(os.getpid()), 'lock'), p.stderr[-2000:]
    dead = subprocess.Popen(['true'])
    dead.wait()
    (out / 'lock').write_text(str(dead.pid))
    run('eval.py', f'--cache={demo}/cache/shapes/test', f'--ckpt={out}')
    e = json.load(open(out / 'eval.json'))
    assert e['checkpoint']['iter_num'] == 2 and e['split'] == 'test'
    weights_sha256 = hashlib.sha256((out / 'model.safetensors').read_bytes()).hexdigest()
    assert e['checkpoint']['model_sha256'] == weights_sha256
    p = run(*resume)
    assert 'stale lock' in p.stdout and not os.path.exists(out / 'lock')
    rep = tmp_path / 'r.md'
    run('report.py', f'--runs_dir={tmp_path / "runs"}',
        f'--teacher_eval={demo}/cache/shapes/test/eval.json', f'--out={rep}')
    row = [l for l in open(rep) if l.startswith('| a5 |')][0]
    assert 'stale' in row and str(out / 'eval.json') in row, row

def test_train_bad_values_and_broken_files_are_one_line_errors(demo, tmp_path):
    """Bad values and broken files get one line naming the key / file, before any training
    starts."""
    x = tmp_path / 'x'
    for arg, key in [('--eval_interval=0', 'eval_interval'), ('--log_interval=0', 'log_interval'),
                     ('--val_images=0', 'val_images'), ('--grad_accum=0', 'grad_accum'),
                     ('--warmup_iters=-1', 'warmup_iters'), ('--batch_size=100000', 'batch_size'),
                     ('--image_model=vit_nonexistent_patch16', 'vit_nonexistent_patch16')]:
        p = run(*student_args(demo, x, '--max_iters=2', arg), ok=False)
        assert clean_error(p, key), (arg, p.stderr[-2000:])
    f = tmp_path / 'a_file'
    f.write_text('x')
    assert clean_error(run(*student_args(demo, f, '--max_iters=2'), ok=False), str(f))
    vc = tmp_path / 'vc'
    shutil.copytree(f'{demo}/cache/shapes/val', vc)
    (vc / 'manifest.json').write_text((vc / 'manifest.json').read_text()[:100])
    p = run(*student_args(demo, x, '--max_iters=2', f'--val_cache={vc}'), ok=False)
    assert clean_error(p, str(vc / 'manifest.json'))
    r = tmp_path / 'r'
    run(*student_args(demo, r, '--max_iters=1', '--eval_interval=1'))
    data = (r / 'ckpt.pt').read_bytes()
    (r / 'ckpt.pt').write_bytes(data[:len(data) // 2])
    p = run(*student_args(demo, r, '--max_iters=2', '--init_from=resume'), ok=False)
    assert clean_error(p, str(r / 'ckpt.pt')), p.stderr[-2000:]
    os.remove(r / 'model.safetensors')
    p = run('eval.py', f'--cache={demo}/cache/shapes/test', f'--ckpt={r}', ok=False)
    assert clean_error(p, 'model.safetensors'), p.stderr[-2000:]
    p = run('cache_teacher.py', f'--data_dir={demo}/data/shapes', f'--out_dir={x}',
            '--max_images=-1', ok=False)
    assert clean_error(p, 'max_images'), p.stderr[-2000:]

# the prelude of a child process whose writes past {0} bytes fail (EFBIG), as on a full disk;
# SIGXFSZ is ignored, so the write raises instead of killing the process
FSIZE = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
         "resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0})); ")

def run_file_limited(limit, script, *args):
    """Runs `script` with every write past `limit` bytes failing (EFBIG), as on a full disk."""
    code = FSIZE.format(limit) + "import runpy; sys.argv = sys.argv[1:]; "
    code += "runpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run([sys.executable, '-c', code, script, *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True)

def test_failed_writes_keep_the_last_good_file(tiny_caches, tmp_path):
    """Data loss and unsafe writes. A write that fails (here: a file-size limit, as a full disk or
    quota: the error comes at write or close) raises, leaves the last good config.json /
    model.safetensors and no temp file; train.py exits non-zero with one line and keeps the last
    good save; report.py --out likewise, and into a missing folder a clear error; a split is a
    name, never a path."""
    # model.py's save closes what it writes: a write or close error raises, never passes silently
    # (train.py makes the save atomic with a staging dir)
    code = (FSIZE.format(100) + f"sys.path.insert(0, {REPO!r}); "
            "from test_smoke import tiny_student; "
            f"tiny_student(embed_dim=32).save_pretrained({str(tmp_path / 's')!r})")
    p = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=ENV, capture_output=True,
                       text=True)
    assert p.returncode != 0 and 'Error' in p.stderr, p.stderr[-2000:]
    # train.py: a good save at iter 2, then a resume whose save cannot be written
    run(*tiny_train_args(tiny_caches, tmp_path / 'o'))
    good = {f: (tmp_path / 'o' / f).read_bytes()
            for f in ('ckpt.pt', 'model.safetensors', 'config.json', 'meta.json')}
    resume = tiny_train_args(tiny_caches, tmp_path / 'o', '--max_iters=4', '--init_from=resume')
    p = run_file_limited(10000, *resume)
    assert clean_error(p, 'saving to', 'last good save (iter 2)'), p.stderr[-2000:]
    assert {f: (tmp_path / 'o' / f).read_bytes() for f in good} == good
    assert not [f for f in os.listdir(tmp_path / 'o') if f.endswith('.tmp')]
    # report.py: a missing folder, and a write that fails keeps the last report
    p = run('report.py', f'--runs_dir={tmp_path}', f'--out={tmp_path / "nope/report.md"}',
            ok=False)
    assert clean_error(p, 'does not exist')
    (tmp_path / 'report.md').write_text('the last good report\n')
    p = run_file_limited(10, 'report.py', f'--runs_dir={tmp_path / "none"}',
                         f'--out={tmp_path / "report.md"}')
    assert clean_error(p, 'cannot write')
    assert (tmp_path / 'report.md').read_text() == 'the last good report\n'
    # a split is a name: nothing written outside --out_dir
    p = run('cache_teacher.py', f'--data_dir={tiny_caches / "w"}', '--split=../x',
            '--teacher=none', f'--processor={tiny_caches / "w/processor"}',
            f'--out_dir={tmp_path / "c"}', ok=False)
    assert clean_error(p, "split='../x'") and not (tmp_path / 'x').exists()

def test_image_only_cache_and_missing_views_are_refused(tiny_caches, tmp_path):
    """Silent wrong results in training. An image-only cache as train_cache or as eval.py --cache
    -> one line; --views=2 with an extra image cache that stores no views -> refused (it trained
    on full images only)."""
    web = tiny_caches / 'c/web'
    p = run(*tiny_train_args(tiny_caches, tmp_path / 'a', f'--train_cache={web}'), ok=False)
    assert clean_error(p, 'web', 'input_ids')
    p = run('eval.py', f'--cache={web}', ok=False)
    assert clean_error(p, 'web', 'input_ids')
    views = tiny_train_args(tiny_caches, tmp_path / 'b', '--views=2', f'--extra_image_cache={web}')
    assert clean_error(run(*views, ok=False), 'views=2', '1 view(s)')

def tiny_bert(out, texts, vocab_size=None):
    """A tiny random BertModel (32 wide, 1 layer) + a word-level BertTokenizerFast of `texts`
    (pretrain_text.make_word_tokenizer), saved as AutoModel / AutoTokenizer load them;
    vocab_size: a table smaller than the tokenizer's vocabulary."""
    import transformers as T
    from pretrain_text import make_word_tokenizer
    tok = make_word_tokenizer(texts, str(out))
    config = T.BertConfig(vocab_size=vocab_size or len(tok), hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T.BertModel(config).save_pretrained(str(out))
    return out

def tiny_captions(caches): # the raw captions of tiny_caches' train and val splits
    from cache import captions
    return [c for split in ('train', 'val')
            for c in captions(load_cache(str(caches / 'c' / split))[0])]

def test_text_init_bert_tokenises_the_captions_trains_and_reloads(tiny_caches, tmp_path):
    """text_init=<a tiny local BertModel dir>: the captions reach it through its own tokenizer,
    the loss falls, the save holds the tokenizer and reloads through Student.from_pretrained
    (no hub) to the same embeddings (eval.py's R@1 = train.py's last val R@1); resume with
    another text_init is refused."""
    from transformers import AutoTokenizer
    bert = tiny_bert(tmp_path / 'bert', tiny_captions(tiny_caches))
    out = tmp_path / 'o'
    args = tiny_train_args(tiny_caches, out, f'--text_init={bert}', '--max_iters=30',
                           '--eval_interval=30', '--learning_rate=3e-3')
    p = run(*args)
    assert "text_init=" in p.stdout and 'captions tokenised at 32 tokens' in p.stdout, p.stdout
    rows = [json.loads(l) for l in open(out / 'log.jsonl') if '"loss"' in l]
    first, last = (sum(r['loss'] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < first, (first, last)
    cfg = json.load(open(out / 'config.json'))
    assert cfg['text_encoder'] == 'text_encoder'
    assert cfg['text_encoder_config']['model_type'] == 'bert'
    assert set(json.load(open(out / 'meta.json'))['files']) >= {'text_encoder/tokenizer.json',
                                                               'text_encoder/config.json'}
    tok = AutoTokenizer.from_pretrained(str(out / 'text_encoder'))
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(str(bert)).get_vocab()
    student = Student.from_pretrained(str(out))
    # trained: the text tower moved off the pretrained weights
    from safetensors.torch import load_file
    start = load_file(str(bert / 'model.safetensors'))
    trained = student.text_model.state_dict()
    assert not torch.equal(trained['embeddings.word_embeddings.weight'],
                           start['embeddings.word_embeddings.weight'])
    # the captions through the student's own tokenizer: every id below its table, pads masked
    from cache import captions
    val, _ = load_cache(str(tiny_caches / 'c/val'))
    ids = AutoTokenizer.from_pretrained(str(out / 'text_encoder'))(
        captions(val), padding='max_length', max_length=32, truncation=True,
        return_tensors='pt')['input_ids']
    assert ids.max() < student.text_model.config.vocab_size and (ids == 0).any()
    with torch.no_grad():
        txt = student.encode_text(ids)
        # the padding changes nothing: a caption alone, at its own length, embeds the same
        n = int((ids[0] != 0).sum())
        alone = student.encode_text(ids[:1, :n])
    assert torch.allclose(txt[:1], alone, atol=1e-5)
    run('eval.py', f'--cache={tiny_caches / "c/val"}', f'--ckpt={out}')
    scored = json.load(open(out / 'eval.json'))
    _, val_row = last_row(out)
    metrics = next(iter(scored['evals'].values()))['metrics']
    assert metrics['i2t_r1'] == pytest.approx(val_row['val/i2t_r1'])
    assert metrics['t2i_r1'] == pytest.approx(val_row['val/t2i_r1'])
    p = run(*args, '--init_from=resume', '--text_init=', ok=False)
    assert clean_error(p, "text_init=''", 'ckpt.pt'), p.stderr

def test_text_init_resume_after_kill_is_exact(tiny_caches, tmp_path):
    """A student with an HF text tower killed after its iter-4 checkpoint resumes (its tower
    rebuilt from config, the captions tokenised again) to the uninterrupted run's numbers."""
    bert = tiny_bert(tmp_path / 'bert', tiny_captions(tiny_caches))
    args = lambda out: tiny_train_args(tiny_caches, out, f'--text_init={bert}', '--max_iters=8',
                                       '--eval_interval=4')
    resume_after_kill(args, tmp_path, 4)

def test_text_init_bad_inputs_are_one_line_errors(tiny_caches, tmp_path):
    """A dir that is not a text encoder (a SigLIP), a tokenizer whose ids pass the tower's table,
    a cache made before captions were kept (-> the cache_teacher.py command that re-caches it,
    which then trains), text_init beside hf_model, a missing dir."""
    import shlex
    texts = tiny_captions(tiny_caches)
    siglip = tmp_path / 'siglip'
    make_tiny_hf_teacher(str(siglip), str(tiny_caches / 'c/train/processor'))
    small = tiny_bert(tmp_path / 'small', texts, vocab_size=10)
    bert = tiny_bert(tmp_path / 'bert', texts)
    old_val = strip_captions(tiny_caches / 'c/val', tmp_path / 'old/val')
    args = lambda *a: tiny_train_args(tiny_caches, tmp_path / 'o', *a)
    cases = [(args(f'--text_init={siglip}'), ["'siglip' model, not a text encoder"]),
             (args(f'--text_init={small}'), ['its embedding table has 10 rows', str(small)]),
             (args(f'--text_init={tmp_path / "nope"}'), ['cannot load text_init']),
             (args(f'--text_init={bert}', f'--hf_model={siglip}'), ['set one of them']),
             (args(f'--text_init={bert}', f'--val_cache={old_val}'),
              [f'{old_val} holds no caption strings', 'python cache_teacher.py'])]
    for a, needles in cases:
        p = run(*a, ok=False)
        assert clean_error(p, *needles), (a, p.stdout[-2000:], p.stderr[-2000:])
    # the command re-caches it, with its captions, into a new dir the run then trains on
    command = shlex.split(p.stderr.strip().splitlines()[-1].split('re-cache it: ')[1])
    run(*command[1:])
    new_out = [c.split('=', 1)[1] for c in command if c.startswith('--out_dir=')][0]
    assert new_out.endswith('-captions')
    run(*args(f'--text_init={bert}', f'--val_cache={new_out}/val'))

def test_pretrain_text_mlm_loss_falls_and_saves_what_automodel_loads(tiny_caches, tmp_path):
    """data/shapes/pretrain_text.py at a tiny size: its MLM loss on the web captions falls, and
    the BertModel + tokenizer it saves load through AutoModel / AutoTokenizer, every weight
    found (the pooler too)."""
    from transformers import AutoModel, AutoTokenizer
    out = tmp_path / 'bert'
    p = run('data/shapes/pretrain_text.py', f'--data_dir={tiny_caches / "w"}', f'--out_dir={out}',
            '--iters=80', '--log_interval=20', '--batch_size=32')
    losses = [float(m) for m in re.findall(r'mlm loss ([0-9.]+)', p.stdout)]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.3, p.stdout
    model, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert type(model).__name__ == 'BertModel' and not info['missing_keys'], info
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == model.config.vocab_size and tok.pad_token_id == 0
    p = run('data/shapes/pretrain_text.py', f'--data_dir={tmp_path / "none"}', ok=False)
    assert clean_error(p, 'run data/shapes/prepare.py first')

def test_leaks_are_checked_by_content(tiny_caches, tmp_path):
    """Leak checks by id only. The val images cached again through --image_folder (ids are
    positions) and given as the unpaired image cache, or as rows of the training cache: refused,
    byte-identical rows counted."""
    from cache import check_same_images
    shutil.copytree(tiny_caches / 'w/val2017', tmp_path / 'f')
    run('cache_teacher.py', f'--image_folder={tmp_path / "f"}', '--split=again',
        '--captions=False', f'--teacher={TEACHER}', '--num_workers=0',
        f'--out_dir={tmp_path / "c"}')
    again = f'--extra_image_cache={tmp_path / "c/again"}'
    p = run(*tiny_train_args(tiny_caches, tmp_path / 'o', again), ok=False)
    assert clean_error(p, 'byte-identical', '20 of 20')
    val = load_cache(str(tiny_caches / 'c/val'))[0]['pixels']
    # Rows over the shards
    train = load_cache(str(tiny_caches / 'c/train'), mmap=True)[0]['pixels']
    check_same_images(train, val, 'clean') # distinct images: no refusal
    mixed = torch.cat([train[:5], val[3:4], train[5:9]])
    with pytest.raises(SystemExit, match='1 of 10 images are byte-identical'):
        check_same_images(mixed, val, 'mixed')

# train.py --hf_model: a transformers SiglipModel / Siglip2Model trained with the complete
# objective and saved as a transformers dir
def hf_run_caches(tmp, kind):
    """A tiny random HF model of `kind` + --teacher=none caches made with its own processor."""
    w = tiny_world(tmp / 'w', n_train=200, n_val=50)
    make_tiny_hf_teacher(str(tmp / 'hf'), str(w / 'processor'), kind=kind)
    for split in ('train', 'val'):
        run('cache_teacher.py', f'--data_dir={w}', f'--split={split}', '--teacher=none',
            f'--processor={tmp / "hf"}', '--num_workers=0', f'--out_dir={tmp / "c"}')
    return tmp / 'hf'

def hf_args(tmp, out, *extra):
    """The complete objective on the HF model: sigmoid + LocCa + SILC/TIPS from half the run."""
    return ['train.py', 'config/a6.py', 'config/shapes.py', f'--hf_model={tmp / "hf"}',
            f'--train_cache={tmp / "c/train"}', f'--val_cache={tmp / "c/val"}', f'--out_dir={out}',
            '--lambda_feat=0', '--lambda_affinity=0', '--batch_size=32', '--val_images=50',
            '--log_interval=1', '--warmup_iters=10', '--learning_rate=2e-3', '--switch=0.5',
            *extra]

def loss_terms(row):
    return {k: v for k, v in row.items() if k.startswith('loss')}

@pytest.mark.parametrize('kind', ['siglip', 'siglip2'])
def test_train_fine_tunes_a_tiny_hf_siglip_and_saves_a_transformers_dir(tmp_path, kind):
    """train.py --hf_model trains a tiny random SiglipModel / Siglip2Model (NaFlex) with the
    complete objective on a --teacher=none cache made with its own processor: every term finite,
    the total falls, val R@1 rises above step 0; out_dir reloads with AutoModel / AutoProcessor
    and embeds the val images and captions as the run did; eval.py scores it as train.py did;
    SIGKILL + resume across the switch == the uninterrupted run; 2 gloo ranks == 1 rank; the
    complete objective on 2 ranks keeps them in sync."""
    from transformers import AutoModel, AutoProcessor
    from model import load_trained
    from eval import embed_student
    hf_run_caches(tmp_path, kind)
    out = tmp_path / 'full'
    run(*hf_args(tmp_path, out, '--max_iters=300', '--eval_interval=300'))
    rows = [json.loads(l) for l in open(out / 'log.jsonl')]
    steps, vals = [r for r in rows if 'loss' in r], [r for r in rows if 'val/i2t_r1' in r]
    terms = ('loss/sigmoid', 'loss/locca/cap', 'loss/locca/aref', 'loss/locca/gcap', 'loss/silc',
             'loss/tips')
    assert len(steps) == 300 and all(k in steps[-1] for k in terms)
    assert all(math.isfinite(v) for r in steps for v in loss_terms(r).values()), 'non-finite'
    mean = lambda rs: sum(r['loss'] for r in rs) / len(rs)
    assert mean(steps[-20:]) < mean(steps[:20]), (mean(steps[:20]), mean(steps[-20:]))
    r1 = lambda v: v['val/i2t_r1'] + v['val/t2i_r1']
    assert vals[0]['iter'] == 0 and vals[-1]['iter'] == 300, vals
    assert r1(vals[-1]) > r1(vals[0]), vals
    # the transformers dir: AutoModel / AutoProcessor embed the cached val pixels and captions
    # as the run did
    val, _ = load_cache(str(tmp_path / 'c/val'))
    run_img, run_txt = embed_student(load_trained(str(out)), val['pixels'], val['input_ids'],
                                     'cpu')
    model = AutoModel.from_pretrained(str(out)).eval()
    proc = AutoProcessor.from_pretrained(str(out))
    assert model.config.model_type == kind
    with torch.no_grad():
        inputs = proc.image_processor(list(val['pixels']), return_tensors='pt')
        img = model.get_image_features(**inputs).pooler_output
        txt = model.get_text_features(input_ids=val['input_ids'].long()).pooler_output
    cos = lambda a, b: F.cosine_similarity(a.float(), b.float(), dim=-1).min().item()
    assert cos(img, run_img) >= 0.9999 and cos(txt, run_txt) >= 0.9999
    run('eval.py', f'--cache={tmp_path / "c/val"}', f'--ckpt={out}')
    e = json.load(open(out / 'eval.json'))
    assert e['metrics']['i2t_r1'] == pytest.approx(vals[-1]['val/i2t_r1'], abs=1e-6)
    assert 'locca' in e
    # SIGKILL right after the iter-4 checkpoint, resume across the switch (iter 6)
    short = lambda o: hf_args(tmp_path, o, '--max_iters=12', '--eval_interval=4')
    full, _, _ = resume_after_kill(short, tmp_path, checkpoint_iter=4)
    assert full['iter'] == 12 and {'loss/silc', 'loss/tips'} <= set(full)
    # 2 gloo ranks (batch 8 each) == 1 rank (batch 16), sigmoid only as the student's DDP test
    ddp = lambda o, bs: ['train.py', 'config/a5.py', 'config/shapes.py',
                         *hf_args(tmp_path, tmp_path / o, '--max_iters=5', '--eval_interval=5',
                                  '--num_threads=1', f'--batch_size={bs}')[3:]]
    run(*ddp('one', 16))
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *ddp('two', 8))
    (a, va), (b, vb) = last_row(tmp_path / 'one'), last_row(tmp_path / 'two')
    assert loss_terms(a) == pytest.approx(loss_terms(b), rel=1e-4, abs=1e-5)
    assert va['val/i2t_r1'] == pytest.approx(vb['val/i2t_r1'], abs=1e-6)
    # the complete objective on 2 ranks (each rank draws its own crops, masks and parallel-
    # prediction rows, so it is not 1 rank's run): train.py checks before each checkpoint that
    # the ranks' weights, EMA teacher and SILC/TIPS centres are equal, and exits if not (it does
    # when loss.py's centre all-reduce is removed)
    two = hf_args(tmp_path, tmp_path / 'two_full', '--max_iters=8', '--eval_interval=4',
                  '--num_threads=1', '--batch_size=8')
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *two)
    step, val = last_row(tmp_path / 'two_full')
    assert step['iter'] == 8 and val['iter'] == 8
    assert {'loss/locca', 'loss/silc', 'loss/tips'} <= set(step)
    assert json.load(open(tmp_path / 'two_full/meta.json'))['world_size'] == 2

# the HF path's refusals and saves, on a 40-image world: every bad input refused before any
# step with a line naming it and the way out, every out_dir one consistent save
@pytest.fixture(scope='session')
def hf_small(tmp_path_factory):
    """The tiny world (40 train / 20 val / 20 test images), a tiny SiglipModel (`siglip`) and
    Siglip2Model (NaFlex, `siglip2`: 16 patches of 8 px) on its tokenizer, and --teacher=none
    caches c/{train,val,test} made with the Siglip2Model's processor."""
    tmp = tmp_path_factory.mktemp('hf_small')
    w = tiny_world(tmp / 'w')
    for kind in ('siglip', 'siglip2'):
        make_tiny_hf_teacher(str(tmp / kind), str(w / 'processor'), kind=kind)
    for split in ('train', 'val', 'test'):
        hf_small_cache(tmp, tmp / 'siglip2', tmp / 'c', split)
    return tmp

def hf_small_cache(tmp, processor, out, split, *extra): # a --teacher=none cache of the world
    run('cache_teacher.py', f'--data_dir={tmp / "w"}', f'--split={split}', '--teacher=none',
        f'--processor={processor}', '--num_workers=0', f'--out_dir={out}', *extra)

def hf_small_args(tmp, out, *extra):
    """The complete objective (sigmoid + LocCa + SILC/TIPS from iter 1) on the Siglip2Model, 2
    iters, a save at every one (0, 1, 2), tiny DINO heads."""
    return ['train.py', 'config/a6.py', 'config/shapes.py', f'--hf_model={tmp / "siglip2"}',
            f'--train_cache={tmp / "c/train"}', f'--val_cache={tmp / "c/val"}',
            f'--out_dir={out}', '--lambda_feat=0', '--lambda_affinity=0', '--batch_size=8',
            '--val_images=20', '--log_interval=1', '--warmup_iters=1', '--switch=0.5',
            '--max_iters=2', '--eval_interval=1', '--dino_dim=16', '--dino_hidden=16',
            '--dino_bottleneck=8', *extra]

def dir_bytes(d): # every file under d -> its sha256: what a refused command must leave as it was
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(d).rglob('*')) if p.is_file()}

def hf_variant(src, dst, max_num_patches=None, swap=None):
    """A copy of the HF dir src: its NaFlex patch budget set, or two token ids swapped in its
    tokenizer (same vocabulary size, another tokenisation)."""
    shutil.copytree(src, dst)
    if max_num_patches:
        cfg = json.load(open(dst / 'processor_config.json'))
        cfg['image_processor']['max_num_patches'] = max_num_patches
        (dst / 'processor_config.json').write_text(json.dumps(cfg))
    if swap:
        tok = json.load(open(dst / 'tokenizer.json'))
        vocab = tok['model']['vocab']
        a, b = [t for t, i in vocab.items() if i in swap]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (dst / 'tokenizer.json').write_text(json.dumps(tok))
    return dst

@pytest.mark.parametrize('case', ['swapped_ids', 'patch_budget', 'image_size', 'non_square'])
def test_hf_train_refuses_a_cache_of_another_processor_or_size(hf_small, tmp_path, case):
    """Before the first step, the cache is checked against --hf_model: a model whose tokenizer
    has two ids swapped (same vocabulary size), a NaFlex model on a cache of a 36-patch
    processor, a fixed-res model on a cache made at another --image_size, and a NaFlex budget
    that is not a square (20) -> a line naming the cache, the model and the cache_teacher.py
    command (or the budget), no Traceback; the out_dir as it was."""
    t = hf_small
    model, caches = t / 'siglip2', t / 'c'
    if case == 'swapped_ids':
        model = hf_variant(t / 'siglip2', tmp_path / 'swapped', swap=(40, 41))
    if case in ('patch_budget', 'non_square', 'image_size'):
        n = dict(patch_budget=36, non_square=20).get(case)
        proc = (hf_variant(t / 'siglip2', tmp_path / f'p{n}', max_num_patches=n) if n
                else t / 'siglip')
        extra = ['--image_size=48'] if case == 'image_size' else []
        caches = tmp_path / 'c'
        for split in ('train', 'val'):
            hf_small_cache(t, proc, caches, split, *extra)
        model = {'patch_budget': model, 'non_square': proc, 'image_size': proc}[case]
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('a file of the user')
    p = run(*hf_small_args(t, out, f'--hf_model={model}', f'--train_cache={caches / "train"}',
                           f'--val_cache={caches / "val"}'), ok=False)
    other = [str(caches / 'train'), 'another processor', str(model), 'cache_teacher.py']
    needles = {'swapped_ids': other, 'patch_budget': other,
               'image_size': ['holds 48 px images', 'takes 32 px', str(model),
                              'cache_teacher.py'],
               'non_square': ['max_num_patches=20', str(model), 'square']}[case]
    assert clean_error(p, *needles), p.stdout[-2000:] + p.stderr[-2000:]
    assert dir_bytes(out) == {'keep.txt': hashlib.sha256(b'a file of the user').hexdigest()}

def test_hf_resume_refuses_a_changed_model_or_loss_setting(hf_small, tmp_path):
    """--init_from=resume compares what shapes the model and the loss module (hf_model,
    lambda_locca, gamma, the DINO heads, the decoder) with ckpt.pt's config: a change is refused
    by name, before any file of the out_dir is touched."""
    out = tmp_path / 'out'
    run(*hf_small_args(hf_small, out))
    before = dir_bytes(out)
    for arg, key in [(f'--hf_model={hf_small / "siglip"}', 'hf_model'),
                     ('--lambda_locca=0', 'lambda_locca'), ('--gamma=0', 'gamma'),
                     ('--dino_dim=32', 'dino_dim'), ('--decoder_depth=3', 'decoder_depth')]:
        p = run(*hf_small_args(hf_small, out, '--max_iters=4', '--init_from=resume', arg),
                ok=False)
        assert clean_error(p, key, 'ckpt.pt', 'another out_dir'), (arg, p.stderr[-2000:])
        assert dir_bytes(out) == before, arg

def test_train_refuses_a_switch_or_gamma_that_means_nothing(tmp_path):
    """SILC/TIPS switch on at the training fraction `switch`: with gamma > 0 a switch outside
    [0, 1) never comes, and gamma < 0 is no size factor. Refused by key and range before the
    out_dir is made."""
    out = tmp_path / 'out'
    for args, needle in [(['--gamma=0.25', '--switch=1.0'], 'switch=1.0 must be in [0, 1)'),
                         (['--gamma=0.25', '--switch=-0.1'], 'switch=-0.1 must be in [0, 1)'),
                         (['--gamma=-0.5'], 'gamma=-0.5 must be >= 0')]:
        p = run('train.py', 'config/a6.py', 'config/shapes.py', f'--out_dir={out}', *args,
                ok=False)
        assert clean_error(p, needle), (args, p.stderr[-2000:])
        assert not out.exists()

# python -c KILL_IN_SAVE.format(n=k) train.py ...: train.py SIGKILLed inside its k-th save, right
# after model.safetensors was moved into place (ckpt.pt and config.json before it, meta.json not)
KILL_IN_SAVE = ("import os, signal, runpy, sys; sys.path.insert(0, os.getcwd()); import cache\n"
                "moves = [0]\n"
                "def replace(tmp, path, replace=cache.replace_durably):\n"
                "    replace(tmp, path)\n"
                "    moves[0] += os.path.basename(path) == 'model.safetensors'\n"
                "    if moves[0] == {n}:\n"
                "        os.kill(os.getpid(), signal.SIGKILL)\n"
                "cache.replace_durably = replace\n"
                "sys.argv = sys.argv[1:]\n"
                "runpy.run_path('train.py', run_name='__main__')\n")

def test_hf_kill_9_inside_a_save_is_refused_by_name_then_resume_saves_it_whole(hf_small,
                                                                               tmp_path):
    """train.py SIGKILLed inside its last save, after model.safetensors (iter 2) was moved in
    and before meta.json (iter 1): eval.py and a run-as-teacher refuse the dir by name and
    leave it as it was; --init_from=resume evaluates and saves the last iter whole, then
    eval.py scores that save: one iter, never a mix."""
    out = tmp_path / 'out'
    args = hf_small_args(hf_small, out)
    p = subprocess.run([sys.executable, '-c', KILL_IN_SAVE.format(n=3), *args], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    meta = json.load(open(out / 'meta.json'))
    assert meta['iter_num'] == 1
    assert torch.load(out / 'ckpt.pt', weights_only=False)['iter_num'] == 2
    saved = lambda f: hashlib.sha256((out / f).read_bytes()).hexdigest()
    assert saved('model.safetensors') != meta['files']['model.safetensors']
    assert saved('tokenizer.json') == meta['files']['tokenizer.json'] # not moved yet
    before = dir_bytes(out)
    test = hf_small / 'c/test'
    p = run('eval.py', f'--cache={test}', f'--ckpt={out}', ok=False)
    assert clean_error(p, str(out), 'model.safetensors', 'iter-1', '--init_from=resume'), p.stderr
    p = run('cache_teacher.py', f'--data_dir={hf_small / "w"}', '--split=test',
            f'--teacher={out}', '--num_workers=0', f'--out_dir={tmp_path / "ct"}', ok=False)
    assert clean_error(p, str(out), 'model.safetensors'), p.stderr[-2000:]
    assert dir_bytes(out) == before
    p = run(*args, '--init_from=resume')
    assert 'saving it whole again' in p.stdout
    meta = json.load(open(out / 'meta.json'))
    assert meta['iter_num'] == 2
    assert saved('model.safetensors') == meta['files']['model.safetensors']
    vals = [json.loads(l) for l in open(out / 'log.jsonl') if 'val/i2t_r1' in l]
    assert [v['iter'] for v in vals] == [0, 1, 2]
    run('eval.py', f'--cache={test}', f'--ckpt={out}')
    e = json.load(open(out / 'eval.json'))
    assert e['checkpoint'] == dict(iter_num=2, model_sha256=meta['files']['model.safetensors'])

def test_hf_rerun_leaves_no_file_of_an_earlier_run_and_foreign_files_are_refused(hf_small,
                                                                                tmp_path):
    """A run without LocCa into the out_dir of a LocCa run (plus another model's
    processor_config.json) leaves neither the old decoder nor the foreign processor file, so
    AutoProcessor reads the run's own and eval.py scores no ARef; another run's decoder, a
    missing decoder_config.json or tinysiglip_hf.json, and a truncated model.safetensors are
    refused by name (eval.py: no Traceback, the dir as it was)."""
    from transformers import AutoProcessor
    from cache import check_save
    a, b = tmp_path / 'a', tmp_path / 'b'
    run(*hf_small_args(hf_small, a))
    run(*hf_small_args(hf_small, b, '--seed=1'))
    shutil.copytree(a, tmp_path / 'rerun')
    rerun = tmp_path / 'rerun'
    shutil.copyfile(hf_small / 'siglip/processor_config.json', rerun / 'processor_config.json')
    run(*hf_small_args(hf_small, rerun, '--lambda_locca=0', '--gamma=0'))
    left = set(os.listdir(rerun))
    assert not {'decoder.safetensors', 'decoder_config.json', 'processor_config.json'} & left
    improc = AutoProcessor.from_pretrained(str(rerun)).image_processor
    assert improc.max_num_patches == 16 and improc.patch_size == 8
    run('eval.py', f'--cache={hf_small / "c/test"}', f'--ckpt={rerun}')
    assert 'locca' not in json.load(open(rerun / 'eval.json'))
    cases = {'decoder.safetensors': lambda d: shutil.copyfile(b / 'decoder.safetensors',
                                                              d / 'decoder.safetensors'),
             'decoder_config.json': lambda d: os.remove(d / 'decoder_config.json'),
             'tinysiglip_hf.json': lambda d: os.remove(d / 'tinysiglip_hf.json'),
             'model.safetensors': lambda d: (d / 'model.safetensors').write_bytes(
                 (a / 'model.safetensors').read_bytes()[:1000])}
    for f, spoil in cases.items():
        d = tmp_path / f'spoilt-{f}'
        shutil.copytree(a, d)
        spoil(d)
        with pytest.raises(SystemExit, match=re.escape(f)):
            check_save(str(d), 'test')
    d = tmp_path / 'spoilt-model.safetensors'
    before = dir_bytes(d)
    p = run('eval.py', f'--cache={hf_small / "c/test"}', f'--ckpt={d}', ok=False)
    assert clean_error(p, str(d), 'model.safetensors', '--init_from=resume'), p.stderr[-2000:]
    assert dir_bytes(d) == before

def test_hf_from_config_starts_at_siglip_init_and_the_readme_processor_call_matches(hf_small,
                                                                                    tmp_path):
    """--hf_from_config=True: the startup log names the model and SigLIP's init (scale 10, bias
    -10), the first logged step is there, and no load warns of the config's special ids or draws
    progress bars. The README's call of the saved processor (NaFlex images, text without the
    mask) gives the cache's ids and the run's own features; with the mask the text features
    change, as the README says. A mistyped --hf_model dir is refused by name."""
    from transformers import AutoModel, AutoProcessor
    from model import load_trained
    from eval import embed_student
    out = tmp_path / 'out'
    p = run(*hf_small_args(hf_small, out, '--hf_from_config=True', '--lambda_locca=0',
                           '--gamma=0', '--max_iters=2', '--eval_interval=2'))
    assert "hf_model=" in p.stdout and 'Siglip2Model, random weights from its config.json, ' \
        'logit_scale 10.00, logit_bias -10.00' in p.stdout, p.stdout[-2000:]
    assert 'HF model:' in p.stdout and '249-row token table' in p.stdout
    for noise in ('within the vocabulary', 'Loading weights', 'Writing model shards'):
        assert noise not in p.stdout + p.stderr, noise
    first = [json.loads(l) for l in open(out / 'log.jsonl') if '"loss"' in l][0]
    assert first['iter'] == 1
    assert first['scale'] == pytest.approx(10.0, rel=1e-2) and first['bias'] == pytest.approx(
        -10.0, abs=0.05)
    # the README's call, verbatim, on the test images and captions
    readme = open(os.path.join(REPO, 'README.md')).read()
    code = re.search(r'<!-- processor call.*?```python\n(.*?)```', readme, re.S).group(1)
    test, _ = load_cache(str(hf_small / 'c/test'))
    from PIL import Image
    files = [hf_small / f'w/test2017/{i:012d}.jpg' for i in test['image_ids'].tolist()]
    caps = json.load(open(hf_small / 'w/annotations/captions_test2017.json'))['annotations']
    by_image = {}
    for c in caps:
        by_image.setdefault(c['image_id'], []).append(c['caption'])
    texts = [t for i in test['image_ids'].tolist() for t in by_image[i]]
    ns = dict(out_dir=str(out), images=[Image.open(f).convert('RGB') for f in files], texts=texts)
    exec(code, ns)
    assert torch.equal(ns['ids'], test['input_ids'].long())
    run_img, run_txt = embed_student(load_trained(str(out)), test['pixels'], test['input_ids'],
                                     'cpu')
    cos = lambda x, y: F.cosine_similarity(x.float(), y.float(), dim=-1).min().item()
    assert cos(ns['img'], run_img) >= 0.999 and cos(ns['txt'], run_txt) >= 0.9999
    model = AutoModel.from_pretrained(str(out)).eval()
    proc = AutoProcessor.from_pretrained(str(out))
    with torch.no_grad():
        inputs = proc.tokenizer(texts, padding='max_length', max_length=ns['L'], truncation=True,
                                return_tensors='pt')
        masked = model.get_text_features(**inputs).pooler_output
    assert cos(masked, run_txt) < 0.99
    before = dir_bytes(out)
    p = run(*hf_small_args(hf_small, out, f'--hf_model={tmp_path / "siglip2-typo"}'), ok=False)
    assert clean_error(p, str(tmp_path / 'siglip2-typo'), 'no such directory'), p.stderr[-2000:]
    assert dir_bytes(out) == before


# text_init='teacher': the student's text tower inherited from the train cache's teacher
def test_train_text_init_teacher_starts_at_the_teachers_text_embeddings(tmp_path):
    """On a 200-image world cached with the demo teacher: the startup log names the kept layers
    and heads; at iter 0 the student's text embeddings point at the teacher's (cosine to the
    cached ones) and after 100 A5 steps val R@1 is above the scratch run's."""
    w = tiny_world(tmp_path / 'w', n_train=200, n_val=50)
    for split in ('train', 'val'):
        run('cache_teacher.py', f'--data_dir={w}', f'--split={split}', f'--teacher={TEACHER}',
            '--num_workers=0', f'--out_dir={tmp_path / "c"}')
    val, _ = load_cache(str(tmp_path / 'c/val'))
    def train(out, iters, *extra):
        return run('train.py', 'config/a5.py', 'config/shapes.py',
                   f'--train_cache={tmp_path / "c/train"}', f'--val_cache={tmp_path / "c/val"}',
                   f'--out_dir={tmp_path / out}', '--batch_size=32', '--val_images=50',
                   '--warmup_iters=10', '--eval_interval=50', f'--max_iters={iters}', *extra)
    cos = {}
    for init in ('', 'teacher'):
        p = train(f'start-{init}', 0, f'--text_init={init}')
        assert ('text tower inherited from' in p.stdout) == bool(init)
        student = Student.from_pretrained(str(tmp_path / f'start-{init}'))
        with torch.no_grad():
            txt = student.encode_text(val['input_ids'].long())
        cos[init] = F.cosine_similarity(txt, val['text_embeds'].float(), dim=-1).mean().item()
    assert "layers [0] of 2, heads 0-1 of 4, width 64 of 128" in p.stdout
    # measured: 0.21 inherited (half the width of a 2-layer tower) vs 0.01 from scratch
    assert cos['teacher'] > 0.15 > 0.05 > cos[''], cos
    best = {}
    for init in ('', 'teacher'):
        train(f'run-{init}', 100, f'--text_init={init}')
        best[init] = max(r['val/i2t_r1'] + r['val/t2i_r1'] for r in map(
            json.loads, open(tmp_path / f'run-{init}/log.jsonl')) if 'val/i2t_r1' in r)
    # measured: best val R@1 sum 50.8 inherited vs 13.6 from scratch (--seed=1: 16.4 vs 7.6)
    assert best['teacher'] > best[''] + 5, best

def test_train_text_init_teacher_is_not_applied_again_on_resume(tiny_caches, tmp_path):
    """Resume continues the trained text tower: no second inheritance over it."""
    args = tiny_train_args(tiny_caches, tmp_path / 'o', '--text_init=teacher')
    assert 'text tower inherited from' in run(*args).stdout
    p = run(*args, '--init_from=resume', '--max_iters=3')
    assert 'text tower inherited from' not in p.stdout
    assert json.load(open(tmp_path / 'o/meta.json'))['iter_num'] == 3

def test_train_text_init_refusals_name_the_setting(tiny_caches, tmp_path):
    """text_init=teacher with hf_model, a student the teacher cannot fill, a cache without a
    teacher, a teacher dir that is gone: one line each."""
    args = lambda out, *extra: tiny_train_args(tiny_caches, tmp_path / out, *extra)
    p = run(*args('b', '--text_init=teacher', '--hf_model=x/y'), ok=False)
    assert clean_error(p, "text_init='teacher'", "hf_model='x/y'", 'set one of them')
    p = run(*args('c', '--text_init=teacher', '--text_depth=3'), ok=False)
    assert clean_error(p, 'text_init=teacher', "text_depth=3: deeper than the teacher's 2 layers")
    # caches without a teacher, and of a teacher deleted after caching
    gone = tmp_path / 'gone'
    shutil.copytree(TEACHER, gone)
    for teacher, out in (('none', 'none'), (gone, 'gone-c')):
        for split in ('train', 'val'):
            run('cache_teacher.py', f'--data_dir={tiny_caches / "w"}', f'--split={split}',
                f'--teacher={teacher}', f'--processor={TEACHER}', '--num_workers=0',
                f'--out_dir={tmp_path / out}')
    caches = lambda c: [f'--train_cache={tmp_path / c / "train"}',
                        f'--val_cache={tmp_path / c / "val"}']
    p = run(*args('d', '--text_init=teacher', '--lambda_feat=0', '--lambda_affinity=0',
                  '--embed_dim=128', *caches('none')), ok=False)
    assert clean_error(p, 'text_init=teacher', 'teacher=none')
    with open(gone / 'config.json', 'a') as f: # retrained in place, as it were
        f.write('\n')
    p = run(*args('f', '--text_init=teacher', *caches('gone-c')), ok=False)
    assert clean_error(p, 'text_init=teacher', 'changed since', str(tmp_path / 'gone-c/train'))
    shutil.rmtree(gone)
    p = run(*args('e', '--text_init=teacher', *caches('gone-c')), ok=False)
    assert clean_error(p, 'text_init=teacher: cannot load', str(gone))

# -----------------------------------------------------------------------------
# eval.py: retrieval metrics and their bootstrap intervals, zero-shot classification (ImageNet
# names and templates, CLIP_benchmark parity, COCO instances and folders), Flickr30k transfer,
# the dense probe

@pytest.mark.fast
def test_retrieval_metrics_vs_brute_force():
    g = torch.Generator().manual_seed(4)
    counts = [1, 7, 3, 5, 2, 6, 4, 1, 5, 5]
    index = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    img, txt = torch.randn(10, 6, generator=g), torch.randn(len(index), 6, generator=g)
    sim = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T
    want = {}
    for k in (1, 5, 10):
        t2i_hits = [int(index[t]) in sim[t].topk(k).indices.tolist() for t in range(len(index))]
        i2t_hits = [any(int(index[t]) == i for t in sim[:, i].topk(k).indices.tolist())
                    for i in range(10)]
        want[f't2i_r{k}'] = 100 * sum(t2i_hits) / len(index)
        want[f'i2t_r{k}'] = 100 * sum(i2t_hits) / 10
    got = retrieval_metrics(img, txt, index, chunk=3)
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    perfect = retrieval_metrics(torch.eye(10), torch.eye(10)[index], index)
    assert perfect['i2t_r1'] == perfect['t2i_r1'] == 100.0
    # images 0, 1 share a caption: no hit
    shared = torch.tensor([[1.0, 1.0, 0], [1.0, 1.0, 0], [0, 0, 1.0]])
    tie = retrieval_metrics(torch.eye(3), shared, torch.tensor([0, 1, 2]))
    assert tie['i2t_r1'] == tie['t2i_r1'] == pytest.approx(100 / 3) and tie['i2t_r5'] == 100.0

@pytest.mark.fast
def test_retrieval_metrics_refuses_nonfinite_and_collapsed():
    """NaN embeddings used to score R@1 = 100 (every comparison false -> rank 0): refused, as is a
    collapsed model."""
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

def test_bootstrap_interval_resamples_images_with_their_captions():
    """The interval brackets the point estimate, shrinks with more test images, is reproducible
    (fixed seed), and resamples images, not captions: one image owning all hits moves T→I as a
    block."""
    from eval import bootstrap_interval, retrieval_ranks, retrieval_intervals, recalls
    g = torch.Generator().manual_seed(1)
    small, large = [(torch.rand(n, 1, generator=g) < 0.6).float() for n in (100, 10000)]
    a, b = [bootstrap_interval(h, torch.ones_like(h))[0] for h in (small, large)]
    assert a[0] < 100 * small.mean() < a[1] and b[0] < 100 * large.mean() < b[1]
    assert (b[1] - b[0]) < (a[1] - a[0]) / 5
    ones = torch.ones_like(small)
    assert torch.equal(bootstrap_interval(small, ones), bootstrap_interval(small, ones))
    # image 0 has 10 captions that all hit, 9 images have one caption that misses: T→I R@1 =
    # 10/19 = 52.6 %; drawing images, the share of runs without image 0 is (9/10)^10 = 35 %, so
    # the 95 % interval reaches 0
    hits, counts = torch.tensor([[10.0]] + [[0.0]] * 9), torch.tensor([[10.0]] + [[1.0]] * 9)
    lo, hi = bootstrap_interval(hits, counts)[0].tolist()
    assert lo == 0.0 and hi > 52.6
    img = torch.randn(30, 8, generator=g)
    index = torch.arange(30).repeat_interleave(3)
    ranks = retrieval_ranks(img, img[index] + torch.randn(90, 8, generator=g), index)
    ci, m = retrieval_intervals(*ranks, index), recalls(*ranks)
    assert all(ci[k][0] <= m[k] <= ci[k][1] for k in ci) and set(ci) == set(m) - {'rsum'}

def clip_benchmark_metrics(monkeypatch):
    """CLIP_benchmark's metric modules. Installed without its dependencies (`pip install --no-deps
    clip-benchmark==1.6.2`, .ci/run): zeroshot_classification imports scikit-learn for the
    balanced accuracy only, which these tests do not compare, so a stand-in module answers that
    import when scikit-learn is absent. The stand-in leaves sys.modules when the test ends: a
    later first import of timm (torch._dynamo's find_spec('sklearn')) fails on a module without
    a spec."""
    import types, importlib.util
    if importlib.util.find_spec('clip_benchmark') is None:
        raise AssertionError('clip_benchmark missing: pip install --no-deps '
                             'clip-benchmark==1.6.2 (see .ci/run)')
    if importlib.util.find_spec('sklearn') is None:
        monkeypatch.setitem(sys.modules, 'sklearn', types.ModuleType('sklearn'))
        metrics = types.SimpleNamespace(balanced_accuracy_score=lambda y, p: float('nan'),
                                        classification_report=lambda *a, **k: '')
        monkeypatch.setitem(sys.modules, 'sklearn.metrics', metrics)
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
    return zeroshot_classification, zeroshot_retrieval

def test_zeroshot_and_retrieval_match_clip_benchmark(monkeypatch):
    """Our retrieval R@k and zero-shot top-1/top-5 equal CLIP_benchmark's evaluate on the same
    random embeddings (ImageNet's 1000 real class names x the 80 templates). Random float
    embeddings have no exact ties, where our ranks (ties count against the query) and its topk
    could differ."""
    from eval import zeroshot_weights, zeroshot_hits
    cb_zs, cb_ret = clip_benchmark_metrics(monkeypatch)
    g = torch.Generator().manual_seed(0)
    class Fake: # a CLIP-like model over fixed tables: "images" and "tokens" are row numbers
        def __init__(self, img, txt):
            self.img, self.txt = img, txt
        encode_image = lambda self, rows: self.img[rows]
        encode_text = lambda self, rows: self.txt[rows]
    # retrieval: 40 images with 4-6 captions each
    n_caps = torch.randint(4, 7, (40,), generator=g)
    index = torch.repeat_interleave(torch.arange(40), n_caps)
    img, txt = torch.randn(40, 16, generator=g), torch.randn(len(index), 16, generator=g)
    txt += 0.5 * img[index] # related, so the recalls are neither 0 nor 100
    caps = [[str(j) for j in (index == i).nonzero().squeeze(1).tolist()] for i in range(40)]
    collate = lambda b: (torch.tensor([i for i, _ in b]), [c for _, c in b])
    loader = torch.utils.data.DataLoader(list(zip(range(40), caps)), batch_size=16,
                                         collate_fn=collate)
    tokenize = lambda ts: torch.tensor([int(t) for t in ts])
    theirs = cb_ret.evaluate(Fake(img, txt), loader, tokenize, 'cpu', amp=False,
                             recall_k_list=[1, 5, 10])
    ours = retrieval_metrics(img, txt, index)
    for k in (1, 5, 10): # text_retrieval = images querying texts (I→T)
        assert abs(ours[f'i2t_r{k}'] - 100 * theirs[f'text_retrieval_recall@{k}']) <= 0.01
        assert abs(ours[f't2i_r{k}'] - 100 * theirs[f'image_retrieval_recall@{k}']) <= 0.01
    assert 0 < ours['t2i_r1'] < ours['t2i_r10'] < 100
    # zero-shot: the real imagenet1k names and templates, each prompt a random row
    names = json.load(open(os.path.join(CLIP_BENCHMARK, 'en_classnames.json')))['imagenet1k']
    templates = os.path.join(CLIP_BENCHMARK, 'en_zeroshot_classification_templates.json')
    temps = json.load(open(templates))['imagenet1k']
    # 79,840 distinct prompts: two classes each are named 'missile' and 'sunglasses' (as in
    # CLIP's list)
    distinct = dict.fromkeys(t.format(c=c) for c in names for t in temps)
    prompts = {p: j for j, p in enumerate(distinct)}
    table = torch.randn(len(prompts), 64, generator=g)
    labels = torch.randint(0, 1000, (300,), generator=g)
    # (80,) a class's prompt rows
    rows = lambda c: torch.tensor([prompts[t.format(c=c)] for t in temps])
    mean = torch.stack([F.normalize(F.normalize(table[rows(names[y])], dim=-1).mean(0), dim=0)
                        for y in labels])
    # near their class's mean prompt: top-1 about half
    images = mean + 0.3 * torch.randn(300, 64, generator=g)
    class Stub:
        tokenize = staticmethod(lambda texts: torch.tensor([prompts[t] for t in texts]))
        texts = staticmethod(lambda rows: table[rows])
    hits = zeroshot_hits(images, zeroshot_weights(Stub(), names, temps), labels)
    class Labelled(list): # CLIP_benchmark reads dataloader.dataset.classes
        classes = names
    loader = torch.utils.data.DataLoader(Labelled(zip(range(300), labels.tolist())), batch_size=64)
    # its evaluate() = zero_shot_classifier + run_classification + accuracy; accuracy() calls
    # float() on a 1-element array, a TypeError since NumPy 2.4, so its top-k is read off its
    # logits here as accuracy() does
    fake = Fake(images, table)
    classifier = cb_zs.zero_shot_classifier(fake, Stub.tokenize, names, temps, 'cpu', amp=False)
    logits, target = cb_zs.run_classification(fake, classifier, loader, 'cpu', amp=False)
    top = logits.topk(5, 1).indices # (N, 5)
    theirs = [100 * (top[:, :k] == target[:, None]).any(1).float().mean().item() for k in (1, 5)]
    assert abs(100 * hits[:, 0].mean().item() - theirs[0]) <= 0.01
    assert abs(100 * hits[:, 1].mean().item() - theirs[1]) <= 0.01
    assert 5 < theirs[0] < theirs[1] < 95, theirs

@pytest.mark.fast
def test_zeroshot_classify_known_answer(tmp_path):
    """zeroshot_items (ImageFolder) + zeroshot_classify with a stand-in encoder whose answer is
    known: text = one-hot of the colour word in the prompt, image = one-hot of its strongest
    channel."""
    from PIL import Image
    colours = {'red': (200, 10, 10), 'green': (10, 200, 10), 'blue': (10, 10, 200)}
    for k, (c, rgb) in enumerate(colours.items()):
        os.makedirs(tmp_path / c)
        for i in range(k + 1): # 1, 2, 3 images
            Image.new('RGB', (8, 8), rgb).save(tmp_path / c / f'{i}.png')
    class Stub:
        tokenize = staticmethod(lambda texts: texts)
        prep = staticmethod(lambda ims: torch.tensor([im.getpixel((0, 0)) for im in ims]).float())
        images = staticmethod(lambda x: F.one_hot(x.argmax(1), 3).float())
        texts = staticmethod(lambda ts: torch.stack([torch.tensor([float(c in t) for c in colours])
                                                     for t in ts]))
    paths, labels, classes = zeroshot_items(str(tmp_path))
    assert classes == ['blue', 'green', 'red'] and labels == [0, 0, 0, 1, 1, 2] # sorted folders
    templates = ['a {c}', 'a picture of a {c}']
    zs = zeroshot_classify(Stub(), paths, labels, classes, templates, batch_size=4)
    assert zs['top1'] == 100.0 and zs['top5'] == 100.0 and zs['n_images'] == 6
    # every label shifted: top-1 0, but within the top 3 of 3 classes
    wrong = [(y + 1) % 3 for y in labels]
    zs = zeroshot_classify(Stub(), paths, wrong, classes, ['a {c}'], batch_size=4)
    assert zs['top1'] == 0.0 and zs['top5'] == 100.0

def test_imagenet_folder_gets_the_standard_names_and_80_templates(tmp_path):
    """An ImageNet-style val folder (WordNet-id subfolders) is classified with CLIP_benchmark's
    imagenet1k names and its 80 templates (checked on the prompts actually embedded); folders
    named by ids are refused unless --classnames is given; the shipped lists are the files
    data/clip_benchmark/README.md names (sha256)."""
    from PIL import Image
    from cache_teacher import zeroshot_classnames, zeroshot_templates
    readme = open(os.path.join(CLIP_BENCHMARK, 'README.md')).read()
    for f, digest in re.findall(r'\| `(en_\w+\.json)` \| `(\w{64})` \|', readme):
        sha = hashlib.sha256(open(os.path.join(CLIP_BENCHMARK, f), 'rb').read()).hexdigest()
        assert sha == digest, f
    cb = lambda kind, dataset='imagenet1k': json.load(
        open(os.path.join(CLIP_BENCHMARK, f'en_{kind}.json')))[dataset]
    wnids = ['n01440764', 'n01443537', 'n02123045'] # ImageNet classes 0, 1, 281
    for k, w in enumerate(wnids):
        os.makedirs(tmp_path / 'val' / w)
        for i in range(k + 1):
            image = tmp_path / 'val' / w / f'ILSVRC2012_val_{k}{i}.JPEG'
            Image.new('RGB', (8, 8), (40 * i, 80, 120)).save(image)
    paths, labels, classes = zeroshot_items(str(tmp_path / 'val'))
    names, source, dataset = zeroshot_classnames(classes, str(tmp_path / 'val'))
    imagenet = cb('classnames')
    assert names == ['tench', 'goldfish', 'tabby cat'] == [imagenet[i] for i in (0, 1, 281)]
    assert dataset == 'imagenet1k' and 'WordNet' in source
    temps = zeroshot_templates('', dataset)
    assert temps == cb('zeroshot_classification_templates') and len(temps) == 80
    embedded = []
    class Recorder: # records every prompt the text tower sees
        tokenize = staticmethod(lambda texts: embedded.extend(texts) or texts)
        prep = staticmethod(lambda ims: torch.ones(len(ims), 4))
        images = staticmethod(lambda x: x)
        texts = staticmethod(lambda ts: torch.randn(len(ts), 4))
    zs = zeroshot_classify(Recorder(), paths, labels, names, temps, batch_size=4)
    assert embedded == [t.format(c=c) for c in names for t in temps] and len(embedded) == 240
    assert not any(re.search(r'n\d{8}', p) for p in embedded)
    assert 'a bad photo of a tench.' in embedded
    assert zs['n_images'] == 6
    assert zs['intervals']['top1'][0] <= zs['top1'] <= zs['intervals']['top1'][1]
    # class ids without names: refused, naming the folder and the way out
    for bad in ('000', 'n99999999'):
        os.makedirs(tmp_path / bad / bad)
        Image.new('RGB', (8, 8)).save(tmp_path / bad / bad / 'a.png')
        with pytest.raises(SystemExit, match=f"class folder '{bad}' is an id.*--classnames"):
            zeroshot_classnames(zeroshot_items(str(tmp_path / bad))[2], str(tmp_path / bad))
    names_file = str(tmp_path / 'names.txt')
    (tmp_path / 'names.txt').write_text('mystery fish\n')
    assert zeroshot_classnames(['000'], str(tmp_path / '000'), names_file)[0] == ['mystery fish']
    (tmp_path / 'names.txt').write_text('a\nb\n')
    with pytest.raises(SystemExit, match='has 2 names.*has 1 classes'):
        zeroshot_classnames(['000'], str(tmp_path / '000'), names_file)
    # names: as written
    assert zeroshot_classnames(['red', 'blue'], str(tmp_path / 'val'))[0] == ['red', 'blue']
    # by dataset name, index order
    pets = cb('classnames', 'pets')
    ids = [f'{i:03d}' for i in range(len(pets))]
    assert zeroshot_classnames(ids, str(tmp_path / '000'), 'pets')[0] == pets

# the world's caption words ('photo' is not one)
WORLD_TEMPLATES = '--templates=a {c}|a picture of a {c}|there is a {c}'

def test_speed_zeroshot_folder_with_tiny_hf_teacher(tmp_path):
    """Speed of a student vs a tiny HF SigLIP 2 teacher (read from the cache manifest) in one
    run; zero-shot with the HF teacher and the student from a COCO instances json and from an
    ImageFolder of the same images."""
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'), kind='siglip2')
    run('cache_teacher.py', f'--data_dir={w}', '--split=val', f'--teacher={tmp_path / "t"}',
        f'--out_dir={tmp_path / "c"}', '--num_workers=0')
    # a student dir as train.py leaves it: weights + processor
    st = tiny_student(kept_ids=list(range(249)), embed_dim=32)
    st.save_pretrained(str(tmp_path / 's'))
    for f in os.listdir(tmp_path / 'c/val/processor'):
        shutil.copy(tmp_path / 'c/val/processor' / f, tmp_path / 's' / f)
    inst = w / 'annotations/instances_val2017.json'
    run('eval.py', f'--ckpt={tmp_path / "s"}', f'--zeroshot={inst}', WORLD_TEMPLATES)
    out = run('bench.py', '--speed=True', f'--ckpt={tmp_path / "s"}',
              f'--cache={tmp_path / "c/val"}', '--speed_seconds=0.2', '--device=cpu').stdout
    e = json.load(open(tmp_path / 's/eval.json'))
    sp, zs = e['speed'], e['zeroshot']
    assert sp['teacher'] == str(tmp_path / 't') and sp['batch'] == 20 and 'img/s' in out, out
    for k in ('img', 'txt'):
        assert sp[f'{k}_per_s'] > 0 and sp[f'teacher_{k}_per_s'] > 0
        assert sp[f'{k}_ratio'] == pytest.approx(sp[f'{k}_per_s'] / sp[f'teacher_{k}_per_s'])
    instances = json.load(open(inst))
    singles = [i for i in instances['images']
               if sum(a['image_id'] == i['id'] for a in instances['annotations']) == 1]
    assert zs['n_images'] == len(singles) > 0 and zs['n_classes'] == 48
    assert 0 <= zs['top1'] <= zs['top5'] <= 100
    # the same images as an ImageFolder (class = subfolder): the same classifier gives the same
    # answers per image
    cats = {c['id']: c['name'] for c in instances['categories']}
    anns = {a['image_id']: a['category_id'] for a in instances['annotations']}
    folder_of = lambda image: tmp_path / 'f' / cats[anns[image['id']]].replace(' ', '_')
    for c in cats.values(): # every class a folder, as in the json (empty ones too)
        os.makedirs(tmp_path / 'f' / c.replace(' ', '_'), exist_ok=True)
    for i in singles:
        shutil.copy(w / 'val2017' / i['file_name'], folder_of(i) / i['file_name'])
    for model in ('s', 't'): # the student and the HF teacher
        run('eval.py', f'--ckpt={tmp_path / model}', f'--zeroshot={inst}', WORLD_TEMPLATES,
            f'--out={tmp_path / model}-a.json')
        run('eval.py', f'--ckpt={tmp_path / model}', f'--zeroshot={tmp_path / "f"}',
            WORLD_TEMPLATES, f'--out={tmp_path / model}-b.json')
        a, b = [json.load(open(tmp_path / f'{model}-{x}.json'))['zeroshot'] for x in 'ab']
        assert a['n_images'] == b['n_images']
        assert a['top1'] == pytest.approx(b['top1']) and a['top5'] == pytest.approx(b['top5'])
    # no --templates: CLIP's, whose 'photo' is <unk> in this world's vocabulary
    p = run('eval.py', f'--ckpt={tmp_path / "s"}', f'--zeroshot={inst}', ok=False)
    assert p.returncode != 0 and 'tokenizes to <unk>' in p.stderr
    # folder search with the HF teacher: an image query finds itself first (cosine 1), the index
    # is reused
    q = folder_of(singles[0]) / singles[0]['file_name']
    out = run('student.py', f'--ckpt={tmp_path / "t"}', f'--folder={tmp_path / "f"}',
              f'--query_image={q}', '--topk=3').stdout
    score, path = out.strip().splitlines()[-3].split()[:2]
    assert 'indexed' in out and path == str(q), out
    assert float(score) == pytest.approx(1.0, abs=1e-4), out
    out = run('student.py', f'--ckpt={tmp_path / "t"}', f'--folder={tmp_path / "f"}',
              '--query=a red circle', '--topk=2').stdout
    assert 'reusing index' in out and len(out.strip().splitlines()) == 4, out

def test_meaningless_scores_and_unbounded_settings_are_refused(tiny_caches, tmp_path):
    """A score that cannot mean anything is written; settings that exhaust memory. Zero-shot over
    one class (top-1 100 %) -> refused, nothing written; an absurd --views is refused before any
    work."""
    shutil.copytree(TEACHER, tmp_path / 's')
    (tmp_path / 'zs/a').mkdir(parents=True)
    shutil.copy(sorted((tiny_caches / 'w/web2017').iterdir())[0], tmp_path / 'zs/a/1.jpg')
    p = run('eval.py', f'--ckpt={tmp_path / "s"}', f'--zeroshot={tmp_path / "zs"}',
            '--templates=a {c}', ok=False)
    assert clean_error(p, '1 class') and not (tmp_path / 's/eval.json').exists()
    p = run('cache_teacher.py', f'--data_dir={tiny_caches / "w"}', '--split=val',
            f'--teacher={TEACHER}', '--views=1000000', f'--out_dir={tmp_path / "c"}', ok=False,
            timeout=120)
    assert clean_error(p, 'views=1000000', 'GiB')

def test_flickr30k_karpathy_cached_scored_and_reported(tmp_path):
    """Karpathy's dataset_flickr30k.json (filename, imgid, sentences, split; no filepath /
    cocoid) + one flat image folder: the 1k-test-style split is cached with every caption and
    Flickr photo ids, the teacher row and a COCO-trained student are scored on it; COCO ids equal
    to the Flickr ids are not a leak (other id space, said so); eval.json keeps the COCO row on
    top and both under evals; report.py's Table 1 gains Flickr30k columns."""
    from safetensors.torch import load_file
    w = tiny_world(tmp_path / 'w')
    make_tiny_hf_teacher(str(tmp_path / 't'), str(w / 'processor'))
    base = ['cache_teacher.py', f'--teacher={tmp_path / "t"}', '--num_workers=0',
            f'--out_dir={tmp_path / "c"}']
    # COCO layout: the student's training cache and its in-domain test split
    for split in ('train', 'test'):
        run(*base, f'--data_dir={w}', f'--split={split}')
    train_ids = load_file(str(tmp_path / 'c/train/train-00000.safetensors'))['image_ids'].tolist()
    caps = json.load(open(w / 'annotations/captions_test2017.json'))
    flickr = tmp_path / 'flickr30k-images'
    flickr.mkdir()
    rows = []
    # Flickr file names carry the photo id; here equal to COCO train ids
    for k, im in enumerate(caps['images']):
        name = f'{train_ids[k]}.jpg'
        shutil.copy(w / 'test2017' / im['file_name'], flickr / name)
        sents = [dict(raw=a['caption'], tokens=[]) for a in caps['annotations']
                 if a['image_id'] == im['id']]
        rows.append(dict(filename=name, imgid=k, sentids=[], split='test' if k < 15 else 'train',
                         sentences=sents))
    karpathy = tmp_path / 'dataset_flickr30k.json'
    json.dump(dict(images=rows, dataset='flickr30k'), open(karpathy, 'w'))
    run(*base[:-1], f'--out_dir={tmp_path / "f"}', f'--data_dir={flickr}',
        f'--karpathy={karpathy}', '--split=test')
    d, m = load_cache(str(tmp_path / 'f/test'))
    assert m['dataset']['name'] == 'flickr30k' and m['dataset']['id_space'] == 'flickr'
    assert sorted(d['image_ids'].tolist()) == sorted(train_ids[:15])
    assert m['counts']['captions'] == sum(len(r['sentences']) for r in rows[:15])
    run('eval.py', f'--cache={tmp_path / "f/test"}') # the teacher row, same code
    t = json.load(open(tmp_path / 'f/test/eval.json'))
    assert t['dataset'] == 'flickr30k' and t['n_images'] == 15
    assert t['bootstrap']['resamples'] == 1000
    assert all(lo <= t['metrics'][k] <= hi for k, (lo, hi) in t['intervals'].items())
    run('eval.py', f'--cache={tmp_path / "c/test"}')
    # a student "trained" on the COCO-layout train cache (meta.json as train.py writes it)
    st = tiny_student(kept_ids=list(range(249)), embed_dim=32)
    st.save_pretrained(str(tmp_path / 'runs/a5'))
    tm = json.load(open(tmp_path / 'c/train/manifest.json'))
    meta = dict(teacher_fingerprint=tm['teacher_fingerprint'],
                train_cache=str(tmp_path / 'c/train'), iter_num=0)
    json.dump(meta, open(tmp_path / 'runs/a5/meta.json', 'w'))
    run('eval.py', f'--cache={tmp_path / "c/test"}', f'--ckpt={tmp_path / "runs/a5"}')
    out = run('eval.py', f'--cache={tmp_path / "f/test"}', f'--ckpt={tmp_path / "runs/a5"}').stdout
    assert 'leak check skipped' in out and 'flickr ids' in out, out
    e = json.load(open(tmp_path / 'runs/a5/eval.json'))
    assert e['dataset'] == 'w' and e['n_images'] == 20
    assert set(e['evals']) == {'w/test', 'flickr30k/test'}
    assert e['evals']['flickr30k/test']['fingerprint'] == t['fingerprint']
    assert e['evals']['w/test']['metrics'] == e['metrics']
    report = lambda *extra: run('report.py', f'--runs_dir={tmp_path / "runs"}',
                                f'--teacher_eval={tmp_path / "c/test/eval.json"}',
                                f'--out={tmp_path / "r.md"}', *extra).stdout
    rep = report(f'--transfer_evals={tmp_path / "f/test/eval.json"}')
    table = md_table(rep, '## Table 1: teacher vs students')
    columns = table[0].split(' | ')[7:10]
    assert columns == ['R@10', 'flickr30k I→T R@1', 'flickr30k T→I R@1'], table[0]
    cell = lambda line, col: line.split(' | ')[col]
    with_interval = lambda row, k: (f"{row['metrics'][k]:.1f} [{row['intervals'][k][0]:.1f}, "
                                    f"{row['intervals'][k][1]:.1f}]")
    fl = e['evals']['flickr30k/test']
    assert cell(table[2], 8) == with_interval(t, 'i2t_r1')
    assert cell(table[4], 9) == with_interval(fl, 't2i_r1')
    assert cell(table[3], 8) == '—' # no a1 run
    assert 'ImageNet' not in table[0] # no ImageNet eval: no column
    zs = dict(top1=41.0, top5=70.0, intervals=dict(top1=[38.0, 44.0], top5=[67.0, 73.0]),
              dataset='imagenet1k', source='/data/imagenet/val', n_images=50000, n_classes=1000,
              templates=['a {c}.'])
    json.dump(dict(e, zeroshot=zs), open(tmp_path / 'runs/a5/eval.json', 'w'))
    table = md_table(report(), '## Table 1: teacher vs students')
    assert 'ImageNet-1k ZS top-1' in table[0] and 'flickr' not in table[0]
    assert '| 41.0 [38.0, 44.0] |' in table[4]

# the dense probe of the per-term study (demo.sh TERMS=1)
def gcap_row(name, colon=7, length=10): # 'gcap: <box> : <name>' + eos, as the cache stores it
    seq = [5, 9, 9, colon, *name, 1]
    return seq + [0] * (length - len(seq))

@pytest.mark.fast
def test_dense_probe_labels_each_patch_and_scores_only_what_the_tokens_say():
    """eval.patch_labels: each patch's class is the region whose box holds the patch centre (the
    smallest box where boxes overlap), 0 elsewhere. dense_probe_metrics: tokens that carry each
    patch's class score 100 % on the object patches; constant tokens (a collapsed model) score
    0 %, however large the background share; non-square token grids and NaN tokens are
    refused."""
    from eval import patch_labels, dense_probe_metrics
    # a 4 x 4 grid: patch centres at 1/8, 3/8, 5/8, 7/8 of the side
    data = dict(image_ids=torch.tensor([10, 20]), region_image_ids=torch.tensor([10, 10, 20]),
                boxes=torch.tensor([[0, 0, 0.5, 1], [0, 0, 0.3, 0.3], [0.55, 0.55, 0.7, 0.7]]),
                gcap_ids=torch.tensor([gcap_row([20]), gcap_row([21, 22]), gcap_row([20])]))
    classes = {}
    labels = patch_labels(data, 4, classes, colon=7)
    assert classes == {(20,): 1, (21, 22): 2}
    left_half = [2, 1, 0, 0] + [1, 1, 0, 0] * 3 # the small box wins its one patch (0, 0)
    only_patch_10 = [0] * 10 + [1] + [0] * 5 # row 2, column 2: centre (5/8, 5/8)
    assert labels.tolist() == [left_half, only_patch_10]

    def world(first, n): # images first..first+n-1, each with 1-2 random boxes of 3 classes
        g = torch.Generator().manual_seed(first)
        ids, boxes, seqs = [], [], []
        for i in range(first, first + n):
            for _ in range(1 + i % 2):
                x0, y0 = (torch.rand(2, generator=g) * 0.6).tolist()
                ids.append(i)
                boxes.append([x0, y0, x0 + 0.4, y0 + 0.4])
                seqs.append(gcap_row([30 + int(torch.randint(3, (1,), generator=g))]))
        # pixel (0, 0) holds the image's index: the oracle below looks its labels up by it
        pixels = torch.arange(first, first + n, dtype=torch.uint8).view(n, 1, 1, 1)
        return dict(image_ids=torch.arange(first, first + n), region_image_ids=torch.tensor(ids),
                    boxes=torch.tensor(boxes), gcap_ids=torch.tensor(seqs),
                    pixels=pixels.expand(n, 3, 2, 2))
    fit, test = world(0, 60), world(60, 90)
    classes = {}
    truth = torch.cat([patch_labels(fit, 4, classes, 7), patch_labels(test, 4, classes, 7)])

    class Oracle(torch.nn.Module): # tokens: each patch's class one-hot (or all equal)
        def __init__(self, collapsed=False, drop=0, nan=False):
            super().__init__()
            self.collapsed, self.drop, self.nan = collapsed, drop, nan
        def preprocess(self, pixels):
            return pixels.float()
        def visual(self, x): # -> tokens (B, N, C), pooled (B, C)
            tokens = F.one_hot(truth[x[:, 0, 0, 0].long()], len(classes) + 1).float()
            if self.collapsed:
                tokens = torch.ones_like(tokens)
            if self.nan:
                tokens[0, 0, 0] = float('nan')
            tokens = tokens[:, :16 - self.drop] # drop=1: 15 tokens, no square grid
            return tokens, tokens.mean(1)
    seen = dense_probe_metrics(Oracle(), fit, test, 7, 'cpu')
    blind = dense_probe_metrics(Oracle(collapsed=True), fit, test, 7, 'cpu')
    assert seen['grid'] == 4 and seen['n_classes'] == 4
    assert seen['object_patch_acc'] == 100.0 and seen['all_patch_acc'] == 100.0
    assert blind['object_patch_acc'] == 0.0
    assert blind['all_patch_acc'] == pytest.approx(blind['background_rate'])
    assert 20 < blind['background_rate'] < 80, blind # both kinds of patch are common here
    lo, hi = seen['object_patch_acc_interval']
    assert lo == hi == 100.0
    with pytest.raises(SystemExit, match='square grid of patch tokens, the model gives 15'):
        dense_probe_metrics(Oracle(drop=1), fit, test, 7, 'cpu')
    with pytest.raises(SystemExit, match='not finite'):
        dense_probe_metrics(Oracle(nan=True), fit, test, 7, 'cpu')

def test_eval_on_a_cache_without_boxes_skips_aref_and_refuses_the_dense_probe(hf_small, tmp_path):
    """A LocCa run scored on a test cache made without boxes: ARef is skipped with a one-line
    note and the retrieval row is written. --dense_probe on it, or with a fit cache tokenised by
    another tokenizer (two ids swapped), is refused by name; eval.json as it was."""
    out = tmp_path / 'out'
    run(*hf_small_args(hf_small, out, '--gamma=0', '--max_iters=1'))
    w = tmp_path / 'w'
    shutil.copytree(hf_small / 'w', w)
    os.remove(w / 'annotations/instances_test2017.json')
    run('cache_teacher.py', f'--data_dir={w}', '--split=test', '--teacher=none',
        f'--processor={hf_small / "siglip2"}', '--num_workers=0', f'--out_dir={tmp_path / "c"}')
    nobox = tmp_path / 'c/test'
    p = run('eval.py', f'--cache={nobox}', f'--ckpt={out}')
    assert f'{nobox} holds no boxes' in p.stdout and 'ARef is not scored' in p.stdout
    e = json.load(open(out / 'eval.json'))
    assert e['cache'] == str(nobox) and 'locca' not in e
    before = dir_bytes(out)
    p = run('eval.py', f'--cache={nobox}', f'--ckpt={out}',
            f'--dense_probe={hf_small / "c/val"}', ok=False)
    assert clean_error(p, str(nobox), 'no boxes', '--instances'), p.stderr[-2000:]
    other = hf_variant(hf_small / 'siglip2', tmp_path / 'swapped', swap=(40, 41))
    hf_small_cache(hf_small, other, tmp_path / 'c2', 'val')
    p = run('eval.py', f'--cache={hf_small / "c/test"}', f'--ckpt={out}',
            f'--dense_probe={tmp_path / "c2/val"}', ok=False)
    assert clean_error(p, str(tmp_path / 'c2/val'), 'another teacher/processor'), p.stderr
    assert dir_bytes(out) == before

# -----------------------------------------------------------------------------
# student.py: the student dir, ONNX export, folder search

def test_student_dir_onnx_export_reload_query(demo):
    """A trained student dir is self-contained (AutoTokenizer / AutoProcessor load it and
    tokenise like the cache); ONNX export, reload in onnxruntime, query: same embeddings and the
    same answers as PyTorch on the test split; the demo report has the zero-shot rows (teacher +
    students) and the speed-vs-teacher column."""
    from transformers import AutoTokenizer, AutoProcessor
    import onnxruntime as ort
    a5 = demo / 'out/shapes/a5'
    test, _ = load_cache(str(demo / 'cache/shapes/test'))
    caps = json.load(open(demo / 'data/shapes/annotations/captions_test2017.json'))
    by_image = sorted(caps['annotations'], key=lambda a: (a['image_id'], a['id']))
    texts = [a['caption'].lower() for a in by_image]
    L = test['input_ids'].shape[1] # the demo teacher's text length (32)
    tokenizer = AutoTokenizer.from_pretrained(str(a5))
    ids = tokenizer(texts, padding='max_length', max_length=L, truncation=True,
                    return_tensors='pt')
    assert torch.equal(ids['input_ids'].int(), test['input_ids'])
    image_processor = AutoProcessor.from_pretrained(str(a5)).image_processor
    assert image_processor.size == {'height': 32, 'width': 32}
    out = run('student.py', f'--ckpt={a5}', '--export_onnx=True').stdout
    info = json.load(open(a5 / 'onnx/export.json'))
    assert set(info['paths']) == {'image', 'image_uint8', 'text'}, out
    assert info['context_length'] == L, out
    # onnxruntime vs PyTorch at batch 5 (the graphs were traced at 2): random pixels, real prompts
    # and a row of random ids over the whole teacher vocabulary (mostly UNK inside the graph)
    s = Student.from_pretrained(str(a5))
    g = torch.Generator().manual_seed(0)
    S = s.config.image_size
    px = torch.randint(0, 256, (5, 3, S, S), dtype=torch.uint8, generator=g)
    prompts = ['a red circle', 'a small blue square in the top left', 'a photo of a cat.', '']
    prompt_ids = tokenizer(prompts, padding='max_length', max_length=L, truncation=True,
                           return_tensors='pt')['input_ids']
    ids5 = torch.cat([prompt_ids, torch.randint(0, len(tokenizer), (1, L), generator=g)])
    x = s.preprocess(px)
    with torch.no_grad():
        want = dict(image=s.encode_image(x), image_uint8=s.encode_image(x),
                    text=s.encode_text(ids5))
    feeds = dict(image=x, image_uint8=px, text=ids5)
    for name, path in info['paths'].items():
        sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        got = sess.run(None, {sess.get_inputs()[0].name: feeds[name].numpy()})[0]
        got = torch.from_numpy(got)
        assert len(got) == 5, (name, out)
        assert F.cosine_similarity(got, want[name]).min() >= 0.9999, (name, out)
    img_s = ort.InferenceSession(str(a5 / 'onnx/image_uint8.onnx'))
    txt_s = ort.InferenceSession(str(a5 / 'onnx/text.onnx'))
    # 100 images
    img = torch.from_numpy(img_s.run(None, {'pixels': test['pixels'].numpy()})[0])
    # 500 captions
    txt = torch.from_numpy(txt_s.run(None, {'input_ids': test['input_ids'].long().numpy()})[0])
    s = Student.from_pretrained(str(a5))
    with torch.no_grad():
        img_pt = s.encode_image(s.preprocess(test['pixels']))
        txt_pt = s.encode_text(test['input_ids'].long())
    assert F.cosine_similarity(img, img_pt).min() >= 0.9999
    assert F.cosine_similarity(txt, txt_pt).min() >= 0.9999
    sim = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T # caption -> image queries
    sim_pt = F.normalize(txt_pt, dim=-1) @ F.normalize(img_pt, dim=-1).T
    assert (sim.argmax(1) == sim_pt.argmax(1)).float().mean() >= 0.99
    report = open(demo / 'out/shapes/report.md').read()
    zs = report.split('## Zero-shot classification')[1].split('##')[0]
    assert all(f'| {n} | ' in zs for n in ('teacher', 'a1', 'a5')) and 'Speed vs teacher' in report
    e = json.load(open(a5 / 'eval.json'))
    assert e['speed']['img_ratio'] > 0 and 'metrics' in e
    # Table 1's TinySigLIP row is the recipe run
    r = json.load(open(demo / 'out/shapes/tinysiglip/eval.json'))
    assert f"{r['speed']['img_ratio']:.1f}× img" in report

def test_folder_search_reindexes_changed_files_and_skips_special_files(tiny_caches, tmp_path):
    """Folder search keyed on size + mtime, blocking on special files, tracebacks on a bad index. A
    file replaced at the same size and mtime is re-indexed; a FIFO named .jpg and a dangling
    symlink are left out (said); a truncated index is rebuilt, said so; an HF name's index never
    lands in the user's folder."""
    from PIL import Image
    shutil.copytree(TEACHER, tmp_path / 's')
    f = tmp_path / 'f'
    f.mkdir()
    webs = sorted((tiny_caches / 'w/web2017').iterdir())
    for i in range(3): # BMP: one size for every image of the same dimensions
        Image.open(webs[i]).save(f / f'{i}.bmp')
    os.mkfifo(f / 'pipe.jpg')
    os.symlink(tmp_path / 'gone.jpg', f / 'dangling.jpg')
    search = ['student.py', f'--ckpt={tmp_path / "s"}', f'--folder={f}', '--query=a red circle',
              '--topk=3']
    out = run(*search, timeout=120).stdout
    assert 'indexed 3 images' in out and "'not_regular_files': 2" in out, out
    assert 'reusing index' in run(*search, timeout=120).stdout
    st = os.stat(f / '0.bmp')
    Image.open(webs[5]).save(tmp_path / '5.bmp')
    assert os.path.getsize(tmp_path / '5.bmp') == st.st_size
    # another image, same size and mtime
    (f / '0.bmp').write_bytes((tmp_path / '5.bmp').read_bytes())
    os.utime(f / '0.bmp', ns=(st.st_atime_ns, st.st_mtime_ns))
    assert 'indexed 3 images' in run(*search, timeout=120).stdout
    index = [p for p in os.listdir(tmp_path / 's') if p.startswith('index-')]
    assert len(index) == 1
    (tmp_path / 's' / index[0]).write_bytes((tmp_path / 's' / index[0]).read_bytes()[:50])
    out = run(*search, timeout=120).stdout
    assert 'unreadable' in out and 'indexed 3 images' in out

# -----------------------------------------------------------------------------
# bench.py: the loss-term rows of --hf_b16; --speed's errors

def test_bench_hf_b16_rows_print_time_and_peak_memory_ratios():
    """bench.py --hf_b16 at a tiny size (the B/16 keys shrunk, ~35 s on 2 busy cores): the five
    rows print, each measured in its own process, with finite positive ms and peak memory and
    ratios to the sigmoid row (1.00x on that row); the complete objective's step peak exceeds
    sigmoid-only's (its DINO heads' activations alone are tens of MiB), so a memory column that
    measures nothing fails. No timing is compared."""
    out = run('bench.py', '--hf_b16=True', '--device=cpu', '--dtype=float32', '--hf_width=64',
              '--hf_depth=2', '--hf_image_size=64', '--hf_vocab=500', '--hf_kept=100',
              '--seq_len=16', '--dino_dim=64', '--hf_batch_size=4', '--hf_iters=1').stdout
    num = r'\s+([\d.]+|nan|inf)'
    rows = {}
    for name in ('sigmoid only', '+ LocCa (3 decoder passes)', '+ SILC (8 local crops)',
                 '+ TIPS (masked view)', 'complete objective'):
        m = re.search(re.escape(name) + num + r' ms' + num + r'x \| step peak' + num + r' MiB'
                      + num + r'x \| process peak' + num + r' MiB' + num + 'x', out)
        assert m, (name, out)
        rows[name] = [float(v) for v in m.groups()]
        assert all(math.isfinite(v) and v > 0 for v in rows[name]), (name, out)
    ms, ms_x, step, step_x, total, total_x = rows['sigmoid only']
    assert ms_x == step_x == total_x == 1.0, out
    assert rows['complete objective'][2] > step, out
    assert all(r[4] >= r[2] for r in rows.values()), out # the absolute peak holds the step's

@pytest.mark.parametrize('arg, needle', [
    ('--hf_iters=-1', 'hf_iters=-1 must be >= 0'),
    ('--hf_kept=300000', 'hf_kept=300000 must be in [5, hf_vocab=256000]'),
    ('--hf_row=9', 'hf_row=9 must be in [-1, 4]'),
    ('--hf_batch_size=-2', 'hf_batch_size=-2 must be >= 0'),
    ('--hf_image_size=250', 'hf_image_size=250 must be a positive multiple of the patch size'),
    ('--hf_width=32', 'hf_width=32 must be a positive multiple of 64'),
    ('--device=cuda', '--device=cpu')])
def test_bench_hf_b16_refuses_sizes_that_build_no_model(arg, needle):
    """bench.py --hf_b16: each size is checked where it is read, the message naming the key and
    its valid range; --device=cuda on a machine without CUDA says to pass --device=cpu."""
    if arg == '--device=cuda' and torch.cuda.is_available():
        pytest.skip('this machine has CUDA: the refusal is for machines without it')
    p = run('bench.py', '--hf_b16=True', '--device=cpu', '--dtype=float32', arg, ok=False)
    assert clean_error(p, needle), p.stdout[-2000:] + p.stderr[-2000:]

def test_missing_weights_and_a_deleted_teacher_are_one_line_errors(tiny_caches, tmp_path):
    """Tracebacks where a message belongs. A run dir without model.safetensors; --speed when the
    manifest's teacher is gone."""
    shutil.copytree(TEACHER, tmp_path / 's')
    os.remove(tmp_path / 's/model.safetensors')
    p = run('student.py', f'--ckpt={tmp_path / "s"}', f'--folder={tiny_caches / "w/web2017"}',
            ok=False)
    assert clean_error(p, 'no model.safetensors')
    shutil.copytree(TEACHER, tmp_path / 't')
    run('cache_teacher.py', f'--data_dir={tiny_caches / "w"}', '--split=val',
        f'--teacher={tmp_path / "t"}', '--num_workers=0', f'--out_dir={tmp_path / "c"}')
    shutil.rmtree(tmp_path / 't')
    p = run('bench.py', f'--ckpt={TEACHER}', f'--cache={tmp_path / "c/val"}', '--speed=True',
            '--speed_seconds=0.1', '--device=cpu', f'--out={tmp_path / "e.json"}', ok=False)
    assert clean_error(p, str(tmp_path / 't')) and not (tmp_path / 'e.json').exists()

# -----------------------------------------------------------------------------
# report.py: the seed's tables from run directories, the per-term study's table, and what it
# refuses (NaN, stale, corrupt, another cache)

@pytest.mark.fast
def test_report_prints_the_seeds_tables(tmp_path):
    """Runs carrying the seed's numbers (SigLIP 2 L teacher 71.5 / 54.7, full method 62.4 /
    44.1) -> report.py prints Table 1, Table 2 (Delta vs Full), Table B and its 2x3 grid with
    exactly these rows and values."""
    def write(path, obj):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        json.dump(obj, open(path, 'w'))
    def ev(i2t, t2i, params):
        m = dict(zip(['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10'], i2t + t2i))
        return dict(split='test', n_images=5000, n_captions=25010, metrics=m, params=params)
    student_p = dict(total=33_200_000, without_token_table=31_800_000)
    tl = tmp_path / 'cache/coco-L/test/eval.json'
    params_l = dict(image=303_179_776, total=881_527_040)
    write(tl, dict(ev([71.5, 89.9, 94.6], [54.7, 78.9, 86.2], params_l),
                   teacher='google/siglip2-large-patch16-256'))
    tb = tmp_path / 'cache/coco-B/test/eval.json'
    params_b = dict(image=92_884_224, total=375_187_970)
    write(tb, dict(ev([68.9, 88.0, 93.0], [52.1, 77.0, 85.0], params_b),
                   teacher='google/siglip2-base-patch16-224'))
    runs = {'a1': ([48.0, 75.2, 84.1], [33.5, 61.0, 72.3]),
            'a1-s1': ([47.0, 74.2, 83.1], [34.5, 62.0, 73.3]),
            'a3': ([61.0, 85.0, 91.0], [43.0, 70.0, 80.0]),
            'a4': ([58.3, 83.0, 90.0], [40.2, 68.0, 78.0]),
            'a5': ([62.4, 86.0, 92.0], [44.1, 71.0, 81.0]),
            'a7': ([60.5, 84.0, 90.5], [42.9, 69.0, 79.0]),
            'b1': ([50.0, 76.0, 85.0], [36.0, 63.0, 74.0]),
            'b4': ([62.4, 86.0, 92.0], [44.1, 71.0, 81.0])}
    for n, (i2t, t2i) in runs.items():
        write(tmp_path / 'out' / n / 'eval.json', ev(i2t, t2i, student_p))
        log = "demo.sh writes each run's log beside its dir\n"
        (tmp_path / 'out' / f'{n}.log').write_text(log)
    # another run, not a seed of a1
    write(tmp_path / 'out/a1-sweep/eval.json', ev([1.0] * 3, [1.0] * 3, student_p))
    for n, t, tev, model in [
            ('b1', 'google/siglip2-base-patch16-224', tb, 'vit_tiny_patch16_224'),
            ('b4', 'google/siglip2-large-patch16-256', tl, 'vit_small_patch16_224')]:
        meta = dict(teacher=t, teacher_eval=str(tev), config=dict(image_model=model))
        write(tmp_path / 'out' / n / 'meta.json', meta)
    report = lambda: run('report.py', f'--runs_dir={tmp_path / "out"}', f'--teacher_eval={tl}',
                         f'--out={tmp_path / "report.md"}').stdout
    text = report()
    assert md_table(text, '## Table 1: teacher vs students') == [
        '| Model | Params | I→T R@1 | R@5 | R@10 | T→I R@1 | R@5 | R@10 | Ratio '
        '| Speed vs teacher |',
        '|---|---|---|---|---|---|---|---|---|---|',
        '| Teacher (google/siglip2-large-patch16-256) | 303.2M image / 881.5M total '
        '| 71.5 | 89.9 | 94.6 | 54.7 | 78.9 | 86.2 | — | — |',
        '| Student (No KD) | 33.2M (31.8M) '
        '| 47.5 ± 0.5 | 74.7 ± 0.5 | 83.6 ± 0.5 | 34.0 ± 0.5 | 61.5 ± 0.5 | 72.8 ± 0.5 '
        '| 0.66 / 0.62 | — |', # 47.5 / 71.5, 34.0 / 54.7
        '| Student (TinySigLIP, run a5) | 33.2M (31.8M) '
        '| 62.4 | 86.0 | 92.0 | 44.1 | 71.0 | 81.0 | 0.87 / 0.81 | — |']
    # one seed each, no intervals: every delta is shown, none is resolved
    assert md_table(text, '## Table 2: ablation (delta vs the full method)') == [
        '| Configuration | I→T R@1 | T→I R@1 | Δ I→T | Δ T→I | Resolved I→T / T→I |',
        '|---|---|---|---|---|---|',
        '| Full Method | 62.4 | 44.1 | — | — | — |',
        '| w/o Feature Loss | 58.3 | 40.2 | -4.1 | -3.9 | no: 1 seed / no: 1 seed |',
        '| w/o Affinity Loss | 61.0 | 43.0 | -1.4 | -1.1 | no: 1 seed / no: 1 seed |',
        '| w/o Contrastive | 60.5 | 42.9 | -1.9 | -1.2 | no: 1 seed / no: 1 seed |']
    assert ('Rows: Full Method = a5, w/o Feature Loss = a4, w/o Affinity Loss = a3, '
            'w/o Contrastive = a7.') in text
    b = md_table(text, '## Table B: teacher × student (full method)')
    # each run against its own teacher's row (meta.json's teacher_eval)
    assert b[2] == ('| b1 | google/siglip2-base-patch16-224 | 68.9 / 52.1 | vit_tiny_patch16_224 '
                    '| 50.0 | 36.0 | 33.2M (31.8M) | 0.73 | 0.69 |') # 50.0 / 68.9, 36.0 / 52.1
    assert b[5] == ('| b4 | google/siglip2-large-patch16-256 | 71.5 / 54.7 | vit_small_patch16_224 '
                    '| 62.4 | 44.1 | 33.2M (31.8M) | 0.87 | 0.81 |') # 62.4 / 71.5, 44.1 / 54.7
    assert b[3].startswith('| b2 | — |') and '(missing: ' in b[3]
    assert md_table(text, "### Table B as the seed's grid")[2:] == [
        '| SigLIP 2 B | 50.0 / 36.0 (b1; 0.73/0.69×) | — |',
        '| SigLIP 2 L | — | 62.4 / 44.1 (b4; 0.87/0.81×) |', '| SigLIP 2 So400m | — | — |']
    table_2b = md_table(text, '## Table 2b: every loss combination (delta vs the full method a5)')
    a2 = [l for l in table_2b if l.startswith('| a')]
    assert [l.split(' | ')[0] for l in a2] == [f'| a{i}' for i in range(1, 8)]
    assert a2[6] == '| a7 | feature + affinity | 60.5 | 42.9 | -1.9 | -1.2 |'
    recipe = ev([63.0, 87.0, 93.0], [45.0, 72.0, 82.0], student_p)
    write(tmp_path / 'out/tinysiglip/eval.json', recipe)
    assert ('| Student (TinySigLIP, run tinysiglip) | 33.2M (31.8M) '
            '| 63.0 | 87.0 | 93.0 | 45.0 |') in report()

@pytest.mark.fast
def test_report_marks_a_delta_resolved_only_when_seeds_and_intervals_clear_zero(tmp_path):
    """Known inputs -> report.py's verdicts: a delta whose seeds disagree in sign, or whose mean
    lies inside the two runs' combined intervals, or that has one seed, is not resolved; one
    clear of both is. Also the calibration line, the best distilled run chosen on val (not test)
    and the convergence verdicts."""
    def write(path, obj):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        json.dump(obj, open(path, 'w'))
    def ev(i2t, t2i, half=0.5): # R@5 and R@10 as R@1, with bootstrap bounds of +-half
        metrics = {f'{d}_r{k}': v for d, v in (('i2t', i2t), ('t2i', t2i)) for k in (1, 5, 10)}
        intervals = {k: [v - half, v + half] for k, v in metrics.items()}
        return dict(split='test', n_images=5000, n_captions=25000, metrics=metrics,
                    intervals=intervals)
    out = tmp_path / 'out'
    write(tmp_path / 'teacher.json', ev(40.0, 40.0))
    runs = {'a1': (24.0, 12.0), 'a1-s1': (24.0, 12.0), # 0.60x in range, 0.30x outside
            'a5': (30.0, 30.0), 'a5-s1': (31.0, 31.0),
            'a5-s2': (40.0, 40.0), # a seed only a5 has (TEXT=1): no delta pairs with it
            'a4': (25.0, 29.8), 'a4-s1': (26.0, 30.6),  # I→T -5 / -5; T→I -0.2 / -0.4
            'a3': (32.0, 33.0), 'a3-s1': (29.0, 34.0),  # I→T +2 / -2; T→I +3 / +3
            'a7': (20.0, 20.0)}                         # one seed
    for name, (i2t, t2i) in runs.items():
        write(out / name / 'eval.json', ev(i2t, t2i))
    # val picks the distilled run of Table 1: a3 is best on val though a5 is not worse on test
    val = {'a5': 50.0, 'a5-s1': 50.0, 'a5-s2': 50.0, 'a3': 60.0, 'a3-s1': 60.0,
           'a4': 10.0, 'a4-s1': 10.0}
    # val curves (mean of I→T and T→I): a5 flat after 80 %, a4 still rising, a3 has no point
    # between 70 % and 80 % of its run
    curves = {'a5': [(0, 1), (800, 49), (1000, 50)], 'a4': [(0, 1), (800, 30), (1000, 45)],
              'a3': [(0, 1), (1000, 60)]}
    for name, score in val.items():
        config = dict(val_images=500)
        write(out / name / 'meta.json', dict(config=config,
                                            metrics={'val/i2t_r1': score, 'val/t2i_r1': score}))
        points = curves.get(name.split('-s')[0], [])
        log = [json.dumps({'iter': i, 'val/i2t_r1': v, 'val/t2i_r1': v}) for i, v in points]
        (out / name / 'log.jsonl').write_text(''.join(l + '\n' for l in log))
    report = run('report.py', f'--runs_dir={out}', f'--teacher_eval={tmp_path / "teacher.json"}',
                 f'--out={tmp_path / "report.md"}').stdout
    table_2 = md_table(report, '## Table 2: ablation (delta vs the full method)')
    rows = {l.split(' | ')[0][2:]: l.split(' | ')[3:] for l in table_2[2:]}
    # the interval of a delta: hypot(0.5, 0.5) = 0.7
    assert rows['w/o Feature Loss'] == ['-5.0 ± 0.0 (±0.7)', '-0.3 ± 0.1 (±0.7)',
                                        'yes / no: inside the intervals |']
    assert rows['w/o Affinity Loss'] == ['+0.0 ± 2.0 (±0.7)', '+3.0 ± 0.0 (±0.7)',
                                         'no: inside the seed spread / yes |']
    assert rows['w/o Contrastive'] == ['-10.0 (±0.7)', '-10.0 (±0.7)', 'no: 1 seed / no: 1 seed |']
    assert 'A row\'s R@1 is over all its seeds (a5 3, a4 2, a3 2, a7 1).' in report
    assert 'Seeds: a1 2, a3 2.' in report # Table 1's student rows
    # Table 2b pairs seeds as Table 2 does: a4 -5.0 / -0.3, not 25.5 - 33.7 (a5 over 3 seeds)
    table_2b = md_table(report, '## Table 2b: every loss combination (delta vs the full method a5)')
    assert [l for l in table_2b if l.startswith('| a4 |')][0].endswith(' | -5.0 | -0.3 |')
    findings = md_table(report, '## Findings', prefix='- ')
    assert findings[0] == ("- Calibration: No KD (a1) reaches 0.60× / 0.30× of the teacher's "
                           "I→T / T→I R@1: OUTSIDE the range 0.5–0.75× (the seed's No KD: 0.64×).")
    assert findings[1].startswith('- Distillation: a3 (the best distilled on val) vs No KD (a1): '
                                  'Δ I→T +6.5 ± 1.5 (±0.7), T→I +21.5 ± 0.5 (±0.7)')
    assert findings[1].endswith('resolved: yes / yes.')
    assert '| Student (TinySigLIP, run a3) |' in report
    assert ('- w/o Feature Loss (a4) vs Full Method (a5): Δ I→T -5.0 ± 0.0 (±0.7), '
            'T→I -0.3 ± 0.1 (±0.7) R@1 points; resolved: yes / no: inside the intervals.'
            ) in findings
    verdicts = {l.split(' | ')[0][2:]: l.split(' | ')[-1] for l in
                md_table(report, '## Convergence')[2:]}
    assert verdicts == {'a5': 'flat |', 'a5-s1': 'flat |', 'a5-s2': 'flat |',
                        'a3': 'not checked: no val point in the last 30 % |',
                        'a3-s1': 'not checked: no val point in the last 30 % |',
                        'a4': 'rising |', 'a4-s1': 'rising |'}

@pytest.mark.fast
def test_report_refuses_nan_stale_and_corrupt(tmp_path):
    """report.py: a NaN run is never 'best', an eval.json of another checkpoint or cache is refused
    by name (stale), a corrupt eval.json / log.jsonl is reported as corrupt; the report is still
    written. A zero-shot row of weights the run has since replaced is marked stale."""
    runs = tmp_path / 'out'
    sha = lambda b: hashlib.sha256(b).hexdigest()
    metric_keys = ('i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10')
    def make(name, r1, scored=b'w', fp='f', zeroshot_of=None):
        d = runs / name
        d.mkdir(parents=True)
        (d / 'model.safetensors').write_bytes(b'w')
        json.dump(dict(iter_num=10, config={}), open(d / 'meta.json', 'w'))
        ev = dict(split='test', n_images=2, n_captions=2, fingerprint=fp, run=name,
                  model='student', checkpoint=dict(iter_num=10, model_sha256=sha(scored)),
                  metrics={k: r1 for k in metric_keys})
        if zeroshot_of: # eval.py --zeroshot's row, of the weights zeroshot_of
            ev['zeroshot'] = dict(top1=50.0, top5=90.0, templates=['a {c}'], source='/d/zs',
                                  n_images=4, n_classes=2, dataset='world',
                                  model_sha256=sha(zeroshot_of))
        json.dump(ev, open(d / 'eval.json', 'w'))
        return d
    teacher = dict(split='test', n_images=2, n_captions=2, fingerprint='f',
                   metrics={k: 50.0 for k in metric_keys})
    json.dump(teacher, open(tmp_path / 'teacher.json', 'w'))
    (make('a1', 10.0) / 'log.jsonl').write_text('{"iter": 1, "loss": 1.0}\n{"iter": 2, "lo')
    make('a2', float('nan'))            # diverged
    make('a3', 20.0, scored=b'old')     # eval.json of an older model.safetensors
    (make('a4', 25.0) / 'eval.json').write_text('{"metrics": ')
    make('a5', 15.0, zeroshot_of=b'w')
    make('a6', 40.0, fp='g')            # scored on another cache / split
    make('a7', 30.0, zeroshot_of=b'old') # zero-shot of weights since retrained
    p = run('report.py', f'--runs_dir={runs}', f'--teacher_eval={tmp_path / "teacher.json"}',
            f'--out={tmp_path / "r.md"}')
    rep = open(tmp_path / 'r.md').read()
    assert '| Student (TinySigLIP, run a5) | — | 15.0 |' in rep, rep
    assert '40.0' not in rep, rep # never the refused a6
    row = lambda n: [l for l in rep.splitlines() if l.startswith(f'| {n} |')][0]
    assert 'non-finite' in row('a2') and all(c.strip() == '—' for c in row('a2').split('|')[3:7])
    assert 'stale' in row('a3') and str(runs / 'a3' / 'eval.json') in row('a3')
    assert '20.0' not in row('a3')
    assert 'corrupt' in row('a4') and str(runs / 'a4' / 'eval.json') in row('a4')
    assert 'another cache' in row('a6') and '40.0' not in row('a6')
    assert 'corrupt' in rep and str(runs / 'a1' / 'log.jsonl') in rep and p.returncode == 0
    zs = md_table(rep, '## Zero-shot classification')
    assert [r.split('|')[1].strip() for r in zs[2:]] == [
        'a5', 'a7 (stale: retrained since; rerun eval.py --zeroshot)'], zs

@pytest.mark.fast
def test_report_prints_what_each_term_adds(tmp_path):
    """report.py's per-term table: rows in the study's order, mean ± half-range over seeds with
    the mean bootstrap bounds, ARef only where a decoder was trained; an arm scored on another
    cache than the base is refused and named."""
    def write(run, fingerprint, i2t, extra):
        os.makedirs(tmp_path / run, exist_ok=True)
        m = dict(i2t_r1=i2t, t2i_r1=i2t + 1)
        e = dict(split='test', n_images=5000, n_captions=25000, fingerprint=fingerprint,
                 metrics=m, intervals={k: [v - 1, v + 1] for k, v in m.items()}, **extra)
        json.dump(e, open(tmp_path / run / 'eval.json', 'w'))
    probe = lambda acc: dict(dense_probe=dict(object_patch_acc=acc,
                                              object_patch_acc_interval=[acc - 2, acc + 2]))
    aref = lambda acc: dict(locca=dict(aref_acc_iou50=acc,
                                       aref_acc_iou50_interval=[acc - 4, acc + 4]))
    write('terms-base', 'T', 10.0, probe(30.0))
    write('terms-sigmoid', 'T', 12.0, probe(31.0))
    write('terms-sigmoid-s1', 'T', 14.0, probe(33.0))
    write('terms-locca', 'other', 13.0, dict(**probe(35.0), **aref(20.0)))
    write('terms-complete', 'T', 13.0, dict(**probe(40.0), **aref(22.0)))
    os.makedirs(tmp_path / 'cache', exist_ok=True)
    teacher = tmp_path / 'cache/eval.json' # the demo's teacher row: another cache
    recalls = {f'{d}_r{k}': 25.0 for d in ('i2t', 't2i') for k in (1, 5, 10)}
    json.dump(dict(split='test', n_images=5000, n_captions=25000, fingerprint='M',
                   metrics=recalls), open(teacher, 'w'))
    text = run('report.py', f'--runs_dir={tmp_path}', f'--teacher_eval={teacher}',
               f'--out={tmp_path / "report.md"}').stdout
    rows = md_table(text, '## What each SigLIP 2 term adds')
    assert rows[0] == ('| objective | run | seeds | I→T R@1 | T→I R@1 | ARef acc@0.5 '
                       '| dense probe |')
    assert rows[2:4] == [
        '| base: sigmoid only, before the arms | terms-base | 1 | 10.0 [9.0, 11.0] '
        '| 11.0 [10.0, 12.0] | — | 30.0 [28.0, 32.0] |',
        '| sigmoid only | terms-sigmoid | 2 | 13.0 ± 1.0 [12.0, 14.0] | 14.0 ± 1.0 [13.0, 15.0] '
        '| — | 32.0 ± 1.0 [30.0, 34.0] |']
    assert rows[4].startswith('| + LocCa | terms-locca | 0 | — | — | — | — |')
    assert 'scored on another cache than terms-base' in rows[4]
    assert rows[5].startswith('| + SILC/TIPS | terms-silc-tips | 0 |') and '(missing: ' in rows[5]
    assert rows[6] == ('| complete: + LocCa + SILC/TIPS | terms-complete | 1 | 13.0 [12.0, 14.0] '
                       '| 14.0 [13.0, 15.0] | 22.0 [18.0, 26.0] | 40.0 [38.0, 42.0] |')

# -----------------------------------------------------------------------------
# demo.sh end to end: the quick demo's tables, plots and teacher row

def test_demo_quick_writes_tables(demo):
    report = open(demo / 'out/shapes/report.md').read()
    assert 'Table 1' in report and 'Table 2' in report
    # the quick teacher is too short to learn: quality is the full demo's job (README), here the
    # plumbing
    t = json.load(open(demo / 'cache/shapes/test/eval.json'))
    assert t['n_images'] == 100 and t['n_captions'] == 500
    assert '(missing: ' in report # --quick trains only A1 and A5: the other rows must show as gaps
    for a in ('a1', 'a5'):
        e = json.load(open(demo / f'out/shapes/{a}/eval.json'))
        assert e['fingerprint'] == t['fingerprint'] and 0 <= e['metrics']['t2i_r1'] <= 100
    m = json.load(open(demo / 'cache/shapes/train/manifest.json'))
    assert m['embed_dim'] == 128 and m['counts']['images'] == 300 and m['teacher_kind'] == 'ours'
    assert os.path.exists(demo / 'out/shapes/a5/curves.png')
    assert os.path.exists(demo / 'out/shapes/ablation.png')
    # the seed's tables: the teacher row carries its name and the parameter counts taken at cache
    # time
    teacher = Student.from_pretrained(TEACHER) # the demo teacher kept in the repo
    image = sum(p.numel() for m in (teacher.visual, teacher.img_proj) for p in m.parameters())
    total = teacher.num_params()
    assert t['params'] == dict(image=image, total=total) and image < total
    teacher_row = (f"| Teacher (shapes/teacher) | {image / 1e6:.2f}M image "
                   f"/ {total / 1e6:.2f}M total |")
    assert teacher_row in report
    assert '| Student (No KD) | ' in report
    assert '| Student (TinySigLIP, run tinysiglip) | ' in report
    assert '## Table R: what each part of the recipe adds' in report
    assert '| + all three (the recipe) | tinysiglip | 1 |' in report
    # --quick: no A7 run
    assert '| Full Method | ' in report and '| w/o Contrastive | — | — | — |' in report
    # FULL=1: Table B, each run scored against its own teacher's test cache
    b_rows = [r.split(' | ')[:2] for r in md_table(report, '## Table B: teacher')[2:]]
    teachers = {'b1': 'b', 'b2': 'l', 'b3': 'b', 'b4': 'l', 'b5': 'so'}
    assert b_rows == [[f'| {n}', f'shapes/teacher-{m}'] for n, m in teachers.items()], b_rows
    for n, member in teachers.items():
        own = json.load(open(demo / f'cache/shapes-{member}/test/eval.json'))
        run_eval = json.load(open(demo / f'out/shapes/{n}/eval.json'))
        assert run_eval['fingerprint'] == own['fingerprint'] != t['fingerprint']
        assert own['teacher'].endswith(f'teacher-{member}'), own['teacher']
    grid = md_table(report, "### Table B as the seed's grid")[2:]
    assert [r.count('—') for r in grid] == [0, 0, 1], grid # So400m x Tiny: not in the seed's plan
    c_rows = [r.split(' | ')[3] for r in md_table(report, '## Table C: student')[2:]]
    assert c_rows == ['resnet18', 'mobilenetv3_small_050', 'vit_tiny_patch16_224'], c_rows
    # the sweep: the first 100 of the 300 pairs, then all of them; a5 vs the recipe, both trained
    sweep = md_table(report, '## Table R2: the recipe against A5')[2:]
    assert [r.split(' | ')[0] for r in sweep] == ['| 100', '| 300'] and '—' not in sweep[0]
    m = json.load(open(demo / 'cache/shapes-p100/train/manifest.json'))
    assert m['counts']['images'] == 100
    # a run --quick does not train (a7) is a row marked missing
    assert f"(missing: {demo / 'out/shapes/a7'})" in report
    findings = md_table(report, '## Findings', prefix='- ')
    assert findings[0].startswith('- Calibration: No KD (a1) reaches ')
    asked = [f.split(': ')[0] for f in findings]
    assert asked.count('- A stronger teacher (L vs B), the same Tiny student') == 1, asked
    assert '- The recipe vs A5 on 100 pairs' in asked
    assert '- A ResNet student vs the ViT (Table C)' in asked
    # one seed: nothing can be resolved
    assert findings[1].startswith('- Distillation: ') and findings[1].endswith(
        'resolved: no: 1 seed / no: 1 seed.')
    # 40 steps with one val point at the end: convergence is not checked, and says so
    assert '| a1 | 0 |' in report and 'not checked: no val point in the last 30 % |' in report
    # config/shapes.py
    assert json.load(open(demo / 'out/shapes/a5/meta.json'))['model_args']['image_size'] == 32
    # TEXT=1: a1 and a5 with the text tower from scratch, inherited, the MLM-pretrained BERT
    text = md_table(report, "## The student's text tower: where it starts")[2:]
    runs = [r.split(' | ')[2] for r in text]
    assert runs == ['a1', 'a1-inherit', 'a1-mlm', 'a5', 'a5-inherit', 'a5-mlm'], text
    assert not any('(missing' in r for r in text), text
    assert 'text tower inherited from' in open(demo / 'out/shapes/a5-inherit.log').read()
    mlm_args = json.load(open(demo / 'out/shapes/a5-mlm/meta.json'))['model_args']
    assert mlm_args['text_encoder_config']['model_type'] == 'bert'
    assert '- Text tower inherited from the teacher vs from scratch, Full Method' in asked
    # TERMS=1: the base, then each objective from it, 2 seeds, all scored on the study's cache
    terms = md_table(report, '## What each SigLIP 2 term adds')
    assert [r.split(' | ')[1:3] for r in terms[2:]] == [
        ['terms-base', '1'], ['terms-sigmoid', '2'], ['terms-locca', '2'],
        ['terms-silc-tips', '2'], ['terms-complete', '2']], terms
    base = json.load(open(demo / 'out/shapes/terms-base/eval.json'))
    for arm in ('sigmoid', 'locca', 'silc-tips', 'complete'):
        run_dir = demo / f'out/shapes/terms-{arm}'
        e = json.load(open(run_dir / 'eval.json'))
        assert e['fingerprint'] == base['fingerprint'] != t['fingerprint']
        assert e['dense_probe']['grid'] == 8 and 0 <= e['dense_probe']['object_patch_acc'] <= 100
        assert ('locca' in e) == (arm in ('locca', 'complete')), arm
        model_args = json.load(open(run_dir / 'meta.json'))['model_args']
        assert model_args['hf_model'] == str(demo / 'out/shapes/terms-base')
        assert json.load(open(run_dir / 'config.json'))['model_type'] == 'siglip2'
        rows = [json.loads(l) for l in open(run_dir / 'log.jsonl')]
        terms_logged = {k for r in rows for k in r if k.startswith('loss/')}
        assert ({'loss/silc', 'loss/tips'} <= terms_logged) == (arm in ('silc-tips', 'complete'))

if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q', *sys.argv[1:]])) # e.g. -m fast, -k resume, -x
