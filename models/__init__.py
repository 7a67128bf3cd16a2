"""Session-based recommendation networks (GRU4Rec-style) and their offline tooling.

Nothing here imports the streaming stack (faust, stream_app); importing this
package does no work.  Entry points:

* ``models.checkpoint``: ``load_checkpoint`` / ``save_checkpoint`` / ``Checkpoint`` (the stream worker's contract)
* ``models.rnn``: ``ModelConfig`` and ``SessionRNN`` (``step``, ``score``, ``forward_sequence``)
* ``models.train``: session-parallel training with sampled negatives and row-sparse Adagrad
* ``models.evaluate`` / ``models.baselines``: full-ranking next-item evaluation and floors
* ``models.data`` / ``models.prepare``: GRU4Rec TSV I/O, raw-log sessionizing and time splits
* ``models.sequences`` / ``models.features`` / ``models.coldstart``: user sequences in the S3-Rec
  format with its leave-one-out protocol, item attributes pooled into the item vectors, cold-start items
* ``models.tune`` / ``models.report``: optuna search and the HTML report
"""
