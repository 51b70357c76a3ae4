"""Built-in fusekit rewrite passes (installed as ``fusekit.passes``)."""
