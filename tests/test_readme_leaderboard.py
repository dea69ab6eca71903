"The README's leaderboard section is generated from results/ and says when it is partial."
import importlib.util
from dataclasses import asdict, replace
from pathlib import Path
import numpy as np
from mimbench.leaderboard import plan_jobs
from mimbench.results import PROTOCOLS, ResultRecord, make_record
from mimbench.train import run_dir

ROOT = Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location('readme_leaderboard', ROOT / 'tools' / 'readme_leaderboard.py')
rl = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(rl)

def test_readme_leaderboard_is_current():
    "Fails when records were committed (or removed) without regenerating the README's table."
    assert rl.main(['--check']) == 0

def test_partial_leaderboard_is_rendered_and_labelled(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text(f"# t\n{rl.START}\nold\n{rl.END}\n## After\n")
    res = tmp_path / 'results'
    assert 'No leaderboard records' in rl.section(res)
    rng = np.random.default_rng(0)
    planned = {(j.protocol, j.label, j.seed): j for j in plan_jobs('small')}
    ran = lambda method, seed: [{'dir': run_dir(planned['clean-ft', method, seed].finetune).name, 'seed': seed}]   # the plan's run
    for method in ('mae', 'scratch'):
        for seed in (0, 1):
            r = make_record(method, PROTOCOLS['clean-ft'], {'runs': ran(method, seed), 'dataset': 'fashion-mnist', 'split': 'test', 'sample_digest': 's'},
                            seed, {'clean': rng.random(50) < 0.8, 'robust@4/255': rng.random(50) < 0.3},
                            extra={'corrupt_correct': (cc := rng.integers(0, 76, 50)).tolist(), 'cells': 75, 'mCA': cc.mean() / 75})
            replace(r, provenance={**r.provenance, 'commit': f"{seed}" * 40, 'dirty': False}).save(res)   # made at two commits
    r = make_record('mae', PROTOCOLS['randomized'], {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test', 'sample_digest': 's'},
                    0, {'clean': rng.random(50) < 0.8})
    code = {**r.provenance['code'], 'modules': {**r.provenance['code']['modules'], 'mimbench.attacks': 'other-code'}}
    ResultRecord(**{**asdict(r), 'provenance': {**r.provenance, 'code': code}}).save(res)   # made by other code
    assert rl.main(['--results', str(res), '--readme', str(readme), '--check']) == 1
    assert rl.main(['--results', str(res), '--readme', str(readme)]) == 0
    text = readme.read_text()
    assert 'old' not in text and text.endswith(f"{rl.END}\n## After\n") and text.count(rl.START) == 1
    assert f"**Partial**: 4 of the {len(plan_jobs('small'))}" in text       # mae and scratch, seeds 0 and 1 (the stale one not)
    assert '| mae | 2 |' in text and '| scratch | 2 |' in text and 'n = 50 test images per seed' in text
    assert text.count('| method | seeds | mCA (%) |') == 1                # the table's own mCA comparison, once
    assert f"commits {'0' * 10}, {'1' * 10} · " in text                     # every commit of the records shown
    assert '**randomized**: All 1 records are stale' in text                # a protocol with no current record says why …
    stale_part = text[text.index('**randomized**'):]
    assert 'the stale records alone' in stale_part and '| mae |' in stale_part   # … then shows them alone, labelled
    assert 'under earlier settings' not in stale_part                      # same protocol settings, only other code
    assert rl.main(['--results', str(res), '--readme', str(readme), '--check']) == 0
