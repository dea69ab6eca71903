"""What `--workers` buys: the wall time of the same `reproduce` jobs run by one process (all cores) and by N workers
(cores / N threads each), in one sitting, each from nothing; prints the ratio.

    python bench/workers.py [--paper nim-de3] [--arms mae,nim] [--evaluations fgsm] [--scale micro] [--workers 2] [--save]

Both ways train and evaluate everything in fresh temporary run and results folders, so they do the same work; their
records are then compared flag by flag (the thread counts differ, so floating-point order may flip a few flags). The
default is a micro smoke run of two independent jobs (seconds each, so process start-up weighs on it); `--scale small`
with two arms measures what a long sitting gains. Run it on an idle machine: other jobs on the cores make both times
meaningless (the load average before each way is recorded). `--save` writes bench/results/workers-cpu.json for the
README's speed table.
"""
import argparse, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, row, write_results


def run_once(paper, scale, arms, evaluations, workers, seeds=None) -> dict:
    "One `reproduce` of the jobs from nothing with `workers`: wall seconds, runs trained, records made and their flags."
    from mimbench.reproduce import reproduce
    from mimbench.results import unpack_flags
    with tempfile.TemporaryDirectory() as d:
        load, t0 = load_average(), time.perf_counter()
        res = reproduce(paper, scale, out=f"{d}/runs", results=f"{d}/results", seeds=seeds, arms=arms, evaluations=evaluations,
                        workers=workers, log=lambda *a: None)
        wall = time.perf_counter() - t0
        flags = {(r.protocol['name'], r.method, r.seed, k): unpack_flags(v) for r in res.records for k, v in r.flags.items()}
    return {'wall': wall, 'trained': len(res.trained), 'made': len(res.evaluated), 'flags': flags, 'load_before': load}


def flag_agreement(a:dict, b:dict) -> float:
    "The share of per-sample flags equal in two runs' records (the same keys in both, else ValueError)."
    if set(a) != set(b): raise ValueError(f"the two ways made different records: {sorted(set(a) ^ set(b))}")
    same = sum(int((a[k] == b[k]).sum()) for k in a); total = sum(len(a[k]) for k in a)
    return same / total if total else 1.


def measure(paper='nim-de3', arms=('mae', 'nim'), evaluations=('fgsm',), scale='micro', workers=2, seeds=None) -> dict:
    "Wall seconds one process vs `workers` workers on the same jobs, their ratio and the records' flag agreement."
    from mimbench.leaderboard import usable_cores
    one = run_once(paper, scale, list(arms), list(evaluations), 1, seeds)
    many = run_once(paper, scale, list(arms), list(evaluations), workers, seeds)
    if (one['trained'], one['made']) != (many['trained'], many['made']):
        raise RuntimeError(f"the two ways did different work: one process {one['trained']} runs / {one['made']} records, "
                           f"{workers} workers {many['trained']} / {many['made']}")
    return {'one_process_s': one['wall'], 'workers_s': many['wall'], 'speedup': one['wall'] / many['wall'],
            'runs': one['trained'], 'records': one['made'], 'flag_agreement': flag_agreement(one['flags'], many['flags']),
            'load_before': [one['load_before'], many['load_before']], 'cores': usable_cores()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--paper', default='nim-de3'); ap.add_argument('--arms', default='mae,nim')
    ap.add_argument('--evaluations', default='fgsm'); ap.add_argument('--scale', default='micro')
    ap.add_argument('--workers', type=int, default=2); ap.add_argument('--seeds', type=int, default=None)
    ap.add_argument('--save', action='store_true', help='write bench/results/workers-cpu.json for the speed table')
    ap.add_argument('--out', default=None, help='folder for --save (default bench/results)')
    a = ap.parse_args(argv)
    arms, evs = [x.strip() for x in a.arms.split(',')], [x.strip() for x in a.evaluations.split(',')]
    m = measure(a.paper, arms, evs, a.scale, a.workers, a.seeds)
    what = f"reproduce {a.paper} @ {a.scale}: {', '.join(arms)} · {', '.join(evs)} ({m['runs']} runs, {m['records']} records) with {a.workers} workers"
    print(f"{what}\n  one process: {m['one_process_s']:.1f} s   {a.workers} workers: {m['workers_s']:.1f} s   "
          f"ratio {m['speedup']:.2f}×   flags equal: {100 * m['flag_agreement']:.2f} %   load before: {m['load_before']}")
    if a.save:
        r = row(what, 'the same jobs in one process (all cores)', m['workers_s'], m['one_process_s'], 's wall', m['speedup'],
                note=f"{m['cores']} cores; flags equal {100 * m['flag_agreement']:.1f} %")
        print('wrote', write_results('workers', [r], 'cpu', {'measured': m}, a.out))
    return m


if __name__ == '__main__':
    main()
