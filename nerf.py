"""NeRF: positional encoding, the radiance-field MLP, sampling along rays and volume rendering.

`RadianceField` is the MLP of Mildenhall et al. (2020): `depth` layers of `width` units with the
encoded point concatenated again after the layers in `skips`, a density head, and a colour head that
also sees the encoded view direction. `NeRF` owns a coarse and (optionally) a fine field and renders
rays with stratified plus hierarchical sampling; its forward pass is the whole training computation,
so DistributedDataParallel can wrap it.

The layer constructor is a parameter (`linear`), which is how BitNeRF reuses this topology.
"""

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

LinearFactory = Callable[[int, int], nn.Module]
MLP_RANGE = "mlp"  # the profiler range around every MLP evaluation


class PositionalEncoding(nn.Module):
    """gamma(p) = (p, sin(2^k p), cos(2^k p)) for k < n_freqs, applied per coordinate."""

    def __init__(self, n_freqs: int):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)
        self.out_dim = 3 + 3 * 2 * n_freqs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x[..., None, :] * self.freqs[:, None]).flatten(-2)
        return torch.cat([x, torch.sin(scaled), torch.cos(scaled)], dim=-1)


class RadianceField(nn.Module):
    """Maps points (and view directions) to colour in [0, 1] and non-negative density."""

    def __init__(
        self,
        depth: int = 8,
        width: int = 256,
        pos_freqs: int = 10,
        dir_freqs: int = 4,
        skips: tuple[int, ...] = (4,),
        use_viewdirs: bool = True,
        linear: LinearFactory = nn.Linear,
    ):
        super().__init__()
        self.skips = tuple(skips)
        self.use_viewdirs = use_viewdirs
        self.pos_encoding = PositionalEncoding(pos_freqs)
        pos_dim = self.pos_encoding.out_dim
        self.layers = nn.ModuleList(
            [linear(pos_dim, width)]
            + [linear(width + pos_dim if i in self.skips else width, width) for i in range(depth - 1)]
        )
        if use_viewdirs:
            self.dir_encoding = PositionalEncoding(dir_freqs)
            self.density_head = linear(width, 1)
            self.feature = linear(width, width)
            self.view_layer = linear(width + self.dir_encoding.out_dim, width // 2)
            self.rgb_head = linear(width // 2, 3)
        else:
            self.output_head = linear(width, 4)

    def forward(self, points: torch.Tensor, viewdirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points, viewdirs: (..., 3) -> rgb (..., 3), density (...)."""
        encoded = self.pos_encoding(points)
        encoded_dirs = self.dir_encoding(viewdirs) if self.use_viewdirs else None
        # A named range, so that a profile (bench.py) can tell the MLP's time from encoding and rendering
        # (not in a compiled field, which runs as one graph and would only warn about it).
        with nullcontext() if torch.compiler.is_compiling() else torch.profiler.record_function(MLP_RANGE):
            return self.decode(encoded, encoded_dirs)

    def decode(self, encoded: torch.Tensor, encoded_dirs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP on encoded points (..., pos_dim) and, with view directions, encoded directions (..., dir_dim)."""
        h = encoded
        for i, layer in enumerate(self.layers):
            h = F.relu(layer(h))
            if i in self.skips:
                h = torch.cat([encoded, h], dim=-1)
        if self.use_viewdirs:
            raw_density = self.density_head(h)[..., 0]
            h = torch.cat([self.feature(h), encoded_dirs], dim=-1)
            raw_rgb = self.rgb_head(F.relu(self.view_layer(h)))
        else:
            raw = self.output_head(h)
            raw_rgb, raw_density = raw[..., :3], raw[..., 3]
        # Softplus with a -1 shift (mip-NeRF) instead of ReLU: no dead units at initialisation.
        return torch.sigmoid(raw_rgb), F.softplus(raw_density - 1.0)


def sample_stratified(near: float, far: float, n_rays: int, n_samples: int, device,
                      u: torch.Tensor | None = None) -> torch.Tensor:
    """(n_rays, n_samples) sorted distances: one per equal bin of [near, far], at u in [0, 1) within
    its bin (u: (n_rays, n_samples)), or at the bin's middle when u is None."""
    edges = torch.linspace(near, far, n_samples + 1, device=device)
    lower, width = edges[:-1], edges[1:] - edges[:-1]
    if u is None:
        u = torch.full((n_rays, n_samples), 0.5, device=device)
    return lower + u * width


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int,
               u: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-transform sampling of the piecewise-constant PDF given by `weights` over `bins`.

    bins: (R, B+1) sorted edges, weights: (R, B) -> (R, n_samples) distances at the CDF values u
    (R, n_samples) uniform in [0, 1), or at evenly spaced CDF values when u is None.
    """
    weights = weights + 1e-5  # a ray with no weight samples its bins uniformly
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], -1)
    if u is None:
        u = torch.linspace(0.0, 1.0, n_samples, device=cdf.device).expand(*cdf.shape[:-1], n_samples)
    u = u.contiguous()
    above = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
    below = (above - 1).clamp(min=0)
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    span = torch.where(cdf_above - cdf_below < 1e-5, torch.ones_like(cdf_above), cdf_above - cdf_below)
    return bins_below + (u - cdf_below) / span * (bins_above - bins_below)


def composite(rgb: torch.Tensor, density: torch.Tensor, t: torch.Tensor, dirs: torch.Tensor,
              far: float, white_bkgd: bool) -> dict[str, torch.Tensor]:
    """Volume rendering quadrature: alpha_i = 1 - exp(-density_i * delta_i), w_i = T_i * alpha_i.

    rgb (R, N, 3), density (R, N), t (R, N) sorted, dirs (R, 3). The last sample's interval ends at
    `far`, so a ray can stay transparent; depth counts the transparent remainder at `far`.
    """
    deltas = torch.diff(t, dim=-1, append=torch.full_like(t[..., :1], far)).clamp(min=0.0)
    alpha = 1.0 - torch.exp(-density * deltas * dirs.norm(dim=-1, keepdim=True))
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * transmittance
    acc = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(-2)
    if white_bkgd:
        color = color + (1.0 - acc[..., None])
    depth = (weights * t).sum(-1) + (1.0 - acc) * far
    return {"rgb": color, "depth": depth, "acc": acc, "weights": weights}


class NeRF(nn.Module):
    """Coarse + fine radiance fields and the renderer: forward(origins, dirs) -> rendered rays."""

    def __init__(
        self,
        near: float,
        far: float,
        white_bkgd: bool,
        n_coarse: int = 64,
        n_fine: int = 64,
        linear: LinearFactory = nn.Linear,
        **field_kwargs,
    ):
        super().__init__()
        self.near, self.far, self.white_bkgd = float(near), float(far), bool(white_bkgd)
        self.n_coarse, self.n_fine = n_coarse, n_fine
        self.coarse = RadianceField(linear=linear, **field_kwargs)
        self.fine = RadianceField(linear=linear, **field_kwargs) if n_fine > 0 else None

    def _render(self, field: nn.Module, origins, dirs, viewdirs, t) -> dict[str, torch.Tensor]:
        points = origins[:, None, :] + dirs[:, None, :] * t[..., None]
        rgb, density = field(points, viewdirs[:, None, :].expand(points.shape))
        return composite(rgb.float(), density.float(), t, dirs, self.far, self.white_bkgd)

    def forward(self, origins: torch.Tensor, dirs: torch.Tensor,
                jitter: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """origins, dirs: (R, 3). Returns rgb, depth, acc (R, ...) of the finest pass, and rgb_coarse.

        jitter: (R, n_coarse + n_fine) uniforms in [0, 1) that place the training samples (stratified,
        then importance), drawn with the rays so that the sample stream does not depend on how the
        rays are split across processes; None for the deterministic samples of evaluation.
        """
        u_coarse, u_fine = (None, None) if jitter is None else jitter.split([self.n_coarse, self.n_fine], -1)
        viewdirs = F.normalize(dirs, dim=-1)
        t_coarse = sample_stratified(self.near, self.far, origins.shape[0], self.n_coarse, origins.device, u_coarse)
        coarse = self._render(self.coarse, origins, dirs, viewdirs, t_coarse)
        if self.fine is None:
            return {**coarse, "rgb_coarse": coarse["rgb"]}
        mids = 0.5 * (t_coarse[..., 1:] + t_coarse[..., :-1])
        t_importance = sample_pdf(mids, coarse["weights"][..., 1:-1].detach(), self.n_fine, u_fine)
        t_fine, _ = torch.sort(torch.cat([t_coarse, t_importance.detach()], -1), -1)
        fine = self._render(self.fine, origins, dirs, viewdirs, t_fine)
        return {**fine, "rgb_coarse": coarse["rgb"]}

    def samples_per_ray(self) -> dict[str, int]:
        """MLP queries per ray of each field, keyed by the field's module name."""
        counts = {"coarse": self.n_coarse}
        if self.fine is not None:
            counts["fine"] = self.n_coarse + self.n_fine
        return counts


@torch.no_grad()
def render_image(model: nn.Module, origins: torch.Tensor, dirs: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Render (H, W, 3) ray grids in chunks of `chunk` rays; returns rgb (H, W, 3) and depth (H, W).

    Every chunk is padded to `chunk` rays so a compiled model sees one shape.
    """
    height, width = origins.shape[:2]
    flat_origins, flat_dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n = flat_origins.shape[0]
    rgb, depth = [], []
    for start in range(0, n, chunk):
        o, d = flat_origins[start:start + chunk], flat_dirs[start:start + chunk]
        pad = chunk - o.shape[0]
        if pad:
            o = torch.cat([o, o[-1:].expand(pad, 3)])
            d = torch.cat([d, d[-1:].expand(pad, 3)])
        out = model(o, d)
        rgb.append(out["rgb"][: chunk - pad])
        depth.append(out["depth"][: chunk - pad])
    return {"rgb": torch.cat(rgb).reshape(height, width, 3), "depth": torch.cat(depth).reshape(height, width)}
