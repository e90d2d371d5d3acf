"""The Real: arenas' backing directories (the only package calling os/pyxattr on them)."""
