"""
Paper-style tables from the JSON the other scripts wrote (read-only; no torch): eval.json, meta.json, log.jsonl.

    python report.py --runs_dir=out --teacher_eval=cache/coco-L/test/eval.json --out=report.md
    python report.py --runs_dir=out/shapes --teacher_eval=cache/shapes/test/eval.json --out=out/shapes/report.md

Table 1: teacher / no-KD student (a1) / best distilled student; Table 2: loss ablation a1-a6 vs the full
method (a5); Table B: teacher x student (b1-b5); Table C: student architectures (c1, c2). Runs named
<name>-s<seed> are extra seeds, shown as mean ± half-range. A missing run is a row of '—', never a crash; so is an
eval.json that is corrupt, non-finite, scored on another cache than the teacher row, or stale (it scored another
model.safetensors than the run holds now): the row names the file and why.
With matplotlib: <run>/curves.png (every loss term vs iteration) and ablation.png next to the report.
"""
import os, json, glob, math, hashlib, functools

runs_dir = 'out'
teacher_eval = 'cache/coco-L/test/eval.json'
out = 'report.md'
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
NOTES = {} # run name -> why some of its eval.json were refused (printed in its rows)
def read(path, notes=None): # -> the JSON, or None when missing; a corrupt file is noted, not a crash
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

def refused(e, path, run_dir=None): # -> why this eval.json must not be shown, or None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in e.get('metrics', {}).values()):
        return f"non-finite metrics: {path} (a diverged model)"
    if teacher and e.get('fingerprint') != teacher.get('fingerprint'):
        return f"scored on another cache than the teacher row (split {e.get('split')}): {path}"
    model = os.path.join(run_dir or '', 'model.safetensors')
    if run_dir and os.path.isfile(model) and (e.get('checkpoint') or {}).get('model_sha256') != sha256(model):
        return f"stale: {path} scored another checkpoint than {model}; rerun eval.py"
    return None

@functools.cache
def seeds(name): # valid eval.json of a run and its extra seeds; refusals go to NOTES[name]
    dirs = [os.path.join(runs_dir, name)] + sorted(glob.glob(os.path.join(runs_dir, f'{name}-s*')))
    out, notes = [], NOTES.setdefault(name, [])
    for d in dirs:
        path = os.path.join(d, 'eval.json')
        e = read(path, notes)
        why = refused(e, path, d) if e else None
        notes += [why] if why else []
        out += [e] if e and not why else []
    return out

def gap(name): # the note of a row without numbers: why, or that the run is missing
    return f"  ({'; '.join(NOTES[name])})" if NOTES.get(name) else f"  (missing: {os.path.join(runs_dir, name)})"

def fmt(vals, digits=1): # mean ± half-range over seeds
    if not vals: return '—'
    m = sum(vals) / len(vals)
    return f'{m:.{digits}f}' + (f' ± {(max(vals) - min(vals)) / 2:.{digits}f}' if len(vals) > 1 else '')

def mean(evals, k):
    return sum(e['metrics'][k] for e in evals) / len(evals) if evals else None

def params(e):
    p = (e or {}).get('params')
    return f"{p['total'] / 1e6:.2f}M ({p['without_token_table'] / 1e6:.2f}M)" if p else '—'

KEYS = ['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10']
teacher_notes = []
teacher = read(teacher_eval, teacher_notes)
man = read(os.path.join(os.path.dirname(teacher_eval), 'manifest.json')) # the cache the teacher row was scored on
if teacher and refused(teacher, teacher_eval):
    teacher_notes.append(refused(teacher, teacher_eval))
    teacher = None
elif teacher and man and man.get('fingerprint') != teacher.get('fingerprint'):
    teacher_notes.append(f"stale: {teacher_eval} scored an older version of that cache; rerun eval.py --cache=...")
    teacher = None
lines = [f"# TinySigLIP report ({runs_dir})", '']
if teacher:
    lines.append(f"Test split `{teacher['split']}`: {teacher['n_images']} images, {teacher['n_captions']} captions "
                 f"(CLIP_benchmark protocol: every caption kept). R@k in %. Params: total (without the token table).")
lines += ['', '## Table 1: teacher vs students', '', '| model | I→T R@1 | R@5 | R@10 | T→I R@1 | R@5 | R@10 | params |', '|---|---|---|---|---|---|---|---|']
distilled = [n for n in ('a2', 'a3', 'a4', 'a5', 'a6') if seeds(n)]
best = max(distilled, key=lambda n: mean(seeds(n), 'i2t_r1') + mean(seeds(n), 't2i_r1'), default=None)
for label, evals in [('teacher', [teacher] if teacher else []), ('student, no KD (a1)', seeds('a1')),
                     (f'student, best distilled ({best})' if best else 'student, best distilled', seeds(best) if best else [])]:
    cells = [fmt([e['metrics'][k] for e in evals]) for k in KEYS]
    lines.append(f"| {label} | {' | '.join(cells)} | {params(evals[0]) if evals and label != 'teacher' else '—'} |"
                 + (f"  ({'; '.join(teacher_notes)})" if label == 'teacher' and teacher_notes else ''))

lines += ['', '## Table 2: loss ablation (delta vs the full method a5)', '',
          '| run | losses | I→T R@1 | T→I R@1 | Δ I→T | Δ T→I |', '|---|---|---|---|---|---|']
LOSSES = {'a1': 'contrastive only (no KD)', 'a2': 'feature', 'a3': 'feature + contrastive', 'a4': 'affinity + contrastive',
          'a5': 'feature + affinity + contrastive', 'a6': 'a5 + LocCa + SILC/TIPS'}
full = seeds('a5')
for n, what in LOSSES.items():
    ev = seeds(n)
    if not ev:
        lines.append(f"| {n} | {what} | — | — | — | — |{gap(n)}")
        continue
    d = [f"{mean(ev, k) - mean(full, k):+.1f}" if full else '—' for k in ('i2t_r1', 't2i_r1')]
    lines.append(f"| {n} | {what} | {fmt([e['metrics']['i2t_r1'] for e in ev])} | {fmt([e['metrics']['t2i_r1'] for e in ev])} | {d[0]} | {d[1]} |"
                 + (gap(n) if NOTES.get(n) else '')) # some seeds refused

def arch_table(title, names): # teacher x student rows; the teacher row is found through the run's meta.json
    rows = ['', f'## {title}', '', '| run | teacher | student | I→T R@1 | T→I R@1 | params | student/teacher R@1 |', '|---|---|---|---|---|---|---|']
    for n in names:
        ev, meta = seeds(n), read(os.path.join(runs_dir, n, 'meta.json')) or {}
        t = read(meta.get('teacher_eval', '')) if meta else None
        student = meta.get('config', {}).get('image_model', '—')
        if not ev:
            rows.append(f"| {n} | — | — | — | — | — | — |{gap(n)}")
            continue
        ratio = '—' if not t else f"{(mean(ev, 'i2t_r1') + mean(ev, 't2i_r1')) / max(t['metrics']['i2t_r1'] + t['metrics']['t2i_r1'], 1e-9):.2f}"
        rows.append(f"| {n} | {meta.get('teacher', '—')} | {student} | {fmt([e['metrics']['i2t_r1'] for e in ev])} | "
                    f"{fmt([e['metrics']['t2i_r1'] for e in ev])} | {params(ev[0])} | {ratio} |")
    return rows
lines += arch_table('Table B: teacher × student (full method)', ['b1', 'b2', 'b3', 'b4', 'b5'])
lines += arch_table('Table C: student architectures (full method)', ['c1', 'c2'])

# -----------------------------------------------------------------------------
# plots (optional dependency)
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    lines += ['', '(matplotlib not installed: plots skipped)']
logs = {} # log.jsonl -> rows; a corrupt line is reported, not a crash
for log in sorted(glob.glob(os.path.join(runs_dir, '*', 'log.jsonl'))):
    try:
        logs[log] = [json.loads(l) for l in open(log)]
    except (OSError, ValueError) as e:
        lines += ['', f"(corrupt: {log} ({type(e).__name__}: {e}); its curves are not plotted)"]
if plt:
    for log, rows in logs.items():
        terms = sorted({k for r in rows for k in r if k.startswith('loss')})
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in terms:
            pts = [(r['iter'], r[k]) for r in rows if k in r]
            ax.plot(*zip(*pts), label=k)
        ax.set_xlabel('iteration'); ax.set_ylabel('loss'); ax.set_yscale('log'); ax.legend(fontsize=7)
        ax.set_title(os.path.basename(os.path.dirname(log)))
        fig.tight_layout(); fig.savefig(os.path.join(os.path.dirname(log), 'curves.png'), dpi=80); plt.close(fig)
    names = [n for n in LOSSES if seeds(n)]
    if names:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for j, k in enumerate(('i2t_r1', 't2i_r1')):
            ax.bar([i + 0.4 * j for i in range(len(names))], [mean(seeds(n), k) for n in names], width=0.4, label=k)
        ax.set_xticks([i + 0.2 for i in range(len(names))], names); ax.set_ylabel('R@1 (%)'); ax.legend()
        fig.tight_layout(); fig.savefig(os.path.join(os.path.dirname(os.path.abspath(out)), 'ablation.png'), dpi=80); plt.close(fig)
text = '\n'.join(lines) + '\n'
print(text)
with open(out + '.tmp', 'w') as f:
    f.write(text)
os.replace(out + '.tmp', out)
