"""Where AutoAttack's time goes: the wall seconds of each stage (APGD-CE → APGD-T → FAB-T → Square, cascaded) on a model.

    python bench/aa_stages.py RUN_DIR [--n 200] [--eps 4/255] [--threads 1]

RUN_DIR is a fine-tuned run (e.g. one of `mimbench leaderboard --run`'s), so that points survive APGD-CE and the later
stages do real work. The seconds are `robust_accuracy`'s per-attack timings; run it on an idle machine (other jobs on
the same cores inflate every stage). Issue 16's lead: FAB-T is the torchattacks adapter, so its share of the time is
the same in both libraries and bounds what the other stages can win.
"""
import argparse, json, time
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('run'); ap.add_argument('--n', type=int, default=200); ap.add_argument('--eps', default='4/255')
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--split', default='test')
    a = ap.parse_args(argv)
    from mimbench.evaluate import _checkpoint_data, robust_accuracy
    torch.set_num_threads(a.threads)
    model, ds, _ = _checkpoint_data(a.run, None, a.split, None, 'cpu')
    t = time.time()
    rep = robust_accuracy(model, ds, ['apgd-ce', 'apgd-t', 'fab-t', 'square'], [a.eps], 'linf', n=a.n, cascade=True,
                          seed=0, progress=False)
    wall, sec = time.time() - t, rep.seconds[a.eps]
    total = sum(sec.values())
    print(f"AutoAttack standard, ℓ∞ {a.eps}, n = {a.n}, {a.threads} thread(s): {wall:.1f} s wall, "
          f"robust {100 * sum(rep.robust[a.eps]) / a.n:.1f} %")
    for stage, s in sec.items(): print(f"  {stage:<8} {s:7.1f} s  {100 * s / total:5.1f} %")
    return 0


if __name__ == '__main__': main()
