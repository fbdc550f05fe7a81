"""``python -m ee_cuda.repro``: run the paper's experiments and write the report (see ``cli``)."""
from .cli import main

main()
