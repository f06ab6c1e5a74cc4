"""
Paper-style tables from the JSON the other scripts wrote (read-only; no torch): eval.json,
meta.json, log.jsonl.

    python report.py --runs_dir=out --teacher_eval=cache/coco-L/test/eval.json --out=report.md
    python report.py --runs_dir=out/shapes --teacher_eval=cache/shapes/test/eval.json \
        --out=out/shapes/report.md
    # + zero-shot transfer columns: the teacher's eval.json of each other test cache
    python report.py --runs_dir=out --teacher_eval=cache/coco-L/test/eval.json \
        --transfer_evals=cache/flickr30k-L/test/eval.json --out=report.md

The report opens with its findings: the no-KD student's ratio to the teacher against the seed's
calibration range, then each difference below with whether it is resolved (every seed's delta of
one sign, and the mean clear of the two runs' combined bootstrap intervals), then convergence.
The seed's tables: Table 1 Teacher (name) / Student (No KD) = a1 / Student (TinySigLIP) = the
distilled run (tinysiglip, a5, a3, ...) with the best val R@1, chosen on val, with params, ratio
and speed vs the teacher (bench.py --speed); Table 2 Full Method (a5), w/o Feature Loss (a4), w/o
Affinity Loss (a3), w/o Contrastive (a7), each Delta vs Full per seed pair and resolved or not.
Then Table R (the recipe part by part), every loss combination a1-a7, zero-shot top-1/top-5
(eval.py --zeroshot), Table B teacher x student (b1-b5, also as the seed's 2x3 grid) and Table C
(c1, c2) with student/teacher R@1 ratios, and (demo.sh TERMS=1) what each SigLIP 2 term adds to a
small Siglip2Model: retrieval, ARef accuracy, dense probe (runs terms-*, each scored on the cache
of terms-base). Table 1 gains R@1 columns per --transfer_evals set
(a student's row: its eval.json's evals['<dataset>/<split>']) and an ImageNet-1k zero-shot
top-1 column when an eval.json holds one (eval.py --zeroshot on ImageNet). Every number carries
its 95 % bootstrap interval over test images, `66.7 [64.5, 68.9]` (eval.py); runs named
<name>-s<seed> are extra seeds, shown as mean ± half-range, the interval then the mean of the
seeds' bounds. A missing run is a row of '—', never a crash.
An eval.json that is corrupt, non-finite, scored on another cache than the teacher row, or stale
(it scored another model.safetensors than the run holds now) is refused like a missing run: the
row names the file and why.
With matplotlib: <run>/curves.png (every loss term vs iteration) and ablation.png next to the
report.
"""
import os, re, json, glob, math, hashlib, functools

runs_dir = 'out'
teacher_eval = 'cache/coco-L/test/eval.json'
transfer_evals = '' # comma-separated teacher eval.json of other test caches (Flickr30k): columns
out = 'report.md'
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise SystemExit(f"report.py: --out={out!r}: folder {os.path.dirname(out)!r} does not exist")
# -----------------------------------------------------------------------------
NOTES = {} # run name -> why some of its eval.json were refused (printed in its rows)
# -> the JSON, or None when missing; a corrupt file is noted, not a crash
def read(path, notes=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if notes is not None:
            notes.append(f"corrupt: {path} ({type(e).__name__})")
        return None

def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()

# -> why this eval.json must not be shown, or None; reference: the teacher row of its test set
def refused(e, path, run_dir=None, reference='main', reference_name='the teacher row'):
    reference = teacher if reference == 'main' else reference
    if not all(isinstance(v, (int, float)) and math.isfinite(v)
               for v in e.get('metrics', {}).values()):
        return f"non-finite metrics: {path} (a diverged model)"
    if reference and e.get('fingerprint') != reference.get('fingerprint'):
        return f"scored on another cache than {reference_name} (split {e.get('split')}): {path}"
    model = os.path.join(run_dir or '', 'model.safetensors')
    if (run_dir and os.path.isfile(model)
            and (e.get('checkpoint') or {}).get('model_sha256') != sha256(model)):
        return f"stale: {path} scored another checkpoint than {model}; rerun eval.py"
    return None

@functools.cache
def seeds(name, reference_path=None, reference_name='the teacher row'):
    """The valid eval.json of a run and of its extra seeds; refusals go to NOTES[name]. They
    must be scored on the teacher row's cache, or on the cache of the eval.json at
    reference_path (a Table B run: its own teacher's; the terms study: terms-base's)."""
    reference = read(reference_path) if reference_path else 'main'
    # extra seeds are the directories <name>-s<k>; demo.sh's <name>-s<k>.log beside them are not
    # runs
    extra = sorted(glob.glob(os.path.join(runs_dir, f'{name}-s*')))
    extra = [d for d in extra if os.path.isdir(d) and d.rsplit('-s', 1)[1].isdigit()]
    dirs = [os.path.join(runs_dir, name)] + extra
    out, notes = [], NOTES.setdefault(name, [])
    for d in dirs:
        path = os.path.join(d, 'eval.json')
        e = read(path, notes)
        why = refused(e, path, d, reference, reference_name) if e else None
        notes += [why] if why else []
        # <name> is seed 0, <name>-s<k> seed k: the deltas pair runs of the same seed
        seed = 0 if d == dirs[0] else int(d.rsplit('-s', 1)[1])
        out += [dict(e, seed=seed, dir=d)] if e and not why else []
    return out

def seed_counts(names): # "a5 2, a4 2": how many seeds each row's mean is over
    return ', '.join(f'{n} {len(seeds(n))}' for n in names)

def gap(name): # the note of a row without numbers: why, or that the run is missing
    return (f"  ({'; '.join(NOTES[name])})" if NOTES.get(name)
            else f"  (missing: {os.path.join(runs_dir, name)})")

def fmt(vals, digits=1, intervals=()): # mean ± half-range over seeds [mean bootstrap bounds]
    if not vals:
        return '—'
    m = sum(vals) / len(vals)
    ci = ''
    if intervals and all(intervals):
        lo, hi = [sum(b[j] for b in intervals) / len(intervals) for j in (0, 1)]
        ci = f' [{lo:.{digits}f}, {hi:.{digits}f}]'
    return (f'{m:.{digits}f}'
            + (f' ± {(max(vals) - min(vals)) / 2:.{digits}f}' if len(vals) > 1 else '') + ci)

def mean(evals, k):
    return sum(e['metrics'][k] for e in evals) / len(evals) if evals else None

def half_width(evals, k): # a run's bootstrap 95 % half-width of metric k, mean over its seeds
    bounds = [e.get('intervals', {}).get(k) for e in evals]
    if not bounds or not all(bounds):
        return None
    return sum((hi - lo) / 2 for lo, hi in bounds) / len(bounds)

def paired_deltas(evals, base, k): # per seed: run - base in points, on the seeds both have
    base_by_seed = {e['seed']: e['metrics'][k] for e in base}
    return [e['metrics'][k] - base_by_seed[e['seed']] for e in evals if e['seed'] in base_by_seed]

def resolved(deltas, interval):
    """Is a difference resolved? Both the seed spread and the bootstrap intervals must be clear of
    zero: every seed's delta has the same sign (2 seeds at least), and the mean delta exceeds
    `interval`, the two runs' half-widths combined as if independent (sqrt(h1^2 + h2^2)): wider
    than a paired bootstrap on the same test images, so the rule errs towards 'no'."""
    if len(deltas) < 2:
        return 'no: 1 seed'
    if min(deltas) <= 0 <= max(deltas):
        return 'no: inside the seed spread'
    if interval is None:
        return 'no: no intervals'
    if abs(sum(deltas) / len(deltas)) <= interval:
        return 'no: inside the intervals'
    return 'yes'

def compare(evals, base, k):
    """-> (cell 'mean ± half-range over seeds (± interval)', resolved?) of evals - base in k"""
    deltas = paired_deltas(evals, base, k)
    if not deltas:
        return '—', '—'
    h1, h2 = half_width(evals, k), half_width(base, k)
    interval = math.hypot(h1, h2) if h1 is not None and h2 is not None else None
    m = sum(deltas) / len(deltas)
    cell = f"{m:+.1f}" + (f" ± {(max(deltas) - min(deltas)) / 2:.1f}" if len(deltas) > 1 else '')
    cell += f" (±{interval:.1f})" if interval is not None else ''
    return cell, resolved(deltas, interval)

def M(n): # parameter count in millions, 2 decimals below 10M (demo models), 1 above
    return f"{n / 1e6:.{2 if n < 1e7 else 1}f}M"

# the teacher: image tower / total (manifest); a student: total (without the token table)
def params(e):
    p = (e or {}).get('params')
    if not p:
        return '—'
    if 'image' in p:
        return f"{M(p['image'])} image / {M(p['total'])} total"
    return f"{M(p['total'])} ({M(p['without_token_table'])})"

def short(name): # an HF id (org/name) as it is; a local teacher dir by its last two parts
    parts = os.path.normpath(name).split(os.sep)
    return name if len(parts) <= 2 and not os.path.isabs(name) else '/'.join(parts[-2:])

def stat(evals, k): # one metric of a run: mean ± half-range over its seeds [bootstrap interval]
    return fmt([e['metrics'][k] for e in evals],
               intervals=[e.get('intervals', {}).get(k) for e in evals])

def zeroshot_stat(evals, k='top1'): # ImageNet-1k zero-shot top-1 of a run (eval.py --zeroshot)
    zs = [e['zeroshot'] for e in evals if (e.get('zeroshot') or {}).get('dataset') == 'imagenet1k']
    return fmt([z[k] for z in zs], intervals=[z.get('intervals', {}).get(k) for z in zs])

# a markdown table row; a run's missing or refused eval.json is named after it
def row(*cells, run=None, ref=()): # ref: seeds()'s reference_path and reference_name
    note = gap(run) if run and (NOTES.get(run) or not seeds(run, *ref)) else ''
    return '| ' + ' | '.join(cells) + ' |' + note

def header(*cols):
    return [row(*cols), '|' + '---|' * len(cols)]

def speed(e): # bench.py --speed: student / teacher throughput, same machine, one run
    s = (e or {}).get('speed')
    return f"{s['img_ratio']:.1f}× img, {s['txt_ratio']:.1f}× txt" if s else '—'

KEYS = ['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10']
R1 = ('i2t_r1', 't2i_r1')
teacher_notes = []
teacher = read(teacher_eval, teacher_notes)
# the cache the teacher row was scored on
man = read(os.path.join(os.path.dirname(teacher_eval), 'manifest.json'))
if teacher and refused(teacher, teacher_eval):
    teacher_notes.append(refused(teacher, teacher_eval))
    teacher = None
elif teacher and man and man.get('fingerprint') != teacher.get('fingerprint'):
    teacher_notes.append(f"stale: {teacher_eval} scored an older version of that cache; "
                         f"rerun eval.py --cache=...")
    teacher = None
lines = [f"# TinySigLIP report ({runs_dir})", '']
if teacher:
    lines.append(f"Test split `{teacher['split']}`: {teacher['n_images']} images, "
                 f"{teacher['n_captions']} captions "
                 f"(CLIP_benchmark protocol: every caption kept). R@k in %.")
findings_at = len(lines) # the findings go here once every table is built

# mean over seeds of val I→T + T→I R@1 of the scored checkpoint (meta.json)
def val_score(evals):
    metas = [(read(os.path.join(e['dir'], 'meta.json')) or {}).get('metrics', {}) for e in evals]
    scores = [m['val/i2t_r1'] + m['val/t2i_r1'] for m in metas if 'val/t2i_r1' in m]
    return sum(scores) / len(scores) if scores else -1.0

def ratio(ev, k, t='main'): # student R@1 / its teacher's (default: the teacher row), or None
    t = teacher if t == 'main' else t
    return mean(ev, k) / max(t['metrics'][k], 1e-9) if ev and t else None

def ratio_cell(ev, k, t='main'):
    r = ratio(ev, k, t)
    return '—' if r is None else f'{r:.2f}'

# Table 1, the seed's rows; "TinySigLIP" is the distilled run with the best val score, chosen on
# val (never on test); on a tie, or without meta.json, the first in this order
DISTILLED = ['tinysiglip', 'a5', 'a3', 'a4', 'a7', 'a2', 'a6']
tiny = max([n for n in DISTILLED if seeds(n)] or ['a5'], key=lambda n: val_score(seeds(n)))
t_name = short(teacher.get('teacher', 'teacher')) if teacher else 'not evaluated'
lines += ['', '## Table 1: teacher vs students', '',
          "Params: the teacher's image tower / total; "
          "a student's total (without the token table). TinySigLIP: the distilled run "
          f"({', '.join(DISTILLED)}) with the best val R@1, chosen on val. "
          "Ratio: student R@1 / the teacher's (I→T / T→I). "
          f"Seeds: {seed_counts(['a1', tiny])}.", '']
# zero-shot transfer sets: the teacher's eval.json of each; a student's row is its
# evals['<dataset>/<split>'], scored on the same cache (fingerprint)
transfers = []
for path in filter(None, transfer_evals.split(',')):
    t = read(path, teacher_notes)
    why = t and (refused(t, path, reference=None)
                 or ('dataset' not in t and f"no dataset (older eval.py): {path}"))
    if why:
        teacher_notes.append(why)
    elif t:
        transfers.append((f"{t['dataset']}/{t['split']}", t))
def transfer(evals, key, t): # each seed's row of one transfer set: same cache, same checkpoint
    rows = [((e.get('evals') or {}).get(key), e.get('checkpoint')) for e in evals]
    return [r for r, ckpt in rows if r and r.get('checkpoint') == ckpt
            and not refused(r, key, reference=t)]
table1 = [(f'Teacher ({t_name})', [teacher] if teacher else []),
          ('Student (No KD)', seeds('a1')),
          (f'Student (TinySigLIP, run {tiny})', seeds(tiny))]
has_imagenet = any(zeroshot_stat(ev) != '—' for _, ev in table1)
extra = [f"{key.split('/')[0]} {d} R@1" for key, _ in transfers for d in ('I→T', 'T→I')]
lines += header('Model', 'Params', 'I→T R@1', 'R@5', 'R@10', 'T→I R@1', 'R@5', 'R@10', *extra,
                *(['ImageNet-1k ZS top-1'] if has_imagenet else []), 'Ratio', 'Speed vs teacher')
for label, evals in table1:
    first = evals[0] if evals else None
    is_teacher = label.startswith('Teacher')
    note = f"  ({'; '.join(teacher_notes)})" if is_teacher and teacher_notes else ''
    cells = [stat([t] if is_teacher else transfer(evals, key, t), k)
             for key, t in transfers for k in R1]
    cells += [zeroshot_stat(evals)] if has_imagenet else []
    ratios = '—' if is_teacher or not evals else ' / '.join(ratio_cell(evals, k) for k in R1)
    lines.append(row(label, params(first), *[stat(evals, k) for k in KEYS], *cells, ratios,
                     speed(first)) + note)

# Table 2 as the seed writes it: the full method, then one term removed at a time
SEED_ABLATION = [('Full Method', 'a5'), ('w/o Feature Loss', 'a4'), ('w/o Affinity Loss', 'a3'),
                 ('w/o Contrastive', 'a7')]
full = seeds('a5')
# [ΔI→T, ΔT→I] in R@1 points vs the full method: the mean over the seeds both runs have, as in
# Table 2 (a5 may have more seeds than the others: TEXT=1 adds its seed 2)
def delta(ev):
    if not ev or not full:
        return ['—', '—']
    pairs = [paired_deltas(ev, full, k) for k in R1]
    return [f"{sum(d) / len(d):+.1f}" if d else '—' for d in pairs]
lines += ['', '## Table 2: ablation (delta vs the full method)', '',
          'Delta vs Full: R@1 points, mean ± half-range over the seeds both runs have (± the '
          "delta's 95 % interval: the two runs' bootstrap half-widths combined). Resolved: every "
          "seed's delta has one sign and the mean clears the interval. Rows: " +
          ', '.join(f'{label} = {n}' for label, n in SEED_ABLATION) + '. A row\'s R@1 is over '
          f"all its seeds ({seed_counts([n for _, n in SEED_ABLATION])}).", '']
lines += header('Configuration', 'I→T R@1', 'T→I R@1', 'Δ I→T', 'Δ T→I',
                'Resolved I→T / T→I')
findings = [] # (what, cells, resolved per direction): the report's opening list
for label, n in SEED_ABLATION:
    ev = seeds(n)
    if n == 'a5' or not ev or not full:
        lines.append(row(label, *[stat(ev, k) for k in R1], '—', '—', '—', run=n))
        continue
    (d_i2t, r_i2t), (d_t2i, r_t2i) = [compare(ev, full, k) for k in R1]
    lines.append(row(label, *[stat(ev, k) for k in R1], d_i2t, d_t2i, f"{r_i2t} / {r_t2i}", run=n))
    findings.append((f"{label} ({n}) vs Full Method (a5)", (d_i2t, d_t2i), (r_i2t, r_t2i)))

# the TinySigLIP recipe, part by part (demo.sh PARTS=1):
# the same pairs and losses as a7 (feature + affinity), plus
PARTS = [('pairs only (a7, its own steps)', 'a7'),
         ("pairs only, the recipe's steps", 'parts-none'),
         ('+ K views', 'parts-views'),
         ('+ unpaired images', 'parts-images'),
         ('+ unpaired texts', 'parts-texts'),
         ('+ all three (the recipe)', 'tinysiglip')]
if any(seeds(n) for _, n in PARTS[1:]):
    lines += ['', '## Table R: what each part of the recipe adds', '',
              'Same student, same paired images and paired losses (feature + affinity) as a7; '
              'each part alone, then all three '
              '(+ the cross-modal term on unpaired images x captions); '
              'ratio = student R@1 / teacher R@1.', '']
    lines += header('data', 'run', 'seeds', 'I→T R@1', 'T→I R@1', 'I→T ratio', 'T→I ratio')
    for label, n in PARTS:
        ev = seeds(n)
        lines.append(row(label, n, str(len(ev)), *[stat(ev, k) for k in R1],
                         *[ratio_cell(ev, k) for k in R1], run=n))

LOSSES = {'a1': 'contrastive only (no KD)', 'a2': 'feature', 'a3': 'feature + contrastive',
          'a4': 'affinity + contrastive', 'a5': 'feature + affinity + contrastive',
          'a6': 'a5 + LocCa + SILC/TIPS', 'a7': 'feature + affinity'}
lines += ['', '## Table 2b: every loss combination (delta vs the full method a5)', '',
          'Δ: the mean over the seeds both runs have, as in Table 2.', '']
lines += header('run', 'losses', 'I→T R@1', 'T→I R@1', 'Δ I→T', 'Δ T→I')
for n, what in LOSSES.items():
    ev = seeds(n)
    lines.append(row(n, what, *[stat(ev, k) for k in R1], *delta(ev), run=n))

# Tables B and C: each run against its own teacher row, the test eval.json beside its val cache
# (meta.json's teacher_eval); the seed's B4 (L x Small, the full method) is A5's run: a5 where
# no b4 ran
def own_teacher(n): # -> (its teacher row's path, name): seeds()'s reference for run n
    path = (read(os.path.join(runs_dir, n, 'meta.json')) or {}).get('teacher_eval', '')
    return path, f'its teacher row ({path})'

def own_teacher_eval(n): # run n's teacher row (its eval.json), or None
    return read(own_teacher(n)[0])

def b_run(n):
    return 'a5' if n == 'b4' and not os.path.isdir(os.path.join(runs_dir, 'b4')) else n

def arch_table(title, names, note=''):
    rows = ['', f'## {title}', '',
            "Teacher R@1: the teacher's row of the run's own test cache; ratio: student R@1 / "
            "that teacher's." + note, '']
    rows += header('run', 'teacher', 'teacher R@1 I→T / T→I', 'student', 'I→T R@1', 'T→I R@1',
                   'params', 'I→T ratio', 'T→I ratio')
    for n in map(b_run, names):
        ev, meta = seeds(n, *own_teacher(n)), read(os.path.join(runs_dir, n, 'meta.json')) or {}
        if not ev:
            rows.append(row(n, *['—'] * 8, run=n, ref=own_teacher(n)))
            continue
        t = own_teacher_eval(n)
        t_r1 = ' / '.join(f"{t['metrics'][k]:.1f}" for k in R1) if t else '—'
        ratios = [ratio_cell(ev, k, t) for k in R1]
        student = meta.get('config', {}).get('image_model', '—')
        rows.append(row(n, short(meta.get('teacher', '—')), t_r1, student,
                        *[stat(ev, k) for k in R1], params(ev[0]), *ratios))
    return rows

def own_compare(a, b, what):
    """A finding: run a - run b in R@1 points on the same test images, each scored against its
    own teacher row; None unless both ran."""
    ev_a, ev_b = seeds(a, *own_teacher(a)), seeds(b, *own_teacher(b))
    if not ev_a or not ev_b:
        return None
    (d1, r1), (d2, r2) = [compare(ev_a, ev_b, k) for k in R1]
    return (f"{what}: {a} − {b}", (d1, d2), (r1, r2))

# zero-shot classification (eval.py --zeroshot): the teacher's row and every run that has one
zs_rows = [('teacher', teacher)]
for p in sorted(glob.glob(os.path.join(runs_dir, '*', 'eval.json'))):
    zs_rows.append((os.path.basename(os.path.dirname(p)), read(p)))
zs_rows = [(n, e['zeroshot']) for n, e in zs_rows if e and 'zeroshot' in e]
# a row of weights the run has since replaced (retrained after its zero-shot eval) is marked
for i, (n, z) in enumerate(zs_rows):
    model = os.path.join(runs_dir, n, 'model.safetensors')
    if n != 'teacher' and 'model_sha256' in z and os.path.isfile(model) and (
            z['model_sha256'] != sha256(model)):
        zs_rows[i] = (f"{n} (stale: retrained since; rerun eval.py --zeroshot)", z)
if zs_rows:
    z = zs_rows[0][1]
    prompts = ' / '.join(repr(t) for t in z['templates'])
    if len(z['templates']) > 8: # CLIP_benchmark's 80 for ImageNet: their count and first one
        prompts = f"{len(z['templates'])} templates ({z['templates'][0]!r}, ...)"
    lines += ['', '## Zero-shot classification', '',
              f"`{os.path.basename(z['source'].rstrip('/'))}`: {z['n_images']} images, "
              f"{z['n_classes']} classes, prompts {prompts} (a class = the mean of its normalised "
              f"prompt embeddings, CLIP_benchmark). Accuracy in %.",
              '', '| run | top-1 | top-5 |', '|---|---|---|']
    # stat() reads metrics and intervals: a zero-shot dict holds top1/top5 at its top level
    cells = lambda z: [stat([dict(z, metrics=z)], k) for k in ('top1', 'top5')]
    lines += ['| ' + ' | '.join([n, *cells(z)]) + ' |' for n, z in zs_rows]

GRID_RUNS = ['b1', 'b2', 'b3', 'b4', 'b5']
lines += arch_table('Table B: teacher × student (full method)', GRID_RUNS,
                    " B4 is a5's run where no b4 ran (the seed's B4 is A5).")

# the seed's 2×3 grid of the same runs: B1 B×Tiny, B2 L×Tiny, B3 B×Small,
# B4 L×Small (core target), B5 So400m×Small; So400m×Tiny is not in the plan
GRID = [('SigLIP 2 B', 'b1', 'b3'), ('SigLIP 2 L', 'b2', 'b4'), ('SigLIP 2 So400m', None, 'b5')]
def cell(n):
    n = b_run(n) if n else None
    ev = seeds(n, *own_teacher(n)) if n else []
    if not ev:
        return '—'
    ratios = '/'.join(ratio_cell(ev, k, own_teacher_eval(n)) for k in R1)
    return f"{stat(ev, 'i2t_r1')} / {stat(ev, 't2i_r1')} ({n}; {ratios}×)"
lines += ['', "### Table B as the seed's grid (I→T / T→I R@1; run; ratios to its teacher)", '']
lines += header('teacher \\ student', 'ViT-Tiny', 'ViT-Small')
lines += [row(t, cell(tiny_run), cell(small_run)) for t, tiny_run, small_run in GRID]
# the seed's B questions, each a difference of two grid cells
B_QUESTIONS = [('b2', 'b1', 'A stronger teacher (L vs B), the same Tiny student'),
               ('b4', 'b3', 'A stronger teacher (L vs B), the same Small student'),
               ('b5', 'b4', 'A stronger teacher (So400m vs L), the same Small student'),
               ('b3', 'b1', 'A bigger student (Small vs Tiny), teacher B'),
               ('b4', 'b2', 'A bigger student (Small vs Tiny), teacher L')]
findings += filter(None, [own_compare(b_run(a), b_run(b), what) for a, b, what in B_QUESTIONS])
lines += arch_table('Table C: student architectures (full method)', ['c1', 'c2', 'a5'],
                    ' a5: the ViT student of the same teacher.')
findings += filter(None, [own_compare('c1', 'a5', 'A ResNet student vs the ViT (Table C)'),
                          own_compare('c2', 'a5', 'A MobileNet student vs the ViT (Table C)')])

# the recipe against A5 by the size of the paired split (demo.sh FULL=1: the first N pairs)
def pairs_of(n): # the paired images run n trained on: its train cache's manifest, or None
    meta = read(os.path.join(runs_dir, n, 'meta.json')) or {}
    man = read(os.path.join(meta.get('train_cache', ''), 'manifest.json')) or {}
    return man.get('counts', {}).get('images')
sweep_dirs = [os.path.basename(d) for d in glob.glob(os.path.join(runs_dir, '*-p*'))]
cut = sorted({int(d.split('-p')[1]) for d in sweep_dirs
              if re.fullmatch(r'(a5|tinysiglip)-p\d+', d)}) # seed 0's dirs name the sizes
SWEEP = [(n, f'a5-p{n}', f'tinysiglip-p{n}') for n in cut]
SWEEP += [(pairs_of('a5') or pairs_of('tinysiglip') or 'all', 'a5', 'tinysiglip')]
if any(seeds(r) for _, _, r in SWEEP):
    lines += ['', '## Table R2: the recipe against A5 by paired-split size', '',
              'The same student and steps; the recipe adds K views, unpaired web images and '
              'captions (its losses: feature + affinity). Δ: recipe − A5 in R@1 points per seed '
              'pair (± the combined 95 % interval). Pairs: the first N images of the paired '
              'split (demo.sh FULL=1), its whole in the last row.', '']
    lines += header('pairs', 'A5 I→T / T→I R@1', 'recipe I→T / T→I R@1', 'Δ I→T', 'Δ T→I',
                    'Resolved I→T / T→I')
    for n, a5_run, recipe_run in SWEEP:
        ev_a5, ev_recipe = seeds(a5_run), seeds(recipe_run)
        both = [('—', '—')] * 2
        if ev_a5 and ev_recipe:
            both = [compare(ev_recipe, ev_a5, k) for k in R1]
        missing = ''.join(gap(r) for r in (a5_run, recipe_run) if not seeds(r))
        lines.append(row(f'{n:,}' if isinstance(n, int) else n,
                         ' / '.join(stat(ev_a5, k) for k in R1),
                         ' / '.join(stat(ev_recipe, k) for k in R1),
                         both[0][0], both[1][0], f"{both[0][1]} / {both[1][1]}") + missing)
        if ev_a5 and ev_recipe:
            findings.append((f"The recipe vs A5 on {n} pairs: {recipe_run} − {a5_run}",
                             (both[0][0], both[1][0]), (both[0][1], both[1][1])))

# the student's text tower start (demo.sh TEXT=1): from scratch, inherited from the teacher's
# text tower (TinyCLIP's manual inheritance) or a pretrained encoder with its own tokenizer (the
# world's stand-in for MiniLM: a small BERT pretrained by MLM on the web captions), each for
# No KD (a1) and the full method (a5); 3 seeds each
TEXT_STARTS = [('from scratch', ''), ('inherited from the teacher', '-inherit'),
               ('MLM-pretrained BERT (own tokenizer)', '-mlm')]
TEXT_METHODS = [('No KD', 'a1'), ('Full Method', 'a5')]
def smallest_resolvable(evals, base, k):
    """The smallest |Δ| in metric k this comparison could call resolved, from its own spreads:
    the mean must clear the combined interval, and each seed's delta must keep its sign, which a
    mean smaller than the deltas' half-range does not guarantee."""
    deltas = paired_deltas(evals, base, k)
    h1, h2 = half_width(evals, k), half_width(base, k)
    if len(deltas) < 2 or h1 is None or h2 is None:
        return None
    return max(math.hypot(h1, h2), (max(deltas) - min(deltas)) / 2)
if any(seeds(m + sfx) for _, m in TEXT_METHODS for _, sfx in TEXT_STARTS[1:]):
    lines += ['', "## The student's text tower: where it starts", '',
              'The same student, data and steps; only the text tower\'s start differs. '
              'Δ: start − from scratch in R@1 points per seed pair (± the combined 95 % '
              'interval). Smallest resolvable: the larger of that interval and the deltas\' '
              'half-range over seeds, per direction.', '']
    lines += header('method', 'text tower start', 'run', 'seeds', 'I→T R@1', 'T→I R@1',
                    'Δ I→T', 'Δ T→I', 'Resolved I→T / T→I', 'smallest resolvable')
    for method, m in TEXT_METHODS:
        scratch = seeds(m)
        for start, sfx in TEXT_STARTS:
            n = m + sfx
            ev = seeds(n)
            both = [('—', '—')] * 2
            smallest = '—'
            if sfx and ev and scratch:
                both = [compare(ev, scratch, k) for k in R1]
                limits = [smallest_resolvable(ev, scratch, k) for k in R1]
                smallest = ' / '.join('—' if x is None else f'{x:.1f}' for x in limits)
                findings.append((f"Text tower {start} vs from scratch, {method}: {n} − {m}",
                                 (both[0][0], both[1][0]), (both[0][1], both[1][1])))
            lines.append(row(method, start, n, str(len(ev)), *[stat(ev, k) for k in R1],
                             both[0][0], both[1][0], f"{both[0][1]} / {both[1][1]}",
                             smallest, run=n))

# what each SigLIP 2 term adds (demo.sh TERMS=1): a small HF Siglip2Model trained with the
# sigmoid loss alone (terms-base), then on from it at equal steps with each objective
TERMS = [('base: sigmoid only, before the arms', 'terms-base'),
         ('sigmoid only', 'terms-sigmoid'),
         ('+ LocCa', 'terms-locca'),
         ('+ SILC/TIPS', 'terms-silc-tips'),
         ('complete: + LocCa + SILC/TIPS', 'terms-complete')]
def part_stat(evals, part, k): # a score eval.py nests under `part` (locca, dense_probe)
    parts = [e[part] for e in evals if part in e]
    return fmt([p[k] for p in parts], intervals=[p.get(f'{k}_interval') for p in parts])
TERMS_REF = (os.path.join(runs_dir, 'terms-base', 'eval.json'), 'terms-base')
if any(seeds(n, *TERMS_REF) for _, n in TERMS):
    lines += ['', '## What each SigLIP 2 term adds (a small Siglip2Model)', '',
              "Each arm trains on from the base at equal steps. ARef: the LocCa decoder's "
              'box from a region caption, IoU ≥ 0.5 (runs with a decoder). Dense probe: a '
              'linear probe on the frozen patch tokens, fitted on val, names the object '
              "under each test patch (accuracy on the patches that hold one).", '']
    lines += header('objective', 'run', 'seeds', 'I→T R@1', 'T→I R@1', 'ARef acc@0.5',
                    'dense probe')
    for label, n in TERMS:
        ev = seeds(n, *TERMS_REF)
        lines.append(row(label, n, str(len(ev)), *[stat(ev, k) for k in R1],
                         part_stat(ev, 'locca', 'aref_acc_iou50'),
                         part_stat(ev, 'dense_probe', 'object_patch_acc'),
                         run=n, ref=TERMS_REF))

logs = {} # log.jsonl -> rows; a corrupt line is reported, not a crash
for log in sorted(glob.glob(os.path.join(runs_dir, '*', 'log.jsonl'))):
    try:
        logs[log] = [json.loads(l) for l in open(log)]
    except (OSError, ValueError) as e:
        lines += ['', f"(corrupt: {log} ({type(e).__name__}: {e}); its curves are not plotted)"]

# convergence: each run the tables show, on its val curve (log.jsonl) over its last 20 % of steps

def convergence(run_dir):
    """-> (iter at 80 % of the run, val R@1 there, at the end, the val set's 95 % half-width,
    verdict) or None. val R@1: mean of I→T and T→I; the half-width: binomial over the val
    images at the end value, the change that val noise alone can make."""
    val = [(r['iter'], (r['val/i2t_r1'] + r['val/t2i_r1']) / 2)
           for r in logs.get(os.path.join(run_dir, 'log.jsonl'), []) if 'val/t2i_r1' in r]
    if len(val) < 2:
        return None
    last, end = val[-1]
    at80, v80 = [(i, v) for i, v in val if i <= 0.8 * last][-1]
    n_val = (read(os.path.join(run_dir, 'meta.json')) or {}).get('config', {}).get('val_images')
    if not n_val:
        return None
    half = 196 * math.sqrt(max(end / 100 * (1 - end / 100), 1e-4) / n_val)
    if at80 < 0.7 * last:
        verdict = 'not checked: no val point in the last 30 %'
    elif abs(end - v80) <= half:
        verdict = 'flat'
    else:
        verdict = 'rising' if end > v80 else 'falling'
    return at80, v80, end, half, verdict
CHECKED = ['a1', tiny] + [n for _, n in SEED_ABLATION] + [b_run(n) for n in GRID_RUNS]
CHECKED += ['c1', 'c2'] + [n for _, a5_run, recipe_run in SWEEP for n in (a5_run, recipe_run)]
CHECKED += [m + sfx for _, m in TEXT_METHODS for _, sfx in TEXT_STARTS]
curves = [(os.path.basename(e['dir']), convergence(e['dir']))
          for n in dict.fromkeys(CHECKED) for e in seeds(n, *own_teacher(n))]
curves = [(n, c) for n, c in curves if c]
if curves:
    lines += ['', '## Convergence: val R@1 over the last 20 % of steps', '',
              'val R@1: mean of I→T and T→I on the val split (log.jsonl). Flat: it moved less '
              "than the val set's 95 % half-width (binomial over its images) between 80 % of "
              'the run and its end.', '']
    lines += header('run', 'val R@1 at iter', 'there', 'at the end', 'change', '± val 95 %',
                    'verdict')
    for n, (at80, v80, end, half, verdict) in curves:
        lines.append(row(n, str(at80), f'{v80:.1f}', f'{end:.1f}', f'{end - v80:+.1f}',
                         f'{half:.1f}', verdict))

# the findings, each with its numbers and whether it is resolved
# the seed's Table 1: No KD at 45.0 vs the teacher's 70.2 (0.64x); README, "The demo world"
CALIBRATION = (0.5, 0.75)
opening = []
no_kd, best = seeds('a1'), seeds(tiny)
if no_kd and teacher:
    r = [ratio(no_kd, k) for k in R1]
    inside = all(CALIBRATION[0] <= x <= CALIBRATION[1] for x in r)
    opening.append(f"- Calibration: No KD (a1) reaches {r[0]:.2f}× / {r[1]:.2f}× of the "
                   f"teacher's I→T / T→I R@1: {'inside' if inside else 'OUTSIDE'} the range "
                   f"{CALIBRATION[0]}–{CALIBRATION[1]}× (the seed's No KD: 0.64×).")
if no_kd and best:
    (d1, r1), (d2, r2) = [compare(best, no_kd, k) for k in R1]
    findings.insert(0, (f"Distillation: {tiny} (the best distilled on val) vs No KD (a1)",
                        (d1, d2), (r1, r2)))
for what, (d1, d2), (r1, r2) in findings:
    opening.append(f"- {what}: Δ I→T {d1}, T→I {d2} R@1 points; resolved: {r1} / {r2}.")
if curves:
    moving = [f'{n} ({c[4]})' for n, c in curves if c[4] != 'flat']
    opening.append(f"- Convergence: {len(curves) - len(moving)} of {len(curves)} runs flat on val "
                   f"over their last 20 % of steps" + (f"; not flat: {', '.join(moving)}."
                                                       if moving else '.'))
if opening:
    lines[findings_at:findings_at] = ['', '## Findings', '', *opening]

# -----------------------------------------------------------------------------
# plots (optional dependency)
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    lines += ['', '(matplotlib not installed: plots skipped)']
if plt:
    for log, rows in logs.items():
        terms = sorted({k for r in rows for k in r if k.startswith('loss')})
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in terms:
            pts = [(r['iter'], r[k]) for r in rows if k in r]
            ax.plot(*zip(*pts), label=k)
        ax.set_xlabel('iteration')
        ax.set_ylabel('loss')
        ax.set_yscale('log')
        ax.legend(fontsize=7)
        ax.set_title(os.path.basename(os.path.dirname(log)))
        fig.tight_layout()
        fig.savefig(os.path.join(os.path.dirname(log), 'curves.png'), dpi=80)
        plt.close(fig)
    names = [n for n in LOSSES if seeds(n)]
    if names:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for j, k in enumerate(('i2t_r1', 't2i_r1')):
            ax.bar([i + 0.4 * j for i in range(len(names))], [mean(seeds(n), k) for n in names],
                   width=0.4, label=k)
        ax.set_xticks([i + 0.2 for i in range(len(names))], names)
        ax.set_ylabel('R@1 (%)')
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(os.path.dirname(os.path.abspath(out)), 'ablation.png'), dpi=80)
        plt.close(fig)
text = '\n'.join(lines) + '\n'
print(text)
# as cache.atomic_write (this script stays free of torch): temp name, closed (a full disk
# raises at close), fsynced, renamed; a failure exits non-zero and the last report.md stays
try:
    with open(out + '.tmp', 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(out + '.tmp', out)
except OSError as e:
    raise SystemExit(f"report.py: cannot write --out={out!r} ({e.strerror or e})")
