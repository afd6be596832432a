"""
The two models, in reading order: the masked transformer that generates VQ tokens MaskGIT-style, its training
loss, and the toy VQ codebook that turns images into tokens.

MaskedTransformer: a bidirectional pre-LN transformer over [prompt words ; image tokens] that predicts
a code for every image position; the MaskGIT loss scores the masked ones. Its sizes all come from a
ModelConfig, so it copies into another project with this file alone (only encode_prompts imports the
grammar; the all-<null> prompt, learned by dropping prompts in pretraining, is CFG's unconditional
branch). Positions are known two ways: a learned absolute embedding and a 2-D rotary one (RoPE over row
and column; prompt words are not rotated), which makes attention see relative offsets, so "the token
above me is the top arc of a red circle" is learned once for every place: what lets an object's 2x2 to
3x3 parts agree. Simplified versus MaskGIT: no timestep input (the mask pattern says it all), no tying.

VQCodebook: instead of a trained VQ-GAN, k-means on the non-overlapping p x p patches of rendered images;
a patch becomes the id of its nearest centroid, and decoding pastes the centroids back. train.py's objects lie
on the 4-pixel grid of its 4x4 patches, so a code is a *part* of a shape (an arc, a slope, a fill, an edge):
57 distinct patches at 32x32 (K=64 is lossless), 129 at 64x64 (K=256); with free placement (grid=1) about 900
and K=1024 is nearly lossless. The mask token id is K = codebook_size, one past the last code.
"""

import argparse
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# ---- Prompt tokenisation (the grammar's words; every prompt fits in PROMPT_LEN words)

WORDS = ("<pad>", "<null>", "a", "and", "of", "two", "three", "four", "red", "green", "blue", "yellow",
         "circle", "square", "triangle", "circles", "squares", "triangles", "left", "right", "above", "below")
WORD_ID = {w: i for i, w in enumerate(WORDS)}
PROMPT_LEN = 8  # "a red circle left of a blue square"


def encode_prompts(prompts):
    """list of B prompts -> (B, PROMPT_LEN) long word ids, <pad>-filled. ValueError outside the grammar."""
    import world  # the grammar: only the tokeniser needs it, so the transformer copies out alone
    rows = []
    for p in world.prompt_list(prompts):
        world.parse_prompt(p)  # raises a clear error for anything outside the grammar
        ids = [WORD_ID[w] for w in p.split(" ")]
        rows.append(ids + [WORD_ID["<pad>"]] * (PROMPT_LEN - len(ids)))
    return torch.tensor(rows, dtype=torch.long).view(len(rows), PROMPT_LEN)


def check_prompt_ids(prompt_ids, batch=None, length=PROMPT_LEN):
    """Refuse anything but the (B, PROMPT_LEN) long tensor encode_prompts makes (shape and dtype only: no sync)."""
    is_tensor = isinstance(prompt_ids, torch.Tensor)
    if not is_tensor or prompt_ids.dtype != torch.long or prompt_ids.ndim != 2 or prompt_ids.shape[1] != length or (
            batch not in (None, prompt_ids.shape[0])):
        got = f"{tuple(prompt_ids.shape)} {prompt_ids.dtype}" if is_tensor else type(prompt_ids).__name__
        raise ValueError(f"prompt_ids must be ({'B' if batch is None else batch}, {length}) long (encode_prompts), "
                         f"got {got}")


def null_prompts(n, device=None):
    """(n, PROMPT_LEN) ids of the unconditional prompt (classifier-free guidance)."""
    return torch.full((n, PROMPT_LEN), WORD_ID["<null>"], dtype=torch.long, device=device)


# ---- Masked transformer

@dataclass
class ModelConfig:
    codebook_size: int = 64  # K; the mask id is K
    n_tokens: int = 64  # N = (image_size / patch)^2, a square grid
    vocab_size: int = len(WORDS)  # prompt words (encode_prompts' ids; id 1 is the null prompt)
    prompt_len: int = PROMPT_LEN  # prompt ids per sample
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4


def rope_2d(n_tokens, head_dim, n_prefix, base=100.0):
    """2-D rotary angles -> (cos, sin), each (n_prefix + N, head_dim / 2). The first half of the rotated
    pairs turns with the token's row, the second with its column; the n_prefix prompt words get angle 0."""
    g = math.isqrt(n_tokens)
    if g * g != n_tokens or head_dim % 4:
        raise ValueError(f"2-D RoPE needs a square token grid and a head size divisible by 4, "
                         f"got {n_tokens} tokens and head size {head_dim}")
    pos = torch.arange(n_tokens)
    freqs = base ** (-torch.arange(head_dim // 4) / (head_dim // 4))  # (dh/4,)
    ang = torch.cat([(pos // g)[:, None] * freqs, (pos % g)[:, None] * freqs], 1)  # (N, dh/2): rows | columns
    ang = torch.cat([torch.zeros(n_prefix, head_dim // 2), ang])  # (L + N, dh/2)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """Rotate the pairs (x[..., i], x[..., i + dh/2]) of x (B, heads, S, dh) by the angles behind cos, sin (S, dh/2)."""
    x1, x2 = x.chunk(2, -1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)). Bidirectional attention, 2-D RoPE."""

    def __init__(self, d, n_heads, mlp_ratio):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x, cos, sin):
        B, S, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, heads, S, D/heads)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, S, D/heads), every token sees every token
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, D))
        return x + self.mlp(self.ln2(x))


class MaskedTransformer(nn.Module):
    """forward(tokens (B, N) in [0, K], prompt_ids (B, L)) -> logits (B, N, K) [, features (B, N, D)]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config, D = config, config.d_model
        if D % config.n_heads:
            raise ValueError(f"d_model {D} is not divisible by n_heads {config.n_heads}")
        self.tok_emb = nn.Embedding(config.codebook_size + 1, D)  # +1: the mask token
        self.pos_emb = nn.Parameter(torch.randn(1, config.n_tokens, D) * 0.02)
        self.word_emb = nn.Embedding(config.vocab_size, D)
        self.word_pos = nn.Parameter(torch.randn(1, config.prompt_len, D) * 0.02)
        self.blocks = nn.ModuleList(Block(D, config.n_heads, config.mlp_ratio) for _ in range(config.n_layers))
        cos, sin = rope_2d(config.n_tokens, D // config.n_heads, config.prompt_len)
        self.register_buffer("rope_cos", cos, persistent=False)  # (L + N, D/heads/2), rebuilt, never saved
        self.register_buffer("rope_sin", sin, persistent=False)
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.codebook_size)  # never predicts the mask id
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def mask_id(self):
        return self.config.codebook_size

    def embed_tokens(self, tokens):
        """(B, N) ids -> (B, N, D) token + position embeddings (the shortcut model reuses these)."""
        return self.tok_emb(tokens) + self.pos_emb[:, : tokens.shape[1]]

    def features(self, tokens, prompt_ids):
        """(B, N) ids, (B, L) prompt -> the final features (B, N, D) that the head reads."""
        B, N = tokens.shape
        if N != self.config.n_tokens:
            raise ValueError(f"expected {self.config.n_tokens} image tokens, got {N}")
        check_prompt_ids(prompt_ids, B, self.config.prompt_len)
        x = torch.cat([self.word_emb(prompt_ids) + self.word_pos, self.embed_tokens(tokens)], 1)  # (B, L + N, D)
        for blk in self.blocks:
            x = blk(x, self.rope_cos, self.rope_sin)
        return self.ln_f(x[:, self.config.prompt_len:])  # (B, N, D)

    def forward(self, tokens, prompt_ids, return_features=False):
        feats = self.features(tokens, prompt_ids)  # (B, N, D)
        return (self.head(feats), feats) if return_features else self.head(feats)  # logits (B, N, K)


def autocast(device):
    """bf16 autocast on CUDA only; a no-op elsewhere."""
    cuda = torch.device(device).type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()


def maskgit_masks(B, N, generator=None, device=None, prompt_drop=0.1):
    """MaskGIT's training masks: a cosine-schedule fraction cos(pi/2 u), u ~ U(0, 1), of each row's N tokens (at
    least one) -> (masked (B, N) bool, drop (B,) bool: the rows that see the null prompt)."""
    u = torch.rand(B, generator=generator, device=device)
    n_mask = (torch.cos(math.pi / 2 * u) * N).ceil().clamp(1, N)  # (B,)
    rank = torch.rand(B, N, generator=generator, device=device).argsort(1).argsort(1)  # random order per row
    return rank < n_mask[:, None], torch.rand(B, generator=generator, device=device) < prompt_drop


def maskgit_loss(model, tokens, prompt_ids, generator=None, prompt_drop=0.1, masks=None, normalizer=None):
    """Cross-entropy on the masked tokens only, with maskgit_masks' masks (or the given (masked, drop)); the
    dropped rows see the null prompt, which teaches the unconditional branch. The mean over the masked tokens,
    or their sum / `normalizer` (data parallel: the global batch's count over the ranks, dist.py)."""
    B, N = tokens.shape
    masked, drop = maskgit_masks(B, N, generator, tokens.device, prompt_drop) if masks is None else masks
    inp = torch.where(masked, torch.full_like(tokens, model.mask_id), tokens)
    prompt_ids = torch.where(drop[:, None], null_prompts(B, tokens.device), prompt_ids)
    logits = model(inp, prompt_ids)  # (B, N, K)
    ce = F.cross_entropy(logits[masked].float(), tokens[masked], reduction="mean" if normalizer is None else "sum")
    return ce if normalizer is None else ce / normalizer


# ---- VQ codebook (k-means on patches)


def patchify(images, p):
    """(B, 3, H, W) -> (B, N, 3*p*p) non-overlapping patches in raster order, N = (H/p)*(W/p)."""
    B, C, H, W = images.shape
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches, p, channels=3):
    """(B, N, 3*p*p) -> (B, 3, H, W), the inverse of patchify (square images)."""
    B, g = patches.shape[0], math.isqrt(patches.shape[1])
    x = patches.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
    return x.reshape(B, channels, g * p, g * p)


def _nearest(x, codes, chunk=65536):
    """Index of the nearest code for each row of x (M, d) -> (M,) long, in chunks to bound memory."""
    c2 = (codes * codes).sum(1)  # (K,)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = (c2 - 2 * x[i:i + chunk] @ codes.T).argmin(1)  # |x|^2 is the same for every code
    return out


class VQCodebook(nn.Module):
    """K codes of p x p RGB patches. encode: (B, 3, H, W) -> (B, N) long; decode: the inverse."""

    def __init__(self, codebook_size, patch):
        super().__init__()
        self.codebook_size, self.patch = codebook_size, patch
        self.register_buffer("codes", torch.zeros(codebook_size, 3 * patch * patch))  # (K, 3*p*p)

    mask_id = property(lambda self: self.codebook_size)  # one past the last code, never a real code

    @classmethod
    @torch.no_grad()
    def fit(cls, images, codebook_size, patch, generator, iters=25, progress=False):
        """k-means (k-means++ seeding, count-weighted Lloyd steps) on the distinct patches of `images`."""
        x = patchify(images.float().cpu(), patch).reshape(-1, 3 * patch * patch)
        x, counts = torch.unique((x * 255).round(), dim=0, return_counts=True)  # most patches repeat
        x, w, K, vq = x / 255, counts.float(), codebook_size, cls(codebook_size, patch)
        if len(x) <= K:  # every distinct patch gets its own code (lossless); spare codes repeat one
            vq.codes.copy_(torch.cat([x, x[torch.randint(len(x), (K - len(x),), generator=generator)]]))
            return vq
        # k-means++: a new centre with probability ~ squared distance to the nearest (rare patches get codes too)
        codes = x[torch.randint(len(x), (1,), generator=generator)]
        d2 = ((x - codes[0]) ** 2).sum(1)
        for _ in range(1, K):
            i = torch.multinomial(d2 + 1e-12, 1, generator=generator)
            codes = torch.cat([codes, x[i]])
            d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
        for _ in tqdm(range(iters), desc="k-means", leave=False, disable=not progress):
            a = _nearest(x, codes)
            sums = torch.zeros_like(codes).index_add_(0, a, x * w[:, None])
            n = torch.zeros(K).index_add_(0, a, w)
            codes[n > 0] = sums[n > 0] / n[n > 0, None]
            if len(dead := (n == 0).nonzero()[:, 0]):  # re-seed empty codes at the worst-explained patches
                codes[dead] = x[((x - codes[a]) ** 2).sum(1).topk(len(dead)).indices]
        vq.codes.copy_(codes)
        return vq

    @torch.no_grad()
    def encode(self, images):
        """(B, 3, H, W) in [0, 1] -> (B, N) long codes in [0, K)."""
        patches = patchify(images.float(), self.patch)  # (B, N, 3*p*p)
        return _nearest(patches.flatten(0, 1), self.codes.to(patches.device)).view(patches.shape[:2])

    @torch.no_grad()
    def decode(self, tokens):
        """(B, N) long codes -> (B, 3, H, W) images. A mask id anywhere is an error."""
        if (tokens >= self.codebook_size).any() or (tokens < 0).any():
            raise ValueError(f"decode got ids outside [0, {self.codebook_size}): masked tokens left?")
        return unpatchify(self.codes.to(tokens.device)[tokens], self.patch)


if __name__ == "__main__":
    # python model.py --image-size 64 --codebook-size 256: fit the codebook; do the verifier's verdicts survive it?
    import rewards
    import world
    ap = argparse.ArgumentParser(description="Fit the VQ codebook and check that verdicts survive encode -> decode.")
    for name, default in [("image-size", 32), ("codebook-size", 64), ("patch", 4), ("grid", 4), ("fit-images", 4000),
                          ("n", 2000), ("seed", 0)]:  # grid: objects on this pixel grid (1: anywhere); n: checked
        ap.add_argument(f"--{name}", type=int, default=default)
    world.refuse_bad_scene_args(ap, args := ap.parse_args())
    if min(args.fit_images, args.patch) < 1 or args.codebook_size < 2 or args.image_size % args.patch:
        ap.error(f"--fit-images and --patch must be at least 1, --codebook-size at least 2, and "
                 f"--image-size {args.image_size} must be a multiple of --patch {args.patch}")
    g = torch.Generator().manual_seed(args.seed)
    vq = VQCodebook.fit(world.render(world.sample_prompts(args.fit_images, g), args.image_size, g, grid=args.grid),
                        args.codebook_size, args.patch, g, progress=True)
    prompts = world.sample_prompts(args.n, g)
    images = world.render(prompts, args.image_size, g, grid=args.grid)
    wrong = [world.perturb_prompt(p, g) for p in prompts]
    noisy = (images + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    for name, x in (("clean", images), ("noise std 0.03", noisy)):
        recon = vq.decode(vq.encode(x))
        ok, rej = [(rewards.reward(recon, p) >= 1).float().mean() for p in (prompts, wrong)]
        print(f"{name:>15}: reconstruction MSE {((recon - images) ** 2).mean():.2e}, "
              f"true prompt satisfied {ok:.2%}, minimally wrong prompt rejected {1 - rej:.2%}")
