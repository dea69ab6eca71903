"""Minibatch linear CKA over every block: mimbench vs pytorch-cka (`import cka`) vs torch-cka (`import torch_cka`).

    python bench/cka.py [--n 2000] [--batch 100] [--preset tiny] [--patch 4] [--threads N]

Two randomly initialised 12-block ViT-Tiny (patch 4, 32×32, 3 channels) models, the first `--n` Fashion-MNIST test
images (3 channels), batch `--batch`. Measured, each in its own subprocess so that peak memory is per method:
  forward    the forward passes alone (one model for "self", both for "cross"): the floor of this work
  mimbench   `cka_matrix(a, x)` / `cka_matrix(a, x, b)`
  pytorch-cka  `cka.compute_cka(a, a|b, loader, layers=blocks)`
  torch-cka    `torch_cka.CKA(a, a|b, model1_layers=blocks, ...).compare(loader)`
  reference  the same estimator (per-batch unbiased HSIC on flattened tokens) in float64 throughout
Prints wall time, peak memory (process peak RSS on CPU and its rise over the state after imports and warm-up;
`max_memory_allocated` on CUDA) and max |CKA − reference|,
and the ratios time/forward and peer/ours (by process CPU time on CPU — robust on a shared machine — and wall
time on CUDA). Peers get deep copies of the models (torch-cka never removes its hooks).
"""
import argparse, copy, json, os, resource, subprocess, sys, time
import torch

METHODS = ('forward', 'mimbench', 'pytorch-cka', 'torch-cka', 'reference')


def setup(a):
    from mimbench.models import create_vit
    from mimbench.data import get_dataset
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    ma = create_vit(a.preset, img_size=32, patch_size=a.patch, in_chans=3).to(dev).eval()
    mb = create_vit(a.preset, img_size=32, patch_size=a.patch, in_chans=3).to(dev).eval()
    x = get_dataset('fashion-mnist', 'test', channels=3).get_batch(torch.arange(a.n))[0]
    return ma, mb, x, dev


def peak_mb(dev):
    if dev == 'cuda': return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def method(a, ma, mb, x, dev):
    "The call that `a.method` times, on images `x`: CKA of every block pair (or the forward passes alone)."
    other = ma if a.mode == 'self' else mb
    layers = [f'blocks.{i}' for i in range(len(ma.blocks))]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=a.batch)
    if a.method == 'forward':
        def f():
            with torch.inference_mode():
                for i in range(0, len(x), a.batch):
                    xb = x[i:i + a.batch].to(dev); ma(xb)
                    if a.mode == 'cross': mb(xb)
            return None
    elif a.method == 'mimbench':
        from mimbench.cka import cka_matrix
        f = lambda: cka_matrix(ma, x, None if a.mode == 'self' else mb, batch_size=a.batch, progress=False)
    elif a.method == 'pytorch-cka':
        import cka
        pa = copy.deepcopy(ma); pb = pa if a.mode == 'self' else copy.deepcopy(mb)
        f = lambda: cka.compute_cka(pa, pb, loader, layers=layers, model2_layers=layers, device=dev, progress=False)[0]
    elif a.method == 'torch-cka':
        import torch_cka, warnings
        warnings.simplefilter('ignore')
        pa = copy.deepcopy(ma); pb = pa if a.mode == 'self' else copy.deepcopy(mb)
        def f():
            c = torch_cka.CKA(pa, pb, 'a', 'b', model1_layers=layers, model2_layers=layers, device=dev)
            c.compare(loader, loader)
            return c.export()['CKA']
    elif a.method == 'reference':
        from mimbench.cka import layer_features, hsic_matrix
        def f():
            xy = xx = yy = 0
            with torch.inference_mode():
                for i in range(0, len(x), a.batch):
                    xb = x[i:i + a.batch].to(dev)
                    ga = torch.stack([t.flatten(1).double() @ t.flatten(1).double().T for t in layer_features(ma, xb)])
                    gb = ga if a.mode == 'self' else torch.stack([t.flatten(1).double() @ t.flatten(1).double().T
                                                                  for t in layer_features(other, xb)])
                    xy = xy + hsic_matrix(ga, gb); xx = xx + hsic_matrix(ga).diagonal(); yy = yy + hsic_matrix(gb).diagonal()
            return (xy / torch.outer(xx, yy).sqrt()).cpu()
    return f


def run_one(a):
    here = os.path.dirname(os.path.abspath(__file__))       # this file is bench/cka.py: keep it from shadowing `import cka`
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]
    sys.modules.pop('cka', None)
    ma, mb, x, dev = setup(a)
    # warm-up on two batches: lazy initialisation (CUDA kernels loaded on first use, cuBLAS float64 handles, the peers'
    # hooks) is not part of any method's time — on a GPU it was as long as the whole measured CKA
    method(a, ma, mb, x[:2 * a.batch], dev)()
    f = method(a, ma, mb, x, dev)
    if dev == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if dev == 'cuda' else peak_mb(dev)
    cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
    t, c = time.perf_counter(), cpu()
    m = f()
    if dev == 'cuda': torch.cuda.synchronize()
    t, c = time.perf_counter() - t, cpu() - c
    print(json.dumps({'time': t, 'cpu_s': c, 'peak_mb': peak_mb(dev), 'base_mb': base,
                      'cka': None if m is None else torch.as_tensor(m).double().tolist(), 'device': dev,
                      'threads': torch.get_num_threads()}))


def compare(n=2000, batch=100, preset='tiny', patch=4, threads=None, methods=METHODS, modes=('self', 'cross'), verbose=True):
    "Run every method × mode in its own subprocess; returns {(method, mode): result} and a summary list of rows (dicts)."
    res = {}
    for mode in modes:
        for meth in [m for m in METHODS if m in methods]:
            cmd = [sys.executable, __file__, '--method', meth, '--mode', mode, '--n', str(n), '--batch', str(batch),
                   '--preset', preset, '--patch', str(patch)] + (['--threads', str(threads)] if threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                if verbose: print(f"{meth} {mode} failed:\n{out.stderr[-2000:]}")
                res[meth, mode] = {'error': out.stderr[-2000:]}; continue
            res[meth, mode] = json.loads(out.stdout.strip().splitlines()[-1])
            if verbose:
                print(f"  {mode:5} {meth:12} {res[meth, mode]['time']:7.2f} s wall {res[meth, mode]['cpu_s']:7.2f} s CPU  "
                      f"peak {res[meth, mode]['peak_mb']:7.0f} MB", flush=True)
    rows, col = summarize(res, modes)
    return res, rows, col


def summarize(res:dict, modes) -> tuple:
    "Rows per (mode, method) from the subprocesses' results, and the row column the ratios use ('wall_s' on CUDA, 'cpu_s' on CPU)."
    ok = {k: v for k, v in res.items() if 'error' not in v}
    r0 = next(iter(ok.values()), {'device': 'cpu'})
    # on a shared CPU, process CPU time (all threads) is the contention-robust measure; on CUDA, wall time
    key = 'time' if r0['device'] == 'cuda' else 'cpu_s'
    rows = []
    for mode in modes:
        fw, ours, ref = ok.get(('forward', mode)), ok.get(('mimbench', mode)), ok.get(('reference', mode))
        for meth in METHODS:
            r = ok.get((meth, mode))
            if r is None: continue
            dev = (torch.tensor(r['cka'], dtype=torch.float64) - torch.tensor(ref['cka'], dtype=torch.float64)).abs().max().item() if r['cka'] and ref else float('nan')
            rows.append({'mode': mode, 'method': meth, 'wall_s': r['time'], 'cpu_s': r['cpu_s'],
                         'per_forward': r[key] / fw[key] if fw else float('nan'), 'vs_ours': r[key] / ours[key] if ours else float('nan'),
                         'peak_mb': r['peak_mb'], 'extra_mb': r['peak_mb'] - r['base_mb'], 'max_dev': dev})
    return rows, 'wall_s' if key == 'time' else 'cpu_s'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=2000); ap.add_argument('--batch', type=int, default=100)
    ap.add_argument('--preset', default='tiny'); ap.add_argument('--patch', type=int, default=4)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--method', choices=METHODS); ap.add_argument('--mode', choices=('self', 'cross'))
    ap.add_argument('--only', nargs='*', default=list(METHODS)); ap.add_argument('--modes', nargs='*', default=['self', 'cross'])
    ap.add_argument('--save', action='store_true', help='write bench/results/cka-<device>.json for the speed table')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    if a.method: return run_one(a)
    from _common import load_average, peer_version, row, write_results
    load0 = load_average()
    res, rows, key = compare(a.n, a.batch, a.preset, a.patch, a.threads, a.only, a.modes)
    r0 = next(v for v in res.values() if 'error' not in v)
    print(f"\n{a.preset} ViT, patch {a.patch}, 32×32, {a.n} images, batch {a.batch}, {r0['device']}, {r0['threads']} threads, "
          f"load {load0} → {load_average()}")
    print(f"ratios use {'wall' if key == 'wall_s' else 'process CPU'} time")
    print(f"{'mode':6}{'method':13}{'wall s':>8}{'CPU s':>8}{'/forward':>10}{'vs ours':>9}{'peak MB':>9}{'+MB':>7}{'max|Δ| vs f64':>15}")
    for r in rows:
        print(f"{r['mode']:6}{r['method']:13}{r['wall_s']:8.2f}{r['cpu_s']:8.2f}{r['per_forward']:10.2f}{r['vs_ours']:9.2f}"
              f"{r['peak_mb']:9.0f}{r['extra_mb']:7.0f}{r['max_dev']:15.1e}")
    if a.save:
        by = {(r['mode'], r['method']): r for r in rows}
        out = []
        for mode in a.modes:
            o = by.get((mode, 'mimbench'))
            if o is None: continue
            out.append(row(f"CKA {mode}-model, all block pairs ({a.preset} ViT, {a.n} images): time / forward-only time",
                           'forward passes alone', o['per_forward'], 1.0, '× forward', None, '≤ 1.15', o['per_forward'] <= 1.15))
            for peer, dist in (('pytorch-cka', 'pytorch_cka'), ('torch-cka', 'torch-cka')):
                p = by.get((mode, peer))
                if p: out.append(row(f"CKA {mode}-model ({a.preset} ViT, {a.n} images)", peer_version(dist), o[key], p[key],
                                     's' + (' CPU' if key == 'cpu_s' else ''), p['vs_ours'], '≥ 1.0', p['vs_ours'] >= 1.0,
                                     f"peak +MB {o['extra_mb']:.0f} vs {p['extra_mb']:.0f}; max|Δ| vs f64 {o['max_dev']:.1e} vs {p['max_dev']:.1e}"))
        print('wrote', write_results('cka', out, r0['device'], {'results': rows}))


if __name__ == '__main__':
    main()
