"""Builds quantized int8 graphs layer by layer, calibrated on a float forward pass.

Each layer is computed in float on a calibration batch as it is added, so every activation's scale and
zero point come from the values it really takes (min/max, always including 0, as TFLite's converter does).
Weights are either given (a trained model) or synthetic: He-initialised, then scaled per output channel the
way a folded batch norm scales a trained network's channels, which spreads the per-channel weight scales
and keeps activations in a realistic range layer after layer. Weights are int8 symmetric per output channel
(per tensor for FULLY_CONNECTED, as TFLite's converters write it); biases int32 at input scale x weight scale.
"""

from __future__ import annotations

import numpy as np

from harness.model.ir import Graph, Op, Quant, Tensor, conv_out_size

_ACT = {
    "NONE": lambda v: v,
    "RELU": lambda v: np.maximum(v, 0),
    "RELU6": lambda v: np.clip(v, 0, 6),
}


# ops whose int8 output must keep the input's quantization
_KEEPS_QUANT = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "PAD", "CONCATENATION")


def _copy(q: Quant) -> Quant:
    return Quant(q.scale.copy(), q.zero_point.copy())


def _quant(lo: float, hi: float) -> Quant:
    """Asymmetric int8 quantization of [lo, hi] widened to include 0 (so zero is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    scale = np.float32((hi - lo) / 255.0)
    zp = int(np.clip(round(-128 - lo / float(scale)), -128, 127))
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64))


def _fake_quant(v: np.ndarray, q: Quant) -> np.ndarray:
    """What the int8 tensor can represent of `v`: the float pass then sees what the int8 graph sees."""
    s, zp = float(q.scale[0]), int(q.zero_point[0])
    return (np.clip(np.round(v / s) + zp, -128, 127) - zp) * s


class GraphBuilder:
    """`calib` is a float batch [N, *input_shape[1:]]; the input tensor is quantized to its range, or to
    `input_range` when given (a fixed preprocessing such as 0..16 pixel values)."""

    def __init__(
        self,
        name: str,
        calib: np.ndarray,
        seed: int = 0,
        input_range: tuple[float, float] | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.description = description
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.values: dict[int, np.ndarray] = {}
        lo, hi = input_range if input_range is not None else (float(calib.min()), float(calib.max()))
        q = _quant(lo, hi)
        self.input = self._act("input", (1, *calib.shape[1:]), q, _fake_quant(calib.astype(np.float64), q))

    # --- tensors -------------------------------------------------------------------------------------

    def _act(self, name: str, shape, quant: Quant, value: np.ndarray) -> int:
        self.tensors.append(Tensor(name, tuple(int(d) for d in shape), "int8", quant))
        self.values[len(self.tensors) - 1] = value
        return len(self.tensors) - 1

    def _const(self, name: str, data: np.ndarray, dtype: str, quant: Quant) -> int:
        self.tensors.append(Tensor(name, tuple(data.shape), dtype, quant, data.astype(dtype)))
        return len(self.tensors) - 1

    def _out(self, name: str, value: np.ndarray, act: str, quant: Quant | None = None) -> int:
        value = _ACT[act](value)
        q = quant or _quant(value.min(), value.max())
        return self._act(name, (1, *value.shape[1:]), q, _fake_quant(value, q))

    def shape(self, x: int) -> tuple[int, ...]:
        return self.tensors[x].shape

    # --- float arithmetic ----------------------------------------------------------------------------

    @staticmethod
    def _pad(x: np.ndarray, k: tuple[int, int], stride: int, padding: str) -> tuple[np.ndarray, int, int]:
        n, h, w, c = x.shape
        oh, top = conv_out_size(h, k[0], stride, 1, padding)
        ow, left = conv_out_size(w, k[1], stride, 1, padding)
        need_h, need_w = (oh - 1) * stride + k[0], (ow - 1) * stride + k[1]
        pad = ((0, 0), (top, max(need_h - h - top, 0)), (left, max(need_w - w - left, 0)), (0, 0))
        return np.pad(x, pad), oh, ow

    def _conv_float(self, x, w, stride, padding, depthwise: bool) -> np.ndarray:
        """x [N,H,W,C]; w [O,KH,KW,I] (or [1,KH,KW,C*M] depthwise) -> [N,OH,OW,O], tap by tap."""
        kh, kw = w.shape[1], w.shape[2]
        xp, oh, ow = self._pad(x, (kh, kw), stride, padding)
        out = None
        mult = w.shape[3] // x.shape[3] if depthwise else 1
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride, :]
                if depthwise:
                    term = np.repeat(patch, mult, axis=3) * w[0, i, j, :]
                else:
                    term = patch @ w[:, i, j, :].T
                out = term if out is None else out + term
        return out

    # --- synthetic weights -----------------------------------------------------------------------------

    def _synthetic(self, pre: np.ndarray, w: np.ndarray, act: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Fold a batch-norm-like per-channel affine into He-initialised weights: each channel is
        normalised over the calibration batch, then given its own gain and offset."""
        axes = tuple(range(pre.ndim - 1))
        mean, std = pre.mean(axis=axes), pre.std(axis=axes) + 1e-6
        cout = pre.shape[-1]
        gain = self.rng.lognormal(0.0, 0.35, cout) * (1.5 if act != "NONE" else 1.0)
        offset = self.rng.normal(0.6 if act != "NONE" else 0.0, 0.5, cout)
        scale = gain / std
        shape = [1] * w.ndim
        shape[axis] = -1
        w = w * scale.reshape(shape)
        return w, offset - mean * scale

    # --- layers --------------------------------------------------------------------------------------

    def _weighted(self, kind, x, w, b, stride, padding, act, name, options, out_quant=None) -> int:
        """Quantize weights (per channel on `axis`) and bias, compute the float output, add the op."""
        xin = self.values[x]
        s_in = float(self.tensors[x].quant.scale[0])
        depthwise = kind == "DEPTHWISE_CONV_2D"
        fc = kind == "FULLY_CONNECTED"
        axis = 3 if depthwise else 0
        cout = w.shape[axis]
        red = tuple(a for a in range(w.ndim) if a != axis)
        amax = np.abs(w).max() if fc else np.abs(w).max(axis=red)
        w_scale = np.maximum(np.broadcast_to(amax, (1,) if fc else (cout,)) / 127.0, 1e-9).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        ws_b = w_scale if fc else w_scale.reshape(shape)
        wq = np.clip(np.round(w / ws_b), -127, 127)
        b_scale = (w_scale.astype(np.float64) * s_in).astype(np.float32)
        bq = np.round(b / np.broadcast_to(b_scale, (cout,))).astype(np.int64)
        bq = np.clip(bq, -(2**31), 2**31 - 1)
        wdq, bdq = wq * ws_b, bq * np.broadcast_to(b_scale, (cout,))
        if fc:
            pre = xin.reshape(xin.shape[0], -1) @ wdq.T + bdq
        else:
            pre = self._conv_float(xin, wdq, stride, padding, depthwise) + bdq
        wi = self._const(f"{name}/weights", wq, "int8", Quant(w_scale, np.zeros(len(w_scale), np.int64), axis))
        bi = self._const(f"{name}/bias", bq, "int32", Quant(b_scale, np.zeros(len(b_scale), np.int64)))
        y = self._out(name, pre, act, out_quant)
        self.ops.append(Op(kind, [x, wi, bi], [y], {**options, "activation": act}, name=name))
        return y

    def conv(self, x, cout, k, stride=1, padding="SAME", act="RELU6", name=None, weights=None) -> int:
        """CONV_2D. `weights` = (w [O,KH,KW,I], b [O]) in float, or None for synthetic weights."""
        name = name or f"conv{len(self.ops)}"
        kh, kw = (k, k) if isinstance(k, int) else k
        cin = self.shape(x)[3]
        if weights is None:
            w = self.rng.normal(0, np.sqrt(2.0 / (kh * kw * cin)), (cout, kh, kw, cin))
            pre = self._conv_float(self.values[x], w, stride, padding, False)
            w, b = self._synthetic(pre, w, act, 0)
        else:
            w, b = (np.asarray(a, np.float64) for a in weights)
        opts = {"stride": (stride, stride), "dilation": (1, 1), "padding": padding}
        return self._weighted("CONV_2D", x, w, b, stride, padding, act, name, opts)

    def dwconv(self, x, k, stride=1, padding="SAME", act="RELU6", mult=1, name=None, weights=None) -> int:
        """DEPTHWISE_CONV_2D. `weights` = (w [1,KH,KW,C*M], b [C*M]) or None."""
        name = name or f"dw{len(self.ops)}"
        kh, kw = (k, k) if isinstance(k, int) else k
        c = self.shape(x)[3] * mult
        if weights is None:
            w = self.rng.normal(0, np.sqrt(2.0 / (kh * kw)), (1, kh, kw, c))
            pre = self._conv_float(self.values[x], w, stride, padding, True)
            w, b = self._synthetic(pre, w, act, 3)
        else:
            w, b = (np.asarray(a, np.float64) for a in weights)
        opts = {"stride": (stride, stride), "dilation": (1, 1), "padding": padding, "depth_multiplier": mult}
        return self._weighted("DEPTHWISE_CONV_2D", x, w, b, stride, padding, act, name, opts)

    def fc(self, x, cout, act="NONE", name=None, weights=None) -> int:
        """FULLY_CONNECTED on a [1, N] (or flattened) input. `weights` = (w [O,I], b [O]) or None."""
        name = name or f"fc{len(self.ops)}"
        cin = int(np.prod(self.shape(x)[1:]))
        if weights is None:
            w = self.rng.normal(0, np.sqrt(2.0 / cin), (cout, cin))
            pre = self.values[x].reshape(self.values[x].shape[0], -1) @ w.T
            w, b = self._synthetic(pre, w, act, 0)
        else:
            w, b = (np.asarray(a, np.float64) for a in weights)
        return self._weighted("FULLY_CONNECTED", x, w, b, 1, "VALID", act, name, {"keep_num_dims": False})

    def add(self, a, b, act="NONE", name=None) -> int:
        name = name or f"add{len(self.ops)}"
        y = self._out(name, self.values[a] + self.values[b], act)
        self.ops.append(Op("ADD", [a, b], [y], {"activation": act}, name=name))
        return y

    def pool(self, kind, x, k, stride, padding="VALID", name=None) -> int:
        """AVERAGE_POOL_2D / MAX_POOL_2D: the output keeps the input's quantization (TFLite's int8 pools)."""
        name = name or f"pool{len(self.ops)}"
        v = self.values[x]
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        n, h, w, c = v.shape
        oh, top = conv_out_size(h, kh, sh, 1, padding)
        ow, left = conv_out_size(w, kw, sw, 1, padding)
        # padded positions are NaN: TFLite's pools take the max / mean over the taps inside the input only
        xp = np.full((n, max(h + top, (oh - 1) * sh + kh), max(w + left, (ow - 1) * sw + kw), c), np.nan)
        xp[:, top : top + h, left : left + w, :] = v
        taps = [
            xp[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        out = np.nanmax(taps, axis=0) if kind == "MAX_POOL_2D" else np.nanmean(taps, axis=0)
        q = self.tensors[x].quant
        y = self._act(name, (1, *out.shape[1:]), Quant(q.scale.copy(), q.zero_point.copy()), _fake_quant(out, q))
        opts = {"filter": (kh, kw), "stride": (sh, sw), "padding": padding, "activation": "NONE"}
        self.ops.append(Op(kind, [x], [y], opts, name=name))
        return y

    def global_avgpool(self, x, name=None) -> int:
        h, w = self.shape(x)[1:3]
        # stride = filter, as TFLite's converters write a global pool
        return self.pool("AVERAGE_POOL_2D", x, (h, w), (h, w), "VALID", name=name or "global_pool")

    def avg_pool(self, x, k, stride, padding="VALID", name=None) -> int:
        return self.pool("AVERAGE_POOL_2D", x, k, stride, padding, name=name or f"avgpool{len(self.ops)}")

    def max_pool(self, x, k, stride, padding="VALID", name=None) -> int:
        return self.pool("MAX_POOL_2D", x, k, stride, padding, name=name or f"maxpool{len(self.ops)}")

    def mean(self, x, keep_dims=False, name=None) -> int:
        """MEAN over H and W (the other global-pool spelling converters write); its own calibrated output."""
        name = name or f"mean{len(self.ops)}"
        v = self.values[x].mean(axis=(1, 2), keepdims=keep_dims)
        y = self._out(name, v, "NONE")
        self.ops.append(Op("MEAN", [x], [y], {"axes": (1, 2), "keep_dims": keep_dims}, name=name))
        return y

    def pad(self, x, paddings, name=None) -> int:
        """PAD with zeros (the input's zero point): `paddings` = ((before, after), ...) per dimension."""
        name = name or f"pad{len(self.ops)}"
        paddings = tuple((int(a), int(b)) for a, b in paddings)
        v = np.pad(self.values[x], ((0, 0), *paddings[1:]))
        q = self.tensors[x].quant
        y = self._act(name, (1, *v.shape[1:]), Quant(q.scale.copy(), q.zero_point.copy()), v)
        self.ops.append(Op("PAD", [x], [y], {"paddings": paddings}, name=name))
        return y

    def concat(self, xs, axis=3, name=None) -> int:
        """CONCATENATION. TFLite's int8 kernel wants every input quantized like the output (calibrated on the
        union of their ranges): an input nothing else uses takes that quantization, as the converter does;
        one already used elsewhere (or tied to its producer's, like a pool's) is requantized by a QUANTIZE op."""
        name = name or f"concat{len(self.ops)}"
        xs = list(xs)
        q = _quant(min(self.values[i].min() for i in xs), max(self.values[i].max() for i in xs))
        consumed = {i for op in self.ops for i in op.inputs}
        tied = {o for op in self.ops if op.kind in _KEEPS_QUANT for o in op.outputs}
        ins = []
        for j, i in enumerate(xs):
            t = self.tensors[i]
            if t.quant.scale[0] == q.scale[0] and t.quant.zero_point[0] == q.zero_point[0]:
                ins.append(i)
            elif i in consumed or i in tied or i == self.input:
                y = self._act(f"{name}/requant{j}", t.shape, _copy(q), _fake_quant(self.values[i], q))
                self.ops.append(Op("QUANTIZE", [i], [y], {}, name=f"{name}/requant{j}"))
                ins.append(y)
            else:
                self.tensors[i] = Tensor(t.name, t.shape, t.dtype, _copy(q))
                self.values[i] = _fake_quant(self.values[i], q)
                ins.append(i)
        v = np.concatenate([self.values[i] for i in ins], axis=axis)
        y = self._act(name, (1, *v.shape[1:]), q, v)
        self.ops.append(Op("CONCATENATION", ins, [y], {"axis": axis, "activation": "NONE"}, name=name))
        return y

    def reshape(self, x, shape, name=None) -> int:
        name = name or f"reshape{len(self.ops)}"
        q = self.tensors[x].quant
        v = self.values[x].reshape((self.values[x].shape[0], *shape[1:]))
        y = self._act(name, shape, Quant(q.scale.copy(), q.zero_point.copy()), v)
        self.ops.append(Op("RESHAPE", [x], [y], {}, name=name))
        return y

    def softmax(self, x, name="softmax") -> int:
        v = self.values[x]
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        q = Quant(np.array([1 / 256], np.float32), np.array([-128], np.int64))  # TFLite's fixed int8 softmax output
        y = self._act(name, self.shape(x), q, e / e.sum(axis=-1, keepdims=True))
        self.ops.append(Op("SOFTMAX", [x], [y], {"beta": 1.0}, name=name))
        return y

    def finish(self, *outputs: int) -> Graph:
        g = Graph(self.name, self.tensors, self.ops, [self.input], list(outputs), description=self.description)
        g.validate()
        return g
