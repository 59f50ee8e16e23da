"""The wiring layer: one step function per Airflow task (`steps`), the `emoflow` command (`cli`)
and the local-server starter (`services`). It is the only layer that reads settings and params
from the environment; the libraries below it (`ml`, `monitoring`, `serving`) take them as
arguments."""
