"""
The embedded synthetic world, written in COCO 2017 format so the real readers run on it.

    python data/shapes/prepare.py          # ~25 s on 2 cores: web 20k, train 5k, val 500, test 5k
    python data/shapes/prepare.py --seed=1 # another draw of the same world (README: the findings)
    python data/shapes/prepare.py --n_web=4000 --n_train=300 --n_val=100 --n_test=100 \
        --out_dir=/tmp/shapes

Writes <out_dir>/{web,train,val,test}2017/*.jpg, annotations/{captions,instances}_<split>2017.json,
annotations/dataset_shapes.json (Karpathy-style split file) and processor/ (a Gemma-style BPE
tokenizer of the world's words + SigLIP image settings, loadable offline with
AutoTokenizer/AutoProcessor).

The world: 1-3 objects of 8 colours x 6 shapes x 2 sizes on a 3x3 grid,
5 captions per image from varied templates (synonyms, order, relations, counts). What each split
is for (README, "The demo world"):
- web (20k): the teachers' pretraining data and the recipe's unpaired images and captions: the
  "billions of pairs" a student never sees as pairs;
- train (5k): the student's paired data, the bottleneck (COCO's role). Its size sets the regime:
  with 5k pairs x 2,000 steps the no-KD student lands near the seed's 0.64x of its teacher;
- val (500): model selection and the convergence check (val curve flat over its last 20 %);
- test (5k, as COCO's 5k split): every reported number; 500 images would move R@1 by points;
- 12 held-out colour-shape pairs, rare in train (2% of their usual rate) but common in
  val/test: what the teacher knows and the student's own pairs cannot teach.
"""
import os, sys, json, time, random
import numpy as np
from multiprocessing import Pool
from PIL import Image, ImageDraw

COLOURS = {'red': (220, 40, 40), 'green': (40, 180, 60), 'blue': (50, 80, 230),
           'yellow': (235, 220, 50), 'purple': (150, 60, 200), 'orange': (245, 140, 30),
           'white': (240, 240, 240), 'cyan': (40, 210, 220)}
SHAPES = ['circle', 'square', 'triangle', 'diamond', 'bar', 'ring']
SYNONYMS = {'circle': ['circle', 'disc', 'ball'], 'square': ['square', 'box', 'block'],
            'triangle': ['triangle'], 'diamond': ['diamond', 'rhombus'],
            'bar': ['bar', 'stripe'], 'ring': ['ring', 'donut']}
# radius / image side
SIZES = {'small': (['small', 'tiny', 'little'], 0.16), 'big': (['big', 'large', 'huge'], 0.27)}
POS = [['top left', 'top', 'top right'],
       ['left', 'center', 'right'],
       ['bottom left', 'bottom', 'bottom right']]
COUNT = ['one', 'two', 'three']
# region captions for LocCa: colour + shape
CATEGORIES = [f'{c} {s}' for c in COLOURS for s in SHAPES]
# 12 pairs the student split rarely shows
HELD_OUT = set(CATEGORIES[i] for i in range(0, len(CATEGORIES), 4))
# image ids: split * 10^7 + i, disjoint across splits
SPLITS = {'web': 1, 'train': 2, 'val': 3, 'test': 4}

def scene(rng, rare):
    """-> list of objects (colour, shape, size, row, col);
    held-out pairs kept with probability `rare`."""
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], rng.randint(1, 3))
    objs, used = [], set()
    for r, c in cells:
        while True:
            col, shp = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (f'{col} {shp}' not in used
                    and (f'{col} {shp}' not in HELD_OUT or rng.random() < rare)):
                break
        used.add(f'{col} {shp}')
        objs.append((col, shp, rng.choice(list(SIZES)), r, c))
    return objs

def draw(objs, size, bg):
    S = size * 2 # draw at 2x, downsample: cheap anti-aliasing
    im = Image.new('RGB', (S, S), bg)
    d, boxes = ImageDraw.Draw(im), []
    for col, shp, sz, r, c in objs:
        cx, cy, rad = (c + 0.5) * S / 3, (r + 0.5) * S / 3, SIZES[sz][1] * S / 3 * 1.6
        x0, y0, x1, y1 = cx - rad, cy - rad, cx + rad, cy + rad
        fill = COLOURS[col]
        if shp == 'circle':
            d.ellipse([x0, y0, x1, y1], fill=fill)
        elif shp == 'ring':
            d.ellipse([x0, y0, x1, y1], outline=fill, width=max(2, int(rad / 2.5)))
        elif shp == 'square':
            d.rectangle([x0, y0, x1, y1], fill=fill)
        elif shp == 'triangle':
            d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif shp == 'diamond':
            d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        else: # bar
            y0, y1 = cy - rad / 2.5, cy + rad / 2.5
            d.rectangle([x0, y0, x1, y1], fill=fill)
        boxes.append([x0 / 2, y0 / 2, (x1 - x0) / 2, (y1 - y0) / 2]) # COCO xywh in final pixels
    return im.resize((size, size), Image.BILINEAR), boxes

def captions(rng, objs):
    """5 different true captions: synonyms, attribute subsets, order, relations and counts vary."""
    def name(o, size=None, pos=None):
        col, shp, sz, r, c = o
        # f-string parts run left to right: the size draw, then the synonym draw
        s = (f"{rng.choice(SIZES[sz][0]) + ' ' if (rng.random() < 0.5 if size is None else size) else ''}"
             f"{col} {rng.choice(SYNONYMS[shp])}")
        return s + (f" in the {POS[r][c]}" if (rng.random() < 0.4 if pos is None else pos) else '')
    def rel(a, b):
        if a[4] != b[4]:
            return 'left of' if a[4] < b[4] else 'right of'
        return 'above' if a[3] < b[3] else 'below'
    out = []
    while len(out) < 5:
        o = rng.sample(objs, len(objs))
        t = rng.randrange(5)
        if t == 0:
            s = 'a ' + ' and a '.join(name(x) for x in o)
        elif t == 1:
            s = 'there is a ' + ', a '.join(name(x) for x in o)
        elif t == 2:
            s = (f"{COUNT[len(o) - 1]} object{'s' if len(o) > 1 else ''}: "
                 + ', '.join(name(x, pos=True) for x in o))
        elif t == 3 and len(o) > 1:
            s = (f"a {name(o[0], pos=False)} {rel(o[0], o[1])} a {name(o[1], pos=False)}"
                 + ''.join(f" and a {name(x)}" for x in o[2:]))
        else:
            s = 'a picture of a ' + ' next to a '.join(name(x) for x in o)
        if s not in out:
            out.append(s)
    return out

def build_tokenizer(out, image_size):
    """Gemma-style BPE (ids: pad 0, eos 1, bos 2, unk 3, mask 4; '▁' word pieces;
    digits single tokens)."""
    from tokenizers import Tokenizer, models, trainers, normalizers, pre_tokenizers
    from transformers import GemmaTokenizer, SiglipImageProcessor, SiglipProcessor
    words = sorted({w for c in CATEGORIES for w in c.split()}
                   | {w for v in SYNONYMS.values() for w in v}
                   | {w for v, _ in SIZES.values() for w in v}
                   | {w for p in POS for q in p for w in q.split()}
                   | set(COUNT)
                   | {'a', 'and', 'there', 'is', 'in', 'the', 'of', 'left', 'right', 'above',
                      'below', 'objects', 'object', 'picture', 'next', 'to', 'cap', 'aref', 'gcap'})
    tk = Tokenizer(models.BPE(unk_token='<unk>', byte_fallback=True))
    tk.normalizer = normalizers.Replace(' ', '▁')
    tk.pre_tokenizer = pre_tokenizers.Split('▁', behavior='merged_with_next')
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=['<pad>', '<eos>', '<bos>', '<unk>', '<mask>'],
        initial_alphabet=list('0123456789:,▁abcdefghijklmnopqrstuvwxyz'), show_progress=False)
    corpus = ([' '.join(words)] * 3 + [f' {w}' for w in words] + words
              + [f'{w}:' for w in ('cap', 'aref', 'gcap')] + [' :'])
    tk.train_from_iterator(corpus, trainer)
    model = json.loads(tk.to_str())['model']
    tok = GemmaTokenizer(vocab=model['vocab'],
                         merges=[tuple(m) if isinstance(m, list) else tuple(m.split(' '))
                                 for m in model['merges']],
                         # SigLIP: right padding (the text tower pools the last position)
                         padding_side='right')
    improc = SiglipImageProcessor(size={'height': image_size, 'width': image_size},
                                  resample=Image.BILINEAR,
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    SiglipProcessor(image_processor=improc, tokenizer=tok).save_pretrained(
        os.path.join(out, 'processor'))
    return tok

def make_tiny_hf_teacher(out_dir, processor_dir, kind='siglip', image_size=32, patch=8, width=32,
                         layers=2, seed=0, mlp_ratio=2):
    """A tiny random SiglipModel (fixed res) or Siglip2Model (NaFlex) on the world's tokenizer,
    saved for offline AutoModel/AutoProcessor loading (tests; demo.sh TERMS=1 builds its study's
    model with patch=4, width=64, layers=4). NaFlex inputs: image_processor(...) ->
    pixel_values (B, P, 3·p·p), pixel_attention_mask (B, P), spatial_shapes (B, 2); call
    processor.image_processor directly, since Siglip2Processor's class defaults
    (max_num_patches=256, patch_size=16) override the saved values. mlp_ratio: the text MLP's
    width over `width` (4: a full-width Student text tower can inherit it: inherit_text_tower)."""
    import torch, transformers as T
    torch.manual_seed(seed)
    tok = T.AutoTokenizer.from_pretrained(processor_dir)
    # the tokenizer's special ids: the config's defaults (CLIP's 49406 / 49407) lie outside
    # a tiny vocabulary, and transformers warns of that at every load
    tcfg = dict(vocab_size=len(tok), hidden_size=width, intermediate_size=mlp_ratio * width,
                num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    vcfg = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                num_attention_heads=2, patch_size=patch)
    if kind == 'siglip':
        model = T.SiglipModel(T.SiglipConfig(text_config=tcfg,
                                             vision_config=dict(vcfg, image_size=image_size)))
        improc = T.SiglipImageProcessor(size={'height': image_size, 'width': image_size},
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
        proc = T.SiglipProcessor(image_processor=improc, tokenizer=tok)
    else:
        n = (image_size // patch) ** 2
        model = T.Siglip2Model(T.Siglip2Config(text_config=tcfg,
                                               vision_config=dict(vcfg, num_patches=n)))
        improc = T.Siglip2ImageProcessor(patch_size=patch, max_num_patches=n,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
        proc = T.Siglip2Processor(image_processor=improc, tokenizer=tok)
    # a fresh model has scale = bias = 0: use SigLIP's init so they carry information
    with torch.no_grad():
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)

def parse_args(script, cfg): # --key=value over cfg's defaults, typed as the default; else an error
    for a in sys.argv[1:]:
        k, sep, v = a[2:].partition('=')
        if not a.startswith('--') or not sep or k not in cfg:
            sys.exit(f"{script}: unknown argument {a!r}; known: "
                     + ' '.join(f'--{k}=' for k in cfg))
        cfg[k] = type(cfg[k])(v)

def make_image(out, split, sid, i, S, seed):
    """One image + its annotations; writes the JPEG.
    Seeded per image: deterministic under any worker pool."""
    rng = random.Random(seed * 10**9 + sid * 10**7 + i)
    objs = scene(rng, rare=0.02 if split == 'train' else 1.0)
    im, boxes = draw(objs, S, tuple(rng.randint(0, 60) for _ in range(3)))
    iid, fn = sid * 10**7 + i, f'{sid * 10**7 + i:012d}.jpg'
    im.save(os.path.join(out, f'{split}2017', fn), quality=95)
    cs = captions(rng, objs)
    caps = [{'id': iid * 10 + j, 'image_id': iid, 'caption': c} for j, c in enumerate(cs)]
    inst = [{'id': iid * 10 + j, 'image_id': iid,
             'category_id': CATEGORIES.index(f'{o[0]} {o[1]}') + 1, 'bbox': b,
             'area': b[2] * b[3], 'iscrowd': 0}
            for j, (o, b) in enumerate(zip(objs, boxes))]
    karp = {'filepath': f'{split}2017', 'filename': fn, 'cocoid': iid, 'split': split,
            'sentences': [{'raw': c, 'tokens': c.replace(',', '').replace(':', '').split()}
                          for c in cs]}
    return {'id': iid, 'file_name': fn, 'width': S, 'height': S}, caps, inst, karp

if __name__ == '__main__':
    # -------------------------------------------------------------------------
    cfg = dict(out_dir=os.path.dirname(os.path.abspath(__file__)),
               # test 5k images as COCO's 5k test split: a 500-image split moves R@1 by points
               n_web=20000, n_train=5000, n_val=500, n_test=5000, image_size=32, seed=0)
    parse_args('prepare.py', cfg)
    out, S, t0 = cfg['out_dir'], cfg['image_size'], time.time()
    os.makedirs(os.path.join(out, 'annotations'), exist_ok=True)
    tok = build_tokenizer(out, S)
    cats = [{'id': i + 1, 'name': n, 'supercategory': n.split()[1]}
            for i, n in enumerate(CATEGORIES)]
    karpathy = []
    # 2 cores; each image has its own seeded RNG, so the output does not depend on the pool
    with Pool(2) as pool:
        for split, sid in SPLITS.items():
            os.makedirs(os.path.join(out, f'{split}2017'), exist_ok=True)
            jobs = [(out, split, sid, i, S, cfg['seed']) for i in range(cfg[f'n_{split}'])]
            rows = pool.starmap(make_image, jobs, chunksize=256)
            images = [r[0] for r in rows]
            caps = [c for r in rows for c in r[1]]
            inst = [a for r in rows for a in r[2]]
            karpathy += [r[3] for r in rows if split != 'web']
            for kind, anns, extra in [('captions', caps, {}),
                                      ('instances', inst, {'categories': cats})]:
                with open(os.path.join(out, 'annotations', f'{kind}_{split}2017.json'), 'w') as f:
                    json.dump({'images': images, 'annotations': anns, **extra}, f)
    lengths = [len(tok(s['raw'])['input_ids']) for k in karpathy[:500] for s in k['sentences']]
    with open(os.path.join(out, 'annotations', 'dataset_shapes.json'), 'w') as f:
        json.dump({'images': karpathy, 'dataset': 'shapes'}, f)
    counts = ', '.join(f"{s} {cfg['n_' + s]}" for s in SPLITS)
    print(f"shapes world: {counts} images of {S}px, 5 captions each, "
          f"vocab {len(tok)} tokens, caption length <= {max(lengths)} tokens, "
          f"{time.time() - t0:.1f}s -> {out}")
