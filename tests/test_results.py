"Result records and the leaderboard: recomputation from flags, provenance, refusals, an incremental micro run, the CLI."
import json, subprocess, sys
from dataclasses import asdict
from pathlib import Path
import numpy as np
import pytest
from mimbench.results import (PROTOCOLS, ResultRecord, check_record, leaderboard, leaderboard_text, load_records,
                              make_record, run_leaderboard, unpack_flags, wilson_interval)

ROOT = Path(__file__).parent.parent

def _rec(method, seed, flags, **ev):
    return make_record(method, PROTOCOLS['clean-ft'], {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test',
                       'sample_digest': 's', **ev}, seed, flags)

def test_committed_records_recompute_from_their_flags():
    "Every committed record states exactly what its per-sample flags give, with the Wilson interval and full provenance."
    for rec in load_records(ROOT / 'results'):
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

def test_leaderboard_refuses_mixing():
    f = np.ones(100, bool)
    a, b = _rec('mae', 0, {'clean': f}), _rec('x', 0, {'clean': f})
    with pytest.raises(ValueError, match='test samples'): leaderboard([a, _rec('x', 0, {'clean': f}, sample_digest='other')])
    other_prot = ResultRecord(**{**asdict(b), 'protocol': {**b.protocol, 'hash': 'different'}})
    with pytest.raises(ValueError, match='protocol settings'): leaderboard([a, other_prot])
    code = {**b.provenance['code'], 'digest': 'x' * 12, 'modules': {**b.provenance['code']['modules'], 'mimbench.evaluate': 'x'}}
    stale = ResultRecord(**{**asdict(b), 'provenance': {**b.provenance, 'code': code, 'code_digest': 'x' * 12}})
    assert stale.stale_reasons() == ['mimbench.evaluate changed']
    lb = leaderboard([a, stale])                               # stale: left out and named, never averaged in
    assert [r['method'] for r in lb.rows] == ['mae'] and lb.stale == [stale.key]
    with pytest.raises(ValueError, match='code versions'): leaderboard([a, stale], include_stale=True)

def test_micro_run_is_incremental_and_resumable(tmp_path):
    "The micro plan for two methods trains, evaluates and records them; the same call again finds the records."
    kw = dict(root=tmp_path / 'results', out=tmp_path / 'runs', progress=False, log=lambda *_: None)
    s1 = run_leaderboard('micro', ['clean-ft'], ['mae', 'scratch'], **kw)
    assert s1['done'] == 2 and s1['todo'] == 2
    recs = load_records(tmp_path / 'results')
    assert sorted(r.method for r in recs) == ['mae', 'scratch']
    for r in recs:
        assert check_record(r) == [] and r.n == 16 and not r.is_stale()
        assert r.evaluated['runs'][0]['task'] == 'finetune' and 'mCA' in r.extra
        assert {'clean', 'robust@4/255'} <= set(r.flags)          # clean flags too, so McNemar can pair clean accuracy
    assert {r.evaluated['runs'][0].get('init', {}).get('recipe') for r in recs} == {'mae', None}
    s2 = run_leaderboard('micro', ['clean-ft'], ['mae', 'scratch'], **kw)
    assert s2['todo'] == 0 and s2['done'] == 0
    txt = leaderboard_text(tmp_path / 'results')
    assert '| mae |' in txt and '| scratch |' in txt and 'Δ' in txt
    # a budget of zero minutes stops before the first job, cleanly
    s3 = run_leaderboard('micro', ['clean-ft'], ['nim'], max_minutes=0, **kw)
    assert s3['done'] == 0 and s3['todo'] == 1

def test_cli_leaderboard(tmp_path):
    rng = np.random.default_rng(0)
    for m in ('mae', 'other'):
        for s in range(2): _rec(m, s, {'clean': rng.random(200) < .8}).save(tmp_path)
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent / 'mimbench'), 'leaderboard', '--root', str(tmp_path), *a],
                                    capture_output=True, text=True)
    p = run()
    assert p.returncode == 0, p.stderr
    assert '| other | 2 |' in p.stdout
    p = run('--format', 'csv'); assert p.returncode == 0 and p.stdout.startswith('method,seeds')
    p = run('--format', 'pdf'); assert p.returncode == 1 and 'md, csv or html' in p.stderr
    p = run('--run', '--scale', 'micro', '--methods', 'mae', '--dry-run', '--out', str(tmp_path / 'runs'))
    assert p.returncode == 0 and '3 to run' in p.stdout, p.stdout + p.stderr     # mae: clean-ft, adv-ft and the randomized control
    assert 'randomized' in p.stdout and not (tmp_path / 'runs').exists()             # a dry run trains nothing
