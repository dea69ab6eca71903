"""`reproduce` end to end at micro scale: records exist and recompute from their flags, the report shows the paper's
numbers beside ours with a verdict per comparison, a second call trains and evaluates nothing, `max_minutes` stops
without losing what is done, and the CLI runs the grid."""
import json, time
from dataclasses import replace
import pytest
import mimbench.train
from mimbench.results import load_records, check_record
from mimbench.reproduce import GRIDS, reproduce, cli_reproduce

VERDICTS = ('**held**', '**not held**', '**inconclusive**')

def trimmed_nim_de3():
    "nim-de3 with three arms (MAE, NIM and the De³ defence) and its FGSM evaluation: every code path, in seconds."
    g = GRIDS['nim-de3']
    keep = ('mae', 'nim', 'de3 σ=70')
    return replace(g, arms=tuple(a for a in g.arms if a.name in keep), evaluations=(g.evaluation('fgsm'),),
                   comparisons=tuple(c for c in g.comparisons if c.a in keep and c.b in keep and c.evaluation in (None, 'fgsm')))

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
    assert set(res.verdicts.values()) <= {'held', 'not held', 'inconclusive'}
    assert res.figure.exists() and res.figure.stat().st_size > 1000

    mtimes = {p: p.stat().st_mtime_ns for p in res.folder.rglob('*.json')}
    n_calls = len(counted_train)
    again = reproduce('nim-de3', 'micro', **kw)                                       # everything is reused
    assert (again.trained, again.evaluated, len(counted_train)) == ([], [], n_calls)
    assert {p: p.stat().st_mtime_ns for p in res.folder.rglob('*.json')} == mtimes
    assert again.verdicts == res.verdicts and len(again.records) == 3

def test_cli_runs_the_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(GRIDS, 'nim-de3', trimmed_nim_de3())
    cli_reproduce('nim-de3', scale='micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), no_progress=True)
    out = capsys.readouterr().out
    assert 'report:' in out and any(v in out for v in ('held', 'inconclusive'))
    assert (tmp_path / 'results' / 'reproduce' / 'nim-de3' / 'micro-fashion-mnist' / 'report.md').exists()

def test_reproduce_refuses_a_broken_grid(tmp_path, monkeypatch):
    "A grid whose dry run finds problems trains nothing and says what is wrong."
    from mimbench.reproduce import Evaluation
    g = trimmed_nim_de3()
    monkeypatch.setitem(GRIDS, 'nim-de3', replace(g, evaluations=(Evaluation('typo', ('pgdd',), ('4/255',)),)))
    with pytest.raises(ValueError, match="unknown attack 'pgdd'"):
        reproduce('nim-de3', 'micro', out=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), log=lambda *a: None)
    assert not (tmp_path / 'runs').exists()
