"""Write a generated section into README.md between two markers, or check that it is current.

Shared by `tools/readme_leaderboard.py` (the leaderboard, from results/) and `bench/speed_table.py` (the speed table,
from bench/results/): each renders its body, and `update_section` puts it between its markers.
"""
from pathlib import Path


def render_section(readme_text:str, start:str, end:str, body:str, who:str='readme_section') -> str:
    "`readme_text` with whatever lies between `start` and `end` replaced by `body`."
    if start not in readme_text or end not in readme_text:
        raise SystemExit(f"{who}: README.md has no {start} … {end} markers; add them where the section belongs")
    a, rest = readme_text.split(start, 1)
    _, b = rest.split(end, 1)
    return f"{a}{start}\n{body}{end}{b}"


def update_section(readme, start:str, end:str, body:str, what:str, command:str, check:bool=False, who:str='readme_section') -> int:
    "Write `body` between the markers of `readme` (or, with `check`, return 1 when the file is not up to date)."
    p = Path(readme); old = p.read_text()
    new = render_section(old, start, end, body, who)
    if check:
        if new != old: print(f"{who}: README.md's {what} is out of date: run `{command}`"); return 1
        return 0
    if new != old: p.write_text(new); print(f"updated the {what} in {p}")
    else: print(f"{p}: {what} already up to date")
    return 0
