import os
import subprocess
import sys

import pytest
import torch

import world as W


def test_grammar_roundtrip_and_categories():
    g = torch.Generator().manual_seed(0)
    prompts = W.sample_prompts(400, g)
    assert {W.category(p) for p in prompts} == set(W.CATEGORIES)
    for p in prompts:
        assert W.make_prompt(*W.parse_prompt(p)) == p
    assert W.category("three green triangles") == "counting"
    assert W.parse_prompt("a yellow square above a red triangle") == (
        "position", (("yellow", "square"), ("red", "triangle")), "above")


def test_seeded_determinism():
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        p = W.sample_prompts(20, g)
        return p, W.render(p, 32, g)
    (p1, x1), (p2, x2), (p3, x3) = run(7), run(7), run(8)
    assert p1 == p2 and torch.equal(x1, x2)
    assert p1 != p3 and not torch.equal(x1, x3)


def test_bad_grammar_input_is_refused():
    with pytest.raises(ValueError, match="category"):
        W.sample_prompts(3, torch.Generator(), categories=["colour"])
    for bad in ("a purple circle", "a red hexagon", "five red circles", "a red circle near a blue square",
                "a red circle and a red circle"):
        with pytest.raises(ValueError):
            W.parse_prompt(bad)


def test_one_bare_prompt_string_is_refused_where_a_list_is_expected():
    """A str is iterable, so without the check it would become one prompt per character."""
    import model
    import rewards
    x = torch.zeros(1, 3, 32, 32)
    for call in (lambda p: W.render(p, 32, torch.Generator()), lambda p: rewards.reward(x, p),
                 lambda p: rewards.failure_modes(x, p), model.encode_prompts):
        with pytest.raises(ValueError, match=r"single str 'a red circle'; pass \['a red circle'\]"):
            call("a red circle")
        call(("a red circle",))  # any other iterable of prompts is fine


def test_token_aligned_objects_sit_on_the_grid():
    g = torch.Generator().manual_seed(3)
    for cat, objs, rel in map(W.parse_prompt, W.sample_prompts(200, g)):
        for cx, cy, s in W._place(objs, rel, 32, g, grid=8):
            assert s == 8 and (cx - s / 2) % 8 == 0 and (cy - s / 2) % 8 == 0


def test_the_world_demos_refuse_bad_input():
    """world.py, rewards.py and model.py answer bad sizes with a usage line, not a traceback."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script, bad, msg in [("world.py", ["--n", "0"], "--n must be at least 1"),
                             ("rewards.py", ["--image-size", "30", "--grid", "7"], "is a multiple of grid=7"),
                             ("model.py", ["--patch", "7"], "--image-size 32 must be a multiple of --patch 7"),
                             ("model.py", ["--codebook-size", "1"], "--codebook-size at least 2")]:
        res = subprocess.run([sys.executable, script, *bad], cwd=root, capture_output=True, text=True)
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, (script, bad, res.stderr)
