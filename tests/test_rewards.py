import pytest
import torch

import rewards as R
import world as W
from drawings import DRAWS, codebook_hybrids, preset_codebook, scenes
from model import VQCodebook


def noisy(images, seed, std=0.03):
    g = torch.Generator().manual_seed(seed)
    return (images + std * torch.randn(images.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("H", [32, 64])
@pytest.mark.parametrize("draw", DRAWS)
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_true_prompts_pass_and_wrong_prompts_fail(H, draw, noise):
    prompts, wrong, images = scenes(120, H, seed=H + len(draw), draw=draw, noise=noise)
    assert (R.reward(images, prompts) == 1.0).all()
    assert (R.reward(images, wrong) < 1.0).all()


@pytest.mark.parametrize("H", [32, 64])
def test_verdicts_survive_the_codebook(H):
    g = torch.Generator().manual_seed(0)
    vq = VQCodebook.fit(W.render(W.sample_prompts(600, g), H, g), 1024, 4, g)
    prompts, wrong, images = scenes(200, H, seed=5)
    for x in (images, noisy(images, seed=2)):
        recon = vq.decode(vq.encode(x))
        assert (R.reward(recon, prompts) == 1.0).float().mean() >= 0.99
        assert (R.reward(recon, wrong) < 1.0).float().mean() >= 0.99


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_no_one_token_hybrid_passes(preset):
    """What one parallel step can commit: a token of another shape's drawing at the same place. Every such
    hybrid of every shape and size of the preset that changes at least 8 pixels is refused; the whole
    shapes, decoded from the same codebook, pass."""
    cfg, vq = preset_codebook(preset, n_fit=300)
    hybrids, prompts, whole, whole_prompts = codebook_hybrids(cfg, vq)
    assert len(prompts) >= {"cpu": 100, "gpu": 500}[preset]
    assert (R.reward(whole, whole_prompts) == 1).all()
    r = R.reward(hybrids, prompts)
    assert (r < 1).all(), [p for p, x in zip(prompts, r.tolist()) if x == 1][:5]
    assert R.mismatched_parts(hybrids).float().mean() > 0.9  # mostly blobs; a few are another legal shape


def blank(H=32, n=1):
    return torch.zeros(n, 3, H, H)


def paint(img, color, shape, cx, cy, s):
    cov = W.shape_coverage(torch.tensor([W.SHAPES.index(shape)]), torch.tensor([cx]), torch.tensor([cy]),
                           torch.tensor([s]), img.shape[-1])[0]
    return img + (cov >= 0.5).float() * W.PALETTE[W.COLOR_NAMES.index(color)][:, None, None]


def test_partial_credit_by_hand():
    H = 32
    red_circle = paint(blank(H)[0], "red", "circle", 10, 10, 10)
    two = paint(red_circle, "blue", "square", 24, 10, 10)  # blue square to the right of the red circle
    imgs = torch.stack([blank(H)[0], red_circle, red_circle, red_circle, two, two, two])
    prompts = ["a red circle", "a red circle", "a blue circle", "two red circles",
               "a red circle left of a blue square", "a red circle right of a blue square", "a red circle"]
    r = R.reward(imgs, prompts)
    # empty image: nothing found; right image; colour wrong (shape-only quarter); one of two found;
    # relation right; relation wrong (halved); an extra object (1 of max(1, 2))
    expected = torch.tensor([0.0, 1.0, 0.25, 0.5, 1.0, 0.5, 0.5])
    assert torch.allclose(r, expected), r


def test_failure_modes_by_hand():
    H = 32
    rc_bs = paint(paint(blank(H)[0], "red", "circle", 10, 10, 10), "blue", "square", 24, 10, 10)
    bc_rs = paint(paint(blank(H)[0], "blue", "circle", 10, 10, 10), "red", "square", 24, 10, 10)
    rc_gs = paint(paint(blank(H)[0], "red", "circle", 10, 10, 10), "green", "square", 24, 10, 10)
    bar = rc_bs.clone()
    bar[:, 20:31, 4:7] = W.PALETTE[3][:, None, None]  # an 11x3 yellow bar: a third object of no legal shape
    one = paint(blank(H)[0], "red", "circle", 10, 10, 10)
    blob = blank(H)[0]
    blob[:, 4:15, 10:13] = W.PALETTE[0][:, None, None]  # right count, but no legal shape
    two_rc = paint(paint(blank(H)[0], "red", "circle", 10, 10, 10), "red", "circle", 24, 24, 10)
    imgs = torch.stack([rc_bs, one, bar, blob, bc_rs, rc_gs, rc_bs, two_rc])
    prompts = ["a red circle and a blue square", "a red circle and a blue square", "a red circle and a blue square",
               "a red circle", "a red circle and a blue square", "a red circle left of a blue square",
               "a red circle right of a blue square", "three red circles"]
    assert R.failure_modes(imgs, prompts) == [
        "ok", "too few objects", "too many objects", "mismatched parts", "colours and shapes swapped",
        "wrong colour or shape", "wrong position", "too few objects"]
    assert R.failure_modes(imgs[:0], []) == []


def test_parts_that_do_not_belong_make_a_blob():
    """The generator's typical failures, drawn by hand on a red 12-pixel shape at 32x32 (box 8..20)."""
    H, red = 32, W.PALETTE[0][:, None, None]
    circle, square, triangle = (paint(blank(H)[0], "red", s, 14, 14, 12) for s in W.SHAPES)
    gap = circle.clone()
    gap[:, 9:13, 12] = 0  # a one-pixel gap into the disc, not along its edge
    notch = square.clone()
    notch[:, 8:12, 8:12] = 0  # a patch missing at a corner: an L-shaped "square"
    ears = triangle.clone()
    ears[:, 8:12, 8:12] = red  # a square corner on a triangle (a triangle with an ear)
    corner = circle.clone()
    corner[:, 8:12, 16:20] = red  # a circle with a square corner
    stray = square.clone()
    stray[:, 26:30, 26:30] = red  # a stray 4x4 patch apart from the square: an extra object
    edge = square.clone()
    edge[:, 8:20, 8] = 0  # a one-pixel sliver off one edge: what two rasterisers disagree on
    imgs = torch.stack([gap, notch, ears, corner, stray, edge])
    prompts = ["a red circle", "a red square", "a red triangle", "a red circle", "a red square", "a red square"]
    assert R.reward(imgs, prompts).tolist()[:5] == [0.25, 0.25, 0.25, 0.25, 0.5]  # a red blob: colour only
    assert R.reward(imgs, prompts)[5] == 1.0
    assert R.mismatched_parts(imgs).tolist() == [True, True, True, True, True, False]
    o = R.find_objects(imgs)
    assert (o["misfit"][o["image"] < 4] > 0).all() and o["misfit"][o["image"] == 5].tolist() == [0]
    assert o["shape"][o["image"] == 4].tolist() == [W.SHAPES.index("square"), R.BLOB]  # the stray patch: too small


@pytest.mark.parametrize("H,w,h,verdict", [(32, 12, 10, "blob"), (32, 8, 6, "blob"), (64, 16, 12, "blob"),
                                             (64, 24, 19, "blob"), (32, 12, 11, "square"), (64, 20, 20, "square")])
def test_a_box_must_be_square_within_a_pixel(H, w, h, verdict):
    """A solid rectangle is no square (nor a disc), however its edges' slivers look; one pixel off is a sliver."""
    img = blank(H)
    img[0, :, 6:6 + h, 6:6 + w] = W.PALETTE[0][:, None, None]
    o = R.find_objects(img)
    assert o["shape"].tolist() == [R.BLOB if verdict == "blob" else W.SHAPES.index(verdict)]


def test_an_empty_image_has_no_objects():
    o = R.find_objects(blank(32, 2))
    assert set(o) == {"image", "color", "shape", "area", "cx", "cy", "misfit"} and all(len(v) == 0 for v in o.values())
    assert R.mismatched_parts(blank(32, 2)).tolist() == [False, False]


def test_failure_report_counts_every_mismatched_part():
    """A blob beside an extra object fails first for "too many objects", but counts as a mismatched part."""
    H = 32
    ok = paint(blank(H)[0], "red", "circle", 10, 10, 10)
    extra_and_blob = ok.clone()
    extra_and_blob[:, 4:15, 22:25] = W.PALETTE[1][:, None, None]  # an 11x3 green bar
    extra_and_blob = paint(extra_and_blob, "blue", "square", 24, 24, 10)
    imgs, prompts = torch.stack([ok, extra_and_blob]), ["a red circle", "a red circle and a blue square"]
    modes = R.failure_modes(imgs, prompts)
    assert modes == ["ok", "too many objects"]
    rep = R.failure_report(modes, prompts, R.mismatched_parts(imgs))
    assert rep["overall"][R.ANY_MISMATCH] == 0.5 and rep["overall"]["too many objects"] == 0.5
    assert rep["single"][R.ANY_MISMATCH] == 0.0 and rep["two"][R.ANY_MISMATCH] == 1.0
    assert rep["counting"][R.ANY_MISMATCH] == 0.0  # no samples: 0, not an error


def test_blamed_tokens_are_those_of_blobs_and_unnamed_objects():
    """Per-object credit's map (8x8 tokens of 4x4 pixels at 32x32), on the generator's failures drawn by hand."""
    H = 32
    rc_bs = paint(paint(blank(H)[0], "red", "circle", 10, 10, 10), "blue", "square", 24, 10, 10)
    bar = rc_bs.clone()
    bar[:, 20:31, 4:7] = W.PALETTE[3][:, None, None]  # an 11x3 yellow bar: rows 20-30, columns 4-6
    rc_gs = paint(paint(blank(H)[0], "red", "circle", 10, 10, 10), "green", "square", 24, 10, 10)
    corner = paint(blank(H)[0], "red", "circle", 14, 14, 12)
    corner[:, 8:12, 16:20] = W.PALETTE[0][:, None, None]  # a circle with a square corner: one red blob
    two_rc = paint(paint(blank(H)[0], "red", "circle", 10, 10, 10), "red", "circle", 24, 24, 10)
    imgs = torch.stack([rc_bs, bar, rc_gs, corner, two_rc])
    prompts = ["a red circle and a blue square"] * 2 + ["a red circle", "a red circle", "three red circles"]
    b = R.blamed_tokens(imgs, prompts, 8)
    assert b.shape == (5, 64) and b.dtype == torch.bool
    assert not b[0].any() and not b[4].any()  # all right; too few (no one object's fault)
    assert b[1].nonzero()[:, 0].tolist() == [8 * 5 + 1, 8 * 6 + 1, 8 * 7 + 1]  # the bar's three tokens
    pool = lambda mask: torch.nn.functional.max_pool2d(mask[None, None].float(), 4).flatten() > 0
    assert torch.equal(b[2], pool((rc_gs - paint(blank(H)[0], "red", "circle", 10, 10, 10)).amax(0) > 0))  # green
    assert torch.equal(b[3], pool(corner.amax(0) > 0))  # every token of the blob, its corner too
    assert R.blamed_tokens(imgs[:0], [], 8).shape == (0, 64)
    with pytest.raises(ValueError, match="grid must divide"):
        R.blamed_tokens(imgs, prompts, 5)


def test_specks_are_ignored_but_big_extra_blobs_count():
    img = paint(blank()[0], "green", "triangle", 12, 12, 10)
    speck = img.clone()
    speck[:, 28:30, 28:30] = W.PALETTE[0][:, None, None]  # 4 red pixels
    blob = img.clone()
    blob[:, 20:31, 22:25] = W.PALETTE[0][:, None, None]  # an 11x3 red bar: no legal shape
    r = R.reward(torch.stack([speck, blob]), ["a green triangle"] * 2)
    assert r[0] == 1.0 and r[1] == 0.5


def test_errors_are_clear():
    img = blank()
    for bad, match in [("a purple circle", "colour"), ("a red hexagon", "shape"),
                       ("a red circle near a blue square", "relation"),
                       ("a red circle and a red circle", "same object"), ("five red circles", "grammar"),
                       ("", "grammar")]:
        with pytest.raises(ValueError, match=match):
            R.reward(img, [bad])
    with pytest.raises(ValueError, match="shape"):
        R.reward(torch.zeros(1, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="dtype"):
        R.reward(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["a red circle"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        R.reward(torch.full((1, 3, 32, 32), 2.0), ["a red circle"])
    with pytest.raises(ValueError, match="prompts"):
        R.reward(torch.zeros(2, 3, 32, 32), ["a red circle"])


def test_render_respects_the_world():
    g = torch.Generator().manual_seed(3)
    prompts = W.sample_prompts(200, g)
    images = W.render(prompts, 64, g)
    assert images.shape == (200, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    o = R.find_objects(images)
    sq = o["shape"] == W.SHAPES.index("square")  # a square's area is side^2, side in [16, 24]
    side = o["area"][sq].sqrt()
    assert side.min() >= 16 and side.max() <= 24
    n_named = sum(len(W.parse_prompt(p)[1]) for p in prompts)
    assert len(o["area"]) == n_named  # nothing touches, nothing is lost


@pytest.mark.parametrize("H,grid", [(32, 8), (32, 4), (64, 8)])
def test_grid_aligned_scenes(H, grid):
    """Token-aligned worlds (train.py's default: grid = patch = 8): still verified, few distinct patches."""
    g = torch.Generator().manual_seed(4)
    prompts = W.sample_prompts(300, g)
    images = W.render(prompts, H, g, grid=grid)
    o = R.find_objects(images)
    sq = o["shape"] == W.SHAPES.index("square")
    side = o["area"][sq].sqrt()
    assert (side % grid == 0).all() and side.min() >= H / 4 and side.max() <= 3 * H / 8
    assert (R.reward(images, prompts) == 1).all()
    wrong = [W.perturb_prompt(p, g) for p in prompts]
    assert (R.reward(images, wrong) < 1).all()
    patches = images.unfold(2, grid, grid).unfold(3, grid, grid).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * grid * grid)
    assert len(torch.unique(patches, dim=0)) <= {8: 64, 4: 128}[grid] * (H // 32)
    with pytest.raises(ValueError, match="multiple of grid"):
        W.render(prompts[:1], 32, g, grid=16)  # no size in [8, 12] is a multiple of 16


def test_accuracy_report():
    prompts = ["a red circle", "two red circles", "a red circle and a blue square", "two blue squares"]
    rep = R.accuracy_report(torch.tensor([1.0, 0.5, 1.0, 1.0]), prompts)
    assert rep["overall"] == 0.75 and rep["single"] == 1.0 and rep["counting"] == 0.5 and rep["two"] == 1.0
    assert rep["position"] != rep["position"]  # nan: no position prompts


def test_quality_metric():
    _, _, a = scenes(300, 32, seed=1)
    _, _, b = scenes(300, 32, seed=2)
    fa = R.quality_features(a)
    assert abs(R.frechet_distance(fa, fa)) < 1e-6
    same = R.quality(a, b)
    g = torch.Generator().manual_seed(0)
    singles = W.render(W.sample_prompts(300, g, ["single"]), 32, g)
    assert same < 0.5 * R.quality(a, singles)
    assert same < 0.5 * R.quality(a, noisy(b, 0, std=0.1))
