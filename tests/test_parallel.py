"""The parallel world: objects made of several tokens, several tokens committed per step (the defaults pin it)."""

import torch

import config
import rewards
import world
from model import MaskedTransformer, VQCodebook, apply_rope, encode_prompts, rope_2d
from sample import commit_counts


def test_defaults_decode_objects_of_many_tokens_in_parallel():
    for preset, n_tokens, per_step in (("cpu", 64, 4), ("gpu", 256, 16)):
        cfg = config.Config(preset=preset, **config.PRESETS[preset])
        assert cfg.n_tokens >= n_tokens if preset == "cpu" else cfg.n_tokens == n_tokens
        sizes = world.object_sizes(cfg.image_size, cfg.grid)
        assert min(sizes) >= 2 * cfg.patch and all(s % cfg.patch == 0 for s in sizes)  # 2x2 tokens or more
        assert cfg.grid % cfg.patch == 0  # corners on the token grid: an object is always whole tokens
        counts = commit_counts(cfg.sample_steps, cfg.n_tokens)
        assert sum(counts) == cfg.n_tokens and cfg.n_tokens / cfg.sample_steps >= per_step and max(counts) > per_step


def test_an_object_is_made_of_several_distinct_codes():
    """A 12-pixel circle at 4x4 patches is 3x3 tokens: arcs at the corners, edges, a full centre."""
    g = torch.Generator().manual_seed(0)
    images = world.render(["a red circle"] * 50, 32, g, grid=4)
    vq = VQCodebook.fit(images, 64, 4, g)
    tok = vq.encode(images)
    background = vq.encode(torch.zeros(1, 3, 32, 32))[0, 0]
    per_image = (tok != background).sum(1)
    assert per_image.min() >= 4 and per_image.max() == 9  # 2x2 and 3x3 objects
    assert len(torch.unique(tok)) >= 10  # parts of shapes, not whole objects


def test_tokens_that_do_not_belong_together_are_mismatched_parts():
    """The top row of a square over a circle's body: one parallel step's typical mistake."""
    H = 32

    def draw(shape):  # a red 12-pixel shape with its box at pixels 8..20: tokens rows and columns 2..4
        cov = world.shape_coverage(torch.tensor([world.SHAPES.index(shape)]), torch.tensor([14.0]),
                                   torch.tensor([14.0]), torch.tensor([12.0]), H)
        return (cov >= 0.5).float()[:, None] * world.PALETTE[0][None, :, None, None]  # (1, 3, H, H)

    circle, square = draw("circle"), draw("square")
    vq = VQCodebook.fit(torch.cat([circle, square]), 64, 4, torch.Generator().manual_seed(0))  # lossless
    tc, ts = vq.encode(circle).view(8, 8), vq.encode(square).view(8, 8)
    hybrid = tc.clone()
    hybrid[2, 2:5] = ts[2, 2:5]
    images = vq.decode(torch.stack([tc, hybrid]).view(2, 64))
    assert rewards.failure_modes(images, ["a red circle"] * 2) == ["ok", "mismatched parts"]
    assert rewards.reward(images, ["a red circle"] * 2).tolist()[1] < 1


def test_2d_rope_sees_offsets_not_places():
    cos, sin = rope_2d(64, 16, 8)  # 8 prompt words, then an 8x8 grid
    assert cos.shape == sin.shape == (72, 8)
    q, k = torch.randn(16), torch.randn(16)
    Q = apply_rope(q.expand(1, 1, 72, 16), cos, sin)[0, 0]  # (72, 16)
    K = apply_rope(k.expand(1, 1, 72, 16), cos, sin)[0, 0]
    S = Q @ K.T
    at = lambda r, c: 8 + 8 * r + c
    assert torch.allclose(S[at(1, 1), at(2, 3)], S[at(4, 2), at(5, 4)], atol=1e-5)  # offset (1, 2) anywhere
    assert torch.allclose(S[at(3, 3), at(3, 6)], S[at(6, 0), at(6, 3)], atol=1e-5)  # offset (0, 3)
    assert not torch.allclose(S[at(1, 1), at(2, 3)], S[at(1, 1), at(3, 2)], atol=1e-3)  # (1, 2) is not (2, 1)
    assert torch.equal(Q[:8], q.expand(8, 16)) and torch.equal(K[:8], k.expand(8, 16))  # words: not rotated


def test_rope_buffers_are_not_saved():
    cfg = config.Config(preset="tiny", **config.PRESETS["tiny"])
    m = MaskedTransformer(config.model_config(cfg))
    assert not any("rope" in k for k in m.state_dict())
    m2 = MaskedTransformer(config.model_config(cfg))
    m2.load_state_dict(m.state_dict())
    tok, ids = torch.randint(0, cfg.codebook_size, (2, cfg.n_tokens)), encode_prompts(["a red circle"] * 2)
    assert torch.equal(m(tok, ids), m2(tok, ids))
