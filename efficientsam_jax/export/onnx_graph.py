"""Edits of an exported ONNX graph: what jax2onnx cannot express, and what onnxruntime runs
slowly.

- `Nodes`: appends nodes to a graph with fresh names, for the parts sized by a runtime
  *value* (the original image size `orig_im_size`): reshape, crop, resize to (H, W).
- `bicubic`: torch's bicubic (a = -0.75, half-pixel, border taps clamped) to a runtime size,
  as two MatMuls with interpolation matrices built in the graph from that size, the same
  float32 arithmetic as models/resize.py's matrices. onnxruntime's own cubic `Resize` was
  measured 5x slower than this (docs/export.md).
- `einsum_to_matmul`: jax2onnx writes every Dense on a rank-3 input and the attention
  products as `Einsum`, which onnxruntime runs several times slower than MatMul; an Einsum
  that is one (batched) matrix product becomes Transpose + MatMul (inside Loop bodies too).
- `retype_input`: an int64 graph input (jax with x64 off can only declare int32), cast back.
"""
import string

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_CUBIC_A = -0.75


class Nodes:
  """Appends nodes and constants to `graph`, every name prefixed (unique per `prefix`)."""

  def __init__(self, graph: onnx.GraphProto, prefix: str):
    self.graph, self.prefix, self.count = graph, prefix, 0

  def name(self, hint: str) -> str:
    self.count += 1
    return f"{self.prefix}{hint}_{self.count}"

  def const(self, value, dtype=np.float32) -> str:
    name = self.name("const")
    self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
    output = output or self.name(op_type.lower())
    self.graph.node.append(helper.make_node(op_type, list(inputs), [output],
                                            name=self.name(op_type), **attributes))
    return output


def _cubic_matrix(nodes: Nodes, in_size: int, out_size: str) -> str:
  """(out, in_size) float32 interpolation matrix for an int64 scalar `out_size`: row r holds
  the 4 Keys-kernel taps around src = (in / out) (r + 0.5) - 0.5, clamped at the borders."""
  f = lambda v: nodes.const(v)
  scale = nodes.op("Div", f(float(in_size)), nodes.op("Cast", out_size, to=TensorProto.FLOAT))
  rows = nodes.op("Cast", nodes.op("Range", nodes.const(0, np.int64), out_size,
                                   nodes.const(1, np.int64)), to=TensorProto.FLOAT)
  src = nodes.op("Sub", nodes.op("Mul", scale, nodes.op("Add", rows, f(0.5))), f(0.5))
  src = nodes.op("Unsqueeze", src, nodes.const([1], np.int64))  # (out, 1)
  base = nodes.op("Floor", src)
  t = nodes.op("Sub", src, base)
  a = _CUBIC_A

  def near(x):  # ((a + 2) x - (a + 3)) x^2 + 1, |x| <= 1
    inner = nodes.op("Sub", nodes.op("Mul", f(a + 2), x), f(a + 3))
    return nodes.op("Add", nodes.op("Mul", nodes.op("Mul", inner, x), x), f(1.0))

  def far(x):  # ((a x - 5a) x + 8a) x - 4a, 1 < |x| < 2
    inner = nodes.op("Sub", nodes.op("Mul", f(a), x), f(5 * a))
    inner = nodes.op("Add", nodes.op("Mul", inner, x), f(8 * a))
    return nodes.op("Sub", nodes.op("Mul", inner, x), f(4 * a))

  weights = [far(nodes.op("Add", t, f(1.0))), near(t), near(nodes.op("Sub", f(1.0), t)),
             far(nodes.op("Sub", f(2.0), t))]
  columns = f(np.arange(in_size, dtype=np.float32)[None])  # (1, in)
  terms = []
  for tap, weight in enumerate(weights):
    index = nodes.op("Clip", nodes.op("Add", base, f(float(tap - 1))), f(0.0),
                     f(float(in_size - 1)))
    one_hot = nodes.op("Cast", nodes.op("Equal", index, columns), to=TensorProto.FLOAT)
    terms.append(nodes.op("Mul", one_hot, weight))
  return nodes.op("Sum", *terms)


def bicubic(nodes: Nodes, x: str, in_hw: tuple[int, int], out_h: str, out_w: str,
            output: str | None = None) -> str:
  """x (..., in_h, in_w) -> (..., H, W) with torch's bicubic; out_h, out_w int64 scalars.
  Height first, then width, as models/resize.py applies its matrices."""
  rows = _cubic_matrix(nodes, in_hw[0], out_h)  # (H, in_h)
  cols = nodes.op("Transpose", _cubic_matrix(nodes, in_hw[1], out_w), perm=[1, 0])
  return nodes.op("MatMul", nodes.op("MatMul", rows, x), cols, output=output)


def retype_input(model: onnx.ModelProto, name: str, elem_type: int) -> None:
  """Declares graph input `name` as `elem_type`; a Cast to the exported type feeds its users."""
  graph = model.graph
  value = next(v for v in graph.input if v.name == name)
  exported = value.type.tensor_type.elem_type
  inner = f"{name}__exported"
  _rename_uses(graph, name, inner)
  value.type.tensor_type.elem_type = elem_type
  graph.node.insert(0, helper.make_node("Cast", [name], [inner], to=exported,
                                        name=f"{name}__cast"))


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
  for node in graph.node:
    node.input[:] = [new if x == old else x for x in node.input]
    for attribute in node.attribute:  # Loop / If bodies see outer names
      if attribute.type == onnx.AttributeProto.GRAPH:
        _rename_uses(attribute.g, old, new)


def set_output(graph: onnx.GraphProto, names_and_dims: list[tuple[str, list]]) -> None:
  """Replaces the graph outputs: float32 tensors with the given (name, dims) (a str dim is
  symbolic)."""
  del graph.output[:]
  graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, d)
                      for n, d in names_and_dims)


# --- Einsum -> MatMul ------------------------------------------------------------------------

def _ranks(graph: onnx.GraphProto) -> dict[str, int]:
  ranks = {t.name: len(t.dims) for t in graph.initializer}
  for v in list(graph.input) + list(graph.output) + list(graph.value_info):
    if v.type.tensor_type.HasField("shape"):
      ranks[v.name] = len(v.type.tensor_type.shape.dim)
  return ranks


def _labels(equation: str, ranks: tuple) -> tuple[list[str], str] | None:
  """'ab...,bc->...' with known input ranks -> explicit labels, or None."""
  inputs, out = equation.replace(" ", "").split("->")
  parts = inputs.split(",")
  if "..." in equation:
    free = [c for c in string.ascii_letters if c not in equation]
    widths = {r - len(p.replace("...", "")) for p, r in zip(parts, ranks)
              if "..." in p and r is not None}
    if len(widths) != 1 or any(r is None for p, r in zip(parts, ranks) if "..." in p):
      return None
    fill = "".join(free[:widths.pop()])
    parts, out = [p.replace("...", fill) for p in parts], out.replace("...", fill)
  return parts, out


def matmul_plan(equation: str, ranks: tuple = (None, None)):
  """How to compute a two-input Einsum with MatMul: (perm_left, perm_right, perm_out), each
  None for no transpose, or None when the Einsum is not one matrix product."""
  labelled = _labels(equation, ranks)
  if labelled is None or len(labelled[0]) != 2:
    return None
  (left, right), out = labelled
  if any(len(set(x)) != len(x) for x in (left, right, out)) or set(out) - set(left + right):
    return None
  contract = [c for c in left if c in right and c not in out]
  if len(contract) != 1:
    return None
  k = contract[0]
  if len(right) == 2:  # x (..., K) @ w (K, N): MatMul broadcasts x's leading axes
    n = right.replace(k, "")
    lead = [c for c in left if c != k]
    if n in left or out != "".join(lead) + n:
      return None
    perm_l = [left.index(c) for c in lead + [k]]
    perm_r = [right.index(c) for c in k + n]
    return _plain(perm_l), _plain(perm_r), None
  batch = [c for c in out if c in left and c in right]
  free_l = [c for c in left if c not in right]
  free_r = [c for c in right if c not in left]
  if len(free_l) != 1 or len(free_r) != 1 or len(out) != len(batch) + 2:
    return None
  product = batch + free_l + free_r
  return (_plain([left.index(c) for c in batch + free_l + [k]]),
          _plain([right.index(c) for c in batch + [k] + free_r]),
          _plain([product.index(c) for c in out]))


def _plain(perm: list[int]):
  return None if perm == list(range(len(perm))) else perm


def einsum_to_matmul(graph: onnx.GraphProto) -> int:
  """Rewrites every Einsum of `graph` (and its subgraphs) that is one matrix product; returns
  how many were rewritten."""
  ranks = _ranks(graph)
  done, nodes = 0, []
  for node in graph.node:
    for attribute in node.attribute:
      if attribute.type == onnx.AttributeProto.GRAPH:
        done += einsum_to_matmul(attribute.g)
    plan = None
    if node.op_type == "Einsum" and len(node.input) == 2:
      equation = next(a.s.decode() for a in node.attribute if a.name == "equation")
      plan = matmul_plan(equation, tuple(ranks.get(i) for i in node.input))
    if plan is None:
      nodes.append(node)
      continue
    operands = list(node.input)
    for i, perm in enumerate(plan[:2]):
      if perm is not None:
        transposed = f"{node.output[0]}__in{i}"
        nodes.append(helper.make_node("Transpose", [operands[i]], [transposed], perm=perm))
        operands[i] = transposed
    if plan[2] is None:
      nodes.append(helper.make_node("MatMul", operands, [node.output[0]], name=node.name))
    else:
      product = f"{node.output[0]}__matmul"
      nodes.append(helper.make_node("MatMul", operands, [product], name=node.name))
      nodes.append(helper.make_node("Transpose", [product], [node.output[0]], perm=plan[2]))
    done += 1
  del graph.node[:]
  graph.node.extend(nodes)
  return done
