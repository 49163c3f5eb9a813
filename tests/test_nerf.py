import math

import pytest
import torch

from nerf import NeRF, PositionalEncoding, RadianceField, composite, render_image, sample_pdf, sample_stratified


def test_positional_encoding_values():
    enc = PositionalEncoding(3)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    out = enc(x)
    assert out.shape == (1, 3 + 3 * 2 * 3) == (1, enc.out_dim)
    assert torch.allclose(out[0, :3], x[0])
    for k in range(3):
        for c in range(3):
            assert out[0, 3 + 3 * k + c] == pytest.approx(math.sin(2**k * x[0, c].item()), abs=1e-6)
            assert out[0, 12 + 3 * k + c] == pytest.approx(math.cos(2**k * x[0, c].item()), abs=1e-6)


def test_radiance_field_topology_and_ranges():
    field = RadianceField(depth=8, width=32, pos_freqs=4, dir_freqs=2, skips=(4,))
    assert [layer.in_features for layer in field.layers] == [27, 32, 32, 32, 32, 32 + 27, 32, 32]
    rgb, density = field(torch.randn(5, 7, 3), torch.randn(5, 7, 3))
    assert rgb.shape == (5, 7, 3) and density.shape == (5, 7)
    assert (rgb >= 0).all() and (rgb <= 1).all() and (density >= 0).all()
    points_only = RadianceField(depth=2, width=16, pos_freqs=16, use_viewdirs=False)
    p = torch.randn(4, 3)
    assert torch.equal(points_only(p, torch.randn(4, 3))[0], points_only(p, torch.randn(4, 3))[0])


def reference_composite(rgb, density, t, dirs, far, white_bkgd):
    """Front-to-back compositing one ray and one sample at a time, straight from the NeRF paper."""
    colors, depths = [], []
    for r in range(t.shape[0]):
        transmittance, color, depth = 1.0, torch.zeros(3, dtype=torch.float64), 0.0
        for i in range(t.shape[1]):
            end = t[r, i + 1] if i + 1 < t.shape[1] else far
            alpha = 1.0 - math.exp(-density[r, i].item() * (end - t[r, i]).item() * dirs[r].norm().item())
            color += transmittance * alpha * rgb[r, i].double()
            depth += transmittance * alpha * t[r, i].item()
            transmittance *= 1.0 - alpha
        colors.append(color + (transmittance if white_bkgd else 0.0))
        depths.append(depth + transmittance * far)
    return torch.stack(colors), torch.tensor(depths, dtype=torch.float64)


@pytest.mark.parametrize("white_bkgd", [False, True])
def test_composite_matches_the_per_sample_reference(white_bkgd):
    g = torch.Generator().manual_seed(0)
    t = torch.sort(2 + 4 * torch.rand(6, 20, generator=g), -1).values
    rgb, density = torch.rand(6, 20, 3, generator=g), 3 * torch.rand(6, 20, generator=g)
    dirs = torch.randn(6, 3, generator=g)
    out = composite(rgb, density, t, dirs, 6.0, white_bkgd)
    ref_rgb, ref_depth = reference_composite(rgb, density, t, dirs, 6.0, white_bkgd)
    assert torch.allclose(out["rgb"].double(), ref_rgb, atol=1e-5)
    assert torch.allclose(out["depth"].double(), ref_depth, atol=1e-4)


class UniformSphere(torch.nn.Module):
    """An analytic field: density `sigma` and colour `color` inside a ball of radius `radius`."""

    def __init__(self, radius, sigma, color):
        super().__init__()
        self.radius, self.sigma, self.color = radius, sigma, torch.tensor(color)

    def forward(self, points, viewdirs):
        inside = (points.norm(dim=-1) < self.radius).float()
        return self.color.expand(points.shape).clone(), self.sigma * inside


def test_renderer_matches_the_exact_integral_through_a_uniform_sphere():
    """Opacity through a homogeneous ball is 1 - exp(-sigma * chord) exactly; dense sampling must agree."""
    radius, sigma, color = 1.0, 1.5, [0.9, 0.2, 0.1]
    model = NeRF(2.0, 6.0, white_bkgd=True, n_coarse=2048, n_fine=0, depth=1, width=4)
    model.coarse = UniformSphere(radius, sigma, color)
    model.eval()
    offsets = torch.linspace(0.0, 0.95, 9)
    origins = torch.stack([torch.zeros(9), offsets, torch.full((9,), 4.0)], -1)
    dirs = torch.tensor([0.0, 0.0, -1.0]).expand(9, 3)
    out = model(origins, dirs)
    chord = 2 * torch.sqrt(radius**2 - offsets**2)
    alpha = 1 - torch.exp(-sigma * chord)
    expected = alpha[:, None] * torch.tensor(color) + (1 - alpha[:, None])
    assert torch.allclose(out["rgb"], expected, atol=3e-3)
    assert torch.allclose(out["acc"], alpha, atol=3e-3)


def test_stratified_samples_cover_their_bins():
    t = sample_stratified(2.0, 6.0, 100, 8, "cpu", torch.rand(100, 8, generator=torch.Generator().manual_seed(0)))
    bins = torch.floor((t - 2.0) / 0.5)
    assert torch.equal(bins, torch.arange(8.0).expand(100, 8))
    assert torch.allclose(sample_stratified(2.0, 6.0, 1, 4, "cpu"), torch.tensor([[2.5, 3.5, 4.5, 5.5]]))


def test_importance_samples_follow_the_weights():
    bins = torch.linspace(0.0, 1.0, 11).expand(2, 11)
    weights = torch.zeros(2, 10)
    weights[0, 3] = 1.0  # all mass in [0.3, 0.4]
    weights[1] = 1.0  # uniform
    samples = sample_pdf(bins, weights, 1000, torch.rand(2, 1000, generator=torch.Generator().manual_seed(0)))
    assert ((samples[0] >= 0.3 - 1e-3) & (samples[0] <= 0.4 + 1e-3)).float().mean() > 0.98
    assert abs(samples[1].mean().item() - 0.5) < 0.03


def test_hierarchical_render_shapes_and_chunked_images():
    model = NeRF(2.0, 6.0, white_bkgd=False, n_coarse=8, n_fine=8, depth=2, width=16)
    out = model(torch.zeros(10, 3), torch.randn(10, 3))
    assert out["rgb"].shape == (10, 3) and out["rgb_coarse"].shape == (10, 3) and out["depth"].shape == (10,)
    assert model.samples_per_ray() == {"coarse": 8, "fine": 16}
    model.eval()
    origins, dirs = torch.zeros(5, 7, 3), torch.randn(5, 7, 3)
    whole = model(origins.reshape(-1, 3), dirs.reshape(-1, 3))
    image = render_image(model, origins, dirs, chunk=8)
    assert torch.allclose(image["rgb"].reshape(-1, 3), whole["rgb"], atol=1e-6)
    assert image["depth"].shape == (5, 7)
