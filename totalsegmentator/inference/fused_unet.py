"""A faster float32 forward of nnU-Net's plain U-Net (``PlainConvUNet``) for inference on the CPU.

Same network, same weights, same float32 arithmetic; only the order of some sums changes, so the logits differ
from the module's own forward by rounding (1e-6 to 3e-6 relative) and the labels agree on all but near-tied voxels.
Measured on 2 CPU cores with nnU-Net's standard 3d_fullres network and a 128^3 tile, the module forward spends
about a quarter of its time outside the 3x3x3 convolutions, at full resolution. This forward removes most of it:

* on CPUs with AVX-512, activations channels-last (each voxel's channels side by side): oneDNN's convolutions
  of 32 channels at full resolution run 25-30 % faster on that layout than on PyTorch's default one (measured
  alone; a whole 128^3 tile on 2 cores: 5.7 s instead of 6.6 s); one-channel inputs go to oneDNN directly,
  where PyTorch would take its ~3x slower reference convolution;
* instance norm + leaky ReLU in place: PyTorch's instance norm writes a new full-size tensor (on the CPU, fresh
  memory costs page faults each time), this one overwrites the convolution's output;
* transposed convolutions whose kernel equals their stride (all of nnU-Net's) are one matrix product plus one
  rearranging copy, written straight into the buffer of the skip concatenation (no ``torch.cat`` copy);
* 1x1x1 convolutions (the segmentation head) are one matrix product; when only the labels are wanted
  (``FusedUNet.labels``), the head and the argmax run together one plane at a time, so the logits of the whole
  tile are never written;
* skip tensors are released as soon as the decoder has used them (lower peak memory).

3x3x3 convolutions stay PyTorch's (oneDNN). Anything that does not match the expected layout (residual
encoders, pooling, deep supervision, running statistics, grouped or padded transposed convolutions) makes
``fused_forward`` return None and the caller uses the module itself.
"""
from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .argmax import (accumulated_first_maxima, as_accumulated, class_sum_rows, first_max_indices, first_maxima,
                     subnormal_slack)

try:  # optional C extension (setup.py); without it the instance norm runs as torch operations
    from . import _instance_norm as _norm_c
except ImportError:
    _norm_c = None

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# convolutions that can run channels-last and take one-channel inputs straight to oneDNN
_ONEDNN_CONVS = (nn.Conv2d, nn.Conv3d)
# most voxels per matrix product of the head in ``pointwise_argmax``: a 128^3 tile's planes (16384 voxels) in one;
# measured on 2 cores, chunks of 2k-8k voxels are 15-45 % slower (more calls for the same work)
HEAD_CHUNK_VOXELS = 16384
# values per piece of the instance norm's passes after the mean (a piece stays in the cache between operations)
_NORM_PIECE_VALUES = 1 << 18
# values below which the C instance norm runs on one thread (thread hand-offs cost more than they save)
_NORM_THREADED_VALUES = 1 << 16
# voxels whose channel values are averaged for the pilot of the C norm's sums (near the mean, so that the float32
# partial sums of the differences to it and of their squares lose no precision)
_PILOT_VOXELS = 1024


def _leaky_slope(module: nn.Module) -> float | None:
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return 0.0
    return None


def channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (samples, channels, *spatial) keeps each voxel's channels side by side in memory (the
    layout of ``to_channels_last``), as oneDNN's fastest convolutions of few channels read and write them."""
    return x.ndim >= 3 and x.movedim(1, -1).is_contiguous()


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout (itself when it is already), same shape and values."""
    return x if channels_last(x) else x.movedim(1, -1).contiguous().movedim(-1, 1)


def _instance_norm_(x: torch.Tensor, norm: nn.Module, slope: float | None) -> torch.Tensor:
    """``norm`` (an instance norm, affine or not) and then a leaky ReLU of ``slope`` (None: none), in place.

    Two-pass statistics (the mean, then the sum of squares of the centred values a cache-sized piece at a time);
    no new full-size tensor is allocated. Either memory layout (channels first or last) is kept. With the C
    extension built, float32 CPU tensors take two passes over memory instead (``_compiled_instance_norm_``)."""
    if not (x.is_contiguous() or channels_last(x)):
        x = x.contiguous()
    if _norm_c is not None and x.device.type == "cpu" and x.dtype == torch.float32:
        return _compiled_instance_norm_(x, norm, slope)
    n, c = x.shape[:2]
    if x.is_contiguous():  # (n, c, voxels): a channel's voxels are one row
        flat = x.view(n, c, -1)
        voxel_axis = 2
    else:  # (n, voxels, c)
        flat = x.movedim(1, -1).view(n, -1, c)
        voxel_axis = 1
    voxels = flat.shape[voxel_axis]
    step = max(1, _NORM_PIECE_VALUES // (n * c))
    pieces = [flat.narrow(voxel_axis, start, min(step, voxels - start)) for start in range(0, voxels, step)]
    mean = flat.mean(voxel_axis, keepdim=True)
    squares = torch.zeros_like(mean)
    for piece in pieces:
        squares += (piece - mean).square_().sum(voxel_axis, keepdim=True)
    scale = torch.rsqrt(squares.div_(voxels).add_(norm.eps))
    if norm.affine:
        channel_shape = (1, c, 1) if voxel_axis == 2 else (1, 1, c)
        scale.mul_(norm.weight.view(channel_shape))
        shift = norm.bias.view(channel_shape)
    # piece by piece, so that a piece stays in the cache from the subtraction to the activation
    for piece in pieces:
        piece.sub_(mean)
        if norm.affine:
            torch.addcmul(shift, piece, scale, out=piece)
        else:
            piece.mul_(scale)
        if slope is not None:
            if slope == 0.0:
                piece.relu_()
            else:
                F.leaky_relu_(piece, slope)
    return x


def _compiled_instance_norm_(x: torch.Tensor, norm: nn.Module, slope: float | None) -> torch.Tensor:
    """``_instance_norm_`` in C, for a float32 CPU tensor contiguous or channels-last: per sample, one pass sums
    each channel's differences to a pilot value and their squares (float32 partial sums of 128 terms, float64
    totals), a second one applies ``(x - mean) * scale + shift`` and the activation in float32 as the torch
    version does; the voxels are split between torch's threads. Results differ from the torch version by the
    float32 rounding of the mean and scale (these statistics are the closer ones to float64's)."""
    n, c = x.shape[:2]
    last = not x.is_contiguous()
    voxels = math.prod(x.shape[2:])
    parts = 1 if voxels * c < _NORM_THREADED_VALUES else max(1, min(torch.get_num_threads(), voxels))
    bounds = [voxels * k // parts for k in range(parts + 1)]
    spans = list(zip(bounds[:-1], bounds[1:]))
    weight = norm.weight.detach().double().numpy() if norm.affine else 1.0
    shift = norm.bias.detach().float().numpy() if norm.affine else np.zeros(c, np.float32)
    pool = ThreadPoolExecutor(max_workers=parts) if parts > 1 else None
    try:
        for i in range(n):
            sample = x[i].detach()
            # a view of x's memory: the transform below works on x itself
            values = (sample.movedim(0, -1) if last else sample).numpy().reshape(-1)
            by_voxel = values.reshape(voxels, c) if last else values.reshape(c, voxels).T
            pilot = by_voxel[::max(1, voxels // _PILOT_VOXELS)].mean(0, dtype=np.float64).astype(np.float32)
            sums = np.empty((len(spans), 2, c))

            def moments(k: int) -> None:
                _norm_c.moments(values, c, last, *spans[k], pilot, sums[k])

            _run_parts(pool, moments, len(spans))
            offset, squares = sums.sum(0) / voxels
            variance = np.maximum(squares - offset * offset, 0.0)
            mean = (pilot.astype(np.float64) + offset).astype(np.float32)
            scale = (weight / np.sqrt(variance + norm.eps)).astype(np.float32)

            def transform(k: int) -> None:
                _norm_c.transform(values, c, last, *spans[k], mean, scale, shift, slope)

            _run_parts(pool, transform, len(spans))
    finally:
        if pool is not None:
            pool.shutdown()
    return x


def _run_parts(pool: ThreadPoolExecutor | None, work: Callable[[int], None], count: int) -> None:
    if pool is None:
        for k in range(count):
            work(k)
    else:
        list(pool.map(work, range(count)))


def _pointwise_conv(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """A 1x1x1 convolution as a matrix product per sample."""
    weight = conv.weight.view(conv.out_channels, conv.in_channels)
    out = x.new_empty((x.shape[0], conv.out_channels, *x.shape[2:]))
    for i in range(x.shape[0]):
        flat_in, flat_out = x[i].view(conv.in_channels, -1), out[i].view(conv.out_channels, -1)
        if conv.bias is not None:
            torch.addmm(conv.bias.unsqueeze(1), weight, flat_in, out=flat_out)
        else:
            torch.mm(weight, flat_in, out=flat_out)
    return out


def _upsample_and_concat(x: torch.Tensor, transposed: nn.Module, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat((transposed(x), skip), 1)`` for a transposed convolution whose kernel equals its stride, in
    the layout of ``x`` (channels first or last).

    Each input voxel maps to its own block of kernel-size output voxels: one matrix product gives all blocks,
    one copy puts them in place inside the concatenation buffer."""
    if channels_last(x) and not x.is_contiguous():
        return _upsample_and_concat_channels_last(x, transposed, skip)
    kernel = tuple(transposed.kernel_size)
    dims = len(kernel)
    c_in, c_out = transposed.in_channels, transposed.out_channels
    n, spatial = x.shape[0], tuple(x.shape[2:])
    out_spatial = tuple(s * k for s, k in zip(spatial, kernel))
    result = x.new_empty((n, c_out + skip.shape[1], *out_spatial))
    weight = transposed.weight.reshape(c_in, c_out * math.prod(kernel)).t()
    bias = None if transposed.bias is None else transposed.bias.repeat_interleave(math.prod(kernel)).unsqueeze(1)
    # (c_out, k0, k1, .., s0, s1, ..) -> (c_out, s0, k0, s1, k1, ..)
    order = [0] + [axis for d in range(dims) for axis in (1 + dims + d, 1 + d)]
    interleaved = [c_out] + [v for s, k in zip(spatial, kernel) for v in (s, k)]
    for i in range(n):
        flat = x[i].reshape(c_in, -1)
        blocks = torch.addmm(bias, weight, flat) if bias is not None else torch.mm(weight, flat)
        blocks = blocks.view(c_out, *kernel, *spatial).permute(*order)
        result[i, :c_out].view(*interleaved).copy_(blocks)
        del blocks
    result[:, c_out:].copy_(skip)
    return result


def _upsample_and_concat_channels_last(x: torch.Tensor, transposed: nn.Module, skip: torch.Tensor) -> torch.Tensor:
    """``_upsample_and_concat`` for a channels-last ``x``: the result is channels-last too, each voxel's
    upsampled channels followed by the skip's."""
    kernel = tuple(transposed.kernel_size)
    dims = len(kernel)
    c_in, c_out, c_all = transposed.in_channels, transposed.out_channels, transposed.out_channels + skip.shape[1]
    n, spatial = x.shape[0], tuple(x.shape[2:])
    result = x.new_empty((n, *(s * k for s, k in zip(spatial, kernel)), c_all))  # (n, *spatial, channels)
    # (c_in, c_out, k0, k1, ..) -> (c_in, [k0, k1, .., c_out])
    weight = transposed.weight.permute(0, *range(2, 2 + dims), 1).reshape(c_in, -1)
    bias = None if transposed.bias is None else transposed.bias.repeat(math.prod(kernel))
    # (s0, s1, .., k0, k1, .., c_out) -> (s0, k0, s1, k1, .., c_out)
    order = [axis for d in range(dims) for axis in (d, dims + d)] + [2 * dims]
    interleaved = [v for s, k in zip(spatial, kernel) for v in (s, k)] + [c_all]
    for i in range(n):
        flat = x[i].movedim(0, -1).reshape(-1, c_in)  # a view: x is channels-last
        blocks = torch.addmm(bias, flat, weight) if bias is not None else torch.mm(flat, weight)
        blocks = blocks.view(*spatial, *kernel, c_out).permute(*order)
        result[i].view(*interleaved)[..., :c_out].copy_(blocks)
        del blocks
    result[..., c_out:].copy_(skip.movedim(1, -1))
    return result.movedim(-1, 1)


def _block_plan(block: nn.Module, last: bool) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """The steps of one ConvDropoutNormReLU (its ``all_modules`` in order), norm and activation fused;
    ``last``: convolutions give channels-last outputs."""
    modules = list(getattr(block, "all_modules", []))
    if not modules:
        return None
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    i = 0
    while i < len(modules):
        module = modules[i]
        if isinstance(module, _CONVS):
            steps.append(_pointwise_step(module) if _is_pointwise(module) else _conv_step(module, last))
        elif isinstance(module, _NORMS):
            if module.track_running_stats or (module.affine and (module.weight is None or module.bias is None)):
                return None
            slope = _leaky_slope(modules[i + 1]) if i + 1 < len(modules) else None
            if slope is not None:
                i += 1
            steps.append(_norm_step(module, slope))
        elif isinstance(module, (nn.modules.dropout._DropoutNd, nn.Identity)):
            pass  # eval mode: identity
        elif _leaky_slope(module) is not None:
            steps.append(module)
        else:
            return None
        i += 1
    return steps


def _norm_step(norm: nn.Module, slope: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: _instance_norm_(x, norm, slope)


def _conv_step(conv: nn.Module, last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 2D or 3D convolution with one-channel inputs taken straight to oneDNN and, when ``last``, its output
    channels-last (other convolutions as they are)."""
    if not isinstance(conv, _ONEDNN_CONVS):
        return conv
    direct = (conv.in_channels == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
              and torch.backends.mkldnn.is_available())

    def step(x: torch.Tensor) -> torch.Tensor:
        if direct and x.device.type == "cpu" and x.dtype == torch.float32:
            # PyTorch sends one-channel inputs to its reference convolution, oneDNN's is ~3x faster
            out = torch.ops.aten.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, conv.padding,
                                                    conv.stride, conv.dilation, conv.groups)
        else:
            out = conv(x)
        return to_channels_last(out) if last else out

    return step


def _pointwise_step(conv: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: _pointwise_conv(x, conv)


def _is_pointwise(conv: nn.Module) -> bool:
    return (all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride) and conv.groups == 1
            and all(p == 0 for p in conv.padding))


def _stack_plan(stage: nn.Module, last: bool) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """All steps of a StackedConvBlocks stage (the encoder wraps each in a Sequential; pooling is not supported)."""
    blocks = getattr(stage, "convs", None)
    if blocks is None and isinstance(stage, nn.Sequential) and len(stage) == 1:
        blocks = getattr(stage[0], "convs", None)
    if not isinstance(blocks, nn.Sequential):
        return None
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for block in blocks:
        block_steps = _block_plan(block, last)
        if block_steps is None:
            return None
        steps += block_steps
    return steps


def _supported_transposed(module: nn.Module) -> bool:
    return (isinstance(module, _TRANSPOSED) and tuple(module.kernel_size) == tuple(module.stride)
            and all(p == 0 for p in module.padding) and all(p == 0 for p in module.output_padding)
            and all(d == 1 for d in module.dilation) and module.groups == 1)


def _run(steps: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step(x)
    return x


class FusedUNet:
    """The fused inference forward of one PlainConvUNet (made by ``fused_forward``). Calling it gives the logits;
    ``labels`` gives their argmax without ever holding the logits of the whole tile."""

    def __init__(self, encoder_plans: list, decoder_plans: list, transposed: list[nn.Module], head: nn.Module):
        self._encoder_plans = encoder_plans
        self._decoder_plans = decoder_plans
        self._transposed = transposed
        self._head = head
        self._head_step = _pointwise_step(head) if _is_pointwise(head) else head

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder stage's output: the input of the segmentation head."""
        skips = []
        for steps in self._encoder_plans:
            x = _run(steps, x)
            skips.append(x)
        x = skips.pop()
        for transpconv, steps in zip(self._transposed, self._decoder_plans):
            x = _upsample_and_concat(x, transpconv, skips.pop())  # the skip is released here
            x = _run(steps, x)
        return x

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._head_step(self.features(x))

    @torch.inference_mode()
    def labels(self, features: torch.Tensor, region: tuple[slice, ...], dtype: torch.dtype = torch.uint8,
               weights: torch.Tensor | None = None, network_stage: Callable[[], ContextManager] | None = None
               ) -> torch.Tensor:
        """Argmax over the classes of the head's logits inside ``region`` (spatial slices) of one sample's
        ``features`` (channels, *spatial), as ``dtype``; ``weights`` (the features' spatial shape) and
        ``network_stage`` as in ``pointwise_argmax``."""
        if not _is_pointwise(self._head):
            with (network_stage or contextlib.nullcontext)():
                logits = self._head(features[None])[0][(slice(None), *region)]
            if weights is not None:
                weights = weights[region]
                logits = as_accumulated(logits, weights)
                _check_finite(torch.amax(logits, 0), weights.dtype)
            return first_max_indices(logits, dtype)
        return pointwise_argmax(features, self._head, dtype, weights, network_stage, region)


def _plane_span(shape: tuple[int, ...], region: tuple[slice, ...]) -> tuple[int, int]:
    """First and one-past-last flat index (C order) of the voxels of ``region`` in an array of ``shape``."""
    first = last = 0
    for n, part in zip(shape, region):
        first = first * n + part.start
        last = last * n + part.stop - 1
    return first, last + 1


def pointwise_argmax(features: torch.Tensor, conv: nn.Module, dtype: torch.dtype = torch.uint8,
                     weights: torch.Tensor | None = None, network_stage: Callable[[], ContextManager] | None = None,
                     region: tuple[slice, ...] | None = None) -> torch.Tensor:
    """``argmax(conv(features), 0)[region]`` for a 1x1x1 convolution ``conv`` and features (channels, *spatial),
    one plane (or ``HEAD_CHUNK_VOXELS``) at a time: a chunk's logits stay in the cache, those of the whole volume
    (classes x voxels float32, ~1 GB for 118 classes and a 128^3 tile) are never written. Per voxel the same
    float32 sums as ``_pointwise_conv``, and ties go to the first class, as ``argmax``. ``region`` (spatial
    slices with steps of 1; default all) is what is returned; each plane's head runs on the stretch of voxels
    from the region's first to its last one in memory (no copy of the features; a few voxels more).

    With ``weights`` (the features' spatial shape, positive) the argmax is taken of ``(logits * weights)``
    rounded to ``weights.dtype`` and divided by ``weights``, what a Gaussian-weighted sliding window of a single
    tile stores (``accumulated_first_maxima``); a non-finite maximum (float16 overflow) raises RuntimeError.
    ``network_stage`` (e.g. a stage timer's) is entered around the matrix products, the network's own share."""
    spatial = tuple(features.shape[1:])
    region = tuple(slice(*part.indices(n)) for part, n in zip(region or (), spatial))
    region += tuple(slice(0, n, 1) for n in spatial[len(region):])
    if any(part.step != 1 for part in region):
        raise ValueError("region slices must have steps of 1")
    out = torch.empty([part.stop - part.start for part in region], dtype=dtype)
    if out.numel() == 0:
        return out
    if not (features.is_contiguous() or channels_last(features[None])):
        features = features.contiguous()
    weight = conv.weight.view(conv.out_channels, conv.in_channels)
    bias = None if conv.bias is None else conv.bias.unsqueeze(1)
    plane_shape, plane_region = spatial[1:], region[1:]
    first, stop = _plane_span(plane_shape, plane_region)
    span = torch.empty(math.prod(plane_shape), dtype=dtype)  # a plane's labels; outside the stretch unused
    span_in_region = span.view(plane_shape)[plane_region]
    slack = None
    if weights is not None:
        weights = weights.reshape(spatial[0], -1)
        slack = subnormal_slack(weights)
    chunk = min(HEAD_CHUNK_VOXELS, stop - first)
    logits = features.new_empty((conv.out_channels, chunk))
    hits = features.new_empty((conv.out_channels, chunk))
    class_sums = class_sum_rows(conv.out_channels, features.dtype)
    stage = network_stage or contextlib.nullcontext
    for i, z in enumerate(range(region[0].start, region[0].stop)):
        plane = features[:, z].reshape(conv.in_channels, -1)  # a view in either layout
        for start in range(first, stop, chunk):
            n = min(chunk, stop - start)
            values = logits[:, :n]
            with stage():
                if bias is not None:
                    torch.addmm(bias, weight, plane[:, start:start + n], out=values)
                else:
                    torch.mm(weight, plane[:, start:start + n], out=values)
            if weights is not None:
                span[start:start + n], best = accumulated_first_maxima(
                    values, weights[z, start:start + n], class_sums, hits[:, :n], slack[z, start:start + n])
                _check_finite(best, weights.dtype)
            else:
                span[start:start + n] = first_maxima(values, class_sums, hits[:, :n])[0]
        out[i] = span_in_region
    return out


def _check_finite(maxima: torch.Tensor, dtype: torch.dtype) -> None:
    if not bool(torch.isfinite(maxima).all()):
        raise RuntimeError(f"the {dtype} logit accumulator overflowed; predict with accumulate_dtype=torch.float32")


def prefers_channels_last() -> bool:
    """Whether this CPU runs the fused forward faster channels-last: with AVX-512 (measured on 2 cores: oneDNN's
    full-resolution convolutions 25-30 % faster, a 128^3 tile 17 %); with oneDNN held to AVX2 the layouts are on
    par, channels-last slightly slower, so other CPUs keep PyTorch's default layout."""
    return torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def fused_forward(network: nn.Module, channels_last: bool | None = None) -> FusedUNet | None:
    """The fused inference forward of ``network`` (a PlainConvUNet in eval mode), or None when its layout is
    not the expected one. Weights are read at call time, so loading another fold's state dict is seen.
    ``channels_last``: the activations' layout (None: ``prefers_channels_last()``)."""
    encoder, decoder = getattr(network, "encoder", None), getattr(network, "decoder", None)
    if encoder is None or decoder is None or network.training:
        return None
    if getattr(decoder, "deep_supervision", True) or not getattr(encoder, "return_skips", False):
        return None
    last = prefers_channels_last() if channels_last is None else channels_last
    encoder_plans = [_stack_plan(stage, last) for stage in getattr(encoder, "stages", [])]
    decoder_plans = [_stack_plan(stage, last) for stage in getattr(decoder, "stages", [])]
    transposed = list(getattr(decoder, "transpconvs", []))
    seg_layers = list(getattr(decoder, "seg_layers", []))
    if (not encoder_plans or any(p is None for p in encoder_plans + decoder_plans)
            or len(decoder_plans) != len(encoder_plans) - 1 or len(transposed) != len(decoder_plans)
            or not all(_supported_transposed(t) for t in transposed) or not seg_layers
            or not isinstance(seg_layers[-1], _CONVS)):
        return None
    return FusedUNet(encoder_plans, decoder_plans, transposed, seg_layers[-1])
