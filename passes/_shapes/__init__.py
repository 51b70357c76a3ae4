"""Symbolic shapes and shape values: the analysis behind symbolic-shapes and fold-shapes.

Not a pass; it reads the graph and changes nothing. One sweep over the nodes in
topological order computes, for every tensor,

- its shape, each dim an :class:`Expr`: a polynomial with integer coefficients over
  named dims (``batch``, ``seq``: every named dim is a size, so >= 0), e.g.
  ``4*batch*seq``. A result that is no polynomial (``seq // 3``, ``min(seq, 512)``)
  is an opaque name of its own, made only when it is provably >= 0;
- for small integer tensors (rank 0 or 1, at most :data:`MAX_ELEMENTS` elements: the
  values TensorRT calls shape tensors) its value, element by element, as an
  :class:`Expr`, or ``None`` where the element depends on runtime data.

Shapes come from the graph's declared/inferred shapes (ONNX inference, see
``infer-shapes``) merged with the analysis's own rules for the ops whose output
shape is computed from a shape tensor (Reshape with 0 and -1, Expand,
ConstantOfShape, Range, Tile, Slice...). When a declared dim is a name ONNX made up
(``unk__3``) or an unknown, and the analysis knows better, the name is substituted
everywhere (:attr:`Analysis.subst`), so one dim has one name across the graph.
Names used by graph inputs are facts and never substituted.

Semantics follow ONNX/onnxruntime: integer Div truncates, Mod (fmod=0) takes the
divisor's sign, Slice clamps, Reshape 0 copies (unless ``allowzero``) and -1 infers.

Modules: :mod:`.expr` (the polynomial algebra over named dims), :mod:`.analysis` (the
sweep that merges declared and computed facts), :mod:`.value_rules` (the values of small
integer tensors, op by op) and :mod:`.shape_rules` (output shapes computed from shape
tensors, op by op).
"""
