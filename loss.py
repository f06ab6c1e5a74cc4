"""
Every loss of TinySigLIP, importing torch only, so the file can be copied into any codebase:
sigmoid / InfoNCE / feature / affinity distillation, and the complete SigLIP 2 objective
(arXiv 2502.14786) as one module, SigLIP2Loss: sigmoid + LocCa decoder loss + (from 80%)
SILC self-distillation + TIPS masked prediction, with its EMA teacher; the distillation
objective as another, DistillLoss. Values the paper states are cited by section; where it is
silent the choice is tagged (U<n>), numbered as in NOTES.md's "Choices where the paper is
silent".

    from loss import SigLIP2Loss, DistillLoss
    loss_fn = SigLIP2Loss(vision, patch_embed, decoder=LoccaDecoder(...),
                          silc_head=DINOHead(...), tips_head=DINOHead(...))
    distill = DistillLoss(t_scale, t_bias, feat=1.0, affinity=1.0)
    # fresh heads at the switch
    for p in loss_fn.maybe_switch(progress):
        optimizer.state.pop(p, None)
    # each loss -> (total, terms): its weighted sum and its named terms (unweighted, as logged)
    siglip_total, siglip_terms = loss_fn(images, img_emb, txt_emb, tokens, model.logit_scale,
                                         model.logit_bias, progress, locca=targets)
    # one process: all ranks' rows (img_all, txt_all) are this one's
    distill_total, distill_terms = distill(img_emb, txt_emb, img_emb, txt_emb, t_img, t_txt,
                                           model.logit_scale, model.logit_bias)
    (siglip_total + distill_total).backward()
    optimizer.step()
    loss_fn.after_step()  # EMA teacher + centres

Both modules take the model's logit_scale as the model holds it, the log of the scale t
(SigLIP §3.2: t = exp(t')), and exp it where a term uses it: the trainer passes its parameter
as is, and no caller has to know which term wants which form. The functions below them take
the scale itself (the multiplier in their formulas), as does DistillLoss's t_scale, a constant
read from the teacher's checkpoint.
"""
import copy, math
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# image-text losses (all embeddings L2-normalised)

# -> sum over the block of -log σ(z·(scale·cos + bias))
def _sigmoid_block(img, txt, scale, bias, pos):
    logits = scale * img @ txt.T + bias
    return -F.logsigmoid(torch.where(pos, logits, -logits)).sum()

def sigmoid_loss(img, txt, scale, bias, img_ids=None, txt_ids=None, chunk_size=0):
    """SigLIP (§3.2, Alg. 1): L = -(1/B) Σ_i Σ_j log σ(z_ij (t·x_i·y_j + b)),
    z = +1 for a matching pair else -1.
    img (B, D), txt (M, D). Positives: img_ids[i] == txt_ids[j] (other captions of the same
    image count as positives), default the diagonal. chunk_size > 0: image rows in chunks,
    each checkpointed, so neither the forward nor the backward ever holds the full B×M
    matrix (open_clip PR #1214)."""
    if img_ids is None:
        img_ids = torch.arange(len(img), device=img.device)
    if txt_ids is None:
        txt_ids = torch.arange(len(txt), device=txt.device)
    if not chunk_size:
        pos = img_ids[:, None] == txt_ids[None] # (B, M)
        return _sigmoid_block(img, txt, scale, bias, pos) / len(img)
    total = 0.0
    for i in range(0, len(img), chunk_size):
        pos = img_ids[i:i + chunk_size, None] == txt_ids[None]
        block = checkpoint(_sigmoid_block, img[i:i + chunk_size], txt, scale, bias, pos,
                           use_reentrant=False)
        total = total + block
    return total / len(img)

# logits per block when the chunk size is chosen by size: 64M, ~1.1 GiB of forward + backward at
# the ~17 bytes per logit that bench.py --dist_loss measures (fp32); chunking costs time (the
# forward runs again in backward), so it starts only where the memory matters
CHUNK_LOGITS = 1 << 26

def sigmoid_chunk(rows, cols, budget=CHUNK_LOGITS):
    """The chunk size (image rows) chosen by size for a (rows, cols) sigmoid block: 0 (one
    block, as before) up to `budget` logits, else as many rows as fit in it."""
    return 0 if rows * cols <= budget else max(1, budget // cols)

# this rank's n rows of all ranks' rows (all_gather concatenates rank-major); 0:n in one process
def rank_rows(n):
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return slice(rank * n, (rank + 1) * n)

def infonce_loss(img, txt, scale):
    """CLIP / open_clip ClipLoss: ½ [CE(s·I Tᵀ, y) + CE(s·T Iᵀ, y)], y = arange(B)."""
    logits = scale * img @ txt.T
    y = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))

def feature_loss(student, teacher):
    """CLIP-KD FD on normalised embeddings, summed over D and averaged over the batch:
    mean(‖ŝ - t̂‖²) = mean(2 - 2cos).
    CLIP-KD's `2000 · F.mse_loss` averages over D too, so λ_feat here = 2000 / D there
    (≈ 2 at D = 1024): λ = 1 is sane."""
    diff = F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)
    return diff.pow(2).sum(-1).mean()

def affinity_loss(s_img, s_txt, t_img, t_txt, s_scale, t_scale,
                  s_bias=None, t_bias=None, kind='softmax', img_rows=None, txt_rows=None):
    """Affinity distillation, teacher as target (TinyCLIP, CLIP-KD, MobileCLIP).
    Inputs normalised.
    softmax: ½ [KL(softmax(Z_t) ‖ softmax(Z_s)) over image rows + the same over text rows],
      mean over rows, Z = scale·cos with each model's own scale (the teacher's from its
      checkpoint). KL, not soft-CE, so it is 0 at s == t.
    sigmoid (SigLIP teachers): Σ_j KL(Bern(σ(z_t,ij)) ‖ Bern(σ(z_s,ij))), mean over images,
      z = scale·cos + bias; the same normalisation as sigmoid_loss. Not MobileCLIP2's
      -Σ log σ(y_t z_s), which is not minimal at student == teacher.
    img_rows / txt_rows (slices, None = all): only these image rows (against every text) and
    text rows (against every image) enter, each mean over its own rows: under DDP each rank
    passes its own (rank_rows), and the ranks' mean is the full loss (NOTES.md)."""
    img_rows = img_rows or slice(None)
    txt_rows = txt_rows or slice(None)
    zs = s_scale * s_img[img_rows] @ s_txt.T # (b, M)
    zt = t_scale * t_img[img_rows] @ t_txt.T
    if kind == 'softmax':
        kl = lambda s, t: F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1),
                                   log_target=True, reduction='batchmean')
        # the text rows: the same matrix in one process, its (B, m) column block under DDP
        whole = len(zs) == len(s_img) and len(s_txt[txt_rows]) == len(s_txt)
        zs_t = zs.T if whole else (s_scale * s_img @ s_txt[txt_rows].T).T # (m, B)
        zt_t = zt.T if whole else (t_scale * t_img @ t_txt[txt_rows].T).T
        return 0.5 * (kl(zs, zt) + kl(zs_t, zt_t))
    zs = zs + (s_bias if s_bias is not None else 0.0)
    zt = zt + (t_bias if t_bias is not None else 0.0)
    # KL of Bernoullis = BCE(z_s, p_t) - H(p_t)
    pt = torch.sigmoid(zt)
    ce = F.binary_cross_entropy_with_logits(zs, pt, reduction='none')
    entropy = F.binary_cross_entropy_with_logits(zt, pt, reduction='none')
    kl = ce - entropy
    return kl.sum() / len(zs)

class DistillLoss(nn.Module):
    """The distillation objective, the cached teacher's embeddings as targets:
      feat·(L_feat(img) + L_feat(txt)) + affinity·L_affinity(img × txt)         the pairs
      + extra_feat·L_feat + extra_affinity·L_affinity(rows × rows)  per unpaired tower (DIME-FM)
      + extra_cross·L_affinity(unpaired images × unpaired captions)      DIME-FM's cross-modal KD
    Affinity targets use the teacher's own scale and bias (t_scale: the scale itself, not its
    log, and t_bias, both from its checkpoint); the unpaired towers' rows are compared at the
    teacher's scale on both sides, softmax kind.
    Feature terms are per example (this rank's rows), affinity terms this rank's rows against
    all ranks' (b x B_global blocks, whose mean over ranks is the full matrix's loss).

        distill = DistillLoss(t_scale, t_bias, feat=1.0, affinity=1.0)
        total, terms = distill(img, txt, img_all, txt_all, t_img, t_txt,
                               student.logit_scale, student.logit_bias)
    """
    def __init__(self, t_scale, t_bias, feat=0.0, affinity=0.0, extra_feat=1.0,
                 extra_affinity=1.0, extra_cross=0.0, kind='softmax'):
        super().__init__()
        self.t_scale = t_scale
        self.t_bias = t_bias
        self.w = dict(feat=feat, affinity=affinity, extra_feat=extra_feat,
                      extra_affinity=extra_affinity, extra_cross=extra_cross)
        self.kind = kind

    def _affinity(self, s_img, s_txt, t_img, t_txt, logit_scale, logit_bias, img_rows,
                  txt_rows):
        # student rows at the student's scale vs teacher rows at the teacher's
        s_img, s_txt = F.normalize(s_img, dim=-1), F.normalize(s_txt, dim=-1)
        t_img, t_txt = F.normalize(t_img, dim=-1), F.normalize(t_txt, dim=-1)
        return affinity_loss(s_img, s_txt, t_img, t_txt, logit_scale.exp(), self.t_scale,
                             logit_bias, self.t_bias, self.kind, img_rows, txt_rows)

    def forward(self, img, txt, img_all, txt_all, t_img, t_txt, logit_scale, logit_bias,
                unpaired_img=None, unpaired_txt=None):
        """img, txt (B, D): this rank's student embeddings; img_all, txt_all (B·world, D): all
        ranks' (float32); t_img, t_txt (B·world, D): the teacher's, on the same device.
        logit_scale: the student's log scale (exp'd per term), logit_bias its bias.
        unpaired_img / unpaired_txt: (this rank's student rows (n, D), all ranks' (n·world, D)
        float32, the teacher's (n·world, D)), or None.
        -> (total: the weighted sum, 0.0 when every weight is 0; terms: name -> unweighted
        scalar)."""
        # this rank's slice of the global rows: the per-example terms take only it, the
        # affinity terms its rows against all ranks' (b x B_global each, NOTES.md)
        rows = rank_rows(len(img))
        total, terms = 0.0, {}
        if self.w['feat']:
            terms['feat'] = (feature_loss(img.float(), t_img[rows])
                             + feature_loss(txt.float(), t_txt[rows]))
            total = total + self.w['feat'] * terms['feat']
        if self.w['affinity']:
            terms['affinity'] = self._affinity(img_all, txt_all, t_img, t_txt,
                                               logit_scale, logit_bias, rows, rows)
            total = total + self.w['affinity'] * terms['affinity']
        # name -> (normalised student rows, teacher rows, this rank's slice), all ranks
        unpaired = {}
        for name, tower in (('extra_img', unpaired_img), ('extra_txt', unpaired_txt)):
            if tower is None:
                continue
            s, s_all, t = tower
            s_all, t_all = F.normalize(s_all, dim=-1), F.normalize(t, dim=-1)
            own = rank_rows(len(s))
            unpaired[name] = (s_all, t, own)
            terms[f'{name}/feat'] = feature_loss(s.float(), t[own])
            # image-image / text-text rows, both at the teacher's scale (NOTES.md): 0 when
            # student == teacher
            terms[f'{name}/affinity'] = affinity_loss(s_all, s_all, t_all, t_all,
                                                      self.t_scale, self.t_scale,
                                                      img_rows=own, txt_rows=own)
            total = (total + self.w['extra_feat'] * terms[f'{name}/feat']
                     + self.w['extra_affinity'] * terms[f'{name}/affinity'])
        if self.w['extra_cross'] and len(unpaired) == 2:
            (s_img, t_img, own_img) = unpaired['extra_img']
            (s_txt, t_txt, own_txt) = unpaired['extra_txt']
            terms['extra_cross'] = self._affinity(s_img, s_txt, t_img, t_txt, logit_scale,
                                                  logit_bias, own_img, own_txt)
            total = total + self.w['extra_cross'] * terms['extra_cross']
        return total, terms

# -----------------------------------------------------------------------------
# LocCa decoder loss
# (§2.2; CapPa: big_vision models/proj/cappa/cappa.py, trainers/proj/cappa/generative.py)
def chunked_cross_entropy(hidden, weight, bias, targets, chunk_size=1024):
    """Per-token CE(hidden @ weightᵀ + bias, targets) -> (N,), never holding [N, V] logits for
    more than one chunk (§2.2 'chunked loss'; open_clip fused_linear_cross_entropy): each
    chunk is checkpointed and recomputed in backward."""
    ce = lambda h, y: F.cross_entropy(F.linear(h, weight, bias).float(), y, reduction='none')
    chunks = [checkpoint(ce, hidden[i:i + chunk_size], targets[i:i + chunk_size],
                         use_reentrant=False)
              for i in range(0, len(hidden), chunk_size)]
    return torch.cat(chunks)

def locca_inputs(seq, prefix_len, parallel, mask_id):
    """Decoder inputs for targets seq (B, L). Autoregressive: shift_right(seq) with 0 as BOS,
    causal attention. Parallel prediction (CapPa): every target position becomes the mask
    token, full attention; the task prefix stays visible as context (NOTES.md, U4:
    CapPa had no prefix). Position p predicts seq[p] in both modes."""
    pos = torch.arange(seq.shape[1], device=seq.device)[None]
    ar = F.pad(seq, (1, 0))[:, :-1]
    par = torch.where(pos < prefix_len[:, None], seq, torch.full_like(seq, mask_id))
    return torch.where(parallel[:, None], par, ar), ~parallel

def locca_loss(decoder, enc, seq, prefix_len, parallel, mask_id, valid=None, chunk_size=1024):
    """Token CE on target tokens only (not the prefix, not pads), normalised per sequence
    (NOTES.md, U6: big_vision weighted_softmax_xent normalize=True), then mean over valid
    examples (U10: no region -> no ARef/GCap loss)."""
    inp, causal = locca_inputs(seq, prefix_len, parallel, mask_id)
    hidden = decoder(inp, enc, causal) # (B, L, W)
    pos = torch.arange(seq.shape[1], device=seq.device)[None]
    w = (seq != 0) & (pos >= prefix_len[:, None]) # (B, L)
    if valid is not None:
        w = w & valid[:, None]
    # only weighted rows
    ce = chunked_cross_entropy(hidden[w], decoder.head.weight, decoder.head.bias, seq[w],
                               chunk_size)
    rows = w.nonzero()[:, 0]
    ce_sum = torch.zeros(len(seq), device=seq.device).index_add(0, rows, ce) # (B,)
    per_seq = ce_sum / w.sum(1).clamp(min=1)
    n = w.any(1).sum()
    # + 0·hidden keeps the graph connected when nothing is valid
    return per_seq.sum() / n.clamp(min=1) + 0.0 * hidden.sum()

# -----------------------------------------------------------------------------
# self-distillation pieces (DINOv2 dino_clstoken_loss.py / ibot_patch_loss.py) and views
def teacher_probs(t_logits, center, temp):
    # centring + sharpening
    return F.softmax((t_logits - center) / temp, dim=-1)

def dino_kl(s_logits, t_probs, temp): # -> per row (...,)
    """DINO's teacher -> student cross-entropy, minus the teacher's entropy: KL(p_t ‖ p_s).
    Same gradient for the student (H(p_t) is constant), but the value shows learning: CE rises
    with H(p_t) as τ_t warms up and centring flattens p_t, while the KL goes to 0 as the
    student matches the teacher."""
    log_t = torch.log(t_probs.clamp_min(1e-12))
    log_s = F.log_softmax(s_logits / temp, dim=-1)
    return (t_probs * (log_t - log_s)).sum(-1)

# x (B, C, H, W), theta (B, 2, 3) -> (B, C, size, size)
def _affine_crops(x, theta, size):
    grid = F.affine_grid(theta, (len(x), x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)

def crop_boxes(x, boxes, flips, size):
    """Re-apply stored crops (MobileCLIP's reinforced views): x (B, C, H, W) float, boxes (B, 4)
    xyxy in [0, 1] of the image, flips (B,) bool -> (B, C, size, size), the box resized to size
    (bilinear), mirrored where flipped. The crop runs on x's device from the cached pixels, so
    no image is decoded again."""
    x0, y0, x1, y1 = boxes.to(x.dtype).unbind(-1)
    # a flip mirrors the output grid: x_in runs right to left
    sign = 1.0 - 2.0 * flips.to(x.dtype)
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    # affine_grid maps output [-1, 1] onto input [2·x0 - 1, 2·x1 - 1]
    theta[:, 0, 0] = (x1 - x0) * sign
    theta[:, 0, 2] = x0 + x1 - 1
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1
    return _affine_crops(x, theta, size)

def random_resized_crops(x, n, scale, size, flip=True, ratio=(3 / 4, 4 / 3)):
    """n random crops per image (area fraction in `scale`, aspect in `ratio`), resized to size:
    (n·B, C, size, size), crop-major. Pure torch (affine_grid + grid_sample), so it runs on the
    GPU from the cached pixels."""
    B = len(x)
    dev = x.device
    area = torch.empty(n * B, device=dev).uniform_(*scale)
    logr = torch.empty(n * B, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    # w, h: fractions of the side
    w = (area * logr.exp()).sqrt().clamp(max=1)
    h = (area / logr.exp()).sqrt().clamp(max=1)
    cx = (torch.rand(n * B, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n * B, device=dev) * 2 - 1) * (1 - h)
    sx = w * (torch.where(torch.rand(n * B, device=dev) < 0.5, -1.0, 1.0) if flip else 1.0)
    theta = torch.zeros(n * B, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return _affine_crops(x.repeat(n, 1, 1, 1), theta, size)

# (B, N) bool, exactly floor(ratio·N) True per row (NOTES.md, U22)
def random_patch_mask(B, N, ratio=0.5, device=None):
    return torch.rand(B, N, device=device).argsort(1) < int(ratio * N)

# -----------------------------------------------------------------------------
class SigLIP2Loss(nn.Module):
    """L = w_sig·L_sig + w_locca·L_LocCa                              before `switch` (§2.2)
       L = ... + γ·(1.0·L_SILC + 0.25·L_MP)   with an EMA teacher from `switch` on    (§2.3)
    vision(x) -> (tokens (B, N, De), pooled (B, Dp)), or an output with .last_hidden_state /
    .pooler_output (a transformers vision model), is the student's image tower (held by
    reference, not registered); patch_embed is its patch-embedding module (Conv2d or Linear)
    for TIPS masking (None: CNN).

        total, terms = loss_fn(images, img_emb, txt_emb, tokens, logit_scale, logit_bias,
                               progress, locca=targets)
    """
    def __init__(self, vision, patch_embed=None, decoder=None, silc_head=None, tips_head=None,
                 mask_id=None, sig_weight=1.0, locca_weight=1.0, gamma=0.25, silc_weight=1.0,
                 tips_weight=0.25, switch=0.8, ema_momentum=0.996, n_local=8,
                 local_scale=(0.05, 0.4), global_scale=(0.4, 1.0), local_size=None,
                 mask_ratio=0.5, p_parallel=0.5, student_temp=0.1, teacher_temp=(0.04, 0.07),
                 center_momentum=0.9, contrast='sigmoid', chunk_size=0, ce_chunk=1024):
        super().__init__()
        # references: the student's weights stay in the student's state_dict
        self._vision = [vision, patch_embed]
        self.decoder = decoder
        if mask_id is None and decoder is not None:
            mask_id = decoder.head.out_features
        self.mask_id = mask_id
        self.w = dict(
            sig=sig_weight,
            locca=locca_weight if decoder is not None else 0.0,
            gamma=gamma,
            silc=silc_weight if silc_head is not None else 0.0,
            tips=tips_weight if tips_head is not None else 0.0,
        )
        self.switch = switch
        self.m = ema_momentum
        self.n_local = n_local
        self.local_scale = local_scale
        self.global_scale = global_scale
        self.local_size = local_size # §2.3
        self.mask_ratio = mask_ratio # §2.3
        self.p_parallel = p_parallel # §2.2
        # NOTES.md, U15, U16
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_m = center_momentum
        self.contrast = contrast
        # sigmoid image rows per checkpointed chunk; 0 = chosen by size (sigmoid_chunk)
        self.chunk_size = chunk_size
        self.ce_chunk = ce_chunk
        self.sd = gamma > 0 and (self.w['silc'] > 0 or self.w['tips'] > 0)
        if self.w['tips'] and patch_embed is None:
            raise ValueError("TIPS masked prediction needs a ViT tower (patch embeddings to "
                             "mask); set its weight to 0 for CNNs")
        self.silc_head = silc_head
        self.tips_head = tips_head
        # EMA teacher: vision tower + heads (NOTES.md, U24); the text tower and decoder
        # have none (§2.3)
        if self.sd:
            self.teacher = copy.deepcopy(vision).requires_grad_(False)
            self.silc_head_t = (copy.deepcopy(silc_head).requires_grad_(False)
                                if silc_head is not None else None)
            self.tips_head_t = (copy.deepcopy(tips_head).requires_grad_(False)
                                if tips_head is not None else None)
            if isinstance(patch_embed, nn.Conv2d):
                dim = patch_embed.out_channels
            else:
                dim = getattr(patch_embed, 'out_features', 1)
            # zero init as TIPS / DINOv2
            self.mask_token = nn.Parameter(torch.zeros(dim))
            K = lambda h: h.last.shape[0] if h is not None else 1
            self.register_buffer('silc_center', torch.zeros(1, K(silc_head)))
            self.register_buffer('tips_center', torch.zeros(1, K(tips_head)))
        self.register_buffer('switched', torch.tensor(False))
        self._batch_centers = {}

    @staticmethod
    def _run(tower, x):
        # our towers return (tokens, pooled); a transformers vision model returns both as fields
        out = tower(x)
        if hasattr(out, 'last_hidden_state'):
            return out.last_hidden_state, out.pooler_output
        return out

    def new_params(self):
        mods = [m for m in (self.silc_head, self.tips_head) if m is not None]
        return [p for m in mods for p in m.parameters()] + ([self.mask_token] if self.sd else [])

    @torch.no_grad()
    def maybe_switch(self, progress):
        """At the first call with progress >= switch: teacher := student, fresh heads and mask
        token (§2.3). Returns the parameters whose optimizer state must be dropped
        ('corresponding optimizer parameters')."""
        if not self.sd or bool(self.switched) or progress < self.switch:
            return []
        self.teacher.load_state_dict(self._vision[0].state_dict())
        heads = ((self.silc_head, self.silc_head_t), (self.tips_head, self.tips_head_t))
        for h, ht in heads:
            if h is not None:
                if hasattr(h, 'reset_parameters'):
                    h.reset_parameters()
                else:
                    h.apply(lambda m: getattr(m, 'reset_parameters', lambda: None)())
                ht.load_state_dict(h.state_dict())
        self.mask_token.zero_()
        self.switched.fill_(True)
        return self.new_params()

    def _masked_forward(self, x, mask):
        # student forward with masked patch embeddings replaced BEFORE pos-emb (TIPS)
        def hook(module, inp, out):
            if out.dim() == 4: # Conv2d: (B, C, h, w)
                m = mask.view(out.shape[0], 1, *out.shape[2:])
                tok = self.mask_token.to(out.dtype).view(1, -1, 1, 1)
            else: # Linear: (B, N, C)
                m = mask[..., None]
                tok = self.mask_token.to(out.dtype)
            return torch.where(m, tok, out)
        handle = self._vision[1].register_forward_hook(hook)
        try:
            return self._run(self._vision[0], x)
        finally:
            handle.remove()

    def forward(self, images, img_emb, txt_emb, tokens, logit_scale, logit_bias, progress,
                locca=None, img_ids=None, txt_ids=None, rows=None):
        """images (B, 3, H, W): the student's normalised input (SILC/TIPS crop and mask it);
        img_emb (B, D), txt_emb (M, D): the embeddings (all ranks'); tokens (B, N, C): the
        image tower's patch tokens (the LocCa decoder's memory); logit_scale: the log scale,
        logit_bias: the bias; progress: the training fraction in [0, 1] (the switch, τ_t).
        locca: the decoder's targets, ids in its vocabulary, or None:
          cap_ids (B, L) long, cap_prefix (B,) long: 'cap:' + caption, the prefix's length;
          with regions also aref_ids / aref_prefix, gcap_ids / gcap_prefix (the same shapes)
          and has_region (B,) bool (False: no ARef/GCap loss for that example; absent: all).
        img_ids (B,), txt_ids (M,): which captions match which image (default the diagonal).
        rows: this rank's slice of img_emb's rows (rank_rows), None = all: the sigmoid term
        takes only them against every text (b x M; InfoNCE's softmax over images needs all).
        -> (total: the weighted sum, a float 0.0 when no term is on; terms: name -> unweighted
        scalar)."""
        terms = {}
        # on the original image (§2.3)
        if self.w['sig']:
            scale = logit_scale.exp() # t = exp(t') (§3.2)
            img = F.normalize(img_emb, dim=-1)
            txt = F.normalize(txt_emb, dim=-1)
            if self.contrast == 'sigmoid':
                rows = rows or slice(None)
                if img_ids is None:
                    img_ids = torch.arange(len(img), device=img.device)
                img, img_ids = img[rows], img_ids[rows] # (b, D), (b,)
                chunk = self.chunk_size or sigmoid_chunk(len(img), len(txt))
                terms['sigmoid'] = sigmoid_loss(img, txt, scale, logit_bias, img_ids, txt_ids,
                                                chunk)
            else:
                terms['sigmoid'] = infonce_loss(img, txt, scale)
        # three targets per example, one decoder pass each (§2.2)
        if self.w['locca'] and locca is not None:
            cap_ids = locca['cap_ids']
            # parallel prediction per example, p = 0.5 (§2.2)
            par = torch.rand(len(cap_ids), device=cap_ids.device) < self.p_parallel
            for task in ('cap', 'aref', 'gcap'):
                # a cache without boxes: no ARef/GCap targets, weight 0 (train.py says so once)
                if f'{task}_ids' not in locca:
                    terms[f'locca/{task}'] = torch.zeros((), device=tokens.device)
                    continue
                # ARef / GCap stay autoregressive, on the examples with a region
                p = par if task == 'cap' else torch.zeros_like(par)
                valid = locca.get('has_region') if task != 'cap' else None
                terms[f'locca/{task}'] = locca_loss(self.decoder, tokens, locca[f'{task}_ids'],
                                                    locca[f'{task}_prefix'], p, self.mask_id,
                                                    valid, self.ce_chunk)
            # NOTES.md, U5: mean of the tasks
            terms['locca'] = (terms['locca/cap'] + terms['locca/aref'] + terms['locca/gcap']) / 3
        if self.sd and bool(self.switched):
            self._self_distillation(images, progress, terms)
        total = (self.w['sig'] * terms.get('sigmoid', 0.0)
                 + self.w['locca'] * terms.get('locca', 0.0))
        if 'silc' in terms or 'tips' in terms:
            self_distill = (self.w['silc'] * terms.get('silc', 0.0)
                            + self.w['tips'] * terms.get('tips', 0.0))
            total = total + self.w['gamma'] * self_distill
        return total, terms

    def _self_distillation(self, images, progress, terms):
        B, size = len(images), images.shape[-1]
        # NOTES.md, U15: τ_t warm-up, first 10% of the phase
        warmup = max(0.1 * (1 - self.switch), 1e-8)
        frac = min((progress - self.switch) / warmup, 1.0)
        t_temp = self.teacher_temp[0] + frac * (self.teacher_temp[1] - self.teacher_temp[0])
        # 1 global view (§2.3; NOTES.md, U20)
        glob = random_resized_crops(images, 1, self.global_scale, size)
        with torch.no_grad():
            # eval: BatchNorm statistics come from the student (after_step)
            t_tok, t_pool = self._run(self.teacher.eval(), glob)
        # local student views -> teacher's global view, on pooled features (§2.3)
        if self.w['silc']:
            # NOTES.md, U19
            local_size = self.local_size or size // 2
            local = random_resized_crops(images, self.n_local, self.local_scale, local_size)
            s_pool = self._run(self._vision[0], local)[1].view(self.n_local, B, -1)
            with torch.no_grad():
                t_logits = self.silc_head_t(t_pool)
                pt = teacher_probs(t_logits, self.silc_center, t_temp)
            terms['silc'] = dino_kl(self.silc_head(s_pool), pt[None], self.student_temp).mean()
            self._batch_centers['silc'] = t_logits.mean(0, keepdim=True)
        # masked student view vs unmasked teacher, per patch at masked positions (§2.3)
        if self.w['tips']:
            mask = random_patch_mask(B, t_tok.shape[1], self.mask_ratio, images.device)
            s_tok = self._masked_forward(glob, mask)[0]
            with torch.no_grad():
                t_logits = self.tips_head_t(t_tok[mask])
                pt = teacher_probs(t_logits, self.tips_center, t_temp)
            # (B·N/2,), rows image-major
            ce = dino_kl(self.tips_head(s_tok[mask]), pt, self.student_temp)
            # NOTES.md, U23: mean over masked patches, then over images
            terms['tips'] = ce.view(B, -1).mean(1).mean()
            self._batch_centers['tips'] = t_logits.mean(0, keepdim=True)

    @torch.no_grad()
    def after_step(self):
        """After optimizer.step(): EMA teacher p_t = m·p_t + (1-m)·p_s (fixed m;
        NOTES.md, U17) and centre updates (U16)."""
        if not (self.sd and bool(self.switched)):
            return
        heads = ((self.silc_head_t, self.silc_head), (self.tips_head_t, self.tips_head))
        pairs = [(self.teacher, self._vision[0])] + [(t, s) for t, s in heads if s is not None]
        for t, s in pairs:
            for pt, ps in zip(t.parameters(), s.parameters()):
                pt.lerp_(ps.detach().to(pt.dtype), 1 - self.m)
            for bt, bs in zip(t.buffers(), s.buffers()):
                bt.copy_(bs)
        for k, c in self._batch_centers.items():
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(c)
                c /= dist.get_world_size()
            center = getattr(self, f'{k}_center')
            center.mul_(self.center_m).add_(c, alpha=1 - self.center_m)
        self._batch_centers = {}
