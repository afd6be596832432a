"""
The two models: a toy VQ codebook that turns images into tokens, and (below it) the
bidirectional masked transformer that generates those tokens, MaskGIT-style.

VQCodebook: instead of a trained VQ-GAN we fit k-means to the non-overlapping p x p
patches of rendered images. Each patch becomes the id of its nearest centroid, and
decoding pastes the centroids back. On the toy world this is nearly lossless with a
few hundred codes (the patches are flat colours plus a limited set of shape edges),
which is all the RL and shortcut experiments need: a discrete token grid whose images
the verifier can score. The mask token id is K = codebook_size, one past the last code.
"""

import argparse
import math

import torch
import torch.nn as nn

# ----------------------------------------------------------------------------------
# VQ codebook (k-means on patches)


def patchify(images, p):
    """(B, 3, H, W) -> (B, N, 3*p*p) non-overlapping patches in raster order, N = (H/p)*(W/p)."""
    B, C, H, W = images.shape
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches, p, channels=3):
    """(B, N, 3*p*p) -> (B, 3, H, W), the inverse of patchify (square images)."""
    B, N, _ = patches.shape
    g = math.isqrt(N)
    x = patches.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
    return x.reshape(B, channels, g * p, g * p)


def _nearest(x, codes, chunk=65536):
    """Index of the nearest code for each row of x (M, d) -> (M,) long, in chunks to bound memory."""
    c2 = (codes * codes).sum(1)  # (K,)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        out[i:i + chunk] = (c2 - 2 * xb @ codes.T).argmin(1)  # |x|^2 is the same for every code
    return out


class VQCodebook(nn.Module):
    """K codes of p x p RGB patches. encode: (B, 3, H, W) -> (B, N) long; decode: the inverse."""

    def __init__(self, codebook_size, patch):
        super().__init__()
        self.codebook_size, self.patch = codebook_size, patch
        self.register_buffer("codes", torch.zeros(codebook_size, 3 * patch * patch))  # (K, 3*p*p)

    @property
    def mask_id(self):
        return self.codebook_size  # one past the last code, never a real code

    @classmethod
    @torch.no_grad()
    def fit(cls, images, codebook_size, patch, generator, iters=25, progress=False):
        """k-means (k-means++ seeding, count-weighted Lloyd steps) on the distinct patches of `images`."""
        x = patchify(images.float().cpu(), patch).reshape(-1, 3 * patch * patch)
        x, counts = torch.unique((x * 255).round(), dim=0, return_counts=True)  # most patches repeat
        x, w = x / 255, counts.float()
        K = codebook_size
        if len(x) <= K:  # every distinct patch gets its own code (lossless); spare codes repeat one
            vq = cls(codebook_size, patch)
            vq.codes.copy_(torch.cat([x, x[torch.randint(len(x), (K - len(x),), generator=generator)]]))
            return vq
        # k-means++: each new centre drawn with probability ~ squared distance to the nearest one
        # (unweighted by count, so rare edge patterns get codes too)
        codes = x[torch.randint(len(x), (1,), generator=generator)]
        d2 = ((x - codes[0]) ** 2).sum(1)
        for _ in range(1, K):
            i = torch.multinomial(d2 + 1e-12, 1, generator=generator)
            codes = torch.cat([codes, x[i]])
            d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
        steps = range(iters)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="k-means", leave=False)
        for _ in steps:
            a = _nearest(x, codes)
            sums = torch.zeros_like(codes).index_add_(0, a, x * w[:, None])
            n = torch.zeros(K).index_add_(0, a, w)
            live = n > 0
            codes[live] = sums[live] / n[live, None]
            dead = (~live).nonzero()[:, 0]
            if len(dead):  # re-seed empty codes at the worst-explained patches
                err = ((x - codes[a]) ** 2).sum(1)
                codes[dead] = x[err.topk(len(dead)).indices]
        vq = cls(codebook_size, patch)
        vq.codes.copy_(codes)
        return vq

    @torch.no_grad()
    def encode(self, images):
        """(B, 3, H, W) in [0, 1] -> (B, N) long codes in [0, K)."""
        patches = patchify(images.float(), self.patch)  # (B, N, 3*p*p)
        B, N, d = patches.shape
        return _nearest(patches.reshape(-1, d), self.codes.to(patches.device)).view(B, N)

    @torch.no_grad()
    def decode(self, tokens):
        """(B, N) long codes -> (B, 3, H, W) images. A mask id anywhere is an error."""
        if (tokens >= self.codebook_size).any() or (tokens < 0).any():
            raise ValueError(f"decode got ids outside [0, {self.codebook_size}): masked tokens left?")
        return unpatchify(self.codes.to(tokens.device)[tokens], self.patch)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Fit the VQ codebook and check that verdicts survive encode -> decode.")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--fit-images", type=int, default=4000)
    ap.add_argument("--n", type=int, default=2000, help="held-out scenes to check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import rewards
    g = torch.Generator().manual_seed(args.seed)
    train = rewards.render(rewards.sample_prompts(args.fit_images, g), args.image_size, g)
    vq = VQCodebook.fit(train, args.codebook_size, args.patch, g, progress=True)
    prompts = rewards.sample_prompts(args.n, g)
    images = rewards.render(prompts, args.image_size, g)
    wrong = [rewards.perturb_prompt(p, g) for p in prompts]
    noisy = (images + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    print(f"codebook K={args.codebook_size}, {args.patch}x{args.patch} patches, fitted on {args.fit_images} "
          f"{args.image_size}x{args.image_size} scenes")
    for name, x in (("clean", images), ("noise std 0.03", noisy)):
        recon = vq.decode(vq.encode(x))
        ok = (rewards.reward(recon, prompts) >= 1).float().mean()
        rej = (rewards.reward(recon, wrong) < 1).float().mean()
        print(f"{name:>15}: reconstruction MSE {((recon - images) ** 2).mean():.2e}, "
              f"true prompt satisfied {ok:.2%}, minimally wrong prompt rejected {rej:.2%}")
