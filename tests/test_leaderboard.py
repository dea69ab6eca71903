"The leaderboard: refusals, the mCA comparison, every commit in the footer, one fine-tuning budget per protocol, an incremental micro run, the CLI."
import subprocess, sys
from dataclasses import asdict, replace
from pathlib import Path
import numpy as np
import pytest
from mimbench.corruptions import mca_table
from mimbench.leaderboard import leaderboard, leaderboard_text, plan_jobs, run_leaderboard
from mimbench.results import PROTOCOLS, ResultRecord, check_record, load_records, make_record
from mimbench.train import run_hash

def _rec(method, seed, flags, **ev):
    return make_record(method, PROTOCOLS['clean-ft'], {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test',
                       'sample_digest': 's', **ev}, seed, flags)

def _mca_records(rng, n=200) -> list:
    "Clean-ft records of mae and other over two seeds, with the per-image corruption counts `evaluate_protocol` keeps."
    out = []
    for m in ('mae', 'other'):
        for s in range(2):
            cc = rng.integers(0, 76, n)                   # cells right of 15 corruptions × 5 severities, per image
            out.append(replace(_rec(m, s, {'clean': rng.random(n) < .8}),
                               extra={'corrupt_correct': cc.tolist(), 'cells': 75, 'mCA': float(cc.mean() / 75)}))
    return out

def _cli(root, *a):
    return subprocess.run([str(Path(sys.executable).parent / 'mimbench'), 'leaderboard', '--root', str(root), *a],
                          capture_output=True, text=True)

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

def test_micro_run_with_two_workers(tmp_path, capfd):
    "Two worker processes make the planned records: one job in each process, every record valid; a second call finds them."
    kw = dict(root=tmp_path / 'results', out=tmp_path / 'runs', progress=False, log=print)
    s = run_leaderboard('micro', ['clean-ft'], ['mae', 'scratch'], workers=2, **kw)
    assert s['done'] == 2 and s['todo'] == 2 and len(s['seconds']['evaluate']) == 2
    out = capfd.readouterr().out
    assert '2 workers, ' in out and '[worker 1] [1/1]' in out and '[worker 2] [1/1]' in out, out   # one job in each process
    recs = load_records(tmp_path / 'results')
    assert sorted(r.method for r in recs) == ['mae', 'scratch'] and all(check_record(r) == [] for r in recs)
    assert run_leaderboard('micro', ['clean-ft'], ['mae', 'scratch'], workers=2, **kw)['todo'] == 0

def test_micro_de3_job_records_the_defended_pipeline(tmp_path):
    "The randomized track's De³ job end to end: NIM pretraining → De³ fine-tuning → the eval-mode pipeline, 1 and 5 passes."
    kw = dict(root=tmp_path / 'results', out=tmp_path / 'runs', progress=False, log=lambda *_: None, seeds=[0])
    s = run_leaderboard('micro', ['randomized'], ['de3'], **kw)
    recs = load_records(tmp_path / 'results')
    assert s['done'] == 1 and len(recs) == 2 and all(check_record(r) == [] for r in recs)
    assert sorted(r.extra.get('passes') for r in recs) == [1, 5]
    for r in recs:
        sigma = [j for j in plan_jobs('micro', ['randomized'], ['de3'], kw['out'], seeds=[0])][0].sigma
        assert {k: v for k, v in r.evaluated.items() if k in ('defense', 'sigma')} == {'defense': 'de3', 'sigma': sigma}
        assert [x['recipe'] for x in r.evaluated['runs']] == ['nim', 'de3']       # denoiser first, then the classifier
    assert run_leaderboard('micro', ['randomized'], ['de3'], **kw)['todo'] == 0

def test_cli_leaderboard(tmp_path):
    rng = np.random.default_rng(0)
    for m in ('mae', 'other'):
        for s in range(2): _rec(m, s, {'clean': rng.random(200) < .8}).save(tmp_path)
    run = lambda *a: _cli(tmp_path, *a)
    p = run()
    assert p.returncode == 0, p.stderr
    assert '| other | 2 |' in p.stdout
    p = run('--format', 'csv'); assert p.returncode == 0 and p.stdout.startswith('method,seeds')
    p = run('--format', 'pdf'); assert p.returncode == 1 and 'md, csv or html' in p.stderr
    p = run('--run', '--scale', 'micro', '--methods', 'mae', '--dry-run', '--out', str(tmp_path / 'runs'))
    assert p.returncode == 0 and '3 to run' in p.stdout, p.stdout + p.stderr     # mae: clean-ft, adv-ft and the randomized control
    assert 'randomized' in p.stdout and not (tmp_path / 'runs').exists()             # a dry run trains nothing
    p = run('--run', '--protocol', 'clean-ft', '--methods', 'mae', '--seeds', '2', '--dry-run', '--out', str(tmp_path / 'runs'))
    assert p.returncode == 0 and '3 jobs' not in p.stdout and ' seed 2 ' in p.stdout and ' seed 0 ' not in p.stdout, p.stdout + p.stderr
    p = run('--run', '--scale', 'micro', '--protocol', 'clean-ft', '--methods', 'mae,scratch', '--workers', '2', '--dry-run',
            '--out', str(tmp_path / 'runs'))
    assert p.returncode == 0 and '  worker 1: 1 jobs' in p.stdout and '  worker 2: 1 jobs' in p.stdout, p.stdout + p.stderr
    p = run('--run', '--methods', 'mae', '--seeds', 'two', '--dry-run', '--out', str(tmp_path / 'runs'))
    assert p.returncode == 1 and '--seeds takes seed numbers' in p.stderr, p.stdout + p.stderr

def test_cli_prints_the_mca_comparison(tmp_path):
    "Fails if `mimbench leaderboard` leaves out the mCA table of records with corruption metrics (once only the README and the tutorial showed it)."
    recs = _mca_records(np.random.default_rng(0))
    for r in recs: r.save(tmp_path)
    p = _cli(tmp_path)
    assert p.returncode == 0, p.stderr
    assert mca_table(recs) in p.stdout and '| other | 2 |' in p.stdout      # corruptions.mca_table's rendering, whole
    assert p.stdout.count('| method | seeds | mCA (%) | Δ mCA vs mae |') == 1
    assert p.stdout.index('| other | 2 |') < p.stdout.index('mCA (%)') < p.stdout.index('\ncode ')   # under the table
    p = _cli(tmp_path, '--format', 'csv')
    assert p.returncode == 0 and 'mCA' not in p.stdout                       # csv: the flag table only, as documented

def test_footer_names_every_commit():
    "Fails when the footer names one commit for records made at several (it once showed the first record's only)."
    rng = np.random.default_rng(0)
    recs = [_rec(m, 0, {'clean': rng.random(100) < .8}) for m in ('mae', 'other', 'third')]
    at = lambda r, commit, dirty: replace(r, provenance={**r.provenance, 'commit': commit, 'dirty': dirty})
    recs = [at(recs[0], 'a' * 40, False), at(recs[1], 'b' * 40, True), at(recs[2], 'a' * 40, False)]
    footer = leaderboard(recs).to_markdown().splitlines()[-1]
    assert f"commits {'a' * 10}, {'b' * 10} (dirty) · " in footer and footer.startswith('code ')
    assert f"commit {'a' * 10} · " in leaderboard(recs[::2]).to_markdown()

def test_randomized_control_is_the_clean_ft_classifier():
    "Fails on the old plan: the randomized track's MAE control was fine-tuned without clean-ft's label smoothing, a second classifier."
    jobs = plan_jobs('small')
    job = lambda prot, seed: next(j for j in jobs if j.protocol == prot and j.method.name == 'mae' and j.seed == seed)
    for seed in range(3):
        assert run_hash(job('randomized', seed).finetune) == run_hash(job('clean-ft', seed).finetune)   # one cached run
    for prot in PROTOCOLS:                                   # every arm of a protocol: the protocol's label smoothing
        smoothing = {j.finetune.recipe_args.get('label_smoothing') for j in jobs if j.protocol == prot}
        assert smoothing == {PROTOCOLS[prot].finetune.get('recipe_args', {}).get('label_smoothing')}, (prot, smoothing)
    de3 = next(j for j in jobs if j.method.name == 'de3')
    assert de3.finetune.recipe == 'de3' and de3.finetune.recipe_args['label_smoothing'] == 0.1 and 'denoiser' in de3.finetune.recipe_args

def _fake_runs(out:Path, prefix:str, n:int):
    "`n` finished fine-tuning runs under `out`, as `train` leaves them (config.json, result.json with its time)."
    from mimbench.train import TrainConfig
    import json
    for k in range(n):
        d = out / f"{prefix}-{k:03d}"; d.mkdir(parents=True)
        (d / 'config.json').write_text(json.dumps(asdict(TrainConfig(task='finetune', recipe='ce', preset='micro', seed=k))))
        (d / 'result.json').write_text(json.dumps({'time_s': float(k + 1)}))

def test_timing_ledger_loses_nothing_to_concurrent_commands(tmp_path):
    """120 harvests of one run folder each, four processes at a time, into one ledger (each reads, merges, rewrites it):
    every run is kept. Without the lock, some harvests overwrite others' (seen here: the test then fails)."""
    import multiprocessing
    from mimbench.leaderboard import read_timings, save_timings
    outs = [tmp_path / f"runs{k}" for k in range(120)]
    for k, out in enumerate(outs): _fake_runs(out, f"w{k}", 1)
    with multiprocessing.get_context('spawn').Pool(4) as pool:
        added = pool.starmap(save_timings, [(str(o), str(tmp_path / 'results')) for o in outs], chunksize=1)
    assert added == [1] * 120
    assert sorted(read_timings(tmp_path / 'results')) == sorted(f"w{k}-000" for k in range(120))
    assert not list((tmp_path / 'results').glob('.*.tmp'))               # no temporary file left behind
