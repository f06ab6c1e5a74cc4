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

# what a cache is: teacher + processor + annotation files (content hashes, never paths), the settings, the
# teacher's own scale/bias and the pixel normalisation train.py uses, and the exact shard bytes
FINGERPRINT_KEYS = ('teacher_fingerprint', 'content', 'embed_dim', 'image_size', 'processor', 'split', 'dataset', 'counts',
                    'shards', 'logit_scale', 'logit_bias', 'mean', 'std')

def cache_fingerprint(manifest):
    return hashlib.sha256(json.dumps({k: manifest.get(k) for k in FINGERPRINT_KEYS}, sort_keys=True).encode()).hexdigest()[:16]

def sha256(path): # hashlib reads the file in blocks: teacher weights of GBs stay out of memory
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()

def what_changed(old, new):
    """Two `content` records (cache_teacher.py: teacher / processor / annotations / settings hashes) -> what differs,
    in words, so a refusal says whether the teacher weights, the tokenizer, a caption file or a setting changed."""
    if not old or not new:
        return 'content hashes missing (written by an older version): re-cache or start a new out_dir'
    out = [what for key, what in (('teacher', 'teacher weights/config'), ('processor', 'processor/tokenizer files'))
           if old.get(key) != new.get(key)]
    a, b = old.get('annotations', {}), new.get('annotations', {})
    out += [f"annotation file {f} {'changed' if f in a and f in b else 'added' if f in b else 'removed'}"
            for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
    a, b = old.get('settings', {}), new.get('settings', {})
    out += [f"setting {k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return '; '.join(out) or 'the shards (same teacher, annotations and settings)'

def replace_durably(tmp, path):
    """fsync the data, rename, fsync the directory: after a power loss `path` is the old or the new file, never
    a 0-byte one (a rename can reach the disk before the data does)."""
    fd = os.open(tmp, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

def load_cache(split_dir, verify=True):
    """-> (tensors concatenated over shards, manifest). Refuses incomplete or modified caches."""
    from safetensors.torch import load_file
    path = os.path.join(split_dir, 'manifest.json')
    if not os.path.isfile(path):
        raise SystemExit(f"no manifest.json in {split_dir}: cache incomplete or not a cache (run cache_teacher.py)")
    try:
        man = json.load(open(path))
    except ValueError as e: # truncated or hand-edited: name the file instead of a JSONDecodeError traceback
        raise SystemExit(f"{path}: corrupt manifest ({e}); re-run cache_teacher.py for this split")
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
            parts.append(load_file(f))
        except Exception as e: # verify=False on a truncated shard
            raise SystemExit(f"{f}: unreadable shard ({type(e).__name__}: {e})")
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
    # a diverged model must not score: NaN makes every comparison below false, i.e. rank 0 = R@1 of 100 %
    for name, x in (('image', image_embeds), ('text', text_embeds)):
        if not torch.isfinite(x).all():
            raise SystemExit(f"retrieval_metrics: {int((~torch.isfinite(x)).any(1).sum())} of {len(x)} {name} embeddings "
                             f"are non-finite (NaN/inf): the model diverged; no score is computed")
    img, txt = F.normalize(image_embeds.float(), dim=-1), F.normalize(text_embeds.float(), dim=-1)
    for name, x in (('image', img), ('text', txt)):
        if len(x) > 1 and (x - x[0]).abs().max() <= 1e-6:
            raise SystemExit(f"retrieval_metrics: all {len(x)} {name} embeddings are identical: the model collapsed")
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
    data, man = load_cache(cache)
    index = torch.searchsorted(data['image_ids'], data['caption_image_ids'])
    row = dict(split=man['split'], cache=cache, n_images=len(data['image_ids']), n_captions=len(index), fingerprint=man['fingerprint'])
    if not ckpt:
        if 'image_embeds' not in data:
            sys.exit(f"eval.py: {cache} holds no teacher embeddings (cached with teacher=none): pass --ckpt")
        metrics = retrieval_metrics(data['image_embeds'], data['text_embeds'], index)
        row.update(model='teacher', run='teacher', teacher=man['teacher'], metrics=metrics)
        out = out or os.path.join(cache, 'eval.json')
    else:
        from model import Student, LoccaDecoder
        missing = [f for f in ('meta.json', 'config.json', 'model.safetensors') if not os.path.isfile(os.path.join(ckpt, f))]
        if missing:
            sys.exit(f"eval.py: {ckpt} is not a finished train.py out_dir: missing {', '.join(missing)}")
        meta = json.load(open(os.path.join(ckpt, 'meta.json')))
        if meta['teacher_fingerprint'] != man['teacher_fingerprint']:
            sys.exit(f"eval.py: {ckpt} was trained on a cache of another teacher/processor than {cache}")
        from safetensors import safe_open
        train_dir = meta['train_cache']
        if not os.path.isfile(os.path.join(train_dir, 'manifest.json')):
            sys.exit(f"eval.py: {train_dir} (the training cache in {ckpt}/meta.json) is gone: cannot check train/test overlap")
        train_ids = torch.cat([safe_open(os.path.join(train_dir, s['file']), 'pt').get_tensor('image_ids')
                               for s in json.load(open(os.path.join(train_dir, 'manifest.json')))['shards']])
        check_no_leak(train_ids, data['image_ids'], f'{ckpt} (trained on {train_dir}) vs {cache}')
        # the checkpoint scored: report.py refuses this eval.json once the run's model.safetensors has changed
        row['checkpoint'] = dict(iter_num=meta['iter_num'], model_sha256=sha256(os.path.join(ckpt, 'model.safetensors')))
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
    replace_durably(out + '.tmp', out)
    m = row['metrics']
    print(f"{row['run']}: {man['split']} {row['n_images']} images / {row['n_captions']} captions | I→T R@1 {m['i2t_r1']:.2f} "
          f"R@5 {m['i2t_r5']:.2f} R@10 {m['i2t_r10']:.2f} | T→I R@1 {m['t2i_r1']:.2f} R@5 {m['t2i_r5']:.2f} R@10 {m['t2i_r10']:.2f}"
          + (f" | ARef acc@0.5 {row['locca']['aref_acc_iou50']:.1f}" if 'locca' in row else '') + f" -> {out}")
