"""Tutorials show numbers computed by their own cells or read from records, never typed into their prose.

The rule, for the markdown cells of `nbs/tutorials/*.ipynb` (code blocks, inline code and $math$ are not prose: they
hold commands and settings):

* flagged: a percentage (`71.3 %`, `38%`), a difference in points (`+3 pp`, `2.7 points`) and any decimal number
  (`0.52`, `67.4`, `×1.07`) — the forms a result takes;
* not flagged: whole numbers without a unit (epochs, n, patch sizes, years, section numbers), fractions such as
  `8/255`, and scientific notation (`1.5e-4`: learning rates);
* allowed: a number in a sentence that quotes a paper with its source (`the paper`, `et al.`, `Table 2`, a year), and
  the settings listed for each tutorial below, written as the exact phrase that holds the number (a mask ratio, a layer
  decay, an ε written as a decimal). The lists hold settings only; a result is rendered by a cell or removed.

A failure lists every offending notebook, cell and number with its sentence.
"""
import json, re
from pathlib import Path
import pytest

TUTORIALS = Path(__file__).parent.parent / 'nbs' / 'tutorials'

RESULT = re.compile(r"""(?x)
    (?<![\w.])[+±−-]?\d[\d,]*(?:\.\d+)?\s*(?:%|pp\b|percentage\ points?\b|points?\b)   # 71.3 %, 38%, +3 pp, 2.7 points
  | (?<![\w./])[+±−-]?\d*\.\d+(?![\w/]|\.\d)                                          # 0.52, 67.4, .438 (not 1.5e-4, not 0.5/388)
""")
SOURCE = re.compile(r"\bpaper(?![\s-]+code)|\bet al\.|\bTable\s+\d|\bTab\.\s*\d|\bFig\.\s*\d|\b(?:19|20)\d\d\b")

SETTINGS_EVERYWHERE = ['95 % Wilson', '95 % interval', '95 % confidence']
SETTINGS = {                                     # tutorial → phrases that hold a setting, not a result
    'quickstart': ['reconstruct 75 % of the patches from the other 25 %', 'the 25 % it is shown', '(75 % masked)'],
    'mae_frequency': ['75 % masking', 'layer-wise lr decay 0.75'],
    'mimir': ['layer decay 0.65', 'drop path 0.1', 'base lr 0.5e-2'],
    'nim_de3': ['mask ratio 0.75'],
    'rebuffi_eps': ['lr decay 0.65', 'layer decay 0.65', '(0.65)', 'σ = 0.1', 'ε = 0.25', 'σ 0.1', 'ℓ2 0.25',
                    'ε = 0.5/388 ≈ 0.0013', 'an RMS of 0.5/32 ≈ 0.016', 'RMS of 0.5/388 ≈ 0.0013', 'ε = 0.5', 'ℓ2 0.5'],
    'rebuffi_transfer': ['{0.65, 0.75, 0.85, 0.95}', 'mask ratio (75 %)', 'ε = 0.5', 'ℓ2 0.5', 'label smoothing 0.1'],
    'huang_adv_pretrain': ['0.001·32', '0.005·32', '0.001', '0.005'],
    'leaderboard': [],
    'adpe': [],
}
# Notebooks whose prose another owner is cleaning (the offending lines are in /work/requests/): reported, not failed.
PENDING = {}                                     # e.g. {'name': 'owner; offending lines in /work/requests/<owner>.md'}

def prose_sentences(markdown:str) -> list:
    "The sentences of a markdown cell's prose: code blocks, inline code and $math$ removed; table rows count as sentences."
    md = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    md = re.sub(r"`[^`\n]*`", " ", md)
    md = re.sub(r"\$[^$\n]*\$", " ", md)
    parts = re.split(r"(?<=[.!?;])\s+(?=[A-Z*(])|\n\s*\n|\n(?=\s*[-*|>#])", md)
    return [' '.join(p.split()) for p in parts if p.strip()]

def typed_numbers(markdown:str, allowed=()) -> list:
    "[(number, sentence)] of the result-like numbers in `markdown`'s prose that no source or listed setting accounts for."
    out = []
    for s in prose_sentences(markdown):
        if SOURCE.search(s): continue
        bare = s
        for phrase in [*SETTINGS_EVERYWHERE, *allowed]: bare = bare.replace(phrase, ' ')
        out += [(m.group().strip(), s) for m in RESULT.finditer(bare)]
    return out

def offending(nb:Path) -> list:
    "['name[cell]: number — sentence'] for every typed number in notebook `nb`'s markdown cells."
    cells = json.loads(nb.read_text())['cells']
    allowed = SETTINGS.get(nb.stem, [])
    return [f"{nb.stem}[{i}]: {num} — {s[:160]}" for i, c in enumerate(cells) if c['cell_type'] == 'markdown'
            for num, s in typed_numbers(''.join(c['source']), allowed)]

def test_the_rule():
    "The rule on examples: results flagged, settings/fractions/years/papers not."
    flagged = lambda md, allowed=(): [n for n, _ in typed_numbers(md, allowed)]
    assert flagged("MAE reaches 71.3 % clean and 38% robust, +3 pp over scratch.") == ['71.3 %', '38%', '+3 pp']
    assert flagged("The gap is 0.52 at n = 500.") == ['0.52']
    assert flagged("| mae | 67.4 | 60.5 |") == ['67.4', '60.5']
    assert flagged("Attack with ε = 8/255, 10 steps, patch 4, lr 1.5e-4, in 2021 (section 3).") == []
    assert flagged("MIMIR reports 76.30 natural accuracy (Xu et al., 2023).") == []
    assert flagged("The paper's gain is 23 % at σ = 70.") == []
    assert flagged("the paper code's APGD-10 gives 0.646") == ['0.646']       # our number from the paper's code: a result
    assert flagged("fine-tune with layer decay 0.65; accuracy 55.1", ['layer decay 0.65']) == ['55.1']
    assert flagged("Run `mimbench eval --eps 0.25` and see $\\sigma=0.5$.") == []
    assert flagged("Every accuracy carries its 95 % Wilson interval.") == []

@pytest.mark.parametrize('name', sorted(p.stem for p in TUTORIALS.glob('*.ipynb')))
def test_no_typed_result_numbers_in_tutorial_prose(name):
    "Fails when a tutorial's prose holds a number that is a result: render it from the notebook's results or records."
    bad = offending(TUTORIALS / f"{name}.ipynb")
    if bad and name in PENDING: pytest.xfail(f"{PENDING[name]}:\n" + '\n'.join(bad))
    assert not bad, f"{len(bad)} typed result numbers in {name}'s prose (render them from results, or remove them):\n" + '\n'.join(bad)
