"""NeRF: positional encoding, the radiance-field MLP, sampling along rays and volume rendering.

`RadianceField` is the MLP of Mildenhall et al. (2020): `depth` layers of `width` units with the
encoded point concatenated again after the layers in `skips`, a density head, and a colour head that
also sees the encoded view direction. `NeRF` owns a coarse and (optionally) a fine field and renders
rays with stratified plus hierarchical sampling; its forward pass is the whole training computation,
so DistributedDataParallel can wrap it.

The layer constructor is a parameter (`linear`), which is how BitNeRF reuses this topology.

Empty-space skipping (`OccupancyGrid`, with the semantics of nerfacc's OccGridEstimator): a binary grid
over the scene's box, kept from the coarse field's density during training; samples in empty cells never
reach an MLP, and in rendering a ray stops once its transmittance falls below `early_stop`.
"""

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

LinearFactory = Callable[[int, int], nn.Module]
MLP_RANGE = "mlp"  # the profiler range around every MLP evaluation

# The occupancy grid's schedule and threshold, nerfacc's defaults (OccGridEstimator.update_every_n_steps).
GRID_UPDATE_EVERY = 16  # steps between two updates
GRID_WARMUP_STEPS = 256  # before this step an update visits every cell, after it a quarter (and occupied ones)
GRID_EMA_DECAY = 0.95  # nerfacc's default, made for runs of tens of thousands of steps
GRID_OCCUPANCY_THRESHOLD = 0.01  # on alpha = 1 - exp(-density * step): a cell above it (or the mean) is occupied
GRID_UPDATE_CHUNK = 65536  # cells whose density one field call evaluates during an update
EARLY_STOP_TRANSMITTANCE = 1e-4  # rendering: a ray stops once less light than this reaches its next sample
DEPTH_CHUNKS = 4  # rendering with early stopping: a pass evaluates its samples in this many runs along the ray
# The gathered samples of a field call are padded up to a multiple of 1/BUCKETS of the pass's samples, so that
# a compiled field sees at most BUCKETS shapes per pass rather than a new one at every step.
BUCKETS = 8


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


def sample_stratified(
    near: float, far: float, n_rays: int, n_samples: int, device, u: torch.Tensor | None = None
) -> torch.Tensor:
    """(n_rays, n_samples) sorted distances: one per equal bin of [near, far], at u in [0, 1) within
    its bin (u: (n_rays, n_samples)), or at the bin's middle when u is None."""
    edges = torch.linspace(near, far, n_samples + 1, device=device)
    lower, width = edges[:-1], edges[1:] - edges[:-1]
    if u is None:
        u = torch.full((n_rays, n_samples), 0.5, device=device)
    return lower + u * width


def sample_pdf(
    bins: torch.Tensor, weights: torch.Tensor, n_samples: int, u: torch.Tensor | None = None
) -> torch.Tensor:
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


def composite(
    rgb: torch.Tensor, density: torch.Tensor, t: torch.Tensor, dirs: torch.Tensor, far: float, white_bkgd: bool
) -> dict[str, torch.Tensor]:
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


class OccupancyGrid(nn.Module):
    """A binary occupancy grid over an axis-aligned box, as nerfacc's OccGridEstimator keeps it.

    Every GRID_UPDATE_EVERY steps, a set of cells (all of them before GRID_WARMUP_STEPS, then a quarter drawn
    uniformly plus as many of the occupied ones) is evaluated at one uniformly jittered point per cell:
    its alpha over `step` decays the cell's running value by `decay` (GRID_EMA_DECAY) or replaces it, whichever is
    larger, and the cells above min(threshold (GRID_OCCUPANCY_THRESHOLD), the mean of the positive values) are occupied.
    Points outside the box are empty. Before its first update every cell is occupied.

    Ours, not nerfacc's: the random cells and jitter of an update are a function of (seed, step) alone, so
    the grid is the same on every rank and after a resume; a cell drawn twice keeps the maximum (nerfacc
    writes one of the two, in an order CUDA does not fix).
    """

    def __init__(
        self,
        aabb: torch.Tensor,
        resolution: int = 128,
        seed: int = 0,
        decay: float = GRID_EMA_DECAY,
        threshold: float = GRID_OCCUPANCY_THRESHOLD,
    ):
        super().__init__()
        self.resolution, self.seed, self.decay, self.threshold = resolution, seed, decay, threshold
        # Not saved: the box is the scene's (dataset.scene_box), and a model file in fp16 would round it.
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3), persistent=False)
        self.register_buffer("ema", torch.zeros(resolution**3))
        self.register_buffer("occupied", torch.ones(resolution**3, dtype=torch.bool))
        # Per field (coarse, fine): the samples of training rays evaluated, and all of them.
        self.register_buffer("trained_samples", torch.zeros(2, 2, dtype=torch.int64))

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """points (..., 3) -> (...) whether each lies in an occupied cell."""
        lower, upper = self.aabb
        inside = ((points >= lower) & (points <= upper)).all(-1)
        cell = ((points - lower) / (upper - lower) * self.resolution).floor().long().clamp(0, self.resolution - 1)
        index = (cell[..., 0] * self.resolution + cell[..., 1]) * self.resolution + cell[..., 2]
        return inside & self.occupied[index]

    @torch.no_grad()
    def update(self, step: int, density: Callable[[torch.Tensor], torch.Tensor], step_size: float) -> None:
        """At every GRID_UPDATE_EVERY-th step: evaluate density (points (P, 3) -> (P,)) on the step's cells."""
        if step % GRID_UPDATE_EVERY:
            return
        device, n_cells = self.ema.device, self.ema.numel()
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed * 1_000_003 + step)
        if step < GRID_WARMUP_STEPS:
            cells = torch.arange(n_cells, device=device)
        else:
            quarter = n_cells // 4
            occupied = self.occupied.nonzero().squeeze(-1)
            if occupied.numel() > quarter:
                occupied = occupied[torch.randint(occupied.numel(), (quarter,), generator=generator, device=device)]
            cells = torch.cat([torch.randint(n_cells, (quarter,), generator=generator, device=device), occupied])
        res = self.resolution
        coords = torch.stack([cells // (res * res), cells // res % res, cells % res], -1).float()
        jitter = torch.rand(coords.shape, generator=generator, device=device)
        lower, upper = self.aabb
        alpha = 1.0 - torch.exp(-density(lower + (coords + jitter) / res * (upper - lower)).float() * step_size)
        decayed = self.ema.clone()
        decayed[cells] = self.ema[cells] * self.decay
        self.ema.copy_(decayed.scatter_reduce(0, cells, alpha, reduce="amax"))
        positive = self.ema[self.ema > 0]
        threshold = min(positive.mean().item(), self.threshold) if positive.numel() else self.threshold
        self.occupied.copy_(self.ema > threshold)


# The grid's buffers that only training needs (its running opacities and the counts of skipped samples):
# checkpoints keep them, the deployable model file does not.
GRID_TRAINING_STATE = ("occupancy.ema", "occupancy.trained_samples")
PACKED_OCCUPANCY = "occupancy.occupied"


def deployable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """model's state dict as its model file holds it: what rendering needs, with the occupancy grid's cells
    packed 8 to a byte (a 128^3 grid: 256 kB, not the 8 MB of its opacities and flags)."""
    state = {k: v for k, v in model.state_dict().items() if k not in GRID_TRAINING_STATE}
    if PACKED_OCCUPANCY in state:
        flags = state[PACKED_OCCUPANCY].to(torch.uint8)
        flags = torch.cat([flags, flags.new_zeros((-flags.numel()) % 8)]).reshape(-1, 8)
        state[PACKED_OCCUPANCY] = (
            (flags << torch.arange(8, dtype=torch.uint8, device=flags.device)).sum(1).to(torch.uint8)
        )
    return state


def load_deployable_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load deployable_state's dict into model; strict: every other key must match, as load_state_dict's strict."""
    state = dict(state)
    if PACKED_OCCUPANCY in state:
        packed = state[PACKED_OCCUPANCY]
        bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
        state[PACKED_OCCUPANCY] = bits.reshape(-1)[: model.occupancy.occupied.numel()].bool()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in GRID_TRAINING_STATE]
    if strict and (missing or unexpected):
        raise RuntimeError(f"the model file does not fit the model: missing {missing}, unexpected {unexpected}")


def bucket_size(count: int, total: int) -> int:
    """count rounded up to a multiple of ceil(total / BUCKETS), at least one multiple and at most total."""
    unit = -(-total // BUCKETS)
    return min(total, max(1, -(-count // unit)) * unit)


def evaluate_where(
    field: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The field on the samples where mask (...) is true, padded to bucket_size with copies of the first of
    them (their outputs are dropped); rgb (..., 3) and density (...) in fp32, zero elsewhere."""
    index = mask.reshape(-1).nonzero().squeeze(-1)
    count, total = index.numel(), mask.numel()
    padding = (index[:1] if count else index.new_zeros(1)).expand(bucket_size(count, total) - count)
    padded = torch.cat([index, padding])
    rgb, density = field(points.reshape(-1, 3)[padded], viewdirs.reshape(-1, 3)[padded])
    rgb_all = points.new_zeros(total, 3).index_put((index,), rgb[:count].float())
    density_all = points.new_zeros(total).index_put((index,), density[:count].float())
    return rgb_all.reshape(*mask.shape, 3), density_all.reshape(mask.shape)


class NeRF(nn.Module):
    """Coarse + fine radiance fields and the renderer: forward(origins, dirs) -> rendered rays.

    With an occupancy grid, samples in its empty cells are not evaluated (density 0, colour 0), and in
    eval mode each pass evaluates its samples in DEPTH_CHUNKS runs along the rays, dropping the rays whose
    transmittance fell below early_stop (0: none) after a run.
    """

    def __init__(
        self,
        near: float,
        far: float,
        white_bkgd: bool,
        n_coarse: int = 64,
        n_fine: int = 64,
        linear: LinearFactory = nn.Linear,
        occupancy: OccupancyGrid | None = None,
        early_stop: float = EARLY_STOP_TRANSMITTANCE,
        **field_kwargs,
    ):
        super().__init__()
        self.near, self.far, self.white_bkgd = float(near), float(far), bool(white_bkgd)
        self.n_coarse, self.n_fine = n_coarse, n_fine
        self.coarse = RadianceField(linear=linear, **field_kwargs)
        self.fine = RadianceField(linear=linear, **field_kwargs) if n_fine > 0 else None
        self.occupancy, self.early_stop = occupancy, early_stop

    def update_occupancy(self, step: int) -> None:
        """The occupancy grid's update before training step `step` (OccupancyGrid.update); nothing without a grid.

        Alpha is taken over the coarse samples' spacing: the opacity a coarse sample in the cell would have.
        """
        if self.occupancy is not None:
            self.occupancy.update(step, self._coarse_density, (self.far - self.near) / self.n_coarse)

    def _coarse_density(self, points: torch.Tensor) -> torch.Tensor:
        """The coarse field's density at points (P, 3), in calls of one shape (the last one padded)."""
        chunk = min(GRID_UPDATE_CHUNK, points.shape[0])
        densities = []
        for part in points.split(chunk):
            padded = torch.cat([part, part[:1].expand(chunk - part.shape[0], 3)])
            densities.append(self.coarse(padded, torch.zeros_like(padded))[1][: part.shape[0]])
        return torch.cat(densities)

    def _render(self, field: nn.Module, origins, dirs, viewdirs, t) -> dict[str, torch.Tensor]:
        points = origins[:, None, :] + dirs[:, None, :] * t[..., None]
        viewdirs = viewdirs[:, None, :].expand(points.shape)
        if self.occupancy is None:
            rgb, density = field(points, viewdirs)
            return composite(rgb.float(), density.float(), t, dirs, self.far, self.white_bkgd)
        occupied = self.occupancy.is_occupied(points)
        if self.training or not self.early_stop:
            rgb, density = evaluate_where(field, points, viewdirs, occupied)
            evaluated = occupied
        else:
            rgb, density, evaluated = self._march(field, points, viewdirs, occupied, t, dirs)
        if self.training:
            counts = torch.stack([evaluated.sum(), torch.tensor(evaluated.numel(), device=t.device)])
            self.occupancy.trained_samples[0 if field is self.coarse else 1] += counts
        out = composite(rgb, density, t, dirs, self.far, self.white_bkgd)
        return {**out, "samples": evaluated.sum(-1)}

    def _march(self, field, points, viewdirs, occupied, t, dirs):
        """Early ray termination: the occupied samples in DEPTH_CHUNKS runs along the rays, each run only on
        the rays whose transmittance before it is at least early_stop. Returns rgb, density and the evaluated mask."""
        n_rays, n_samples = occupied.shape
        rgb, density = points.new_zeros(n_rays, n_samples, 3), points.new_zeros(n_rays, n_samples)
        evaluated = torch.zeros_like(occupied)
        deltas = torch.diff(t, dim=-1, append=torch.full_like(t[..., :1], self.far)).clamp(min=0.0)
        deltas = deltas * dirs.norm(dim=-1, keepdim=True)
        transmittance = points.new_ones(n_rays)
        edges = sorted({n_samples * i // DEPTH_CHUNKS for i in range(DEPTH_CHUNKS + 1)})
        for start, stop in zip(edges[:-1], edges[1:]):
            run = slice(start, stop)
            mask = occupied[:, run] & (transmittance >= self.early_stop)[:, None]
            rgb[:, run], density[:, run] = evaluate_where(field, points[:, run], viewdirs[:, run], mask)
            evaluated[:, run] = mask
            transmittance = transmittance * torch.exp(-(density[:, run] * deltas[:, run]).sum(-1))
        return rgb, density, evaluated

    def forward(
        self, origins: torch.Tensor, dirs: torch.Tensor, jitter: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """origins, dirs: (R, 3). Returns rgb, depth, acc (R, ...) of the finest pass, and rgb_coarse.

        jitter: (R, n_coarse + n_fine) uniforms in [0, 1) that place the training samples (stratified,
        then importance), drawn with the rays so that the sample stream does not depend on how the
        rays are split across processes; None for the deterministic samples of evaluation.
        """
        u_coarse, u_fine = (None, None) if jitter is None else jitter.split([self.n_coarse, self.n_fine], -1)
        viewdirs = F.normalize(dirs, dim=-1)
        t_coarse = sample_stratified(self.near, self.far, origins.shape[0], self.n_coarse, origins.device, u_coarse)
        coarse = self._render(self.coarse, origins, dirs, viewdirs, t_coarse)
        counts = {"samples_coarse": coarse["samples"]} if self.occupancy is not None else {}
        if self.fine is None:
            return {**coarse, "rgb_coarse": coarse["rgb"], **counts}
        mids = 0.5 * (t_coarse[..., 1:] + t_coarse[..., :-1])
        t_importance = sample_pdf(mids, coarse["weights"][..., 1:-1].detach(), self.n_fine, u_fine)
        t_fine, _ = torch.sort(torch.cat([t_coarse, t_importance.detach()], -1), -1)
        fine = self._render(self.fine, origins, dirs, viewdirs, t_fine)
        if self.occupancy is not None:
            counts["samples_fine"] = fine["samples"]
        return {**fine, "rgb_coarse": coarse["rgb"], **counts}

    def samples_per_ray(self) -> dict[str, int]:
        """MLP queries per ray of each field, keyed by the field's module name."""
        counts = {"coarse": self.n_coarse}
        if self.fine is not None:
            counts["fine"] = self.n_coarse + self.n_fine
        return counts


@torch.no_grad()
def render_image(model: nn.Module, origins: torch.Tensor, dirs: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Render (H, W, 3) ray grids in chunks of `chunk` rays; returns rgb (H, W, 3) and depth (H, W), and with
    an occupancy grid samples_coarse and samples_fine (H, W): the samples each pixel's passes evaluated.

    Every chunk is padded to `chunk` rays so a compiled model sees one shape.
    """
    height, width = origins.shape[:2]
    flat_origins, flat_dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n = flat_origins.shape[0]
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, chunk):
        o, d = flat_origins[start : start + chunk], flat_dirs[start : start + chunk]
        pad = chunk - o.shape[0]
        if pad:
            o = torch.cat([o, o[-1:].expand(pad, 3)])
            d = torch.cat([d, d[-1:].expand(pad, 3)])
        out = model(o, d)
        for key in ("rgb", "depth", "samples_coarse", "samples_fine"):
            if key in out:
                parts.setdefault(key, []).append(out[key][: chunk - pad])
    return {key: torch.cat(values).reshape(height, width, *values[0].shape[1:]) for key, values in parts.items()}
