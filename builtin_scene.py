"""The built-in scene: a procedural scene that needs no network, and the renderer that writes it.

An analytic volume (a ground plate, a glossy sphere, a box, a torus, a cylinder and a fuzzy blob)
rendered from 100 cameras by dense quadrature of the same volume rendering integral NeRF learns, so a
NeRF that fits it well can reach a high PSNR, and its `depths` are the exact expected ray termination
the NeRF estimates. `python data_setup.py --scene builtin` writes it; dataset.py writes it on first use.
"""

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from camera import get_rays, pose_spherical
from files import atomic_write

# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------

# Same intrinsics as tiny_nerf_data.npz (the lego scene at 100x100), so configs sized for one fit both.
IMAGE_SIZE = 100
FOCAL = 138.88887
NEAR, FAR = 2.0, 6.0
N_VIEWS = 100
CAMERA_RADIUS = 4.0
MIN_ELEVATION_DEG, MAX_ELEVATION_DEG = 10.0, 80.0
# Every 10th view, starting at the 5th: the views run from low to high elevation (and round in
# azimuth by the golden angle), so these ten are spread over the whole hemisphere band.
TEST_VIEWS = np.arange(5, N_VIEWS, 10, dtype=np.int64)

# Samples per ray, evenly spaced over the ray's chord through the bounding sphere (at most 2.6
# long): steps of at most 0.007, about the width of the solids' edge ramps (EDGE_WIDTH) and their
# penetration depth (1 / SOLID_DENSITY), so the quadrature has converged: doubling the samples
# changes no pixel by an 8-bit level (docs/data.md, "The built-in scene"; the tests check < 1e-2 on some rays).
N_SAMPLES = 384
# Rays rendered together: memory stays in the hundreds of MB, as only the samples near a surface
# are ever materialised (a few hundred thousand per chunk).
RAYS_PER_CHUNK = 8192


def builtin_poses() -> np.ndarray:
    """The 100 camera-to-world matrices (N, 4, 4) of the built-in scene.

    A Fibonacci spiral on the band of the upper hemisphere between 10 and 80 degrees elevation:
    equal-area steps in elevation (uniform in sin(elevation)) and golden-angle steps in azimuth,
    so the views cover the band evenly and deterministically.
    """
    golden_angle_deg = 180.0 * (3.0 - math.sqrt(5.0))
    sin_low, sin_high = math.sin(math.radians(MIN_ELEVATION_DEG)), math.sin(math.radians(MAX_ELEVATION_DEG))
    poses = []
    for k in range(N_VIEWS):
        elevation = math.degrees(math.asin(sin_low + (k + 0.5) / N_VIEWS * (sin_high - sin_low)))
        azimuth = (k * golden_angle_deg) % 360.0
        # pose_spherical's phi is negative for a camera above the ground looking down.
        poses.append(pose_spherical(azimuth, -elevation, CAMERA_RADIUS))
    return np.stack(poses)


# ---------------------------------------------------------------------------------------------
# The analytic volume
# ---------------------------------------------------------------------------------------------

# Every object lies inside this sphere around the origin; rays are sampled only where they cross it.
BOUNDING_RADIUS = 1.3

# Solid objects: density = SOLID_DENSITY * sigmoid(-sdf / EDGE_WIDTH), a hard edge a sixth of a
# pixel wide (a pixel covers about 0.03 at the scene's distance). Their edges and corners are
# rounded (ROUNDING) so that normals, hence colours, vary smoothly where rays terminate, which the
# quadrature needs to converge.
SOLID_DENSITY = 200.0
EDGE_WIDTH = 0.005
ROUNDING = 0.03

# The fuzzy blob: a Gaussian density with a soft, translucent falloff and an opaque core, glowing
# orange in the middle and purple at the edge (unshaded).
BLOB_CENTRE = (0.0, 0.05, 0.75)
BLOB_STD = 0.12
BLOB_PEAK_DENSITY = 30.0
BLOB_CORE_COLOUR = torch.tensor([1.0, 0.6, 0.1])
BLOB_HALO_COLOUR = torch.tensor([0.65, 0.2, 0.85])

# Unit vector towards the one directional light, high above the plate.
LIGHT_DIR = tuple(c / math.hypot(0.4, -0.5, 0.8) for c in (0.4, -0.5, 0.8))
AMBIENT = 0.3
# Blinn-Phong highlight on the glossy sphere: the only view-dependent term of the scene.
SPECULAR_STRENGTH = 0.6
SHININESS = 40.0

# Empty-space skipping: the renderer evaluates the density only at the samples
# that are near a surface. Farther than SOLID_MARGIN outside every solid, and farther than
# BLOB_RADIUS from the blob's centre, each object's density is below NEGLIGIBLE_DENSITY. Deeper
# than HIDDEN_DEPTH inside a solid no ray arrives with transmittance above 1e-5: to get there it
# crossed at least HIDDEN_DEPTH where sdf <= 0, that is density >= SOLID_DENSITY / 2, an optical
# depth of ln(1e5). Evaluating every sample instead changes no pixel by an 8-bit level (docs/data.md,
# "The built-in scene").
NEGLIGIBLE_DENSITY = 1e-4
SOLID_MARGIN = EDGE_WIDTH * math.log(SOLID_DENSITY / NEGLIGIBLE_DENSITY)
BLOB_RADIUS = BLOB_STD * math.sqrt(2.0 * math.log(BLOB_PEAK_DENSITY / NEGLIGIBLE_DENSITY))
HIDDEN_DEPTH = 2.0 * math.log(1e5) / SOLID_DENSITY
# Samples are tested for nearness in blocks of this many, from the signed distance at the block's centre.
SAMPLES_PER_BLOCK = 8


def _length(*components):
    return torch.sqrt(sum(c * c for c in components))


def _to_local(x, y, z, centre, turn_deg=0.0):
    """Coordinates in the frame of an object at centre, turned by turn_deg about the z axis."""
    x, y, z = x - centre[0], y - centre[1], z - centre[2]
    if turn_deg == 0.0:
        return x, y, z
    c, s = math.cos(math.radians(turn_deg)), math.sin(math.radians(turn_deg))
    return c * x + s * y, -s * x + c * y, z


def _sdf_rounded_cylinder(x, y, z, radius, half_height):
    """Signed distance to an upright cylinder at the local origin (axis z) with ROUNDING-rounded rims."""
    d_radial = _length(x, y) - (radius - ROUNDING)
    d_axial = z.abs() - (half_height - ROUNDING)
    outside = _length(d_radial.clamp(min=0), d_axial.clamp(min=0))
    return outside + torch.maximum(d_radial, d_axial).clamp(max=0) - ROUNDING


def _sdf_plate(x, y, z):
    """The ground: a disc of radius 1.05 whose top is the plane z = 0."""
    return _sdf_rounded_cylinder(*_to_local(x, y, z, (0.0, 0.0, -0.05)), radius=1.05, half_height=0.05)


def _sdf_sphere(x, y, z):
    return _length(*_to_local(x, y, z, (0.42, 0.30, 0.32))) - 0.32


def _sdf_box(x, y, z):
    """A cube of side 0.44 with rounded edges, turned 30 degrees about z."""
    qx, qy, qz = (c.abs() - (0.22 - ROUNDING) for c in _to_local(x, y, z, (-0.45, 0.35, 0.22), 30.0))
    outside = _length(qx.clamp(min=0), qy.clamp(min=0), qz.clamp(min=0))
    return outside + torch.maximum(qx, torch.maximum(qy, qz)).clamp(max=0) - ROUNDING


def _sdf_torus(x, y, z):
    """A ring standing upright on the plate, its axis horizontal and turned 35 degrees from y."""
    lx, ly, lz = _to_local(x, y, z, (0.15, -0.50, 0.39), 35.0)
    return _length(_length(lx, lz) - 0.28, ly) - 0.10


def _sdf_cylinder(x, y, z):
    return _sdf_rounded_cylinder(*_to_local(x, y, z, (-0.50, -0.35, 0.30)), radius=0.16, half_height=0.30)


def _plate_albedo(x, y, z):
    """A light checkerboard of 0.25 squares, with smooth edges so that the quadrature converges."""
    pattern = torch.tanh(3.0 * torch.sin(math.pi * x / 0.25) * torch.sin(math.pi * y / 0.25))
    grey = 0.7 + 0.15 * pattern
    return torch.stack([grey, grey, grey], -1)


def _constant_albedo(rgb):
    return lambda x, y, z: torch.tensor(rgb).expand(*x.shape, 3)


# (signed distance, albedo, glossy): the solid objects, all shaded by one directional light.
SOLIDS = [
    (_sdf_plate, _plate_albedo, False),
    (_sdf_sphere, _constant_albedo([0.85, 0.12, 0.10]), True),
    (_sdf_box, _constant_albedo([0.15, 0.35, 0.85]), False),
    (_sdf_torus, _constant_albedo([0.15, 0.70, 0.25]), False),
    (_sdf_cylinder, _constant_albedo([0.95, 0.75, 0.15]), False),
]


def _blob_distance(x, y, z):
    return _length(*_to_local(x, y, z, BLOB_CENTRE))


def _blob_density(x, y, z):
    return BLOB_PEAK_DENSITY * torch.exp(-0.5 * (_blob_distance(x, y, z) / BLOB_STD) ** 2)


def _solid_density(sdf_values):
    return SOLID_DENSITY * torch.sigmoid(sdf_values * (-1.0 / EDGE_WIDTH))


def _density(x, y, z):
    total = _blob_density(x, y, z)
    for sdf, _, _ in SOLIDS:
        total = total + _solid_density(sdf(x, y, z))
    return total


def _sdf_normal(sdf, x, y, z, step=1e-3):
    """Unit surface normal: an SDF's gradient from its values at the corners of a small tetrahedron
    (as accurate as central differences, with four evaluations instead of six)."""
    gx = gy = gz = 0.0
    for kx, ky, kz in ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1)):
        value = sdf(x + kx * step, y + ky * step, z + kz * step)
        gx, gy, gz = gx + kx * value, gy + ky * value, gz + kz * value
    norm = _length(gx, gy, gz).clamp(min=1e-12)
    return gx / norm, gy / norm, gz / norm


def scene_radiance(points: torch.Tensor, view_dirs: torch.Tensor, specular: bool = True) -> torch.Tensor:
    """Emitted colour c(x, d) in [0, 1] at points (M, 3) seen along view_dirs (M, 3, any length).

    Where objects overlap the colour is their density-weighted mix (of those whose density there
    is above NEGLIGIBLE_DENSITY, with a blob of any density). Solids get Lambert shading from
    a fixed light plus ambient; the glossy sphere adds a white Blinn-Phong highlight that moves with
    the view direction (turned off by specular=False); the blob glows orange at its core and purple
    at its edge.
    """
    x, y, z = points.unbind(-1)
    dx, dy, dz = view_dirs.unbind(-1)
    # Halfway vector between the light and the direction back to the camera.
    view_length = _length(dx, dy, dz)
    hx, hy, hz = LIGHT_DIR[0] - dx / view_length, LIGHT_DIR[1] - dy / view_length, LIGHT_DIR[2] - dz / view_length
    halfway_length = _length(hx, hy, hz).clamp(min=1e-12)
    hx, hy, hz = hx / halfway_length, hy / halfway_length, hz / halfway_length

    blob_density = _blob_density(x, y, z)
    blend = (_blob_distance(x, y, z) / (3.0 * BLOB_STD)).clamp(max=1.0)[..., None]
    weighted_colour = blob_density[..., None] * (BLOB_CORE_COLOUR + blend * (BLOB_HALO_COLOUR - BLOB_CORE_COLOUR))
    total_density = blob_density
    for sdf, albedo, glossy in SOLIDS:
        density = _solid_density(sdf(x, y, z))
        # Shade only where this solid's density counts: normals cost four SDF evaluations.
        i = torch.nonzero(density > NEGLIGIBLE_DENSITY).squeeze(-1)
        xi, yi, zi = x.index_select(0, i), y.index_select(0, i), z.index_select(0, i)
        nx, ny, nz = _sdf_normal(sdf, xi, yi, zi)
        diffuse = AMBIENT + (1.0 - AMBIENT) * (nx * LIGHT_DIR[0] + ny * LIGHT_DIR[1] + nz * LIGHT_DIR[2]).clamp(min=0)
        colour = albedo(xi, yi, zi) * diffuse[..., None]
        if glossy and specular:
            n_dot_h = nx * hx.index_select(0, i) + ny * hy.index_select(0, i) + nz * hz.index_select(0, i)
            colour = colour + SPECULAR_STRENGTH * n_dot_h.clamp(min=0)[..., None] ** SHININESS
        density = density.index_select(0, i)
        weighted_colour = weighted_colour.index_add(0, i, density[:, None] * colour)
        total_density = total_density.index_add(0, i, density)
    return (weighted_colour / total_density.clamp(min=1e-12)[..., None]).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Rendering and writing the scene
# ---------------------------------------------------------------------------------------------


def _near_samples(origins, dirs, t_enter, step, n_samples):
    """The samples (ray index, sample index) that can carry weight: near a solid's surface or in the blob.

    Tested per block of SAMPLES_PER_BLOCK samples with the signed distance at the block's centre:
    SDFs change by at most the distance moved, so every sample of the block is within `reach` of it.
    Returned in (ray, sample) order, which the compositing relies on.
    """
    n_blocks = n_samples // SAMPLES_PER_BLOCK
    t_centre = t_enter[:, None] + (torch.arange(n_blocks) + 0.5) * SAMPLES_PER_BLOCK * step[:, None]
    x, y, z = (origins[:, k, None] + t_centre * dirs[:, k, None] for k in range(3))
    reach = (0.5 * SAMPLES_PER_BLOCK * step * dirs.norm(dim=-1))[:, None]
    solid_distance = torch.stack([sdf(x, y, z) for sdf, _, _ in SOLIDS]).min(0).values
    near_solid = (solid_distance <= SOLID_MARGIN + reach) & (solid_distance >= -HIDDEN_DEPTH - reach)
    near_blob = _blob_distance(x, y, z) <= BLOB_RADIUS + reach
    ray, block = (near_solid | near_blob).nonzero(as_tuple=True)
    sample = block[:, None] * SAMPLES_PER_BLOCK + torch.arange(SAMPLES_PER_BLOCK)
    return ray.repeat_interleave(SAMPLES_PER_BLOCK), sample.flatten()


def render_rays(
    origins: torch.Tensor, dirs: torch.Tensor, n_samples: int = N_SAMPLES, specular: bool = True, far: float = FAR
):
    """Volume-render rays (R, 3) through the built-in scene by dense quadrature; returns rgb, depth, acc.

    NeRF's compositing on n_samples evenly spaced midpoints t_i of the ray's chord through the
    bounding sphere: alpha_i = 1 - exp(-sigma_i * delta * |d|), T_i = prod_{j<i} (1 - alpha_j),
    w_i = T_i * alpha_i, acc = sum w_i, rgb = sum w_i c_i + (1 - acc) (a white background),
    depth = sum w_i t_i + (1 - acc) * far, in the ray parameter t (with get_rays' unnormalised
    directions, the camera-space z distance). Rays missing the sphere get white, far and 0.
    n_samples must be a multiple of SAMPLES_PER_BLOCK.
    """
    if n_samples % SAMPLES_PER_BLOCK:
        raise ValueError(f"n_samples must be a multiple of {SAMPLES_PER_BLOCK}, got {n_samples}")
    origins, dirs = origins.float(), dirs.float()
    rgb = torch.ones(len(origins), 3)
    depth = torch.full((len(origins),), float(far))
    acc = torch.zeros(len(origins))
    # Where the ray crosses the bounding sphere, |o + t d|^2 = R^2, in front of its origin (t > 0).
    a = dirs.square().sum(-1)
    half_b = (origins * dirs).sum(-1)
    discriminant = half_b.square() - a * (origins.square().sum(-1) - BOUNDING_RADIUS**2)
    root = discriminant.clamp(min=0).sqrt()
    t_enter_all = ((-half_b - root) / a).clamp(min=0)
    t_exit_all = (-half_b + root) / a
    hits = torch.nonzero((discriminant > 0) & (t_exit_all > 0)).squeeze(-1)
    for chunk in hits.split(RAYS_PER_CHUNK):
        o, d = origins[chunk], dirs[chunk]
        t_enter, t_exit = t_enter_all[chunk], t_exit_all[chunk]
        step = (t_exit - t_enter) / n_samples

        # Density only at the samples where it can matter; elsewhere it is negligible (sigma = 0,
        # alpha = 0), so compositing over these samples alone gives the same sums.
        ray, sample = _near_samples(o, d, t_enter, step, n_samples)

        def per_sample(per_ray, ray=ray):  # a per-ray value at each sample (index_select: faster than [ray])
            return per_ray.index_select(0, ray)

        t = per_sample(t_enter) + (sample + 0.5) * per_sample(step)
        x, y, z = (per_sample(o[:, k]) + t * per_sample(d[:, k]) for k in range(3))
        optical_depth = _density(x, y, z) * per_sample(step * d.norm(dim=-1))
        # T_i = exp(-(optical depth before sample i on its ray)): the running sum over all the
        # chunk's samples, less the total of the earlier rays (float64: the sum runs over every ray).
        running = torch.cumsum(optical_depth.double(), 0) - optical_depth.double()
        ray_total = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, ray, optical_depth.double())
        before = (running - per_sample(torch.cumsum(ray_total, 0) - ray_total)).float()
        weights = torch.exp(-before) * -torch.expm1(-optical_depth)

        # Colour (normals, shading) is costly and only matters where a sample has weight: leaving
        # out samples under 1e-6 changes no pixel by more than n_samples * 1e-6.
        visible = torch.nonzero(weights > 1e-6).squeeze(-1)
        points = torch.stack([x.index_select(0, visible), y.index_select(0, visible), z.index_select(0, visible)], -1)
        colours = scene_radiance(points, d.index_select(0, ray.index_select(0, visible)), specular)
        chunk_acc = torch.zeros(len(chunk)).index_add_(0, ray, weights)
        acc[chunk] = chunk_acc
        rgb[chunk] = (
            torch.zeros(len(chunk), 3).index_add_(
                0, ray.index_select(0, visible), weights.index_select(0, visible)[:, None] * colours
            )
            + (1.0 - chunk_acc)[:, None]
        )
        depth[chunk] = torch.zeros(len(chunk)).index_add_(0, ray, weights * t) + (1.0 - chunk_acc) * far
    return rgb, depth, acc


def render_view(c2w: np.ndarray, n_samples: int = N_SAMPLES, specular: bool = True):
    """Render one built-in view (IMAGE_SIZE x IMAGE_SIZE) from a camera-to-world matrix: rgb (H,W,3), depth (H,W)."""
    origins, dirs = get_rays(IMAGE_SIZE, IMAGE_SIZE, FOCAL, torch.from_numpy(np.asarray(c2w, dtype=np.float32)))
    rgb, depth, _ = render_rays(origins.reshape(-1, 3), dirs.reshape(-1, 3), n_samples, specular)
    return rgb.reshape(IMAGE_SIZE, IMAGE_SIZE, 3), depth.reshape(IMAGE_SIZE, IMAGE_SIZE)


def write_builtin_scene(path: str | Path) -> Path:
    """Render the built-in scene and write it as a scene .npz at path (atomically); returns the path.

    Deterministic (no randomness, one CPU thread): every run writes the same arrays, in seconds
    (docs/data.md, "The built-in scene").
    Keys: images (N,H,W,3), poses (N,4,4), focal, near, far, white_bkgd, i_train, i_test and
    depths (N,H,W): each pixel's expected ray termination sum w_i t_i + (1 - acc) * far, in the ray
    parameter t of get_rays' unnormalised directions (the camera-space z distance, like near/far).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    poses = builtin_poses()
    images, depths = [], []
    # One thread: the values cannot depend on the machine's core count, and torch's worker threads
    # stall badly when another process holds a core (docs/performance.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for c2w in tqdm(poses, desc="rendering the built-in scene", unit="view", leave=False):
                rgb, depth = render_view(c2w)
                images.append(rgb.numpy())
                depths.append(depth.numpy())
    finally:
        torch.set_num_threads(threads)
    scene = {
        "images": np.stack(images).astype(np.float32),
        "poses": poses.astype(np.float32),
        "focal": np.float32(FOCAL),
        "near": np.float32(NEAR),
        "far": np.float32(FAR),
        "white_bkgd": np.bool_(True),
        "i_train": np.setdiff1d(np.arange(N_VIEWS, dtype=np.int64), TEST_VIEWS),
        "i_test": TEST_VIEWS,
        "depths": np.stack(depths).astype(np.float32),
    }

    def save(temp_path):
        with open(temp_path, "wb") as f:  # a file object: np.savez would add .npz to a path
            np.savez(f, **scene)

    atomic_write(path, save)
    return path
