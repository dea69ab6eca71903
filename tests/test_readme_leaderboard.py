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

def test_corruption_table_pairs_seeds_and_scores_per_image():
    "mCA rows come from per-image corruption counts; Δ pairs each seed with the baseline's same seed."
    ev = {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test', 'sample_digest': 's'}
    counts = {('mae', 0): [10, 5, 0, 10], ('mae', 1): [10, 10, 0, 0], ('scratch', 0): [10, 5, 5, 10], ('scratch', 2): [10, 10, 5, 5]}
    recs = [make_record(m, PROTOCOLS['clean-ft'], ev, seed, {'clean': np.ones(4, bool)},
                        extra={'corrupt_correct': c, 'cells': 10, 'mCA': sum(c) / 40}) for (m, seed), c in counts.items()]
    rows = {l.split(' | ')[0].strip('| '): l for l in rl.corruption_table(recs) if l.startswith('| ') and 'method' not in l}
    assert rows['mae'].startswith('| mae | 2 | 56.2 ± 8.8 |  |')          # seeds 62.5 % and 50 %
    assert rows['scratch'].startswith('| scratch | 2 | 75.0 ± 0.0 | +12.5 [')   # only seed 0 has a baseline: 0.5 / 4 images
    assert '1 seed(s)' in rows['scratch']
    assert rl.corruption_table([r for r in recs if r.method == 'scratch'])[-2].endswith('| scratch | 2 | 75.0 ± 0.0 |  |')
