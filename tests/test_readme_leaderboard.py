"The README's leaderboard section is generated from results/ and says when it is partial."
import importlib.util
from pathlib import Path
import numpy as np
from mimbench.results import PROTOCOLS, make_record, plan_jobs

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
    for method in ('mae', 'scratch'):
        for seed in (0, 1):
            make_record(method, PROTOCOLS['clean-ft'], {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test', 'sample_digest': 's'},
                        seed, {'clean': rng.random(50) < 0.8, 'robust@4/255': rng.random(50) < 0.3}).save(res)
    assert rl.main(['--results', str(res), '--readme', str(readme), '--check']) == 1
    assert rl.main(['--results', str(res), '--readme', str(readme)]) == 0
    text = readme.read_text()
    assert 'old' not in text and text.endswith(f"{rl.END}\n## After\n") and text.count(rl.START) == 1
    assert f"**Partial**: 0 of the {len(plan_jobs('small'))}" in text       # fake records match no planned run
    assert '| mae | 2 |' in text and '| scratch | 2 |' in text and 'n = 50 test images per seed' in text
    assert rl.main(['--results', str(res), '--readme', str(readme), '--check']) == 0
