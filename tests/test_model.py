import pytest
import torch

import world as W
from model import VQCodebook, patchify, unpatchify


def test_patchify_roundtrip_and_order():
    x = torch.rand(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    assert torch.equal(p[0, 1].view(3, 4, 4), x[0, :, 0:4, 4:8])  # raster order: second patch is top right
    assert torch.equal(unpatchify(p, 4), x)
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.rand(1, 3, 10, 10), 4)


def test_codebook_fit_encode_decode_save_load():
    g = torch.Generator().manual_seed(0)
    images = W.render(W.sample_prompts(60, g), 32, g)
    vq = VQCodebook.fit(images, 64, 4, g, iters=5)  # fewer codes than distinct patches: real k-means
    assert vq.mask_id == 64
    tok = vq.encode(images)
    assert tok.shape == (60, 64) and tok.dtype == torch.long and tok.min() >= 0 and tok.max() < 64
    recon = vq.decode(tok)
    assert recon.shape == images.shape
    mse = ((recon - images) ** 2).mean()
    assert mse < ((images - images.mean()) ** 2).mean() / 5  # far better than a flat image
    vq2 = VQCodebook(64, 4)
    vq2.load_state_dict(vq.state_dict())
    assert torch.equal(vq2.encode(images), tok)
    with pytest.raises(ValueError, match="masked"):
        vq.decode(torch.full((1, 64), vq.mask_id))


def test_codebook_fit_is_seeded():
    g = torch.Generator().manual_seed(0)
    images = W.render(W.sample_prompts(40, g), 32, g)
    a = VQCodebook.fit(images, 32, 4, torch.Generator().manual_seed(1), iters=3)
    b = VQCodebook.fit(images, 32, 4, torch.Generator().manual_seed(1), iters=3)
    assert torch.equal(a.codes, b.codes)


def test_the_transformer_copies_out_with_model_py_alone(tmp_path):
    """model.py in a folder of its own builds and runs a MaskedTransformer from a ModelConfig."""
    import shutil
    import subprocess
    import sys
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    shutil.copy(root / "model.py", tmp_path / "model.py")
    code = ("import torch, model; m = model.MaskedTransformer(model.ModelConfig(codebook_size=16, n_tokens=36, "
            "vocab_size=10, prompt_len=5, d_model=32, n_layers=1, n_heads=2)); "
            "print(tuple(m(torch.randint(0, 17, (2, 36)), torch.randint(0, 10, (2, 5))).shape))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "(2, 36, 16)", res.stderr


def test_the_prompt_vocabulary_is_the_grammars():
    import model
    words = {w for p in W.sample_prompts(2000, torch.Generator().manual_seed(0)) for w in p.split(" ")}
    assert set(model.WORDS[2:]) == words and len(model.WORDS) == len(set(model.WORDS))  # <pad>, <null>, the words
