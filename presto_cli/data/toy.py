"""Toy Gaussian-mixture data with closed-form denoisers (METHOD.md section 7).

A mixture ``p(x) = sum_k w_k N(mu_k, s_k^2 I)`` noised with ``N(0, sigma^2 I)`` stays a mixture,
so the exact EDM denoiser and the exact posterior are known:

    r_k(x) ∝ w_k N(x; mu_k, (s_k^2 + sigma^2) I)
    D(x; sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))
    x0 | x, k   ~ N(mu_k + s_k^2/(s_k^2+sigma^2)(x - mu_k), s_k^2 sigma^2 / (s_k^2 + sigma^2) I)

Each component has a caption, so the data is text-conditional and classifier-free guidance can be
tested. Samples are "latents" of shape ``[C, 1]`` (C = data dimension, one frame), so the teacher
stage trains on them exactly as on real latents (``data.path: toy:gmm2d`` or ``toy:gmm1d``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from presto_cli.errors import PrestoError

__all__ = ["GMM", "gmm2d", "gmm1d", "TOY_DATASETS", "ToyDataset", "parse_toy_path", "is_toy_path"]


@dataclass
class GMM:
    """An isotropic-per-component Gaussian mixture with one caption per component."""

    weights: Tensor  # [K], sums to 1
    means: Tensor  # [K, D]
    stds: Tensor  # [K]
    captions: list[str]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def k(self) -> int:
        return self.means.shape[0]

    def std(self) -> float:
        """Overall standard deviation per dimension (averaged over dimensions)."""
        w, m, s = self.weights.double(), self.means.double(), self.stds.double()
        mean = (w[:, None] * m).sum(0)
        second = (w[:, None] * (m ** 2 + s[:, None] ** 2)).sum(0)
        return float((second - mean ** 2).mean().sqrt())

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x [n, D], labels [n])``; ``labels`` given fixes each sample's component."""
        if labels is None:
            labels = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means.double()[labels] + self.stds.double()[labels, None] * eps
        return x.float(), labels

    def _resp(self, x: Tensor, sigma: Tensor, labels: Tensor | None):
        """Posterior component probabilities r [n, K] and per-component scalings."""
        n = x.shape[0]
        xf = x.reshape(n, -1).double()
        if xf.shape[1] != self.dim:
            raise PrestoError(f"toy data has dimension {self.dim}, got inputs of {xf.shape[1]}")
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(n)
        mu, s2 = self.means.double().to(x.device), self.stds.double().to(x.device) ** 2
        var = s2[None, :] + sig[:, None] ** 2  # [n, K]
        d2 = ((xf[:, None, :] - mu[None]) ** 2).sum(-1)  # [n, K]
        logp = torch.log(self.weights.double().to(x.device))[None] - 0.5 * d2 / var \
            - 0.5 * self.dim * torch.log(var)
        if labels is not None:
            keep = torch.nn.functional.one_hot(labels.to(x.device), self.k).bool()
            logp = logp.masked_fill(~keep, float("-inf"))
        r = torch.softmax(logp, dim=1)
        return xf, sig, mu, s2, var, r

    def denoiser(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """The exact ``E[x0 | x_sigma]`` (``labels`` restricts each sample to its component)."""
        xf, sig, mu, s2, var, r = self._resp(x, sigma, labels)
        gain = (s2[None, :] / var)[..., None]  # [n, K, 1]
        means_k = mu[None] + gain * (xf[:, None, :] - mu[None])
        out = (r[..., None] * means_k).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def posterior_sample(self, x: Tensor, sigma: Tensor | float,
                         generator: torch.Generator | None = None) -> Tensor:
        """A sample of ``x0 | x_sigma`` (what an ideal one-step generator outputs)."""
        xf, sig, mu, s2, var, r = self._resp(x, sigma, None)
        k = torch.multinomial(r.cpu(), 1, generator=generator).squeeze(1).to(x.device)
        gain = s2[k] / var.gather(1, k[:, None]).squeeze(1)
        mean = mu[k] + gain[:, None] * (xf - mu[k])
        sd = (s2[k] * sig ** 2 / var.gather(1, k[:, None]).squeeze(1)).sqrt()
        eps = torch.randn(xf.shape, generator=generator, dtype=torch.float64).to(x.device)
        return (mean + sd[:, None] * eps).reshape(x.shape).to(x.dtype)


def gmm2d() -> GMM:
    """Four tight modes at (±0.5, ±0.5) (std 0.08; overall std ≈ 0.5 = sigma_data)."""
    return GMM(weights=torch.tensor([0.25, 0.25, 0.25, 0.25]),
               means=torch.tensor([[-0.5, 0.5], [0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]]),
               stds=torch.full((4,), 0.08),
               captions=["top left", "top right", "bottom left", "bottom right"])


def gmm1d() -> GMM:
    """Three modes at -0.6, 0, 0.6 with weights 0.3, 0.4, 0.3 (std 0.08; overall std ≈ 0.47)."""
    return GMM(weights=torch.tensor([0.3, 0.4, 0.3]),
               means=torch.tensor([[-0.6], [0.0], [0.6]]),
               stds=torch.full((3,), 0.08),
               captions=["low note", "middle note", "high note"])


TOY_DATASETS = {"gmm2d": gmm2d, "gmm1d": gmm1d}


def is_toy_path(path: str) -> bool:
    return str(path).startswith("toy:")


def parse_toy_path(path: str) -> GMM:
    """``"toy:gmm2d"`` -> the mixture; a PrestoError naming the valid ones otherwise."""
    name = str(path)[4:] if is_toy_path(path) else str(path)
    if name not in TOY_DATASETS:
        raise PrestoError(f"unknown toy dataset '{path}'",
                          f"valid: {', '.join('toy:' + k for k in TOY_DATASETS)}")
    return TOY_DATASETS[name]()


class ToyDataset:
    """A fixed sample of a toy mixture: items ``{"latents": Tensor[D, 1], "caption": str,
    "label": Tensor[] long}`` (the data dimension is the latent channel axis, one frame)."""

    def __init__(self, path: str = "toy:gmm2d", n: int = 4096, seed: int = 0):
        self.gmm = parse_toy_path(path)
        g = torch.Generator().manual_seed(int(seed))
        self.x, self.labels = self.gmm.sample(n, g)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict:
        lab = int(self.labels[i])
        return {"latents": self.x[i][:, None].clone(), "caption": self.gmm.captions[lab],
                "label": torch.tensor(lab)}
