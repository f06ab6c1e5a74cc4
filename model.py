"""
The student (timm image tower + compact text transformer on the teacher's tokenizer, or an HF text
encoder with its own: StudentConfig.text_encoder), the LocCa decoder and the DINO heads used by
SILC/TIPS. No side effects on import; needs torch, safetensors, and timm for the image tower.

    from model import Student
    # config.json + model.safetensors
    student = Student.from_pretrained('out/a5')
    # (B, D), unnormalised
    img = student.encode_image(student.preprocess(uint8_pixels))
    # (M, D): ids from the teacher's tokenizer (a student with an HF text encoder: from its own
    # tokenizer, out/a5/text_encoder, right-padded; see StudentConfig.text_encoder)
    txt = student.encode_text(teacher_token_ids)
    # {image,image_uint8,text}.onnx (needs onnx)
    student.export_onnx('out/a5/onnx')
"""
import os, json, math
from dataclasses import dataclass, field, asdict
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file, load_file

UNK = 3 # Gemma special ids: pad 0, eos 1, bos 2, unk 3, mask 4

def save_weights(module, out_dir, name, cfg_name, cfg):
    """config JSON + safetensors, each file closed here so a write or close error (a full disk,
    a quota) raises. Not atomic on its own: train.py saves into a staging dir, moves each file
    into place durably, then writes meta.json listing them, so a half-moved set is refused."""
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(sd, os.path.join(out_dir, f'{name}.safetensors'))
    with open(os.path.join(out_dir, cfg_name), 'w') as f:
        json.dump(cfg, f, indent=1)

# -----------------------------------------------------------------------------
# image tower: any timm model, exposing pooled features AND un-pooled tokens
# (the LocCa decoder's input)
class ImageTower(nn.Module):
    def __init__(self, name, image_size, pretrained=False, kwargs=None):
        super().__init__()
        # here, not at the top: cache_teacher.py / eval.py use model.py's helpers without a tower
        import timm
        kw = dict(kwargs or {})
        # dynamic size: SILC's local crops run at a smaller size
        if name.startswith(('vit', 'deit', 'eva', 'beit')):
            kw.update(img_size=image_size, dynamic_img_size=True)
        self.net = timm.create_model(name, pretrained=pretrained, num_classes=0, **kw)
        self.is_vit = isinstance(self.net, timm.models.vision_transformer.VisionTransformer)
        # pool_dim != num_features for MobileNets (1280 vs 960)
        self.pool_dim = self.net.head_hidden_size
        self.enc_dim = self.net.num_features

    @property
    def patch_embed_proj(self):
        # TIPS masks patch embeddings before position embeddings by a hook on this conv
        return self.net.patch_embed.proj if self.is_vit else None

    # x (B, 3, H, W) normalised -> tokens (B, N, D_enc), pooled (B, D_pool)
    def forward(self, x):
        feats = self.net.forward_features(x)
        pooled = self.net.forward_head(feats, pre_logits=True)
        if self.is_vit:
            tokens = feats[:, self.net.num_prefix_tokens:]
        else:
            tokens = feats.flatten(2).transpose(1, 2)
        return tokens, pooled

# -----------------------------------------------------------------------------
# transformer blocks shared by the text tower and the decoder (pre-LN, SDPA)
class Attention(nn.Module):
    def __init__(self, width, heads, kv_dim=None, bias=True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=bias)
        self.kv = nn.Linear(kv_dim or width, 2 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)

    # x (B, L, W), ctx (B, N, Dkv) or None (self-attention)
    def forward(self, x, ctx=None, mask=None):
        B, L, W = x.shape
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2) # (B, h, L, W/h)
        kv = self.kv(x if ctx is None else ctx) # (B, N, 2W)
        k, v = kv.view(B, -1, 2, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        # mask (B, 1, L, L) bool: True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, W))

class Block(nn.Module):
    def __init__(self, width, heads, mlp_dim, cross_dim=None, bias=True):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, bias=bias)
        self.cross = cross_dim is not None
        if self.cross:
            self.ln2 = nn.LayerNorm(width)
            self.xattn = Attention(width, heads, kv_dim=cross_dim, bias=bias)
        self.ln3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, width))

    def forward(self, x, mask=None, enc=None):
        x = x + self.attn(self.ln1(x), mask=mask)
        if self.cross:
            x = x + self.xattn(self.ln2(x), ctx=enc)
        return x + self.mlp(self.ln3(x))

# -----------------------------------------------------------------------------
# pieces shared by the student and the HF SigLIP wrapper below

# kept teacher ids -> a lookup table teacher id -> compact id (every other id: the UNK row)
def compact_id_table(kept_ids):
    assert UNK in kept_ids, "kept_ids must include the special ids 0..4"
    kept = torch.tensor(kept_ids)
    # last row: ids beyond
    table = torch.full((int(kept.max()) + 2,), kept_ids.index(UNK), dtype=torch.long)
    table[kept] = torch.arange(len(kept))
    return table

def map_compact_ids(table, ids): # teacher token ids (any shape) -> compact ids
    # ids past the table land on its last (UNK) row
    return table[ids.clamp(0, len(table) - 1)]

# uint8 (B, 3, H, W) -> normalised float (B, 3, size, size); mean, std (1, 3, 1, 1)
def normalize_pixels(pixels, size, mean, std):
    x = pixels.float().div(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size,) * 2, mode='bilinear', antialias=True,
                          align_corners=False)
    return (x - mean) / std

# -----------------------------------------------------------------------------
# the student
@dataclass
class StudentConfig:
    image_model: str = 'vit_tiny_patch16_224'
    image_size: int = 224
    image_kwargs: dict = field(default_factory=dict) # extra timm kwargs (tiny demo towers)
    pretrained: bool = False
    text_width: int = 384
    text_depth: int = 6
    text_heads: int = 6
    context_length: int = 64 # SigLIP text length: the positional table's rows
    # the caption length the student trained on (its cache's max_length: 64 for SigLIP 2, 32 on
    # the demo); a teacher of ours is cached at it. None: unknown (written before this field)
    text_length: int = None
    # compact vocab: the teacher ids we keep
    kept_ids: list = field(default_factory=lambda: list(range(5)))
    embed_dim: int = 1024 # the teacher's embedding dim (projection target)
    image_mean: list = field(default_factory=lambda: [0.5] * 3)
    image_std: list = field(default_factory=lambda: [0.5] * 3)
    # '' = the text tower above; else an HF text encoder (BERT, MiniLM) replaces it: the subdir
    # of the saved student holding its tokenizer files, its config (to_dict) kept here so the
    # tower is rebuilt with no hub access, and its pad id (the padding mask is ids != it)
    text_encoder: str = ''
    text_encoder_config: dict = None
    text_pad_id: int = 0

# the subdir of a saved student with an HF text tower: its tokenizer files + config.json
TEXT_ENCODER_DIR = 'text_encoder'

# the HF model types that are text encoders: those transformers gives a masked-LM head (BERT,
# RoBERTa, DistilBERT, ELECTRA, MPNet, ...), less the encoder-decoders among them (BART)
def text_encoder_problem(hf_config):
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    kind = hf_config.model_type
    if kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or hf_config.is_encoder_decoder:
        return f"a {kind!r} model, not a text encoder (BERT, MiniLM, RoBERTa, ...)"
    return None

# texts -> (M, L) int64 ids of `tok`, right-padded to L, truncated at L: one call for the
# student's own tokenizer in train.py and for every tokenizer cache_teacher.Teacher holds
def tokenize(tok, texts, length):
    if not texts: # a tokenizer cannot make a (0, L) tensor
        return torch.zeros(0, length, dtype=torch.long)
    return tok(texts, padding='max_length', max_length=length, truncation=True,
               return_tensors='pt')['input_ids']

class Student(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = c = config
        self.visual = ImageTower(c.image_model, c.image_size, c.pretrained, c.image_kwargs)
        # compact vocabulary: Gemma's 256k rows would be a 98M-param table at width 384; keep only
        # the ids that occur in the training captions, every other teacher id reads the UNK row
        # rebuilt from kept_ids in config.json (with an HF text encoder: the LocCa decoder's)
        self.register_buffer('id_table', compact_id_table(c.kept_ids), persistent=False)
        self.text_model, text_dim = None, c.text_width
        if c.text_encoder:
            # random weights from its config: train.py loads the pretrained ones,
            # from_pretrained the trained ones
            from transformers import AutoConfig, AutoModel
            quiet_transformers()
            hf_config = AutoConfig.for_model(**c.text_encoder_config)
            self.text_model = AutoModel.from_config(hf_config)
            text_dim = hf_config.hidden_size
        else:
            self.tok_emb = nn.Embedding(len(c.kept_ids), c.text_width)
            self.pos_emb = nn.Parameter(torch.randn(c.context_length, c.text_width) * 0.01)
            self.blocks = nn.ModuleList(
                Block(c.text_width, c.text_heads, 4 * c.text_width)
                for _ in range(c.text_depth))
            self.ln_f = nn.LayerNorm(c.text_width)
        self.img_proj = nn.Linear(self.visual.pool_dim, c.embed_dim)
        self.txt_proj = nn.Linear(text_dim, c.embed_dim)
        # SigLIP §3.2 / Table 4: t = 10, b = -10
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        if self.text_model is None:
            nn.init.normal_(self.tok_emb.weight, std=0.02)
        mean = torch.tensor(c.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(c.image_std).view(1, 3, 1, 1)
        self.register_buffer('mean', mean, persistent=False)
        self.register_buffer('std', std, persistent=False)

    # the HF text encoder: its own ids (M, L), right-padded -> (M, D). Pooling: the mean of the
    # last hidden states over the real tokens, for every family: sentence-transformers' rule
    # for MiniLM (sentence-transformers/all-MiniLM-L6-v2, 1_Pooling/config.json); BERT's [CLS]
    # pooler is trained by NSP, which an MLM-only checkpoint (MiniLM, our stand-in) never had.
    # The mask is ids != pad: the one tensor every caller (eval, search, ONNX) already passes
    def encode_text_hf(self, ids):
        mask = ids != self.config.text_pad_id # (M, L)
        h = self.text_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype) # (M, L, 1)
        return self.txt_proj((h * m).sum(1) / m.sum(1).clamp(min=1)) # (M, W) -> (M, D)

    def map_ids(self, ids): # teacher token ids (any shape) -> compact ids
        return map_compact_ids(self.id_table, ids)

    # uint8 (B, 3, H, W) -> normalised float at the student's size
    def preprocess(self, pixels):
        return normalize_pixels(pixels, self.config.image_size, self.mean, self.std)

    def encode_text(self, ids): # teacher ids (M, L) -> (M, D)
        if self.text_model is not None:
            return self.encode_text_hf(ids)
        x = self.tok_emb(self.map_ids(ids)) + self.pos_emb[:ids.shape[1]]
        # bidirectional, no padding mask: SigLIP's text tower pools the last position,
        # a pad position under right padding (big_vision pool_type='last', HF)
        for blk in self.blocks:
            x = blk(x)
        return self.txt_proj(self.ln_f(x)[:, -1])

    def encode_image(self, x): # normalised (B, 3, H, W) -> (B, D)
        return self.img_proj(self.visual(x)[1])

    # -> img (B, D), txt (M, D), un-pooled image tokens (B, N, D_enc)
    def forward(self, x, ids):
        tokens, pooled = self.visual(x)
        return self.img_proj(pooled), self.encode_text(ids), tokens

    def num_params(self, token_table=True):
        n = sum(p.numel() for p in self.parameters())
        table = (self.text_model.get_input_embeddings() if self.text_model is not None
                 else self.tok_emb)
        return n if token_table else n - table.weight.numel()

    def save_pretrained(self, out_dir):
        save_weights(self, out_dir, 'model', 'config.json', asdict(self.config))

    @classmethod
    def from_pretrained(cls, out_dir):
        cfg = json.load(open(os.path.join(out_dir, 'config.json')))
        model = cls(StudentConfig(**cfg))
        model.load_state_dict(load_file(os.path.join(out_dir, 'model.safetensors')))
        return model.eval()

    def export_onnx(self, out_dir, opset=17):
        """Both towers as ONNX graphs with a dynamic batch axis -> {name: path}. image.onnx:
        normalised float pixels (B, 3, S, S) -> (B, D); image_uint8.onnx: uint8 (B, 3, S, S) at
        the student's size S, /255 and mean/std inside; text.onnx: teacher ids (B, L) int64 ->
        (B, D), the compact-vocabulary lookup inside. Unnormalised, as encode_image/encode_text."""
        import warnings
        os.makedirs(out_dir, exist_ok=True)
        S, L = self.config.image_size, self.config.text_length or self.config.context_length
        examples = dict(image=torch.zeros(2, 3, S, S),
                        image_uint8=torch.zeros(2, 3, S, S, dtype=torch.uint8),
                        text=torch.zeros(2, L, dtype=torch.long))
        paths = {}
        for name, x in examples.items():
            inp = 'input_ids' if name == 'text' else 'pixels'
            path = os.path.join(out_dir, f'{name}.onnx')
            axes = {inp: {0: 'batch'}, 'embeds': {0: 'batch'}}
            # the length a student trained on (64 for SigLIP, 32 on the demo) varies too
            if name == 'text':
                axes[inp][1] = 'length'
            # the TorchScript exporter: the dynamo one needs onnxscript, one more dependency;
            # tracer warnings on shapes: batch (and text length) vary
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                torch.onnx.export(OnnxTower(self, name).eval(), (x,), path + '.tmp',
                                  input_names=[inp], output_names=['embeds'],
                                  opset_version=opset, dynamo=False, dynamic_axes=axes)
            os.replace(path + '.tmp', path)
            paths[name] = path
        return paths

class OnnxTower(nn.Module): # one tower of a Student, one input: what torch.onnx.export traces
    def __init__(self, student, name):
        super().__init__()
        self.student, self.name = student, name

    def forward(self, x):
        if self.name == 'text':
            return self.student.encode_text(x)
        if self.name == 'image_uint8':
            x = self.student.preprocess(x)
        return self.student.encode_image(x)

# -----------------------------------------------------------------------------
# a transformers SiglipModel (fixed resolution) or Siglip2Model (NaFlex) as the model train.py
# trains: the same interface as Student, so the loop, SigLIP2Loss and eval.py take either.
# transformers is imported inside the functions: model.py imports torch only
HF_FILE = 'tinysiglip_hf.json' # beside the transformers files: what the training side needs

class HFVision(nn.Module):
    """The vision tower as SigLIP2Loss takes it: normalised (B, 3, H, W) -> tokens (B, N, C),
    pooled (B, C). NaFlex: the square image is cut into its full (H/p) x (W/p) patch grid,
    row-major (p, p, C) patches as Siglip2ImageProcessor writes them, every patch valid; on a
    square image of p·sqrt(max_num_patches) pixels the processor makes this same grid, so
    training and AutoProcessor see the same patches (SILC's local crops get a smaller grid)."""
    def __init__(self, vision_model, naflex, patch_size, image_size):
        super().__init__()
        self.vm, self.naflex, self.patch, self.image_size = (vision_model, naflex, patch_size,
                                                             image_size)
        self.pool_dim = self.enc_dim = vision_model.config.hidden_size

    @property
    def patch_embed_proj(self):
        # TIPS masks patch embeddings before position embeddings: Conv2d (SigLIP) or Linear
        # on the flattened patches (NaFlex)
        return self.vm.embeddings.patch_embedding

    def forward(self, x):
        B, C, H, W = x.shape
        if not self.naflex:
            # other sizes (SILC's local crops): interpolated position embeddings
            other_size = (H, W) != (self.image_size,) * 2
            out = self.vm(pixel_values=x, interpolate_pos_encoding=other_size)
            return out.last_hidden_state, out.pooler_output
        p = self.patch
        h, w = H // p, W // p
        patches = x.view(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, -1)
        valid = torch.ones(B, h * w, dtype=torch.long, device=x.device)
        shapes = torch.tensor([[h, w]] * B, device=x.device)
        out = self.vm(pixel_values=patches, pixel_attention_mask=valid, spatial_shapes=shapes)
        return out.last_hidden_state, out.pooler_output

def quiet_transformers():
    """What transformers prints at every load and save that no user can act on: the progress
    bars of a few-MB model, and the special-token warning its own Siglip(2)TextConfig defaults
    raise (vocab 32000, bos 49406 / eos 49407) while any SigLIP config is built. Nothing here
    reads the config's bos / eos ids (captions come tokenised from the cache)."""
    from transformers.utils import logging
    logging.disable_progress_bar()
    log = logging.get_logger('transformers.configuration_utils')
    if not log.filters:
        log.addFilter(lambda r: 'an integer within the vocabulary' not in r.getMessage())

@dataclass
class HFConfig:
    kept_ids: list # the LocCa decoder's compact vocabulary (the text tower keeps its own)
    image_size: int # the square pixel size trained on (NaFlex: p·sqrt(max_num_patches))
    image_mean: list
    image_std: list
    text_length: int = 64

class HFSiglip(nn.Module):
    """model: a transformers SiglipModel / Siglip2Model. Its embeddings are its own
    (get_image_features / get_text_features: pooled, no projection); logit_scale and
    logit_bias are its parameters."""
    def __init__(self, model, config):
        super().__init__()
        self.model, self.config = model, config
        vc = model.config.vision_config
        naflex = model.config.model_type == 'siglip2'
        self.visual = HFVision(model.vision_model, naflex, vc.patch_size, config.image_size)
        self.register_buffer('id_table', compact_id_table(config.kept_ids), persistent=False)
        self.register_buffer('mean', torch.tensor(config.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(config.image_std).view(1, 3, 1, 1),
                             persistent=False)

    @classmethod
    def load(cls, name, config, from_config=False):
        """name: an HF dir or hub name; from_config: random weights from its config.json."""
        from transformers import AutoConfig, AutoModel
        quiet_transformers()
        if from_config:
            model = AutoModel.from_config(AutoConfig.from_pretrained(name))
            # transformers starts both at 0 (scale 1): SigLIP's t = 10, b = -10 (§3.2), as the
            # Student; SiglipConfig has no field of its own for them
            with torch.no_grad():
                model.logit_scale.fill_(math.log(10.0))
                model.logit_bias.fill_(-10.0)
        else:
            model = AutoModel.from_pretrained(name, dtype=torch.float32)
        if model.config.model_type not in ('siglip', 'siglip2'):
            raise ValueError(f"{name} is a {model.config.model_type!r} model, "
                             f"not SigLIP / SigLIP 2")
        return cls(model, config)

    @property
    def logit_scale(self):
        return self.model.logit_scale

    @property
    def logit_bias(self):
        return self.model.logit_bias

    def map_ids(self, ids): # teacher token ids -> the decoder's compact ids
        return map_compact_ids(self.id_table, ids)

    def preprocess(self, pixels): # uint8 (B, 3, H, W) -> normalised at the trained size
        return normalize_pixels(pixels, self.config.image_size, self.mean, self.std)

    def encode_text(self, ids): # (M, L) -> (M, D); no padding mask, as the HF processor
        return self.model.text_model(input_ids=ids).pooler_output

    def encode_image(self, x): # normalised (B, 3, S, S) -> (B, D)
        return self.visual(x)[1]

    # -> img (B, D), txt (M, D), un-pooled image tokens (B, N, C)
    def forward(self, x, ids):
        tokens, pooled = self.visual(x)
        return pooled, self.encode_text(ids), tokens

    def num_params(self, token_table=True):
        n = sum(p.numel() for p in self.parameters())
        table = self.model.text_model.embeddings.token_embedding.weight.numel()
        return n if token_table else n - table

    def save_pretrained(self, out_dir):
        """The transformers files (AutoModel.from_pretrained(out_dir)) + HF_FILE (as
        save_weights: closed here, made atomic by train.py's staging dir)."""
        self.model.save_pretrained(out_dir)
        with open(os.path.join(out_dir, HF_FILE), 'w') as f:
            json.dump(asdict(self.config), f, indent=1)

    @classmethod
    def from_pretrained(cls, out_dir):
        cfg = HFConfig(**json.load(open(os.path.join(out_dir, HF_FILE))))
        return cls.load(out_dir, cfg).eval()

# the LocCa decoder for a model (§2.2): its text encoder's width, heads and MLP size, half its
# depth (depth > 0 overrides), over its image tokens -> LoccaDecoder(**args)
def locca_decoder_args(model, vocab_size, depth=0):
    if isinstance(model, HFSiglip) or model.text_model is not None:
        c = (model.model.config.text_config if isinstance(model, HFSiglip)
             else model.text_model.config)
        w, d, h = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
        mlp = c.intermediate_size
    else:
        c = model.config
        w, d, h, mlp = c.text_width, c.text_depth, c.text_heads, 4 * c.text_width
    return dict(vocab_size=vocab_size, width=w, depth=depth or max(d // 2, 1), heads=h,
                mlp_dim=mlp, enc_dim=model.visual.enc_dim, max_len=64)

# a train.py out_dir: our Student (its config.json keeps the compact vocabulary) or the HF
# SigLIP it fine-tuned (HF_FILE beside the transformers files); a hub name is not one
def is_trained_dir(path):
    if os.path.isfile(os.path.join(path, HF_FILE)):
        return True
    config = os.path.join(path, 'config.json')
    return os.path.isfile(config) and 'kept_ids' in json.load(open(config))

def load_trained(out_dir):
    """The one loader of a train.py out_dir, for its scores (eval.py) and as a product
    (cache_teacher.Teacher: zero-shot, speed, search, a run as a teacher) -> Student or
    HFSiglip; either takes uint8 pixels through its own preprocess. model.py reads no
    meta.json: its callers first check that the dir is one complete save (cache.check_save)."""
    if os.path.isfile(os.path.join(out_dir, HF_FILE)):
        return HFSiglip.from_pretrained(out_dir)
    return Student.from_pretrained(out_dir)

# -----------------------------------------------------------------------------
# the student's text tower inherited from its teacher's (train.py text_init='teacher'):
# TinyCLIP's manual inheritance (Wu et al., ICCV 2023; microsoft/Cream
# TinyCLIP/src/open_clip/weight_inherit.py). As there: the layers 'interval_front' (0, step,
# 2·step, ... with step = teacher depth // student depth), every tensor cut to the student's
# leading entries on each axis, q / k / v per head (the leading heads). Where ours differs:
# - the token table keeps only the rows of the student's kept ids (TinyCLIP cuts its width only);
#   a kept id that a teacher of ours reads as UNK gets the teacher's UNK row, which is what
#   the teacher itself computes for it
# - the tower runs in our Block: exact GELU and LayerNorm eps 1e-5, where SigLIP's HF text
#   tower has tanh GELU and eps 1e-6, so even a full-width copy of an HF tower is close, not equal
# - the head dim must be the teacher's (TinyCLIP may also cut it); a deeper or wider student,
#   more heads, a longer position table are refused (ValueError naming the setting)
HF_TEXT_NAMES = {'ln1': 'layer_norm1', 'attn.q': 'self_attn.q_proj', 'attn.k': 'self_attn.k_proj',
                 'attn.v': 'self_attn.v_proj', 'attn.out': 'self_attn.out_proj',
                 'ln3': 'layer_norm2', 'mlp.0': 'mlp.fc1', 'mlp.2': 'mlp.fc2'}

def teacher_text_tensors(teacher):
    """A Student, an HFSiglip or a transformers SiglipModel / Siglip2Model -> (layers, top,
    heads): its text tower in the Student's names at the teacher's size. layers: one
    {name: tensor} per block, with k and v apart (a Student fuses them in attn.kv); top:
    tok_emb.weight (V, W), pos_emb (C, W), ln_f.*, txt_proj.* (D, W)."""
    if isinstance(teacher, HFSiglip):
        teacher = teacher.model
    if isinstance(teacher, Student):
        sd, W = teacher.state_dict(), teacher.config.text_width
        layers = []
        for i in range(teacher.config.text_depth):
            prefix = f'blocks.{i}.'
            layer = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            # attn.kv (2W, W): rows [0, W) k, [W, 2W) v, each `heads` blocks of the head dim
            for part in ('weight', 'bias'):
                kv = layer.pop(f'attn.kv.{part}')
                layer[f'attn.k.{part}'], layer[f'attn.v.{part}'] = kv[:W], kv[W:]
            layers.append(layer)
        top = {k: sd[k] for k in ('tok_emb.weight', 'pos_emb', 'ln_f.weight', 'ln_f.bias',
                                  'txt_proj.weight', 'txt_proj.bias')}
        return layers, top, teacher.config.text_heads
    tm = teacher.text_model
    layers = [{f'{ours}.{part}': layer.get_submodule(hf).get_parameter(part).detach()
               for ours, hf in HF_TEXT_NAMES.items() for part in ('weight', 'bias')}
              for layer in tm.encoder.layers]
    top = {'tok_emb.weight': tm.embeddings.token_embedding.weight.detach(),
           'pos_emb': tm.embeddings.position_embedding.weight.detach(),
           'ln_f.weight': tm.final_layer_norm.weight.detach(),
           'ln_f.bias': tm.final_layer_norm.bias.detach(),
           'txt_proj.weight': tm.head.weight.detach(), 'txt_proj.bias': tm.head.bias.detach()}
    return layers, top, tm.config.num_attention_heads

def leading(t, shape): # TinyCLIP's cut: the leading shape[i] entries of axis i
    return t[tuple(slice(0, n) for n in shape)]

@torch.no_grad()
def inherit_text_tower(student, teacher):
    """Copies the teacher's text tower (teacher_text_tensors' kinds) into `student`'s, cut to its
    size -> a line saying what was kept. ValueError, naming the setting, on a student the
    teacher cannot fill or a kept id beyond the teacher's token table."""
    layers, top, t_heads = teacher_text_tensors(teacher)
    c = student.config
    t_depth, (t_vocab, t_width) = len(layers), top['tok_emb.weight'].shape
    t_mlp, t_context = layers[0]['mlp.0.weight'].shape[0], top['pos_emb'].shape[0]
    t_dim = top['txt_proj.weight'].shape[0]
    refusals = [(c.text_depth > t_depth, f"text_depth={c.text_depth}: deeper than the "
                 f"teacher's {t_depth} layers"),
                (c.text_width > t_width, f"text_width={c.text_width}: wider than the teacher's "
                 f"{t_width}"),
                (c.text_heads > t_heads, f"text_heads={c.text_heads}: more than the teacher's "
                 f"{t_heads}"),
                (c.text_width * t_heads != t_width * c.text_heads, f"text_width / text_heads = "
                 f"{c.text_width}/{c.text_heads}: the head dim must be the teacher's "
                 f"{t_width}/{t_heads} = {t_width // t_heads}"),
                (4 * c.text_width > t_mlp, f"text_width={c.text_width}: its MLP of "
                 f"{4 * c.text_width} is wider than the teacher's {t_mlp}"),
                (c.context_length > t_context, f"context_length={c.context_length}: longer "
                 f"than the teacher's {t_context} positions"),
                (c.embed_dim != t_dim, f"embed_dim={c.embed_dim}: the teacher embeds in {t_dim}")]
    for refused, why in refusals:
        if refused:
            raise ValueError(why)
    kept = torch.tensor(c.kept_ids)
    if isinstance(teacher, Student):
        rows = teacher.map_ids(kept).cpu() # the teacher's compact rows
        n_unk = int((rows == teacher.map_ids(torch.tensor(UNK))).sum()) - 1 # but UNK's own
        unk = f" ({n_unk} kept ids the teacher reads as UNK: its UNK row)"
    elif int(kept.max()) >= t_vocab:
        raise ValueError(f"token id {int(kept.max())} (the student's kept_ids): beyond the "
                         f"teacher's {t_vocab}-row token table (a cache of another tokenizer?)")
    else:
        rows, unk = kept, ''
    step = t_depth // c.text_depth
    picked = [j * step for j in range(c.text_depth)] # TinyCLIP's interval_front
    state = student.state_dict()
    for name, t in top.items():
        t = t[rows] if name == 'tok_emb.weight' else t
        state[name].copy_(leading(t, state[name].shape))
    for j, i in enumerate(picked):
        for name, t in layers[i].items():
            # k and v: the leading heads of each, into the student's fused kv
            if name.startswith(('attn.k.', 'attn.v.')):
                kv = state[f'blocks.{j}.attn.kv.{name.split(".")[-1]}']
                half = kv.shape[0] // 2
                at = slice(0, half) if name.startswith('attn.k.') else slice(half, 2 * half)
                kv[at].copy_(leading(t, kv[at].shape))
            else:
                state[f'blocks.{j}.{name}'].copy_(leading(t, state[f'blocks.{j}.{name}'].shape))
    return (f"layers {picked} of {t_depth}, heads 0-{c.text_heads - 1} of {t_heads}, width "
            f"{c.text_width} of {t_width}, MLP {4 * c.text_width} of {t_mlp}, {len(rows)} token "
            f"rows of {t_vocab}{unk}")

# -----------------------------------------------------------------------------
# LocCa decoder (SigLIP 2 §2.2): standard transformer decoder with cross-attention to the
# UN-pooled image tokens, text-tower shapes with half the layers; block structure from
# big_vision models/proj/cappa/cappa.py
class LoccaDecoder(nn.Module):
    def __init__(self, vocab_size, width, depth, heads, mlp_dim, enc_dim, max_len=64):
        super().__init__()
        self.args = dict(vocab_size=vocab_size, width=width, depth=depth, heads=heads,
                         mlp_dim=mlp_dim, enc_dim=enc_dim, max_len=max_len)
        # the extra embedding row: CapPa's parallel-prediction mask token
        self.mask_id = vocab_size
        self.tok_emb = nn.Embedding(vocab_size + 1, width)
        self.pos_emb = nn.Parameter(torch.randn(max_len, width) * 0.02)
        # big_vision: attention without bias; any [B, N, D_enc] works
        # (ViT patches, CNN maps, HF last_hidden_state)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_dim, cross_dim=enc_dim, bias=False)
            for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        # choice: 0.02 rather than big_vision's N(0, 1) (pre-LN either way)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        # big_vision cappa: zero-init LogitsDense
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # ids (B, L), enc (B, N, D_enc), causal (B,) bool -> hidden (B, L, W)
    def forward(self, ids, enc, causal):
        B, L = ids.shape
        tri = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
        # (B, 1, L, L): causal rows, or full attention (parallel prediction)
        mask = tri | ~causal.view(B, 1, 1, 1)
        x = self.tok_emb(ids) + self.pos_emb[:L]
        for blk in self.blocks:
            x = blk(x, mask=mask, enc=enc)
        return self.ln_f(x) # logits = head(x), computed in chunks by loss.py

    @torch.no_grad()
    # prefix (B, P) -> (B, P + max_new_tokens)
    def greedy_decode(self, prefix, enc, max_new_tokens, eos_id=1):
        seq = prefix
        done = torch.zeros(len(prefix), dtype=torch.bool, device=prefix.device)
        causal = torch.ones(len(prefix), dtype=torch.bool, device=prefix.device)
        # input = shift_right(seq) with 0 as BOS, exactly as in training
        for _ in range(max_new_tokens):
            inp = F.pad(seq, (1, 0))[:, :seq.shape[1] + 1]
            logits = self.head(self(inp, enc, causal)[:, -1]) # (B, V)
            nxt = logits.argmax(-1).masked_fill(done, 0) # pad after eos
            seq = torch.cat([seq, nxt[:, None]], 1)
            done = done | (nxt == eos_id)
        return seq

    def save_pretrained(self, out_dir):
        save_weights(self, out_dir, 'decoder', 'decoder_config.json', self.args)

    @classmethod
    def from_pretrained(cls, out_dir):
        dec = cls(**json.load(open(os.path.join(out_dir, 'decoder_config.json'))))
        dec.load_state_dict(load_file(os.path.join(out_dir, 'decoder.safetensors')))
        return dec.eval()

# -----------------------------------------------------------------------------
# DINO head for SILC (pooled) and TIPS (per patch): dinov2/layers/dino_head.py form
# (NOTES.md, U14)
class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim=65536, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        self.reset_parameters()

    # also called at the SigLIP 2 switch point: the heads start fresh (§2.3)
    def reset_parameters(self):
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.last, std=0.02)

    # (..., in_dim) -> (..., out_dim); last layer weight-normalised with g = 1 (DINOv2)
    def forward(self, x):
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.last, dim=-1).T

# -----------------------------------------------------------------------------
# boxes as text for LocCa (NOTES.md, U1/U2: xyxy normalised to [0, 1], integers 0..499,
# single spaces)
def box_to_text(box):
    return ' '.join(str(int(round(min(max(v, 0.0), 1.0) * 499))) for v in box)

def text_to_box(s):
    nums = [int(t) for t in s.replace(':', ' ').split() if t.isdigit()][:4]
    return [n / 499 for n in nums] if len(nums) == 4 else None

def box_iou(a, b): # (N, 4), (N, 4) xyxy -> (N,)
    lt = torch.max(a[:, :2], b[:, :2]) # (N, 2) left-top of the intersection
    rb = torch.min(a[:, 2:], b[:, 2:]) # (N, 2) right-bottom
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)
