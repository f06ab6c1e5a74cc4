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
    # Flickr30k: Karpathy's dataset_flickr30k.json + its one image folder (Flickr photo ids)
    python cache_teacher.py --data_dir=/data/flickr30k/flickr30k-images \
        --karpathy=/data/flickr30k/dataset_flickr30k.json --split=test \
        --teacher=google/siglip2-large-patch16-256 --out_dir=cache/flickr30k-L --device=cuda
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

The file reads top to bottom: the views, Teacher, the readers (one per source; also the
zero-shot sources eval.py classifies), one shard's tensors, then the script under __main__
(settings, the source, the teacher, the shards, the manifest). The format, its checks and its
reader are cache.py. `from cache_teacher import Teacher` has no side effects: the one teacher
wrapper, which eval.py, student.py and bench.py use too.
"""
import os, sys, io, re, glob, json, time, math, string, tarfile, hashlib
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from model import box_to_text, tokenize
from cache import (sha256, atomic_write, write_json, read_json, check_name, teacher_fingerprint,
                   what_changed, shard_ok, write_manifest, hash_files, processor_files,
                   check_save)

# one list for every reader of image files (folders, tars, zero-shot, student.py's search)
IMAGE_EXT = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')

# -----------------------------------------------------------------------------
# views (MobileCLIP's reinforced views): boxes drawn here, re-applied by train.py on the pixels
def view_boxes(image_id, W, H, views, view_scale, view_flip):
    """-> K (pixel box, flip) pairs: view 0 the whole image, then random-resized crops (area
    fraction ~ U(view_scale, 1), aspect ~ log-U(3/4, 4/3) as torchvision's RandomResizedCrop).
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



# -----------------------------------------------------------------------------
# the teacher: HF SigLIP (fixed res), HF SigLIP 2 NaFlex, one of our train.py runs, or none
def local_dir(name): # an HF hub name -> its local snapshot (from_pretrained has downloaded it)
    if os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download
    return snapshot_download(name, local_files_only=True)

# transformers 5.x returns BaseModelOutputWithPooling; 4.x returned the tensor
def features(out):
    return out if torch.is_tensor(out) else out.pooler_output

# what a manifest's content['teacher'] hashes (Teacher.files; train.py's text_init='teacher')
def teacher_files(path, kind):
    if kind == 'ours':
        return [os.path.join(path, f) for f in ('model.safetensors', 'config.json')]
    hf_dir = local_dir(path)
    return [os.path.join(hf_dir, f) for f in sorted(os.listdir(hf_dir))
            if f == 'config.json' or f.endswith(('.safetensors', '.bin'))]

class Teacher:
    """Any model dir behind one interface: `path` a train.py out_dir (our students, the demo
    teacher, an HF SigLIP train.py fine-tuned), an HF SigLIP / SigLIP 2 (NaFlex too) dir or hub
    name, or 'none' (tokenizer and image settings of `processor` only). One resize, one
    tokenisation, one forward, shared by the cache, eval.py (zero-shot), student.py (search,
    export) and bench.py (the cache pass, speed)."""
    def __init__(self, path, device='cpu', processor='', max_length=0, lowercase=True,
                 dtype='float32'):
        from transformers import AutoTokenizer, AutoProcessor
        from model import is_trained_dir, load_trained, quiet_transformers
        quiet_transformers()
        self.path, self.device, self.lowercase = path, device, lowercase
        self.model, self.kind = None, 'none'
        if path != 'none' and os.path.isdir(path) and not os.path.isfile(
                os.path.join(path, 'config.json')):
            sys.exit(f"no config.json in {path!r}: not a student / teacher directory")
        if path != 'none' and is_trained_dir(path):
            if not os.path.isfile(os.path.join(path, 'model.safetensors')):
                sys.exit(f"{path}: no model.safetensors (a run that has not saved yet?)")
            check_save(path, 'cache_teacher')
            # the one loader of a run dir, as eval.py scores it; prep feeds its preprocess
            self.kind, self.model = 'ours', load_trained(path)
            # the text tower pools the last (pad) position: tokenise at the length it trained
            # on (config.json; older run dirs: meta.json)
            trained = (getattr(self.model.config, 'text_length', None)
                       or read_json(os.path.join(path, 'meta.json')).get('text_length', 64))
            if max_length and max_length != trained:
                sys.exit(f"cache_teacher: {path} was trained on text length {trained}, "
                         f"not max_length={max_length}")
            max_length = trained
        elif path != 'none':
            from transformers import AutoModel
            try:
                self.model = AutoModel.from_pretrained(path, dtype=torch.float32)
            except OSError as e: # a deleted dir, a hub name not downloaded (offline)
                sys.exit(f"{path!r}: no such model dir, nor a downloaded HF model "
                         f"({str(e).splitlines()[0]})")
            self.kind = 'siglip2' if self.model.config.model_type == 'siglip2' else 'siglip'
        elif not processor:
            sys.exit("cache_teacher: --teacher=none needs --processor=<dir> "
                     "(tokenizer + image settings)")
        self.proc_dir = processor or path
        # SigLIP / SigLIP 2 (§2.1): 64 tokens; another length silently breaks the teacher
        self.length = max_length or 64
        # a student with an HF text encoder reads its own tokenizer's ids (saved beside it),
        # which normalises the text itself (BERT uncased lowercases)
        text_encoder = getattr(getattr(self.model, 'config', None), 'text_encoder', '')
        if text_encoder:
            self.lowercase = False
        self.tok = AutoTokenizer.from_pretrained(os.path.join(path, text_encoder) if text_encoder
                                                 else self.proc_dir)
        self.check_vocabulary()
        # SigLIP pools the last position: left padding silently changes the embedding
        self.tok.padding_side = 'right'
        # NaFlex: the processor's saved values, not Siglip2Processor's class defaults
        self.improc = AutoProcessor.from_pretrained(self.proc_dir).image_processor
        self.mean, self.std = list(self.improc.image_mean), list(self.improc.image_std)
        self.resample = getattr(self.improc, 'resample', Image.BILINEAR)
        hf = self.kind in ('siglip', 'siglip2')
        # which pixels the HF teacher saw: transformers 5.x processors default to torchvision
        # (PIL is the other backend)
        self.backend = getattr(self.improc, 'backend', 'pil') if hf else 'pil'
        # NaFlex (a Siglip2 model, or --teacher=none with its processor): aspect-preserving
        # patches; the cached pixels get the square size of the full patch budget
        if getattr(self.improc, 'max_num_patches', None):
            self.input_size = int(self.improc.patch_size * math.isqrt(self.improc.max_num_patches))
        elif self.kind == 'ours':
            self.input_size = self.model.config.image_size
        else:
            self.input_size = self.improc.size['height']
        self.autocast = torch.autocast(device_type=torch.device(device).type,
                                       dtype=getattr(torch, dtype), enabled=dtype != 'float32')
        self.params, self.logit_scale, self.logit_bias, self.embed_dim = None, None, None, None
        self._pieces = {}
        if self.model is None:
            return
        count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
        # Table 1's teacher row: image tower and total, counted on the loaded weights; our image
        # path is timm tower + projection (HF's vision_model, in HFSiglip's visual too, holds
        # its pooling head)
        image_part = [self.model.visual] if self.kind == 'ours' else [self.model.vision_model]
        if hasattr(self.model, 'img_proj'): # a Student's projection
            image_part.append(self.model.img_proj)
        self.params = dict(image=count(*image_part), total=count(self.model))
        self.model.to(device).eval()
        self.logit_scale = self.model.logit_scale.exp().item()
        self.logit_bias = self.model.logit_bias.item()
        # read D off the model's own output rather than guessing which config field holds it
        self.embed_dim = self.texts(torch.zeros(1, self.length, dtype=torch.long)).shape[-1]

    def check_vocabulary(self): # the teacher must read the ids this tokenizer writes
        tok, path = self.tok, self.path
        own_tok = os.path.join(path, 'tokenizer_config.json')
        if self.kind == 'ours' and self.proc_dir != path and os.path.isfile(own_tok):
            from transformers import AutoTokenizer
            # train.py saves the tokenizer it was trained with beside the weights
            own = AutoTokenizer.from_pretrained(path)
            if own.get_vocab() != tok.get_vocab():
                sys.exit(f"cache_teacher: --processor={self.proc_dir} has another vocabulary "
                         f"({len(tok)} tokens) than the tokenizer "
                         f"teacher {path} was trained with ({len(own)} tokens): "
                         f"its embeddings would be garbage; drop --processor")
        # kept_ids: the text tower's vocabulary in the teacher's ids (with an HF text encoder
        # the decoder's only, and the tokenizer is the encoder's own)
        if (self.kind == 'ours' and not getattr(self.model.config, 'text_encoder', '')
                and max(self.model.config.kept_ids) >= len(tok)):
            sys.exit(f"cache_teacher: teacher {path} knows token ids up to "
                     f"{max(self.model.config.kept_ids)}, but the tokenizer "
                     f"in {self.proc_dir} has only {len(tok)}: another vocabulary")
        if self.kind in ('siglip', 'siglip2') and (
                self.model.config.text_config.vocab_size < len(tok)):
            sys.exit(f"cache_teacher: teacher {path} has a text vocabulary of "
                     f"{self.model.config.text_config.vocab_size} tokens, "
                     f"the tokenizer in {self.proc_dir} has {len(tok)}: "
                     f"ids past the table would crash or embed garbage")

    def files(self): # what the teacher fingerprint hashes: weights + config
        return teacher_files(self.path, self.kind)

    def processor_files(self): # tokenizer + image settings only, not eval.json, logs, ...
        return processor_files(local_dir(self.proc_dir))

    # text --------------------------------------------------------------------
    # SigLIP 2 was trained on lowercased text; the fixed-res tokenizer won't do it
    def norm_text(self, s):
        return ' '.join(s.lower().split()) if self.lowercase else ' '.join(s.split())

    def tokenize(self, texts): # -> (M, L) int64, right-padded with 0, truncated to L
        return tokenize(self.tok, [self.norm_text(t) for t in texts], self.length)

    def n_truncated(self, texts): # how many texts are longer than L tokens
        if not texts:
            return 0
        ids = self.tok([self.norm_text(t) for t in texts])['input_ids']
        return sum(len(x) > self.length for x in ids)

    # one piece without specials; pieces concatenate so inference prefixes match
    def piece(self, s):
        if s not in self._pieces:
            self._pieces[s] = self.tok(self.norm_text(s), add_special_tokens=False)['input_ids']
        return self._pieces[s]

    # images ------------------------------------------------------------------
    def pixels(self, img, size, box=None): # PIL RGB (or its box) -> uint8 (3, size, size)
        px = np.array(img.resize((size, size), self.resample, box=box)) # (size, size, 3)
        return torch.from_numpy(px).permute(2, 0, 1)

    def process(self, images, device=None): # HF: PIL or uint8 (3, h, w) images -> its inputs
        kw = dict(device=device) if device else {}
        return dict(self.improc(images, return_tensors='pt', **kw))

    def prep(self, images): # PIL RGB images -> the model's inputs on the device
        if self.kind != 'ours':
            return {k: v.to(self.device) for k, v in self.process(images).items()}
        S = self.model.config.image_size
        px = torch.stack([self.pixels(im, S) for im in images]).to(self.device) # (B, 3, S, S)
        return self.model.preprocess(px)

    # forward -----------------------------------------------------------------
    @torch.no_grad()
    def images(self, inputs): # prep's output (ours: normalised (B, 3, S, S)) -> (B, D) float
        with self.autocast:
            if self.kind == 'ours':
                return self.model.encode_image(inputs).float()
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            return features(self.model.get_image_features(**inputs)).float()

    @torch.no_grad()
    def texts(self, ids): # (M, L) -> (M, D) float
        ids = ids.long().to(self.device)
        with self.autocast:
            if self.kind == 'ours':
                return self.model.encode_text(ids).float()
            return features(self.model.get_text_features(input_ids=ids)).float()

def embed_files(enc, paths, batch_size): # eval.py's zero-shot, student.py's folder search
    """-> (N, D) normalised on CPU, indices of the files read (unreadable ones: named, skipped)."""
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
        sys.exit(f"none of {len(paths)} image files could be read")
    return torch.cat(embs), keep

# -----------------------------------------------------------------------------
# readers: one per source, each -> ({image_id: record}, {file: sha256 of what it read},
# {what it dropped or merged: count}, written into the manifest's counts)
# a record is {image_id, path, captions, regions} (+ width/height, or a tar member's offset)
def read_annotation(path, annotations):
    if not os.path.isfile(path):
        sys.exit(f"cache_teacher: {path} not found")
    obj = read_json(path)
    # the cache fingerprint hashes content
    annotations[os.path.basename(path)] = sha256(path)
    return obj

def decode_text(raw, where):
    """Bytes of a user's text (a caption file line, a tar caption, a jsonl line) -> str; bytes that
    are not UTF-8 are an error naming where they are, not a traceback."""
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        sys.exit(f"cache_teacher: {where}: not UTF-8 text (byte {e.start}: "
                 f"{raw[e.start:e.start + 4]!r}); convert it, e.g. iconv -t UTF-8")

def text_lines(path): # -> [(line number, str)] of a UTF-8 text file, each line checked
    with open(path, 'rb') as f:
        return [(n, decode_text(raw, f"{path}, line {n}")) for n, raw in enumerate(f, 1)]

def list_image_files(folder):
    """Every image under folder (IMAGE_EXT), sorted paths, and what was left out, counted:
    other files, special files (a FIFO or socket named .jpg would block a reader), dangling
    symlinks. Symlinked subfolders are followed; a folder reached a second time (a link back
    up the tree, two links to one folder) is read once, counted."""
    paths = []
    dropped = dict(not_images=0, not_regular_files=0, repeated_folders=0)
    seen = set() # real paths of the folders walked
    for d, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dropped['repeated_folders'] += 1
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for f in files:
            p = os.path.join(d, f)
            if not f.lower().endswith(IMAGE_EXT):
                dropped['not_images'] += 1
            elif not os.path.isfile(p): # FIFO, socket, device, dangling symlink
                dropped['not_regular_files'] += 1
            else:
                paths.append(p)
    return sorted(paths), dropped

def list_images(folder): # every image file under folder (as the cache reads a folder)
    paths, dropped = list_image_files(folder)
    if any(dropped.values()):
        print(f"{folder}: left out {dropped}")
    return [os.path.relpath(p, folder) for p in paths]

def read_coco(data_dir, split): # COCO-2017 layout
    annotations = {}
    caps = read_annotation(os.path.join(data_dir, 'annotations', f'captions_{split}2017.json'),
                           annotations)
    recs = coco_images(data_dir, split, caps['images'])
    for a in caps.get('annotations', []):
        recs[a['image_id']]['captions'].append(a['caption'])
    return recs, annotations, {}

def read_coco_unlabeled(data_dir, split): # COCO unlabeled2017: images without captions
    annotations = {}
    info = read_annotation(os.path.join(data_dir, 'annotations', f'image_info_{split}2017.json'),
                           annotations)
    return coco_images(data_dir, split, info['images']), annotations, {}

def coco_images(data_dir, split, images):
    return {im['id']: dict(image_id=im['id'],
                           path=os.path.join(data_dir, f'{split}2017', im['file_name']),
                           width=im['width'], height=im['height'], captions=[], regions=[])
            for im in images}

def read_karpathy(karpathy, data_dir, split):
    """Karpathy's dataset_{coco,flickr30k,flickr8k}.json: keep ALL captions (COCO test has
    25,010, not 25,000); split may join several ('train+restval'). -> also what the ids are
    (id_space) and the dataset the file names ('coco', 'flickr30k'). COCO: id = cocoid, image
    under data_dir/<filepath>/. Flickr (no cocoid, no filepath, one image folder): id = the
    Flickr photo id that starts the file name (1000092795.jpg, Flickr8k's
    1000268201_693b08cb0e.jpg), the same in every release of the data, where Karpathy's imgid
    is only a row of this file."""
    annotations = {}
    split_file = read_annotation(karpathy, annotations)
    wanted = set(split.split('+'))
    recs, space = {}, 'coco'
    for im in split_file['images']:
        if im['split'] not in wanted:
            continue
        if 'cocoid' in im:
            image_id = im['cocoid']
            path = os.path.join(data_dir, im['filepath'], im['filename'])
        else:
            digits = re.match(r'\d+', im['filename'])
            if not digits:
                sys.exit(f"cache_teacher: {karpathy}: image {im['filename']!r} has no cocoid "
                         f"and its file name does not start with a Flickr photo id")
            image_id, space = int(digits.group()), 'flickr'
            path = os.path.join(data_dir, im['filename'])
        recs[image_id] = dict(image_id=image_id, path=path, regions=[],
                              captions=[s['raw'] for s in im['sentences']])
    return recs, annotations, dict(name=split_file.get('dataset'), id_space=space)

def read_folder(image_folder, folder_captions, captions):
    """Any folder of images (searched recursively): ids are the positions in path order (stable
    for the same folder); optionally paired by a JSON-lines file, several lines per file."""
    paths, dropped = list_image_files(image_folder)
    if any(dropped.values()):
        print(f"{image_folder}: left out {dropped} (counted in the manifest)")
    recs = {i: dict(image_id=i, path=p, captions=[], regions=[]) for i, p in enumerate(paths)}
    # which files, in which order
    annotations = {'image_folder': hashlib.sha256('\n'.join(paths).encode()).hexdigest()}
    if not folder_captions:
        return recs, annotations, dropped
    if not os.path.isfile(folder_captions):
        sys.exit(f"cache_teacher: folder_captions {folder_captions} not found")
    by_path = {os.path.relpath(p, image_folder): recs[i] for i, p in enumerate(paths)}
    for n, line in text_lines(folder_captions):
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
    annotations[os.path.basename(folder_captions)] = sha256(folder_captions)
    no_caption = sum(not r['captions'] for r in recs.values())
    if captions and no_caption:
        sys.exit(f"cache_teacher: {no_caption} of {len(recs)} images in {image_folder} "
                 f"have no caption in {folder_captions}: "
                 f"pass --captions=False for an image-only cache")
    return recs, annotations, dropped

def expand_braces(p):
    """webdataset's brace notation: {00000..00331} ranges (zero-padded as written) and {a,b}
    lists; otherwise a glob."""
    m = re.search(r'\{([^{}]*)\}', p)
    if not m:
        return sorted(glob.glob(p)) or [p]
    a, dots, b = m.group(1).partition('..')
    items = ([f'{i:0{len(a)}d}' for i in range(int(a), int(b) + 1)] if dots
             else m.group(1).split(','))
    return [q for i in items for q in expand_braces(p[:m.start()] + i + p[m.end():])]

def read_tars(tars, captions):
    """webdataset tars (img2dataset: key.jpg|png + key.txt [+ key.json]): members grouped by
    key; each image is read later straight from its byte range in the tar."""
    recs, no_caption, seen = {}, 0, set()
    # what is dropped or merged, counted in the manifest
    dropped = dict(repeated_tars=0, duplicate_members=0, not_images=0)
    for path in expand_braces(tars):
        if not os.path.isfile(path):
            sys.exit(f"cache_teacher: tar {path} not found (tars={tars!r})")
        # the same tar listed twice (or by two names) is read once
        if os.path.realpath(path) in seen:
            dropped['repeated_tars'] += 1
            continue
        seen.add(os.path.realpath(path))
        try:
            tf = tarfile.open(path)
            members = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            sys.exit(f"cache_teacher: {path}: not a readable tar ({type(e).__name__}: {e}); "
                     f"re-download it or leave it out of tars={tars!r}")
        found = {} # key -> {ext: member}
        for m in members:
            key, _, ext = m.name.rpartition('.')
            if m.isfile() and key:
                # a name twice in one tar: the last one counts (as tar -x leaves it)
                dropped['duplicate_members'] += ext.lower() in found.get(key, {})
                found.setdefault(key, {})[ext.lower()] = m
        with tf:
            for key in sorted(found):
                im = next((found[key][e[1:]] for e in IMAGE_EXT if e[1:] in found[key]), None)
                # a caption or json without an image (img2dataset writes these for failed
                # downloads)
                if im is None:
                    dropped['not_images'] += 1
                    continue
                if im.offset_data + im.size > os.path.getsize(path):
                    sys.exit(f"cache_teacher: {path}: truncated tar ({im.name} ends past the "
                             f"file's end); re-download it or leave it out of tars={tars!r}")
                txt = found[key].get('txt')
                cap = (decode_text(tf.extractfile(txt).read(), f"{path}, member {txt.name}")
                       .strip() if txt else '')
                no_caption += not cap
                i = len(recs) # ids are positions in (tar, key) order, as for a folder
                recs[i] = dict(image_id=i, path=path, offset=im.offset_data, size=im.size,
                               key=key, captions=[cap] if cap else [], regions=[])
    if captions and no_caption:
        sys.exit(f"cache_teacher: {no_caption} of {len(recs)} images in {tars} "
                 f"have no .txt caption: pass "
                 f"--captions=False for an image-only cache")
    if any(dropped.values()):
        print(f"{tars}: dropped or merged {dropped} (counted in the manifest)")
    return recs, {}, dropped

def read_caption_file(caption_file):
    """One caption per line; a record per caption, so shards split the file."""
    if not os.path.isfile(caption_file):
        sys.exit(f"cache_teacher: caption_file {caption_file} not found")
    lines = [l.strip() for _, l in text_lines(caption_file) if l.strip()]
    recs = {i: dict(image_id=i, path='', captions=[c], regions=[])
            for i, c in enumerate(lines)}
    return recs, {os.path.basename(caption_file): sha256(caption_file)}, {}

def add_boxes(recs, instance_paths, annotations):
    """COCO instances files -> each record's regions ([x0, y0, x1, y1] normalised, category
    name), the LocCa ARef/GCap targets. -> (boxes dropped outside the image, crowd boxes)."""
    n_dropped, n_crowd = 0, 0
    for path in instance_paths:
        # a file named by --instances must exist: no silent cache without boxes
        inst = read_annotation(path, annotations)
        names = {c['id']: c['name'] for c in inst['categories']}
        sizes = {im['id']: (im['width'], im['height']) for im in inst['images']}
        for a in inst['annotations']:
            if a['image_id'] not in recs:
                continue
            # crowd regions have no single-object caption: dropped, counted
            if a.get('iscrowd', 0):
                n_crowd += 1
                continue
            W, H = sizes[a['image_id']]
            x, y, w, h = a['bbox']
            # clip boxes outside the image
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
            # nothing left inside the image: drop, counted in the manifest
            if x1 - x0 < 1 or y1 - y0 < 1:
                n_dropped += 1
                continue
            recs[a['image_id']]['regions'].append(([x0 / W, y0 / H, x1 / W, y1 / H],
                                                   names[a['category_id']]))
    return n_dropped, n_crowd

# -----------------------------------------------------------------------------
# zero-shot sources (eval.py --zeroshot): an ImageFolder dir or a COCO instances json -> images,
# labels, class names and prompt templates; their errors name eval.py's flags, its only caller
WORDNET_ID = re.compile(r'n\d{8}') # an ImageNet val folder: n01440764 (tench)

def check_templates(templates): # each prompt holds {c} and no other field
    for t in templates:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except ValueError as e:
            sys.exit(f"eval.py: --templates: {t!r} is not a template ({e})")
        if fields != {'c'}:
            sys.exit(f"eval.py: --templates: {t!r} must hold {{c}} (the class name) and no "
                     f"other field, has {sorted(fields) or 'none'}")

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
        sys.exit(f"eval.py: --zeroshot={src!r} is neither an ImageFolder dir "
                 f"nor an instances json")
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

# CLIP_benchmark 1.6.2's English class names and templates per dataset (provenance and sha256:
# data/clip_benchmark/README.md); imagenet1k: 1000 names in index order, the 80 OpenAI templates.
# A function, not a str global: the script's settings below are its str globals
def clip_benchmark_file(kind): # 'classnames' / 'zeroshot_classification_templates'
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, 'data', 'clip_benchmark', f'en_{kind}.json')

def clip_benchmark_list(kind, dataset):
    """kind 'classnames' / 'zeroshot_classification_templates', a CLIP_benchmark dataset name
    -> its list from data/clip_benchmark/en_<kind>.json, or None if it has none."""
    return json.load(open(clip_benchmark_file(kind))).get(dataset)

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
                     f"{clip_benchmark_file('classnames')}")
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
        kind = 'zeroshot_classification_templates'
        temps = clip_benchmark_list(kind, dataset or 'imagenet1k')
        if temps is None:
            sys.exit(f"eval.py: --zeroshot_dataset={dataset!r} has no templates in "
                     f"{clip_benchmark_file(kind)}: pass --templates")
    else:
        temps = read_list(templates) if os.path.isfile(templates) else templates.split('|')
    check_templates(temps)
    return temps

def read_zeroshot(src, classnames='', dataset='', templates=''):
    """eval.py --zeroshot's source and settings -> (image paths, labels, the class names put into
    the prompts, the templates, where the names came from, the CLIP_benchmark dataset)."""
    paths, labels, classes = zeroshot_items(src)
    classes, names_from, dataset = zeroshot_classnames(classes, src, classnames, dataset)
    temps = zeroshot_templates(templates, dataset)
    if not paths:
        sys.exit(f"eval.py: no images to classify in {src}")
    # one class: every image is right, a top-1 of 100 % that means nothing is not written
    if len(classes) < 2:
        sys.exit(f"eval.py: --zeroshot={src} has {len(classes)} class(es): "
                 f"zero-shot needs at least 2")
    return paths, labels, classes, temps, names_from, dataset

# -----------------------------------------------------------------------------
# images: decoded in DataLoader workers; corrupt / unreadable files are skipped and counted
class Images(torch.utils.data.Dataset):
    """-> (i, pixels uint8 (3, S, S), teacher inputs for the K views, boxes (K, 4)
    normalised xyxy, flips (K,)), or (i, None, reason) for an unreadable file.
    batch_preprocess: HF teachers get the decoded uint8 views (the processor runs per batch)."""
    def __init__(self, recs, teacher, image_size, views, view_scale, view_flip,
                 batch_preprocess):
        self.recs, self.teacher, self.image_size = recs, teacher, image_size
        self.views, self.view_scale, self.view_flip = views, view_scale, view_flip
        self.batch_preprocess = batch_preprocess
    def __len__(self):
        return len(self.recs)
    def __getitem__(self, i):
        r, teacher, S = self.recs[i], self.teacher, self.image_size
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
        px = teacher.pixels(img, S).contiguous()
        W, H = img.size
        hf = teacher.kind in ('siglip', 'siglip2')
        decoded = (torch.from_numpy(np.array(img)).permute(2, 0, 1)
                   if hf and self.batch_preprocess else None) # (3, H, W)
        crops = [img if decoded is None else decoded]
        boxes, flips = [[0.0, 0.0, 1.0, 1.0]], [False]
        # views come from the ORIGINAL image
        view_list = view_boxes(r['image_id'], W, H, self.views, self.view_scale, self.view_flip)
        for (x0, y0, x1, y1), flip in view_list[1:]:
            if decoded is not None:
                # batch: the same pixels as PIL's crop + mirror, cut from the decoded tensor
                view = decoded[:, y0:y1, x0:x1]
                crops.append(view.flip(-1) if flip else view)
            else:
                # ours: resample the box from the whole image, as train.py's crop_boxes
                # samples the cached pixels (neighbours past the box edge included); an HF
                # processor needs the cropped image itself
                box = (x0, y0, x1, y1)
                view = img.crop(box) if hf else img.resize((S, S), teacher.resample, box=box)
                crops.append(view.transpose(Image.FLIP_LEFT_RIGHT) if flip else view)
            boxes.append([x0 / W, y0 / H, x1 / W, y1 / H])
            flips.append(flip)
        if decoded is not None:
            # K uint8 (3, h, w) views: the processor runs later, per batch (take_views)
            tin = crops
        elif hf: # the teacher sees exactly its own processor's output, per view
            tin = teacher.process(crops)
        else: # ours: every view at the cached resolution, as view 0 always was
            tin = torch.stack([px] + [teacher.pixels(c, S) for c in crops[1:]])
        return i, px, tin, torch.tensor(boxes), torch.tensor(flips)

def collate(batch):
    return batch

# (B, K, ...) teacher inputs (a tensor or the processor's dict) -> rows, image-major
def take_views(teacher, tin, views_slice):
    # preprocess=batch: B lists of K uint8 views -> the processor, on the teacher's device
    if isinstance(tin, list):
        crops = [view for per_image in tin for view in per_image[views_slice]]
        return teacher.process(crops, device=teacher.device)
    pick = lambda x: x[:, views_slice].flatten(0, 1)
    if torch.is_tensor(tin): # ours: uint8 pixels
        return teacher.model.preprocess(pick(tin).to(teacher.device))
    return {k: pick(v) for k, v in tin.items()}

# crops per image in one teacher forward: its activations are those of <= 16 batches whatever
# --views is (views=2000 on 50 images in one forward peaked at 12.9 GB RSS); --views <= 17 runs
# in one forward, as before
VIEW_CHUNK = 16

def embed_views(teacher, batch, batch_preprocess, views):
    """A batch of Images items -> (B, K, D) float on CPU: view 0 alone, then the crops
    (VIEW_CHUNK at a time), so the full images see exactly the batches of a cache without
    views."""
    if teacher.kind == 'ours':
        tin = torch.stack([b[2] for b in batch]) # (B, K, 3, S, S)
    elif batch_preprocess:
        tin = [b[2] for b in batch] # B lists of K views
    else:
        tin = {key: torch.stack([b[2][key] for b in batch]) for key in batch[0][2]}
    e = [teacher.images(take_views(teacher, tin, slice(0, 1)))]
    for v in range(1, views, VIEW_CHUNK):
        e.append(teacher.images(take_views(teacher, tin, slice(v, v + VIEW_CHUNK))))
    return torch.cat([x.float().cpu().view(len(batch), -1, teacher.embed_dim) for x in e], 1)

# -> (ids padded to the teacher's length, prefix length); eos stays even when truncated
def locca_seq(teacher, *pieces):
    L = teacher.length
    ids = [t for p in pieces for t in teacher.piece(p)][:L - 1] + [teacher.tok.eos_token_id]
    return ids + [0] * (L - len(ids)), len(teacher.piece(pieces[0]))

def cache_shard(recs, teacher, images, captions, image_size, views, view_scale, view_flip,
                batch_preprocess, batch_size, num_workers, bar):
    """One shard's records -> (tensors, meta): the cache format's keys and dtypes."""
    has_teacher = teacher.model is not None
    pixels, view_emb, boxes, flips, kept, skipped = [], [], [], [], [], []
    dataset = Images(recs, teacher, image_size, views, view_scale, view_flip, batch_preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
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
        if has_teacher:
            view_emb.append(embed_views(teacher, batch, batch_preprocess, views)) # (B, K, D)
        bar.update(len(batch))
    if images:
        recs = [recs[i] for i in kept]
    caps = [c for r in recs for c in r['captions']]
    L = lambda x, dt: torch.tensor(x, dtype=dt)
    t = dict(image_ids=L([r['image_id'] for r in recs], torch.int64))
    if images:
        t['pixels'] = (torch.cat(pixels) if pixels
                       else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8))
    if images and has_teacher:
        e = torch.cat(view_emb) if view_emb else torch.zeros(0, views, teacher.embed_dim)
        t['image_embeds'] = e[:, 0].half() # view 0: the full image
        # (N, K, D) fp16 + each view's box and flip, re-applied by train.py on the cached
        # pixels
        if views > 1:
            t['view_embeds'] = e.half()
            t['view_boxes'] = torch.cat(boxes)
            t['view_flips'] = torch.cat(flips).to(torch.uint8)
    n_truncated = 0
    if captions:
        # counted before the padded call, whose padding/truncation state the fast tokenizer
        # keeps (and save_pretrained writes into the cache's processor/tokenizer.json)
        n_truncated = teacher.n_truncated(caps)
        t['caption_image_ids'] = L([r['image_id'] for r in recs for _ in r['captions']],
                                   torch.int64)
        t['input_ids'] = teacher.tokenize(caps).int().view(-1, teacher.length)
        # the raw annotation strings (before norm_text), inside the shard checksums: a student
        # with its own tokenizer (train.py text_init) tokenises them without re-caching
        t.update(caption_tensors(caps))
    if captions and has_teacher:
        ids = t['input_ids'].long()
        step = 4 * batch_size
        t['text_embeds'] = torch.cat([teacher.texts(ids[i:i + step]).float().cpu()
                                      for i in range(0, len(caps), step)]
                                     + [torch.zeros(0, teacher.embed_dim)]).half()
    regs = ([(r['image_id'], b, n) for r in recs for b, n in r['regions']]
            if images and captions else [])
    # LocCa targets exist only where images and their captions / regions are paired
    if images and captions:
        t.update(locca_tensors(teacher, caps, regs))
    meta = dict(skipped=skipped, truncated_captions=n_truncated,
                n_images=len(recs), n_captions=len(caps), n_regions=len(regs))
    return t, meta

# captions -> their UTF-8 bytes joined (bytes,) uint8 and each one's byte count (M,) int64:
# lengths, not offsets, so the rows of every shard joined (load_cache) still decode
def caption_tensors(caps):
    utf8 = [c.encode('utf-8') for c in caps]
    joined = np.frombuffer(b''.join(utf8), dtype=np.uint8).copy() # numpy maps 0 bytes too
    return dict(caption_utf8=torch.from_numpy(joined),
                caption_lengths=torch.tensor([len(b) for b in utf8], dtype=torch.int64))

def locca_tensors(teacher, caps, regs): # captions, (image_id, box, name) regions -> targets
    L, length = (lambda x, dt: torch.tensor(x, dtype=dt)), teacher.length
    cap_seq = [locca_seq(teacher, 'cap:', c) for c in caps]
    aref_seq = [locca_seq(teacher, 'aref:', n + ' :', box_to_text(b)) for _, b, n in regs]
    gcap_seq = [locca_seq(teacher, 'gcap:', box_to_text(b) + ' :', n) for _, b, n in regs]
    return dict(cap_ids=L([s for s, _ in cap_seq], torch.int32).view(-1, length),
                cap_prefix=L([p for _, p in cap_seq], torch.int32),
                region_image_ids=L([i for i, _, _ in regs], torch.int64),
                boxes=L([b for _, b, _ in regs], torch.float32).view(-1, 4),
                aref_ids=L([s for s, _ in aref_seq], torch.int32).view(-1, length),
                aref_prefix=L([p for _, p in aref_seq], torch.int32),
                gcap_ids=L([s for s, _ in gcap_seq], torch.int32).view(-1, length),
                gcap_prefix=L([p for _, p in gcap_seq], torch.int32))

def save_shard(tensors, meta, path):
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={'info': json.dumps(meta)}))


# -----------------------------------------------------------------------------
# the script: settings, the source read once, the teacher, the shards, then the manifest
def shard_path(split_dir, split, k):
    return os.path.join(split_dir, f'{split}-{k:05d}.safetensors')

if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    # I/O
    # COCO-2017 layout: annotations/captions_<split>2017.json, <split>2017/*.jpg
    data_dir = 'data/shapes'
    # COCO: train/val/test/web...; with --karpathy: train, restval, train+restval, val, test
    split = 'train'
    # path to a Karpathy split file (dataset_coco.json, dataset_flickr30k.json); images are
    # looked up under data_dir
    karpathy = ''
    # instances json(s) for boxes, comma-separated (Karpathy train+restval: COCO 2014 train +
    # val); '' = annotations/instances_<split>2017.json if it exists (Karpathy: no boxes)
    instances = ''
    out_dir = 'cache/shapes'
    max_images = 0 # 0 = all; else the first N images by id (tests; demo.sh FULL=1's sweep)
    skip_missing = False # missing image files: error (default) or drop and count them
    # unpaired data (DIME-FM distils from unpaired images and texts): image-only and text-only
    images = True # False: a text-only cache (the split's captions, no pixels)
    # False: an image-only cache (captions ignored; COCO unlabeled2017 has none anyway)
    captions = True
    # a folder of images (searched recursively, sorted by path) -> an image-only cache, or
    image_folder = ''
    # ... paired by a JSON-lines file: {"file": "<path under image_folder>", "caption": "..."}
    folder_captions = ''
    caption_file = '' # a text file, one caption per line -> a text-only cache
    # webdataset tars (img2dataset: key.jpg|png + key.txt [+ key.json]): a glob or
    # 'cc3m-{00000..00331}.tar'
    tars = ''
    # reinforced views (MobileCLIP's DataCompDR: augmentations stored with their teacher
    # embeddings): K views per image, view 0 the full image, 1..K-1 random-resized crops
    # (+ flips), seeded by image id
    views = 1
    # crop area fraction ~ U(view_scale, 1); aspect ~ log-U(3/4, 4/3) as torchvision's
    # RandomResizedCrop
    view_scale = 0.35
    view_flip = True # mirror half of the crops (a world whose captions say 'left of' may not)
    # teacher
    # HF SigLIP/SigLIP 2 name or dir | a train.py out_dir | 'none' (pixels + tokens only)
    teacher = 'none'
    processor = '' # processor dir (tokenizer + image settings); '' = the teacher's own
    image_size = 0 # stored pixel resolution for the student; 0 = the teacher's input size
    # SigLIP 2 was trained on lowercased text; the fixed-res tokenizer won't do it
    lowercase = True
    # text length, right-padded with 0: 0 = the teacher's own (64 for SigLIP; ours: the
    # length it trained on)
    max_length = 0
    # system
    batch_size = 64
    shard_size = 2048 # images per shard
    num_workers = 2 # DataLoader workers decoding JPEGs
    # HF teachers: 'worker' runs the processor per image in the DataLoader workers (the
    # reference path); 'batch' has the workers only decode (and cut the views), then runs the
    # processor once per batch on `device` (a GPU: resize + normalise there, not on the CPU).
    # Same pixels on CPU (tested); on a GPU cos >= 0.999 to the reference.
    preprocess = 'worker'
    device = 'cpu'
    dtype = 'float32' # 'bfloat16' / 'float16' autocast on GPU
    config_keys = [k for k, v in globals().items()
                   if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    # recorded in the manifest: the command line that re-caches it
    config = {k: globals()[k] for k in config_keys}
    # -----------------------------------------------------------------------------
    # values checked before any work; torchrun ranks
    for k, value, ok in [('max_images', max_images, max_images >= 0),
                         ('batch_size', batch_size, batch_size > 0),
                         ('shard_size', shard_size, shard_size > 0),
                         ('max_length', max_length, max_length == 0 or max_length > 1),
                         ('num_workers', num_workers, num_workers >= 0)]:
        if not ok:
            sys.exit(f"cache_teacher: bad value {k}={value!r}")
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if world > 1:
        # only used for a barrier before the manifest
        torch.distributed.init_process_group(backend='gloo')
    check_name(split, 'split')

    # -----------------------------------------------------------------------------
    # the source, chosen once -> records {image_id: record}, the hashes of the annotation files
    # read {file: sha256}, what was dropped (counted), and the {name, id_space} a Karpathy file
    # states; a caption file has no images, a folder without a captions file and COCO
    # unlabeled2017 have no captions
    # one source per run: a second one would be ignored without a word
    given = [f'{k}={v}' for k, v in (('image_folder', image_folder), ('tars', tars),
                                     ('caption_file', caption_file), ('karpathy', karpathy))
             if v]
    if len(given) > 1:
        sys.exit(f"cache_teacher: one source per cache run, got {' and '.join(given)}: "
                 f"cache each into its own --split")
    named, dropped = dict(name=None, id_space=None), {}
    if folder_captions and not image_folder:
        sys.exit(f"cache_teacher: folder_captions={folder_captions} pairs the images "
                 f"of an --image_folder; none given")
    coco_captions = os.path.join(data_dir, 'annotations', f'captions_{split}2017.json')
    coco_info = os.path.join(data_dir, 'annotations', f'image_info_{split}2017.json')
    unlabeled = not os.path.isfile(coco_captions) and os.path.isfile(coco_info)
    source = ('folder' if image_folder else 'webdataset' if tars
              else 'caption_file' if caption_file else 'karpathy' if karpathy
              else 'coco_unlabeled' if unlabeled else 'coco')
    if source == 'folder':
        recs, annotations, dropped = read_folder(image_folder, folder_captions, captions)
        captions = captions and bool(folder_captions)
    elif source == 'webdataset':
        recs, annotations, dropped = read_tars(tars, captions)
    elif source == 'caption_file':
        recs, annotations, dropped = read_caption_file(caption_file)
        images = False
    elif source == 'karpathy':
        # a Karpathy file drops nothing; it names its dataset and what its ids are
        recs, annotations, named = read_karpathy(karpathy, data_dir, split)
    elif source == 'coco':
        recs, annotations, dropped = read_coco(data_dir, split)
    else:
        recs, annotations, dropped = read_coco_unlabeled(data_dir, split)
        captions = False
    split_dir = os.path.join(out_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    default = os.path.join(data_dir, 'annotations', f'instances_{split}2017.json')
    if source in ('coco', 'coco_unlabeled') and not instances and os.path.isfile(default):
        instances = default
    n_boxes_dropped, n_crowd = add_boxes(recs, [p for p in instances.split(',') if p],
                                         annotations)
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
        sys.exit(f"cache_teacher: views={views} must be >= 1 and view_scale={view_scale} "
                 f"in (0, 1]")
    missing = [r['path'] for r in records if images and not os.path.isfile(r['path'])]
    if missing and not skip_missing:
        sys.exit(f"cache_teacher: {len(missing)} of {len(records)} image files missing, "
                 f"e.g. {missing[:3]}; fix data_dir or pass --skip_missing=True to drop them "
                 f"(counted in the manifest)")
    records = [r for r in records if not images or os.path.isfile(r['path'])]

    # -----------------------------------------------------------------------------
    # the teacher (t: the model behind `teacher`), and what this run will hold in memory
    t = Teacher(teacher, device, processor, max_length, lowercase, dtype)
    if views > 1 and t.model is None:
        sys.exit("cache_teacher: views > 1 stores teacher embeddings of crops: "
                 "it needs a teacher (not --teacher=none)")
    image_size = image_size or t.input_size
    # memory grows with views x batch (the teacher's inputs) and views x shard (the embeddings
    # held until the shard is written): an absurd setting is refused before any work
    need = (4 * batch_size * views * 3 * t.input_size ** 2
            + 4 * shard_size * views * (t.embed_dim or 0) + shard_size * 3 * image_size ** 2)
    have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if need > have // 2:
        sys.exit(f"cache_teacher: views={views}, batch_size={batch_size}, "
                 f"shard_size={shard_size} need ~{need / 2**30:.1f} GiB, more than half of "
                 f"this machine's {have / 2**30:.0f} GiB: lower them")

    # content the shards on disk must share with this run (guards resume against mixing
    # caches): hashes of the teacher's weights + config, of the processor files and of every
    # annotation file read, and the settings
    contents = 'paired' if images and captions else ('images' if images else 'texts')
    settings = dict(kind=t.kind, image_size=image_size, lowercase=lowercase,
                    max_length=t.length, split=split, karpathy=bool(karpathy),
                    n_records=len(records), shard_size=shard_size, max_images=max_images,
                    contents=contents, views=views, view_scale=view_scale,
                    view_flip=view_flip, tars=tars, preprocess=preprocess)
    content = dict(teacher=hash_files(t.files()) if t.model is not None else 'none',
                   processor=hash_files(t.processor_files()), annotations=annotations,
                   settings=settings)
    settings_path = os.path.join(split_dir, 'settings.json')
    old = read_json(settings_path)
    if old and old != content:
        sys.exit(f"cache_teacher: {split_dir} holds shards written with other settings "
                 f"or content: {what_changed(old, content)}; "
                 f"delete it or choose another out_dir")
    if rank == 0:
        write_json(settings_path, content)

    # -----------------------------------------------------------------------------
    # the shards: rank r writes shards r, r + W, ...; finished ones are kept, truncated ones
    # recomputed
    n_shards = math.ceil(len(records) / shard_size)
    mine = range(rank, n_shards, world)
    for k in mine:
        path = shard_path(split_dir, split, k)
        if os.path.isfile(path) and not shard_ok(path):
            print(f"{path}: truncated or unreadable "
                  f"({os.path.getsize(path)} bytes): recomputing it")
            os.remove(path)
    todo = [k for k in mine if not os.path.isfile(shard_path(split_dir, split, k))]
    print(f"{split}: {len(records)} images in {n_shards} shards, teacher={teacher} "
          f"({t.kind}), {image_size}px; "
          f"rank {rank} writes {len(todo)} shards ({n_shards - len(todo)} done before)")
    t0 = time.time()
    # at most one write in flight, so the next shard's compute overlaps it and a writer error
    # (disk full, permission) stops the run one shard later, naming the shard
    def wait_write(job):
        path, future = job
        try:
            future.result()
        except Exception as e:
            sys.exit(f"cache_teacher: writing {path} failed ({type(e).__name__}: {e}); "
                     f"fix it and rerun (finished shards are kept)")
    writer, pending = ThreadPoolExecutor(1), None
    bar = tqdm(total=sum(len(records[k * shard_size:(k + 1) * shard_size]) for k in todo),
               unit='img', mininterval=2, disable=not todo)
    for k in todo:
        # the previous shard's write failed already: stop before computing this one
        if pending and pending[1].done():
            wait_write(pending)
        shard_records = records[k * shard_size:(k + 1) * shard_size]
        tensors, meta = cache_shard(shard_records, t, images, captions, image_size, views,
                                    view_scale, view_flip, preprocess == 'batch', batch_size,
                                    num_workers, bar)
        if pending:
            wait_write(pending)
        path = shard_path(split_dir, split, k)
        pending = (path, writer.submit(save_shard, tensors, meta, path))
    if pending:
        wait_write(pending)
    writer.shutdown()
    bar.close()
    n_done = bar.n # images embedded (the bar is disabled only when there is nothing to do)
    print(f"rank {rank}: {n_done} images in {time.time() - t0:.1f}s "
          f"({n_done / (time.time() - t0):.0f} img/s)")
    if world > 1:
        torch.distributed.barrier()

    # -----------------------------------------------------------------------------
    # the manifest (rank 0, after every rank's shards exist): counts, checksums, fingerprints;
    # written last, durably: a directory with a manifest is a finished cache
    if rank == 0:
        shards, skipped = [], []
        counts = dict(images=0, captions=0, regions=0, skipped_images=0, truncated_captions=0)
        for k in range(n_shards):
            path = shard_path(split_dir, split, k)
            with safe_open(path, 'pt') as f:
                meta = json.loads(f.metadata()['info'])
            shards.append(dict(file=os.path.basename(path), sha256=sha256(path),
                               n_images=meta['n_images'], n_captions=meta['n_captions'],
                               n_regions=meta['n_regions']))
            for c in ('images', 'captions', 'regions'):
                counts[c] += meta[f'n_{c}']
            counts['skipped_images'] += len(meta['skipped'])
            counts['truncated_captions'] += meta['truncated_captions']
            skipped += meta['skipped']
        counts.update(missing_images=len(missing), dropped_boxes=n_boxes_dropped,
                      crowd_boxes=n_crowd, **dropped)
        # eval.json keys its results by the dataset name (coco, flickr30k)
        dataset = dict(name=named['name'] or os.path.basename(os.path.abspath(data_dir)),
                       reader='coco' if source == 'coco_unlabeled' else source,
                       id_space=named['id_space'],
                       karpathy=os.path.basename(karpathy),
                       instances=','.join(os.path.basename(p)
                                          for p in instances.split(',') if p),
                       contents=contents, views=views, view_scale=view_scale,
                       view_flip=view_flip)
        # the student must tokenise exactly like the teacher: ship the files along
        tok = t.tok
        tok.save_pretrained(os.path.join(split_dir, 'processor'))
        t.improc.save_pretrained(os.path.join(split_dir, 'processor'))
        processor_info = dict(tokenizer=type(tok).__name__, vocab_size=len(tok),
                              max_length=t.length, padding='right',
                              pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                              lowercase=t.lowercase, resample=int(t.resample),
                              backend=t.backend, teacher_image_size=t.input_size)
        manifest = dict(teacher=t.path, teacher_kind=t.kind, teacher_params=t.params,
                        embed_dim=t.embed_dim, logit_scale=t.logit_scale,
                        logit_bias=t.logit_bias, image_size=image_size, mean=t.mean, std=t.std,
                        processor=processor_info, dataset=dataset,
                        data_dir=os.path.abspath(data_dir), split=split, counts=counts,
                        skipped=skipped[:100], shards=shards, content=content,
                        preprocess=preprocess, config=config)
        # the teacher: its weights + processor (content hashes) and everything train.py takes
        # from it; the same for every split, so train.py can check that train and val caches
        # share a teacher
        manifest['teacher_fingerprint'] = teacher_fingerprint(
            content, t.embed_dim, image_size, t.mean, t.std, processor_info, t.logit_scale,
            t.logit_bias)
        path = os.path.join(split_dir, 'manifest.json')
        write_manifest(path, manifest)
        print(f"wrote {path}: {counts}")
    if world > 1:
        torch.distributed.destroy_process_group()
    # expected (synthetic train split, tiny teacher, 2 cores):
    # "wrote cache/shapes/train/manifest.json: {'images': 1000, ...}"
