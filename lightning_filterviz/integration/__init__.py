"""Lightning's side: the callback's logic, what it reads off a Trainer, its cadence and the
validation runs' dataset examples. Imports no Lightning package itself (see
``lightning_filterviz.lightning`` and ``lightning_filterviz.pl``)."""
