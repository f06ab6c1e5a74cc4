"""
Cache a teacher once: one pass over a dataset split writes safetensors shards +
manifest.json holding everything train.py / eval.py need (student pixels, teacher token
ids, teacher embeddings, LocCa targets), so no teacher ever runs inside the training loop.

    # synthetic world (CPU, seconds): pack images + tokens only, or embed with a teacher
    # we trained
    python cache_teacher.py --data_dir=data/shapes --split=web --teacher=none \
        --processor=data/shapes/processor --out_dir=cache/shapes
    python cache_teacher.py --data_dir=data/shapes --split=train --teacher=out/teacher \
        --out_dir=cache/shapes
    # webdataset tars (CC3M / CC12M / DataComp as img2dataset writes them);
    # --captions=False for image-only
    python cache_teacher.py --tars='/data/cc3m/{00000..00331}.tar' --split=cc3m \
        --teacher=google/siglip2-large-patch16-256 \
        --out_dir=cache/cc3m-L --device=cuda --dtype=bfloat16
    # COCO Karpathy split + a SigLIP 2 checkpoint on a GPU (any HF SigLIP / SigLIP 2 name
    # or local dir, NaFlex too)
    python cache_teacher.py --data_dir=/data/coco --karpathy=/data/coco/dataset_coco.json \
        --split=test --teacher=google/siglip2-large-patch16-256 --out_dir=cache/coco-L \
        --device=cuda --dtype=bfloat16
    # an image folder paired by a jsonl ({"file": "a/b.jpg", "caption": "..."} a line);
    # the HF processor per batch on the GPU instead of per image in the workers
    # (--preprocess=batch)
    python cache_teacher.py --image_folder=/data/mine \
        --folder_captions=/data/mine/captions.jsonl --split=mine \
        --teacher=google/siglip2-large-patch16-256 --out_dir=cache/mine-L \
        --device=cuda --dtype=bfloat16 --preprocess=batch
    # rank r writes shards r, r+W, ...; rank 0 the manifest
    torchrun --nproc_per_node=8 cache_teacher.py ...

Writes <out_dir>/<split>/{<split>-00000.safetensors, ..., manifest.json, processor/}.
Resumable: finished shards (written to a temp name, then renamed) are kept and skipped; the
manifest is written last, so a directory without one is never read as a cache. Takes ~20 s
for the 1k-image synthetic train split on 2 cores.
"""
import os, sys, io, re, glob, json, time, math, tarfile, hashlib
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

# -----------------------------------------------------------------------------
# I/O
# COCO-2017 layout: annotations/captions_<split>2017.json, <split>2017/*.jpg
data_dir = 'data/shapes'
# COCO: train/val/test/web...; with --karpathy: train, restval, train+restval, val, test
split = 'train'
# path to a Karpathy split file (dataset_coco.json); images are looked up under data_dir
karpathy = ''
# instances json(s) for boxes, comma-separated (Karpathy train+restval: COCO 2014 train + val);
# '' = annotations/instances_<split>2017.json if it exists (Karpathy: no boxes)
instances = ''
out_dir = 'cache/shapes'
max_images = 0 # 0 = all; else the first N images by id (smoke tests)
skip_missing = False # missing image files: error (default) or drop and count them in the manifest
# unpaired data (DIME-FM distils from unpaired images and texts): image-only and text-only caches
images = True # False: a text-only cache (the split's captions, no pixels)
# False: an image-only cache (captions ignored; COCO unlabeled2017 has none anyway)
captions = True
# a folder of images (searched recursively, sorted by path) -> an image-only cache, or
image_folder = ''
# ... paired by a JSON-lines file: {"file": "<path under image_folder>", "caption": "..."} a line
folder_captions = ''
caption_file = '' # a text file, one caption per line -> a text-only cache
# webdataset tars (img2dataset: key.jpg|png + key.txt [+ key.json]): a glob or
# 'cc3m-{00000..00331}.tar'
tars = ''
# reinforced views (MobileCLIP's DataCompDR: augmentations stored with their teacher embeddings)
# K views per image: view 0 the full image, 1..K-1 random-resized crops (+ flips), seeded by
# image id
views = 1
# crop area fraction ~ U(view_scale, 1); aspect ~ log-U(3/4, 4/3) as torchvision's
# RandomResizedCrop
view_scale = 0.35
view_flip = True # mirror half of the crops (a world whose captions say 'left of' may want False)
# teacher
# HF SigLIP/SigLIP 2 name or dir | a train.py out_dir | 'none' (pixels + tokens only)
teacher = 'none'
processor = '' # processor dir (tokenizer + image settings); '' = the teacher's own
image_size = 0 # stored pixel resolution for the student; 0 = the teacher's input size
# SigLIP 2 was trained on lowercased text (HF_TIMM_NOTES); the fixed-res tokenizer won't do it
lowercase = True
# text length, right-padded with 0: 0 = the teacher's own (64 for SigLIP; ours: the length it
# trained on)
max_length = 0
# system
batch_size = 64
shard_size = 2048 # images per shard
num_workers = 2 # DataLoader workers decoding JPEGs
# HF teachers: 'worker' runs the processor per image in the DataLoader workers (the reference
# path); 'batch' has the workers only decode (and cut the views), then runs the processor once
# per batch on `device` (a GPU: resize + normalise there, not on the CPU). Same pixels on CPU
# (tested); on a GPU cos >= 0.999 to the reference.
preprocess = 'worker'
device = 'cpu'
dtype = 'float32' # 'bfloat16' / 'float16' autocast on GPU
config_keys = [k for k,v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------
from model import box_to_text
from eval import cache_fingerprint, sha256, what_changed, replace_durably
for k, ok in [('max_images', max_images >= 0),
              ('batch_size', batch_size > 0),
              ('shard_size', shard_size > 0),
              ('max_length', max_length == 0 or max_length > 1),
              ('num_workers', num_workers >= 0)]:
    if not ok:
        sys.exit(f"cache_teacher: bad value {k}={globals()[k]!r}")

rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
if world > 1:
    # only used for a barrier before the manifest
    torch.distributed.init_process_group(backend='gloo')
split_dir = os.path.join(out_dir, split)
os.makedirs(split_dir, exist_ok=True)

# -----------------------------------------------------------------------------
# read the dataset into one record format: {image_id, path, width, height, captions, regions}
# basename -> sha256 of every annotation file read: the cache fingerprint hashes content
annotations = {}
def read_json(path, annotation=True):
    if not os.path.isfile(path):
        sys.exit(f"cache_teacher: {path} not found (data_dir={data_dir!r}, split={split!r})")
    try:
        with open(path) as f:
            obj = json.load(f)
    except ValueError as e:
        sys.exit(f"cache_teacher: {path} is not valid JSON ({e})")
    if annotation:
        annotations[os.path.basename(path)] = sha256(path)
    return obj

IMAGE_EXT = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')
def karpathy_records(split_file, wanted, image_dir, path):
    """Karpathy's dataset_{coco,flickr30k,flickr8k}.json -> ({image_id: record} of the wanted
    splits, what the ids are). COCO: id = cocoid, image under image_dir/<filepath>/. Flickr
    (no cocoid, no filepath, one image folder): id = the Flickr photo id that starts the file
    name (1000092795.jpg, Flickr8k's 1000268201_693b08cb0e.jpg): the same in every release of
    the data, where Karpathy's imgid is only a row of this file. eval.py compares ids only
    within one id space (a COCO id and a Flickr id are different images)."""
    recs, id_space = {}, 'coco'
    for im in split_file['images']:
        if im['split'] not in wanted:
            continue
        if 'cocoid' in im:
            image_id = im['cocoid']
            file = os.path.join(image_dir, im.get('filepath', ''), im['filename'])
        else:
            digits = re.match(r'\d+', im['filename'])
            if not digits:
                sys.exit(f"cache_teacher: {path}: image {im['filename']!r} has no cocoid and "
                         f"its file name does not start with a Flickr photo id")
            image_id, id_space = int(digits.group()), 'flickr'
            file = os.path.join(image_dir, im['filename'])
        recs[image_id] = dict(image_id=image_id, path=file, regions=[],
                              captions=[s['raw'] for s in im['sentences']])
    return recs, id_space

if folder_captions and not image_folder:
    sys.exit(f"cache_teacher: folder_captions={folder_captions} pairs the images "
             f"of an --image_folder; none given")
# any folder of images: ids are the positions in path order (stable for the same folder)
if image_folder:
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(image_folder)
                   for f in fs if f.lower().endswith(IMAGE_EXT))
    recs = {i: dict(image_id=i, path=p, captions=[], regions=[]) for i, p in enumerate(paths)}
    # which files, in which order
    annotations['image_folder'] = hashlib.sha256('\n'.join(paths).encode()).hexdigest()
    by_path = {os.path.relpath(p, image_folder): recs[i] for i, p in enumerate(paths)}
    if folder_captions and not os.path.isfile(folder_captions):
        sys.exit(f"cache_teacher: folder_captions {folder_captions} not found")
    # several lines may name one file
    for n, line in enumerate(open(folder_captions) if folder_captions else [], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rec = by_path[os.path.normpath(row['file'])]
            caps = [row['caption']] if 'caption' in row else row['captions']
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise TypeError('captions must be strings')
            rec['captions'] += caps
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(f"cache_teacher: {folder_captions}, line {n}: "
                     f"want {{\"file\": <image under {image_folder}>, \"caption\": ...}}, "
                     f"got {line.strip()[:120]!r} ({type(e).__name__}: {e})")
    if folder_captions:
        annotations[os.path.basename(folder_captions)] = sha256(folder_captions)
    no_caption = sum(not r['captions'] for r in recs.values())
    if captions and folder_captions and no_caption:
        sys.exit(f"cache_teacher: {no_caption} of {len(recs)} images in {image_folder} "
                 f"have no caption in {folder_captions}: "
                 f"pass --captions=False for an image-only cache")
    captions = captions and bool(folder_captions)
elif tars:
    # webdataset: members grouped by key; each image is read later straight from its byte
    # range in the tar
    # webdataset's brace notation: {00000..00331} ranges (zero-padded as written) and {a,b}
    # lists
    def expand(p):
        m = re.search(r'\{([^{}]*)\}', p)
        if not m:
            return sorted(glob.glob(p)) or [p]
        a, dots, b = m.group(1).partition('..')
        items = ([f'{i:0{len(a)}d}' for i in range(int(a), int(b) + 1)] if dots
                 else m.group(1).split(','))
        return [q for i in items for q in expand(p[:m.start()] + i + p[m.end():])]
    recs, no_caption = {}, 0
    for path in expand(tars):
        if not os.path.isfile(path):
            sys.exit(f"cache_teacher: tar {path} not found (tars={tars!r})")
        with tarfile.open(path) as tf:
            found = {} # key -> {ext: member}
            for m in tf.getmembers():
                key, _, ext = m.name.rpartition('.')
                if m.isfile() and key:
                    found.setdefault(key, {})[ext.lower()] = m
            for key in sorted(found):
                im = next((found[key][e] for e in ('jpg', 'jpeg', 'png', 'webp')
                           if e in found[key]), None)
                # a caption or json without an image (img2dataset writes these for failed
                # downloads)
                if im is None:
                    continue
                txt = found[key].get('txt')
                cap = tf.extractfile(txt).read().decode('utf-8').strip() if txt else ''
                no_caption += not cap
                i = len(recs) # ids are positions in (tar, key) order, as for a folder
                recs[i] = dict(image_id=i, path=path, offset=im.offset_data, size=im.size,
                               key=key, captions=[cap] if cap else [], regions=[])
    if captions and no_caption:
        sys.exit(f"cache_teacher: {no_caption} of {len(recs)} images in {tars} "
                 f"have no .txt caption: pass "
                 f"--captions=False for an image-only cache")
elif caption_file: # one caption per line; a record per caption, so shards split the file
    lines = ([l.strip() for l in open(caption_file) if l.strip()]
             if os.path.isfile(caption_file) else
             sys.exit(f"cache_teacher: caption_file {caption_file} not found"))
    recs = {i: dict(image_id=i, path='', captions=[c], regions=[])
            for i, c in enumerate(lines)}
    annotations[os.path.basename(caption_file)] = sha256(caption_file)
    images = False
elif karpathy: # Karpathy split file: keep ALL captions (COCO test has 25,010, not 25,000)
    split_file = read_json(karpathy)
    recs, id_space = karpathy_records(split_file, set(split.split('+')), data_dir, karpathy)
else:
    caps_path = os.path.join(data_dir, 'annotations', f'captions_{split}2017.json')
    info_path = os.path.join(data_dir, 'annotations', f'image_info_{split}2017.json')
    # COCO unlabeled2017: images without captions
    if not os.path.isfile(caps_path) and os.path.isfile(info_path):
        caps_path, captions = info_path, False
    caps = read_json(caps_path)
    recs = {im['id']: dict(image_id=im['id'],
                           path=os.path.join(data_dir, f'{split}2017', im['file_name']),
                           width=im['width'], height=im['height'], captions=[], regions=[])
            for im in caps['images']}
    for a in caps.get('annotations', []):
        recs[a['image_id']]['captions'].append(a['caption'])
    default = os.path.join(data_dir, 'annotations', f'instances_{split}2017.json')
    instances = instances or (default if os.path.isfile(default) else '')
n_boxes_dropped, n_crowd = 0, 0
# boxes + category names feed the LocCa ARef/GCap targets
for path in filter(None, instances.split(',')):
    # a file named by --instances must exist: no silent cache without boxes
    inst = read_json(path)
    names = {c['id']: c['name'] for c in inst['categories']}
    sizes = {im['id']: (im['width'], im['height']) for im in inst['images']}
    for a in inst['annotations']:
        if a['image_id'] not in recs:
            continue
        if a.get('iscrowd', 0): # crowd regions have no single-object caption: dropped, counted
            n_crowd += 1
            continue
        W, H = sizes[a['image_id']]
        x, y, w, h = a['bbox']
        # clip boxes outside the image
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        # nothing left inside the image: drop, counted in the manifest
        if x1 - x0 < 1 or y1 - y0 < 1:
            n_boxes_dropped += 1
            continue
        recs[a['image_id']]['regions'].append(([x0 / W, y0 / H, x1 / W, y1 / H],
                                               names[a['category_id']]))
records = [recs[k] for k in sorted(recs)]
if not records:
    sys.exit(f"cache_teacher: split {split!r} of {karpathy or data_dir} has no images")
records = records[:max_images] if max_images else records
# image-only: the captions (and the LocCa targets built from them) are left out
if not captions:
    records = [dict(r, captions=[], regions=[]) for r in records]
if not images and not captions:
    sys.exit("cache_teacher: images=False and captions=False leave nothing to cache")
if preprocess not in ('worker', 'batch'):
    sys.exit(f"cache_teacher: preprocess={preprocess!r} must be 'worker' or 'batch'")
if views < 1 or not 0 < view_scale <= 1:
    sys.exit(f"cache_teacher: views={views} must be >= 1 and view_scale={view_scale} in (0, 1]")
missing = [r['path'] for r in records if images and not os.path.isfile(r['path'])]
if missing and not skip_missing:
    sys.exit(f"cache_teacher: {len(missing)} of {len(records)} image files missing, "
             f"e.g. {missing[:3]}; "
             f"fix data_dir or pass --skip_missing=True to drop them (counted in the manifest)")
records = [r for r in records if not images or os.path.isfile(r['path'])]

# -----------------------------------------------------------------------------
# teacher + processor: HF SigLIP (fixed res), HF SigLIP 2 NaFlex, one of our train.py runs, or none
from transformers import AutoTokenizer, AutoProcessor
model, kind, logit_scale, logit_bias, embed_dim = None, 'none', None, None, None
if (teacher != 'none' and os.path.isfile(os.path.join(teacher, 'model.safetensors'))
        and 'kept_ids' in read_json(os.path.join(teacher, 'config.json'), annotation=False)):
    from model import Student
    kind, model = 'ours', Student.from_pretrained(teacher)
    proc_dir = processor or teacher
    # train.py records the text length the teacher trained on
    meta_path = os.path.join(teacher, 'meta.json')
    trained_length = (read_json(meta_path, annotation=False).get('text_length', 64)
                      if os.path.isfile(meta_path) else 64)
    # the text tower pools the last (pad) position: length matters
    if max_length and max_length != trained_length:
        sys.exit(f"cache_teacher: {teacher} was trained on text length {trained_length}, "
                 f"not max_length={max_length}")
    max_length = trained_length
elif teacher != 'none':
    from transformers import AutoModel
    model = AutoModel.from_pretrained(teacher, dtype=torch.float32)
    kind = 'siglip2' if model.config.model_type == 'siglip2' else 'siglip'
    proc_dir = processor or teacher
else:
    proc_dir = processor
    if not proc_dir:
        sys.exit("cache_teacher: --teacher=none needs --processor=<dir> "
                 "(tokenizer + image settings)")
# SigLIP / SigLIP 2 (§2.1): 64 tokens; another length silently breaks the teacher
max_length = max_length or 64
tok = AutoTokenizer.from_pretrained(proc_dir)
# the teacher must read the ids this tokenizer writes: checked here, before any image is read
if (kind == 'ours' and proc_dir != teacher
        and os.path.isfile(os.path.join(teacher, 'tokenizer_config.json'))):
    # train.py saves the tokenizer it was trained with beside the weights
    own = AutoTokenizer.from_pretrained(teacher)
    if own.get_vocab() != tok.get_vocab():
        sys.exit(f"cache_teacher: --processor={processor} has another vocabulary "
                 f"({len(tok)} tokens) than the tokenizer "
                 f"teacher {teacher} was trained with ({len(own)} tokens): "
                 f"its embeddings would be garbage; drop --processor")
if kind == 'ours' and max(model.config.kept_ids) >= len(tok):
    sys.exit(f"cache_teacher: teacher {teacher} knows token ids up to "
             f"{max(model.config.kept_ids)}, but the tokenizer "
             f"in {proc_dir} has only {len(tok)}: another vocabulary")
if kind in ('siglip', 'siglip2') and model.config.text_config.vocab_size < len(tok):
    sys.exit(f"cache_teacher: teacher {teacher} has a text vocabulary of "
             f"{model.config.text_config.vocab_size} tokens, "
             f"the tokenizer in {proc_dir} has {len(tok)}: "
             f"ids past the table would crash or embed garbage")
# SigLIP pools the last position: left padding silently changes the embedding
tok.padding_side = 'right'
improc = AutoProcessor.from_pretrained(proc_dir).image_processor
mean, std = list(improc.image_mean), list(improc.image_std)
resample = getattr(improc, 'resample', Image.BILINEAR)
# which pixels the HF teacher saw: transformers 5.x processors default to torchvision (PIL is
# the other backend)
backend = getattr(improc, 'backend', 'pil') if kind in ('siglip', 'siglip2') else 'pil'
# NaFlex: aspect-preserving patches; the student's pixels get a fixed square size
if kind == 'siglip2':
    teacher_size = int(improc.patch_size * math.isqrt(improc.max_num_patches))
elif kind == 'ours':
    teacher_size = model.config.image_size
else:
    teacher_size = improc.size['height']
image_size = image_size or teacher_size
count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
# Table 1's teacher row: image tower and total, counted on the loaded weights
teacher_params = None
# our image path: timm tower + projection (HF's vision_model holds its pooling head)
if kind == 'ours':
    teacher_params = dict(image=count(model.visual, model.img_proj), total=count(model))
elif model is not None:
    teacher_params = dict(image=count(model.vision_model), total=count(model))
if model is not None:
    model.to(device).eval()
    logit_scale, logit_bias = model.logit_scale.exp().item(), model.logit_bias.item()
if views > 1 and model is None:
    sys.exit("cache_teacher: views > 1 stores teacher embeddings of crops: "
             "it needs a teacher (not --teacher=none)")

# -----------------------------------------------------------------------------
# text: teacher ids for the text tower, LocCa sequences for the decoder (tokenised once, here)
def norm_text(s):
    return ' '.join(s.lower().split()) if lowercase else ' '.join(s.split())
_piece_cache = {}
# tokenise one piece without specials; pieces concatenate so inference prefixes match
def piece(s):
    if s not in _piece_cache:
        _piece_cache[s] = tok(norm_text(s), add_special_tokens=False)['input_ids']
    return _piece_cache[s]
# -> (ids padded to max_length, prefix length); eos stays even when truncated
def locca_seq(*pieces):
    ids = [t for p in pieces for t in piece(p)][:max_length - 1] + [tok.eos_token_id]
    return ids + [0] * (max_length - len(ids)), len(piece(pieces[0]))
n_truncated = 0
def encode_captions(caps):
    global n_truncated
    caps = [norm_text(c) for c in caps]
    n_truncated += sum(len(x) > max_length for x in tok(caps)['input_ids'])
    return tok(caps, padding='max_length', max_length=max_length, truncation=True)['input_ids']

# -----------------------------------------------------------------------------
# images: decoded in DataLoader workers; corrupt / unreadable files are skipped and counted
def view_boxes(image_id, W, H):
    """-> K (pixel box, flip) pairs: view 0 the whole image, then random-resized crops.
    Drawn from a generator seeded by the image id (not by position or rank), so reruns and
    torchrun ranks store the same views. Boxes are whole pixels of the original image: the
    stored normalised box is exactly the region the teacher saw."""
    g = np.random.default_rng(abs(int(image_id)))
    out = [((0, 0, W, H), False)]
    for _ in range(views - 1):
        area = g.uniform(view_scale, 1.0)
        ratio = math.exp(g.uniform(math.log(3 / 4), math.log(4 / 3)))
        # fractions of the side
        w, h = min(math.sqrt(area * ratio), 1.0), min(math.sqrt(area / ratio), 1.0)
        x0, y0 = g.uniform(0, 1 - w), g.uniform(0, 1 - h)
        flip = bool(view_flip and g.random() < 0.5)
        left, top = round(x0 * W), round(y0 * H)
        right, bottom = (max(round((x0 + w) * W), left + 1),
                         max(round((y0 + h) * H), top + 1))
        out.append(((left, top, min(right, W), min(bottom, H)), flip))
    return out

class Images(torch.utils.data.Dataset):
    """-> (i, pixels uint8 (3, S, S), teacher inputs for the K views, boxes (K, 4)
    normalised xyxy, flips (K,)), or (i, None, reason) for an unreadable file."""
    def __init__(self, recs):
        self.recs = recs
    def __len__(self):
        return len(self.recs)
    def __getitem__(self, i):
        r = self.recs[i]
        try:
            src = r['path']
            if 'offset' in r: # an image inside a webdataset tar: its bytes, read by offset
                with open(src, 'rb') as f:
                    f.seek(r['offset'])
                    src = io.BytesIO(f.read(r['size']))
            img = Image.open(src)
            # grayscale / CMYK / palette JPEGs become RGB like the HF processor does
            img = img.convert('RGB')
        except Exception as e:
            return i, None, f'{type(e).__name__}: {e}'
        to_px = lambda im: torch.from_numpy(
            np.array(im.resize((image_size, image_size), resample))).permute(2, 0, 1)
        px = to_px(img).contiguous()
        W, H = img.size
        hf = kind in ('siglip', 'siglip2')
        decoded = (torch.from_numpy(np.array(img)).permute(2, 0, 1)
                   if hf and preprocess == 'batch' else None) # (3, H, W)
        crops = [img if decoded is None else decoded]
        boxes, flips = [[0.0, 0.0, 1.0, 1.0]], [False]
        # views come from the ORIGINAL image
        for (x0, y0, x1, y1), flip in view_boxes(r['image_id'], W, H)[1:]:
            if decoded is not None:
                # batch: the same pixels as PIL's crop + mirror, cut from the decoded tensor
                view = decoded[:, y0:y1, x0:x1]
                crops.append(view.flip(-1) if flip else view)
            else:
                # ours: resample the box from the whole image, as train.py's crop_boxes
                # samples the cached pixels (neighbours past the box edge included); an HF
                # processor needs the cropped image itself
                box = (x0, y0, x1, y1)
                view = img.crop(box) if hf else img.resize((image_size, image_size),
                                                           resample, box=box)
                crops.append(view.transpose(Image.FLIP_LEFT_RIGHT) if flip else view)
            boxes.append([x0 / W, y0 / H, x1 / W, y1 / H])
            flips.append(flip)
        if decoded is not None:
            # K uint8 (3, h, w) views: the processor runs later, per batch (take_views)
            tin = crops
        elif hf: # the teacher sees exactly its own processor's output, per view
            tin = dict(improc(crops, return_tensors='pt'))
        else: # ours: every view at the cached resolution, as view 0 always was
            tin = torch.stack([px] + [to_px(c) for c in crops[1:]])
        return i, px, tin, torch.tensor(boxes), torch.tensor(flips)
def collate(batch):
    return batch

# transformers 5.x returns BaseModelOutputWithPooling; 4.x returned the tensor
def features(out):
    return out if torch.is_tensor(out) else out.pooler_output

autocast = torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype),
                          enabled=dtype != 'float32')
# (B, K, ...) teacher inputs (a tensor or the processor's dict) -> rows, image-major
def take_views(tin, views_slice):
    # preprocess=batch: B lists of K uint8 views -> the processor, on `device`
    if isinstance(tin, list):
        crops = [view for per_image in tin for view in per_image[views_slice]]
        return dict(improc(crops, return_tensors='pt', device=device))
    pick = lambda x: x[:, views_slice].flatten(0, 1)
    return pick(tin) if torch.is_tensor(tin) else {k: pick(v) for k, v in tin.items()}

# ours: uint8 (B, 3, S, S); HF: the processor's batched outputs -> (B, D)
@torch.inference_mode()
def embed_images(tin):
    with autocast:
        if kind == 'ours':
            return model.encode_image(model.preprocess(tin.to(device)))
        return features(model.get_image_features(
            **{k: v.to(device) for k, v in tin.items()}))
@torch.inference_mode()
def embed_texts(ids): # (M, L) -> (M, D)
    with autocast:
        ids = ids.to(device)
        return (model.encode_text(ids) if kind == 'ours'
                else features(model.get_text_features(input_ids=ids)))

# read D off the model's own output rather than guessing which config field holds it
if model is not None:
    embed_dim = embed_texts(torch.zeros(1, max_length, dtype=torch.long)).shape[-1]

# atomic and durable: a half-written shard never carries the final name
def save_shard(tensors, meta, path):
    save_file(tensors, path + '.tmp', metadata={'info': json.dumps(meta)})
    replace_durably(path + '.tmp', path)
def save_json(obj, path):
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    replace_durably(path + '.tmp', path)
# a 0-byte / truncated shard (power loss, full disk) must be recomputed, not trusted
def shard_ok(path):
    try:
        with open(path, 'rb') as f:
            n = int.from_bytes(f.read(8), 'little')
            header = json.loads(f.read(n))
        end = max([v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'],
                  default=0)
        return '__metadata__' in header and os.path.getsize(path) == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError):
        return False
# content, never paths: `./out/t` and `out/t` hash the same, new weights at one path do not
def hash_files(paths):
    pairs = sorted((os.path.basename(p), sha256(p)) for p in paths)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()

# -----------------------------------------------------------------------------
# content the shards on disk must share with this run (guards resume against mixing caches):
# hashes of the teacher's weights + config, of the processor files and of every annotation
# file read, and the settings
# an HF hub name -> its local snapshot (from_pretrained above has downloaded it)
def local_dir(name):
    if os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download
    return snapshot_download(name, local_files_only=True)
if kind == 'ours':
    teacher_files = [os.path.join(teacher, f) for f in ('model.safetensors', 'config.json')]
elif model is not None:
    hf_dir = local_dir(teacher)
    teacher_files = [os.path.join(hf_dir, f) for f in sorted(os.listdir(hf_dir))
                     if f == 'config.json' or f.endswith(('.safetensors', '.bin'))]
proc_local = local_dir(proc_dir)
# tokenizer + image settings only:
proc_files = [os.path.join(proc_local, f) for f in sorted(os.listdir(proc_local))
              if f.startswith(('tokenizer', 'special_tokens', 'added_tokens', 'preprocessor',
                               'processor', 'vocab', 'merges', 'spiece'))
              or f.endswith('.model')] # not eval.json, logs, ...
contents = 'paired' if images and captions else ('images' if images else 'texts')
settings = dict(kind=kind, image_size=image_size, lowercase=lowercase, max_length=max_length,
                split=split, karpathy=bool(karpathy), n_records=len(records),
                shard_size=shard_size, max_images=max_images, contents=contents,
                views=views, view_scale=view_scale, view_flip=view_flip, tars=tars,
                preprocess=preprocess)
content = dict(teacher=hash_files(teacher_files) if model is not None else 'none',
               processor=hash_files(proc_files), annotations=annotations, settings=settings)
settings_path = os.path.join(split_dir, 'settings.json')
if os.path.isfile(settings_path) and read_json(settings_path, annotation=False) != content:
    sys.exit(f"cache_teacher: {split_dir} holds shards written with other settings "
             f"or content: "
             f"{what_changed(read_json(settings_path, annotation=False), content)}; "
             f"delete it or choose another out_dir")
if rank == 0:
    save_json(content, settings_path)

n_shards = math.ceil(len(records) / shard_size)
shard_path = lambda k: os.path.join(split_dir, f'{split}-{k:05d}.safetensors')
for k in range(rank, n_shards, world):
    if os.path.isfile(shard_path(k)) and not shard_ok(shard_path(k)):
        print(f"{shard_path(k)}: truncated or unreadable "
              f"({os.path.getsize(shard_path(k))} bytes): recomputing it")
        os.remove(shard_path(k))
todo = [k for k in range(rank, n_shards, world) if not os.path.isfile(shard_path(k))]
print(f"{split}: {len(records)} images in {n_shards} shards, teacher={teacher} ({kind}), "
      f"{image_size}px; "
      f"rank {rank} writes {len(todo)} shards ({n_shards - len(todo)} done before)")
# a writer error (disk full, permission) stops the run here, naming the shard
def wait_write(job):
    path, future = job
    try:
        future.result()
    except Exception as e:
        sys.exit(f"cache_teacher: writing {path} failed ({type(e).__name__}: {e}); "
                 f"fix it and rerun (finished shards are kept)")
writer, pending, t0, n_done = ThreadPoolExecutor(1), None, time.time(), 0
bar = tqdm(total=sum(len(records[k * shard_size:(k + 1) * shard_size]) for k in todo),
           unit='img', mininterval=2, disable=not todo)
for k in todo:
    # the previous shard's write failed already: stop before computing this one
    if pending and pending[1].done():
        wait_write(pending)
    recs = records[k * shard_size:(k + 1) * shard_size]
    pixels, view_emb, boxes, flips, kept, skipped = [], [], [], [], [], []
    loader = torch.utils.data.DataLoader(Images(recs), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=collate)
    for batch in (loader if images else []): # a text-only cache never opens an image
        skipped += [dict(image_id=recs[b[0]]['image_id'], file=recs[b[0]]['path'],
                         reason=b[2])
                    for b in batch if b[1] is None]
        batch = [b for b in batch if b[1] is not None]
        if not batch:
            continue
        kept += [b[0] for b in batch]
        pixels.append(torch.stack([b[1] for b in batch]))
        boxes.append(torch.stack([b[3] for b in batch]))
        flips.append(torch.stack([b[4] for b in batch]))
        if model is not None:
            if kind == 'ours':
                tin = torch.stack([b[2] for b in batch]) # (B, K, 3, S, S)
            elif preprocess == 'batch':
                tin = [b[2] for b in batch] # B lists of K views
            else:
                tin = {key: torch.stack([b[2][key] for b in batch]) for key in batch[0][2]}
            # view 0 alone, then the crops: the full images see exactly the batches of a
            # cache without views
            e = [embed_images(take_views(tin, slice(0, 1)))]
            if views > 1:
                e.append(embed_images(take_views(tin, slice(1, None))))
            view_emb.append(torch.cat([x.float().cpu().view(len(batch), -1, embed_dim)
                                       for x in e], 1)) # (B, K, D)
        n_done += len(batch)
        bar.update(len(batch))
    if images:
        recs = [recs[i] for i in kept]
    cap_img = [r['image_id'] for r in recs for _ in r['captions']]
    caps = [c for r in recs for c in r['captions']]
    regs = ([(r['image_id'], b, n) for r in recs for b, n in r['regions']]
            if images and captions else [])
    L = lambda x, dt: torch.tensor(x, dtype=dt)
    t = dict(image_ids=L([r['image_id'] for r in recs], torch.int64))
    if images:
        t['pixels'] = (torch.cat(pixels) if pixels
                       else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8))
    if images and model is not None:
        e = torch.cat(view_emb) if view_emb else torch.zeros(0, views, embed_dim)
        t['image_embeds'] = e[:, 0].half() # view 0: the full image
        # (N, K, D) fp16 + each view's box and flip, re-applied by train.py on the cached
        # pixels
        if views > 1:
            t['view_embeds'] = e.half()
            t['view_boxes'] = torch.cat(boxes)
            t['view_flips'] = torch.cat(flips).to(torch.uint8)
    if captions:
        t['caption_image_ids'] = L(cap_img, torch.int64)
        t['input_ids'] = L(encode_captions(caps), torch.int32).view(-1, max_length)
    if captions and model is not None:
        ids = t['input_ids'].long()
        t['text_embeds'] = torch.cat([embed_texts(ids[i:i + 4 * batch_size]).float().cpu()
                                      for i in range(0, len(caps), 4 * batch_size)]
                                     + [torch.zeros(0, embed_dim)]).half()
    # LocCa targets exist only where images and their captions / regions are paired
    if images and captions:
        cap_seq = [locca_seq('cap:', c) for c in caps]
        aref_seq = [locca_seq('aref:', n + ' :', box_to_text(b)) for _, b, n in regs]
        gcap_seq = [locca_seq('gcap:', box_to_text(b) + ' :', n) for _, b, n in regs]
        t.update(cap_ids=L([s for s, _ in cap_seq], torch.int32).view(-1, max_length),
                 cap_prefix=L([p for _, p in cap_seq], torch.int32),
                 region_image_ids=L([i for i, _, _ in regs], torch.int64),
                 boxes=L([b for _, b, _ in regs], torch.float32).view(-1, 4),
                 aref_ids=L([s for s, _ in aref_seq], torch.int32).view(-1, max_length),
                 aref_prefix=L([p for _, p in aref_seq], torch.int32),
                 gcap_ids=L([s for s, _ in gcap_seq], torch.int32).view(-1, max_length),
                 gcap_prefix=L([p for _, p in gcap_seq], torch.int32))
    meta = dict(skipped=skipped, truncated_captions=n_truncated, n_images=len(recs),
                n_captions=len(caps), n_regions=len(regs))
    n_truncated = 0
    # at most one write in flight: its error surfaces one shard later, not after all of them
    if pending:
        wait_write(pending)
    # next shard's compute overlaps this write
    pending = (shard_path(k), writer.submit(save_shard, t, meta, shard_path(k)))
if pending:
    wait_write(pending)
writer.shutdown()
bar.close()
print(f"rank {rank}: {n_done} images in {time.time() - t0:.1f}s "
      f"({n_done / (time.time() - t0):.0f} img/s)")

# -----------------------------------------------------------------------------
# manifest (rank 0, after every rank's shards exist): counts, checksums, fingerprints
if world > 1:
    torch.distributed.barrier()
if rank == 0:
    shards, counts = [], dict(images=0, captions=0, regions=0, skipped_images=0,
                              truncated_captions=0)
    skipped = []
    for k in range(n_shards):
        with safe_open(shard_path(k), 'pt') as f:
            meta = json.loads(f.metadata()['info'])
        shards.append(dict(file=os.path.basename(shard_path(k)), sha256=sha256(shard_path(k)),
                           n_images=meta['n_images'], n_captions=meta['n_captions'],
                           n_regions=meta['n_regions']))
        for c in ('images', 'captions', 'regions'):
            counts[c] += meta[f'n_{c}']
        counts['skipped_images'] += len(meta['skipped'])
        counts['truncated_captions'] += meta['truncated_captions']
        skipped += meta['skipped']
    counts.update(missing_images=len(missing), dropped_boxes=n_boxes_dropped,
                  crowd_boxes=n_crowd)
    proc_out = os.path.join(split_dir, 'processor')
    # the student must tokenise exactly like the teacher: ship the files along
    tok.save_pretrained(proc_out)
    improc.save_pretrained(proc_out)
    processor_info = dict(tokenizer=type(tok).__name__, vocab_size=len(tok),
                          max_length=max_length, padding='right',
                          pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                          lowercase=lowercase, resample=int(resample),
                          backend=backend, teacher_image_size=teacher_size)
    reader = ('folder' if image_folder else 'webdataset' if tars
              else 'caption_file' if caption_file else 'karpathy' if karpathy else 'coco')
    manifest = dict(teacher=teacher, teacher_kind=kind, teacher_params=teacher_params,
                    embed_dim=embed_dim, logit_scale=logit_scale, logit_bias=logit_bias,
                    image_size=image_size, mean=mean, std=std, processor=processor_info,
                    # Karpathy's files name their dataset (coco, flickr30k): eval.json keys
                    # its results by it
                    dataset=dict(name=(split_file.get('dataset') if karpathy else None)
                                 or os.path.basename(os.path.abspath(data_dir)),
                                 reader=reader, id_space=id_space if karpathy else None,
                                 karpathy=os.path.basename(karpathy),
                                 instances=','.join(os.path.basename(p)
                                                    for p in instances.split(',') if p),
                                 contents=contents, views=views, view_scale=view_scale,
                                 view_flip=view_flip),
                    data_dir=os.path.abspath(data_dir), split=split, counts=counts,
                    skipped=skipped[:100], shards=shards,
                    content=content, preprocess=preprocess)
    # the teacher: its weights + processor (content hashes) and everything train.py takes
    # from it; the same for every split, so train.py can check that train and val caches
    # share a teacher
    tf = dict(teacher=content['teacher'], processor_files=content['processor'],
              embed_dim=embed_dim, image_size=image_size, mean=mean, std=std,
              processor=processor_info, logit_scale=logit_scale, logit_bias=logit_bias)
    tf_json = json.dumps(tf, sort_keys=True)
    manifest['teacher_fingerprint'] = hashlib.sha256(tf_json.encode()).hexdigest()[:16]
    manifest['fingerprint'] = cache_fingerprint(manifest)
    path = os.path.join(split_dir, 'manifest.json')
    save_json(manifest, path) # last, durably: a directory with a manifest is a finished cache
    print(f"wrote {path}: {counts}")
if world > 1:
    torch.distributed.destroy_process_group()
# expected (synthetic train split, tiny teacher, 2 cores):
# "wrote cache/shapes/train/manifest.json: {'images': 1000, ...}"
