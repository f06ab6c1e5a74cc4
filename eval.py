"""
COCO-style retrieval (CLIP_benchmark protocol, every caption kept) for the teacher straight from its cache
or for a student checkpoint, plus the LocCa decoder's ARef box accuracy; writes eval.json.

    python eval.py --cache=cache/shapes/test                      # teacher row -> cache/shapes/test/eval.json
    python eval.py --cache=cache/shapes/test --ckpt=out/shapes/a5 # student -> out/shapes/a5/eval.json
    python eval.py --cache=cache/coco-L/test --ckpt=out/a5 --device=cuda

`from eval import retrieval_metrics, load_cache` has no side effects.
"""
import os, sys, json, hashlib
import torch
import torch.nn.functional as F

FINGERPRINT_KEYS = ('teacher', 'embed_dim', 'image_size', 'processor', 'split', 'dataset', 'counts', 'shards')

def cache_fingerprint(manifest): # what a cache is: teacher, preprocessing, data, and the exact shard bytes
    return hashlib.sha256(json.dumps({k: manifest[k] for k in FINGERPRINT_KEYS}, sort_keys=True).encode()).hexdigest()[:16]

# safetensors dtype names -> (numpy dtype of the same width to map the bytes, torch dtype to view them as)
ST_DTYPES = {'U8': ('u1', torch.uint8), 'I8': ('i1', torch.int8),
             'I16': ('i2', torch.int16), 'I32': ('i4', torch.int32),
             'I64': ('i8', torch.int64), 'F16': ('i2', torch.float16),
             'BF16': ('i2', torch.bfloat16), 'F32': ('i4', torch.float32),
             'F64': ('i8', torch.float64), 'BOOL': ('u1', torch.bool)}

def mmap_safetensors(path): # -> {key: tensor backed by the file's pages (copy-on-write), nothing read yet}
    import numpy as np
    with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little') # safetensors: u64 header length, JSON header, then the data
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
        # mode 'c': pages are shared with the page cache (and other ranks) until written; nothing here writes
        count = (end - begin) // np.dtype(np_dtype).itemsize
        mm = np.memmap(path, dtype=np_dtype, mode='c', offset=8 + n + begin, shape=count)
        out[k] = torch.from_numpy(mm).view(dtype).view(h['shape'])
    return out

class Rows:
    """One key's rows over all shards, left in the memory maps: acts like torch.cat(parts) for len, .shape,
    x[i], x[idx], x[idx, v], x[mask], x[a:b], x[:, :L] (a view) and .split(n); only the rows asked for are read."""
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
        if isinstance(key, slice) and key == slice(None) and columns: # x[:, :L]: still mapped, nothing read
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
    mmap=True: per-row metadata (1-D: ids, prefixes) is read into memory, every larger key stays in the shard
    files as a Rows object, so a process holds only what it gathers and ranks on a node share the page cache.
    verify still reads each file once (sha256 through read(): the page cache fills, the process does not grow)."""
    from safetensors.torch import load_file
    path = os.path.join(split_dir, 'manifest.json')
    if not os.path.isfile(path):
        raise SystemExit(f"no manifest.json in {split_dir}: cache incomplete or not a cache (run cache_teacher.py)")
    man = json.load(open(path))
    if man.get('fingerprint') != cache_fingerprint(man):
        raise SystemExit(f"{path}: fingerprint mismatch (manifest edited?)")
    parts = []
    for s in man['shards']:
        f = os.path.join(split_dir, s['file'])
        if not os.path.isfile(f):
            raise SystemExit(f"{split_dir}: shard {s['file']} listed in the manifest is missing")
        if verify:
            h = hashlib.sha256()
            with open(f, 'rb') as fh:
                for b in iter(lambda: fh.read(1 << 20), b''):
                    h.update(b)
            if h.hexdigest() != s['sha256']:
                raise SystemExit(f"{f}: checksum differs from {path} (shard corrupted or rewritten)")
        parts.append(mmap_safetensors(f) if mmap else load_file(f))
    if mmap:
        join = lambda k: torch.cat([p[k] for p in parts]) if parts[0][k].dim() == 1 else Rows([p[k] for p in parts])
        return {k: join(k) for k in parts[0]}, man
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, man

def check_no_leak(train_image_ids, eval_image_ids, what):
    n = len(set(train_image_ids.tolist()) & set(eval_image_ids.tolist()))
    if n:
        raise SystemExit(f"{what}: {n} of {len(eval_image_ids)} evaluation images overlap the training images. Karpathy test "
                         f"images come from COCO 2014 val, most of which is inside 2017 train: train on Karpathy "
                         f"train+restval and evaluate on Karpathy test (or train 2017 train, evaluate 2017 val)")

@torch.no_grad()
def retrieval_metrics(image_embeds, text_embeds, text_image_index, chunk=1024):
    """image_embeds (N, D), text_embeds (M, D), text_image_index (M,) -> recall@{1,5,10} in percent.
    I→T: share of images with >= 1 of their captions in the top k of all M texts; T→I: share of the M captions
    whose image is in the top k (CLIP_benchmark zeroshot_retrieval.py; ANCHORS §5). Chunked: small memory at 5k x 25k.
    Exact ties (e.g. the same caption string on two images) count against the query, so rankings never depend on
    index order and a shared caption cannot score for both images (topk would pick one arbitrarily)."""
    img, txt = F.normalize(image_embeds.float(), dim=-1), F.normalize(text_embeds.float(), dim=-1)
    idx = text_image_index.long()
    out = {}
    # T→I: rank of the true image for each caption = number of images scoring strictly higher
    rank_t = []
    for t, i in zip(txt.split(chunk), idx.split(chunk)):
        sim = t @ img.T # (c, N); the true score is read from the same matrix, so rounding cannot break ties
        own = sim.gather(1, i[:, None])
        other = torch.arange(len(img))[None] != i[:, None]
        rank_t.append(((sim > own) | ((sim == own) & other)).sum(1)) # a tie counts against the query
    rank_t = torch.cat(rank_t)
    # I→T: best rank among an image's captions = number of texts scoring above its best caption
    rank_i = []
    for s in range(0, len(img), chunk):
        sim = img[s:s + chunk] @ txt.T # (c, M)
        own = idx[None] == torch.arange(s, min(s + chunk, len(img)))[:, None]
        best = sim.masked_fill(~own, -float('inf')).max(1, keepdim=True).values
        rank_i.append(((sim > best) | ((sim == best) & ~own)).sum(1)) # identical captions of two images: no free hit
    rank_i = torch.cat(rank_i)
    for k in (1, 5, 10):
        out[f'i2t_r{k}'] = 100.0 * (rank_i < k).float().mean().item()
        out[f't2i_r{k}'] = 100.0 * (rank_t < k).float().mean().item()
    out['rsum'] = sum(out.values())
    return out

@torch.no_grad()
def embed_student(student, pixels, input_ids, device, batch_size=256):
    """uint8 pixels (N, 3, H, W), teacher ids (M, L) -> student embeddings (N, D), (M, D), float32 on CPU.
    Shared by eval.py and train.py's periodic val; .split() batches, so the last batch never reads past N."""
    img = torch.cat([student.encode_image(student.preprocess(p.to(device))).float().cpu() for p in pixels.split(batch_size)])
    txt = torch.cat([student.encode_text(t.long().to(device)).float().cpu() for t in input_ids.split(4 * batch_size)])
    return img, txt

@torch.no_grad()
def locca_metrics(student, decoder, data, tokenizer, device, max_images=500):
    """ARef box accuracy (greedy decode from 'aref: <region caption> :', IoU >= 0.5) and caption token accuracy
    (teacher-forced, autoregressive, target tokens only)."""
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
        for p in sorted(set(ends)): # group rows with the same prompt length (no padding inside the prompt)
            rows = [i for i, e in enumerate(ends) if e == p]
            seq = decoder.greedy_decode(student.map_ids(ids[rows, :p].to(device)), enc(img_row[s:e][rows]), 20)
            out += [(i, kept[seq[j, p:].cpu()]) for j, i in enumerate(rows)]
        for i, toks in out:
            box = text_to_box(tokenizer.decode(toks[(toks != 0) & (toks != 1)].tolist()))
            hits += box is not None and box_iou(torch.tensor([box]), data['boxes'][s + i][None]).item() >= 0.5
            n += 1
    m = min(max_images, len(data['cap_ids']))
    seq, pre = data['cap_ids'][:m].long().to(device), data['cap_prefix'][:m].long().to(device)
    cap_row = torch.searchsorted(data['image_ids'], data['caption_image_ids'][:m])
    tgt = student.map_ids(seq)
    inp, causal = locca_inputs(tgt, pre, torch.zeros(m, dtype=torch.bool, device=device), decoder.mask_id)
    pred = decoder.head(decoder(inp, enc(cap_row), causal)).argmax(-1)
    w = (seq != 0) & (torch.arange(seq.shape[1], device=device)[None] >= pre[:, None])
    return dict(aref_acc_iou50=100.0 * hits / max(n, 1), n_regions=n, cap_token_acc=100.0 * (pred == tgt)[w].float().mean().item())

if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    cache = 'cache/shapes/test' # a cache split dir written by cache_teacher.py
    ckpt = '' # a train.py out_dir; '' = evaluate the cached teacher embeddings
    out = '' # '' = <ckpt>/eval.json, or <cache>/eval.json for the teacher
    device = 'cpu'
    batch_size = 256
    locca = True # also evaluate the LocCa decoder when the checkpoint has one
    max_locca = 500
    config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    # -----------------------------------------------------------------------------
    data, man = load_cache(cache, mmap=True) # pixels are read batch by batch
    index = torch.searchsorted(data['image_ids'], data['caption_image_ids'])
    row = dict(split=man['split'], cache=cache, n_images=len(data['image_ids']), n_captions=len(index), fingerprint=man['fingerprint'])
    if not ckpt:
        if 'image_embeds' not in data:
            sys.exit(f"eval.py: {cache} holds no teacher embeddings (cached with teacher=none): pass --ckpt")
        metrics = retrieval_metrics(data['image_embeds'][:], data['text_embeds'][:], index)
        row.update(model='teacher', run='teacher', teacher=man['teacher'], metrics=metrics,
                   params=man.get('teacher_params')) # {image, total} counted at cache time (None: older caches)
        out = out or os.path.join(cache, 'eval.json')
    else:
        from model import Student, LoccaDecoder
        meta = json.load(open(os.path.join(ckpt, 'meta.json')))
        if meta['teacher_fingerprint'] != man['teacher_fingerprint']:
            sys.exit(f"eval.py: {ckpt} was trained on a cache of another teacher/processor than {cache}")
        from safetensors import safe_open
        train_dir = meta['train_cache']
        train_ids = torch.cat([safe_open(os.path.join(train_dir, s['file']), 'pt').get_tensor('image_ids')
                               for s in json.load(open(os.path.join(train_dir, 'manifest.json')))['shards']])
        check_no_leak(train_ids, data['image_ids'], f'{ckpt} (trained on {train_dir}) vs {cache}')
        student = Student.from_pretrained(ckpt).to(device)
        img, txt = embed_student(student, data['pixels'], data['input_ids'], device, batch_size)
        metrics = retrieval_metrics(img, txt, index)
        row.update(model='student', run=os.path.basename(os.path.normpath(ckpt)), metrics=metrics,
                   params=dict(total=student.num_params(), without_token_table=student.num_params(token_table=False)))
        if locca and os.path.isfile(os.path.join(ckpt, 'decoder.safetensors')):
            from transformers import AutoTokenizer
            decoder = LoccaDecoder.from_pretrained(ckpt).to(device)
            row['locca'] = locca_metrics(student, decoder, data, AutoTokenizer.from_pretrained(ckpt), device, max_locca)
        out = out or os.path.join(ckpt, 'eval.json')
    with open(out + '.tmp', 'w') as f:
        json.dump(row, f, indent=1)
    os.replace(out + '.tmp', out)
    m = row['metrics']
    print(f"{row['run']}: {man['split']} {row['n_images']} images / {row['n_captions']} captions | I→T R@1 {m['i2t_r1']:.2f} "
          f"R@5 {m['i2t_r5']:.2f} R@10 {m['i2t_r10']:.2f} | T→I R@1 {m['t2i_r1']:.2f} R@5 {m['t2i_r5']:.2f} R@10 {m['t2i_r10']:.2f}"
          + (f" | ARef acc@0.5 {row['locca']['aref_acc_iou50']:.1f}" if 'locca' in row else '') + f" -> {out}")
