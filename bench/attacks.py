"""Attack throughput: mimbench's PGD-10 (ℓ∞), APGD-CE-100 and AutoAttack vs torchattacks on the same model, batch and threads.

    python bench/attacks.py [--preset tiny] [--batch 64] [--img 32] [--patch 4] [--threads N] [--fast]
                            [--aa-n 500] [--aa-eps 2/255] [--aa-chunks 5] [--aa-model CKPT] [--no-aa] [--profile] [--save]

PGD/APGD rows: `create_vit(preset, patch_size, img_size)` with random weights in eval mode (speed does not depend on
training). Times are process CPU time on CPU (robust on a shared machine; run with one thread) and wall time on CUDA.
Prints images/s of each attack for both libraries, the ratio ours/torchattacks (> 1: ours is faster) and
each attack's cost in units of one clean forward pass of the batch (PGD-10 needs 10 forward+input-backward passes, so
≈ 30 is the floor). `--fast` adds mimbench's opt-in bf16-autocast + torch.compile path, which only does something on CUDA.

AutoAttack rows: `mimbench.evaluate.quick_classifier()` (a micro ViT fine-tuned on Fashion-MNIST by the trainer, cached
in the temp folder) on the first `--aa-n` test images, at an ε (`--aa-eps`) where points survive APGD-CE so that
APGD-T, FAB-T and Square do real work. mimbench's `autoattack(version='standard')` (reference step counts: APGD-CE 100,
APGD-T 100 × 9 targets, FAB-T 100 × 9 targets, Square 5000 queries) against torchattacks' `AutoAttack` given the same
step counts (its defaults are 10), end to end, plus APGD-CE-100 alone on the same model and batch. Prints time, ratio,
robust accuracy of both and the model forwards each spent (in clean forwards of the batch, split by attack with
`--profile`). `--save` writes bench/results/attacks-<device>.json for the README's speed table.

Where AutoAttack's time goes (`--aa-n 500 --aa-eps 2/255 --aa-chunks 5 --profile`, fine-tuned micro ViT: clean 81.2 %,
robust 71.4 % for both libraries): image forwards per image — APGD-CE 83, APGD-T 657, FAB-T 1306 (643 with autograd),
Square 3571, bookkeeping 4 — against torchattacks' 83 / 657 / 1305 / 3572 / 3: the same work, forward for forward, because
both already pass only the still-robust points to each later attack and each target class. Square and FAB-T (torchattacks'
own FAB in both) are ~85 % of it. What mimbench saves: the adapter runs FAB with frozen weights (torchattacks' FAB
backpropagates into every parameter), standalone APGD skips points a deterministic model already misclassifies (101 → 83
forwards per image), and Square's bookkeeping is a little lighter. A larger lead would need less work than the algorithm
prescribes (e.g. a FAB whose per-step check forward could be shared with the next gradient — tried: FAB ends almost every
step on the adversarial side and steps back, so the iterate changes and nothing can be shared).

How much lead is left: `forward_floor` times the same model work (each stage's images through the model at its mean
batch, an input-gradient backward where autograd was on) with no attack code around it. Every run prints it, and
`--floor-from bench/results/attacks-cpu.json --aa-model CKPT` prints it for a saved run, with each library's time over
the floor and `theirs / floor`, the largest lead any implementation of the same forwards could reach on that run.
Measure it on an idle machine: the floor is timed separately from the attacks, so load shifts it.
"""
import argparse, contextlib, json, time
from pathlib import Path
import torch
import torchattacks
from mimbench.models import create_vit
from mimbench.attacks import pgd, apgd_ce, autoattack, predict, ATTACKS
from _common import (cpu_time, device_name, load_average, model_pass, peer_version, row, sync, timeit, write_results)


@contextlib.contextmanager
def count_forwards(model, log:list):
    "Append (stage, images, grad enabled) for every forward of `model` while inside (stage: `log`'s current label)."
    stage = ['']
    h = model.register_forward_hook(lambda m, inp, out: log.append((stage[0], inp[0].shape[0], torch.is_grad_enabled())))
    try: yield stage
    finally: h.remove()


def forward_cost(log, n, stage=None, grad=None):
    "Images through the model in units of clean forwards of `n` images (`grad`: only those with / without autograd on)."
    return sum(b for s, b, g in log if (stage is None or s == stage) and (grad is None or g == grad)) / n


def throughput_rows(model, x, y, eps=8/255, reps=2, fast=False, dev='cpu'):
    "PGD-10 and APGD-CE-100 (and the fast PGD path) of both libraries on `model`, `x`: a list of dicts."
    with torch.no_grad(): t_fwd = timeit(lambda: model(x), 5, dev)
    cases = [('PGD-10 ℓ∞', lambda: pgd(model, x, y, eps, alpha=2/255, steps=10),
              lambda: torchattacks.PGD(model, eps=eps, alpha=2/255, steps=10)(x, y)),
             ('APGD-CE-100', lambda: apgd_ce(model, x, y, eps, steps=100),
              lambda: torchattacks.APGD(model, eps=eps, steps=100, loss='ce', n_restarts=1)(x, y))]
    if fast:
        cases += [('PGD-10 ℓ∞ fast', lambda: pgd(model, x, y, eps, alpha=2/255, steps=10, fast=True),
                   lambda: torchattacks.PGD(model, eps=eps, alpha=2/255, steps=10)(x, y))]
    out = []
    for name, ours, theirs in cases:
        t_o, t_t = timeit(ours, reps, dev), timeit(theirs, reps, dev)
        out.append({'attack': name, 'ours_img_s': len(x) / t_o, 'theirs_img_s': len(x) / t_t, 'ratio': t_t / t_o,
                    'ours_cost': t_o / t_fwd, 'theirs_cost': t_t / t_fwd})
    return out, len(x) / t_fwd


def torchattacks_autoattack(model, eps, steps=100, n_queries=5000, n_classes=10, seed=0):
    "torchattacks' standard AutoAttack with the reference step counts (its APGD/APGD-T/FAB default to 10 steps)."
    aa = torchattacks.AutoAttack(model, norm='Linf', eps=eps, version='standard', n_classes=n_classes, seed=seed)
    for atk in aa._autoattack.attacks:
        if hasattr(atk, 'steps'): atk.steps = steps
        if hasattr(atk, 'n_queries'): atk.n_queries = n_queries
    return aa


def aa_model(path=None, n_train=8000, epochs=2, out=None):
    "The fine-tuned classifier of the AutoAttack rows: a saved checkpoint, or `quick_classifier` (trained once, then cached)."
    if path:
        from mimbench.models import load_model
        return load_model(path)[0].eval()
    from mimbench.evaluate import quick_classifier
    return quick_classifier(n_train=n_train, epochs=epochs, out=out)


def aa_data(n, dev):
    from mimbench.data import get_dataset, load_batch
    ds = get_dataset('fashion-mnist', 'test', channels=1)
    x, y = load_batch(ds, torch.arange(n))
    return x.to(dev), y.to(dev)


def autoattack_compare(model, x, y, eps, steps=100, n_queries=5000, seed=0, profile=False, dev='cpu', chunks=1):
    """APGD-CE and AutoAttack of both libraries on `model`, `x`, `y`: times, robust accuracies, forwards spent (dict).

    `chunks` > 1 splits the points into that many chunks and alternates the libraries chunk by chunk (ours, theirs, ours,
    …), so that a change in the machine's load during the long run falls on both alike; every point is attacked once by
    each library either way (the attacks treat points independently)."""
    model = model.to(dev).eval()
    n, res = len(x), {'n': len(x), 'eps': eps, 'steps': steps, 'n_queries': n_queries, 'chunks': chunks}
    res['clean_acc'] = (predict(model, x) == y).float().mean().item()
    runs = {
        'apgd-ce ours': lambda x, y: apgd_ce(model, x, y, eps, steps=steps, seed=seed),
        'apgd-ce torchattacks': lambda x, y: torchattacks.APGD(model, eps=eps, steps=steps, loss='ce', n_restarts=1, seed=seed)(x, y),
        'autoattack ours': lambda x, y: autoattack(model, x, y, eps, version='standard', seed=seed, log=res.setdefault('aa_log', []),
                                                   overrides={'apgd-ce': {'steps': steps}, 'apgd-t': {'steps': steps},
                                                              'fab-t': {'steps': steps}, 'square': {'n_queries': n_queries}}),
        'autoattack torchattacks': lambda x, y: torchattacks_autoattack(model, eps, steps, n_queries, seed=seed)(x, y),
    }
    parts = [(x[c], y[c]) for c in torch.arange(n).chunk(chunks)]
    logs, times, advs = {k: [] for k in runs}, {k: [0., 0.] for k in runs}, {k: [] for k in runs}
    for xc, yc in parts:
        for name, f in runs.items():
            with count_forwards(model, logs[name]) as stage, (_stages(name, stage) if profile else contextlib.nullcontext()):
                sync(dev); t, c = time.perf_counter(), cpu_time(); xa = f(xc, yc); sync(dev)
                times[name][0] += time.perf_counter() - t; times[name][1] += cpu_time() - c
            advs[name].append(xa)
    for name in runs:
        log, (t, c), xa = logs[name], times[name], torch.cat(advs[name])
        stages = list(dict.fromkeys(s for s, _, _ in log))
        # on a shared CPU, the process CPU time (one thread) is the contention-robust measure; on CUDA, wall time
        res[name] = {'time': c if torch.device(dev).type == 'cpu' else t, 'wall': t, 'cpu': c,
                     'robust_acc': (predict(model, xa) == y).float().mean().item(), 'forward_cost': forward_cost(log, n),
                     'grad_forward_cost': forward_cost(log, n, grad=True),
                     'max_linf': (xa - x).abs().max().item(),
                     'by_stage': {s: {'forward_cost': forward_cost(log, n, s),
                                      'forwards': sum(1 for q, _, _ in log if q == s),
                                      'images_no_grad': sum(b for q, b, g in log if q == s and not g),
                                      'images_grad': sum(b for q, b, g in log if q == s and g)} for s in stages}}
    return res


def forward_floor(model, by_stage:dict, shape, dev='cpu', min_seconds:float=2.) -> dict:
    """Seconds the same model work costs with no attack logic around it: each stage's images through `model`, with and
    without autograd, at the stage's mean batch, timed on random inputs of `shape` (C, H, W) — an input-gradient
    backward for the images with autograd. `by_stage`: `autoattack_compare`'s per-stage counts. Time in excess of this
    floor is the implementation's own (bookkeeping, projections, gradients nobody needs); no implementation that does
    the same forwards can take less, so `theirs / floor` bounds the ratio any rewrite could reach."""
    model = model.to(dev).eval()
    costs = {}
    def per_image(b, grad):
        if (b, grad) not in costs:
            f = model_pass(model, torch.rand(b, *shape, device=dev), grad)
            reps = max(3, int(min_seconds / timeit(f, 1, dev)))       # long enough for the clock's resolution
            costs[b, grad] = timeit(f, reps, dev, warmup=0) / b
        return costs[b, grad]
    out = {}
    for s, v in by_stage.items():
        if not v['forwards']: continue
        b = max(1, round((v['images_grad'] + v['images_no_grad']) / v['forwards']))
        out[s] = v['images_grad'] * per_image(b, True) + v['images_no_grad'] * per_image(b, False)
    return {'seconds': sum(out.values()), 'by_stage': out}


def add_floor(res:dict, model, shape, dev='cpu'):
    "Put `forward_floor` of each library's AutoAttack into `res` (in place): seconds, and each library's time over it."
    for k in ('autoattack ours', 'autoattack torchattacks'):
        f = forward_floor(model, res[k]['by_stage'], shape, dev)
        res[k]['floor'] = f['seconds']; res[k]['floor_by_stage'] = f['by_stage']; res[k]['over_floor'] = res[k]['time'] / f['seconds']
    res['max_ratio'] = res['autoattack torchattacks']['time'] / res['autoattack ours']['floor']
    return res


@contextlib.contextmanager
def _stages(name, stage):
    "Label forwards by the attack running them: wrap torchattacks' MultiAttack members or mimbench's registered attacks."
    if 'autoattack' not in name: stage[0] = name.split()[0]; yield; return
    saved = []
    if name.endswith('torchattacks'):
        orig = torchattacks.attack.Attack.__call__
        def call(self, *a, **k):
            prev = stage[0]
            if type(self).__name__ != 'MultiAttack': stage[0] = type(self).__name__
            try: return orig(self, *a, **k)
            finally: stage[0] = 'between attacks' if type(self).__name__ != 'MultiAttack' else prev
        torchattacks.attack.Attack.__call__ = call
        try: yield
        finally: torchattacks.attack.Attack.__call__ = orig
        return
    for k in ('apgd-ce', 'apgd-t', 'fab-t', 'square'):
        spec = ATTACKS[k]; saved.append((spec, spec.fn))
        def wrapped(*a, _f=spec.fn, _k=k, **kw):
            stage[0] = _k
            try: return _f(*a, **kw)
            finally: stage[0] = 'between attacks'
        spec.fn = wrapped
    stage[0] = 'before attacks'
    try: yield
    finally:
        for spec, f in saved: spec.fn = f


def print_autoattack(r):
    print(f"\nAutoAttack (standard, linf ε={r['eps']:.4g}, steps {r['steps']}, Square {r['n_queries']} queries) on "
          f"the fine-tuned micro ViT, n={r['n']}, clean accuracy {r['clean_acc']:.1%}")
    print("times: process CPU time on CPU (robust on a shared machine), wall time on CUDA")
    print(f"{'attack':<13}{'ours s':>9}{'theirs s':>10}{'ratio':>7}{'ours rob.':>11}{'theirs rob.':>13}{'ours fwd':>10}{'theirs fwd':>12}  (fwd: images forwarded / n, with autograd on)")
    for a in ('apgd-ce', 'autoattack'):
        o, t = r[f'{a} ours'], r[f'{a} torchattacks']
        print(f"{a:<13}{o['time']:9.2f}{t['time']:10.2f}{t['time'] / o['time']:7.2f}{o['robust_acc']:11.1%}"
              f"{t['robust_acc']:13.1%}{o['forward_cost']:10.1f}{t['forward_cost']:12.1f}  "
              f"({o['grad_forward_cost']:.1f} vs {t['grad_forward_cost']:.1f} with autograd)")
    if r.get('aa_log'): print('ours, per attack:', r['aa_log'][-4:])
    if 'max_ratio' in r:
        o, t = r['autoattack ours'], r['autoattack torchattacks']
        print(f"AutoAttack's model work alone (forward_floor): {o['floor']:.1f} s; ours takes {o['over_floor']:.2f}× it, "
              f"torchattacks {t['over_floor']:.2f}×, so no implementation of the same forwards can beat torchattacks by "
              f"more than {r['max_ratio']:.2f}× here")
        print('  floor by stage (s): ' + ', '.join(f"{s} {v:.1f}" for s, v in o['floor_by_stage'].items()))
    for k in ('autoattack ours', 'autoattack torchattacks'):
        if len(r[k]['by_stage']) > 1:
            print(f"{k} by stage (image forwards / n, of which with autograd): " +
                  ', '.join(f"{s}: {v['forward_cost']:.1f} ({v['images_grad'] / r['n']:.1f})" for s, v in r[k]['by_stage'].items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='tiny'); ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--img', type=int, default=32); ap.add_argument('--patch', type=int, default=4)
    ap.add_argument('--threads', type=int, default=None); ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--fast', action='store_true')
    ap.add_argument('--aa-n', type=int, default=500); ap.add_argument('--aa-eps', default='2/255')
    ap.add_argument('--aa-model', default=None, help='checkpoint of the classifier (default: evaluate.quick_classifier())')
    ap.add_argument('--aa-steps', type=int, default=100); ap.add_argument('--aa-queries', type=int, default=5000)
    ap.add_argument('--no-aa', action='store_true', help='skip the AutoAttack rows')
    ap.add_argument('--no-throughput', action='store_true', help='only the AutoAttack rows')
    ap.add_argument('--profile', action='store_true', help='split the forwards of AutoAttack by attack')
    ap.add_argument('--aa-chunks', type=int, default=5, help='alternate the libraries over this many chunks of the points')
    ap.add_argument('--save', action='store_true', help='write bench/results/attacks-<device>.json')
    ap.add_argument('--floor-from', default=None, help="a saved attacks-<device>.json: print its AutoAttack rows with their "
                    "forward floor (needs the same --aa-model), run no attack")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    print(f"{device_name(dev)}, torch {torch.__version__}, load {load_average()}")
    if a.floor_from:      # the floor of a saved run's AutoAttack rows, without re-running the attacks
        r = json.loads(Path(a.floor_from).read_text())['autoattack']
        x, _ = aa_data(1, dev)
        print_autoattack(add_floor(r, aa_model(a.aa_model), x.shape[1:], dev)); return
    rows, extra = [], {}
    if not a.no_throughput:
        torch.manual_seed(0)
        model = create_vit(a.preset, img_size=a.img, patch_size=a.patch, in_chans=3).to(dev).eval()
        x = torch.rand(a.batch, 3, a.img, a.img, device=dev)
        with torch.no_grad(): y = model(x).argmax(1)      # every point starts correctly classified, so no attack skips any
        tp, fwd = throughput_rows(model, x, y, 8 / 255, a.reps, a.fast, dev)
        print(f"{a.preset} ViT, patch {a.patch}, {a.img}×{a.img}, batch {a.batch}, {dev}, {torch.get_num_threads()} threads")
        print(f"clean forward: {fwd:.1f} img/s")
        print(f"{'attack':<16}{'ours img/s':>12}{'torchattacks':>14}{'ratio':>8}{'ours cost':>11}{'their cost':>12}  (cost: clean forwards)")
        for r in tp:
            print(f"{r['attack']:<16}{r['ours_img_s']:>12.1f}{r['theirs_img_s']:>14.1f}{r['ratio']:>8.2f}{r['ours_cost']:>11.1f}{r['theirs_cost']:>12.1f}")
            rows.append(row(f"{r['attack']} ({a.preset} ViT, batch {a.batch})", peer_version('torchattacks'), r['ours_img_s'],
                            r['theirs_img_s'], 'img/s', r['ratio'], '≥ 1.0', r['ratio'] >= 1.0))
        extra['throughput'] = tp
    if not a.no_aa:
        from mimbench.core import parse_eps
        eps = parse_eps(a.aa_eps)
        x, y = aa_data(a.aa_n, dev)
        model = aa_model(a.aa_model)
        r = autoattack_compare(model, x, y, eps, a.aa_steps, a.aa_queries, profile=a.profile, dev=dev, chunks=a.aa_chunks)
        add_floor(r, model, x.shape[1:], dev)
        print_autoattack(r)
        print(f"load {load_average()}")
        for k, target in (('apgd-ce', 1.0), ('autoattack', 1.2)):
            o, t = r[f'{k} ours'], r[f'{k} torchattacks']
            ratio, gap = t['time'] / o['time'], abs(o['robust_acc'] - t['robust_acc'])
            rows.append(row(f"{'APGD-CE-100' if k == 'apgd-ce' else 'AutoAttack standard'} end to end (fine-tuned micro ViT, "
                            f"n={r['n']}, ε={a.aa_eps})", peer_version('torchattacks'), o['time'], t['time'], 's', ratio,
                            f"≥ {target}, robust acc. within 0.5 pp", ratio >= target and gap <= 0.005,
                            f"robust acc. {o['robust_acc']:.1%} vs {t['robust_acc']:.1%}"))
        extra['autoattack'] = r
    if a.save: print('wrote', write_results('attacks', rows, dev, extra))


if __name__ == '__main__':
    main()
