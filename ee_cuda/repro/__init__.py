"""The reproduction harness: the paper's experiments on offline data, and their report.

Run it as ``python -m ee_cuda.repro`` (``--help`` for the options). It is not part of the library: it
needs the optional extra ``repro`` (``pip install "ee_cuda[repro]"``: scikit-learn, matplotlib, tqdm),
and the library never imports it. Modules: ``data`` (datasets rendered offline), ``models`` (the
embedding network), ``train`` (the training loop), ``experiments`` (experiments 1-8, and 9 with a memory
bank; docs/design.md §11), ``report`` (``report.md`` from the experiments' JSON) and ``cli`` (the command
line).
"""
