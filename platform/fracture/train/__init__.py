"""Where a trial's training loop runs: the loop, its session, what a trial runs, early stopping."""
