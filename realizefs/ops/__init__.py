"""pyfuse3 Operations (thin handlers), the errno edge, and the files of .realize/."""
