"""
COCO-style retrieval (CLIP_benchmark protocol, every caption kept) for the teacher straight from
its cache or for a student checkpoint, plus the LocCa decoder's ARef box accuracy; writes
eval.json.

    python eval.py --cache=cache/shapes/test          # teacher row -> cache/shapes/test/eval.json
    python eval.py --cache=cache/shapes/test --ckpt=out/shapes/a5 # student -> out/shapes/a5/eval.json
    python eval.py --cache=cache/coco-L/test --ckpt=out/a5 --device=cuda
    python eval.py --cache=cache/flickr30k-L/test --ckpt=out/a5 --device=cuda # zero-shot transfer
    # ImageNet val (WordNet-id folders): CLIP_benchmark's imagenet1k names and its 80 templates
    python eval.py --ckpt=out/a5 --zeroshot=/data/imagenet/val --device=cuda

Every R@k and top-1 carries a 95 % bootstrap interval over test images (BOOTSTRAP) in eval.json.

`from eval import retrieval_metrics, load_cache` has no side effects.
"""
import os, re, sys, json, time, hashlib, statistics
import torch
import torch.nn.functional as F

# what a cache is: teacher + processor + annotation files (content hashes, never paths), the
# settings, the teacher's own scale/bias and the pixel normalisation train.py uses, and the
# exact shard bytes
FINGERPRINT_KEYS = ('teacher_fingerprint', 'content', 'embed_dim', 'image_size', 'processor',
                    'split', 'dataset', 'counts', 'shards', 'logit_scale', 'logit_bias',
                    'mean', 'std')

def cache_fingerprint(manifest):
    return hashlib.sha256(
        json.dumps({k: manifest.get(k) for k in FINGERPRINT_KEYS}, sort_keys=True).encode()
    ).hexdigest()[:16]

def sha256(path): # hashlib reads the file in blocks: teacher weights of GBs stay out of memory
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()

def what_changed(old, new):
    """Two `content` records (cache_teacher.py: teacher / processor / annotations / settings
    hashes) -> what differs, in words, so a refusal says whether the teacher weights, the
    tokenizer, a caption file or a setting changed."""
    if not old or not new:
        return ('content hashes missing (written by an older version): '
                're-cache or start a new out_dir')
    out = [what for key, what in (('teacher', 'teacher weights/config'),
                                  ('processor', 'processor/tokenizer files'))
           if old.get(key) != new.get(key)]
    a, b = old.get('annotations', {}), new.get('annotations', {})
    out += [f"annotation file {f} "
            f"{'changed' if f in a and f in b else 'added' if f in b else 'removed'}"
            for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
    a, b = old.get('settings', {}), new.get('settings', {})
    out += [f"setting {k}: {a.get(k)!r} -> {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return '; '.join(out) or 'the shards (same teacher, annotations and settings)'

def replace_durably(tmp, path):
    """fsync the data, rename, fsync the directory: after a power loss `path` is the old or the
    new file, never a 0-byte one (a rename can reach the disk before the data does)."""
    fd = os.open(tmp, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

# safetensors dtype names -> (numpy dtype of the same width to map the bytes,
# torch dtype to view them as)
ST_DTYPES = {'U8': ('u1', torch.uint8), 'I8': ('i1', torch.int8),
             'I16': ('i2', torch.int16), 'I32': ('i4', torch.int32),
             'I64': ('i8', torch.int64), 'F16': ('i2', torch.float16),
             'BF16': ('i2', torch.bfloat16), 'F32': ('i4', torch.float32),
             'F64': ('i8', torch.float64), 'BOOL': ('u1', torch.bool)}

# -> {key: tensor backed by the file's pages (copy-on-write), nothing read yet}
def mmap_safetensors(path):
    import numpy as np
    with open(path, 'rb') as f:
        # safetensors: u64 header length, JSON header, then the data
        n = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(n))
    out = {}
    for k, h in header.items():
        if k == '__metadata__':
            continue
        begin, end = h['data_offsets']
        np_dtype, dtype = ST_DTYPES[h['dtype']]
        if end == begin: # numpy cannot map 0 bytes
            out[k] = torch.empty(h['shape'], dtype=dtype)
            continue
        # mode 'c': pages are shared with the page cache (and other ranks) until written;
        # nothing here writes
        count = (end - begin) // np.dtype(np_dtype).itemsize
        mm = np.memmap(path, dtype=np_dtype, mode='c', offset=8 + n + begin, shape=count)
        out[k] = torch.from_numpy(mm).view(dtype).view(h['shape'])
    return out

class Rows:
    """One key's rows over all shards, left in the memory maps: acts like torch.cat(parts) for
    len, .shape, x[i], x[idx], x[idx, v], x[mask], x[a:b], x[:, :L] (a view) and .split(n); only
    the rows asked for are read."""
    def __init__(self, parts):
        self.parts = parts
        n = torch.tensor([len(p) for p in parts])
        self.starts = torch.cumsum(n, 0) - n # (S,) global row of each shard's first row
        self.shape = torch.Size([int(n.sum()), *parts[0].shape[1:]])
        self.dtype = parts[0].dtype
    def __len__(self):
        return self.shape[0]
    def split(self, n): # lazily: each chunk is read when the loop reaches it
        return (self[i:i + n] for i in range(0, len(self), n))
    def __getitem__(self, key):
        key, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        columns = rest and all(isinstance(r, slice) for r in rest)
        # x[:, :L]: still mapped, nothing read
        if isinstance(key, slice) and key == slice(None) and columns:
            return Rows([p[(key, *rest)] for p in self.parts])
        if isinstance(key, int):
            return self[(torch.tensor([key % len(self)]), *rest)][0]
        if isinstance(key, slice):
            key = torch.arange(len(self))[key]
        key = torch.as_tensor(key)
        idx = key.nonzero().squeeze(1) if key.dtype == torch.bool else key.long() # (n,) global rows
        shard = torch.searchsorted(self.starts, idx, right=True) - 1 # (n,) vectorised shard lookup
        local = idx - self.starts[shard]
        sub = lambda m: [r[m] if torch.is_tensor(r) else r for r in rest] # x[idx, v]: v per row
        empty = idx[:0]
        tail = self.parts[0][(empty, *sub(empty))].shape[1:] # the row shape after the extra indexes
        out = torch.empty((len(idx), *tail), dtype=self.dtype)
        for s in shard.unique().tolist():
            m = (shard == s).nonzero().squeeze(1)
            out[m] = self.parts[s][(local[m], *sub(m))]
        return out

def load_cache(split_dir, verify=True, mmap=False):
    """-> (tensors concatenated over shards, manifest). Refuses incomplete or modified caches.
    mmap=True: per-row metadata (1-D: ids, prefixes) is read into memory, every larger key stays
    in the shard files as a Rows object, so a process holds only what it gathers and ranks on a
    node share the page cache. verify still reads each file once (sha256 through read(): the
    page cache fills, the process does not grow)."""
    from safetensors.torch import load_file
    path = os.path.join(split_dir, 'manifest.json')
    if not os.path.isfile(path):
        raise SystemExit(f"no manifest.json in {split_dir}: "
                         f"cache incomplete or not a cache (run cache_teacher.py)")
    try:
        man = json.load(open(path))
    # truncated or hand-edited: name the file instead of a JSONDecodeError traceback
    except ValueError as e:
        raise SystemExit(f"{path}: corrupt manifest ({e}); "
                         f"re-run cache_teacher.py for this split")
    if man.get('fingerprint') != cache_fingerprint(man):
        raise SystemExit(f"{path}: fingerprint mismatch (manifest edited?)")
    parts = []
    for s in man['shards']:
        f = os.path.join(split_dir, s['file'])
        if not os.path.isfile(f):
            raise SystemExit(f"{split_dir}: shard {s['file']} listed in the manifest is missing")
        if verify and sha256(f) != s['sha256']:
            raise SystemExit(f"{f}: checksum differs from {path} (shard corrupted or rewritten)")
        try:
            parts.append(mmap_safetensors(f) if mmap else load_file(f))
        except Exception as e: # verify=False on a truncated shard
            raise SystemExit(f"{f}: unreadable shard ({type(e).__name__}: {e})")
    if mmap:
        join = lambda k: (torch.cat([p[k] for p in parts]) if parts[0][k].dim() == 1
                          else Rows([p[k] for p in parts]))
        return {k: join(k) for k in parts[0]}, man
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, man

def check_no_leak(train_image_ids, eval_image_ids, what):
    n = len(set(train_image_ids.tolist()) & set(eval_image_ids.tolist()))
    if n:
        raise SystemExit(
            f"{what}: {n} of {len(eval_image_ids)} evaluation images overlap the training "
            f"images. Karpathy test images come from COCO 2014 val, most of which is inside "
            f"2017 train: train on Karpathy train+restval and evaluate on Karpathy test "
            f"(or train 2017 train, evaluate 2017 val)")

def id_space(manifest):
    """What a cache's image ids are: 'coco' (COCO image ids: the COCO reader, Karpathy's COCO
    file), 'flickr' (Flickr photo ids: Karpathy's Flickr30k / 8k files) or None (positions in a
    folder, tars or a caption file). Ids of two spaces name different images: never compared."""
    d = manifest['dataset']
    return (d.get('id_space') or 'coco') if d['reader'] in ('coco', 'karpathy') else None

def retrieval_metrics(image_embeds, text_embeds, text_image_index, chunk=1024):
    """image_embeds (N, D), text_embeds (M, D), text_image_index (M,) -> recall@{1,5,10} in
    percent. I→T: share of images with >= 1 of their captions in the top k of all M texts; T→I:
    share of the M captions whose image is in the top k (CLIP_benchmark zeroshot_retrieval.py,
    same numbers: test_smoke.py checks them against its evaluate)."""
    return recalls(*retrieval_ranks(image_embeds, text_embeds, text_image_index, chunk))

def recalls(rank_i, rank_t): # ranks of retrieval_ranks -> {i2t_r1, ..., t2i_r10, rsum} in %
    out = {}
    for k in (1, 5, 10):
        out[f'i2t_r{k}'] = 100.0 * (rank_i < k).float().mean().item()
        out[f't2i_r{k}'] = 100.0 * (rank_t < k).float().mean().item()
    out['rsum'] = sum(out.values())
    return out

@torch.no_grad()
def retrieval_ranks(image_embeds, text_embeds, text_image_index, chunk=1024):
    """-> rank_i (N,): per image, how many texts score above its best caption; rank_t (M,):
    per caption, how many images score above its own. Chunked: small memory at 5k x 25k. Exact
    ties (e.g. the same caption string on two images) count against the query, so rankings
    never depend on index order and a shared caption cannot score for both images
    (CLIP_benchmark's topk picks one arbitrarily; random float embeddings have no ties)."""
    # a diverged model must not score: NaN makes every comparison below false,
    # i.e. rank 0 = R@1 of 100 %
    for name, x in (('image', image_embeds), ('text', text_embeds)):
        if not torch.isfinite(x).all():
            raise SystemExit(
                f"retrieval_metrics: {int((~torch.isfinite(x)).any(1).sum())} of {len(x)} "
                f"{name} embeddings are non-finite (NaN/inf): the model diverged; "
                f"no score is computed")
    img, txt = F.normalize(image_embeds.float(), dim=-1), F.normalize(text_embeds.float(), dim=-1)
    for name, x in (('image', img), ('text', txt)):
        if len(x) > 1 and (x - x[0]).abs().max() <= 1e-6:
            raise SystemExit(f"retrieval_metrics: all {len(x)} {name} embeddings "
                             f"are identical: the model collapsed")
    idx = text_image_index.long()
    # T→I: rank of the true image for each caption = number of images scoring strictly higher
    rank_t = []
    for t, i in zip(txt.split(chunk), idx.split(chunk)):
        # (c, N); the true score is read from the same matrix, so rounding cannot break ties
        sim = t @ img.T
        own = sim.gather(1, i[:, None])
        other = torch.arange(len(img))[None] != i[:, None]
        # a tie counts against the query
        rank_t.append(((sim > own) | ((sim == own) & other)).sum(1))
    rank_t = torch.cat(rank_t)
    # I→T: best rank among an image's captions = number of texts scoring above its best caption
    rank_i = []
    for s in range(0, len(img), chunk):
        sim = img[s:s + chunk] @ txt.T # (c, M)
        own = idx[None] == torch.arange(s, min(s + chunk, len(img)))[:, None]
        best = sim.masked_fill(~own, -float('inf')).max(1, keepdim=True).values
        # identical captions of two images: no free hit
        rank_i.append(((sim > best) | ((sim == best) & ~own)).sum(1))
    return torch.cat(rank_i), rank_t

# 95 % percentile bootstrap over test images, 1000 resamples, fixed seed (stored in eval.json)
BOOTSTRAP = dict(resamples=1000, seed=0, level=95.0,
                 unit='test image, with all its captions; the gallery stays the full test set')

def bootstrap_interval(hits, counts, resamples=1000, seed=0, level=95.0, **_):
    """hits, counts (N, K): per test image and metric, its queries that hit and its queries
    (an image and all its captions are drawn together) -> (K, 2) [low, high] percentiles of
    100 * sum(hits) / sum(counts) over `resamples` draws of N images with replacement. Only
    which queries count is resampled: duplicated images in the gallery would tie themselves."""
    g = torch.Generator().manual_seed(seed)
    n = len(hits)
    stats = []
    for s in range(0, resamples, 100): # 100 resamples at a time: (100, N) in memory
        b = min(100, resamples - s)
        draws = torch.randint(0, n, (b, n), generator=g)
        times = torch.zeros(b, n, dtype=torch.float64) # (b, N) how often each image is drawn
        times.scatter_add_(1, draws, torch.ones(b, n, dtype=torch.float64))
        stats.append(100.0 * (times @ hits.double()) / (times @ counts.double()))
    tail = (100.0 - level) / 200
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    return torch.quantile(torch.cat(stats), q, dim=0).T

def retrieval_intervals(rank_i, rank_t, text_image_index):
    """Ranks of retrieval_ranks -> {metric: [low, high]} (BOOTSTRAP) for the six R@k."""
    idx = text_image_index.long()
    n = len(rank_i)
    per_image = lambda x: torch.zeros(n).index_add_(0, idx, x.float()) # (M,) -> (N,) sums
    names, hits, counts = [], [], []
    for k in (1, 5, 10):
        names += [f'i2t_r{k}', f't2i_r{k}']
        hits += [(rank_i < k).float(), per_image(rank_t < k)]
        counts += [torch.ones(n), per_image(torch.ones(len(idx)))]
    ci = bootstrap_interval(torch.stack(hits, 1), torch.stack(counts, 1), **BOOTSTRAP)
    return {m: ci[j].tolist() for j, m in enumerate(names)}

@torch.no_grad()
def embed_student(student, pixels, input_ids, device, batch_size=256):
    """uint8 pixels (N, 3, H, W), teacher ids (M, L) -> student embeddings (N, D), (M, D),
    float32 on CPU. Shared by eval.py and train.py's periodic val; .split() batches, so the
    last batch never reads past N."""
    img = torch.cat([student.encode_image(student.preprocess(p.to(device))).float().cpu()
                     for p in pixels.split(batch_size)])
    txt = torch.cat([student.encode_text(t.long().to(device)).float().cpu()
                     for t in input_ids.split(4 * batch_size)])
    return img, txt

@torch.no_grad()
def locca_metrics(student, decoder, data, tokenizer, device, max_images=500):
    """ARef box accuracy (greedy decode from 'aref: <region caption> :', IoU >= 0.5) and caption
    token accuracy (teacher-forced, autoregressive, target tokens only)."""
    from model import text_to_box, box_iou
    from loss import locca_inputs
    kept = torch.tensor(student.config.kept_ids)
    r = min(max_images, len(data['boxes']))
    img_row = torch.searchsorted(data['image_ids'], data['region_image_ids'][:r])
    enc = lambda rows: student.visual(student.preprocess(data['pixels'][rows].to(device)))[0]
    hits, n = 0, 0
    for s in range(0, r, 128):
        e = min(s + 128, r)
        ids = data['aref_ids'][s:e].long()
        # the prompt ends with the region caption's ' :' piece: everything before the box digits
        colon = tokenizer(' :', add_special_tokens=False)['input_ids'][-1]
        ends = [int((row == colon).nonzero()[0]) + 1 for row in ids]
        out = []
        # group rows with the same prompt length (no padding inside the prompt)
        for p in sorted(set(ends)):
            rows = [i for i, e in enumerate(ends) if e == p]
            seq = decoder.greedy_decode(student.map_ids(ids[rows, :p].to(device)),
                                        enc(img_row[s:e][rows]), 20)
            out += [(i, kept[seq[j, p:].cpu()]) for j, i in enumerate(rows)]
        for i, toks in out:
            box = text_to_box(tokenizer.decode(toks[(toks != 0) & (toks != 1)].tolist()))
            hits += (box is not None
                     and box_iou(torch.tensor([box]), data['boxes'][s + i][None]).item() >= 0.5)
            n += 1
    m = min(max_images, len(data['cap_ids']))
    seq, pre = data['cap_ids'][:m].long().to(device), data['cap_prefix'][:m].long().to(device)
    cap_row = torch.searchsorted(data['image_ids'], data['caption_image_ids'][:m])
    tgt = student.map_ids(seq)
    inp, causal = locca_inputs(tgt, pre, torch.zeros(m, dtype=torch.bool, device=device),
                               decoder.mask_id)
    pred = decoder.head(decoder(inp, enc(cap_row), causal)).argmax(-1)
    w = (seq != 0) & (torch.arange(seq.shape[1], device=device)[None] >= pre[:, None])
    return dict(aref_acc_iou50=100.0 * hits / max(n, 1), n_regions=n,
                cap_token_acc=100.0 * (pred == tgt)[w].float().mean().item())

# -----------------------------------------------------------------------------
# the student as a product: any model dir behind one interface (zero-shot, folder search, speed)
CONTEXT = 64 # SigLIP text length: ids right-padded to 64, as cache_teacher.py tokenises
# CLIP_benchmark 1.6.2's English class names and templates per dataset (provenance and sha256:
# data/clip_benchmark/README.md); imagenet1k: 1000 names in index order, the 80 OpenAI templates
CLIP_BENCHMARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'clip_benchmark')
WORDNET_ID = re.compile(r'n\d{8}') # an ImageNet val folder: n01440764 (tench)
IMAGE_EXT = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')

def pooled(out): # transformers 5.x returns BaseModelOutputWithPooling; 4.x returned the tensor
    return (out if torch.is_tensor(out) else out.pooler_output).float()

class Encoder:
    """A Student dir (our students, the demo teacher) or an HF SigLIP / SigLIP 2 dir or name:
    PIL images and strings in, unnormalised embeddings out, preprocessed as the cache does."""
    def __init__(self, path, device='cpu'):
        from transformers import AutoTokenizer, AutoProcessor
        cfg = os.path.join(path, 'config.json')
        if os.path.isdir(path) and not os.path.isfile(cfg):
            sys.exit(f"eval.py: no config.json in {path!r}: not a student / teacher directory")
        self.path, self.device = path, device
        self.tok = AutoTokenizer.from_pretrained(path)
        # NaFlex: the processor's saved values, not Siglip2Processor's class defaults
        self.improc = AutoProcessor.from_pretrained(path).image_processor
        self.is_student = os.path.isfile(cfg) and 'kept_ids' in json.load(open(cfg))
        # our towers pool the last (pad) position:
        # tokenise at the length they trained on (train.py's meta.json)
        meta = os.path.join(path, 'meta.json')
        self.length = read_json(meta).get('text_length', CONTEXT) if self.is_student else CONTEXT
        if self.is_student:
            from model import Student
            self.model = Student.from_pretrained(path).to(device)
        else:
            from transformers import AutoModel
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def prep(self, images): # PIL RGB images -> the model's inputs
        if not self.is_student:
            inputs = self.improc(images, return_tensors='pt')
            return {k: v.to(self.device) for k, v in inputs.items()}
        # the student: cache_teacher.py's resize (processor's filter), then its normalisation
        import numpy as np
        S = self.model.config.image_size
        rs = getattr(self.improc, 'resample', 2) # 2 = PIL bilinear
        px = np.stack([np.asarray(im.resize((S, S), rs)) for im in images]) # (B, S, S, 3)
        px = torch.from_numpy(px).permute(0, 3, 1, 2).to(self.device)
        return self.model.preprocess(px)

    @torch.no_grad()
    def images(self, inputs): # -> (B, D)
        if self.is_student:
            return self.model.encode_image(inputs).float()
        return pooled(self.model.get_image_features(**inputs))

    def tokenize(self, texts): # -> (M, L) int64, lowercased like the cache (lowercase=True)
        texts = [' '.join(t.lower().split()) for t in texts]
        enc = self.tok(texts, padding='max_length', max_length=self.length, truncation=True,
                       return_tensors='pt')
        return enc['input_ids']

    @torch.no_grad()
    def texts(self, ids): # (M, 64) -> (M, D)
        ids = ids.long().to(self.device)
        if self.is_student:
            return self.model.encode_text(ids).float()
        return pooled(self.model.get_text_features(input_ids=ids))

def embed_files(enc, paths, batch_size):
    """-> (N, D) normalised on CPU, indices of the files read (unreadable ones: named, skipped)."""
    from PIL import Image
    embs, keep = [], []
    for s in range(0, len(paths), batch_size):
        ims = []
        for i in range(s, min(s + batch_size, len(paths))):
            try:
                ims.append(Image.open(paths[i]).convert('RGB'))
                keep.append(i)
            except Exception as e:
                print(f"skipped {paths[i]}: {type(e).__name__}: {e}")
        if ims:
            embs.append(F.normalize(enc.images(enc.prep(ims)), dim=-1).cpu())
    if not embs:
        sys.exit(f"eval.py: none of {len(paths)} image files could be read")
    return torch.cat(embs), keep

def list_images(folder): # every image file under folder: sorted relative paths
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXT):
                out.append(os.path.relpath(os.path.join(root, f), folder))
    return out

def zeroshot_items(src):
    """ImageFolder dir (class = subfolder) or a COCO instances json (the images with exactly
    one object, class = its category; images in <root>/<split> for
    <root>/annotations/instances_<split>.json) -> (paths, labels, class names)."""
    if os.path.isdir(src):
        classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
        paths, labels = [], []
        for k, c in enumerate(classes):
            files = list_images(os.path.join(src, c))
            paths += [os.path.join(src, c, f) for f in files]
            labels += [k] * len(files)
        return paths, labels, [c.replace('_', ' ') for c in classes]
    if not (src.endswith('.json') and os.path.isfile(src)):
        sys.exit(f"eval.py: --zeroshot={src!r} is neither an ImageFolder dir nor an instances json")
    inst = json.load(open(src))
    cats = sorted(inst['categories'], key=lambda c: c['id'])
    row = {c['id']: k for k, c in enumerate(cats)}
    objects = {} # image id -> its category ids
    for a in inst['annotations']:
        objects.setdefault(a['image_id'], []).append(a['category_id'])
    split = os.path.basename(src)[len('instances_'):-len('.json')]
    root = os.path.dirname(os.path.dirname(os.path.abspath(src)))
    ims = sorted(inst['images'], key=lambda im: im['id'])
    ims = [im for im in ims if len(objects.get(im['id'], [])) == 1]
    paths = [os.path.join(root, split, im['file_name']) for im in ims]
    labels = [row[objects[im['id']][0]] for im in ims]
    return paths, labels, [c['name'] for c in cats]

def clip_benchmark_list(kind, dataset):
    """kind 'classnames' / 'zeroshot_classification_templates', a CLIP_benchmark dataset name
    -> its list from data/clip_benchmark/en_<kind>.json, or None if it has none."""
    lists = json.load(open(os.path.join(CLIP_BENCHMARK, f'en_{kind}.json')))
    return lists.get(dataset)

def imagenet_classnames(wnids):
    """ImageNet WordNet-id folders -> CLIP_benchmark's imagenet1k names: a wnid's index is its
    row in timm's imagenet_synsets.txt (the 1000 ids sorted, as ImageFolder orders them)."""
    import timm
    path = os.path.join(os.path.dirname(timm.__file__), 'data', '_info', 'imagenet_synsets.txt')
    index = {w: i for i, w in enumerate(open(path).read().split())}
    unknown = [w for w in wnids if w not in index]
    if unknown:
        return None
    names = clip_benchmark_list('classnames', 'imagenet1k')
    return [names[index[w]] for w in wnids]

def read_list(path): # a file of names or templates: a JSON list, or one a line
    if not os.path.isfile(path):
        sys.exit(f"eval.py: {path} not found")
    text = open(path).read()
    items = json.loads(text) if text.lstrip().startswith('[') else text.splitlines()
    return [x.strip() for x in items if x.strip()]

def zeroshot_classnames(classes, src, classnames='', dataset=''):
    """zeroshot_items' classes -> (the names put into the prompts, where they came from, the
    CLIP_benchmark dataset): --classnames (a file, one name a line in sorted folder order, or
    a CLIP_benchmark dataset name: its names in index order) first; ImageNet WordNet-id folders
    get CLIP_benchmark's imagenet1k names; other folder names are used as written unless they
    are ids (no letter, or an unknown WordNet id)."""
    if classnames:
        names = (clip_benchmark_list('classnames', classnames) if not os.path.exists(classnames)
                 else read_list(classnames))
        if names is None:
            sys.exit(f"eval.py: --classnames={classnames} is neither a file nor a dataset of "
                     f"{CLIP_BENCHMARK}/en_classnames.json")
        if len(names) != len(classes):
            sys.exit(f"eval.py: --classnames={classnames} has {len(names)} names, "
                     f"{src} has {len(classes)} classes")
        return names, classnames, dataset
    if not os.path.isdir(src): # instances json: COCO's category names
        return classes, 'categories', dataset
    if all(WORDNET_ID.fullmatch(c) for c in classes):
        names = imagenet_classnames(classes)
        if names:
            return names, 'imagenet1k (CLIP_benchmark) by WordNet id', dataset or 'imagenet1k'
    ids = [c for c in classes if WORDNET_ID.fullmatch(c) or not re.search('[a-zA-Z]', c)]
    if ids:
        sys.exit(f"eval.py: --zeroshot={src}: class folder {ids[0]!r} is an id, not a name "
                 f"(WordNet ids outside ImageNet-1k, numbers): pass --classnames=<file, "
                 f"one name a line in sorted folder order>")
    return classes, 'folder names', dataset

def zeroshot_templates(templates, dataset):
    """--templates ('a|b' or a file) or, if '', the CLIP_benchmark templates of dataset
    ('' = imagenet1k's 80, the default CLIP_benchmark uses for a dataset without its own)."""
    if not templates:
        temps = clip_benchmark_list('zeroshot_classification_templates', dataset or 'imagenet1k')
        if temps is None:
            sys.exit(f"eval.py: --zeroshot_dataset={dataset!r} has no templates in "
                     f"{CLIP_BENCHMARK}: pass --templates")
    else:
        temps = read_list(templates) if os.path.isfile(templates) else templates.split('|')
    bad = [t for t in temps if '{c}' not in t]
    if bad:
        sys.exit(f"eval.py: template {bad[0]!r} has no {{c}} for the class name")
    return temps

@torch.no_grad()
def zeroshot_weights(enc, classes, templates):
    """CLIP_benchmark's classifier: a class is the normalised mean of its normalised prompt
    embeddings -> (C, D) on CPU."""
    weights = []
    for c in classes:
        t = F.normalize(enc.texts(enc.tokenize([t.format(c=c) for t in templates])), dim=-1)
        weights.append(F.normalize(t.mean(0), dim=-1).cpu())
    return torch.stack(weights)

def zeroshot_hits(image_embeds, weights, labels):
    """(N, D) image embeddings, (C, D) classifier, (N,) labels -> (N, 2) top-1 / top-5 hits
    (top-5 is top-C below 5 classes); an image gets the class of highest cosine."""
    sim = F.normalize(image_embeds.float(), dim=-1) @ weights.T # (N, C)
    top = sim.topk(min(5, len(weights)), dim=1).indices # (N, 5)
    return torch.stack([top[:, 0] == labels, (top == labels[:, None]).any(1)], 1).float()

def zeroshot_classify(enc, paths, labels, classes, templates, batch_size):
    """Zero-shot classification as CLIP_benchmark computes it (test_smoke.py checks top-1/top-5
    against its evaluate) -> top1, top5 in % with bootstrap intervals over images."""
    weights = zeroshot_weights(enc, classes, templates)
    img, keep = embed_files(enc, paths, batch_size)
    hits = zeroshot_hits(img, weights, torch.tensor(labels)[keep])
    ci = bootstrap_interval(hits, torch.ones_like(hits), **BOOTSTRAP)
    return dict(top1=100.0 * hits[:, 0].mean().item(), top5=100.0 * hits[:, 1].mean().item(),
                intervals=dict(top1=ci[0].tolist(), top5=ci[1].tolist()), bootstrap=BOOTSTRAP,
                n_images=len(keep), n_classes=len(classes), templates=templates)

def model_hash(path): # config + weights bytes: a retrained checkpoint gets a new index
    h = hashlib.sha256(path.encode())
    files = sorted(os.listdir(path)) if os.path.isdir(path) else [] # an HF name: the name alone
    for f in files:
        if f == 'config.json' or (f.startswith('model') and f.endswith('.safetensors')):
            with open(os.path.join(path, f), 'rb') as fh:
                for b in iter(lambda: fh.read(1 << 20), b''):
                    h.update(b)
    return h.hexdigest()[:16]

def folder_index(enc, folder, batch_size):
    """Every image under folder -> (relative paths, (N, D) normalised embeddings), saved as
    index-<hash of folder + model>.safetensors in the model dir (in the folder for an HF name) and
    reused while the folder's file list, sizes, mtimes and the model's bytes are unchanged."""
    from safetensors.torch import save_file, safe_open
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        sys.exit(f"eval.py: --folder={folder!r} is not a directory")
    rel = list_images(folder)
    stat = [os.stat(os.path.join(folder, r)) for r in rel]
    state = [[r, s.st_size, s.st_mtime_ns] for r, s in zip(rel, stat)]
    sig = hashlib.sha256(json.dumps([state, model_hash(enc.path)]).encode()).hexdigest()[:16]
    where = enc.path if os.path.isdir(enc.path) else folder
    name = hashlib.sha256((folder + enc.path).encode()).hexdigest()[:12]
    path = os.path.join(where, f"index-{name}.safetensors")
    if os.path.isfile(path):
        with safe_open(path, 'pt') as f:
            meta = f.metadata()
            if meta.get('signature') == sig:
                paths = json.loads(meta['paths'])
                print(f"reusing index {path} ({len(paths)} images)")
                return paths, f.get_tensor('embeds')
    emb, keep = embed_files(enc, [os.path.join(folder, r) for r in rel], batch_size)
    paths = [rel[i] for i in keep]
    meta = dict(signature=sig, folder=folder, paths=json.dumps(paths))
    save_file({'embeds': emb.contiguous()}, path + '.tmp', metadata=meta)
    os.replace(path + '.tmp', path)
    print(f"indexed {len(paths)} images of {folder} -> {path}")
    return paths, emb

def export_and_check(enc, out_dir):
    """Student.export_onnx, then onnxruntime vs PyTorch at batch 5 (the graphs were traced at 2):
    random pixels, real prompts and a row of random ids over the whole teacher vocabulary (mostly
    UNK inside the graph) -> {graph: min cos, max |diff|}."""
    import onnxruntime as ort
    st = enc.model.cpu()
    paths = st.export_onnx(out_dir)
    g = torch.Generator().manual_seed(0)
    S = st.config.image_size
    px = torch.randint(0, 256, (5, 3, S, S), dtype=torch.uint8, generator=g)
    prompts = ['a red circle', 'a small blue square in the top left', 'a photo of a cat.', '']
    noise = torch.randint(0, len(enc.tok), (1, enc.length), generator=g)
    ids = torch.cat([enc.tokenize(prompts), noise])
    x = st.preprocess(px)
    feeds = dict(image=x, image_uint8=px, text=ids)
    with torch.no_grad():
        img, txt = st.encode_image(x), st.encode_text(ids)
    want = dict(image=img, image_uint8=img, text=txt)
    parity = {}
    for name, p in paths.items():
        sess = ort.InferenceSession(p, providers=['CPUExecutionProvider'])
        got = sess.run(None, {sess.get_inputs()[0].name: feeds[name].numpy()})[0]
        got = torch.from_numpy(got)
        cos = F.cosine_similarity(got, want[name], dim=-1).min().item()
        diff = (got - want[name]).abs().max().item()
        parity[name] = dict(min_cos=cos, max_abs_diff=diff, batch=len(got))
        print(f"onnx {name}: {p} | batch {len(got)}: min cos {cos:.7f}, max |diff| {diff:.2e}")
    info = dict(paths=paths, parity=parity, image_size=S, mean=st.config.image_mean,
                std=st.config.image_std, context_length=enc.length, padding='right', lowercase=True)
    write_json(os.path.join(out_dir, 'export.json'), info)
    st.to(enc.device)
    return parity

def throughput(fns, n, seconds, device):
    """{name: fn} each processing n items -> {name: items/s}: the median over rounds that call every
    fn in turn, so a load change on a shared machine hits the student and the teacher alike."""
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
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

def speed_vs_teacher(enc, cache, batch_size, seconds, device):
    """Images/s and texts/s of enc and of the cache's teacher (its manifest's 'teacher'): the same
    cached images and captions, inputs prepared beforehand, only the forward passes timed."""
    from PIL import Image
    data, man = load_cache(cache, verify=False)
    teacher = Encoder(man['teacher'], device)
    n = min(batch_size, len(data['pixels']))
    ims = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in data['pixels'][:n]]
    ids = data['input_ids'][:n]
    x_s, x_t = enc.prep(ims), teacher.prep(ims)
    fns = dict(img=lambda: enc.images(x_s), txt=lambda: enc.texts(ids),
               teacher_img=lambda: teacher.images(x_t), teacher_txt=lambda: teacher.texts(ids))
    r = throughput(fns, n, 4 * seconds, device)
    sp = {f'{k}_per_s': v for k, v in r.items()}
    sp.update(img_ratio=r['img'] / r['teacher_img'], txt_ratio=r['txt'] / r['teacher_txt'])
    sp.update(batch=n, device=device, threads=torch.get_num_threads(), teacher=man['teacher'],
              params=enc.n_params, teacher_params=teacher.n_params)
    return sp

def write_json(path, row):
    with open(path + '.tmp', 'w') as f:
        json.dump(row, f, indent=1)
    replace_durably(path + '.tmp', path)

def read_json(path):
    return json.load(open(path)) if os.path.isfile(path) else {}

if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    cache = 'cache/shapes/test' # a cache split dir written by cache_teacher.py
    ckpt = '' # a train.py out_dir; '' = evaluate the cached teacher embeddings
    out = '' # '' = <ckpt>/eval.json, or <cache>/eval.json for the teacher
    device = 'cpu'
    batch_size = 256
    locca = True # also evaluate the LocCa decoder when the checkpoint has one
    max_locca = 500
    # the student as a product (these replace the retrieval eval; --ckpt may be an HF SigLIP)
    export_onnx = False # <ckpt>/onnx/{image,image_uint8,text}.onnx, checked with onnxruntime
    zeroshot = '' # ImageFolder dir or COCO instances json -> top-1/top-5 into eval.json
    # CLIP_benchmark dataset name (data/clip_benchmark): its templates; '' = imagenet1k's 80
    # (ImageNet's WordNet-id folders: their imagenet1k names)
    zeroshot_dataset = ''
    templates = '' # '|'-separated prompts with {c}, or a file of them; '' = zeroshot_dataset's
    # a file, one class name a line in sorted folder order, or a CLIP_benchmark dataset name
    classnames = '' # '' = the folder names (ImageNet's WordNet ids: imagenet1k's names)
    speed = False # images/s, texts/s of --ckpt and of --cache's teacher (its manifest), one run
    speed_seconds = 2.0 # timing budget per tower (rounds alternate student and teacher)
    folder = '' # image folder to search: embedded once, index cached in the model dir
    query = '' # text query for --folder
    query_image = '' # image query for --folder
    topk = 5
    config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    # -----------------------------------------------------------------------------
    # product modes: export, zero-shot, speed, folder search (combinable; no retrieval eval)
    if export_onnx or zeroshot or speed or folder:
        if not ckpt:
            sys.exit("eval.py: --export_onnx / --zeroshot / --speed / --folder need --ckpt")
        enc = Encoder(ckpt, device)
        out = out or os.path.join(ckpt, 'eval.json')
        run = os.path.basename(os.path.normpath(ckpt))
        if export_onnx and not enc.is_student:
            sys.exit(f"eval.py: --export_onnx exports a Student; {ckpt} is an HF model")
        if export_onnx:
            parity = export_and_check(enc, os.path.join(ckpt, 'onnx'))
            if min(v['min_cos'] for v in parity.values()) < 0.9999:
                sys.exit("eval.py: the ONNX graphs differ from PyTorch (cos < 0.9999)")
        if zeroshot:
            paths, labels, classes = zeroshot_items(zeroshot)
            classes, names_from, dataset = zeroshot_classnames(classes, zeroshot, classnames,
                                                               zeroshot_dataset)
            temps = zeroshot_templates(templates, dataset)
            if not paths:
                sys.exit(f"eval.py: no images to classify in {zeroshot}")
            # a word the tokenizer can't spell makes every class's prompts alike: refuse early
            unk = enc.tok.unk_token_id
            for t in temps:
                ids = enc.tokenize([t.format(c=c) for c in classes])
                if unk is not None and (ids == unk).any():
                    sys.exit(f"eval.py: template {t!r} tokenizes to <unk> with {ckpt}'s "
                             f"tokenizer: pass --templates")
            zs = zeroshot_classify(enc, paths, labels, classes, temps, batch_size)
            zs.update(source=zeroshot, dataset=dataset, classnames=names_from)
            lo, hi = zs['intervals']['top1']
            row = read_json(out)
            row.update(zeroshot=zs, run=row.get('run', run))
            write_json(out, row)
            print(f"{run}: zero-shot on {zeroshot}: {zs['n_images']} images, "
                  f"{zs['n_classes']} classes, {len(temps)} templates | "
                  f"top-1 {zs['top1']:.2f} [{lo:.2f}, {hi:.2f}] "
                  f"top-5 {zs['top5']:.2f} -> {out}")
        if speed:
            sp = speed_vs_teacher(enc, cache, batch_size, speed_seconds, device)
            row = read_json(out)
            row.update(speed=sp, run=row.get('run', run))
            write_json(out, row)
            print(f"{run}: {sp['img_per_s']:.0f} img/s, {sp['txt_per_s']:.0f} txt/s | "
                  f"teacher {sp['teacher']}: {sp['teacher_img_per_s']:.0f} img/s, "
                  f"{sp['teacher_txt_per_s']:.0f} txt/s | student/teacher "
                  f"x{sp['img_ratio']:.2f} images, x{sp['txt_ratio']:.2f} texts "
                  f"(batch {sp['batch']}, {device}, {sp['threads']} threads) -> {out}")
        if folder:
            paths, emb = folder_index(enc, folder, batch_size)
            if query_image:
                from PIL import Image
                q = enc.images(enc.prep([Image.open(query_image).convert('RGB')]))
            elif query:
                q = enc.texts(enc.tokenize([query]))
            if query or query_image:
                scores = (F.normalize(q.cpu(), dim=-1) @ emb.T)[0]
                top = scores.topk(min(topk, len(paths)))
                print(f"top {len(top.indices)} of {len(paths)} for {query_image or repr(query)}:")
                for s, i in zip(top.values.tolist(), top.indices.tolist()):
                    print(f"{s:8.4f}  {os.path.join(folder, paths[i])}")
        sys.exit(0)
    data, man = load_cache(cache, mmap=True) # pixels are read batch by batch
    index = torch.searchsorted(data['image_ids'], data['caption_image_ids'])
    # eval.json keeps one row per eval set under evals['<dataset>/<split>'] (COCO and
    # Flickr30k side by side); the run's own dataset's row is also its top level
    dataset = man['dataset']['name']
    row = dict(split=man['split'], dataset=dataset, cache=cache,
               n_images=len(data['image_ids']), n_captions=len(index),
               fingerprint=man['fingerprint'], bootstrap=BOOTSTRAP)
    in_domain = True
    if not ckpt:
        if 'image_embeds' not in data:
            sys.exit(f"eval.py: {cache} holds no teacher embeddings "
                     f"(cached with teacher=none): pass --ckpt")
        ranks = retrieval_ranks(data['image_embeds'][:], data['text_embeds'][:], index)
        row.update(model='teacher', run='teacher', teacher=man['teacher'], metrics=recalls(*ranks),
                   intervals=retrieval_intervals(*ranks, index),
                   # {image, total} counted at cache time (None: older caches)
                   params=man.get('teacher_params'))
        out = out or os.path.join(cache, 'eval.json')
    else:
        from model import Student, LoccaDecoder
        missing = [f for f in ('meta.json', 'config.json', 'model.safetensors')
                   if not os.path.isfile(os.path.join(ckpt, f))]
        if missing:
            sys.exit(f"eval.py: {ckpt} is not a finished train.py out_dir: "
                     f"missing {', '.join(missing)}")
        meta = json.load(open(os.path.join(ckpt, 'meta.json')))
        if meta['teacher_fingerprint'] != man['teacher_fingerprint']:
            sys.exit(f"eval.py: {ckpt} was trained on a cache of another teacher/processor "
                     f"than {cache}")
        from safetensors import safe_open
        train_dir = meta['train_cache']
        if not os.path.isfile(os.path.join(train_dir, 'manifest.json')):
            sys.exit(f"eval.py: {train_dir} (the training cache in {ckpt}/meta.json) is gone: "
                     f"cannot check train/test overlap")
        train_man = json.load(open(os.path.join(train_dir, 'manifest.json')))
        train_ids = torch.cat(
            [safe_open(os.path.join(train_dir, s['file']), 'pt').get_tensor('image_ids')
             for s in train_man['shards']])
        in_domain = train_man['dataset']['name'] == dataset
        spaces = [id_space(train_man), id_space(man)]
        if in_domain or (spaces[0] is not None and spaces[0] == spaces[1]):
            check_no_leak(train_ids, data['image_ids'],
                          f'{ckpt} (trained on {train_dir}) vs {cache}')
        else: # e.g. COCO ids vs Flickr photo ids: equal numbers, different images
            what = [f"{s} ids" if s else 'positions' for s in spaces]
            print(f"leak check skipped: {train_dir} holds {what[0]}, {cache} {what[1]} "
                  f"(different datasets: Flickr30k and COCO are disjoint)")
        # the checkpoint scored: report.py refuses this eval.json
        # once the run's model.safetensors has changed
        row['checkpoint'] = dict(iter_num=meta['iter_num'],
                                 model_sha256=sha256(os.path.join(ckpt, 'model.safetensors')))
        student = Student.from_pretrained(ckpt).to(device)
        img, txt = embed_student(student, data['pixels'], data['input_ids'], device, batch_size)
        ranks = retrieval_ranks(img, txt, index)
        row.update(model='student', run=os.path.basename(os.path.normpath(ckpt)),
                   metrics=recalls(*ranks), intervals=retrieval_intervals(*ranks, index),
                   params=dict(total=student.num_params(),
                               without_token_table=student.num_params(token_table=False)))
        if locca and os.path.isfile(os.path.join(ckpt, 'decoder.safetensors')):
            from transformers import AutoTokenizer
            decoder = LoccaDecoder.from_pretrained(ckpt).to(device)
            row['locca'] = locca_metrics(student, decoder, data,
                                         AutoTokenizer.from_pretrained(ckpt), device, max_locca)
        out = out or os.path.join(ckpt, 'eval.json')
    old = read_json(out)
    evals = {**old.get('evals', {}), f"{dataset}/{man['split']}": row}
    # the product modes' fields and the other eval sets survive a new retrieval eval
    keep = {k: v for k, v in old.items() if k in ('zeroshot', 'speed') or not in_domain}
    write_json(out, {**keep, **(row if in_domain else {}), 'evals': evals})
    m = row['metrics']
    print(f"{row['run']}: {man['split']} {row['n_images']} images / {row['n_captions']} captions "
          f"| I→T R@1 {m['i2t_r1']:.2f} R@5 {m['i2t_r5']:.2f} R@10 {m['i2t_r10']:.2f} "
          f"| T→I R@1 {m['t2i_r1']:.2f} R@5 {m['t2i_r5']:.2f} R@10 {m['t2i_r10']:.2f}"
          + (f" | ARef acc@0.5 {row['locca']['aref_acc_iou50']:.1f}" if 'locca' in row else '')
          + f" -> {out}")
