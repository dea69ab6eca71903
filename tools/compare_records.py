"""Re-certify records after a code change: compare the per-sample flags of re-made records with those they replace.

    python tools/compare_records.py NEW OLD [--all]
    python tools/compare_records.py --plan OLD


NEW and OLD are trees of result records laid out as `results/` is (the leaderboard's `<protocol>/*.json` and the grids'
`reproduce/<paper>/<scale>-<dataset>/<protocol>/*.json`). A record of NEW is matched to the record of OLD at the same
relative path, whose file stem names the protocol, the method with its pass rule, the seed and what was evaluated (run
hashes and test samples). For each pair it prints, per metric, the accuracy under both and how many samples' flags differ.
Exit status 1 when any pair differs in a flag, when their protocol settings differ, or (with --all) when a record of
OLD has no re-made twin in NEW; 0 otherwise. Identical flags are the evidence that a change did not move a number.

`--plan` sizes a re-certification before it starts: it groups the records under OLD by what their evaluation ran (the
protocol's settings hash, the defence, the kind of record) and prints, per group, its cheapest record and that record's
evaluation time, then the time to re-make every record against the time to re-make one per group.
"""
import argparse, sys
from pathlib import Path
import numpy as np


def by_key(folder) -> dict:
    "{path relative to `folder`: record} of every record in the tree under `folder`."
    from mimbench.results import ResultRecord
    folder = Path(folder)
    return {str(p.relative_to(folder)): ResultRecord.load(p) for p in sorted(folder.rglob('*.json'))} if folder.exists() else {}


def differences(new, old) -> list:
    "[(metric, accuracy new, accuracy old, samples whose flag differs)] for the metrics either record has flags for."
    from mimbench.results import unpack_flags
    out = []
    for m in sorted(set(new.flags) | set(old.flags)):
        if m not in new.flags or m not in old.flags:
            out.append((m, new.metrics.get(m), old.metrics.get(m), None)); continue
        a, b = unpack_flags(new.flags[m]), unpack_flags(old.flags[m])
        out.append((m, float(a.mean()), float(b.mean()), int((a != b).sum()) if len(a) == len(b) else None))
    return out


def compare(new_dir, old_dir, require_all:bool=False, log=print) -> int:
    "Print the comparison of the records under `new_dir` with those under `old_dir`; the exit status."
    new, old = by_key(new_dir), by_key(old_dir)
    if not new: log(f"no records under {new_dir}"); return 1
    bad = 0
    for key in sorted(new):
        if key not in old: log(f"new     {key} (no record of that evaluation under {old_dir})"); continue
        if new[key].protocol['hash'] != old[key].protocol['hash']:
            log(f"DIFFERS {key}: protocol settings {old[key].protocol['hash']} → {new[key].protocol['hash']}"); bad += 1; continue
        diffs = differences(new[key], old[key])
        moved = [d for d in diffs if d[3] != 0]
        bad += bool(moved)
        log(f"{'DIFFERS' if moved else 'same   '} {key}: " + ', '.join(
            f"{m} {100 * a:.1f} vs {100 * b:.1f}" + ('' if n == 0 else f" ({'?' if n is None else n} samples differ)")
            if a is not None and b is not None else f"{m} only in one" for m, a, b, n in diffs))
    missing = sorted(set(old) - set(new))
    for key in missing: log(f"{'MISSING' if require_all else 'not re-made'} {key}")
    log(f"{len(set(new) & set(old))} pairs compared, {bad} differ; {len(missing)} of {len(old)} old records not re-made")
    return int(bool(bad) or (require_all and bool(missing)))


def plan(old_dir, log=print) -> dict:
    """Per group of records that ran the same evaluation code path: the cheapest one to re-make; the totals in seconds.
    A record `reproduce` copied from a leaderboard twin (`extra['same_evaluation_as']`) is re-made with its twin: not counted."""
    groups = {}
    for key, rec in by_key(old_dir).items():
        if 'same_evaluation_as' in rec.extra: continue
        g = (rec.protocol['name'], rec.protocol['hash'], rec.evaluated.get('defense') or '-', rec.kind)
        groups.setdefault(g, []).append((sum(rec.seconds.values()), key))
    for (name, h, defense, kind), recs in sorted(groups.items()):
        s, key = min(recs)
        log(f"{name:<26} {h[:10]} {defense:<7} {kind:<7} {len(recs):3d} records; cheapest {s / 60:6.1f} min: {key}")
    out = {'records': sum(map(len, groups.values())), 'groups': len(groups),
           'all_s': sum(s for recs in groups.values() for s, _ in recs), 'one_per_group_s': sum(min(recs)[0] for recs in groups.values())}
    log(f"{out['records']} records in {out['groups']} groups: re-making all takes {out['all_s'] / 3600:.1f} h of evaluation, "
        f"one per group {out['one_per_group_s'] / 3600:.1f} h (the records' own times; training not included)")
    return out


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('new', nargs='?'); p.add_argument('old')
    p.add_argument('--all', action='store_true', help='fail when a record of OLD has no re-made twin in NEW')
    p.add_argument('--plan', action='store_true', help='only OLD: the cheapest record per evaluation group and the time to re-make')
    a = p.parse_args()
    if a.plan:
        if a.new is not None: p.error('--plan takes one folder (OLD), e.g. `--plan results`')
        plan(a.old); sys.exit(0)
    if a.new is None: p.error('give NEW and OLD, or --plan OLD')
    sys.exit(compare(a.new, a.old, a.all))
