"""`reproduce` end to end at micro scale: records exist and recompute from their flags, the report shows the paper's
numbers beside ours with a verdict per comparison, a second call trains and evaluates nothing, `max_minutes` stops
without losing what is done, and the CLI runs the grid."""
import json, time
from dataclasses import replace
import numpy as np
import pytest
import mimbench.train
from mimbench.results import load_records, check_record, unpack_flags
from mimbench.reproduce import GRIDS, reproduce, cli_reproduce, compare_records, records_of
from mimbench.models import PRESETS

VERDICTS = ('**held**', '**not held**', '**inconclusive**')

def trimmed(paper, arms, evaluations):
    "`paper`'s grid cut down to some arms and evaluations, with the comparisons among them."
    g = GRIDS[paper]
    ok = lambda c: c.a in arms and c.b in arms and all(e is None or e in evaluations for e in (c.evaluation, c.b_evaluation))
    return replace(g, arms=tuple(g.arm(a) for a in arms), evaluations=tuple(g.evaluation(e) for e in evaluations),
                   comparisons=tuple(c for c in g.comparisons if ok(c)))

def assert_rows_follow_the_records(paper, res):
    """Each report row compares the comparison's own arms (a, then b) under its evaluations: its verdict and accuracies are
    what the records give (a row that swapped a and b, or read another evaluation, gives another verdict or numbers)."""
    assert len(res.rows) == len(GRIDS[paper].comparisons) and res.verdicts == {r['comparison'].claim: r['verdict'] for r in res.rows}
    for row in res.rows:
        c = row['comparison']
        if row['evaluation'] is None: assert row['verdict'] == 'inconclusive'; continue
        ra, rb = (records_of(res.records, paper, ev, arm, c.seeds) for ev, arm in ((row['evaluation'], c.a), (row['evaluation_b'], c.b)))
        if c.seeds and not (ra and rb):                         # a registered comparison reads only the seeds that test it
            assert row['verdict'] == 'inconclusive' and row['reason'].startswith('no records yet of seeds'); continue
        assert ra and rb and {r.method for r in ra} == {c.a} and {r.method for r in rb} == {c.b}
        want = compare_records(ra, rb, row['metric'], row['metric_b'])
        assert row['verdict'] == want['verdict'] and row.get('test') == want.get('test'), c.claim
        if row['metric'] in ra[0].flags:                       # a paired test's numbers are those of the seeds it pairs
            tested = lambda rs: [r for r in rs if 'seeds' not in row or r.seed in row['seeds']]
            assert row['acc_a'] == pytest.approx(np.mean(np.concatenate([unpack_flags(r.flags[row['metric']]) for r in tested(ra)])))
            assert row['acc_b'] == pytest.approx(np.mean(np.concatenate([unpack_flags(r.flags[row['metric_b']]) for r in tested(rb)])))

def trimmed_nim_de3():
    "nim-de3 with three arms (MAE, NIM and the De³ defence) and its FGSM evaluation: every stage, in seconds."
    return trimmed('nim-de3', ('mae', 'nim', 'de3 σ=70'), ('fgsm',))

@pytest.fixture
def counted_train(monkeypatch):
    "mimbench.train.train, counting the runs it is asked for."
    calls, real = [], mimbench.train.train
    def train(cfg, *a, **kw): calls.append(cfg); return real(cfg, *a, **kw)
    monkeypatch.setattr(mimbench.train, 'train', train)
    return calls

def test_reproduce_micro_trimmed(tmp_path, monkeypatch, counted_train):
    monkeypatch.setitem(GRIDS, 'nim-de3', trimmed_nim_de3())
    kw = dict(out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    stopped = reproduce('nim-de3', 'micro', max_minutes=0, **kw)             # stops before the first stage
    assert (stopped.complete, stopped.trained, stopped.evaluated, counted_train) == (False, [], [], [])
    assert 'Incomplete' in stopped.report.read_text()

    res = reproduce('nim-de3', 'micro', **kw)
    assert res.complete and len(res.trained) == 5 and len(counted_train) == 5          # mae, nim: pretrain + finetune; de3: finetune (NIM shared)
    recs = load_records(res.folder)
    assert len(recs) == len(res.records) == len(res.evaluated) == 3                  # 3 arms × 1 evaluation × 1 seed
    assert {r.method for r in recs} == {'mae', 'nim', 'de3 σ=70'}
    for r in recs:
        assert check_record(r) == [], r.key
        assert set(r.metrics) == {'clean', 'robust@4/255'} and r.n == 16
    de3 = next(r for r in recs if r.method == 'de3 σ=70')
    assert de3.evaluated['defense'] == 'de3' and len(de3.evaluated['runs']) == 2 and de3.extra['passes'] == 5

    text = res.report.read_text()
    assert '| paper a | paper b | ours a | ours b |' in text and '31.66' in text     # the paper's FGSM row beside ours
    rows = [l for l in text.splitlines() if l.startswith('| ') and any(v in l for v in VERDICTS)]
    assert len(rows) == len(GRIDS['nim-de3'].comparisons) == len(res.verdicts)
    assert_rows_follow_the_records('nim-de3', res)
    assert res.figure.exists() and res.figure.stat().st_size > 1000

    mtimes = {p: p.stat().st_mtime_ns for p in res.folder.rglob('*.json')}
    n_calls = len(counted_train)
    again = reproduce('nim-de3', 'micro', **kw)                                       # everything is reused
    assert (again.trained, again.evaluated, len(counted_train)) == ([], [], n_calls)
    assert {p: p.stat().st_mtime_ns for p in res.folder.rglob('*.json')} == mtimes
    assert again.verdicts == res.verdicts and len(again.records) == 3

    for p in res.folder.rglob('*--de3_σ_70--*.json'): p.unlink()                               # De³ must be evaluated again:
    lines = []                                                                        # its time is not the bare models'
    reproduce('nim-de3', 'micro', **{**kw, 'log': lines.append})
    eta = next(l for l in lines if 'evaluate fgsm · de3' in l)
    assert 'nothing timed yet of 1 × evaluate nim-de3.fgsm n=16 de3' in eta, eta

def test_cli_runs_the_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(GRIDS, 'nim-de3', trimmed_nim_de3())
    cli_reproduce('nim-de3', scale='micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), no_progress=True)
    out = capsys.readouterr().out
    assert 'report:' in out and any(v in out for v in ('held', 'inconclusive'))
    assert (tmp_path / 'results' / 'reproduce' / 'nim-de3' / 'micro-fashion-mnist' / 'report.md').exists()

def test_cli_runs_part_of_the_grid(tmp_path):
    "`--arms`/`--evaluations`: only those records are made (and only their runs trained); the report still lists every comparison."
    import subprocess, sys
    from pathlib import Path
    cmd = [str(Path(sys.executable).parent / 'mimbench'), 'reproduce', 'nim-de3', '--scale', 'micro', '--out', str(tmp_path / 'runs'),
           '--results', str(tmp_path / 'results'), '--no-progress']
    p = subprocess.run(cmd + ['--arms', 'mae,nim', '--evaluations', 'fgsm'], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    folder = tmp_path / 'results' / 'reproduce' / 'nim-de3' / 'micro-fashion-mnist'
    recs = load_records(folder)
    assert sorted((r.protocol['name'], r.method) for r in recs) == [('nim-de3.fgsm', 'mae'), ('nim-de3.fgsm', 'nim')]
    assert sorted(d.name.split('-')[1] for d in (tmp_path / 'runs').iterdir() if (d / 'result.json').exists()) == ['ce', 'ce', 'mae', 'nim']
    report = (folder / 'report.md').read_text()
    assert all(c.claim in report for c in GRIDS['nim-de3'].comparisons)
    p = subprocess.run(cmd + ['--arms', 'mae, de3 σ=70', '--evaluations', 'fgsm', '--dry-run'], capture_output=True, text=True)
    assert p.returncode == 0 and '1 with work' in p.stdout, p.stdout + p.stderr     # a name with a space and '=', after ', '
    p = subprocess.run(cmd + ['--arms', 'mae,nmi'], capture_output=True, text=True)
    assert p.returncode == 1 and "nim-de3's grid has no arm 'nmi'; its arms: mae," in p.stderr, p.stdout + p.stderr

def test_two_workers_run_the_grid(tmp_path, monkeypatch, capfd):
    "`workers=2`: MAE's and NIM's jobs (no run in common) in two processes under the caller's trimmed grid; the report from both."
    monkeypatch.setitem(GRIDS, 'nim-de3', trimmed('nim-de3', ('mae', 'nim'), ('fgsm',)))
    kw = dict(out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'))
    res = reproduce('nim-de3', 'micro', workers=2, **kw)
    out = capfd.readouterr().out
    assert '2 workers, ' in out and '[worker 1] [1/1] pretrain' in out and '[worker 2] [1/1] pretrain' in out, out
    assert sorted(r.method for r in res.records) == ['mae', 'nim'] and sorted(res.evaluated) == sorted(r.key for r in res.records)
    assert len(res.trained) == 4 and res.complete and all(check_record(r) == [] for r in res.records)
    assert_rows_follow_the_records('nim-de3', res)
    again = reproduce('nim-de3', 'micro', workers=2, log=lambda *a: None, **kw)
    assert (again.trained, again.evaluated, again.verdicts) == ([], [], res.verdicts)

def test_reproduce_refuses_a_broken_grid(tmp_path, monkeypatch):
    "A grid whose dry run finds problems trains nothing and says what is wrong."
    from mimbench.reproduce import Evaluation
    g = trimmed_nim_de3()
    monkeypatch.setitem(GRIDS, 'nim-de3', replace(g, evaluations=(Evaluation('typo', ('pgdd',), ('4/255',)),)))
    with pytest.raises(ValueError, match="unknown attack 'pgdd'"):
        reproduce('nim-de3', 'micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    assert not (tmp_path / 'runs').exists()

@pytest.mark.parametrize('paper,arms,evaluation', [
    ('rebuffi', ('mae ld0.75', 'adv-mae l2 0.5 ld0.75'), 'shift'),        # clean flags + mCA in extra
    ('adpe', ('mae', 'mae-plus'), 'linear-probe'),                          # probe flags + attention distance
])
def test_evaluation_kinds(paper, arms, evaluation, tmp_path, monkeypatch):
    monkeypatch.setitem(GRIDS, paper, trimmed(paper, arms, (evaluation,)))
    res = reproduce(paper, 'micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    assert sorted(r.method for r in res.records) == sorted(arms)
    for r in res.records: assert check_record(r) == [], r.key
    by = {r.method: r for r in res.records}
    if evaluation == 'shift':
        assert all(set(r.metrics) == {'clean'} and 0 <= r.extra['mCA'] <= 1 and len(r.extra['per_corruption']) >= 10 for r in res.records)
        row = res.rows[0]                                      # mCA: each image's share of corruption cells, paired t-test
        assert row['metric'] == 'mCA' and row['test'] == 'paired-t' and row['n'] == 16
        assert row['acc_a'] == pytest.approx(by[row['comparison'].a].extra['mCA'], abs=1e-12)
        assert row['verdict'] == ('held' if row['interval'][0] > 0 else 'not held' if row['interval'][1] < 0 else 'inconclusive')
    if evaluation == 'linear-probe':
        assert all(set(r.metrics) == {'linear-probe'} and len(r.extra['mean_attention_distance']) == PRESETS['micro'].depth for r in res.records)
        assert all(r.evaluated['runs'][0]['task'] == 'pretrain' for r in res.records)
    assert '**' in res.report.read_text()
    assert_rows_follow_the_records(paper, res)

def test_ttfp_masking_check(tmp_path, monkeypatch):
    "TTFP under the adaptive attacks and under the same plus transfer and Square: paired, the extra attacks only remove points."
    from mimbench.results import unpack_flags
    monkeypatch.setitem(GRIDS, 'huang', trimmed('huang', ('mae', 'mae+ttfp'), ('ttfp-adaptive', 'ttfp-full')))
    res = reproduce('huang', 'micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    by = {(r.protocol['name'], r.method): r for r in res.records}
    assert set(by) == {(f'huang.{e}', a) for e in ('ttfp-adaptive', 'ttfp-full') for a in ('mae', 'mae+ttfp')}
    for r in res.records: assert check_record(r) == [], r.key
    t = by['huang.ttfp-full', 'mae+ttfp']
    assert t.evaluated['defense'] == 'ttfp' and "'mode': 'transfer'" in str(t.protocol['settings']['attacks'])
    assert list((tmp_path / 'runs' / 'ttfp').glob('*/model.safetensors'))            # prompts cached beside the runs
    m = next(k for k in t.flags if k.startswith('robust@'))
    adaptive, full = (unpack_flags(by[e, 'mae+ttfp'].flags[m]) for e in ('huang.ttfp-adaptive', 'huang.ttfp-full'))
    assert not (full & ~adaptive).any()                       # same images, same seeds: a superset of attacks never adds a point
    row = next(r for r in res.rows if r['comparison'].claim.startswith('Gradient masking'))
    assert (row['evaluation'], row['evaluation_b']) == ('ttfp-adaptive', 'ttfp-full')
    assert row['test'] == 'mcnemar' and row['only_b'] == 0 and row['only_a'] == int((adaptive & ~full).sum())

def test_reproduce_mimir_micro(tmp_path):
    "The cheapest whole grid (MIMIR: 6 arms, 5 evaluations, 11 runs; ~50 s on one core): a record per (arm, evaluation), verdicts."
    res = reproduce('mimir', 'micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    g = GRIDS['mimir']
    want = {(e.name, a.name) for e in g.evaluations for a in g.arms if e.arms is None or a.name in e.arms}
    assert {(r.protocol['name'].split('.', 1)[1], r.method) for r in res.records} == want
    assert all(check_record(r) == [] for r in res.records)
    assert len(res.verdicts) == len(g.comparisons) and res.complete
    assert_rows_follow_the_records('mimir', res)

def test_registered_comparison_reads_only_its_seeds(tmp_path, monkeypatch):
    """Huang's ℓ2-AutoAttack comparison was registered after seed 0 was seen: at micro scale with two seeds its verdict
    comes from seed 1 alone (a row that pooled seed 0 in would pair 2 × 16 images, not 16), and with seed 0 only it has none."""
    monkeypatch.setitem(GRIDS, 'huang', trimmed('huang', ('mae', 'adv-bert'), ('aa-l2',)))
    res = reproduce('huang', 'micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), seeds=2, log=lambda *a: None)
    assert sorted((r.method, r.seed) for r in res.records) == [('adv-bert', 0), ('adv-bert', 1), ('mae', 0), ('mae', 1)]
    row = next(r for r in res.rows if r['comparison'].seeds)
    assert row['test'] == 'mcnemar' and row['seeds'] == [1] and row['n_a'] == res.records[0].n
    assert_rows_follow_the_records('huang', res)
    from mimbench.reproduce import comparison_rows
    seed0 = [r for r in res.records if r.seed == 0]
    row0 = next(r for r in comparison_rows('huang', seed0, (1, 32, 32)) if r['comparison'].seeds)
    assert row0['verdict'] == 'inconclusive' and row0['reason'].startswith('no records yet of seeds 1–2')
    assert '(seeds 1–2)' in res.report.read_text()

def test_reproduce_reuses_the_same_evaluation_from_the_leaderboard(tmp_path, monkeypatch):
    "An attack evaluation the leaderboard already holds (same attack settings and pass rule, runs, samples, seed) is not run twice."
    from dataclasses import replace as dc_replace
    import mimbench.reproduce as R
    monkeypatch.setitem(GRIDS, 'nim-de3', trimmed('nim-de3', ('mae', 'de3 σ=70'), ('aa-rand-1pass',)))
    kw = dict(out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    first = reproduce('nim-de3', 'micro', **kw)
    de3 = next(r for r in first.records if r.method == 'de3 σ=70')
    twin = dc_replace(de3, method='de3 [1 pass]', protocol={**de3.protocol, 'name': 'randomized-twin'})
    twin.save(tmp_path / 'results')                                  # as the leaderboard's randomized track would hold it
    for p in first.folder.rglob('*--de3_σ_70--*.json'): p.unlink()
    def must_not_run(*a, **k): raise AssertionError('evaluated again')
    monkeypatch.setitem(R.EVALUATORS, 'attack', must_not_run)
    lines = []
    again = reproduce('nim-de3', 'micro', **{**kw, 'log': lines.append})
    rec = next(r for r in again.records if r.method == 'de3 σ=70')
    assert rec.flags == de3.flags and rec.protocol == de3.protocol and check_record(rec) == []
    assert rec.extra['same_evaluation_as'] == f"randomized-twin/{twin.key}" and any('reused' in l for l in lines)
    assert load_records(first.folder, 'nim-de3.aa-rand-1pass')                    # saved beside the grid's own records
    for p in first.folder.rglob('*--de3_σ_70--*.json'): p.unlink()
    dc_replace(twin, extra={**twin.extra, 'passes': 5}).save(tmp_path / 'results')   # another pass rule: not the same evaluation
    with pytest.raises(AssertionError, match='evaluated again'): reproduce('nim-de3', 'micro', **kw)

def test_records_count_wherever_the_runs_were_trained(tmp_path, monkeypatch):
    """De³'s fine-tune names its denoiser by path, so its run hash depends on the run folder (the xfail in test_train.py):
    the records made under one run folder still count under another, and nothing is trained or evaluated again."""
    from mimbench.reproduce import work_left
    from mimbench.train import run_dir
    monkeypatch.setitem(GRIDS, 'nim-de3', trimmed('nim-de3', ('nim', 'de3 σ=70'), ('fgsm',)))
    res = reproduce('nim-de3', 'micro', out=str(tmp_path / 'a'), results=str(tmp_path / 'results'), log=lambda *a: None)
    assert sorted(r.method for r in res.records) == ['de3 σ=70', 'nim'] and res.complete
    elsewhere = work_left('nim-de3', 'micro', out=str(tmp_path / 'b'), results=str(tmp_path / 'results'))
    de3 = lambda w: next(j for j in w.jobs if j.arm.name == 'de3 σ=70')
    here = work_left('nim-de3', 'micro', out=str(tmp_path / 'a'), results=str(tmp_path / 'results'))
    assert run_dir(de3(here).planned.finetune).name != run_dir(de3(elsewhere).planned.finetune).name   # the bug itself
    assert (elsewhere.todo, elsewhere.to_train) == ([], {'pretrain': {}, 'finetune': {}})
