"""What a run remembers between snapshots, and its verdicts on each new one (dead, dormant,
drift, ranges); with ``background=True`` it runs on the writer thread. Also the checkpoint
state of all of it."""
