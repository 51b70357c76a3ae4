"""Parse and build a model with the real TensorRT in a subprocess, with fusekit's plugin
creators registered (or not), and report what happened.

A subprocess, because creator registrations would leak into other tests and a missing
library link aborts the whole process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx

_DRIVER = textwrap.dedent("""
    import json, sys
    import onnx
    from fusekit.builder import backend as backends, plugins
    model = onnx.load(sys.argv[1])
    job = json.loads(sys.argv[2])
    be = backends.load()
    trt = be.trt
    if job["register"]:
        plugins.prepare(be, model)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model.SerializeToString())
    out = {"parsed": ok, "errors": [parser.get_error(i).desc() for i in range(parser.num_errors)]}
    if ok:
        kinds = {getattr(trt.LayerType, k) for k in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                 if hasattr(trt.LayerType, k)}
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        out["plugin_layers"] = sorted(layer.name for layer in layers if layer.type in kinds)
        out["layers"] = network.num_layers
        # TensorRT's registry hands back the Python creator fusekit registered (None: none;
        # a backend's own creator has no .received)
        creators = {n: trt.get_plugin_registry().get_creator(n, "1", "") for n in job["creators"]}
        out["fields"] = {n: c.received for n, c in creators.items() if hasattr(c, "received")}
        out["outputs"] = [(network.get_output(i).name, str(network.get_output(i).dtype),
                           list(network.get_output(i).shape)) for i in range(network.num_outputs)]
        config = builder.create_builder_config()
        if job["profile"]:
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in job["profile"].items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        out["built"] = engine is not None
        if engine is not None:
            data = bytes(engine)
            out["in_engine"] = [w for w in job["words"] if w.encode("latin-1") in data]
    print(json.dumps(out))
""")


def parse_and_build(tmp_path: Path, model: onnx.ModelProto, *, register: bool = True,
                    creators: tuple[str, ...] = (), profile: dict | None = None,
                    words: list[str] = ()) -> dict:
    """Parse ``model`` (fusekit's creators registered if ``register``) and build it with
    ``profile`` ({input: (min, opt, max)}); ``fields`` holds what each of ``creators``
    received, ``in_engine`` which of ``words`` (latin-1 text) the engine bytes contain."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    job = {"register": register, "creators": list(creators), "profile": profile or {}, "words": list(words)}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(path), json.dumps(job)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
