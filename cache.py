"""
The teacher cache's format, its checks and its reader: what cache_teacher.py writes and train.py,
eval.py and bench.py read. Torch, numpy and safetensors only (no dataset reader, no PIL, no
transformers), so `import cache` is cheap.

A cache is one split dir:

    <split>-00000.safetensors ...  shards of shard_size images each, written to a temporary name
                                   and renamed (a finished shard is kept on a rerun)
    manifest.json                  written last: a dir without one is never read as a cache
    settings.json                  what the shards on disk were made with (a rerun must match)
    processor/                     the teacher's tokenizer + image settings (the student's too)

Shard keys (N images, M captions, R regions; a cache holds the keys of its kind: image-only,
text-only, no teacher): image_ids (N,) int64, pixels (N, 3, S, S) uint8, image_embeds (N, D)
fp16, [view_embeds (N, K, D) fp16, view_boxes (N, K, 4), view_flips (N, K) uint8],
caption_image_ids (M,) int64, input_ids (M, L) int32, text_embeds (M, D) fp16, the raw caption
strings caption_utf8 (bytes,) uint8 + caption_lengths (M,) int64 (bytes of each; decoded by
captions(); caches made before them lack both), the LocCa targets cap_ids (M, L) / cap_prefix
(M,), region_image_ids (R,), boxes (R, 4), aref_* and gcap_* (R, L) / (R,); rows sorted by image
id.

The manifest holds the format version (FORMAT), every cache_teacher.py setting it was made with
(`config`), the teacher and its scale/bias, pixel normalisation, the processor, the dataset and
split, counts, each shard's sha256, and two fingerprints of content (never paths):
`teacher_fingerprint` (teacher weights + processor files + what train.py takes from them: the
same for every split of one teacher) and `fingerprint` (the whole cache, shard bytes included).
Every file is written durably (atomic_write: temp name, fsync, rename, fsync the dir), so a
power loss leaves the old file or the new one.

The open-and-check rule: a stage opens a cache only through open_cache, which loads it (manifest
format, fingerprint and shard checksums checked) and refuses, in one line, a cache of the wrong
kind, of another teacher, or holding images of the cache it is evaluated on:

    from cache import open_cache, PAIRED
    val, vman = open_cache('cache/shapes/val', 'train.py', needs=PAIRED)
    data, man = open_cache('cache/shapes/train', 'train.py', needs=PAIRED,
                           same_teacher=(vman, 'cache/shapes/val'),
                           evaluated=(val, vman, 'cache/shapes/val'))
    data['pixels'][idx]    # (B, 3, S, S) uint8: only these rows are read from the maps
"""
import os, re, sys, json, shlex, hashlib
import numpy as np
import torch
from safetensors.torch import load_file

# the manifest's format: a manifest of another one is refused with the command that re-caches
# it; manifests without the field are format 1 (written before the version was stored)
FORMAT = 2
# the keys retrieval and contrastive training read: a paired cache (images and their captions)
PAIRED = ('pixels', 'input_ids', 'caption_image_ids')

# -----------------------------------------------------------------------------
# durable writes and names
def sha256(path): # hashlib reads the file in blocks: teacher weights of GBs stay out of memory
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()

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

def atomic_write(path, save):
    """save(tmp_path) writes the file under a temporary name (closing it, so an error reported at
    close, as a full disk or quota is, raises there), then it replaces `path` durably: a
    half-written file never carries the final name and the last good one stays. Exceptions
    propagate; the temporary file is removed."""
    try:
        save(path + '.tmp')
        replace_durably(path + '.tmp', path)
    except BaseException:
        if os.path.exists(path + '.tmp'):
            os.remove(path + '.tmp')
        raise

def write_json(path, obj):
    def save(tmp):
        with open(tmp, 'w') as f: # the with block closes it: a close error raises here
            json.dump(obj, f, indent=1)
    atomic_write(path, save)

def check_name(value, key):
    """A split (or any name that becomes a file or folder name) is a name, never a path: no
    separator, no '..', so nothing is written outside --out_dir."""
    if not re.fullmatch(r'[A-Za-z0-9_+\-][A-Za-z0-9_+.\-]*', value):
        sys.exit(f"cache_teacher: {key}={value!r} must be a name (letters, digits, _ + - .), "
                 f"not a path")

def read_json(path): # -> {} when the file does not exist
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise SystemExit(f"{path} is not valid JSON ({e})")

# -----------------------------------------------------------------------------
# fingerprints and the rules a cache is checked against
# content, never paths: `./out/t` and `out/t` hash the same, new weights at one path do not
def hash_files(paths):
    pairs = sorted((os.path.basename(p), sha256(p)) for p in paths)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()

# a dir's tokenizer + image-settings files (not weights, eval.json, logs): what a cache's
# content['processor'] hashes, and what a train.py save ships beside the weights
PROCESSOR_PREFIXES = ('tokenizer', 'special_tokens', 'added_tokens', 'preprocessor', 'processor',
                      'vocab', 'merges', 'spiece')
def processor_files(folder):
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.startswith(PROCESSOR_PREFIXES) or f.endswith('.model')]

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

# the teacher's part of a manifest, the same for every split of one teacher + processor
def teacher_fingerprint(content, embed_dim, image_size, mean, std, processor_info,
                        logit_scale, logit_bias):
    tf = dict(teacher=content['teacher'], processor_files=content['processor'],
              embed_dim=embed_dim, image_size=image_size, mean=mean, std=std,
              processor=processor_info, logit_scale=logit_scale, logit_bias=logit_bias)
    return hashlib.sha256(json.dumps(tf, sort_keys=True).encode()).hexdigest()[:16]

def what_changed(old, new):
    """Two `content` records (teacher / processor / annotations / settings hashes) -> what
    differs, in words, so a refusal says whether the teacher weights, the tokenizer, a caption
    file or a setting changed."""
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

def check_same_teacher(man, other_man, what):
    """man, other_man: manifests (or a run's meta.json) -> refuses when their teacher
    fingerprints differ: embeddings of two teachers / tokenizers do not mix."""
    if man['teacher_fingerprint'] != other_man['teacher_fingerprint']:
        raise SystemExit(f"{what}: cached with another teacher/processor "
                         f"(teacher fingerprint {other_man['teacher_fingerprint']} "
                         f"vs {man['teacher_fingerprint']})")

def check_contents(data, keys, path, what):
    """A cache of the wrong kind (image-only, text-only, no teacher) for a step that needs `keys`
    -> one line naming the cache and what it lacks, before any KeyError deep inside."""
    lacking = [k for k in keys if k not in data]
    if lacking:
        raise SystemExit(f"{what}: {path} holds no {' / '.join(lacking)} "
                         f"(an image-only, text-only or teacher=none cache?)")

def id_space(manifest):
    """What a cache's image ids are: 'coco' (COCO image ids: the COCO reader, Karpathy's COCO
    file), 'flickr' (Flickr photo ids: Karpathy's Flickr30k / 8k files) or None (positions in a
    folder, tars or a caption file)."""
    d = manifest['dataset']
    # the COCO reader stores none: its ids are COCO ids
    return (d['id_space'] or 'coco') if d['reader'] in ('coco', 'karpathy') else None

def check_no_leak(train_man, train_image_ids, eval_man, eval_image_ids, what):
    """Refuses evaluation images that are also training images. Ids are compared only within
    one id space: a COCO id and a Flickr photo id of the same number are different images, and
    positions name nothing. -> None, or why the ids were not compared (for the log)."""
    spaces = [id_space(train_man), id_space(eval_man)]
    if spaces[0] is None or spaces[0] != spaces[1]:
        held = [f"{s} ids" if s else 'positions' for s in spaces]
        return (f"{what}: leak check skipped: the training cache holds {held[0]}, the "
                f"evaluation cache {held[1]} (no image can be matched across them)")
    n = len(set(train_image_ids.tolist()) & set(eval_image_ids.tolist()))
    if n:
        raise SystemExit(
            f"{what}: {n} of {len(eval_image_ids)} evaluation images overlap the training "
            f"images. Karpathy test images come from COCO 2014 val, most of which is inside "
            f"2017 train: train on Karpathy train+restval and evaluate on Karpathy test "
            f"(or train 2017 train, evaluate 2017 val)")

def check_same_images(pixels, eval_pixels, what, chunk=4096):
    """Leaks by content, not id (folder, tar and caption caches number images by position):
    refuses when rows of `pixels` (N, 3, S, S) uint8, a tensor or Rows, are byte-identical to
    rows of `eval_pixels` (val / test sized: hashed whole, in memory). The large side is read
    only as a 4 KiB prefix of each row (a few lines of the first channel), and whole only where
    a prefix matches: exact, at ~2 % of the bytes of a 256 px cache. Caches stored at different
    sizes cannot be byte-compared: nothing to check."""
    if len(pixels) == 0 or len(eval_pixels) == 0 or pixels.shape[1:] != eval_pixels.shape[1:]:
        return
    digest = lambda row: hashlib.sha256(row.numpy().tobytes()).digest()
    ref = eval_pixels[:] # (M, 3, S, S)
    lines = max(1, min(ref.shape[2], 4096 // ref.shape[3])) # first-channel lines in the prefix
    prefix = lambda x: [r.numpy().tobytes() for r in x[:, 0, :lines]]
    ref_prefixes, ref_rows = set(prefix(ref)), {digest(r) for r in ref}
    n, start = 0, 0
    for part in pixels[:, :1, :lines].split(chunk): # (c, 1, lines, S): the prefixes only
        hit = [start + i for i, p in enumerate(prefix(part)) if p in ref_prefixes]
        n += sum(digest(r) in ref_rows for r in pixels[torch.tensor(hit, dtype=torch.long)])
        start += len(part)
    if n:
        raise SystemExit(f"{what}: {n} of {len(pixels)} images are byte-identical to "
                         f"evaluation images: training on them scores the evaluation set; "
                         f"remove them from the training source and re-cache")

# -----------------------------------------------------------------------------
# a train.py out_dir is one save: meta.json, written last, lists every file of the save with its
# sha256, so a save cut short (kill -9 between two file moves) or a file copied in from another
# run is seen by every reader (eval.py, cache_teacher.Teacher: zero-shot, search, speed; resume)
# the files a save may hold besides the processor's: a stale one of an earlier run is removed
SAVE_FILES = ('ckpt.pt', 'model.safetensors', 'config.json', 'tinysiglip_hf.json',
              'decoder.safetensors', 'decoder_config.json')

def save_problem(out_dir):
    """-> None when out_dir's files are the save its meta.json lists (same bytes), else why not,
    in words naming the files. A meta.json without the list (written before it was kept, as
    data/shapes/teacher's) has nothing to check against: None."""
    meta = read_json(os.path.join(out_dir, 'meta.json'))
    if 'files' not in meta:
        return None
    missing = [f for f in meta['files'] if not os.path.isfile(os.path.join(out_dir, f))]
    changed = [f for f, h in meta['files'].items()
               if f not in missing and sha256(os.path.join(out_dir, f)) != h]
    if not missing and not changed:
        return None
    what = ([f"{', '.join(missing)} missing"] if missing else []) + (
        [f"{', '.join(changed)} not the bytes saved"] if changed else [])
    return (f"{out_dir} is not one complete save: {'; '.join(what)} (meta.json lists the "
            f"iter-{meta['iter_num']} save): a save cut short by a kill, or files copied in "
            f"from another run")

def check_save(out_dir, who):
    """Refuses (one line starting with `who`) an out_dir that is not one complete save, with
    the way out -> its meta.json."""
    problem = save_problem(out_dir)
    if problem:
        raise SystemExit(f"{who}: {problem}; `python train.py <its config> --out_dir={out_dir} "
                         f"--init_from=resume` writes a complete save again")
    return read_json(os.path.join(out_dir, 'meta.json'))

# -----------------------------------------------------------------------------
# reading: shards memory-mapped, their rows joined, the manifest checked
# safetensors dtype names -> (numpy dtype of the same width to map the bytes,
# torch dtype to view them as)
ST_DTYPES = {'U8': ('u1', torch.uint8), 'I8': ('i1', torch.int8),
             'I16': ('i2', torch.int16), 'I32': ('i4', torch.int32),
             'I64': ('i8', torch.int64), 'F16': ('i2', torch.float16),
             'BF16': ('i2', torch.bfloat16), 'F32': ('i4', torch.float32),
             'F64': ('i8', torch.float64), 'BOOL': ('u1', torch.bool)}

def safetensors_header(path): # safetensors: u64 header length, JSON header, then the data
    with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        return n, json.loads(f.read(n))

# -> {key: tensor backed by the file's pages (copy-on-write), nothing read yet}
def mmap_safetensors(path):
    n, header = safetensors_header(path)
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

# a 0-byte / truncated shard (power loss, full disk) must be recomputed, not trusted
def shard_ok(path):
    try:
        n, header = safetensors_header(path)
        end = max([v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'],
                  default=0)
        return '__metadata__' in header and os.path.getsize(path) == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError):
        return False

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
        # (n,) global rows
        idx = key.nonzero().squeeze(1) if key.dtype == torch.bool else key.long()
        # (n,) vectorised shard lookup
        shard = torch.searchsorted(self.starts, idx, right=True) - 1
        local = idx - self.starts[shard]
        # x[idx, v]: v per row
        sub = lambda m: [r[m] if torch.is_tensor(r) else r for r in rest]
        empty = idx[:0]
        # the row shape after the extra indexes
        tail = self.parts[0][(empty, *sub(empty))].shape[1:]
        out = torch.empty((len(idx), *tail), dtype=self.dtype)
        for s in shard.unique().tolist():
            m = (shard == s).nonzero().squeeze(1)
            out[m] = self.parts[s][(local[m], *sub(m))]
        return out

def write_manifest(path, manifest): # stamped with the format and the fingerprint, durably
    manifest = dict(manifest, format=FORMAT)
    manifest['fingerprint'] = cache_fingerprint(manifest)
    write_json(path, manifest)

def recache_command(man, split_dir):
    """-> the cache_teacher.py command line that writes this cache again: the manifest's `config`
    (every setting, format 2 on) or what format 1 recorded (data_dir, split, teacher, the
    dataset and the settings; a folder, caption file or processor dir it did not keep is left
    to fill in)."""
    config = man.get('config')
    if config is None:
        s, d, data_dir = man['content']['settings'], man['dataset'], man['data_dir']
        config = dict(data_dir=data_dir, split=man['split'], teacher=man['teacher'],
                      out_dir=os.path.dirname(os.path.abspath(split_dir)))
        if man['teacher'] == 'none': # its processor dir was not recorded
            config['processor'] = '<processor dir>'
        config.update({'karpathy': dict(karpathy=os.path.join(data_dir, d['karpathy'])),
                       'webdataset': dict(tars=s['tars']),
                       'folder': dict(image_folder='<image folder>'),
                       'caption_file': dict(caption_file='<caption file>')}.get(d['reader'], {}))
        if d['instances']:
            config['instances'] = ','.join(os.path.join(data_dir, 'annotations', f)
                                           for f in d['instances'].split(','))
        config.update({k: s[k] for k in ('image_size', 'lowercase', 'max_length', 'shard_size',
                                         'max_images', 'views', 'view_scale', 'view_flip',
                                         'preprocess')})
        config.update(images=s['contents'] != 'texts', captions=s['contents'] != 'images')
    return 'python cache_teacher.py ' + ' '.join(shlex.quote(f'--{k}={v}')
                                                 for k, v in config.items())

def captions(data): # a cache's caption_utf8 + caption_lengths -> [str], aligned with input_ids
    utf8 = data['caption_utf8'].numpy().tobytes()
    ends = data['caption_lengths'].cumsum(0).tolist()
    return [utf8[a:b].decode('utf-8') for a, b in zip([0] + ends[:-1], ends)]

def check_captions(data, man, split_dir, who):
    """A cache made before the caption strings were kept -> one line naming it, with the
    cache_teacher.py command that writes it again (with them) into a new out_dir."""
    if 'caption_utf8' in data:
        return
    new_dir = f"{man['config']['out_dir'].rstrip('/')}-captions"
    config = {**man['config'], 'out_dir': new_dir}
    raise SystemExit(f"{who}: {split_dir} holds no caption strings (cached before they were "
                     f"kept), which a student tokenizer needs; re-cache it: "
                     f"{recache_command({**man, 'config': config}, split_dir)}")

def load_cache(split_dir, verify=True, mmap=False):
    """-> (tensors concatenated over shards, manifest). Refuses incomplete or modified caches.
    mmap=True: per-row metadata (1-D: ids, prefixes) is read into memory, every larger key stays
    in the shard files as a Rows object, so a process holds only what it gathers and ranks on a
    node share the page cache. verify still reads each file once (sha256 through read(): the
    page cache fills, the process does not grow)."""
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
    if man.get('format', 1) != FORMAT:
        raise SystemExit(f"{path}: cache format {man.get('format', 1)}, this code reads format "
                         f"{FORMAT}; re-cache it: {recache_command(man, split_dir)}")
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

def open_cache(path, who, needs=(), same_teacher=None, evaluated=None, verify=True, log=print):
    """The one way a stage opens a cache: load_cache memory-mapped, then the rules, each refusal
    one line starting with `who` (the script):
      needs         keys the step reads: a cache of another kind (image-only, text-only,
                    teacher=none) is refused before a KeyError deep inside
      same_teacher  (manifest or a run's meta.json, its name): embeddings of two teachers or
                    tokenizers do not mix
      evaluated     (data, manifest, name) of the cache this one is scored on: none of its
                    images may be in this one, by id where both hold ids of one space (a note
                    goes to `log` where they do not) and by pixels always
    -> (data, manifest)."""
    data, man = load_cache(path, verify=verify, mmap=True)
    check_contents(data, needs, path, who)
    if same_teacher is not None:
        other_man, other = same_teacher
        check_same_teacher(other_man, man, f"{who}: {path} vs {other}")
    if evaluated is not None:
        eval_data, eval_man, eval_path = evaluated
        what = f"{who}: {path} vs {eval_path}"
        skipped = check_no_leak(man, data['image_ids'], eval_man, eval_data['image_ids'], what)
        if skipped:
            log(skipped)
        if 'pixels' in data and 'pixels' in eval_data:
            check_same_images(data['pixels'], eval_data['pixels'], what)
    return data, man
