"""
Paper-style tables from the JSON the other scripts wrote (read-only; no torch): eval.json, meta.json, log.jsonl.

    python report.py --runs_dir=out --teacher_eval=cache/coco-L/test/eval.json --out=report.md
    python report.py --runs_dir=out/shapes --teacher_eval=cache/shapes/test/eval.json --out=out/shapes/report.md

Table 1: teacher / no-KD student (a1) / best distilled student; Table 2: loss ablation a1-a6 vs the full
method (a5); zero-shot top-1/top-5 of the teacher and every run that has it (eval.py --zeroshot); Table 1's
speed column is eval.py --speed's student/teacher ratio; Table B: teacher x student (b1-b5); Table C: student
architectures (c1, c2). Runs named <name>-s<seed> are extra seeds, shown as mean ± half-range. A missing run is a row of '—', never a crash.
With matplotlib: <run>/curves.png (every loss term vs iteration) and ablation.png next to the report.
"""
import os, json, glob

runs_dir = 'out'
teacher_eval = 'cache/coco-L/test/eval.json'
out = 'report.md'
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
def read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def seeds(name): # eval.json of a run and its extra seeds
    dirs = [os.path.join(runs_dir, name)] + sorted(glob.glob(os.path.join(runs_dir, f'{name}-s*')))
    return [e for e in (read(os.path.join(d, 'eval.json')) for d in dirs) if e]

def fmt(vals, digits=1): # mean ± half-range over seeds
    if not vals: return '—'
    m = sum(vals) / len(vals)
    return f'{m:.{digits}f}' + (f' ± {(max(vals) - min(vals)) / 2:.{digits}f}' if len(vals) > 1 else '')

def mean(evals, k):
    return sum(e['metrics'][k] for e in evals) / len(evals) if evals else None

def params(e):
    p = (e or {}).get('params')
    return f"{p['total'] / 1e6:.2f}M ({p['without_token_table'] / 1e6:.2f}M)" if p else '—'

def speed(e): # eval.py --speed: student / teacher throughput, same machine, one run
    s = (e or {}).get('speed')
    return f"{s['img_ratio']:.1f}× img, {s['txt_ratio']:.1f}× txt" if s else '—'

KEYS = ['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10']
teacher = read(teacher_eval)
lines = [f"# TinySigLIP report ({runs_dir})", '']
if teacher:
    lines.append(f"Test split `{teacher['split']}`: {teacher['n_images']} images, {teacher['n_captions']} captions "
                 f"(CLIP_benchmark protocol: every caption kept). R@k in %. Params: total (without the token table).")
lines += ['', '## Table 1: teacher vs students', '',
          '| model | I→T R@1 | R@5 | R@10 | T→I R@1 | R@5 | R@10 | params | speed vs teacher |',
          '|---|---|---|---|---|---|---|---|---|']
distilled = [n for n in ('a2', 'a3', 'a4', 'a5', 'a6') if seeds(n)]
best = max(distilled, key=lambda n: mean(seeds(n), 'i2t_r1') + mean(seeds(n), 't2i_r1'), default=None)
for label, evals in [('teacher', [teacher] if teacher else []), ('student, no KD (a1)', seeds('a1')),
                     (f'student, best distilled ({best})' if best else 'student, best distilled', seeds(best) if best else [])]:
    cells = [fmt([e['metrics'][k] for e in evals]) for k in KEYS]
    p = params(evals[0]) if evals and label != 'teacher' else '—'
    lines.append(f"| {label} | {' | '.join(cells)} | {p} | {speed(evals[0]) if evals else '—'} |")

lines += ['', '## Table 2: loss ablation (delta vs the full method a5)', '',
          '| run | losses | I→T R@1 | T→I R@1 | Δ I→T | Δ T→I |', '|---|---|---|---|---|---|']
LOSSES = {'a1': 'contrastive only (no KD)', 'a2': 'feature', 'a3': 'feature + contrastive', 'a4': 'affinity + contrastive',
          'a5': 'feature + affinity + contrastive', 'a6': 'a5 + LocCa + SILC/TIPS'}
full = seeds('a5')
for n, what in LOSSES.items():
    ev = seeds(n)
    if not ev:
        lines.append(f"| {n} | {what} | — | — | — | — |  (missing: {os.path.join(runs_dir, n)})")
        continue
    d = [f"{mean(ev, k) - mean(full, k):+.1f}" if full else '—' for k in ('i2t_r1', 't2i_r1')]
    lines.append(f"| {n} | {what} | {fmt([e['metrics']['i2t_r1'] for e in ev])} | {fmt([e['metrics']['t2i_r1'] for e in ev])} | {d[0]} | {d[1]} |")

def arch_table(title, names): # teacher x student rows; the teacher row is found through the run's meta.json
    rows = ['', f'## {title}', '', '| run | teacher | student | I→T R@1 | T→I R@1 | params | student/teacher R@1 |', '|---|---|---|---|---|---|---|']
    for n in names:
        ev, meta = seeds(n), read(os.path.join(runs_dir, n, 'meta.json')) or {}
        t = read(meta.get('teacher_eval', '')) if meta else None
        student = meta.get('config', {}).get('image_model', '—')
        if not ev:
            rows.append(f"| {n} | — | — | — | — | — | — |  (missing: {os.path.join(runs_dir, n)})")
            continue
        ratio = '—' if not t else f"{(mean(ev, 'i2t_r1') + mean(ev, 't2i_r1')) / max(t['metrics']['i2t_r1'] + t['metrics']['t2i_r1'], 1e-9):.2f}"
        rows.append(f"| {n} | {meta.get('teacher', '—')} | {student} | {fmt([e['metrics']['i2t_r1'] for e in ev])} | "
                    f"{fmt([e['metrics']['t2i_r1'] for e in ev])} | {params(ev[0])} | {ratio} |")
    return rows
# zero-shot classification (eval.py --zeroshot): the teacher's row and every run that has one
zs_rows = [('teacher', teacher)]
for p in sorted(glob.glob(os.path.join(runs_dir, '*', 'eval.json'))):
    zs_rows.append((os.path.basename(os.path.dirname(p)), read(p)))
zs_rows = [(n, e['zeroshot']) for n, e in zs_rows if e and 'zeroshot' in e]
if zs_rows:
    z = zs_rows[0][1]
    prompts = ' / '.join(repr(t) for t in z['templates'])
    lines += ['', '## Zero-shot classification', '',
              f"`{os.path.basename(z['source'].rstrip('/'))}`: {z['n_images']} images, "
              f"{z['n_classes']} classes, prompts {prompts} (a class = the mean of its normalised "
              f"prompt embeddings, CLIP_benchmark). Accuracy in %.",
              '', '| run | top-1 | top-5 |', '|---|---|---|']
    lines += [f"| {n} | {z['top1']:.1f} | {z['top5']:.1f} |" for n, z in zs_rows]

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
if plt:
    for log in sorted(glob.glob(os.path.join(runs_dir, '*', 'log.jsonl'))):
        rows = [json.loads(l) for l in open(log)]
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
