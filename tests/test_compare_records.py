"tools/compare_records.py: re-made records are compared flag by flag with the ones they replace."
import importlib.util
from pathlib import Path
import numpy as np
from mimbench.results import PROTOCOLS, make_record

ROOT = Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location('compare_records', ROOT / 'tools' / 'compare_records.py')
cr = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(cr)

def _rec(flags, method='mae', seed=0):
    return make_record(method, PROTOCOLS['clean-ft'], {'runs': [{'dir': 'finetune-x-1', 'config_hash': '1'}],
                       'dataset': 'fashion-mnist', 'split': 'test', 'sample_digest': 's'}, seed, flags)

def test_identical_flags_pass_and_one_flipped_sample_fails(tmp_path):
    rng = np.random.default_rng(0)
    clean, robust = rng.random(200) < .9, rng.random(200) < .5
    old = _rec({'clean': clean, 'robust@4/255': robust}); old.save(tmp_path / 'old')
    _rec({'clean': clean, 'robust@4/255': robust}).save(tmp_path / 'same')
    lines = []
    assert cr.compare(tmp_path / 'same', tmp_path / 'old', log=lines.append) == 0
    assert lines[0].startswith('same ') and lines[-1].startswith('1 pairs compared, 0 differ')
    flipped = robust.copy(); flipped[7] = ~flipped[7]                     # one sample, same accuracy to a rounding
    _rec({'clean': clean, 'robust@4/255': flipped}).save(tmp_path / 'moved')
    lines = []
    assert cr.compare(tmp_path / 'moved', tmp_path / 'old', log=lines.append) == 1
    assert lines[0].startswith('DIFFERS') and 'robust@4/255' in lines[0] and '(1 samples differ)' in lines[0]

def test_missing_re_made_record_fails_only_with_all(tmp_path):
    f = {'clean': np.ones(10, bool)}
    _rec(f).save(tmp_path / 'old'); _rec(f, seed=1).save(tmp_path / 'old'); _rec(f).save(tmp_path / 'new')
    assert cr.compare(tmp_path / 'new', tmp_path / 'old', log=lambda *_: None) == 0
    assert cr.compare(tmp_path / 'new', tmp_path / 'old', require_all=True, log=lambda *_: None) == 1

def test_plan_picks_the_cheapest_record_of_each_evaluation_group(tmp_path):
    f = {'clean': np.ones(10, bool)}
    for seed, secs in [(0, 300.), (1, 120.), (2, 200.)]:                  # one group: the same protocol, no defence
        r = _rec(f, seed=seed); r.seconds = {'attacks': secs}; r.save(tmp_path / 'old')
    d = _rec(f, 'de3', 0); d.evaluated = {**d.evaluated, 'defense': 'de3'}; d.seconds = {'attacks': 50., 'corruptions': 10.}
    d.save(tmp_path / 'old')                                                # another group: a defence
    twin = _rec(f, 'copy', 5); twin.extra = {'same_evaluation_as': 'clean-ft/x'}; twin.seconds = {'attacks': 1.}
    twin.save(tmp_path / 'old')                                             # a copy of another record's evaluation: not counted
    lines = []
    out = cr.plan(tmp_path / 'old', log=lines.append)
    assert out == {'records': 4, 'groups': 2, 'all_s': 680., 'one_per_group_s': 180.}
    assert any('3 records; cheapest    2.0 min' in l and 'seed1' in l for l in lines)
    assert lines[-1].startswith('4 records in 2 groups')
