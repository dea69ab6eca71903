"""Every CUDA path of mimbench measured by one prepared script: ≤ 8 minutes on one GPU; `--tiny` runs the same code on CPU.

    python bench/gpu_check.py [--tiny] [--out bench/results] [--only mae,fast_attack,...] [--device cuda]
    make gpu-check            # the GPU run: writes bench/results/gpu-<device>.json and .md
    make gpu-check-tiny       # seconds on CPU, inside `make test`, so that the script cannot rot between GPU runs

Sections (each reuses the bench script that owns the measurement; a failing section is recorded, the others still run):
  mae          the trainer's bf16 MAE step at the `base` preset (224 px, patch 16): images/s, TFLOP/s and the fraction of
               the card's peak bf16 FLOP/s (bench/_common.py's table; 'unknown' otherwise), vs lightly's MAE
  fast_attack  PGD-10 `fast=True` (bf16 autocast + torch.compile) vs torchattacks' fp32 PGD-10: time and robust accuracy
               on the fine-tuned classifier (target ≥ 2× at robust accuracy within 1 pp), and speed on a tiny ViT
  autoattack   mimbench's `autoattack` (standard, reference step counts) end to end vs torchattacks' AutoAttack
  cka          cross-model CKA vs the forward passes alone, pytorch-cka and torch-cka (time, memory, max |Δ| vs float64)
  adpe         AdPE variants vs MAE+ with the same position embedding, bf16 (target ≤ 1.15×)
  de3          De³ inference and one EOT-20 PGD step through De³, vs plain classifier inference
  widgets      the three explorers driven on the device: a σ change (De³), a mask redraw (reconstruction), stepping
               through an attack and re-running it (attack explorer); slider-to-picture latency (target < 100 ms)
The JSON records device name, torch version, date and git commit; `rows` feed the README's speed table
(bench/speed_table.py). Exit status 1 when a section failed. Results are rewritten after every section (marked `partial`
until the last), so a run killed at a time limit keeps what it measured; `--merge FILE --only S` re-measures section S
and keeps the others of FILE, each marked with the run that measured it.

On a GPU machine without a package index (how the 2026-11-30 H200 run was made: 197 s for all sections), its own
torch, timm, matplotlib and safetensors serve; `make gpu-wheels` downloads the rest, pinned, into .whl/ (the Makefile
says how to install them there). $MIMBENCH_COMMIT names the commit, since no .git travels with the copy.
"""
import argparse, contextlib, json, statistics, sys, time, traceback
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, device_slug, have, load_bench, peak_bf16_tflops, peer_version, provenance, row, sync)

# Sizes of each section: the GPU run and the tiny CPU run execute the same code with these settings.
SIZES = {
    'gpu':  dict(mae=dict(preset='base', img=224, patch=16, batch=128, steps=10, rounds=2),
                 clf=dict(n_train=8000, epochs=2), attack_n=1000, attack_eps=2/255, vit_batch=256,
                 aa=dict(n=500, eps=2/255, steps=100, n_queries=5000),
                 cka=dict(n=2000, batch=100, preset='tiny'),
                 adpe=dict(preset='tiny', batch=256, steps=10, rounds=3),
                 de3=dict(preset='tiny', batch=256, eot=20, repeats=3),
                 widget_repeats=7),
    'tiny': dict(mae=dict(preset='micro', img=32, patch=8, batch=4, steps=1, rounds=1),
                 clf=dict(n_train=256, epochs=1), attack_n=32, attack_eps=2/255, vit_batch=4,
                 aa=dict(n=16, eps=2/255, steps=4, n_queries=20),
                 cka=dict(n=24, batch=12, preset='micro'),
                 adpe=dict(preset='micro', batch=4, steps=1, rounds=1),
                 de3=dict(preset='micro', batch=4, eot=2, repeats=1),
                 widget_repeats=2),
}


def sec_mae(ctx):
    "The trainer's bf16 MAE step at the base preset vs lightly; FLOP/s as a fraction of the card's peak."
    peer = have('lightly')                       # without the bench extras (plain `make test`): our step alone
    r = load_bench('mae_step').measure(**ctx.s['mae'], chans=3, device=ctx.dev, peer=peer)
    name = provenance(ctx.dev)['device_name']
    peak = peak_bf16_tflops(name) if ctx.dev.type == 'cuda' else None
    r['peak_bf16_tflops'] = peak if peak else 'unknown'
    r['fraction_of_peak'] = r['tflops'] / peak if peak else 'unknown'
    m = ctx.s['mae']
    r['rows'] = [row(f"MAE training step{', bf16' if ctx.dev.type == 'cuda' else ''} ({m['preset']} ViT, {m['img']}px, patch {m['patch']}, batch {m['batch']})",
                     peer_version('lightly') if peer else 'lightly (not installed)', r['img_per_s']['mimbench'],
                     r['img_per_s'].get('lightly'), 'img/s', r.get('ratio'), '≥ 1.0', r['ratio'] >= 1.0 if peer else None, f"{r['tflops']:.1f} TFLOP/s = " + (f"{r['fraction_of_peak']:.1%} of {peak:g} peak bf16" if peak else 'unknown fraction of peak'))]
    return r


def classifier(ctx):
    "The fine-tuned classifier of the attack sections (cached run directory per size)."
    if 'clf' not in ctx.cache:
        from mimbench.evaluate import quick_classifier
        ctx.cache['clf'] = quick_classifier(**ctx.s['clf'], out=ctx.clf_dir).to(ctx.dev).eval()
    return ctx.cache['clf']


def sec_fast_attack(ctx):
    "PGD-10 fast path (bf16 + torch.compile) vs torchattacks fp32 PGD-10: speed and robust accuracy."
    import torchattacks
    from mimbench.attacks import pgd, predict
    from mimbench.models import create_vit
    ba, dev = load_bench('attacks'), ctx.dev
    model = classifier(ctx)
    x, y = ba.aa_data(ctx.s['attack_n'], dev)
    eps = ctx.s['attack_eps']
    acc = lambda xa: (predict(model, xa) == y).float().mean().item()
    out = {'n': len(x), 'eps': eps}
    runs = {'ours fast': lambda: pgd(model, x, y, eps, alpha=eps / 4, steps=10, fast=True),
            'ours fp32': lambda: pgd(model, x, y, eps, alpha=eps / 4, steps=10),
            'torchattacks fp32': lambda: torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10)(x, y)}
    def measure(k, f):
        t0 = time.perf_counter(); xa = f(); sync(dev); first = time.perf_counter() - t0       # compiles, on the fast path
        t = min(_time(f, dev) for _ in range(3))
        out[k] = {'time': t, 'first_call': first, 'robust_acc': acc(xa)}
    for k, f in runs.items(): measure(k, f)
    if dev.type == 'cuda':        # experiment, not the library's path: the same fast path with CUDA graphs (launch-bound model)
        try:
            graphed = cuda_graphed(model)
            measure('ours fast + CUDA graphs', lambda: pgd(graphed, x, y, eps, alpha=eps / 4, steps=10, fast=True))
        except Exception: out['cuda_graphs_error'] = traceback.format_exc()
    ratio = out['torchattacks fp32']['time'] / out['ours fast']['time']
    gap = abs(out['ours fast']['robust_acc'] - out['torchattacks fp32']['robust_acc'])
    out['ratio'], out['robust_gap_pp'] = ratio, 100 * gap
    # the same on a random tiny ViT (3×32×32, patch 4): a model where the GPU does real work per forward
    torch.manual_seed(0)
    vit = create_vit('tiny', img_size=32, patch_size=4, in_chans=3).to(dev).eval()
    xv = torch.rand(ctx.s['vit_batch'], 3, 32, 32, device=dev)
    with torch.no_grad(): yv = vit(xv).argmax(1)
    tv = {'ours fast': _time(lambda: pgd(vit, xv, yv, 8 / 255, alpha=2 / 255, steps=10, fast=True), dev, warmup=1),
          'torchattacks fp32': _time(lambda: torchattacks.PGD(vit, eps=8 / 255, alpha=2 / 255, steps=10)(xv, yv), dev, warmup=1)}
    out['tiny_vit'] = {'batch': len(xv), **tv, 'ratio': tv['torchattacks fp32'] / tv['ours fast']}
    peer = peer_version('torchattacks') + ' (fp32)'
    if 'ours fast + CUDA graphs' in out:
        g = out['ours fast + CUDA graphs']
        out['cuda_graphs_ratio'] = out['torchattacks fp32']['time'] / g['time']
        extra = [row(f"Experiment: the fast path with CUDA graphs (torch.compile mode='reduce-overhead'; micro ViT, n={len(x)})", peer,
                     len(x) / g['time'], len(x) / out['torchattacks fp32']['time'], 'img/s', out['cuda_graphs_ratio'], 'none (experiment)',
                     None, f"robust acc. {g['robust_acc']:.1%} vs {out['torchattacks fp32']['robust_acc']:.1%}")]
    else: extra = []
    out['rows'] = extra + [row(f"PGD-10 fast path, bf16 + torch.compile (fine-tuned micro ViT, n={len(x)}, ε={eps * 255:g}/255)", peer,
                       len(x) / out['ours fast']['time'], len(x) / out['torchattacks fp32']['time'], 'img/s', ratio,
                       '≥ 2, robust acc. within 1 pp', ratio >= 2 and gap <= 0.01,
                       f"robust acc. {out['ours fast']['robust_acc']:.1%} vs {out['torchattacks fp32']['robust_acc']:.1%}"),
                   row(f"PGD-10 fast path (random tiny ViT, batch {len(xv)})", peer, len(xv) / tv['ours fast'],
                       len(xv) / tv['torchattacks fp32'], 'img/s', out['tiny_vit']['ratio'], '≥ 2', out['tiny_vit']['ratio'] >= 2)]
    return out


def cuda_graphed(model):
    "A copy of `model` that the attacks' fast path runs through torch.compile(mode='reduce-overhead') (CUDA graphs)."
    import copy
    from mimbench import attacks
    m = copy.deepcopy(model)
    attacks._COMPILED[m] = torch.compile(m, mode='reduce-overhead')    # fast_model() finds it there instead of compiling
    return m


def _time(f, dev, warmup=0):
    for _ in range(warmup): f()
    sync(dev); t = time.perf_counter(); f(); sync(dev)
    return time.perf_counter() - t


def sec_autoattack(ctx):
    "AutoAttack (standard, reference step counts) end to end vs torchattacks' AutoAttack, same model and batch."
    ba, a = load_bench('attacks'), ctx.s['aa']
    x, y = ba.aa_data(a['n'], ctx.dev)
    r = ba.autoattack_compare(classifier(ctx), x, y, a['eps'], a['steps'], a['n_queries'], profile=True, dev=ctx.dev)
    r['rows'] = []
    for k, target in (('apgd-ce', 1.0), ('autoattack', 1.2)):
        o, t = r[f'{k} ours'], r[f'{k} torchattacks']
        ratio, gap = t['time'] / o['time'], abs(o['robust_acc'] - t['robust_acc'])
        r['rows'].append(row(f"{'APGD-CE' if k == 'apgd-ce' else 'AutoAttack standard'} end to end (fine-tuned micro ViT, "
                             f"n={a['n']}, ε={a['eps'] * 255:g}/255, {a['steps']} steps)", peer_version('torchattacks'),
                             o['time'], t['time'], 's', ratio, f"≥ {target}, robust acc. within 0.5 pp",
                             ratio >= target and gap <= 0.005, f"robust acc. {o['robust_acc']:.1%} vs {t['robust_acc']:.1%}"))
    return r


def sec_cka(ctx):
    "Cross-model CKA: mimbench vs forward-only, pytorch-cka, torch-cka and a float64 reference (own subprocesses)."
    c = ctx.s['cka']
    peers = [m for m, dist in (('pytorch-cka', 'pytorch_cka'), ('torch-cka', 'torch-cka')) if have(dist)]
    res, rows, key = load_bench('cka').compare(c['n'], c['batch'], c['preset'], 4, None, ['forward', 'mimbench', *peers, 'reference'],
                                               modes=('cross',), verbose=False)
    errors = {f'{m} {mode}': v['error'] for (m, mode), v in res.items() if 'error' in v}
    if errors: raise RuntimeError(f"CKA subprocesses failed: {errors}")
    by = {r['method']: r for r in rows}
    o = by['mimbench']
    out = {'results': rows, 'time_key': key, 'rows': [
        row(f"CKA cross-model ({c['preset']} ViT, {c['n']} images): time / forward-only time", 'forward passes alone',
            o['per_forward'], 1.0, '× forward', None, '≤ 1.15', o['per_forward'] <= 1.15)]}
    for peer, dist in (('pytorch-cka', 'pytorch_cka'), ('torch-cka', 'torch-cka')):
        p = by.get(peer)
        if p is None: out['missing_peers'] = out.get('missing_peers', []) + [peer]; continue
        out['rows'].append(row(f"CKA cross-model ({c['preset']} ViT, {c['n']} images)", peer_version(dist), o[key], p[key], 's',
                               p['vs_ours'], '≥ 1.0', p['vs_ours'] >= 1.0,
                               f"peak +MB {o['extra_mb']:.0f} vs {p['extra_mb']:.0f}; max|Δ| vs f64 {o['max_dev']:.1e} vs {p['max_dev']:.1e}"))
    return out


def sec_adpe(ctx):
    "AdPE variants vs MAE+ with the same position embedding, bf16 autocast as in the trainer."
    a = ctx.s['adpe']
    r = load_bench('adpe').measure(**a, amp=True, device=ctx.dev)
    r['rows'] = [row(f"{k} training step{', bf16' if ctx.dev.type == 'cuda' else ''} ({a['preset']}, batch {a['batch']})", f"mimbench {r['base'][k]}",
                     r['ms_per_step'][k], r['ms_per_step'][r['base'][k]], 'ms/step', v, '≤ 1.15 (cost ratio)', v <= 1.15,
                     'ratio = cost / base cost (< 1 is cheaper)') for k, v in r['ratio'].items() if k.startswith('adpe')]
    return r


def sec_de3(ctx):
    "De³ inference and one EOT PGD step through it, vs plain classifier inference."
    d = ctx.s['de3']
    rates = load_bench('de3').measure(d['preset'], d['batch'], d['eot'], d['repeats'], device=ctx.dev)
    base = rates['classifier inference']
    return {'img_per_s': rates, 'cost_vs_classifier_inference': {k: base / v for k, v in rates.items()}, 'rows': []}


def sec_widgets(ctx):
    "The three explorers on the device, driven headless: median slider-to-picture latency of a frame update."
    from mimbench.data import get_dataset
    from mimbench.defenses import De3
    from mimbench.models import create_mae, create_vit
    from mimbench.widgets import AttackExplorer, De3Explorer, ReconstructionExplorer
    dev, reps = ctx.dev, ctx.s['widget_repeats']
    ds = get_dataset('fashion-mnist', 'test', channels=1)
    torch.manual_seed(0)
    rows = [{'sigma': float(s), 'clean': 0.9 - s / 400, 'robust': 0.1 + s / 500, 'psnr': 30 - s / 10} for s in range(0, 161, 20)]
    defense = De3(create_mae('micro', patch_size=8, in_chans=1, norm_pix_loss=False), create_vit('micro', patch_size=8, in_chans=1), 20.)
    med = lambda v: statistics.median(v) * 1e3
    out = {}

    def frames(w, change, n):
        lat = []
        for i in range(n):
            change(i); lat.append(w.last_latency)
            if w.error is not None: raise w.error
        return lat

    w = De3Explorer(defense, ds, sweep=rows, device=dev, debounce=0., background=False)
    assert w.device.type == dev.type and next(w.defense.parameters()).device.type == dev.type
    sig = [10, 50, 90, 130, 160, 30, 70]
    out['de3 sigma change'] = med(frames(w, lambda i: setattr(w.sigma, 'value', sig[i % len(sig)]), reps))
    w = ReconstructionExplorer(create_mae('micro', patch_size=4, in_chans=1), ds, device=dev, background=False)
    out['reconstruction redraw'] = med(frames(w, lambda i: w.redraw.click(), reps))
    w = AttackExplorer(create_vit('micro', patch_size=8, in_chans=1), ds, device=dev, background=False)
    n_steps = len(w.trace)                       # stepping through the recorded iterations: a new value every frame
    out['attack step (render)'] = med(frames(w, lambda i: setattr(w.step, 'value', (w.step.value + 1) % n_steps), reps))
    with phase_timer({'attack': (w, 'run'), 'loss plot': (w.loss_plot, 'set_trace'), 'render': (w, 'render')}) as split:
        out['attack re-run (PGD-10, ε change)'] = med(frames(w, lambda i: setattr(w.eps, 'value', 4. + (i % 4) + 1), reps))
    rows = [row(f"Widget frame, slider to picture: {k} (median of {reps})", 'none (latency target)', v, None, 'ms', None, '< 100 ms',
                v < 100) for k, v in out.items()]
    return {'median_ms': out, 'target_ms': 100, 'ok': {k: v < 100 for k, v in out.items()}, 'rows': rows,
            're_run_split_ms': {k: med(v) for k, v in split.items()}}    # medians; 'attack' includes the loss plot


@contextlib.contextmanager
def phase_timer(methods:dict):
    "Seconds of every call of each `name: (object, method)` while inside (an instance attribute shadows the method until the end)."
    times = {k: [] for k in methods}
    def timed(k, f):
        def g(*a, **kw):
            t = time.perf_counter()
            try: return f(*a, **kw)
            finally: times[k].append(time.perf_counter() - t)
        return g
    for k, (o, m) in methods.items(): setattr(o, m, timed(k, getattr(o, m)))
    try: yield times
    finally:
        for o, m in methods.values(): delattr(o, m)


# cheapest first: when the budget runs out, the long comparisons against peers are what is skipped
SECTIONS = {'mae': sec_mae, 'widgets': sec_widgets, 'de3': sec_de3, 'adpe': sec_adpe, 'fast_attack': sec_fast_attack,
            'cka': sec_cka, 'autoattack': sec_autoattack}


class Ctx:
    def __init__(self, dev, tiny, clf_dir):
        self.dev, self.tiny, self.s, self.cache, self.clf_dir = dev, tiny, SIZES['tiny' if tiny else 'gpu'], {}, clf_dir


def markdown(res) -> str:
    "A short summary of the results file."
    L = [f"# GPU check — {res['device_name']}" + (' (tiny mode: a smoke test, not a measurement)' if res['tiny'] else '')
         + (' — partial: the run stopped after the sections below' if res.get('partial') else ''),
         '', f"torch {res['torch']}, commit {res['commit']}, {res['date']}, {res['total_s']:.0f} s in all.", '',
         '| check | peer | ours | peer\'s | unit | ratio | target | met |', '|---|---|---|---|---|---|---|---|']
    for r in res['rows']:
        f = lambda v: '–' if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        L.append(f"| {r['what']} | {r['peer']} | {f(r['ours'])} | {f(r['theirs'])} | {r['unit']} | {f(r['ratio'])} | "
                 f"{r['target']} | {'yes' if r['ok'] else 'no' if r['ok'] is not None else ''} | {r['note']} |")
    s = res['sections']
    if 'mae' in s and 'error' not in s['mae']:
        m = s['mae']; fr = m['fraction_of_peak']
        L += ['', f"MAE step: {m['img_per_s']['mimbench']:.0f} img/s, {m['tflops']:.1f} TFLOP/s, "
                  + (f"{fr:.1%} of the card's {m['peak_bf16_tflops']:g} TFLOP/s bf16 peak." if fr != 'unknown' else 'peak unknown for this card.')]
    if 'de3' in s and 'error' not in s['de3']:
        L += ['', 'De³: ' + ', '.join(f"{k} {v:.0f} img/s" for k, v in s['de3']['img_per_s'].items())]
    if 'widgets' in s and 'error' not in s['widgets']:
        L += ['', 'Widgets (median frame latency, target < 100 ms): ' +
              ', '.join(f"{k} {v:.0f} ms" for k, v in s['widgets']['median_ms'].items())]
        if 're_run_split_ms' in s['widgets']:                   # absent from results made before it was measured
            L[-1] += ('; of the attack re-run: ' + ', '.join(f"{k} {v:.0f} ms" for k, v in s['widgets']['re_run_split_ms'].items())
                      + ' (the attack includes the loss plot)')
    if 'autoattack' in s and 'error' not in s['autoattack']:
        a = s['autoattack']
        L += ['', 'AutoAttack image forwards by attack, in units of the batch: ' +
              '; '.join(f"{k}: " + ', '.join(f"{st} {v['forward_cost']:.0f}" for st, v in a[k]['by_stage'].items())
                        for k in ('autoattack ours', 'autoattack torchattacks'))]
    kept = {k: v['from'] for k, v in s.items() if 'from' in v}
    if kept: L += ['', 'Sections kept from an earlier run (`--merge`): ' +
                   '; '.join(f"{k} (commit {f['commit']}, {f['date']}, torch {f['torch']})" for k, f in kept.items())]
    bad = {k: v['error'].strip().splitlines()[-1] for k, v in s.items() if 'error' in v}
    skipped = [k for k, v in s.items() if 'skipped' in v]
    if skipped: L += ['', '**Skipped (time budget):** ' + ', '.join(skipped)]
    if bad: L += ['', '**Failed sections:** ' + '; '.join(f"{k}: {v}" for k, v in bad.items())]
    L += ['', f"Section times (s): " + ', '.join(f"{k} {v['seconds']:.0f}" for k, v in s.items())]
    return '\n'.join(L) + '\n'


def kept_from(path, res:dict, only) -> dict:
    "`res` with the sections of the earlier results file `path` that this run does not measure, each marked with its run."
    prev = json.loads(Path(path).read_text())
    for k in ('device', 'tiny', 'sizes'):
        if json.dumps(prev.get(k), default=str) != json.dumps(res[k], default=str):
            sys.exit(f"gpu_check: --merge {path}: its {k} ({prev.get(k)}) differs from this run's ({res[k]}); merge only runs of one device and size")
    keep = [k for k in prev['sections'] if k not in only]
    run = {k: prev[k] for k in ('commit', 'date', 'torch')}
    res['sections'] = {k: {**prev['sections'][k], 'from': prev['sections'][k].get('from', run)} for k in keep}
    res['rows'] = [r for r in prev['rows'] if r.get('section') in keep]
    return res


def write(res, out, dev) -> Path:
    "Write gpu-<device>.json and .md atomically (mimbench's `atomic_write`); returns the path stem."
    from mimbench.core import atomic_write
    stem = Path(out) / f"gpu-{device_slug(dev)}"
    for path, text in ((stem.with_suffix('.json'), json.dumps(res, indent=1, default=str) + '\n'),
                       (stem.with_suffix('.md'), markdown(res))):
        atomic_write(path, lambda p, text=text: p.write_text(text))
    return stem


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny sizes on the CPU (or --device): a smoke test in seconds')
    ap.add_argument('--device', default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument('--out', default=str(RESULTS), help='folder of gpu-<device>.json and .md')
    ap.add_argument('--only', default=','.join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument('--clf-dir', default=None, help='run folder of the fine-tuned classifier (default: the temp folder)')
    ap.add_argument('--merge', default=None, help="an earlier results file of this device: its sections not in --only are kept "
                                                  "(each marked with that run's commit and date), e.g. to re-run one failed section")
    ap.add_argument('--budget', type=float, default=450., help='seconds after which the remaining sections are skipped')
    a = ap.parse_args(argv)
    dev = torch.device(a.device or ('cpu' if a.tiny else 'cuda'))
    if dev.type == 'cuda' and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here. On a CPU run `python bench/gpu_check.py --tiny` (the smoke test).")
    if not a.tiny and dev.type != 'cuda':
        print("gpu_check: full sizes on a CPU take hours; use --tiny on CPU.", file=sys.stderr)
    only = [s.strip() for s in a.only.split(',') if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown: sys.exit(f"gpu_check: unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    ctx = Ctx(dev, a.tiny, a.clf_dir)
    res = {**provenance(dev), 'tiny': a.tiny, 'sizes': ctx.s, 'sections': {}, 'rows': [], 'partial': True}
    if a.merge: res = kept_from(a.merge, res, only)
    t_all = time.perf_counter()
    for name in only:
        t = time.perf_counter()
        if t - t_all > a.budget:
            res['sections'][name] = {'skipped': f"time budget of {a.budget:g} s spent", 'seconds': 0.}
            print(f"[gpu_check] {name}: skipped (budget of {a.budget:g} s spent)", flush=True); continue
        print(f"[gpu_check] {name} …", flush=True)
        try:
            r = SECTIONS[name](ctx)
        except Exception:
            r = {'error': traceback.format_exc()}
            print(r['error'], file=sys.stderr)
        r['seconds'] = time.perf_counter() - t
        res['rows'] += [{**x, 'section': name} for x in r.get('rows', [])]
        res['sections'][name] = r
        print(f"[gpu_check] {name}: {r['seconds']:.1f} s" + (' FAILED' if 'error' in r else ''), flush=True)
        res['total_s'] = sum(v['seconds'] for v in res['sections'].values())
        stem = write(res, a.out, dev)            # after every section: a run killed at its time limit keeps what it measured
    res['total_s'] = sum(v['seconds'] for v in res['sections'].values())
    res['load_end'] = provenance(dev)['load']
    res.pop('partial', None)
    stem = write(res, a.out, dev)
    print(markdown(res))
    print(f"wrote {stem}.json and {stem}.md ({res['total_s']:.0f} s)")
    failed = [k for k, v in res['sections'].items() if 'error' in v]
    if failed: print(f"gpu_check: failed sections: {failed}", file=sys.stderr); return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
