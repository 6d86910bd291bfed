"""Tools: benchmarks, the demo and sample data; the top wing, free to import any other.

- :mod:`.bench`: the measuring harness (samples/s, CPU, memory, ratios to a baseline).
- :mod:`.workloads`: the ``fastdata bench`` command and its three workloads.
- :mod:`.sample_data`: real photographs from scikit-image and scikit-learn made into a
  small image-folder dataset (``fastdata sample-data``).
- :mod:`.sample_text`: a labelled text corpus from Python's reference topics and the
  docstrings of installed libraries (JSONL manifests for ``convert --tokenize``).
- :mod:`.text_demo`: the demo's language-model part (tokenize, pretrain, fine-tune).
- :mod:`.demo`: the ``fastdata demo`` command (sample data, convert, verify, bench, train,
  the language model).
"""
