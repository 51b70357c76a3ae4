"""Load ONNX models into an editable onnx-graphsurgeon graph and save them back.

Loading never copies initializer bytes (``load``: weights are memory-mapped slices of the
model file or of its external data, whose locations must stay inside the model's folder);
``export`` turns the graph back into a ``ModelProto`` with what onnx-graphsurgeon drops
restored, or into a weightless one for checks; ``save`` writes atomically, streaming
weights tensor by tensor. ``values`` holds the lazy constant values, ``wire`` the bit of
the protobuf wire format this needs.
"""

import onnx_graphsurgeon as gs

from fusekit.model_io.export import export_weightless, to_model_proto
from fusekit.model_io.load import (LoadedModel, check_is_onnx, load_model, name_unnamed_nodes, read_model_file,
                                   resolve_external_path)
from fusekit.model_io.save import (EXTERNAL_DATA_THRESHOLD, PROTOBUF_LIMIT, atomic_write, inline_external_data,
                                   save_graph, save_model, weight_bytes)
from fusekit.model_io.values import (WEIGHTLESS_INLINE_MAX_BYTES, WEIGHTLESS_PLACEHOLDER, FileSliceValues,
                                     MappedValues)

# onnx-graphsurgeon prints its own warnings to stdout; fusekit reports problems itself.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

__all__ = ["EXTERNAL_DATA_THRESHOLD", "PROTOBUF_LIMIT", "WEIGHTLESS_INLINE_MAX_BYTES", "WEIGHTLESS_PLACEHOLDER",
           "FileSliceValues", "LoadedModel", "MappedValues", "atomic_write", "check_is_onnx", "export_weightless",
           "inline_external_data", "load_model", "name_unnamed_nodes", "read_model_file", "resolve_external_path",
           "save_graph", "save_model", "to_model_proto", "weight_bytes"]
