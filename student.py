"""
The trained student as a product: search a folder of images by text or by image, export ONNX.
--ckpt is a train.py out_dir, or for search any HF SigLIP / SigLIP 2 dir or hub name
(cache_teacher.Teacher: resized and tokenised exactly as the cache was).

    python student.py --ckpt=out/shapes/a5 --folder=photos --query="a dog on a beach"
    python student.py --ckpt=out/shapes/a5 --folder=photos --query_image=photos/cat.jpg --topk=10
    # a hub name has no dir of its own: say where its index goes
    python student.py --ckpt=google/siglip2-base-patch16-224 --folder=photos --query=dog \
        --index_dir=out/idx
    # out/shapes/a5/onnx/{image,image_uint8,text}.onnx + export.json
    python student.py --ckpt=out/shapes/a5 --export_onnx=True

The folder is embedded once: its index (index-<hash>.safetensors, in the model dir or
--index_dir) is reused while the folder's files and the model's weights are unchanged.
Zero-shot classification and the retrieval scores are eval.py's; speed is bench.py --speed.
"""
import os, sys, json, hashlib
import torch.nn.functional as F
from cache import write_json, atomic_write
from cache_teacher import Teacher, embed_files, list_images

def model_hash(path): # config + weights bytes: a retrained checkpoint gets a new index
    h = hashlib.sha256(path.encode())
    # an HF name: the name alone
    files = sorted(os.listdir(path)) if os.path.isdir(path) else []
    for f in files:
        if f == 'config.json' or (f.startswith('model') and f.endswith('.safetensors')):
            with open(os.path.join(path, f), 'rb') as fh:
                for b in iter(lambda: fh.read(1 << 20), b''):
                    h.update(b)
    return h.hexdigest()[:16]

def folder_index(enc, folder, batch_size, index_dir=''):
    """Every image under folder -> (relative paths, (N, D) normalised embeddings), saved as
    index-<hash of folder + model>.safetensors in index_dir ('' = the model dir; a hub name has
    none, so it needs one: never the user's image folder, never a place nobody named) and reused
    while the folder's file list, sizes, mtimes, ctimes, inodes and the model's bytes are
    unchanged: a file replaced at the same size and mtime gets a new ctime (no tool can set it)
    and inode, so the index is keyed on the files, without reading every image each time."""
    from safetensors.torch import save_file, safe_open
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        sys.exit(f"student.py: --folder={folder!r} is not a directory")
    rel = list_images(folder)
    stat = [os.stat(os.path.join(folder, r)) for r in rel]
    state = [[r, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino] for r, s in zip(rel, stat)]
    sig = hashlib.sha256(json.dumps([state, model_hash(enc.path)]).encode()).hexdigest()[:16]
    # only where the user pointed: the model dir or --index_dir
    where = index_dir or (enc.path if os.path.isdir(enc.path) else '')
    if not where:
        sys.exit(f"student.py: --ckpt={enc.path} is a hub name, not a dir: pass "
                 f"--index_dir=<dir> for the index of {folder}")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:
        sys.exit(f"student.py: cannot make {where} for the index of {folder} "
                 f"({e.strerror}): pass --index_dir=<a writable dir>")
    name = hashlib.sha256((folder + enc.path).encode()).hexdigest()[:12]
    path = os.path.join(where, f"index-{name}.safetensors")
    try:
        with safe_open(path, 'pt') as f:
            meta = f.metadata()
            if meta.get('signature') == sig:
                paths = json.loads(meta['paths'])
                print(f"reusing index {path} ({len(paths)} images)")
                return paths, f.get_tensor('embeds')
    except FileNotFoundError:
        pass
    except Exception as e: # truncated or corrupt: rebuilt, said so
        print(f"index {path} unreadable ({type(e).__name__}): rebuilding it")
    # a read-only model dir (a shared checkpoint) is read from, but the index needs a writable
    # place: said before the embedding, not as a traceback after it
    if not os.access(where, os.W_OK):
        sys.exit(f"student.py: {where} is not writable, and the index of {folder} is kept "
                 f"there: pass --index_dir=<a writable dir>")
    emb, keep = embed_files(enc, [os.path.join(folder, r) for r in rel], batch_size)
    paths = [rel[i] for i in keep]
    meta = dict(signature=sig, folder=folder, paths=json.dumps(paths))
    atomic_write(path, lambda tmp: save_file({'embeds': emb.contiguous()}, tmp, metadata=meta))
    print(f"indexed {len(paths)} images of {folder} -> {path}")
    return paths, emb

def search(enc, folder, query, query_image, topk, batch_size, index_dir):
    """Index the folder (once), then print the top-k images for a text or an image query."""
    from PIL import Image
    if topk < 1:
        sys.exit(f"student.py: --topk={topk} must be >= 1")
    if query_image and not os.path.isfile(query_image):
        sys.exit(f"student.py: --query_image={query_image!r} not found")
    paths, emb = folder_index(enc, folder, batch_size, index_dir)
    if not (query or query_image):
        print("no --query / --query_image: indexed only")
        return
    if query_image:
        try:
            img = Image.open(query_image).convert('RGB')
        except Exception as e:
            sys.exit(f"student.py: --query_image={query_image!r} unreadable "
                     f"({type(e).__name__}: {e})")
        q = enc.images(enc.prep([img]))
    else:
        q = enc.texts(enc.tokenize([query]))
    scores = (F.normalize(q.cpu(), dim=-1) @ emb.T)[0]
    top = scores.topk(min(topk, len(paths)))
    print(f"top {len(top.indices)} of {len(paths)} for {query_image or repr(query)}:")
    for s, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{s:8.4f}  {os.path.join(folder, paths[i])}")

def export(enc, out_dir):
    """Student.export_onnx + export.json: what a runtime needs to feed the graphs (pixel size,
    normalisation, text length and padding). Their parity with PyTorch under onnxruntime is
    checked by test_smoke.py (test_student_dir_onnx_export_reload_query)."""
    from model import Student
    if not isinstance(enc.model, Student):
        sys.exit(f"student.py: --export_onnx exports a Student; {enc.path} is an HF model")
    st = enc.model.cpu()
    paths = st.export_onnx(out_dir)
    info = dict(paths=paths, image_size=st.config.image_size, mean=st.config.image_mean,
                std=st.config.image_std, context_length=enc.length, padding='right',
                lowercase=enc.lowercase)
    write_json(os.path.join(out_dir, 'export.json'), info)
    st.to(enc.device)
    print(f"exported {', '.join(paths.values())}")

# -----------------------------------------------------------------------------
ckpt = '' # a train.py out_dir; for --folder also an HF SigLIP dir or hub name
device = 'cpu'
batch_size = 256 # images embedded per forward
export_onnx = False # <ckpt>/onnx/{image,image_uint8,text}.onnx + export.json
folder = '' # image folder to search: embedded once, index cached in the model dir
query = '' # text query for --folder
query_image = '' # image query for --folder
topk = 5
index_dir = '' # where --folder's index goes; '' = the model dir (a hub name needs one)
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
if not ckpt:
    sys.exit("student.py: pass --ckpt=<a train.py out_dir>")
if not (export_onnx or folder):
    sys.exit("student.py: nothing to do: pass --folder=<dir> (search) and/or --export_onnx=True")
# `--query=` given but empty (or blank) is a query without words, not "no query"
if (query or any(a.startswith('--query=') for a in sys.argv[1:])) and not query.strip():
    sys.exit(f"student.py: --query={query!r} is empty: give words to search for")
enc = Teacher(ckpt, device)
if export_onnx:
    export(enc, os.path.join(ckpt, 'onnx'))
if folder:
    search(enc, folder, query, query_image, topk, batch_size, index_dir)
