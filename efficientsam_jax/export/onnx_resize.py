"""`torch_resize`: torch's `F.interpolate` (align_corners=False, no antialias) to a static size
from an input whose size may be symbolic, as a JAX primitive that jax2onnx lowers to one ONNX
`Resize` node.

Why a primitive: models/resize.py resizes with interpolation matrices built in numpy from the
input's size, which an export with symbolic H, W (EfficientSAM's encoder takes any image size)
does not have. In JAX the primitive runs exactly that matrix resize; in ONNX it is `Resize`
(opset 18, `axes`), which computes the same half-pixel sampling (the cubic kernel with torch's
a = -0.75 and clamped border taps). Importing this module registers the jax2onnx lowering.
"""
import jax
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

from efficientsam_jax.models import resize

torch_resize_p = Primitive("efficientsam_torch_resize")


def _impl(x, *, sizes, axes, mode):
  return resize.resize_axes(x, dict(zip(axes, sizes)), mode)


def _abstract(x, *, sizes, axes, mode):
  del mode
  shape = list(x.shape)
  for axis, size in zip(axes, sizes):
    shape[axis] = size
  return jax.core.ShapedArray(tuple(shape), x.dtype)


torch_resize_p.def_impl(_impl)
torch_resize_p.def_abstract_eval(_abstract)
mlir.register_lowering(torch_resize_p, mlir.lower_fun(_impl, multiple_results=False))


def torch_resize(x, sizes, axes, mode: str = "linear"):
  """x resized along `axes` to the static `sizes` ("linear" or "cubic", torch's kernels)."""
  return torch_resize_p.bind(x, sizes=tuple(int(s) for s in sizes),
                             axes=tuple(int(a) % x.ndim for a in axes), mode=mode)


@register_primitive(jaxpr_primitive=torch_resize_p.name, context="primitives.efficientsam",
                    component="torch_resize", since="efficientsam_jax",
                    onnx=[{"component": "Resize"}], testcases=[])
class TorchResizeLowering(PrimitiveLeafPlugin):
  """efficientsam_torch_resize -> ONNX Resize(sizes=..., axes=..., half_pixel)."""

  def lower(self, ctx, eqn):
    (x_var,), (out_var,) = eqn.invars, eqn.outvars
    params = eqn.params
    x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("resize_in"))
    spec = ctx.get_value_for_var(out_var, name_hint=ctx.fresh_name("resize_out"))
    empty = np.zeros((0,), np.float32)
    roi = ctx.builder.add_initializer_from_array(name=ctx.fresh_name("resize_roi"), array=empty)
    scales = ctx.builder.add_initializer_from_array(name=ctx.fresh_name("resize_scales"),
                                                    array=empty)
    sizes = ctx.builder.add_initializer_from_array(
        name=ctx.fresh_name("resize_sizes"), array=np.asarray(params["sizes"], np.int64))
    attributes = {"mode": params["mode"], "coordinate_transformation_mode": "half_pixel",
                  "axes": list(params["axes"])}
    if params["mode"] == "cubic":  # torch's Keys kernel, border taps clamped
      attributes.update(cubic_coeff_a=-0.75, exclude_outside=0)
    out = ctx.builder.Resize(x, roi, scales, sizes, _outputs=[spec.name], **attributes)
    out.type, out.shape = spec.type, spec.shape
    ctx.bind_value_for_var(out_var, out)
