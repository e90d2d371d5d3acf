"""The mount's model: one namespace of arenas and virtual files, addressed by inode."""
