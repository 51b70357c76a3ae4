"""TensorRT plugin substitution specs (installed as ``fusekit.plugins``)."""
