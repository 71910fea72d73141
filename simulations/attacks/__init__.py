"""Attacks on the vertical protocols, run on real transcripts (issue 12 item 3).

Each module records what one role holds after a real in-process run (every payload it
received, plus its own randomness: a curious party keeps its masks) and attacks it:

* ``vertical_lr``: label inference by the passive party from its per-step gradients, the
  control bits and its own model part; feature reconstruction by the label party from the
  summed partial logits it receives.
* ``secureboost``: label inference by the passive party from the splits it is asked for
  (membership-hiding mode); feature reconstruction by the label party from the left/right
  bits of passive splits.

``simulations/bench_attacks.py`` runs them on the benchmark split and writes the figures
the privacy report shows (``fedcredit/attack_figures.json``).  Test harness only: nothing
deployed imports this package.
"""
