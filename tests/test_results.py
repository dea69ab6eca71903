"Result records: recomputation from flags, provenance, what makes a record stale (the leaderboard: tests/test_leaderboard.py)."
from dataclasses import asdict
from pathlib import Path
import numpy as np
import pytest
from mimbench.results import PROTOCOLS, ResultRecord, check_record, load_records, make_record, unpack_flags, wilson_interval

ROOT = Path(__file__).parent.parent

def _rec(method, seed, flags, **ev):
    return make_record(method, PROTOCOLS['clean-ft'], {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test',
                       'sample_digest': 's', **ev}, seed, flags)

def test_committed_records_recompute_from_their_flags():
    """Every committed record (the leaderboard's and the `reproduce` grids' under results/reproduce/, which the tutorials'
    verdicts come from) states exactly what its per-sample flags give, with the Wilson interval and full provenance."""
    paths = sorted((ROOT / 'results').rglob('*.json'))
    grids = [p for p in paths if 'reproduce' in p.relative_to(ROOT / 'results').parts]
    assert len(paths) >= 85 and len(grids) >= 59, (len(paths), len(grids))     # as committed on 2026-11-30; records only accrue
    for rec in map(ResultRecord.load, paths):
        assert check_record(rec) == [], rec.key
        for m, packed in rec.flags.items():
            f = unpack_flags(packed)
            assert rec.metrics[m] == pytest.approx(f.mean(), abs=1e-12)
            assert rec.interval[m] == pytest.approx(list(wilson_interval(int(f.sum()), len(f))))
        assert rec.provenance['commit'] is None or len(rec.provenance['commit']) == 40

def test_records_do_not_go_stale_when_nbdev_rewrites_its_index(monkeypatch):
    "Fails on the old code: mimbench._modidx (rewritten by every nbdev_export) was in a record's code, so any export made every record stale."
    import mimbench.codever as codever                  # where code versions are computed (no torch)
    rec = _rec('mae', 0, {'clean': np.arange(20) % 3 > 0})
    assert 'mimbench._modidx' not in rec.provenance['code']['modules'] and 'mimbench.attacks' in rec.provenance['code']['modules']
    real = codever.module_source
    monkeypatch.setattr(codever, 'module_source', lambda n: (real(n) or '') + ('\n# one more symbol' if n == 'mimbench._modidx' else ''))
    assert rec.stale_reasons() == []
    monkeypatch.setattr(codever, 'module_source', lambda n: (real(n) or '') + ('\n# %% ../nbs/05_attacks.ipynb #new cell\n# reworded' if n == 'mimbench.attacks' else ''))
    assert rec.stale_reasons() == []                                           # a comment or an nbdev cell marker is not code
    monkeypatch.setattr(codever, 'module_source', lambda n: (real(n) or '') + ('\nCHANGED = 1' if n == 'mimbench.attacks' else ''))
    assert rec.stale_reasons() == ['mimbench.attacks changed']                 # a change to code that computes still counts

def test_check_record_catches_edits():
    rng = np.random.default_rng(0)
    rec = _rec('mae', 0, {'clean': rng.random(300) < .7, 'robust@2/255': rng.random(300) < .3})
    assert check_record(rec) == []
    edited = ResultRecord(**{**asdict(rec), 'metrics': {**rec.metrics, 'robust@2/255': 0.5}})
    assert any('robust@2/255' in p for p in check_record(edited))
    no_commit = ResultRecord(**{**asdict(rec), 'provenance': {k: v for k, v in rec.provenance.items() if k != 'commit'}})
    assert check_record(no_commit) == ["provenance lacks 'commit'"]
    widened = ResultRecord(**{**asdict(rec), 'interval': {**rec.interval, 'clean': [0., 1.]}})
    assert any('Wilson' in p for p in check_record(widened))

def test_record_code_covers_the_defences_and_not_the_leaderboard():
    "Fails if a record's digest loses `defenses` (De³'s pipeline: it came in only through the leaderboard's code once) or gains `leaderboard` (a display change would stale every record)."
    from mimbench.attacks import ATTACKS
    from mimbench.results import record_code
    mods = record_code(list(ATTACKS))['modules']
    assert 'mimbench.defenses' in mods and 'mimbench.results' in mods
    assert 'mimbench.leaderboard' not in mods and 'mimbench.reproduce' not in mods
