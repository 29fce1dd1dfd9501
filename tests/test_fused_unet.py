"""Our fused float32 forward of nnU-Net's PlainConvUNet against the module's own forward, and where it is used."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from totalsegmentator.inference import fused_unet, predictor
from totalsegmentator.inference.fused_unet import fused_forward
from totalsegmentator.inference.model import load_model
from totalsegmentator.inference.predictor import predict_labels, predict_logits
from totalsegmentator.testing.tiny_weights import write_tiny_dataset
from conftest import compiled_or_numpy

CPU = torch.device("cpu")
_NORM_C = fused_unet._norm_c


@pytest.fixture(params=["c", "torch"])
def norm_loops(request, monkeypatch):
    """Runs a test with the instance norm in C (skipped where the extension is not built) and as torch's ops."""
    return compiled_or_numpy(request, monkeypatch, fused_unet, "_norm_c", _NORM_C)


def plain_unet(dims: int = 3, features=(4, 8, 16), strides=None, kernel=3, num_classes: int = 5,
               conv_bias: bool = False, affine: bool = True, nonlin=nn.LeakyReLU, nonlin_kwargs=None,
               deep_supervision: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    norm = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
    n = len(features)
    strides = strides or [1] + [2] * (n - 1)
    net = PlainConvUNet(1, n, features, conv, kernel, strides, [2] * n, num_classes, [2] * (n - 1), conv_bias,
                        norm, {"eps": 1e-5, "affine": affine}, None, None, nonlin,
                        {"inplace": True} if nonlin_kwargs is None else nonlin_kwargs,
                        deep_supervision=deep_supervision).eval()
    with torch.no_grad():  # trained-looking norms and biases (fresh ones are 1 and 0)
        for m in net.modules():
            if isinstance(m, norm) and affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and m.bias is not None:
                m.bias.uniform_(-0.2, 0.2)
    return net


def compare(net: nn.Module, x: torch.Tensor, channels_last: bool | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    forward = fused_forward(net, channels_last)
    assert forward is not None
    with torch.inference_mode():
        reference = net(x.clone())
        ours = forward(x.clone())
    return reference, ours


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (1, 1, 24, 20, 16)),
    ({}, (2, 1, 16, 16, 16)),  # tile batches
    ({"strides": [1, (1, 2, 2), 2], "kernel": [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}, (1, 1, 8, 24, 20)),  # anisotropic
    ({"conv_bias": True, "nonlin": nn.ReLU}, (1, 1, 16, 16, 16)),
    ({"affine": False, "nonlin_kwargs": {"negative_slope": 0.2, "inplace": False}}, (1, 1, 16, 16, 16)),
    ({"dims": 2, "features": (4, 8, 16, 32)}, (3, 1, 48, 40)),
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_forward_equals_the_module_forward_up_to_rounding(norm_loops, kwargs, shape, channels_last):
    net = plain_unet(**kwargs)
    x = torch.randn(shape) * 2 + 0.5
    reference, ours = compare(net, x, channels_last)
    assert ours.shape == reference.shape == (shape[0], 5, *shape[2:])
    assert ours.dtype == torch.float32
    scale = float(reference.abs().max())
    assert float((ours - reference).abs().max()) <= 1e-5 * scale
    assert not torch.equal(ours, reference)  # really another computation


def test_fused_forward_labels_agree_on_a_realistic_tile():
    net = plain_unet(features=(8, 16, 32, 64), num_classes=12, seed=3)
    x = torch.randn(1, 1, 48, 48, 48)
    reference, ours = compare(net, x)
    agree = (ours.argmax(1) == reference.argmax(1)).float().mean()
    assert agree >= 0.9999


def test_fused_forward_sees_new_fold_weights():
    net = plain_unet()
    other = plain_unet(seed=7).state_dict()
    forward = fused_forward(net)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        before = forward(x)
        net.load_state_dict(other)
        after, reference = forward(x), net(x)
    assert float((after - before).abs().max()) > 0.1
    assert torch.allclose(after, reference, atol=1e-5 * float(reference.abs().max()))


def test_fused_forward_leaves_the_input_alone():
    net = plain_unet()
    x = torch.randn(1, 1, 16, 16, 16)
    copy = x.clone()
    with torch.inference_mode():
        fused_forward(net)(x)
    assert torch.equal(x, copy)


def test_unsupported_layouts_fall_back():
    assert fused_forward(plain_unet(deep_supervision=True)) is None
    assert fused_forward(plain_unet().train()) is None
    residual = ResidualEncoderUNet(1, 3, (4, 8, 16), nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 3, (1, 1), False,
                                   nn.InstanceNorm3d, {"affine": True}, None, None, nn.LeakyReLU).eval()
    assert fused_forward(residual) is None
    batch_norm = plain_unet()
    batch_norm.encoder.stages[0][0].convs[0].all_modules[1] = nn.BatchNorm3d(4).eval()
    assert fused_forward(batch_norm) is None
    overlapping = plain_unet()
    overlapping.decoder.transpconvs[0] = nn.ConvTranspose3d(16, 8, 3, 2, padding=1, output_padding=1)
    assert fused_forward(overlapping) is None
    assert fused_forward(nn.Conv3d(1, 2, 3)) is None


def _weighted_argmax(logits: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is not None:
        logits = (logits * weights).to(weights.dtype) / weights
    return torch.max(logits, 0).indices


@pytest.mark.parametrize("bias, dims, chunk, weights_dtype, last", [
    (True, 3, 16384, None, False),
    (True, 3, 16384, None, True),
    (False, 3, 7, None, False),  # chunks smaller than a plane
    (False, 3, 7, None, True),
    (True, 3, 16384, torch.float16, True),
    (True, 2, 5, torch.float32, False),
    (True, 2, 5, torch.float32, True),
])
def test_pointwise_argmax_is_the_argmax_of_the_head(monkeypatch, bias, dims, chunk, weights_dtype, last):
    monkeypatch.setattr(fused_unet, "HEAD_CHUNK_VOXELS", chunk)
    torch.manual_seed(0)
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(6, 9, 1, bias=bias)
    spatial = (11, 9, 10)[:dims]
    features = torch.randn(6, *spatial)
    if last:  # the layout of the fused forward's features
        features = fused_unet.to_channels_last(features[None])[0]
        assert not features.is_contiguous()
    region = (slice(1, 10), slice(2, 8), slice(0, 7))[:dims]
    weights = None
    if weights_dtype is not None:
        weights = (torch.rand(spatial) * 10 + 1e-3).to(weights_dtype)
    with torch.inference_mode():
        logits = fused_unet._pointwise_conv(features[None], conv)[0]
        labels = fused_unet.pointwise_argmax(features, conv, torch.int16, weights, region=region)
        whole = fused_unet.pointwise_argmax(features, conv, torch.int16, weights)
    assert labels.dtype == torch.int16 and labels.shape == logits[(slice(None), *region)].shape[1:]
    expected = _weighted_argmax(logits, weights)
    assert torch.equal(whole.long(), expected)
    assert torch.equal(labels.long(), expected[region])
    assert len(torch.unique(labels)) > 3


def test_pointwise_argmax_takes_the_first_of_tied_classes_and_refuses_overflow():
    conv = nn.Conv3d(2, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]).view(4, 2, 1, 1, 1))
        conv.bias.zero_()
    features = torch.zeros(2, 2, 2, 2)
    features[0, 0] = 3.0  # classes 0 and 2 tie at 3
    features[1, 1] = 5.0  # class 1 wins
    with torch.inference_mode():
        labels = fused_unet.pointwise_argmax(features, conv)
    assert labels[0].eq(0).all() and labels[1].eq(1).all()
    assert labels.dtype == torch.uint8
    features[0, 0, 0, 0] = 1e4  # times a weight of 10 is beyond float16
    with pytest.raises(RuntimeError, match="overflowed"), torch.inference_mode():
        fused_unet.pointwise_argmax(features, conv, weights=torch.full((2, 2, 2), 10.0, dtype=torch.float16))


def test_fused_labels_equal_the_argmax_of_the_fused_logits():
    net = plain_unet(num_classes=7, seed=5)
    forward = fused_forward(net)
    x = torch.randn(1, 1, 24, 20, 16)
    region = (slice(2, 22), slice(0, 17), slice(3, 16))
    weights = (torch.rand(24, 20, 16) * 10 + 0.01).to(torch.float16)
    with torch.inference_mode():
        logits = forward(x)[0][(slice(None), *region)]
        features = forward.features(x)
        labels = forward.labels(features[0], region, weights=weights)
        unweighted = forward.labels(features[0], region)
    assert torch.equal(labels.long(), _weighted_argmax(logits, weights[region]))
    assert torch.equal(unweighted.long(), logits.argmax(0))
    # a head that is not 1x1x1 takes the plain way
    net.decoder.seg_layers[-1] = nn.Conv3d(4, 7, 3, padding=1)
    forward = fused_forward(net)
    with torch.inference_mode():
        logits = forward(x)[0][(slice(None), *region)]
        labels = forward.labels(forward.features(x)[0], region, weights=weights)
    assert torch.equal(labels.long(), _weighted_argmax(logits, weights[region]))
    with pytest.raises(RuntimeError, match="overflowed"), torch.inference_mode():
        forward.labels(forward.features(x)[0] * 1e5, region, weights=torch.full_like(weights, 10.0))


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("split", [False, True])  # torch: many pieces, the last one shorter; C: three threads
def test_instance_norm_in_place_matches_float64(norm_loops, monkeypatch, last, split):
    if split:
        monkeypatch.setattr(fused_unet, "_NORM_PIECE_VALUES", 37)
        monkeypatch.setattr(fused_unet, "_NORM_THREADED_VALUES", 0)
        monkeypatch.setattr(fused_unet.torch, "get_num_threads", lambda: 3)  # the C norm's voxels in 3 parts
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 18, 16) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1, 1) + 40.0
    norm = nn.InstanceNorm3d(3, eps=1e-5, affine=True).requires_grad_(False)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.7, 1.3, -0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    xd = x.double()
    mean = xd.mean(dim=(2, 3, 4), keepdim=True)
    var = xd.var(dim=(2, 3, 4), correction=0, keepdim=True)
    expected = (xd - mean) / torch.sqrt(var + 1e-5) * norm.weight.double().view(1, 3, 1, 1, 1) \
        + norm.bias.double().view(1, 3, 1, 1, 1)
    expected = torch.nn.functional.leaky_relu(expected, 0.01)
    with torch.inference_mode():
        y = fused_unet.to_channels_last(x.clone()) if last else x.clone()
        out = fused_unet._instance_norm_(y, norm, 0.01)
    assert out.data_ptr() == y.data_ptr()  # in place, in the layout it came in
    assert fused_unet.channels_last(out) == last and out.is_contiguous() != last
    # a float32 mean of values near 40 is off by up to ~4e-6 (one ulp), 2e-5 after the division by the 0.1
    # deviation and the weight 0.5 (measured over 30 seeds: C 1e-5, torch's float32 sums 3.1e-5)
    assert float((out.double() - expected).abs().max()) < 5e-5
    plain = nn.InstanceNorm3d(3, eps=1e-5, affine=False)
    with torch.inference_mode():
        unscaled = fused_unet._instance_norm_(y.copy_(x), plain, None)
    assert float((unscaled.double() - (xd - mean) / torch.sqrt(var + 1e-5)).abs().max()) < 5e-5
    with torch.inference_mode():
        relu = fused_unet._instance_norm_(y.copy_(x), plain, 0.0)
    assert float(relu.min()) == 0.0
    assert float((relu.double() - (xd - mean).clamp(min=0) / torch.sqrt(var + 1e-5)).abs().max()) < 5e-5


def test_c_and_torch_instance_norms_differ_only_by_the_rounding_of_their_statistics(monkeypatch):
    if _NORM_C is None:
        pytest.skip("the C extension of fused_unet is not built")
    x = torch.randn(1, 32, 24, 20, 16) * 3 + 5
    norm = nn.InstanceNorm3d(32, eps=1e-5, affine=True).requires_grad_(False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    results = []
    for compiled in (_NORM_C, None):
        monkeypatch.setattr(fused_unet, "_norm_c", compiled)
        with torch.inference_mode():
            results.append(fused_unet._instance_norm_(fused_unet.to_channels_last(x.clone()), norm, 0.01))
    c_result, torch_result = results
    assert not torch.equal(c_result, torch_result)  # really the other code
    assert float((c_result - torch_result).abs().max()) < 1e-5


def _norm_reference(values: np.ndarray, mean, scale, shift, slope) -> np.ndarray:
    """``transform``'s formula in numpy's float32 (separate IEEE products and sums, as the C loops)."""
    y = shift + (values - mean) * scale
    if slope is None:
        return y
    return np.where(y < 0, y * np.float32(slope), y) if slope else np.where(y < 0, np.float32(0), y)


@pytest.mark.parametrize("channels", [1, 3, 32, 320])
@pytest.mark.parametrize("last", [True, False])
def test_c_norm_loops_over_voxel_ranges(channels, last):
    """The C loops on their own: float64 moments of any range, the transform bit for bit as numpy's float32,
    in both layouts, for channel counts below, at and above a tile's values."""
    if _NORM_C is None:
        pytest.skip("the C extension of fused_unet is not built")
    rng = np.random.default_rng(channels)
    voxels = 700
    values = (rng.standard_normal((voxels, channels)) * 4 + 100).astype(np.float32)
    flat = values.reshape(-1) if last else np.ascontiguousarray(values.T).reshape(-1)
    pilot = values[::50].mean(0).astype(np.float32)
    out = np.empty(2 * channels)
    for first, stop in ((0, voxels), (0, 1), (13, 689), (700, 700)):
        _NORM_C.moments(flat, channels, last, first, stop, pilot, out)
        d = values[first:stop].astype(np.float64) - pilot
        np.testing.assert_allclose(out[:channels], d.sum(0), rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(out[channels:], (d * d).sum(0), rtol=1e-6)
    mean = pilot
    scale = rng.uniform(0.1, 2, channels).astype(np.float32)
    shift = rng.uniform(-1, 1, channels).astype(np.float32)
    for slope in (0.01, 0.0, None):
        result = flat.copy()
        _NORM_C.transform(result, channels, last, 5, 600, mean, scale, shift, slope)
        by_voxel = result.reshape(voxels, channels) if last else result.reshape(channels, voxels).T
        expected = _norm_reference(values[5:600], mean, scale, shift, slope)
        assert np.array_equal(by_voxel[5:600], expected)
        assert np.array_equal(by_voxel[:5], values[:5]) and np.array_equal(by_voxel[600:], values[600:])
    nan = np.array([np.nan, -1.0, -0.0, 2.0], np.float32)
    for slope in (0.0, 0.5):
        _NORM_C.transform(nan, 1, True, 0, 4, *np.array([[0], [1], [0]], np.float32), slope)
        assert np.isnan(nan[0]) and list(nan[1:]) == [-1.0 * slope, 0.0, 2.0]
        nan[1] = -1.0


def test_c_norm_loops_check_their_input():
    if _NORM_C is None:
        pytest.skip("the C extension of fused_unet is not built")
    values = np.zeros(24, np.float32)
    pilot, out = np.zeros(3, np.float32), np.zeros(6)
    params = [np.zeros(3, np.float32)] * 3
    with pytest.raises(TypeError, match="float32"):
        _NORM_C.moments(values.astype(np.float64), 3, True, 0, 8, pilot, out)
    with pytest.raises(TypeError, match="float64"):
        _NORM_C.moments(values, 3, True, 0, 8, pilot, out.astype(np.float32))
    with pytest.raises(ValueError, match="whole number"):
        _NORM_C.moments(values, 5, True, 0, 4, np.zeros(5, np.float32), np.zeros(10))
    with pytest.raises(ValueError, match="whole number"):
        _NORM_C.transform(values, 0, True, 0, 0, *params, None)
    for first, stop in ((-1, 4), (5, 4), (0, 9)):
        with pytest.raises(ValueError, match="outside"):
            _NORM_C.moments(values, 3, False, first, stop, pilot, out)
        with pytest.raises(ValueError, match="outside"):
            _NORM_C.transform(values, 3, False, first, stop, *params, 0.01)
    with pytest.raises(ValueError, match="pilot"):
        _NORM_C.moments(values, 3, True, 0, 8, np.zeros(4, np.float32), out)
    with pytest.raises(ValueError, match="scale"):
        _NORM_C.transform(values, 3, True, 0, 8, params[0], np.zeros(2, np.float32), params[2], None)
    read_only = values.copy()
    read_only.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        _NORM_C.transform(read_only, 3, True, 0, 8, *params, None)
    with pytest.raises((ValueError, BufferError)):
        _NORM_C.moments(np.zeros((8, 6), np.float32)[:, ::2], 3, True, 0, 8, pilot, out)


def test_fused_forward_keeps_activations_in_the_chosen_layout(monkeypatch):
    for dims, shape in ((3, (1, 1, 16, 16, 16)), (2, (2, 1, 32, 24))):
        net = plain_unet(dims=dims)
        with torch.inference_mode():
            last = fused_forward(net, channels_last=True).features(torch.randn(shape))
            first = fused_forward(net, channels_last=False).features(torch.randn(shape))
            logits = fused_forward(net, channels_last=True)(torch.randn(shape))
        assert fused_unet.channels_last(last) and not last.is_contiguous()
        assert first.is_contiguous()
        assert logits.is_contiguous()  # the head's output is channels first, as the sliding window adds it up
    # the default follows the CPU: channels-last with AVX-512 only
    net = plain_unet()
    for capability, expected in (("AVX512", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert fused_unet.prefers_channels_last() == expected
        with torch.inference_mode():
            features = fused_forward(net).features(torch.randn(1, 1, 16, 16, 16))
        assert features.is_contiguous() != expected


@pytest.mark.parametrize("bias", [True, False])
def test_upsample_and_concat_in_both_layouts(bias):
    torch.manual_seed(2)
    transposed = nn.ConvTranspose3d(6, 3, (1, 2, 2), (1, 2, 2), bias=bias)
    x = torch.randn(2, 6, 5, 4, 3)
    skip = torch.randn(2, 4, 5, 8, 6)
    with torch.inference_mode():
        expected = torch.cat((transposed(x), skip), 1)
        first = fused_unet._upsample_and_concat(x, transposed, skip)
        last = fused_unet._upsample_and_concat(fused_unet.to_channels_last(x), transposed,
                                               fused_unet.to_channels_last(skip))
    assert first.is_contiguous() and fused_unet.channels_last(last) and not last.is_contiguous()
    for result in (first, last):
        assert result.shape == expected.shape
        assert torch.allclose(result, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_convolution_steps_in_either_layout(in_channels, bias):
    torch.manual_seed(3)
    conv = nn.Conv3d(in_channels, 5, 3, padding=1, bias=bias)
    x = torch.randn(2, in_channels, 7, 6, 5)
    last, first = fused_unet._conv_step(conv, True), fused_unet._conv_step(conv, False)
    with torch.inference_mode():
        expected = conv(x)
        outs = [last(x), last(fused_unet.to_channels_last(x)), first(x)]
    assert fused_unet.channels_last(outs[0]) and fused_unet.channels_last(outs[1]) and outs[2].is_contiguous()
    for out in outs:
        assert torch.allclose(out, expected, rtol=0, atol=1e-5)
    conv1d = nn.Conv1d(2, 3, 3)
    assert fused_unet._conv_step(conv1d, True) is conv1d  # other convolutions run as they are


# ------------------------------------------------------------------------------------------- in the predictor

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = write_tiny_dataset(tmp_path_factory.mktemp("weights"), 299)
    return load_model(folder, (0,), CPU)


def ct_like(shape=(40, 37, 33), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 60, shape)
    image[rng.random(shape) < 0.1] = 800
    image[:, :, :2] = -1000
    return image.astype(np.float32)


def test_predictor_uses_the_fused_forward_unless_exact(model, monkeypatch):
    calls = []
    real = fused_unet.fused_forward

    def counting(network):
        calls.append(network)
        return real(network)

    monkeypatch.setattr(predictor, "fused_forward", counting)
    data = torch.from_numpy(ct_like()[None].transpose(0, 3, 2, 1).copy())
    default = predict_logits(model, data, 0.5, accumulate_dtype=torch.float32)
    assert calls
    calls.clear()
    exact = predict_logits(model, data, 0.5, accumulate_dtype=torch.float32, mixed_precision="exact")
    assert not calls
    assert not torch.equal(default, exact)
    assert torch.allclose(default, exact, atol=1e-5 * float(exact.abs().max()))
    calls.clear()
    monkeypatch.setenv(predictor.PRECISION_ENV, "exact")
    assert torch.equal(predict_logits(model, data, 0.5, accumulate_dtype=torch.float32), exact)
    assert not calls


def test_default_labels_agree_with_nnunet(model):
    """The default (fused float32 network, float16 accumulator as nnU-Net) against nnU-Net's own predictor."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    image = ct_like(seed=4)
    reference = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=CPU, verbose=False, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(model.result_folder), (0,), "checkpoint_final.pth")
    ref = reference.predict_single_npy_array(image.transpose(2, 1, 0)[None], {"spacing": [1.5, 1.5, 1.5]})
    labels = predict_labels(model, image, (1.5, 1.5, 1.5), 0.5)
    assert labels.shape == image.shape
    assert np.mean(labels == ref.transpose(2, 1, 0)) >= 0.999


@pytest.mark.parametrize("accumulate_dtype", [torch.float16, torch.float32])
def test_single_tile_labels_skip_the_logits_and_stay_the_same(model, monkeypatch, accumulate_dtype):
    """An image within one tile: labels straight from the fused head (plane by plane), identical to the argmax
    of the accumulated logits; other precisions, and probabilities, go through the sliding window."""
    image = ct_like((30, 27, 25), seed=9)
    assert all(n <= p for n, p in zip(image.shape, model.patch_size))
    shortcut = []
    real = predictor._single_tile_labels
    monkeypatch.setattr(predictor, "_single_tile_labels", lambda *a: shortcut.append(1) or real(*a))
    labels = predict_labels(model, image, (1.5, 1.5, 1.5), accumulate_dtype=accumulate_dtype)
    assert shortcut
    monkeypatch.setattr(predictor, "_single_tile_network", lambda *a: None)
    reference = predict_labels(model, image, (1.5, 1.5, 1.5), accumulate_dtype=accumulate_dtype)
    assert np.array_equal(labels, reference)
    assert labels.dtype == np.uint8 and len(np.unique(labels)) > 2
    monkeypatch.undo()

    shortcut.clear()
    monkeypatch.setattr(predictor, "_single_tile_labels", lambda *a: shortcut.append(1) or real(*a))
    predict_labels(model, image, (1.5, 1.5, 1.5), mixed_precision="exact")
    predict_labels(model, image, (1.5, 1.5, 1.5), mixed_precision="bf16")
    predict_labels(model, image, (1.5, 1.5, 1.5), return_probabilities=True)
    predict_labels(model, image, (2.0, 1.5, 1.5))  # resampled to the plans: the export resamples the logits
    predict_labels(model, ct_like((60, 27, 25)), (1.5, 1.5, 1.5))  # two tiles
    assert not shortcut
    predict_labels(model, image, (1.5, 1.5, 1.5))
    assert shortcut


def test_auto_compile_gives_way_to_the_fused_forward(model, monkeypatch):
    compiled = []
    monkeypatch.setattr(predictor, "wants_compile", lambda setting, m, n: True)
    monkeypatch.setattr(predictor, "network_runner", lambda m: compiled.append(m) or m.network)
    data = torch.from_numpy(ct_like()[None].transpose(0, 3, 2, 1).copy())
    predict_logits(model, data, 0.5, compile_mode="auto")
    assert not compiled
    predict_logits(model, data, 0.5, compile_mode="on")
    assert compiled
    compiled.clear()
    predict_logits(model, data, 0.5, compile_mode="auto", mixed_precision="exact")
    assert compiled
