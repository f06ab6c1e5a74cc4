"""
Scoring: COCO-style retrieval (CLIP_benchmark protocol, every caption kept) for the teacher
straight from its cache or for a student checkpoint, the LocCa decoder's ARef box accuracy, a
linear probe on the frozen patch tokens, and zero-shot classification (CLIP_benchmark's names
and templates). Every score goes into one eval.json per model.

    python eval.py --cache=cache/shapes/test          # teacher row -> cache/shapes/test/eval.json
    # student -> out/shapes/a5/eval.json
    python eval.py --cache=cache/shapes/test --ckpt=out/shapes/a5
    python eval.py --cache=cache/coco-L/test --ckpt=out/a5 --device=cuda
    python eval.py --cache=cache/flickr30k-L/test --ckpt=out/a5 --device=cuda # zero-shot transfer
    # + a linear probe on the frozen patch tokens: the object under each patch (fitted on val)
    python eval.py --cache=cache/shapes-terms/test --ckpt=out/shapes/terms-complete \
        --dense_probe=cache/shapes-terms/val
    # ImageNet val (WordNet-id folders): CLIP_benchmark's imagenet1k names and its 80 templates
    python eval.py --ckpt=out/a5 --zeroshot=/data/imagenet/val --device=cuda
    # a CLIP_benchmark dataset's names (index order) and templates
    python eval.py --ckpt=out/a5 --zeroshot=/data/pets/test --zeroshot_dataset=pets \
        --classnames=pets
    # an HF SigLIP's zero-shot: a hub name has no dir of its own, so --out says where
    python eval.py --ckpt=google/siglip2-base-patch16-224 --zeroshot=/data/imagenet/val \
        --out=out/b16.json

Every R@k and top-1 carries a 95 % bootstrap interval over test images (BOOTSTRAP) in eval.json.
Speed (img/s, txt/s vs the teacher) is bench.py --speed; folder search and ONNX export are
student.py.

`from eval import retrieval_metrics` has no side effects. The cache format (open_cache, ...) lives
in cache.py; the model wrapper (Teacher) and the zero-shot sources' reader (read_zeroshot) in
cache_teacher.py.
"""
import os, sys, math
import torch
import torch.nn.functional as F
from cache import (open_cache, PAIRED, sha256, check_same_teacher, read_json, write_json,
                   check_contents, check_save, captions, check_captions)
from cache_teacher import Teacher, embed_files, read_zeroshot

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
def locca_metrics(student, decoder, data, tokenizer, colon, device, max_images=500):
    """ARef box accuracy (greedy decode from 'aref: <region caption> :', IoU >= 0.5) and caption
    token accuracy (teacher-forced, autoregressive, target tokens only). colon: the token id of
    ' :', the end of the prompt."""
    from model import text_to_box, box_iou
    from loss import locca_inputs
    kept = torch.tensor(student.config.kept_ids)
    r = min(max_images, len(data['boxes']))
    img_row = torch.searchsorted(data['image_ids'], data['region_image_ids'][:r])
    enc = lambda rows: student.visual(student.preprocess(data['pixels'][rows].to(device)))[0]
    hits = [] # per region: its decoded box has IoU >= 0.5
    for s in range(0, r, 128):
        e = min(s + 128, r)
        ids = data['aref_ids'][s:e].long()
        # the prompt ends with the region caption's ' :' piece: everything before the box digits
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
            hits.append(box is not None and
                        box_iou(torch.tensor([box]), data['boxes'][s + i][None]).item() >= 0.5)
    m = min(max_images, len(data['cap_ids']))
    seq, pre = data['cap_ids'][:m].long().to(device), data['cap_prefix'][:m].long().to(device)
    cap_row = torch.searchsorted(data['image_ids'], data['caption_image_ids'][:m])
    tgt = student.map_ids(seq)
    inp, causal = locca_inputs(tgt, pre, torch.zeros(m, dtype=torch.bool, device=device),
                               decoder.mask_id)
    pred = decoder.head(decoder(inp, enc(cap_row), causal)).argmax(-1)
    w = (seq != 0) & (torch.arange(seq.shape[1], device=device)[None] >= pre[:, None])
    hits = torch.tensor(hits, dtype=torch.float32)[:, None] # (n, 1)
    # resampled region by region (BOOTSTRAP)
    interval = bootstrap_interval(hits, torch.ones_like(hits), **BOOTSTRAP)[0].tolist()
    return dict(aref_acc_iou50=100.0 * hits.mean().item(), aref_acc_iou50_interval=interval,
                n_regions=len(hits),
                cap_token_acc=100.0 * (pred == tgt)[w].float().mean().item())

# -----------------------------------------------------------------------------
# dense features: a linear probe on the frozen patch tokens names the object under each patch
def patch_labels(data, grid, classes, colon):
    """-> (N_images, grid * grid) int64, row-major: each patch's class, the region (its caption,
    e.g. 'red circle') whose box holds the patch centre (the smallest box where boxes overlap),
    0 = no object. classes: {caption tokens: class}; captions not in it are added. colon: the
    token id of ' :', which ends the box in the GCap sequence 'gcap: <box> : <caption>'."""
    n = len(data['image_ids'])
    labels = torch.zeros(n, grid * grid, dtype=torch.long)
    area = torch.full((n, grid * grid), math.inf) # the box area that set each label
    centre = (torch.arange(grid) + 0.5) / grid
    cy, cx = centre.repeat_interleave(grid), centre.repeat(grid) # (grid²,) each
    rows = torch.searchsorted(data['image_ids'], data['region_image_ids'])
    for r, (box, seq) in enumerate(zip(data['boxes'][:], data['gcap_ids'][:].tolist())):
        x0, y0, x1, y1 = box.tolist()
        if colon not in seq:
            sys.exit(f"eval.py: --dense_probe: GCap row {r} has no ' :' token ({colon}): "
                     f"a cache written with another tokenizer than the model's?")
        after = seq[len(seq) - seq[::-1].index(colon):] # the caption, eos, padding
        name = tuple(t for t in after if t not in (0, 1))
        k = classes.setdefault(name, len(classes) + 1)
        a = (x1 - x0) * (y1 - y0)
        inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1) & (a < area[rows[r]])
        labels[rows[r], inside] = k
        area[rows[r], inside] = a
    return labels

@torch.no_grad()
def patch_tokens(student, pixels, device, batch_size=256): # -> (N, grid², C) float32 on CPU
    tokens = torch.cat([student.visual(student.preprocess(p.to(device)))[0].float().cpu()
                        for p in pixels.split(batch_size)])
    grid = math.isqrt(tokens.shape[1])
    if grid * grid != tokens.shape[1]:
        sys.exit(f"eval.py: --dense_probe needs a square grid of patch tokens, the model gives "
                 f"{tokens.shape[1]}")
    if not torch.isfinite(tokens).all():
        sys.exit("eval.py: --dense_probe: the model's patch tokens are not finite")
    return tokens

def dense_probe_metrics(student, fit, data, colon, device, steps=500, lr=1e-2):
    """A linear probe (softmax regression, full batch, AdamW `steps`) fitted on the frozen patch
    tokens of the `fit` cache, scored on `data`: accuracy on the patches that hold an object
    (the background is most patches and easy), with its bootstrap interval over test images,
    and on all patches. A model whose tokens say nothing names every patch background: 0 on the
    object patches."""
    classes = {}
    fit_tok = patch_tokens(student, fit['pixels'], device)
    tok = patch_tokens(student, data['pixels'], device)
    grid = math.isqrt(tok.shape[1])
    fit_y, y = patch_labels(fit, grid, classes, colon), patch_labels(data, grid, classes, colon)
    x = fit_tok.flatten(0, 1) # (N_fit · grid², C)
    mu, sd = x.mean(0), x.std(0) + 1e-6 # standardised: one lr fits any token scale
    probe = torch.nn.Linear(x.shape[1], len(classes) + 1)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            F.cross_entropy(probe((x - mu) / sd), fit_y.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        pred = probe((tok - mu) / sd).argmax(-1) # (N, grid²)
    obj = y > 0
    hits = ((pred == y) & obj).sum(1, keepdim=True).float() # (N, 1) per test image
    counts = obj.sum(1, keepdim=True).float()
    lo, hi = bootstrap_interval(hits, counts, **BOOTSTRAP)[0].tolist()
    return dict(object_patch_acc=100.0 * hits.sum().item() / max(counts.sum().item(), 1),
                object_patch_acc_interval=[lo, hi],
                all_patch_acc=100.0 * (pred == y).float().mean().item(),
                background_rate=100.0 * (1 - obj.float().mean().item()),
                grid=grid, n_classes=len(classes) + 1, n_fit_images=len(fit_tok))

def update_eval_json(path, retrieval=False, in_domain=True, **fields):
    """One eval.json per model: read, merge, write atomically. A retrieval row goes under
    evals['<dataset>/<split>'] (COCO and Flickr30k side by side); the row of the dataset the
    run trained on (in_domain) is also the top level, replacing the previous one. The product
    modes' fields (zeroshot, speed) are kept until that mode runs again, and they keep the run
    name a retrieval eval wrote."""
    old = read_json(path)
    if retrieval:
        evals = {**old.get('evals', {}), f"{fields['dataset']}/{fields['split']}": fields}
        if in_domain:
            old = {**{k: old[k] for k in ('zeroshot', 'speed') if k in old}, **fields}
        write_json(path, {**old, 'evals': evals})
        return
    row = {**old, **fields}
    if 'run' in old:
        row['run'] = old['run']
    write_json(path, row)

def eval_json_of(ckpt, out, script):
    """-> (the eval.json a zero-shot or speed row of --ckpt goes to, its run name):
    <ckpt>/eval.json unless --out says; a hub name has no dir of its own, so it needs --out."""
    if not out and not os.path.isdir(ckpt):
        sys.exit(f"{script}: --ckpt={ckpt} is a hub name, not a dir: pass --out=<eval.json>")
    return out or os.path.join(ckpt, 'eval.json'), os.path.basename(os.path.normpath(ckpt))

def retrieval_eval(cache, ckpt, device, batch_size, locca, max_locca, dense_probe=''):
    """The cached teacher embeddings (ckpt='') or a train.py out_dir on a cache split -> (the
    eval.json row: metrics with bootstrap intervals, params, the checkpoint scored and the
    cache's fingerprint; whether the cache is of the dataset the model trained on)."""
    # retrieval needs images and their captions: an image-only / text-only cache is refused;
    # pixels are read batch by batch
    data, man = open_cache(cache, 'eval.py', needs=PAIRED)
    index = torch.searchsorted(data['image_ids'], data['caption_image_ids'])
    dataset = man['dataset']['name']
    row = dict(split=man['split'], dataset=dataset, cache=cache,
               n_images=len(data['image_ids']), n_captions=len(index),
               fingerprint=man['fingerprint'], bootstrap=BOOTSTRAP)
    if not ckpt:
        if 'image_embeds' not in data:
            sys.exit(f"eval.py: {cache} holds no teacher embeddings "
                     f"(cached with teacher=none): pass --ckpt")
        ranks = retrieval_ranks(data['image_embeds'][:], data['text_embeds'][:], index)
        # params: {image, total} counted at cache time
        row.update(model='teacher', run='teacher', teacher=man['teacher'],
                   metrics=recalls(*ranks), intervals=retrieval_intervals(*ranks, index),
                   params=man['teacher_params'])
        return row, True
    from model import load_trained, LoccaDecoder, tokenize
    missing = [f for f in ('meta.json', 'config.json', 'model.safetensors')
               if not os.path.isfile(os.path.join(ckpt, f))]
    if missing:
        sys.exit(f"eval.py: {ckpt} is not a finished train.py out_dir: "
                 f"missing {', '.join(missing)}")
    # one save, not files of two (a kill during a save, a file copied in from another run)
    meta = check_save(ckpt, 'eval.py')
    check_same_teacher(man, meta, f"eval.py: {ckpt} (its training cache) vs {cache}")
    train_dir = meta['train_cache']
    if not os.path.isfile(os.path.join(train_dir, 'manifest.json')):
        sys.exit(f"eval.py: {train_dir} (the training cache in {ckpt}/meta.json) is gone: "
                 f"cannot check train/test overlap")
    # none of the test images in the training cache: by id (COCO ids vs Flickr photo ids: equal
    # numbers, different images, not compared) and by pixels
    _, train_man = open_cache(train_dir, f'eval.py: {ckpt}', verify=False,
                              evaluated=(data, man, cache))
    # the checkpoint scored: report.py refuses this eval.json once the run's model.safetensors
    # has changed
    row['checkpoint'] = dict(iter_num=meta['iter_num'],
                             model_sha256=sha256(os.path.join(ckpt, 'model.safetensors')))
    # our Student, or an HF SigLIP / SigLIP 2 train.py trained (hf_model): the same interface
    student = load_trained(ckpt).to(device)
    ids = data['input_ids']
    # an HF text tower reads its own tokenizer's ids (saved in its subdir) of the raw captions
    text_encoder = getattr(student.config, 'text_encoder', '')
    if text_encoder:
        from transformers import AutoTokenizer
        check_captions(data, man, cache, 'eval.py')
        tok = AutoTokenizer.from_pretrained(os.path.join(ckpt, text_encoder))
        ids = tokenize(tok, captions(data), student.config.text_length)
    img, txt = embed_student(student, data['pixels'], ids, device, batch_size)
    ranks = retrieval_ranks(img, txt, index)
    row.update(model='student', run=os.path.basename(os.path.normpath(ckpt)),
               metrics=recalls(*ranks), intervals=retrieval_intervals(*ranks, index),
               params=dict(total=student.num_params(),
                           without_token_table=student.num_params(token_table=False)))
    # the decoder of this save (meta.json's list), never one an earlier run left in the dir
    listed = meta['files'] if 'files' in meta else os.listdir(ckpt)
    has_decoder = locca and 'decoder.safetensors' in listed
    # ARef reads the test cache's boxes: a cache made without --instances has none
    if has_decoder and len(data['boxes']) == 0:
        print(f"eval.py: {cache} holds no boxes (cached without --instances): the LocCa "
              f"decoder's ARef is not scored")
        has_decoder = False
    if has_decoder or dense_probe:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(ckpt) # the run's, as the cache's ids
        # ' :' ends the ARef prompt and the box of a GCap sequence: its last piece's id
        colon = tokenizer(' :', add_special_tokens=False)['input_ids'][-1]
    if has_decoder:
        decoder = LoccaDecoder.from_pretrained(ckpt).to(device)
        row['locca'] = locca_metrics(student, decoder, data, tokenizer, colon, device,
                                     max_locca)
    if dense_probe:
        # the probe is fitted on other images than it is scored on
        # ... and tokenised as the test cache (the same teacher and processor)
        fit, _ = open_cache(dense_probe, 'eval.py --dense_probe', needs=['pixels', 'boxes'],
                            same_teacher=(man, cache), evaluated=(data, man, cache))
        check_contents(data, ['boxes'], cache, 'eval.py --dense_probe')
        for path, d in ((dense_probe, fit), (cache, data)):
            if len(d['boxes']) == 0:
                sys.exit(f"eval.py: --dense_probe: {path} holds no boxes (cached without "
                         f"--instances): re-cache it with --instances=<COCO instances json>")
        row['dense_probe'] = dict(dense_probe_metrics(student, fit, data, colon, device),
                                  fit_cache=dense_probe)
    return row, train_man['dataset']['name'] == dataset

# -----------------------------------------------------------------------------
# zero-shot classification: any model dir behind cache_teacher.Teacher (a train.py out_dir, an
# HF SigLIP dir or hub name), so it is resized and tokenised exactly as the cache was; the
# images, labels, class names and templates are cache_teacher.read_zeroshot's
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

def zeroshot_mode(enc, src, classnames, dataset, templates, batch_size, out, run):
    paths, labels, classes, temps, names_from, dataset = read_zeroshot(src, classnames, dataset,
                                                                       templates)
    # a word the tokenizer can't spell makes every class's prompts alike: refuse early
    unk = enc.tok.unk_token_id
    for t in temps:
        ids = enc.tokenize([t.format(c=c) for c in classes])
        if unk is not None and (ids == unk).any():
            sys.exit(f"eval.py: template {t!r} tokenizes to <unk> with {enc.path}'s "
                     f"tokenizer: pass --templates")
    zs = zeroshot_classify(enc, paths, labels, classes, temps, batch_size)
    zs.update(source=src, dataset=dataset, classnames=names_from)
    # the weights scored: report.py marks the row once the run has been retrained
    weights = os.path.join(enc.path, 'model.safetensors')
    if os.path.isfile(weights):
        zs['model_sha256'] = sha256(weights)
    update_eval_json(out, zeroshot=zs, run=run)
    lo, hi = zs['intervals']['top1']
    print(f"{run}: zero-shot on {src}: {zs['n_images']} images, "
          f"{zs['n_classes']} classes, {len(temps)} templates | "
          f"top-1 {zs['top1']:.2f} [{lo:.2f}, {hi:.2f}] top-5 {zs['top5']:.2f} -> {out}")

if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    cache = 'cache/shapes/test' # a cache split dir written by cache_teacher.py
    ckpt = '' # a train.py out_dir; '' = evaluate the cached teacher embeddings
    out = '' # '' = <ckpt>/eval.json, or <cache>/eval.json for the teacher
    device = 'cpu'
    batch_size = 256
    locca = True # also evaluate the LocCa decoder when the checkpoint has one
    max_locca = 500
    # a cache split with boxes (e.g. val): a linear probe on the frozen patch tokens, fitted
    # there, names the object under each patch of --cache's images ('' = off)
    dense_probe = ''
    # zero-shot (replaces the retrieval eval; --ckpt may be an HF SigLIP dir or hub name)
    zeroshot = '' # ImageFolder dir or COCO instances json -> top-1/top-5 into eval.json
    # CLIP_benchmark dataset name (data/clip_benchmark): its templates; '' = imagenet1k's 80
    # (ImageNet's WordNet-id folders: their imagenet1k names)
    zeroshot_dataset = ''
    templates = '' # '|'-separated prompts with {c}, or a file of them; '' = zeroshot_dataset's
    # a file, one class name a line in sorted folder order, or a CLIP_benchmark dataset name
    classnames = '' # '' = the folder names (ImageNet's WordNet ids: imagenet1k's names)
    config_keys = [k for k, v in globals().items()
                   if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    # -----------------------------------------------------------------------------
    if zeroshot:
        if not ckpt:
            sys.exit("eval.py: --zeroshot needs --ckpt")
        enc = Teacher(ckpt, device)
        out, run = eval_json_of(ckpt, out, 'eval.py')
        zeroshot_mode(enc, zeroshot, classnames, zeroshot_dataset, templates, batch_size,
                      out, run)
        sys.exit(0)
    if dense_probe and not ckpt:
        sys.exit("eval.py: --dense_probe needs --ckpt (a cache holds no patch tokens)")
    row, in_domain = retrieval_eval(cache, ckpt, device, batch_size, locca, max_locca,
                                    dense_probe)
    out = out or os.path.join(ckpt or cache, 'eval.json')
    update_eval_json(out, retrieval=True, in_domain=in_domain, **row)
    m = row['metrics']
    print(f"{row['run']}: {row['split']} {row['n_images']} images / {row['n_captions']} captions "
          f"| I→T R@1 {m['i2t_r1']:.2f} R@5 {m['i2t_r5']:.2f} R@10 {m['i2t_r10']:.2f} "
          f"| T→I R@1 {m['t2i_r1']:.2f} R@5 {m['t2i_r5']:.2f} R@10 {m['t2i_r10']:.2f}"
          + (f" | ARef acc@0.5 {row['locca']['aref_acc_iou50']:.1f}" if 'locca' in row else '')
          + (f" | dense probe {row['dense_probe']['object_patch_acc']:.1f}"
             if 'dense_probe' in row else '')
          + f" -> {out}")
